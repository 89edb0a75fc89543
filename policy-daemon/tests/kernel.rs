//! The XDP program in the real kernel, through BPF_PROG_TEST_RUN: a table of crafted
//! packets with the verdict and counter each must produce.

mod support;

use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr, path::Path, time::Instant};

use ipnet::Ipv4Net;

use policy_common::{
    MAP_NAMES, PORTS_PROGRAM_NAME, PROGRAM_NAME, Verdict, field,
    xdp_action::{XDP_DROP, XDP_PASS},
};
use policy_daemon::{
    dataplane::{Dataplane, Program, apply::AddrFieldId, embedded_object},
    policy::{self, Policy, reference},
};
use support::packet::*;

const POLICY: &str = r#"
[[rule]]
name = "allow-dns"
action = "pass"
protocol = "udp"
dst_ports = [53]

[[rule]]
name = "drop-telnet"
action = "drop"
protocol = "tcp"
dst_ports = [23, 2323]

[[rule]]
name = "drop-low-udp"
action = "drop"
protocol = "udp"
dst_ports = ["1-1023"]

[[rule]]
name = "drop-smb"
action = "drop"
protocol = "any"
dst_ports = [445]

[[rule]]
name = "trusted-hosts"
action = "pass"
src = ["198.18.50.0/24", "fd00:50::/32"]

[[rule]]
name = "block-bad-net"
action = "drop"
src = ["198.18.99.0/24", "198.18.98.7"]

[[rule]]
name = "watch-http"
action = "drop"
mode = "monitor"
protocol = "tcp"
dst_ports = [80]

[[rule]]
name = "block-v6-alt-http"
action = "drop"
protocol = "tcp"
src = "fd00:bad::/32"
dst_ports = 8080

[[rule]]
name = "block-echo"
action = "drop"
protocol = "icmp"
icmp_types = [8]

[[rule]]
name = "block-sport-7777-to-db"
action = "drop"
protocol = "udp"
src_ports = [7777]
dst = "198.18.0.0/16"
"#;

fn load(text: &str) -> (Policy, Dataplane) {
    let policy = policy::parse([(Path::new("test.toml"), text)]).expect("test policy is valid");
    let dataplane = Dataplane::load(&policy::compile(&policy)).unwrap_or_else(|e| {
        panic!("loading the program failed: {}", policy_daemon::dataplane::error_chain(&e))
    });
    (policy, dataplane)
}

struct Case {
    name: &'static str,
    packet: Packet,
    verdict: Verdict,
    /// The rule that must decide, by name; `None` for the default and non-rule verdicts.
    rule: Option<&'static str>,
}

fn case(name: &'static str, packet: Packet, verdict: Verdict) -> Case {
    Case { name, packet, verdict, rule: None }
}

fn by(rule: &'static str, name: &'static str, packet: Packet, verdict: Verdict) -> Case {
    Case { name, packet, verdict, rule: Some(rule) }
}

