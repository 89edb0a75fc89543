//! The `xdp-policy` command line: `run` enforces a policy on interfaces until stopped,
//! `check` validates policy files without touching the kernel.

use std::{io, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    daemon,
    dataplane::{DataplaneError, ModeChoice, VerdictCounts},
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
    /// Load the policy, attach to the interfaces and enforce until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Validate policy files or directories and print their rules; exit 1 if invalid.
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
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
    /// XDP attach mode: `auto` tries native and falls back to skb.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Reload only on SIGHUP, not when policy files change (for tools that write several
    /// files one after the other and signal when done).
    #[arg(long)]
    pub no_watch: bool,
}

fn parse_attach(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((iface, path)) if !iface.is_empty() && !path.is_empty() => {
            Ok((iface.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected IFACE=PATH, got {value:?}")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Skb,
}

impl From<XdpModeArg> for ModeChoice {
    fn from(arg: XdpModeArg) -> Self {
        match arg {
            XdpModeArg::Auto => Self::Auto,
            XdpModeArg::Native => Self::Native,
            XdpModeArg::Skb => Self::Skb,
        }
    }
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Policy files or directories.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
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
            Self::Policy(_) | Self::Usage(_) | Self::NoInterfaces(_) => 64,
            _ => 1,
        }
    }
}

pub async fn execute(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(&args),
    }
}

fn check(args: &CheckArgs) -> Result<(), CliError> {
    let mut invalid = 0;
    for path in &args.paths {
        match policy::load(path) {
            Ok(policy) => {
                print!("{}", describe(&policy, &path.display().to_string()));
                for w in &policy.warnings {
                    eprint!("warning: {w}");
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
            "  default: {:?}{}, fragments: {:?}\n",
            d.action,
            if d.mode == policy::Mode::Monitor { " (monitor)" } else { "" },
            d.fragments
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
    let assignments = daemon::assignments(&args.attach, &args.ifaces, args.policy.as_ref())
        .map_err(CliError::Usage)?;
    daemon::run(assignments, args.xdp_mode.into(), !args.no_watch).await
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
