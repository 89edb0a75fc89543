//! `cargo xtask demo`: runs `xdp-policy` between two throw-away network namespaces,
//! sends real TCP, UDP and ping traffic over IPv4 and IPv6 to ports the policy blocks and
//! to ports it leaves open, and prints what the policy says next to what happened, then
//! the daemon's counters.
//!
//! The namespaces go on every way out, Ctrl-C included: SIGINT and SIGTERM only raise a
//! flag, checked between probes (each takes at most about a second), and the demo returns
//! early so its guards run. Exits 1 if an observation contradicts the policy.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use policy_daemon::{
    cli::{self, XdpModeArg},
    policy::{
        self, Policy,
        reference::{self, IpPacket, L4, Parsed},
    },
    testbed::{
        self, PingOutcome, RX_IFACE, RX_V4, RX_V6, TX_IFACE, TX_V4, TX_V6, TcpOutcome, Testbed,
    },
};
use signal_hook::consts::{SIGINT, SIGTERM};

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
    let policy = policy::load(&args.policy)?;
    print!("{}", cli::describe(&policy, &args.policy.display().to_string()));

    let testbed = Testbed::new().context("setting up the namespaces failed")?;
    let (tx, rx) = (testbed.tx().name().to_owned(), testbed.rx().name().to_owned());
    println!("\ndemo: namespaces {tx} and {rx}, joined by a veth pair:");
    println!("  {tx}  {TX_IFACE}  {TX_V4}/24  {TX_V6}/64   (sends)");
    println!("  {rx}  {RX_IFACE}  {RX_V4}/24  {RX_V6}/64   (xdp-policy runs here)");
    if stop() {
        return Ok(Outcome::Interrupted);
    }

    println!("demo: starting {} run --iface {RX_IFACE} --xdp-mode auto", args.daemon.display());
    let daemon = testbed.start_daemon(&args.daemon, &args.policy, XdpModeArg::Auto)?;
    println!("demo: attached to {RX_IFACE} in {} mode", daemon.mode());
    println!("demo: probing from {tx} to {rx} (blocked TCP connects wait 1 s)\n");

    println!("  {:<22} {:<30} {:<24} verdict", "probe", "policy says", "observed");
    let mut contradictions = 0;
    for dst in [IpAddr::V4(RX_V4), IpAddr::V6(RX_V6)] {
        for probe in PROBES {
            if stop() {
                return Ok(Outcome::Interrupted);
            }
            let (label, says, drops) = expectation(&policy, dst, probe);
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
    }

    println!("\ndemo: stopping xdp-policy (SIGTERM); its log and counters:");
    let output = daemon.stop()?;
    for line in output.stderr.lines() {
        println!("  | {line}");
    }
    ensure!(output.status.success(), "xdp-policy exited with {}", output.status);
    let counters = output.counters()?;
    println!();
    for line in output.stdout.lines() {
        println!("  {line}");
    }
    println!(
        "\ndemo: xdp-policy dropped {} packets and passed {}",
        counters.dropped, counters.passed
    );
    drop(testbed);
    println!("demo: namespaces {tx} and {rx} removed");
    Ok(if contradictions == 0 { Outcome::Agreed } else { Outcome::Contradicted(contradictions) })
}

/// The probe's label, what the policy says about it (by the reference classifier), and
/// whether that is a drop.
fn expectation(policy: &Policy, dst: IpAddr, probe: Probe) -> (String, String, bool) {
    let src = match dst {
        IpAddr::V4(_) => IpAddr::V4(TX_V4),
        IpAddr::V6(_) => IpAddr::V6(TX_V6),
    };
    // The probes' source ports are ephemeral; the demo policy does not look at them.
    let (label, l4) = match (probe, dst) {
        (Probe::Tcp(port), _) => (
            format!("tcp {}", SocketAddr::new(dst, port)),
            L4::Tcp { src_port: 40000, dst_port: port },
        ),
        (Probe::Udp(port), _) => (
            format!("udp {}", SocketAddr::new(dst, port)),
            L4::Udp { src_port: 40000, dst_port: port },
        ),
        (Probe::Ping, IpAddr::V4(_)) => (format!("ping {dst}"), L4::Icmp { icmp_type: 8 }),
        (Probe::Ping, IpAddr::V6(_)) => (format!("ping {dst}"), L4::Icmpv6 { icmp_type: 128 }),
    };
    let outcome = reference::classify(policy, &Parsed::Ip(IpPacket { src, dst, l4 }));
    let action = if outcome.verdict.drops() { "drop" } else { "pass" };
    let why = match outcome.rule {
        Some(i) => format!("{action} ({})", policy.rules[i].name),
        None => format!("{action} (default)"),
    };
    (label, why, outcome.verdict.drops())
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