fn deny_list_cases() -> Vec<Case> {
    use Verdict::*;
    vec![
        // Ports, first match wins.
        by("drop-telnet", "ipv4 tcp to a dropped port", Packet::ipv4(tcp(23)), DropRule),
        by("drop-telnet", "ipv4 tcp to the second dropped port", Packet::ipv4(tcp(2323)), DropRule),
        case("ipv4 tcp to the neighbouring port", Packet::ipv4(tcp(24)), PassDefault),
        by("allow-dns", "udp to a pass rule before a drop range", Packet::ipv4(udp(53)), PassRule),
        by("drop-low-udp", "udp inside the dropped range", Packet::ipv4(udp(54)), DropRule),
        by("drop-low-udp", "udp at the range's end", Packet::ipv4(udp(1023)), DropRule),
        case("udp past the range", Packet::ipv4(udp(1024)), PassDefault),
        case("tcp to a udp-only range", Packet::ipv4(tcp(54)), PassDefault),
        by("drop-smb", "tcp to an any-protocol port", Packet::ipv4(tcp(445)), DropRule),
        by(
            "drop-low-udp",
            "udp 445 is caught by the earlier udp range",
            Packet::ipv6(udp(445)),
            DropRule,
        ),
        by("drop-smb", "ipv6 tcp to an any-protocol port", Packet::ipv6(tcp(445)), DropRule),
        case("tcp to port 0", Packet::ipv4(tcp(0)), PassDefault),
        case("udp to port 65535", Packet::ipv4(udp(65535)), PassDefault),
        by("drop-telnet", "ipv6 tcp to a dropped port", Packet::ipv6(tcp(23)), DropRule),
        by("allow-dns", "ipv6 udp to the pass rule", Packet::ipv6(udp(53)), PassRule),
        // Addresses.
        by(
            "drop-telnet",
            "telnet from a trusted host: the earlier rule wins",
            Packet::ipv4(tcp(23)).src("198.18.50.9"),
            DropRule,
        ),
        by(
            "trusted-hosts",
            "trusted ipv4 host to an open port",
            Packet::ipv4(tcp(24)).src("198.18.50.9"),
            PassRule,
        ),
        by(
            "trusted-hosts",
            "trusted ipv6 host",
            Packet::ipv6(udp(5000)).src("fd00:50::1"),
            PassRule,
        ),
        by(
            "block-bad-net",
            "ipv4 host in a blocked /24",
            Packet::ipv4(tcp(24)).src("198.18.99.200"),
            DropRule,
        ),
        by(
            "block-bad-net",
            "the blocked single address",
            Packet::ipv4(udp(5000)).src("198.18.98.7"),
            DropRule,
        ),
        case(
            "next to the blocked single address",
            Packet::ipv4(udp(5000)).src("198.18.98.8"),
            PassDefault,
        ),
        by(
            "block-bad-net",
            "icmp from the blocked net",
            Packet::ipv4(icmp(0)).src("198.18.99.1"),
            DropRule,
        ),
        case(
            "blocked ipv4 net does not touch ipv6",
            Packet::ipv6(tcp(24)).src("fd00::99"),
            PassDefault,
        ),
        by(
            "block-v6-alt-http",
            "ipv6 src and port together",
            Packet::ipv6(tcp(8080)).src("fd00:bad::1"),
            DropRule,
        ),
        case("ipv6 src without the port", Packet::ipv6(tcp(8081)).src("fd00:bad::1"), PassDefault),
        case(
            "the port without the ipv6 src",
            Packet::ipv6(tcp(8080)).src("fd00:bae::1"),
            PassDefault,
        ),
        by(
            "block-sport-7777-to-db",
            "udp source port and destination net",
            Packet::ipv4(udp(5000)).src_port(7777),
            DropRule,
        ),
        case(
            "udp source port outside the destination net",
            Packet::ipv4(udp(5000)).src_port(7777).dst("198.19.0.1"),
            PassDefault,
        ),
        case("tcp with that source port", Packet::ipv4(tcp(5000)).src_port(7777), PassDefault),
        // Monitor mode counts and passes.
        by("watch-http", "monitored drop rule", Packet::ipv4(tcp(80)), MonitorRule),
        // ICMP types.
        by("block-echo", "icmp echo request", Packet::ipv4(icmp(8)), DropRule),
        case("icmp echo reply", Packet::ipv4(icmp(0)), PassDefault),
        case("icmpv6 echo request is not icmp", Packet::ipv6(icmpv6(128)), PassDefault),
        case("icmp type 8 over ipv6 is another protocol", Packet::ipv6(icmp(8)), PassDefault),
        // VLAN tags.
        by(
            "drop-telnet",
            "802.1Q ipv4 tcp dropped",
            Packet::ipv4(tcp(23)).vlan(ETH_P_8021Q),
            DropRule,
        ),
        case("802.1Q ipv4 tcp open", Packet::ipv4(tcp(81)).vlan(ETH_P_8021Q), PassDefault),
        by(
            "drop-telnet",
            "802.1ad + 802.1Q ipv6 tcp dropped",
            Packet::ipv6(tcp(23)).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q),
            DropRule,
        ),
        by(
            "drop-telnet",
            "three VLAN tags are walked",
            Packet::ipv4(tcp(23)).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q).vlan(ETH_P_8021Q),
            DropRule,
        ),
        by(
            "drop-telnet",
            "eight VLAN tags (the bound) are walked",
            (0..8).fold(Packet::ipv6(tcp(23)), |p, _| p.vlan(ETH_P_8021Q)),
            DropRule,
        ),
        case(
            "nine VLAN tags are past the bound",
            (0..9).fold(Packet::ipv4(tcp(24)), |p, _| p.vlan(ETH_P_8021AD)),
            DropUnparsable,
        ),
        case(
            "VLAN tag cut short",
            Packet::ipv4(tcp(23)).vlan(ETH_P_8021Q).truncate(16),
            DropUnparsable,
        ),
        // IPv4 header length and options.
        by(
            "drop-telnet",
            "ipv4 with 12 bytes of options",
            Packet::ipv4(tcp(23)).ipv4_options(12),
            DropRule,
        ),
        case(
            "ipv4 with 40 bytes of options, open port",
            Packet::ipv4(tcp(24)).ipv4_options(40),
            PassDefault,
        ),
        case("ipv4 IHL below 5", Packet::ipv4(tcp(23)).ipv4_ihl(4), DropUnparsable),
        case("ipv4 IHL past the packet's end", Packet::ipv4(tcp(23)).ipv4_ihl(15), DropUnparsable),
        case("version 6 in an IPv4 frame", Packet::ipv4(tcp(23)).ip_version(6), DropUnparsable),
        // Lengths: the IP length decides where the packet ends, not the frame.
        by(
            "drop-low-udp",
            "an Ethernet trailer past the IP total length is not read",
            Packet::ipv4(udp(54)).trailer(18),
            DropRule,
        ),
        case(
            "ipv4 total length shorter than the header",
            Packet::ipv4(tcp(24)).ip_len(19),
            DropUnparsable,
        ),
        case(
            "ipv4 total length past the frame",
            Packet::ipv4(udp(5000)).ip_len(20 + 8 + 1),
            DropUnparsable,
        ),
        case(
            "tcp header split by the total length, the rest a trailer",
            Packet::ipv4(tcp(24)).ip_len(20 + 8),
            DropUnparsable,
        ),
        by(
            "drop-telnet",
            "ipv4 total length 0: up to the frame's end",
            Packet::ipv4(tcp(23)).ip_len(0),
            DropRule,
        ),
        by(
            "drop-telnet",
            "ipv6 payload length 0: up to the frame's end",
            Packet::ipv6(tcp(23)).ip_len(0),
            DropRule,
        ),
        case("ipv6 payload length past the frame", Packet::ipv6(udp(9)).ip_len(9), DropUnparsable),
        case(
            "ipv6 udp header split by the payload length",
            Packet::ipv6(udp(5000)).ip_len(4).trailer(8),
            DropUnparsable,
        ),
        // Fragments (fragments = "rules", the default): only the first carries ports;
        // later ones meet only the rules that look at no port.
        by(
            "drop-telnet",
            "ipv4 first fragment",
            Packet::ipv4(tcp(23)).ipv4_fragment(0, true),
            DropRule,
        ),
        case(
            "ipv4 first fragment with 8 bytes of tcp",
            Packet::ipv4(tcp(24)).ipv4_fragment(0, true).ip_len(20 + 8).trailer(12),
            DropUnparsable,
        ),
        case(
            "ipv4 first fragment with 16 bytes of tcp and options",
            Packet::ipv4(tcp(24)).ipv4_options(8).ipv4_fragment(0, true).ip_len(28 + 16),
            DropUnparsable,
        ),
        case(
            "ipv4 non-first fragment that looks like port 23",
            Packet::ipv4(tcp(23)).ipv4_fragment(185, true),
            PassDefault,
        ),
        by(
            "block-bad-net",
            "non-first fragment from a blocked net",
            Packet::ipv4(udp(54)).ipv4_fragment(1, false).src("198.18.99.3"),
            DropRule,
        ),
        by("drop-telnet", "ipv6 first fragment", Packet::ipv6(tcp(23)).ipv6_fragment(0), DropRule),
        case("ipv6 non-first fragment", Packet::ipv6(tcp(23)).ipv6_fragment(100), PassDefault),
        case(
            "ipv6 first fragment that splits the extension-header chain",
            Packet::ipv6(tcp(24))
                .ipv6_fragment(0)
                .ipv6_ext_sized(IPPROTO_DSTOPTS, 2)
                .ip_len(8 + 16)
                .trailer(28),
            DropUnparsable,
        ),
        case(
            "ipv6 first fragment with the chain but 8 bytes of tcp",
            Packet::ipv6(tcp(24)).ipv6_fragment(0).ipv6_ext(IPPROTO_DSTOPTS).ip_len(8 + 8 + 8),
            DropUnparsable,
        ),
        // IPv6 extension headers.
        by(
            "drop-telnet",
            "ipv6 hop-by-hop, routing, destination options",
            Packet::ipv6(tcp(23))
                .ipv6_ext(IPPROTO_HOPOPTS)
                .ipv6_ext(IPPROTO_ROUTING)
                .ipv6_ext(IPPROTO_DSTOPTS),
            DropRule,
        ),
        by("drop-low-udp", "ipv6 authentication header", Packet::ipv6(udp(54)).ipv6_ah(), DropRule),
        by(
            "drop-telnet",
            "seven extension headers",
            (0..7).fold(Packet::ipv6(tcp(23)), |p, _| p.ipv6_ext(IPPROTO_DSTOPTS)),
            DropRule,
        ),
        by(
            "drop-telnet",
            "32 extension headers (the bound)",
            (0..32).fold(Packet::ipv6(tcp(23)), |p, i| {
                p.ipv6_ext([IPPROTO_DSTOPTS, IPPROTO_ROUTING][i % 2])
            }),
            DropRule,
        ),
        case(
            "33 extension headers are past the bound",
            (0..33).fold(Packet::ipv6(tcp(24)), |p, _| p.ipv6_ext(IPPROTO_DSTOPTS)),
            DropUnparsable,
        ),
        case(
            "a header chain longer than 1,280 bytes is past the bound",
            Packet::ipv6(udp(5000)).ipv6_ext_sized(IPPROTO_DSTOPTS, 255).ipv6_ext(IPPROTO_DSTOPTS),
            DropUnparsable,
        ),
        by(
            "drop-low-udp",
            "a long header that ends inside the bound",
            Packet::ipv6(udp(54)).ipv6_ext_sized(IPPROTO_DSTOPTS, 150),
            DropRule,
        ),
        case(
            "extension header cut short",
            Packet::ipv6(tcp(23)).ipv6_ext(IPPROTO_DSTOPTS).truncate(14 + 40 + 1),
            DropUnparsable,
        ),
        case(
            "extension header longer than the payload",
            Packet::ipv6(udp(5000)).ipv6_ext_sized(IPPROTO_DSTOPTS, 3).ip_len(24),
            DropUnparsable,
        ),
        case("ESP is opaque", Packet::ipv6(L4::Other { proto: IPPROTO_ESP }), PassDefault),
        // Truncated headers are never matched.
        case("ethernet header only", Packet::ipv4(tcp(23)).truncate(14), DropUnparsable),
        case("ipv4 header cut short", Packet::ipv4(tcp(23)).truncate(14 + 19), DropUnparsable),
        case("ipv6 header cut short", Packet::ipv6(tcp(23)).truncate(14 + 39), DropUnparsable),
        case(
            "tcp header cut short",
            Packet::ipv4(tcp(23)).truncate(14 + 20 + 19).ip_len(20 + 19),
            DropUnparsable,
        ),
        case(
            "udp header cut short",
            Packet::ipv4(udp(54)).truncate(14 + 20 + 7).ip_len(20 + 7),
            DropUnparsable,
        ),
        case(
            "icmp header cut short",
            Packet::ipv4(icmp(8)).truncate(14 + 20 + 7).ip_len(20 + 7),
            DropUnparsable,
        ),
        case(
            "tcp data offset below 5",
            Packet::ipv4(L4::Tcp { dst_port: 23, data_offset: 4 }),
            DropUnparsable,
        ),
        case(
            "tcp options past the segment",
            Packet::ipv4(L4::Tcp { dst_port: 24, data_offset: 6 }),
            DropUnparsable,
        ),
        case("arp", Packet::arp(), PassNotIp),
    ]
}

