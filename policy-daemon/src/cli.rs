//! The `xdp-policy` command line: `run` enforces a policy on interfaces until stopped,
//! `check` validates policy files without touching the kernel.

use std::{
    io,
    path::{Path, PathBuf},
};

use clap::{Parser, Subcommand};

use crate::{
    config::{self, ConfigFile},
    daemon,
    dataplane::{DataplaneError, ModeChoice, VerdictCounts},
    pinned,
    policy::{self, Policy, PolicyError, Rule},
};

#[derive(Parser)]
#[command(name = "xdp-policy", version, about = "XDP traffic policy controller")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the policies, attach to the interfaces and keep them up to date until SIGTERM
    /// or SIGINT; the filters stay in force (pinned) after it stops.
    Run(RunArgs),
    /// Validate policy files or directories and print their rules; exit 1 if invalid.
    Check(CheckArgs),
    /// Show what is in force on each interface, with its counters (from the pins: works
    /// whether or not the daemon runs).
    Status(StatusArgs),
    /// Run a packet you describe through the live program and the reference classifier,
    /// and say which rule decides it.
    Explain(ExplainArgs),
    /// Take the filter off an interface (or all): removes its pins and state.
    Detach(DetachArgs),
    /// Sample dropped (and would-be-dropped) packets and print a line for each; sampling
    /// is on only while this runs.
    Events(EventsArgs),
}

#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub places: PlacesArgs,
    /// The interface [default: the only pinned one].
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// Events per second per CPU at most.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    pub seconds: Option<u64>,
}

/// The configuration file and where pins and state files are.
#[derive(clap::Args)]
pub struct PlacesArgs {
    /// Daemon configuration file [default: /etc/xdp-policy/xdp-policy.toml, if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// bpffs directory for the pinned programs, links and maps; `run` mounts a bpffs if
    /// there is none [default: /sys/fs/bpf/xdp-policy].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory of the per-interface state files [default: /run/xdp-policy].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl PlacesArgs {
    /// The pin and state directories: flags, then the configuration file, then defaults.
    pub fn resolve(&self) -> Result<(PathBuf, PathBuf), CliError> {
        Ok(self.resolve_with(&load_config(self.config.as_deref())?))
    }

    fn resolve_with(&self, file: &ConfigFile) -> (PathBuf, PathBuf) {
        let pin_dir = self.pin_dir.clone().or(file.pin_dir.clone());
        let state_dir = self.state_dir.clone().or(file.state_dir.clone());
        (
            pin_dir.unwrap_or_else(|| config::DEFAULT_PIN_DIR.into()),
            state_dir.unwrap_or_else(|| config::DEFAULT_STATE_DIR.into()),
        )
    }
}

