//! End to end: the real `xdp-policy run` enforcing `policies/edge-deny-list.toml` on the
//! rx end of a veth pair between two throw-away namespaces, judged by real traffic from
//! the tx end. A behaviour table in the manner of xdp-tools'
//! `xdp-filter/tests/test-xdp-filter.sh`: a denied port is unreachable, its neighbour and
//! the other protocol on the same port are not, ping always works; then the counter table
//! the daemon prints on SIGTERM must account for what was dropped.
//!
//! Needs root; see `support::privileged` for what happens without it. The tests share
//! kernel state (XDP, namespaces), so each holds `support::serial` while it runs.

mod support;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use policy_common::Verdict;
use policy_daemon::dataplane::error_chain;
use testbed::{
    AttachMode, Counters, Daemon, DaemonOutput, PingOutcome, RX_V4, RX_V6, TcpOutcome, Testbed,
    TestbedError, UdpOutcome, XdpMode,
};

use support::{DAEMON, serial};

/// Datagrams per UDP probe.
const DATAGRAMS: u32 = 20;
/// SYNs a blocked connect can send within its 1 s timeout: the first, and a retransmit
/// if the 1 s initial retransmission timeout fires just before the connect gives up.
/// One more for slack on a loaded machine.
const MAX_SYNS_PER_BLOCKED_CONNECT: u64 = 3;
/// At least a SYN, the ACK and the payload reach the rx end of an open connection.
const MIN_PACKETS_PER_OPEN_CONNECT: u64 = 3;
/// A tx MTU above what veth allows for native XDP on the peer (about 3.5K).
const JUMBO_MTU: u32 = 9000;

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/edge-deny-list.toml")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Tcp(u16),
    Udp(u16),
    Ping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Delivered,
    Blocked,
}

/// What edge-deny-list.toml must do, and why.
#[rustfmt::skip]
const TABLE: [(Probe, Expect, &str); 9] = [
    // First, so that address resolution is done before the counted UDP bursts.
    (Probe::Ping,       Expect::Delivered, "not TCP/UDP: always passed"),
    (Probe::Tcp(23),    Expect::Blocked,   "block-telnet"),
    (Probe::Tcp(24),    Expect::Delivered, "neighbour of a denied port"),
    (Probe::Tcp(11211), Expect::Delivered, "block-memcached-udp is UDP only"),
    (Probe::Udp(11211), Expect::Blocked,   "block-memcached-udp"),
    (Probe::Udp(11212), Expect::Delivered, "neighbour of a denied port"),
    (Probe::Udp(23),    Expect::Delivered, "block-telnet is TCP only"),
    (Probe::Udp(139),   Expect::Blocked,   "block-netbios-smb: any protocol, top of 137-139"),
    (Probe::Udp(140),   Expect::Delivered, "just above block-netbios-smb's range"),
];

#[derive(Clone, Copy, Debug)]
enum Seen {
    Tcp(TcpOutcome),
    Udp(UdpOutcome),
    Ping(PingOutcome),
}

impl Seen {
    fn is(self, expect: Expect) -> bool {
        match (self, expect) {
            (Self::Tcp(TcpOutcome::Connected), Expect::Delivered)
            | (Self::Tcp(TcpOutcome::TimedOut), Expect::Blocked)
            | (Self::Ping(PingOutcome::Reply), Expect::Delivered)
            | (Self::Ping(PingOutcome::NoReply), Expect::Blocked) => true,
            (Self::Udp(udp), Expect::Delivered) => udp.received == udp.sent,
            (Self::Udp(udp), Expect::Blocked) => udp.received == 0,
            _ => false,
        }
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(outcome) => outcome.fmt(f),
            Self::Udp(outcome) => outcome.fmt(f),
            Self::Ping(outcome) => outcome.fmt(f),
        }
    }
}

struct Row {
    probe: Probe,
    expect: Expect,
    why: &'static str,
    seen: Seen,
}