const DEFAULT_DENY: &str = r#"
[defaults]
action = "drop"
fragments = "drop"

[[rule]]
name = "allow-ssh"
action = "pass"
protocol = "tcp"
dst_ports = 22

[[rule]]
name = "allow-ping"
action = "pass"
protocol = "icmp"
icmp_types = [8]
"#;

fn default_deny_cases() -> Vec<Case> {
    use Verdict::*;
    vec![
        by("allow-ssh", "the allowed port", Packet::ipv4(tcp(22)), PassRule),
        by("allow-ping", "the allowed icmp type", Packet::ipv4(icmp(8)), PassRule),
        case("anything else is dropped", Packet::ipv4(tcp(23)), DropDefault),
        case("ipv6 too", Packet::ipv6(udp(22)), DropDefault),
        case("neighbour solicitation passes", Packet::ipv6(icmpv6(135)), PassNeighbour),
        case("router advertisement passes", Packet::ipv6(icmpv6(134)), PassNeighbour),
        case("icmpv6 echo is dropped", Packet::ipv6(icmpv6(128)), DropDefault),
        case("arp passes", Packet::arp(), PassNotIp),
        case("fragments = drop", Packet::ipv4(tcp(22)).ipv4_fragment(10, false), DropFragment),
        by(
            "allow-ssh",
            "but not the first fragment",
            Packet::ipv4(tcp(22)).ipv4_fragment(0, true),
            PassRule,
        ),
        case("unparsable is dropped", Packet::ipv4(tcp(22)).truncate(30), DropUnparsable),
    ]
}

const MONITOR_DEFAULT: &str = r#"
[defaults]
action = "drop"
mode = "monitor"
fragments = "pass"
unparsable = "pass"

[[rule]]
name = "drop-telnet"
action = "drop"
mode = "enforce"
protocol = "tcp"
dst_ports = 23

[[rule]]
name = "drop-x11"
action = "drop"
protocol = "tcp"
dst_ports = "6000-6063"
"#;

fn monitor_cases() -> Vec<Case> {
    use Verdict::*;
    vec![
        by("drop-telnet", "a rule's own enforce mode wins", Packet::ipv4(tcp(23)), DropRule),
        by(
            "drop-x11",
            "a rule without a mode takes the policy's",
            Packet::ipv4(tcp(6010)),
            MonitorRule,
        ),
        case("the default drop only counts", Packet::ipv4(tcp(24)), MonitorDefault),
        case("fragments = pass", Packet::ipv6(tcp(23)).ipv6_fragment(3), PassFragment),
        case("unparsable = pass", Packet::ipv6(tcp(23)).truncate(60), PassUnparsable),
    ]
}

const FLAGS: &str = r#"
[defaults]
fragments = "rules"

[[rule]]
name = "syn-flood"
action = "drop"
protocol = "tcp"
dst_ports = 443
tcp_flags = "syn,!ack"

[[rule]]
name = "null-scan"
action = "drop"
protocol = "tcp"
tcp_flags = "="

[[rule]]
name = "xmas-scan"
action = "drop"
protocol = "tcp"
tcp_flags = "fin,psh,urg"

[[rule]]
name = "exactly-rst"
action = "drop"
protocol = "tcp"
dst_ports = 25
tcp_flags = "=rst"

[[rule]]
name = "pass-web"
action = "pass"
protocol = "tcp"
dst_ports = 443
"#;

fn flag_cases() -> Vec<Case> {
    use Verdict::*;
    use policy_common::tcp_flags::*;
    let to = |port: u16, flags: u8| Packet::ipv4(tcp(port)).tcp_flags(flags);
    let to6 = |port: u16, flags: u8| Packet::ipv6(tcp(port)).tcp_flags(flags);
    vec![
        by("syn-flood", "a SYN to 443", to(443, SYN), DropRule),
        by("syn-flood", "a SYN with ECN bits", to6(443, SYN | ECE | CWR), DropRule),
        by("pass-web", "a SYN+ACK is not a SYN without ACK", to(443, SYN | ACK), PassRule),
        by("pass-web", "an ACK", to6(443, ACK), PassRule),
        case("a SYN to another port", to(80, SYN), PassDefault),
        by("null-scan", "no flags at all", to(80, 0), DropRule),
        by("null-scan", "no flags, IPv6", to6(443, 0), DropRule),
        by("xmas-scan", "FIN+PSH+URG", to(80, FIN | PSH | URG), DropRule),
        by("xmas-scan", "FIN+PSH+URG with ACK", to6(22, FIN | PSH | URG | ACK), DropRule),
        case("FIN+PSH alone", to(80, FIN | PSH), PassDefault),
        by("exactly-rst", "exactly RST", to(25, RST), DropRule),
        case("RST+ACK is not exactly RST", to(25, RST | ACK), PassDefault),
        // A non-first fragment has no TCP header: only rules without flags match it.
        case("a fragment: no ports, no flags", to(443, SYN).ipv4_fragment(3, false), PassDefault),
        case("not a NULL scan: its flags are unknown", to6(80, 0).ipv6_fragment(3), PassDefault),
        case("UDP is not looked at", Packet::ipv4(udp(443)), PassDefault),
    ]
}