fn load_config(path: Option<&Path>) -> Result<ConfigFile, CliError> {
    Ok(match path {
        Some(path) => ConfigFile::load(path)?,
        None if Path::new(config::DEFAULT_CONFIG).exists() => {
            ConfigFile::load(Path::new(config::DEFAULT_CONFIG))?
        }
        None => ConfigFile::default(),
    })
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub places: PlacesArgs,
    /// Only this interface.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Have the running daemon read the kernel's maps back now and compare them with the
    /// policy it compiled (repairing any difference), then show the result; exit 1 if
    /// they differed.
    #[arg(long)]
    pub verify: bool,
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub places: PlacesArgs,
    #[arg(long, value_name = "IFACE")]
    pub iface: String,
    /// tcp, udp, icmp, icmpv6, or an IP protocol number.
    #[arg(long, value_name = "PROTO")]
    pub proto: String,
    #[arg(long, value_name = "ADDR")]
    pub src: std::net::IpAddr,
    #[arg(long, value_name = "ADDR")]
    pub dst: std::net::IpAddr,
    #[arg(long, value_name = "PORT", default_value_t = 40000)]
    pub src_port: u16,
    #[arg(long, value_name = "PORT")]
    pub dst_port: Option<u16>,
    /// ICMP or ICMPv6 type [default: echo request].
    #[arg(long, value_name = "TYPE")]
    pub icmp_type: Option<u8>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct DetachArgs {
    #[command(flatten)]
    pub places: PlacesArgs,
    /// Only this interface [default: all].
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The configuration file, pin and state directories (flags override the file).
    #[command(flatten)]
    pub places: PlacesArgs,
    /// Interface to enforce --policy on (repeat for several). Without it, the policy's
    /// own `interfaces = [...]` are used.
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Policy file, or directory whose *.toml files are merged in file-name order.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Enforce the policy at PATH on IFACE; repeat to give interfaces policies of their own.
    #[arg(long, value_name = "IFACE=PATH", value_parser = parse_attach)]
    pub attach: Vec<(String, PathBuf)>,
    /// XDP attach mode: `auto` tries native and falls back to skb [default: auto].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Prometheus metrics address, or `off` [default: 127.0.0.1:9559].
    #[arg(long, value_name = "ADDR|off")]
    pub metrics: Option<String>,
    /// Reload only on SIGHUP, not when policy files change (for tools that write several
    /// files one after the other and signal when done).
    #[arg(long)]
    pub no_watch: bool,
    /// Read the kernel's maps back and compare them with the policy in force every this
    /// many seconds, repairing any difference; 0 turns it off [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub audit_interval: Option<u64>,
    /// Read policy files even if someone other than root could change them (for test
    /// setups; config `insecure_policy_files = true`).
    #[arg(long)]
    pub allow_insecure_policy_files: bool,
}

fn parse_attach(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((iface, path)) if !iface.is_empty() && !path.is_empty() => {
            Ok((iface.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected IFACE=PATH, got {value:?}")),
    }
}

pub use crate::config::XdpMode as XdpModeArg;

impl From<XdpModeArg> for ModeChoice {
    fn from(arg: XdpModeArg) -> Self {
        match arg {
            XdpModeArg::Auto => Self::Auto,
            XdpModeArg::Native => Self::Native,
            XdpModeArg::Skb => Self::Skb,
        }
    }
}

/// Everything `run` needs, from the flags, then the configuration file, then defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub assignments: Vec<daemon::Assignment>,
    pub mode: ModeChoice,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub metrics: config::Metrics,
    pub watch: bool,
    /// How often the maps are audited; `None`: never (SIGUSR1 and `status --verify`
    /// still audit).
    pub audit_interval: Option<std::time::Duration>,
    /// How policy files are read: the same for the first load and every reload.
    pub load: policy::LoadOptions,
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings, CliError> {
        let file = load_config(self.places.config.as_deref())?;
        let (pin_dir, state_dir) = self.places.resolve_with(&file);
        let from_flags =
            self.policy.is_some() || !self.attach.is_empty() || !self.ifaces.is_empty();
        let assignments = if from_flags || file.interfaces.is_empty() {
            daemon::assignments(&self.attach, &self.ifaces, self.policy.as_ref())
        } else {
            let attach: Vec<_> =
                file.interfaces.iter().map(|(i, p)| (i.clone(), p.clone())).collect();
            daemon::assignments(&attach, &[], None)
        }
        .map_err(CliError::Usage)?;
        let metrics = match self.metrics.as_deref().or(file.metrics.as_deref()) {
            Some(value) => config::Metrics::parse(value).map_err(CliError::Usage)?,
            None => config::Metrics::parse(config::DEFAULT_METRICS).map_err(CliError::Usage)?,
        };
        Ok(Settings {
            assignments,
            mode: self.xdp_mode.or(file.xdp_mode).unwrap_or_default().into(),
            pin_dir,
            state_dir,
            metrics,
            watch: !self.no_watch && file.watch.unwrap_or(true),
            audit_interval: match self
                .audit_interval
                .or(file.audit_interval)
                .unwrap_or(config::DEFAULT_AUDIT_INTERVAL)
            {
                0 => None,
                seconds => Some(std::time::Duration::from_secs(seconds)),
            },
            load: load_options(self.allow_insecure_policy_files, &file),
        })
    }
}

/// The flag, then the configuration file: `check` reads policies as `run` does.
fn load_options(allow_insecure: bool, file: &ConfigFile) -> policy::LoadOptions {
    policy::LoadOptions {
        allow_insecure_files: allow_insecure || file.insecure_policy_files.unwrap_or(false),
    }
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Policy files or directories.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Daemon configuration file, for `insecure_policy_files` [default:
    /// /etc/xdp-policy/xdp-policy.toml, if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Read policy files even if someone other than root could change them, as `run
    /// --allow-insecure-policy-files` does.
    #[arg(long)]
    pub allow_insecure_policy_files: bool,
}

/// Why a command failed; `main` turns it into an exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration given at start-up is unusable (exit 64, EX_USAGE).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Dataplane(Box<DataplaneError>),
    #[error("{0} of {1} policies are invalid")]
    InvalidPolicies(usize, usize),
    #[error("installing the signal handlers failed")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Watch(#[from] crate::reload::WatchError),
    #[error("{0}")]
    Usage(String),
    #[error("{}: no interface to attach to: pass --iface, or set interfaces = [...] in the policy", .0.display())]
    NoInterfaces(PathBuf),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Safety(String),
    #[error(transparent)]
    Pinned(#[from] crate::pinned::PinnedError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("the kernel's maps differed from the policy in force on {}", .0.join(", "))]
    Drift(Vec<String>),
    /// Another daemon enforces on the interface (exit 64: starting again cannot help).
    #[error(transparent)]
    InUse(crate::dataplane::pins::PinError),
}

impl From<DataplaneError> for CliError {
    fn from(e: DataplaneError) -> Self {
        Self::Dataplane(Box::new(e))
    }
}

impl CliError {
    /// sysexits.h: 64 for bad configuration, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Policy(_)
            | Self::Usage(_)
            | Self::NoInterfaces(_)
            | Self::Config(_)
            | Self::Safety(_)
            | Self::InUse(_) => 64,
            _ => 1,
        }
    }
}

pub async fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(&args),
        Command::Status(args) => {
            let (pin_dir, state_dir) = args.places.resolve()?;
            let only = args.iface.as_deref();
            let all = if args.verify {
                pinned::verify(&pin_dir, &state_dir, only)?
            } else {
                pinned::status(&pin_dir, &state_dir, only)?
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else {
                print!("{}", pinned::render_status(&all));
            }
            let drifted: Vec<String> = all
                .iter()
                .filter(|s| {
                    s.state
                        .as_ref()
                        .and_then(|st| st.audit.as_ref())
                        .is_some_and(|a| !a.drift.is_empty() || a.error.is_some())
                })
                .map(|s| s.iface.clone())
                .collect();
            if args.verify && !drifted.is_empty() {
                return Err(CliError::Drift(drifted));
            }
            Ok(())
        }
        Command::Explain(args) => {
            let (pin_dir, state_dir) = args.places.resolve()?;
            let probe = explain_probe(&args)?;
            let explanation = pinned::explain(&pin_dir, &state_dir, &args.iface, &probe)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&explanation).unwrap_or_default());
            } else {
                print!("{}", pinned::render_explanation(&explanation));
            }
            Ok(())
        }
        Command::Events(args) => events(&args).await,
        Command::Detach(args) => {
            let (pin_dir, state_dir) = args.places.resolve()?;
            for iface in pinned::detach(&pin_dir, &state_dir, args.iface.as_deref())? {
                println!("{iface}: detached");
            }
            Ok(())
        }
    }
}

