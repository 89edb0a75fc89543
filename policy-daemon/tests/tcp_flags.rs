//! TCP flag rules on the wire, with the Linux stack as the oracle: crafted TCP segments of
//! nine flag shapes (SYN, SYN+ACK, ACK, RST, FIN, FIN+ACK, PSH+ACK, NULL, Xmas), over IPv4
//! and IPv6, are sent one at a time from an AF_PACKET socket on tx to a listening socket in
//! rx, and rx's `Tcp: InSegs` counter (`/proc/net/snmp` of rx's namespace, which counts
//! every segment that reaches TCP, even a bad one) says whether each reached the stack.
//!
//! First with no filter: every segment must arrive, or the oracle is broken. Then with the
//! real `xdp-policy run` (skb mode) enforcing, one after the other by reloads, policies
//! whose only drop rule is TCP to the listener's port with one `tcp_flags` shape: each
//! segment must arrive unless the hand-written table [`RULES`] says the shape drops it, and
//! the daemon must count exactly the segments the stack did not see.
//!
//! Nothing else moves rx's TCP counters: tx has no sockets, the daemon serves no metrics,
//! and rx's answers (SYN-ACKs, RSTs) go to a MAC address nobody has, so tx's stack never
//! sees them and never answers with RSTs of its own.
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so the test holds
//! `support::serial` while it runs. Traffic stays inside the testbed's two namespaces.

mod support;