/// Runs every case, checks the XDP action, the verdict counter, the deciding rule's
/// counter, and that the reference classifier expects the same.
fn run_table(policy_text: &str, cases: Vec<Case>) {
    let (policy, dataplane) = load(policy_text);
    let mut failures = Vec::new();
    for case in cases {
        let bytes = case.packet.build();
        let expected_rule = case.rule.map(|name| {
            policy
                .rules
                .iter()
                .position(|r| r.name == name)
                .unwrap_or_else(|| panic!("no rule {name}"))
        });
        let reference = reference::classify(&policy, &reference::parse_packet(&bytes));
        if (reference.verdict, reference.rule) != (case.verdict, expected_rule) {
            failures.push(format!(
                "{}: the reference classifier says {:?} by rule {:?}, the table {:?} by {:?}",
                case.name, reference.verdict, reference.rule, case.verdict, case.rule
            ));
        }
        let before = dataplane.verdict_counts().expect("reading the counters");
        let rules_before = dataplane.rule_counts().expect("reading the rule counters");
        let action = dataplane.test_run(&bytes).expect("BPF_PROG_TEST_RUN");
        let after = dataplane.verdict_counts().expect("reading the counters");
        let rules_after = dataplane.rule_counts().expect("reading the rule counters");
        let expected_action = if case.verdict.drops() { XDP_DROP } else { XDP_PASS };
        if action != expected_action {
            failures.push(format!(
                "{}: expected XDP action {expected_action} ({:?}), got {action}",
                case.name, case.verdict
            ));
        }
        for verdict in Verdict::ALL {
            let (b, a) = (before.get(verdict), after.get(verdict));
            let seen = (a.packets - b.packets, a.bytes - b.bytes);
            let expected = if verdict == case.verdict { (1, bytes.len() as u64) } else { (0, 0) };
            if seen != expected {
                failures.push(format!(
                    "{}: expected {verdict:?} to count {expected:?} (packets, bytes), it counted {seen:?}",
                    case.name
                ));
            }
        }
        for (i, ((name, b), (_, a))) in rules_before.iter().zip(&rules_after).enumerate() {
            let expected = u64::from(expected_rule == Some(i));
            if a.packets - b.packets != expected {
                failures.push(format!(
                    "{}: expected rule {name} to count {expected} packet(s), it counted {}",
                    case.name,
                    a.packets - b.packets
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn deny_list_table() {
    if support::privileged("deny_list_table") {
        run_table(POLICY, deny_list_cases());
    }
}

#[test]
fn default_deny_table() {
    if support::privileged("default_deny_table") {
        run_table(DEFAULT_DENY, default_deny_cases());
    }
}

#[test]
fn monitor_table() {
    if support::privileged("monitor_table") {
        run_table(MONITOR_DEFAULT, monitor_cases());
    }
}

#[test]
fn flag_table() {
    if support::privileged("flag_table") {
        run_table(FLAGS, flag_cases());
    }
}

#[test]
fn an_empty_policy_passes_everything() {
    if !support::privileged("an_empty_policy_passes_everything") {
        return;
    }
    let (_, dataplane) = load("");
    for port in [0, 22, 23, 53, 445, 65535] {
        for packet in [Packet::ipv4(tcp(port)), Packet::ipv6(udp(port))] {
            let action = dataplane.test_run(&packet.build()).expect("BPF_PROG_TEST_RUN");
            assert_eq!(action, XDP_PASS, "{packet:?} must pass under an empty policy");
        }
    }
    let counts = dataplane.verdict_counts().expect("reading the counters");
    assert_eq!(counts.get(Verdict::PassDefault).packets, 12);
}

#[test]
fn a_full_policy_of_4096_rules_decides_by_each_rule() {
    if !support::privileged("a_full_policy_of_4096_rules_decides_by_each_rule") {
        return;
    }
    const RULES: usize = policy_common::MAX_RULES;
    assert_eq!(RULES, 4096);
    // Port-only (the port table decides), then with a source network on every rule (the
    // classifier's bitmaps: the source admits every rule, the port only the packet's, in
    // any of the 64 words).
    for src in ["", "src = \"198.18.0.0/15\"\n"] {
        let mut text = String::new();
        for i in 0..RULES {
            // Every third rule passes, so that a rule found in the wrong word shows.
            let action = if i % 3 == 0 { "pass" } else { "drop" };
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\naction = \"{action}\"\nprotocol = \"udp\"\n\
                 dst_ports = {}\n{src}",
                10_000 + i
            ));
        }
        text.push_str("[defaults]\naction = \"drop\"\n");
        let (policy, dataplane) = load(&text);
        assert_eq!(policy.rules.len(), RULES);
        // The first, a middle and the last rule of every word.
        let probes = (0..RULES / 64).flat_map(|w| [64 * w, 64 * w + 37, 64 * w + 63]);
        for rule in probes {
            let packet = Packet::ipv4(udp(10_000 + rule as u16)).src("198.18.0.7").build();
            let want = if rule % 3 == 0 { XDP_PASS } else { XDP_DROP };
            let got = dataplane.test_run(&packet).expect("BPF_PROG_TEST_RUN");
            assert_eq!(got, want, "rule {rule} ({src:?})");
            let count = dataplane.rule_count(rule).expect("reading").map(|c| c.packets);
            assert_eq!(count, Some(1), "rule {rule} counted once ({src:?})");
        }
        let miss = Packet::ipv4(udp(9_999)).src("198.18.0.7").build();
        assert_eq!(dataplane.test_run(&miss).expect("run"), XDP_DROP, "no rule: the default");
        // Rule 0 passes, if the source is not what the rules ask for.
        let outside = Packet::ipv4(udp(10_000)).src("198.20.0.7").build();
        let want = if src.is_empty() { XDP_PASS } else { XDP_DROP };
        assert_eq!(dataplane.test_run(&outside).expect("run"), want, "outside the rules' network");
    }
}

/// A packet whose fields each admit rules in the same bitmap words, but no rule in common
/// until the third of them, all past the 16 words the classifier reads inline: the
/// summaries bound the walk of `xdp_policy_scan`, which must read past the words without
/// a common rule. Without the common rule, every word is read and none holds one: the
/// default.
#[test]
fn a_rule_past_words_without_a_common_rule_is_found() {
    if !support::privileged("a_rule_past_words_without_a_common_rule_is_found") {
        return;
    }
    let rule = |name: &str, action: &str, port: u16, src: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\naction = \"{action}\"\nprotocol = \"udp\"\n\
             dst_ports = {port}\nsrc = \"{src}\"\n"
        )
    };
    for answer_port in [53, 56] {
        let mut text = String::new();
        // Words 16 and 17 each hold a rule of the port and one of the source; word 20
        // the one rule of both.
        for i in 0..1300u16 {
            text.push_str(&match i {
                1024 => rule("a0", "drop", 53, "198.19.1.0/24"),
                1025 => rule("b0", "drop", 54, "198.18.0.0/24"),
                1088 => rule("a1", "drop", 53, "198.19.2.0/24"),
                1089 => rule("b1", "drop", 55, "198.18.0.0/24"),
                1290 => rule("answer", "pass", answer_port, "198.18.0.0/24"),
                _ => rule(&format!("filler{i}"), "drop", 2000 + i, "198.19.200.0/24"),
            });
        }
        text.push_str("[defaults]\naction = \"drop\"\n");
        let (policy, dataplane) = load(&text);
        assert_eq!(policy.rules.len(), 1300);
        let packet = Packet::ipv4(udp(53)).src("198.18.0.7").build();
        let got = dataplane.test_run(&packet).expect("BPF_PROG_TEST_RUN");
        if answer_port == 53 {
            assert_eq!(got, XDP_PASS, "rule 1290 decides");
            assert_eq!(dataplane.rule_count(1290).expect("reading").map(|c| c.packets), Some(1));
        } else {
            assert_eq!(got, XDP_DROP, "no rule: the default");
            let counts = dataplane.verdict_counts().expect("reading the counters");
            assert_eq!(counts.get(Verdict::DropDefault).packets, 1);
        }
    }
}

/// The names userspace looks up exist in the object it embeds (no root needed).
#[test]
fn embedded_object_has_every_program_and_map() {
    let object = embedded_object();
    assert!(
        !object.is_empty(),
        "the daemon was built without its eBPF object: run the tests with `cargo xtask test`"
    );
    let parsed = aya_obj::Object::parse(object).expect("the embedded object parses");
    for program in [PROGRAM_NAME, PORTS_PROGRAM_NAME] {
        assert!(parsed.programs.contains_key(program), "no program {program} in the object");
    }
    for name in MAP_NAMES {
        assert!(name.len() <= 15, "map name {name} is longer than the kernel keeps");
        assert!(parsed.maps.contains_key(name), "no map {name} in the object");
    }
}

/// Instructions the verifier may walk before it refuses a program.
const VERIFIER_LIMIT: u64 = 1_000_000;

/// The program stays well under the verifier's limit: a change that adds one branch in
/// the wrong place can multiply the paths it walks (the TCP flags field once took it
/// past the limit), and a program near it would fail to load on the next small change
/// or compiler update. The figure, from the kernel's own `verified_insns`, is printed.
#[test]
fn the_program_verifies_with_a_margin() {
    if !support::privileged("the_program_verifies_with_a_margin") {
        return;
    }
    use std::os::fd::AsRawFd as _;
    // The full program, and the port program (a policy of protocol and port rules).
    let port_only =
        "[[rule]]\nname = \"a\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = 9\n";
    for (text, program) in [(POLICY, Program::Full), (port_only, Program::Ports)] {
        let (_, mut dataplane) = load(text);
        assert_eq!(dataplane.current_program(), program);
        let fd = dataplane.program_fd().expect("the program's descriptor").as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        let verified: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("verified_insns:")?.trim().parse().ok())
            .expect("verified_insns in the program's fdinfo");
        println!("{program}: the verifier walked {verified} instructions (limit {VERIFIER_LIMIT})");
        assert!(
            verified < VERIFIER_LIMIT * 9 / 10,
            "{program}: the verifier walked {verified} instructions, within 10% of its limit \
             of {VERIFIER_LIMIT}: find the branch that multiplied its paths"
        );
        // The port program's walk is most of a port-only policy's first apply (about a
        // microsecond an instruction): 27,000 instructions since the IP headers of tagged
        // frames and IPv6 extension chains are parsed in global functions, 400,000 before.
        if program == Program::Ports {
            assert!(
                verified < PORTS_VERIFIER_BUDGET,
                "{program}: the verifier walked {verified} instructions, over its budget of \
                 {PORTS_VERIFIER_BUDGET}: a path through the parser multiplies the \
                 classifier's again (see policy-ebpf/src/parse.rs, `parse`)"
            );
        }
    }
}

/// Instructions the port program's verification may take (see
/// `the_program_verifies_with_a_margin`).
const PORTS_VERIFIER_BUDGET: u64 = 60_000;

/// The limits hold in the kernel: 100,000 IPv4 prefixes plus IPv6 ones in one policy,
/// classified right at either end of the tries. Prints how long compile and apply took
/// (figures for the record, not assertions: `cargo xtask bench` measures properly).
#[test]
fn a_hundred_thousand_prefixes_load_and_classify() {
    if !support::privileged("a_hundred_thousand_prefixes_load_and_classify") {
        return;
    }
    const PREFIXES: u32 = 100_000;
    // From 198.18.0.0 up, alternately a /32 and a /31, every other address: all
    // distinct, no host bits. (Policy contents only: no traffic goes there.)
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
    let mut nets = String::new();
    for i in 0..PREFIXES {
        let addr = base + i * 2;
        let len = if i % 2 == 0 { 32 } else { 31 };
        nets.push_str(&format!("\"{}/{len}\",", std::net::Ipv4Addr::from(addr)));
    }
    let text = format!(
        "[[rule]]\nname = \"v6-lab\"\naction = \"pass\"\nsrc = [\"fd00:1::/32\", \"fd00:1:2::/48\"]\n\
         [[rule]]\nname = \"blocklist\"\naction = \"drop\"\nsrc = [{nets}]\n"
    );
    let started = std::time::Instant::now();
    let policy = policy::parse([(Path::new("big.toml"), text.as_str())]).expect("valid");
    let parsed = started.elapsed();
    let ruleset = policy::compile(&policy);
    let compiled = started.elapsed() - parsed;
    assert_eq!(ruleset.src_v4.len(), PREFIXES as usize + 1, "each prefix, and the /0");
    let mut dataplane = Dataplane::load(&ruleset).expect("load and first apply");
    let loaded = started.elapsed() - parsed - compiled;
    // A second apply of a different generation: the steady-state reload cost.
    let mut changed = policy.clone();
    changed.rules.swap(0, 1);
    let ruleset2 = policy::compile(&changed);
    // As a reload would come later: the grace period after the load's flip has ended.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before_apply = std::time::Instant::now();
    let report = dataplane.apply(&ruleset2).expect("second apply");
    let applied = before_apply.elapsed();
    let before_audit = std::time::Instant::now();
    let drift = dataplane.audit(&ruleset2).expect("audit");
    let audited = before_audit.elapsed();
    assert!(drift.is_empty(), "the audit finds the maps as applied: {drift:?}");
    eprintln!(
        "100k prefixes: parse {parsed:?}, compile {compiled:?}, load + first apply {loaded:?}, \
         apply into the other generation {applied:?} ({} map writes), audit {audited:?}",
        report.writes
    );
    let from = |addr: &str| Packet::ipv4(tcp(80)).src(addr).build();
    for (addr, action) in [
        ("198.18.0.0", XDP_DROP),
        ("198.18.0.1", XDP_PASS),
        ("198.18.0.2", XDP_DROP),
        ("198.18.0.3", XDP_DROP),
        ("198.21.13.62", XDP_DROP),
        ("198.21.13.63", XDP_DROP),
        ("198.21.13.64", XDP_PASS),
        ("198.17.255.255", XDP_PASS),
    ] {
        let bytes = from(addr);
        let expected = reference::classify(&changed, &reference::parse_packet(&bytes));
        assert_eq!(
            expected.verdict.drops(),
            action == XDP_DROP,
            "the table disagrees with the reference for {addr}"
        );
        assert_eq!(dataplane.test_run(&bytes).expect("run"), action, "src {addr}");
    }
    let v6 = Packet::ipv6(tcp(80)).src("fd00:1:2::9").build();
    assert_eq!(dataplane.test_run(&v6).expect("run"), XDP_PASS);
}

/// 1,024 rules over every field: compile and apply times, for the record.
#[test]
fn a_thousand_mixed_rules_apply() {
    if !support::privileged("a_thousand_mixed_rules_apply") {
        return;
    }
    let mut text = String::new();
    for i in 0..policy_common::MAX_RULES {
        let (proto, extra) = match i % 4 {
            0 => (
                "tcp",
                format!(
                    "dst_ports = [{}, \"{}-{}\"]\n",
                    1000 + i,
                    20_000 + i * 10,
                    20_000 + i * 10 + 5
                ),
            ),
            1 => {
                ("udp", format!("src_ports = {}\ndst = \"198.18.{}.0/24\"\n", 30_000 + i, i % 256))
            }
            2 => ("any", format!("src = [\"198.19.{}.0/24\", \"fd00:{:x}::/32\"]\n", i % 256, i)),
            _ => ("icmp", format!("icmp_types = [{}]\n", i % 20)),
        };
        let action = if i % 3 == 0 { "pass" } else { "drop" };
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\naction = \"{action}\"\nprotocol = \"{proto}\"\n{extra}"
        ));
    }
    let started = std::time::Instant::now();
    let policy = policy::parse([(Path::new("mixed.toml"), text.as_str())]).expect("valid");
    let ruleset = policy::compile(&policy);
    let compiled = started.elapsed();
    let mut dataplane = Dataplane::load(&ruleset).expect("load");
    let mut reordered = policy.clone();
    reordered.rules.reverse();
    let ruleset2 = policy::compile(&reordered);
    // As a reload would come later: the grace period after the load's flip has ended.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before_apply = std::time::Instant::now();
    let report = dataplane.apply(&ruleset2).expect("apply");
    eprintln!(
        "1,024 mixed rules: parse + compile {compiled:?}, apply into the other generation {:?} ({} map writes)",
        before_apply.elapsed(),
        report.writes
    );
    for packet in [
        Packet::ipv4(tcp(1000 + 8)),
        Packet::ipv4(udp(53)).src_port(30_001).dst("198.18.1.9"),
        Packet::ipv4(icmp(3)),
    ] {
        let bytes = packet.build();
        let expected = reference::classify(&reordered, &reference::parse_packet(&bytes));
        let action = dataplane.test_run(&bytes).expect("run");
        assert_eq!(
            action == XDP_DROP,
            expected.verdict.drops(),
            "{packet:?}: reference says {expected:?}"
        );
    }
}

