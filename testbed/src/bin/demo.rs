//! `cargo xtask demo`: runs `xdp-policy` between two throw-away network namespaces,
//! sends real TCP, UDP and ping traffic over IPv4 and IPv6 to ports the policy blocks and
//! to ports it leaves open, and prints what the policy says next to what happened, then
//! the daemon's counters. It drives `xdp-policy` like any user: `check` shows the policy,
//! `explain --json` says what it makes of each probe (the live program and the reference
//! classifier, asked before the traffic), `status --json` gives the counters.
//!
//! The namespaces go on every way out, Ctrl-C included: SIGINT and SIGTERM only raise a
//! flag, checked between probes (each takes at most about a second), and the demo returns
//! early so its guards run. Exits 1 if an observation contradicts the policy.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use policy_common::Verdict;
use signal_hook::consts::{SIGINT, SIGTERM};
use testbed::{
    Counters, PingOutcome, RX_IFACE, RX_V4, RX_V6, TX_IFACE, TX_V4, TX_V6, TcpOutcome, Testbed,
    XdpMode,
};

#[derive(Parser)]
#[command(about = "Runs xdp-policy between two throw-away network namespaces with real traffic")]
struct Args {
    /// The xdp-policy binary to run.
    #[arg(long, value_name = "PATH")]
    daemon: PathBuf,
    /// The policy it enforces.
    #[arg(long, value_name = "PATH")]
    policy: PathBuf,
}

/// Datagrams per UDP probe.
const DATAGRAMS: u32 = 20;

#[derive(Clone, Copy)]
enum Probe {
    Tcp(u16),
    Udp(u16),
    Ping,
}

/// The probes of the end-to-end test (`tests/e2e.rs`): the denied ports of
/// edge-deny-list.toml, their neighbours, and the same ports over the other protocol.
const PROBES: [Probe; 9] = [
    Probe::Ping,
    Probe::Tcp(23),
    Probe::Tcp(24),
    Probe::Tcp(11211),
    Probe::Udp(11211),
    Probe::Udp(11212),
    Probe::Udp(23),
    Probe::Udp(139),
    Probe::Udp(140),
];

/// sysexits.h EX_NOPERM.
const EXIT_NOT_ROOT: u8 = 77;
/// What a shell reports for a process ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