fn probe(testbed: &Testbed, dst: IpAddr, probe: Probe) -> Seen {
    let seen = match probe {
        Probe::Tcp(port) => testbed.tcp_probe(dst, port).map(Seen::Tcp),
        Probe::Udp(port) => testbed.udp_probe(dst, port, DATAGRAMS).map(Seen::Udp),
        Probe::Ping => testbed.ping(dst).map(Seen::Ping),
    };
    seen.unwrap_or_else(|e| panic!("{probe:?} to {dst}: {}", error_chain(&e)))
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        let mark = if row.seen.is(row.expect) { "ok" } else { "FAIL" };
        out.push_str(&format!(
            "  {mark:<4} {:<12} expected {:<9} saw {:<28} ({})\n",
            format!("{:?}", row.probe),
            format!("{:?}", row.expect),
            row.seen.to_string(),
            row.why,
        ));
    }
    out
}

fn start<'tb>(testbed: &'tb Testbed, mode: XdpMode) -> Daemon<'tb> {
    testbed
        .start_daemon(Path::new(DAEMON), &policy(), mode)
        .unwrap_or_else(|e| panic!("expected xdp-policy to attach, but: {}", error_chain(&e)))
}

fn stop(testbed: &Testbed, daemon: Daemon<'_>) -> (DaemonOutput, Counters) {
    let output = daemon
        .stop()
        .unwrap_or_else(|e| panic!("expected xdp-policy to stop on SIGTERM: {}", error_chain(&e)));
    assert!(
        output.status.success(),
        "expected xdp-policy to exit 0 after SIGTERM, it exited with {}; log:\n{}",
        output.status,
        output.stderr
    );
    let counters = testbed
        .counters(Path::new(DAEMON))
        .unwrap_or_else(|e| panic!("expected the counters: {}", error_chain(&e)));
    (output, counters)
}

/// Runs [`TABLE`] against `dst` with the daemon attached in `mode`, asserts every row and
/// the counters, and returns what the daemon printed.
fn behaviour_table(
    testbed: &Testbed,
    dst: IpAddr,
    mode: XdpMode,
    expect_mode: AttachMode,
) -> DaemonOutput {
    let daemon = start(testbed, mode);
    assert_eq!(
        daemon.mode(),
        expect_mode,
        "expected the kernel to show the program attached in {expect_mode} mode; log:\n{}",
        daemon.log()
    );
    let rows: Vec<Row> = TABLE
        .iter()
        .map(|&(p, expect, why)| Row { probe: p, expect, why, seen: probe(testbed, dst, p) })
        .collect();
    let (output, counters) = stop(testbed, daemon);
    let table = render(&rows);
    let context =
        format!("probes to {dst}:\n{table}counters:\n{}log:\n{}", output.stdout, output.stderr);
    assert!(
        rows.iter().all(|row| row.seen.is(row.expect)),
        "expected every probe to match the policy ({expect_mode} mode); {context}"
    );

    let udp_sent = |expect| {
        rows.iter()
            .filter(|row| row.expect == expect)
            .filter_map(|row| match row.seen {
                Seen::Udp(udp) => Some(u64::from(udp.sent)),
                _ => None,
            })
            .sum::<u64>()
    };
    let tcp_connects = |expect| {
        let tcp = |row: &&Row| matches!(row.probe, Probe::Tcp(_)) && row.expect == expect;
        rows.iter().filter(tcp).count() as u64
    };
    let dropped = counters.packets(Verdict::DropRule);
    let (blocked_udp, blocked_tcp) = (udp_sent(Expect::Blocked), tcp_connects(Expect::Blocked));
    let least = blocked_udp + blocked_tcp;
    let most = blocked_udp + MAX_SYNS_PER_BLOCKED_CONNECT * blocked_tcp;
    assert!(
        (least..=most).contains(&dropped),
        "expected drop_rule to count the {blocked_udp} datagrams to denied ports and 1 to \
         {MAX_SYNS_PER_BLOCKED_CONNECT} SYNs for each of the {blocked_tcp} blocked connects, \
         {least}..={most} packets, saw {dropped}; {context}"
    );
    // Every passing verdict counts here, so this holds however the passes are split.
    let passed = counters.passed;
    let open = udp_sent(Expect::Delivered)
        + MIN_PACKETS_PER_OPEN_CONNECT * tcp_connects(Expect::Delivered)
        + 1;
    assert!(
        passed >= open,
        "expected the program to pass at least the {open} packets of the probes to open \
         ports and the echo request, saw {passed}; {context}"
    );
    output
}