/// `count` /32 networks from 198.18.0.0 up, `step` addresses apart, from the `first`-th.
fn host_nets(first: u32, count: u32, step: u32) -> Vec<Ipv4Net> {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    (first..first + count)
        .map(|i| Ipv4Net::new_assert(Ipv4Addr::from(base + i * step), 32))
        .collect()
}

/// A policy dropping packets from `nets`, passing the rest.
fn blocklist(nets: &[Ipv4Net]) -> String {
    let mut text = String::from("[[rule]]\nname = \"blocklist\"\naction = \"drop\"\nsrc = [");
    for net in nets {
        write!(text, "\"{net}\",").expect("writing to a string");
    }
    text.push_str("]\n");
    text
}

/// Applies three large prefix sets in turn, so that the third is written over the first
/// in the same generation (inserting the new prefixes, deleting the stale ones, each in
/// one batch), then reads the trie back and sends packets: exactly the third set is in
/// force. Prints how long each stage took (figures for the record, not assertions).
fn replace_a_large_prefix_set(prefixes: u32) {
    let a = host_nets(0, prefixes, 2);
    let b = host_nets(0, prefixes, 3);
    // Overlaps the second half of `a`: its first half is stale, and as many are new.
    let c = host_nets(prefixes / 2, prefixes, 2);
    let compile = |nets: &[Ipv4Net]| {
        let text = blocklist(nets);
        let started = Instant::now();
        let policy = policy::parse([(Path::new("big.toml"), text.as_str())]).expect("valid");
        let parsed = started.elapsed();
        let mut ruleset = policy::compile(&policy);
        // These sets are dense enough to fit the IPv4 address tables; this test is about
        // the trie, which holds larger and sparser sets.
        ruleset.v4_tables = [None, None];
        ruleset.config.fields &= !(field::SRC_V4_TABLE | field::DST_V4_TABLE);
        (policy, ruleset, parsed, started.elapsed() - parsed)
    };
    let (_, ruleset_a, parsed, compiled) = compile(&a);
    let mut dataplane = Dataplane::load(&ruleset_a).expect("load and apply the first set");
    let (_, ruleset_b, ..) = compile(&b);
    let (policy_c, ruleset_c, ..) = compile(&c);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = Instant::now();
    let report_b = dataplane.apply(&ruleset_b).expect("apply the second set");
    let applied_b = started.elapsed();
    // As after a reload some time later: the grace period after the flip has ended.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = Instant::now();
    let report_c = dataplane.apply(&ruleset_c).expect("apply the third set");
    let applied_c = started.elapsed();
    eprintln!(
        "{prefixes} prefixes: parse {parsed:?}, compile {compiled:?}; apply into an empty \
         generation {applied_b:?} ({} writes); replace half of a generation's prefixes \
         {applied_c:?} ({} writes)",
        report_b.writes, report_c.writes
    );
    // Half inserted, half deleted; then the rule's entry and counter slot, and the flip.
    let writes = report_c.writes - prefixes as usize;
    assert!(writes <= 4, "only the differences are written: {} writes", report_c.writes);

    let started = Instant::now();
    let in_force = dataplane.v4_prefixes(AddrFieldId::Src).expect("reading the trie back");
    eprintln!("{prefixes} prefixes: read back in {:?}", started.elapsed());
    let mut wanted = c.clone();
    wanted.push(Ipv4Net::default());
    wanted.sort_unstable();
    assert!(in_force == wanted, "the trie holds exactly the third set and the /0");
    assert!(dataplane.v4_prefixes(AddrFieldId::Dst).expect("reading").len() == 1, "only /0");

    let from = |net: &Ipv4Net| Packet::ipv4(tcp(80)).src(&net.addr().to_string()).build();
    let stale = &a[..prefixes as usize / 2];
    let samples = [0, 1, stale.len() / 2, stale.len() - 1];
    for net in samples.iter().map(|i| &stale[*i]) {
        assert_eq!(dataplane.test_run(&from(net)).expect("run"), XDP_PASS, "stale {net} passes");
    }
    for net in [0, 1, c.len() / 2, c.len() - 1].iter().map(|i| &c[*i]) {
        assert_eq!(dataplane.test_run(&from(net)).expect("run"), XDP_DROP, "{net} is dropped");
        let expected = reference::classify(&policy_c, &reference::parse_packet(&from(net)));
        assert!(expected.verdict.drops(), "the reference agrees for {net}");
    }
    let between = Ipv4Net::new_assert(Ipv4Addr::from(u32::from(c[0].addr()) + 1), 32);
    assert_eq!(dataplane.test_run(&from(&between)).expect("run"), XDP_PASS, "{between} passes");
}