use std::{
    fmt::Write as _,
    io,
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::OwnedFd,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use policy_common::Verdict;
use support::{
    DAEMON, PolicyFile,
    netstat::NetCounters,
    packet::{self, Packet, internet_checksum, tcp_pseudo_header},
    serial, wire,
};
use testbed::{RX_IFACE, RX_V4, RX_V6, TX_V4, TX_V6, Testbed, XdpMode};

/// The listener's port: every rule under test drops TCP to it when the flags match.
const PORT: u16 = 7300;
/// A port nothing listens on, for the rule of the control policy.
const OTHER_PORT: u16 = 7301;
/// Source ports of the segments start here; each segment has its own, so none meets a
/// connection request an earlier SYN left in rx.
const FIRST_SRC_PORT: u16 = 20_000;
/// Where rx sends its answers to tx's addresses: a locally administered MAC that no
/// interface has, so tx drops them (not for this host) before its IP layer sees them.
const NOBODY_MAC: &str = "02:00:00:00:00:99";
/// How long a segment may take to reach rx's TCP before it counts as dropped. Delivery on
/// a veth pair takes microseconds.
const DELIVERY_WAIT: Duration = Duration::from_millis(150);
/// After a segment was seen: how long to watch for a second one, which would mean the
/// oracle counts something else too.
const AFTER_DELIVERY: Duration = Duration::from_millis(5);
const POLL: Duration = Duration::from_millis(1);
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

// The flag bits of the TCP header's 14th byte (RFC 9293, RFC 3168), written out here
// rather than taken from the product.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;

/// The segments sent under every policy, by name and flags byte.
const SEGMENTS: [(&str, u8); 9] = [
    ("SYN", SYN),
    ("SYN+ACK", SYN | ACK),
    ("ACK", ACK),
    ("RST", RST),
    ("FIN", FIN),
    ("FIN+ACK", FIN | ACK),
    ("PSH+ACK", PSH | ACK),
    ("NULL", 0),
    ("Xmas", FIN | PSH | URG),
];

/// The rules under test, each with the segments of [`SEGMENTS`] it drops, worked out by
/// hand from the documented meaning: listed flags set, `!`-flags clear, the others any;
/// `=` exactly the listed flags set.
const RULES: [(&str, &[&str]); 10] = [
    ("syn,!ack", &["SYN"]),
    ("=syn", &["SYN"]),
    ("syn", &["SYN", "SYN+ACK"]),
    ("ack", &["SYN+ACK", "ACK", "FIN+ACK", "PSH+ACK"]),
    ("=ack", &["ACK"]),
    ("rst", &["RST"]),
    ("=", &["NULL"]),
    ("fin,psh,urg", &["Xmas"]),
    ("!ack", &["SYN", "RST", "FIN", "NULL", "Xmas"]),
    ("=fin,ack", &["FIN+ACK"]),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Family {
    fn name(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V6 => "v6",
        }
    }
}

/// One crafted segment from tx to the listener: Ethernet, IPv4 or IPv6, a 20-byte TCP
/// header with `flags`, and every checksum right.
fn segment(family: Family, flags: u8, src_port: u16, tx_mac: [u8; 6], rx_mac: [u8; 6]) -> Vec<u8> {
    let (packet, src, dst) = match family {
        Family::V4 => (Packet::ipv4(packet::tcp(PORT)), IpAddr::V4(TX_V4), IpAddr::V4(RX_V4)),
        Family::V6 => (Packet::ipv6(packet::tcp(PORT)), IpAddr::V6(TX_V6), IpAddr::V6(RX_V6)),
    };
    // Sequence and acknowledgement numbers, a window and the checksum, as a real segment
    // has them.
    let frame = packet
        .macs(tx_mac, rx_mac)
        .src_ip(src)
        .dst_ip(dst)
        .src_port(src_port)
        .tcp_flags(flags)
        .ipv4_checksum()
        .tcp_segment(0x1000_0000 + u32::from(src_port))
        .build();
    let at = match family {
        Family::V4 => 14 + 20,
        Family::V6 => 14 + 40,
    };
    assert_eq!(frame.len(), at + 20, "a bare TCP header after the IP header");
    assert_eq!(frame[at + 13], flags, "the flags byte where TCP has it");
    frame
}

fn send(socket: &OwnedFd, frame: &[u8]) {
    if let Err(e) = wire::send(socket, frame) {
        panic!("expected the whole frame to be sent from tx: {e}");
    }
}

/// Sends one segment and says whether rx's TCP received it: InSegs grew by one within
/// [`DELIVERY_WAIT`] (and by no more), or not at all.
fn reaches_tcp(wire: &OwnedFd, rx: &mut NetCounters, frame: &[u8], what: &str) -> bool {
    let before = rx.get("Tcp:InSegs");
    send(wire, frame);
    let deadline = Instant::now() + DELIVERY_WAIT;
    let seen = loop {
        if rx.get("Tcp:InSegs") > before {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        thread::sleep(POLL);
    };
    if seen {
        thread::sleep(AFTER_DELIVERY);
    }
    let delta = rx.get("Tcp:InSegs") - before;
    assert_eq!(
        delta,
        u64::from(seen),
        "oracle: {what}: rx's Tcp InSegs moved by {delta}; something else reaches rx's TCP"
    );
    seen
}

/// What one phase saw: per family, per segment of [`SEGMENTS`], whether it was delivered.
struct Phase {
    name: String,
    delivered: [[bool; 9]; 2],
}

/// Sends every segment over both families, one at a time; `phase` numbers the source ports.
fn run_phase(
    name: String,
    phase: u16,
    wire: &OwnedFd,
    rx: &mut NetCounters,
    macs: ([u8; 6], [u8; 6]),
) -> Phase {
    let mut delivered = [[false; 9]; 2];
    for (f, family) in FAMILIES.into_iter().enumerate() {
        for (s, (segment_name, flags)) in SEGMENTS.into_iter().enumerate() {
            let src_port = FIRST_SRC_PORT + phase * 32 + (f * SEGMENTS.len() + s) as u16;
            let frame = segment(family, flags, src_port, macs.0, macs.1);
            let what = format!("{name}: {segment_name} over {}", family.name());
            delivered[f][s] = reaches_tcp(wire, rx, &frame, &what);
        }
    }
    Phase { name, delivered }
}

fn policy(rule: &str, port: u16, flags: &str) -> String {
    format!(
        "[defaults]\naction = \"pass\"\n\n[[rule]]\nname = \"{rule}\"\naction = \"drop\"\n\
         protocol = \"tcp\"\ndst_ports = {port}\ntcp_flags = \"{flags}\"\n"
    )
}

/// Whether rule `r` of [`RULES`] drops segment `s` of [`SEGMENTS`], by the table.
fn expected_drop(r: usize, s: usize) -> bool {
    RULES[r].1.contains(&SEGMENTS[s].0)
}

/// Per phase and family, what each segment did: `pass`, `drop`, and `DROP!`/`PASS!`
/// where that is not what the table expects.
fn table(phases: &[Phase], expected: &[Option<usize>]) -> String {
    let mut out = format!("  {:<28}", "policy \\ segment (v4/v6)");
    for (name, _) in SEGMENTS {
        let _ = write!(out, " {name:<11}");
    }
    out.push('\n');
    for (phase, rule) in phases.iter().zip(expected) {
        let _ = write!(out, "  {:<28}", phase.name);
        for s in 0..SEGMENTS.len() {
            let drop = rule.is_some_and(|r| expected_drop(r, s));
            let cells: Vec<&str> = (0..2)
                .map(|f| match (phase.delivered[f][s], drop) {
                    (true, false) => "pass",
                    (false, true) => "drop",
                    (true, true) => "PASS!",
                    (false, false) => "DROP!",
                })
                .collect();
            let _ = write!(out, " {:<11}", cells.join("/"));
        }
        out.push('\n');
    }
    out
}

#[test]
fn tcp_flag_rules_drop_exactly_the_segments_they_name_on_the_wire() {
    let Some(_serial) = serial("tcp_flag_rules_drop_exactly_the_segments_they_name_on_the_wire")
    else {
        return;
    };
    let start = Instant::now();
    let policy_file = PolicyFile::new("tcp-flags", &policy("other-port", OTHER_PORT, "syn"));
    let testbed = Testbed::new().expect("the testbed");
    let rx = testbed.rx().name();
    let macs = wire::macs(&testbed);
    // rx's answers to tx's addresses go to nobody (see the module's documentation).
    for addr in [IpAddr::V4(TX_V4), IpAddr::V6(TX_V6)] {
        let status = Command::new("ip")
            .args(["-n", rx, "neigh", "replace", &addr.to_string(), "lladdr", NOBODY_MAC])
            .args(["dev", RX_IFACE, "nud", "permanent"])
            .status()
            .expect("running ip neigh replace");
        assert!(status.success(), "expected `ip neigh replace {addr}` in rx to work");
    }
    let _listeners = testbed
        .rx()
        .run(|| -> io::Result<Vec<TcpListener>> {
            [IpAddr::V4(RX_V4), IpAddr::V6(RX_V6)]
                .into_iter()
                .map(|addr| TcpListener::bind(SocketAddr::new(addr, PORT)))
                .collect()
        })
        .expect("entering rx")
        .expect("listening on the port in rx");
    let wire = wire::tx_socket(&testbed);
    let mut rx_counters = NetCounters::open(testbed.rx());
    // A fresh namespace: nothing has reached its TCP yet, which also shows the file is rx's.
    assert_eq!(rx_counters.get("Tcp:InSegs"), 0, "rx's Tcp InSegs before any segment was sent");

    let mut phases = Vec::new();
    let mut expected = Vec::new();
    let mut failures = Vec::new();

    // The oracle is not vacuous: without a filter, Linux receives every shape.
    phases.push(run_phase("no filter".into(), 0, &wire, &mut rx_counters, macs));
    expected.push(None);

    // A flags rule on another port: nothing to the listener's port is dropped.
    let daemon = testbed
        .start_daemon(Path::new(DAEMON), &policy_file.0, XdpMode::Skb)
        .expect("xdp-policy to attach");
    let mut applied = 1;
    // The daemon must have dropped (verdict drop_rule, and by the rule) exactly the
    // segments rx's TCP did not see in the phase.
    let mut drops_before = 0;
    let mut check_counters = |phase: &Phase, rule: &str, failures: &mut Vec<String>| {
        let unseen = phase.delivered.iter().flatten().filter(|d| !**d).count() as u64;
        let counters = testbed
            .counters(Path::new(DAEMON))
            .unwrap_or_else(|e| panic!("expected the counters ({}): {e}", phase.name));
        let drops = counters.packets(Verdict::DropRule) - drops_before;
        drops_before = counters.packets(Verdict::DropRule);
        let by_rule = counters.rules.get(rule).copied();
        if drops != unseen || by_rule != Some(unseen) {
            failures.push(format!(
                "{}: rx's TCP missed {unseen} segment(s), the daemon counted {drops} drop_rule \
                 and {by_rule:?} for rule {rule}",
                phase.name
            ));
        }
    };
    let phase = run_phase("other port: \"syn\"".into(), 1, &wire, &mut rx_counters, macs);
    check_counters(&phase, "other-port", &mut failures);
    phases.push(phase);
    expected.push(None);

    for (r, (flags, _)) in RULES.into_iter().enumerate() {
        let rule = format!("flags-{r}");
        policy_file.write(&policy(&rule, PORT, flags));
        applied += 1;
        daemon.wait_for_log("policy applied", applied, RELOAD_DEADLINE).unwrap_or_else(|e| {
            panic!("expected the policy with tcp_flags {flags:?} applied: {e}")
        });
        let phase = run_phase(
            format!("tcp_flags = {flags:?}"),
            2 + r as u16,
            &wire,
            &mut rx_counters,
            macs,
        );
        check_counters(&phase, &rule, &mut failures);
        phases.push(phase);
        expected.push(Some(r));
    }

    for (phase, rule) in phases.iter().zip(&expected) {
        for (f, family) in FAMILIES.into_iter().enumerate() {
            for (s, (segment_name, _)) in SEGMENTS.into_iter().enumerate() {
                let drop = rule.is_some_and(|r| expected_drop(r, s));
                if phase.delivered[f][s] == drop {
                    let seen = if drop { "delivered" } else { "dropped" };
                    failures.push(format!(
                        "{}: {segment_name} over {} was {seen}, expected {}",
                        phase.name,
                        family.name(),
                        if drop { "dropped" } else { "delivered" }
                    ));
                }
            }
        }
    }
    // `explain` tries a segment with the flags asked for against the live program (the
    // last policy, "=fin,ack", is in force) and the reference.
    let explain = |flags: &str| {
        let (src, dst) = (TX_V4.to_string(), RX_V4.to_string());
        support::explained(&testbed, ("tcp", &src, &dst, PORT), &["--tcp-flags", flags])
    };
    let last = format!("flags-{}", RULES.len() - 1);
    let dropped = explain("ack,fin");
    assert!(
        dropped
            .contains(&format!("live program on {RX_IFACE}: DROP, verdict drop_rule, rule {last}"))
            && dropped.contains("flags fin,ack"),
        "{dropped}"
    );
    let passed = explain("fin");
    assert!(
        passed.contains(&format!("live program on {RX_IFACE}: PASS, verdict pass_default")),
        "{passed}"
    );
    let bad = support::explain(
        &testbed,
        ("udp", "198.18.0.1", "198.18.0.2", 53),
        &["--tcp-flags", "syn"],
    );
    assert_eq!(bad.status.code(), Some(64), "--tcp-flags with udp: {bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--tcp-flags goes with --proto tcp"));

    let output = daemon.stop().expect("xdp-policy to stop");
    assert!(output.status.success(), "xdp-policy exited {}:\n{}", output.status, output.stderr);
    let report = table(&phases, &expected);
    println!(
        "TCP segments delivered to rx's stack (Tcp InSegs) per policy, in {:.1} s:\n{report}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "expected each flags rule to drop exactly the segments of its table row:\n{}\n{report}",
        failures.join("\n")
    );
}

/// The hand-written table agrees with a plain reading of the rule text, and the crafted
/// segments carry the flags and checksums they should. No root needed.
#[test]
fn the_expectation_table_and_the_segments_are_consistent() {
    let bit = |name: &str| match name {
        "fin" => FIN,
        "syn" => SYN,
        "rst" => RST,
        "psh" => PSH,
        "ack" => ACK,
        "urg" => URG,
        other => panic!("a flag this test does not use: {other}"),
    };
    for (r, (text, _)) in RULES.into_iter().enumerate() {
        let (exact, list) = match text.strip_prefix('=') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mut set, mut clear) = (0u8, 0u8);
        for item in list.split(',').filter(|i| !i.is_empty()) {
            match item.strip_prefix('!') {
                Some(name) => clear |= bit(name),
                None => set |= bit(item),
            }
        }
        for (s, (name, flags)) in SEGMENTS.into_iter().enumerate() {
            let matches =
                if exact { flags == set } else { flags & set == set && flags & clear == 0 };
            assert_eq!(expected_drop(r, s), matches, "tcp_flags = {text:?} and {name}");
        }
    }
    for family in FAMILIES {
        for (name, flags) in SEGMENTS {
            let frame = segment(family, flags, 40_000, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let (at, src, dst) = match family {
                Family::V4 => {
                    assert_eq!(internet_checksum(&frame[14..34]), 0, "{name}: IPv4 checksum");
                    (34, IpAddr::V4(TX_V4), IpAddr::V4(RX_V4))
                }
                Family::V6 => (54, IpAddr::V6(TX_V6), IpAddr::V6(RX_V6)),
            };
            assert_eq!(frame[at + 13], flags, "{name}: flags byte");
            let whole = [tcp_pseudo_header(src, dst, 20), frame[at..].to_vec()].concat();
            assert_eq!(internet_checksum(&whole), 0, "{name} over {}: TCP checksum", family.name());
        }
    }
}