enum Outcome {
    /// Every observation matched the policy.
    Agreed,
    /// This many observations contradicted it.
    Contradicted(usize),
    Interrupted,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !testbed::is_root() {
        eprintln!(
            "demo: must run as root: it creates network namespaces and a veth pair, and \
             xdp-policy loads an XDP program (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)"
        );
        return ExitCode::from(EXIT_NOT_ROOT);
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&interrupted)) {
            eprintln!("demo: error: installing the handler for signal {signal} failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The guards of `run` have all been dropped by the time it returns.
    let outcome = run(&args, &interrupted);
    if interrupted.load(Ordering::Relaxed) {
        // Whatever failed, failed because the signal interrupted it.
        eprintln!("demo: interrupted; xdp-policy ended, namespaces removed");
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    match outcome {
        Ok(Outcome::Agreed) => ExitCode::SUCCESS,
        Ok(Outcome::Contradicted(n)) => {
            eprintln!("demo: {n} observation(s) contradict the policy");
            ExitCode::FAILURE
        }
        Ok(Outcome::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, interrupted: &AtomicBool) -> Result<Outcome> {
    let stop = || interrupted.load(Ordering::Relaxed);
    let check = Command::new(&args.daemon)
        .args(["check", "--config", "/dev/null"])
        .arg(&args.policy)
        .output()
        .with_context(|| format!("running {} check", args.daemon.display()))?;
    print!("{}", String::from_utf8_lossy(&check.stdout));
    ensure!(
        check.status.success(),
        "the policy does not pass `xdp-policy check`:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let testbed = Testbed::new().context("setting up the namespaces failed")?;
    let (tx, rx) = (testbed.tx().name().to_owned(), testbed.rx().name().to_owned());
    println!("\ndemo: namespaces {tx} and {rx}, joined by a veth pair:");
    println!("  {tx}  {TX_IFACE}  {TX_V4}/24  {TX_V6}/64   (sends)");
    println!("  {rx}  {RX_IFACE}  {RX_V4}/24  {RX_V6}/64   (xdp-policy runs here)");
    if stop() {
        return Ok(Outcome::Interrupted);
    }

    println!("demo: starting {} run --iface {RX_IFACE} --xdp-mode auto", args.daemon.display());
    let daemon = testbed.start_daemon(&args.daemon, &args.policy, XdpMode::Auto)?;
    println!("demo: attached to {RX_IFACE} in {} mode", daemon.mode());
    // What the policy says about every probe, asked before any traffic; the explain
    // runs count as packets too, so the counters shown at the end are taken from here on.
    let mut expectations = Vec::new();
    for dst in [IpAddr::V4(RX_V4), IpAddr::V6(RX_V6)] {
        for probe in PROBES {
            expectations.push((dst, probe, expectation(&testbed, &args.daemon, dst, probe)?));
        }
    }
    let before = testbed.counters(&args.daemon)?;
    println!("demo: probing from {tx} to {rx} (blocked TCP connects wait 1 s)\n");

    println!("  {:<22} {:<30} {:<24} verdict", "probe", "policy says", "observed");
    let mut contradictions = 0;
    for (dst, probe, (label, says, drops)) in expectations {
        if stop() {
            return Ok(Outcome::Interrupted);
        }
        let (observed, delivered) = observe(&testbed, dst, probe)?;
        // An interrupted probe (ping gets the terminal's SIGINT too) proves nothing.
        if stop() {
            return Ok(Outcome::Interrupted);
        }
        let agrees = delivered == Some(!drops);
        if !agrees {
            contradictions += 1;
        }
        let verdict = if agrees { "ok" } else { "CONTRADICTS THE POLICY" };
        println!("  {label:<22} {says:<30} {observed:<24} {verdict}");
    }

    println!("\ndemo: stopping xdp-policy (SIGTERM); its log:");
    let output = daemon.stop()?;
    for line in output.stderr.lines() {
        println!("  | {line}");
    }
    ensure!(output.status.success(), "xdp-policy exited with {}", output.status);
    let after = testbed.counters(&args.daemon)?;
    println!(
        "\ndemo: its counters for the probes' traffic (`xdp-policy status` reads them from the pins):"
    );
    print_counters(&before, &after);
    println!(
        "\ndemo: xdp-policy dropped {} packets and passed {}",
        after.dropped - before.dropped,
        after.passed - before.passed
    );
    drop(testbed);
    println!("demo: namespaces {tx} and {rx} removed");
    Ok(if contradictions == 0 { Outcome::Agreed } else { Outcome::Contradicted(contradictions) })
}

/// The probe's label, what the policy says about it (`xdp-policy explain --json`: the
/// reference classifier over the policy files, which the live program agrees with), and
/// whether that is a drop.
fn expectation(
    testbed: &Testbed,
    daemon: &Path,
    dst: IpAddr,
    probe: Probe,
) -> Result<(String, String, bool)> {
    let src = match dst {
        IpAddr::V4(_) => IpAddr::V4(TX_V4),
        IpAddr::V6(_) => IpAddr::V6(TX_V6),
    };
    let (label, proto) = match (probe, dst) {
        (Probe::Tcp(port), _) => (format!("tcp {}", SocketAddr::new(dst, port)), "tcp"),
        (Probe::Udp(port), _) => (format!("udp {}", SocketAddr::new(dst, port)), "udp"),
        (Probe::Ping, IpAddr::V4(_)) => (format!("ping {dst}"), "icmp"),
        (Probe::Ping, IpAddr::V6(_)) => (format!("ping {dst}"), "icmpv6"),
    };
    let (src, dst_text) = (src.to_string(), dst.to_string());
    let mut args = vec!["explain", "--json", "--iface", RX_IFACE, "--proto", proto];
    args.extend(["--src", &src, "--dst", &dst_text]);
    let port;
    if let Probe::Tcp(p) | Probe::Udp(p) = probe {
        port = p.to_string();
        args.extend(["--dst-port", &port]);
    }
    let out = testbed.xdp_policy(daemon, &args)?;
    ensure!(out.status.success(), "explain: {}", String::from_utf8_lossy(&out.stderr));
    let explained: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let reference = &explained["reference"];
    let (Some(action), Some(live)) =
        (reference["action"].as_str(), explained["live"]["action"].as_str())
    else {
        bail!("explain gave no reference or live action: {explained}");
    };
    ensure!(action == live, "the live program and the reference disagree: {explained}");
    let why = match reference["rule"].as_str() {
        Some(rule) => format!("{} ({rule})", action.to_lowercase()),
        None => format!("{} (default)", action.to_lowercase()),
    };
    Ok((label, why, action == "DROP"))
}

/// The counters that moved between `before` and `after`, per verdict, then per rule.
fn print_counters(before: &Counters, after: &Counters) {
    println!("  {:<18} {:>12}", "verdict", "packets");
    for verdict in Verdict::ALL {
        let n = after.packets(verdict) - before.packets(verdict);
        println!("  {:<18} {n:>12}", verdict.name());
    }
    println!("  {:<18} {:>12}", "rule", "packets");
    for (rule, n) in &after.rules {
        let n = n - before.rules.get(rule).copied().unwrap_or(0);
        println!("  {rule:<18} {n:>12}");
    }
}

/// What happened, and whether the traffic got through: `None` when only some of it did.
fn observe(testbed: &Testbed, dst: IpAddr, probe: Probe) -> Result<(String, Option<bool>)> {
    Ok(match probe {
        Probe::Tcp(port) => {
            let outcome = testbed.tcp_probe(dst, port)?;
            (outcome.to_string(), Some(outcome == TcpOutcome::Connected))
        }
        Probe::Udp(port) => {
            let outcome = testbed.udp_probe(dst, port, DATAGRAMS)?;
            let delivered = match outcome.received {
                0 => Some(false),
                n if n == outcome.sent => Some(true),
                _ => None,
            };
            (outcome.to_string(), delivered)
        }
        Probe::Ping => {
            let outcome = testbed.ping(dst)?;
            (outcome.to_string(), Some(outcome == PingOutcome::Reply))
        }
    })
}