#[test]
fn a_large_prefix_set_is_replaced_exactly() {
    if !support::privileged("a_large_prefix_set_is_replaced_exactly") {
        return;
    }
    replace_a_large_prefix_set(65_536);
}

/// The same at the limit: a million prefixes (slow in a debug build, so run on demand:
/// `cargo xtask test -- --release --test kernel -- --ignored --nocapture`).
#[test]
#[ignore = "a million prefixes: seconds of work, run on demand"]
fn a_million_prefixes_are_replaced_exactly() {
    if !support::privileged("a_million_prefixes_are_replaced_exactly") {
        return;
    }
    replace_a_large_prefix_set(policy_common::MAX_PREFIXES);
}

/// The evasion corpus (`support::crafted`, which `tests/evasion.rs` sends through the
/// Linux stack) through BPF_PROG_TEST_RUN under its allow-list, its deny-list and a limit
/// whose bucket is empty: every frame gets the verdict the reference classifier gives it
/// (`drop_limit` where it says the limit rule decides), and of every attack at least one
/// frame is dropped (a datagram is delivered only if all its fragments are), whether or
/// not Linux would deliver it.
#[test]
fn the_evasion_corpus_gets_the_reference_verdict_and_every_attack_a_drop() {
    if !support::privileged("the_evasion_corpus_gets_the_reference_verdict_and_every_attack_a_drop")
    {
        return;
    }
    use support::crafted::{self, Kind};
    let corpus = crafted::corpus(&crafted::Params::default());
    for (name, text) in [
        ("allow-list", crafted::allow_list()),
        ("deny-list", crafted::deny_list()),
        ("limit", crafted::limit_list()),
    ] {
        let (policy, dataplane) = load(&text);
        // The limit's one bucket is spent first: from then on, whatever the kernel takes
        // for the limited traffic must be dropped, however it is shaped. (The reference,
        // stateless, says pass_limit where the rule decides.)
        if name == "limit" {
            let spend = Packet::ipv4(udp(crafted::BLOCKED_PORT)).build();
            assert_eq!(dataplane.test_run(&spend).expect("run"), XDP_PASS, "the bucket's token");
        }
        let mut failures = Vec::new();
        let mut verdicts = std::collections::BTreeMap::<&str, usize>::new();
        for shot in &corpus {
            let mut dropped = false;
            for (i, frame) in shot.frames.iter().enumerate() {
                let mut expected = reference::classify(&policy, &reference::parse_packet(frame));
                if expected.verdict == Verdict::PassLimit {
                    expected.verdict = Verdict::DropLimit;
                }
                let before = dataplane.verdict_counts().expect("reading the counters");
                let action = dataplane.test_run(frame).expect("BPF_PROG_TEST_RUN");
                let after = dataplane.verdict_counts().expect("reading the counters");
                let counted: Vec<Verdict> = Verdict::ALL
                    .into_iter()
                    .filter(|v| after.get(*v).packets != before.get(*v).packets)
                    .collect();
                if counted != [expected.verdict] || (action == XDP_DROP) != expected.verdict.drops()
                {
                    failures.push(format!(
                        "{name}: {} frame {i}: the reference says {:?}, the kernel {action} {counted:?}",
                        shot.name, expected.verdict
                    ));
                }
                *verdicts.entry(expected.verdict.name()).or_default() += 1;
                dropped |= action == XDP_DROP;
            }
            if shot.kind == Kind::Attack && !dropped {
                failures.push(format!("{name}: {}: no frame is dropped", shot.name));
            }
            if shot.kind == Kind::Control && dropped {
                failures.push(format!("{name}: control {} has a frame dropped", shot.name));
            }
        }
        eprintln!("{name}: {} shots, frame verdicts {verdicts:?}", corpus.len());
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    }
}

