//! The `xdp-policy` command line: the clap types, and [`execute`], which hands each
//! subcommand to the module that does it: `run` to the daemon, `check` to
//! [`check`], `status`, `explain`, `events` and `detach` to [`inspect`].

mod check;
mod inspect;
mod sets;

use std::{io, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::{
    daemon::{self, DaemonError},
    dataplane::{Places, XdpMode, pinned::PinnedError},
    reload::StartError,
    settings::{self, Flags, MetricsAddr, Settings, SettingsError},
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
    /// Change or read the run-time entries of a named set (`[[set]]`) on every interface
    /// whose policy has it; works whether or not the daemon runs.
    Set(SetArgs),
}

#[derive(clap::Args)]
pub struct SetArgs {
    #[command(subcommand)]
    pub action: SetAction,
}

/// The set a command is about, and where to find it.
#[derive(clap::Args)]
pub struct SetTarget {
    #[command(flatten)]
    pub places: PlacesArgs,
    /// Only this interface [default: every interface whose policy has the set].
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// The set's name (without the `@`).
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(clap::Subcommand)]
pub enum SetAction {
    /// Add addresses or networks; one already there takes the new timeout.
    Add {
        #[command(flatten)]
        target: SetTarget,
        #[arg(required = true, value_name = "ADDR")]
        addrs: Vec<String>,
        /// How long the entries stay ("90s", "10m", "1h 30m", "7d"; "0": for good)
        /// [default: the set's timeout].
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Remove run-time entries (a set file's entries go when the file no longer lists them).
    Del {
        #[command(flatten)]
        target: SetTarget,
        #[arg(required = true, value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Print the set's entries, with where they come from and when they expire.
    List {
        #[command(flatten)]
        target: SetTarget,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove every run-time entry.
    Flush {
        #[command(flatten)]
        target: SetTarget,
    },
    /// Make the run-time entries those of FILE (one address or network a line): the new
    /// ones are written first, then the others removed.
    Load {
        #[command(flatten)]
        target: SetTarget,
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// How long the entries stay [default: the set's timeout].
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Say whether ADDR is in the set and which entry holds it; exit 1 if it is not.
    Test {
        #[command(flatten)]
        target: SetTarget,
        #[arg(value_name = "ADDR")]
        addr: String,
    },
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
    pub fn resolve(&self) -> Result<Places, CliError> {
        Ok(settings::places(
            self.config.as_deref(),
            self.pin_dir.as_ref(),
            self.state_dir.as_ref(),
        )?)
    }
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
    /// The TCP flags set, e.g. "syn,ack" (fin, syn, rst, psh, ack, urg, ece, cwr; "" for
    /// none) [default: syn].
    #[arg(long, value_name = "FLAGS")]
    pub tcp_flags: Option<String>,
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
    pub xdp_mode: Option<XdpMode>,
    /// Prometheus metrics address, or `off` [default: 127.0.0.1:9559].
    #[arg(long, value_name = "ADDR|off")]
    pub metrics: Option<MetricsAddr>,
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
    /// Buckets the limit rules of an interface keep at most (about 97 bytes of kernel
    /// memory each, preallocated while the policy has a limit rule) [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_sources: Option<u32>,
}

fn parse_attach(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((iface, path)) if !iface.is_empty() && !path.is_empty() => {
            Ok((iface.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected IFACE=PATH, got {value:?}")),
    }
}

impl RunArgs {
    /// The flags over the configuration file over the defaults.
    pub fn settings(&self) -> Result<Settings, CliError> {
        let flags = Flags {
            config: self.places.config.clone(),
            pin_dir: self.places.pin_dir.clone(),
            state_dir: self.places.state_dir.clone(),
            ifaces: self.ifaces.clone(),
            policy: self.policy.clone(),
            attach: self.attach.clone(),
            xdp_mode: self.xdp_mode,
            metrics: self.metrics,
            no_watch: self.no_watch,
            audit_interval: self.audit_interval,
            allow_insecure_policy_files: self.allow_insecure_policy_files,
            max_sources: self.max_sources,
        };
        Ok(Settings::resolve(&flags)?)
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
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("{0} of {1} policies are invalid")]
    InvalidPolicies(usize, usize),
    #[error("installing the signal handlers failed")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Pinned(#[from] PinnedError),
    #[error(transparent)]
    Probe(#[from] inspect::ProbeError),
    #[error(transparent)]
    Inspect(#[from] inspect::InspectError),
    #[error("the kernel's maps differed from the policy in force on {}", .0.join(", "))]
    Drift(Vec<String>),
    #[error("auditing the kernel's maps failed on {} (status shows why)", .0.join(", "))]
    AuditFailed(Vec<String>),
    #[error(transparent)]
    Set(Box<sets::SetError>),
}

impl From<sets::SetError> for CliError {
    fn from(e: sets::SetError) -> Self {
        Self::Set(Box::new(e))
    }
}

impl CliError {
    /// sysexits.h: 64 (EX_USAGE) for a configuration that cannot work as given, so that
    /// starting again without changing it cannot help; 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Settings(_) | Self::Probe(_) => 64,
            // The policy is invalid or would lock SSH out, or another daemon holds the
            // interface.
            Self::Daemon(DaemonError::Start(StartError::Prepare(_) | StartError::InUse(_))) => 64,
            // Pins of a newer version: this one cannot take them, however often it tries.
            Self::Daemon(DaemonError::Start(StartError::Dataplane(e)))
                if matches!(**e, crate::dataplane::DataplaneError::NewerLayout { .. }) =>
            {
                64
            }
            _ => 1,
        }
    }
}

pub async fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => Ok(daemon::run(args.settings()?).await?),
        Command::Check(args) => check::check(&args),
        Command::Status(args) => inspect::status(&args),
        Command::Explain(args) => inspect::explain(&args),
        Command::Events(args) => inspect::events(&args).await,
        Command::Detach(args) => inspect::detach(&args),
        Command::Set(args) => sets::set(&args),
    }
}