async fn events(args: &EventsArgs) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (pin_dir, state_dir) = args.places.resolve()?;
    let mut source = pinned::EventSource::open(&pin_dir, &state_dir, args.iface.as_deref())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let deadline =
        args.seconds.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s));
    source.set_rate(args.rate)?;
    eprintln!("sampling drops on {} at up to {}/s per CPU; Ctrl-C stops", source.iface, args.rate);
    let mut seen = 0;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(20));
    'outer: loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = poll.tick() => {
                for line in source.drain() {
                    println!("{line}");
                    seen += 1;
                    if args.count.is_some_and(|n| seen >= n) {
                        break 'outer;
                    }
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    // Off again: sampling is for while someone watches.
    source.set_rate(0)?;
    Ok(())
}

fn explain_probe(args: &ExplainArgs) -> Result<pinned::Probe, CliError> {
    use crate::policy::reference::L4;
    let port = || {
        args.dst_port
            .ok_or_else(|| CliError::Usage(format!("--proto {} needs --dst-port", args.proto)))
    };
    let v6 = args.src.is_ipv6();
    let l4 = match args.proto.as_str() {
        "tcp" => L4::Tcp { src_port: args.src_port, dst_port: port()? },
        "udp" => L4::Udp { src_port: args.src_port, dst_port: port()? },
        "icmp" => L4::Icmp { icmp_type: args.icmp_type.unwrap_or(8) },
        "icmpv6" => L4::Icmpv6 { icmp_type: args.icmp_type.unwrap_or(128) },
        other => match other.parse::<u8>() {
            Ok(proto) => L4::Other { proto },
            Err(_) => {
                return Err(CliError::Usage(format!(
                    "--proto {other}: expected tcp, udp, icmp, icmpv6 or a protocol number"
                )));
            }
        },
    };
    if matches!(l4, L4::Icmp { .. }) && v6 || matches!(l4, L4::Icmpv6 { .. }) && !v6 {
        return Err(CliError::Usage("icmp goes with IPv4 addresses, icmpv6 with IPv6".into()));
    }
    Ok(pinned::Probe { src: args.src, dst: args.dst, l4 })
}