const LIMITS: &str = r#"
[[rule]]
name = "syn-limit"
protocol = "tcp"
tcp_flags = "syn,!ack"
dst_ports = [443]
action = "limit"
rate = "1/h"
burst = 3

[[rule]]
name = "net-limit"
protocol = "udp"
dst_ports = [53]
action = "limit"
rate = "1/h"
burst = 2
per = "source/24"

[[rule]]
name = "rule-limit"
protocol = "udp"
dst_ports = [123]
action = "limit"
rate = "1/h"
burst = 2
per = "rule"

[[rule]]
name = "watch-limit"
protocol = "udp"
dst_ports = [161]
action = "limit"
mode = "monitor"
rate = "1/h"
burst = 1

[[rule]]
name = "bytes-limit"
protocol = "udp"
dst_ports = [514]
action = "limit"
rate = "100B/s"
burst = 200
"#;

/// Runs `packet` and checks the action and the verdict it counted.
fn expect(dataplane: &Dataplane, what: &str, packet: &Packet, verdict: Verdict) {
    let before = dataplane.verdict_count(verdict).expect("verdict counter").packets;
    let action = dataplane.test_run(&packet.build()).expect("BPF_PROG_TEST_RUN");
    let after = dataplane.verdict_count(verdict).expect("verdict counter").packets;
    let wanted = if verdict.drops() { XDP_DROP } else { XDP_PASS };
    assert_eq!((action, after - before), (wanted, 1), "{what}: expected {}", verdict.name());
}

