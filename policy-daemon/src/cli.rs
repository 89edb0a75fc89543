//! The `xdp-policy` command line: `run` enforces a policy on interfaces until stopped,
//! `check` validates policy files without touching the kernel.

use std::{io, path::PathBuf, time::Instant};

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneError, ModeChoice, VerdictCounts},
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
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
    /// Policy file, or directory whose *.toml files are merged in file-name order.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// XDP attach mode: `auto` tries native and falls back to skb.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
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
            Self::Policy(_) => 64,
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
            Ok(policy) => print!("{}", describe(&policy, &path.display().to_string())),
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
    // Signal handlers first: a SIGTERM during start-up must not kill us half attached.
    let mut sigterm = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(CliError::Signals)?;

    let started = Instant::now();
    let policy = policy::load(&args.policy)?;
    let ruleset = policy::compile(&policy);
    let compiled = started.elapsed();
    let mut dataplane = Dataplane::load(&ruleset)?;
    info!(
        policy = %args.policy.display(),
        rules = policy.rules.len(),
        compile_us = compiled.as_micros() as u64,
        load_us = (started.elapsed() - compiled).as_micros() as u64,
        "policy loaded into the kernel maps"
    );
    for iface in &args.ifaces {
        let mode = dataplane.attach(iface, args.xdp_mode.into())?;
        info!(iface, mode = %mode, "attached");
    }
    info!(ifaces = args.ifaces.join(","), "enforcing; SIGTERM or SIGINT stops");

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => warn!(
                "SIGHUP: hot reload is not implemented yet; restart xdp-policy to apply a changed policy"
            ),
        }
    }
    let counts = dataplane.verdict_counts()?;
    print!("{}", counter_table(&counts));
    info!("stopping: detaching from {}", args.ifaces.join(","));
    Ok(())
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