fn check(args: &CheckArgs) -> Result<(), CliError> {
    let file = load_config(args.config.as_deref())?;
    let options = load_options(args.allow_insecure_policy_files, &file);
    let mut invalid = 0;
    for path in &args.paths {
        match policy::load_with(path, options) {
            Ok(policy) => {
                print!("{}", describe(&policy, &path.display().to_string()));
                for w in &policy.warnings {
                    eprint!("warning: {w}");
                }
                if policy.rules.is_empty() {
                    eprintln!(
                        "warning: {}: the policy has no rules: every packet gets the default \
                         action",
                        path.display()
                    );
                }
                // The interfaces the policy names, or every one: where it may be enforced.
                let host = crate::safety::Host::probe(&policy.interfaces);
                if let Err(refusal) = crate::safety::check(&policy, &host) {
                    eprintln!("{}: {refusal}", path.display());
                    invalid += 1;
                }
            }
            Err(e) => {
                eprintln!("{e}");
                invalid += 1;
            }
        }
    }
    if invalid == 0 { Ok(()) } else { Err(CliError::InvalidPolicies(invalid, args.paths.len())) }
}

/// `PATH: valid, N rules` and a line per rule.
pub fn describe(policy: &Policy, path: &str) -> String {
    let n = policy.rules.len();
    let mut out = format!("{path}: valid, {n} rule{}\n", if n == 1 { "" } else { "s" });
    let d = &policy.defaults;
    out.push_str(
        &format!(
            "  default: {:?}{}, fragments: {:?}, unparsable: {:?}\n",
            d.action,
            if d.mode == policy::Mode::Monitor { " (monitor)" } else { "" },
            d.fragments,
            d.unparsable
        )
        .to_lowercase(),
    );
    if !policy.interfaces.is_empty() {
        out.push_str(&format!("  interfaces: {}\n", policy.interfaces.join(", ")));
    }
    let width = policy.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for rule in &policy.rules {
        out.push_str(&format!("  {:width$}  {}\n", rule.name, describe_rule(rule)));
    }
    out
}

fn describe_rule(rule: &Rule) -> String {
    let action = match rule.action {
        policy::Action::Pass => "pass",
        policy::Action::Drop => "drop",
    };
    let mut parts = vec![action.to_string(), format!("{:?}", rule.protocol).to_lowercase()];
    if rule.mode == policy::Mode::Monitor {
        parts.push("(monitor)".into());
    }
    let join = |items: Vec<String>| items.join(",");
    if let Some(nets) = &rule.src {
        parts.push(format!("src {}", join(nets.iter().map(ToString::to_string).collect())));
    }
    if let Some(ports) = &rule.src_ports {
        parts.push(format!("sport {}", join(ports.iter().map(ToString::to_string).collect())));
    }
    if let Some(nets) = &rule.dst {
        parts.push(format!("dst {}", join(nets.iter().map(ToString::to_string).collect())));
    }
    if let Some(ports) = &rule.dst_ports {
        parts.push(format!("dport {}", join(ports.iter().map(ToString::to_string).collect())));
    }
    if let Some(types) = &rule.icmp_types {
        parts.push(format!("type {}", join(types.iter().map(ToString::to_string).collect())));
    }
    parts.join(" ")
}

async fn run(args: RunArgs) -> Result<(), CliError> {
    daemon::run(args.settings()?).await
}

/// The verdict counters as a table, then a totals line.
pub fn counter_table(counts: &VerdictCounts) -> String {
    let mut out = format!("{:<18} {:>12} {:>14}\n", "verdict", "packets", "bytes");
    for verdict in policy_common::Verdict::ALL {
        let c = counts.get(verdict);
        out.push_str(&format!("{:<18} {:>12} {:>14}\n", verdict.name(), c.packets, c.bytes));
    }
    let (dropped, passed) = counts.dropped_passed();
    out.push_str(&format!("total: {dropped} dropped, {passed} passed\n"));
    out
}