#[test]
fn limit_rules_hold_each_bucket_to_its_burst() {
    use Verdict::{DropLimit, MonitorLimit, PassDefault, PassLimit};
    let (policy, mut dataplane) = load(LIMITS);
    let syn = |src: &str| Packet::ipv4(tcp(443)).src(src).tcp_flags(0x02);
    for i in 0..3 {
        expect(&dataplane, &format!("SYN {i} of A"), &syn("198.18.1.1"), PassLimit);
    }
    expect(&dataplane, "the 4th SYN of A", &syn("198.18.1.1"), DropLimit);
    expect(
        &dataplane,
        "an ACK of A: the flags do not match",
        &syn("198.18.1.1").tcp_flags(0x10),
        PassDefault,
    );
    expect(&dataplane, "SYN of B: a bucket of its own", &syn("198.18.1.2"), PassLimit);
    let syn6 = Packet::ipv6(tcp(443)).src("fd00:7::1").tcp_flags(0x02);
    for i in 0..3 {
        expect(&dataplane, &format!("IPv6 SYN {i}"), &syn6, PassLimit);
    }
    expect(&dataplane, "the 4th IPv6 SYN", &syn6, DropLimit);

    // per = "source/24": one bucket for the network.
    let dns = |src: &str| Packet::ipv4(udp(53)).src(src);
    expect(&dataplane, "DNS from .5.1", &dns("198.18.5.1"), PassLimit);
    expect(&dataplane, "DNS from .5.2, same /24", &dns("198.18.5.2"), PassLimit);
    expect(&dataplane, "DNS from .5.3: the /24's bucket is empty", &dns("198.18.5.3"), DropLimit);
    expect(&dataplane, "DNS from another /24", &dns("198.18.6.1"), PassLimit);

    // per = "rule": one bucket for everyone.
    let ntp = |src: &str| Packet::ipv4(udp(123)).src(src);
    expect(&dataplane, "NTP from one source", &ntp("198.18.9.1"), PassLimit);
    expect(&dataplane, "NTP from another", &ntp("198.19.9.1"), PassLimit);
    expect(
        &dataplane,
        "NTP from a third: the rule's bucket is empty",
        &ntp("198.18.200.1"),
        DropLimit,
    );

    // Monitor mode: over the limit is counted and passed.
    let snmp = Packet::ipv4(udp(161));
    expect(&dataplane, "SNMP within the limit", &snmp, PassLimit);
    expect(&dataplane, "SNMP over the limit, monitored", &snmp, MonitorLimit);

    // Bytes: 200 bytes of burst admit 200 / frame length frames.
    let syslog = Packet::ipv4(udp(514)).payload(18);
    let len = syslog.build().len();
    for i in 0..200 / len {
        expect(&dataplane, &format!("syslog frame {i} of {len} bytes"), &syslog, PassLimit);
    }
    expect(&dataplane, "the frame past 200 bytes", &syslog, DropLimit);

    // The counters and buckets the daemon reads.
    let ruleset = policy::compile(&policy);
    let mut maps = dataplane.limit_maps().expect("limit maps");
    let slot = dataplane.rule_slots()[0].slot;
    let figures = maps.figures(slot).expect("figures");
    assert_eq!((figures.limited.packets, figures.created), (2, 3), "syn-limit: {figures:?}");
    let config = ruleset.rules[0].limit.expect("a limit rule");
    let buckets = maps.buckets_by_id().expect("buckets");
    assert_eq!(buckets.get(&config.id), Some(&3), "syn-limit's buckets: {buckets:?}");
    let now = policy_daemon::dataplane::limits::monotonic_now_ns();
    let a = maps.bucket(&config, "198.18.1.1".parse().expect("address"), now).expect("bucket");
    let b = maps.bucket(&config, "198.18.1.2".parse().expect("address"), now).expect("bucket");
    let fresh = maps.bucket(&config, "198.18.1.3".parse().expect("address"), now).expect("bucket");
    assert!(a.tokens < 0.01 && (b.tokens - 2.0).abs() < 0.01, "A {a:?}, B {b:?}");
    assert!((fresh.tokens - 3.0).abs() < 1e-9 && (fresh.burst - 3.0).abs() < 1e-9, "{fresh:?}");

    // A reload that keeps the rule keeps its buckets; changing the rule starts afresh.
    let more = format!(
        "{LIMITS}\n[[rule]]\nname = \"extra\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = 9\n"
    );
    let kept = policy::parse([(Path::new("test.toml"), more.as_str())]).expect("valid");
    dataplane.apply(&policy::compile(&kept)).expect("apply");
    expect(&dataplane, "A after a reload that kept the rule", &syn("198.18.1.1"), DropLimit);
    let changed = LIMITS.replacen("burst = 3", "burst = 4", 1);
    let changed = policy::parse([(Path::new("test.toml"), changed.as_str())]).expect("valid");
    dataplane.apply(&policy::compile(&changed)).expect("apply");
    expect(&dataplane, "A after the rule changed", &syn("198.18.1.1"), PassLimit);
    let figures = maps.figures(dataplane.rule_slots()[0].slot).expect("figures");
    assert_eq!((figures.limited.packets, figures.created), (0, 1), "the changed rule counts anew");
}

/// One source whose packets are judged on both CPUs at once: the bucket, updated by
/// compare-and-swap, admits its burst and then its rate, within 10%, whichever CPU the
/// packets are on.
#[test]
fn one_source_on_both_cpus_is_held_to_its_rate() {
    let (rate, burst) = (20_000.0, 100.0);
    let text = "[[rule]]\nname = \"limit\"\naction = \"limit\"\nprotocol = \"udp\"\ndst_ports = 5000\n\
                rate = \"20000/s\"\nburst = 100\n";
    let (_, dataplane) = load(text);
    let frame = Packet::ipv4(udp(5000)).src("198.18.3.3").build();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    assert!(cpus == 2 || std::env::var_os("CI").is_none(), "CI machines have 2 CPUs");
    let duration = std::time::Duration::from_secs(2);
    let start = Instant::now();
    // Per thread: the CPU it ran on, its runs, the runs passed.
    let results: Vec<(usize, u64, u64)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (frame, dataplane) = (&frame, &dataplane);
                scope.spawn(move || {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu).expect("cpu");
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        .expect("sched_setaffinity");
                    let (mut runs, mut passed) = (0u64, 0u64);
                    // Bounded by time, and by count in case the clock misbehaves.
                    while start.elapsed() < duration && runs < 50_000_000 {
                        let action = dataplane.test_run(frame).expect("BPF_PROG_TEST_RUN");
                        passed += u64::from(action == XDP_PASS);
                        runs += 1;
                    }
                    // SAFETY: no arguments.
                    let on = unsafe { libc::sched_getcpu() } as usize;
                    (on, runs, passed)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("runner")).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let passed: u64 = results.iter().map(|r| r.2).sum();
    let counted = dataplane.verdict_count(Verdict::PassLimit).expect("counter").packets;
    let expected = burst + rate * elapsed;
    let error = (passed as f64 - expected) / expected;
    eprintln!(
        "one source on {cpus} CPUs for {elapsed:.3} s: {results:?} (cpu, runs, passed); \
         {passed} passed, expected {expected:.0} ({:+.2}%)",
        100.0 * error
    );
    assert_eq!(passed, counted, "every pass is counted as pass_limit");
    let on: BTreeSet<usize> = results.iter().map(|r| r.0).collect();
    assert_eq!(on.len(), cpus, "each thread stayed on its own CPU: {results:?}");
    assert!(results.iter().all(|r| r.2 > 0), "every CPU passed packets: {results:?}");
    assert!(error.abs() <= 0.10, "{passed} passed against {expected:.0} expected");
}