fn edge_deny_list(test: &str, dst: IpAddr, mode: XdpMode, expect_mode: AttachMode) {
    let Some(_serial) = serial(test) else { return };
    let testbed = Testbed::new()
        .unwrap_or_else(|e| panic!("expected the testbed to set up: {}", error_chain(&e)));
    behaviour_table(&testbed, dst, mode, expect_mode);
}

/// One test per address family and XDP mode, each with the whole [`TABLE`].
macro_rules! edge_deny_list_tests {
    ($($test:ident: $dst:expr, $mode:ident;)*) => {$(
        #[test]
        fn $test() {
            edge_deny_list(stringify!($test), $dst, XdpMode::$mode, AttachMode::$mode);
        }
    )*};
}

edge_deny_list_tests! {
    edge_deny_list_ipv4_native: IpAddr::V4(RX_V4), Native;
    edge_deny_list_ipv4_skb: IpAddr::V4(RX_V4), Skb;
    edge_deny_list_ipv6_native: IpAddr::V6(RX_V6), Native;
    edge_deny_list_ipv6_skb: IpAddr::V6(RX_V6), Skb;
}

#[test]
fn auto_mode_falls_back_to_skb_when_the_peer_mtu_is_too_large_for_native() {
    let Some(_serial) =
        serial("auto_mode_falls_back_to_skb_when_the_peer_mtu_is_too_large_for_native")
    else {
        return;
    };
    let testbed = Testbed::with_tx_mtu(JUMBO_MTU)
        .unwrap_or_else(|e| panic!("expected the testbed to set up: {}", error_chain(&e)));
    let output = behaviour_table(&testbed, IpAddr::V4(RX_V4), XdpMode::Auto, AttachMode::Skb);
    assert!(
        output.stderr.contains("falling back to skb"),
        "expected the log to say that native XDP was refused and skb mode used; log:\n{}",
        output.stderr
    );
}

#[test]
fn native_mode_fails_with_erange_when_the_peer_mtu_is_too_large() {
    let Some(_serial) = serial("native_mode_fails_with_erange_when_the_peer_mtu_is_too_large")
    else {
        return;
    };
    let testbed = Testbed::with_tx_mtu(JUMBO_MTU)
        .unwrap_or_else(|e| panic!("expected the testbed to set up: {}", error_chain(&e)));
    match testbed.start_daemon(Path::new(DAEMON), &policy(), XdpMode::Native) {
        Err(TestbedError::DaemonExited { status, stderr, .. }) => {
            assert!(
                !status.success(),
                "expected a non-zero exit status, saw {status}; log:\n{stderr}"
            );
            assert!(
                stderr.contains("ERANGE") && stderr.contains("MTU"),
                "expected the error to name ERANGE and the MTU; log:\n{stderr}"
            );
        }
        Ok(daemon) => panic!(
            "expected --xdp-mode native to fail with MTU {JUMBO_MTU} on the peer, but it \
             attached in {} mode; log:\n{}",
            daemon.mode(),
            daemon.log()
        ),
        Err(e) => {
            panic!("expected xdp-policy to exit with an ERANGE error, but: {}", error_chain(&e))
        }
    }
}
