//! The XDP program in the real kernel, through BPF_PROG_TEST_RUN: a table of crafted
//! packets with the verdict and counter each must produce.

mod support;

use std::path::Path;

use policy_common::{
    MAP_NAMES, PROGRAM_NAME, Verdict,
    xdp_action::{XDP_DROP, XDP_PASS},
};
use policy_daemon::{
    dataplane::{Dataplane, embedded_object},
    policy,
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
"#;

fn load(text: &str) -> Dataplane {
    let policy = policy::parse([(Path::new("test.toml"), text)]).expect("test policy is valid");
    Dataplane::load(&policy::compile(&policy)).unwrap_or_else(|e| {
        panic!("loading the program failed: {}", policy_daemon::dataplane::error_chain(&e))
    })
}

struct Case {
    name: &'static str,
    packet: Packet,
    verdict: Verdict,
}

fn case(name: &'static str, packet: Packet, verdict: Verdict) -> Case {
    Case { name, packet, verdict }
}

fn cases() -> Vec<Case> {
    use Verdict::*;
    vec![
        // Port rules, first match wins.
        case("ipv4 tcp to a dropped port", Packet::ipv4(tcp(23)), DropRule),
        case("ipv4 tcp to the second dropped port", Packet::ipv4(tcp(2323)), DropRule),
        case("ipv4 tcp to the neighbouring port", Packet::ipv4(tcp(24)), PassNoMatch),
        case("ipv4 udp to the pass rule before a drop range", Packet::ipv4(udp(53)), PassRule),
        case("ipv4 udp inside the dropped range", Packet::ipv4(udp(54)), DropRule),
        case("ipv4 udp at the range's end", Packet::ipv4(udp(1023)), DropRule),
        case("ipv4 udp past the range", Packet::ipv4(udp(1024)), PassNoMatch),
        case("ipv4 tcp to a udp-only range", Packet::ipv4(tcp(54)), PassNoMatch),
        case("ipv4 tcp to an any-protocol port", Packet::ipv4(tcp(445)), DropRule),
        case("ipv4 udp to an any-protocol port", Packet::ipv4(udp(445)), DropRule),
        case("ipv4 tcp to port 0", Packet::ipv4(tcp(0)), PassNoMatch),
        case("ipv4 udp to port 65535", Packet::ipv4(udp(65535)), PassNoMatch),
        case("ipv6 tcp to a dropped port", Packet::ipv6(tcp(23)), DropRule),
        case("ipv6 tcp to the neighbouring port", Packet::ipv6(tcp(22)), PassNoMatch),
        case("ipv6 udp to the pass rule", Packet::ipv6(udp(53)), PassRule),
        case("ipv6 udp inside the dropped range", Packet::ipv6(udp(161)), DropRule),
        // VLAN tags.
        case("802.1Q ipv4 tcp dropped", Packet::ipv4(tcp(23)).vlan(ETH_P_8021Q), DropRule),
        case("802.1Q ipv4 tcp open", Packet::ipv4(tcp(80)).vlan(ETH_P_8021Q), PassNoMatch),
        case(
            "802.1ad + 802.1Q ipv6 tcp dropped",
            Packet::ipv6(tcp(23)).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q),
            DropRule,
        ),
        case(
            "three VLAN tags are not parsed",
            Packet::ipv4(tcp(23)).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q).vlan(ETH_P_8021Q),
            PassNotIp,
        ),
        case(
            "VLAN tag cut short",
            Packet::ipv4(tcp(23)).vlan(ETH_P_8021Q).truncate(16),
            PassMalformed,
        ),
        // IPv4 header length and options.
        case(
            "ipv4 with 12 bytes of options, dropped port",
            Packet::ipv4(tcp(23)).ipv4_options(12),
            DropRule,
        ),
        case(
            "ipv4 with 40 bytes of options, open port",
            Packet::ipv4(tcp(24)).ipv4_options(40),
            PassNoMatch,
        ),
        case("ipv4 IHL below 5", Packet::ipv4(tcp(23)).ipv4_ihl(4), PassMalformed),
        case("ipv4 IHL past the packet's end", Packet::ipv4(tcp(23)).ipv4_ihl(15), PassMalformed),
        case("version 6 in an IPv4 frame", Packet::ipv4(tcp(23)).ip_version(6), PassMalformed),
        // Fragments: only the first carries ports.
        case("ipv4 first fragment", Packet::ipv4(tcp(23)).ipv4_fragment(0, true), DropRule),
        case(
            "ipv4 non-first fragment whose payload looks like port 23",
            Packet::ipv4(tcp(23)).ipv4_fragment(185, true),
            PassFragment,
        ),
        case("ipv4 last fragment", Packet::ipv4(udp(54)).ipv4_fragment(1, false), PassFragment),
        case("ipv6 first fragment", Packet::ipv6(tcp(23)).ipv6_fragment(0), DropRule),
        case("ipv6 non-first fragment", Packet::ipv6(tcp(23)).ipv6_fragment(100), PassFragment),
        // IPv6 extension headers.
        case(
            "ipv6 hop-by-hop, routing, destination options",
            Packet::ipv6(tcp(23))
                .ipv6_ext(IPPROTO_HOPOPTS)
                .ipv6_ext(IPPROTO_ROUTING)
                .ipv6_ext(IPPROTO_DSTOPTS),
            DropRule,
        ),
        case("ipv6 authentication header", Packet::ipv6(udp(54)).ipv6_ah(), DropRule),
        case(
            "ipv6 with six extension headers (the limit)",
            (0..6).fold(Packet::ipv6(tcp(23)), |p, _| p.ipv6_ext(IPPROTO_DSTOPTS)),
            DropRule,
        ),
        case(
            "ipv6 with seven extension headers",
            (0..7).fold(Packet::ipv6(tcp(23)), |p, _| p.ipv6_ext(IPPROTO_DSTOPTS)),
            PassMalformed,
        ),
        case(
            "ipv6 extension header cut short",
            Packet::ipv6(tcp(23)).ipv6_ext(IPPROTO_DSTOPTS).truncate(14 + 40 + 1),
            PassMalformed,
        ),
        case("ipv6 ESP is opaque", Packet::ipv6(L4::Other { proto: IPPROTO_ESP }), PassOtherProto),
        // Truncated transport headers.
        case("ethernet header only", Packet::ipv4(tcp(23)).truncate(14), PassMalformed),
        case("ipv4 header cut short", Packet::ipv4(tcp(23)).truncate(14 + 19), PassMalformed),
        case("ipv6 header cut short", Packet::ipv6(tcp(23)).truncate(14 + 39), PassMalformed),
        case("tcp header cut short", Packet::ipv4(tcp(23)).truncate(14 + 20 + 19), PassMalformed),
        case("udp header cut short", Packet::ipv4(udp(54)).truncate(14 + 20 + 7), PassMalformed),
        case(
            "tcp data offset below 5",
            Packet::ipv4(L4::Tcp { dst_port: 23, data_offset: 4 }),
            PassMalformed,
        ),
        // Everything that is not TCP/UDP over IP passes.
        case("arp", Packet::arp(), PassNotIp),
        case("icmp echo", Packet::ipv4(L4::Other { proto: IPPROTO_ICMP }), PassOtherProto),
        case("icmpv6", Packet::ipv6(L4::Other { proto: IPPROTO_ICMPV6 }), PassOtherProto),
    ]
}

#[test]
fn packet_table() {
    if !support::privileged("packet_table") {
        return;
    }
    let mut dataplane = load(POLICY);
    let mut failures = Vec::new();
    for case in cases() {
        let bytes = case.packet.build();
        let before = dataplane.verdict_counts().expect("reading the counters");
        let action = dataplane.test_run(&bytes).expect("BPF_PROG_TEST_RUN");
        let after = dataplane.verdict_counts().expect("reading the counters");
        let expected_action = if case.verdict.drops() { XDP_DROP } else { XDP_PASS };
        if action != expected_action {
            failures.push(format!(
                "{}: expected XDP action {expected_action} ({:?}), got {action}",
                case.name, case.verdict
            ));
        }
        for verdict in Verdict::ALL {
            let (b, a) = (before.get(verdict), after.get(verdict));
            let (packets, bytes_seen) = (a.packets - b.packets, a.bytes - b.bytes);
            let expected = if verdict == case.verdict { (1, bytes.len() as u64) } else { (0, 0) };
            if (packets, bytes_seen) != expected {
                failures.push(format!(
                    "{}: expected {verdict:?} to count {expected:?} (packets, bytes), it counted \
                     {:?}",
                    case.name,
                    (packets, bytes_seen)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn an_empty_policy_passes_everything() {
    if !support::privileged("an_empty_policy_passes_everything") {
        return;
    }
    let mut dataplane = load("");
    for port in [0, 22, 23, 53, 445, 65535] {
        for packet in [Packet::ipv4(tcp(port)), Packet::ipv6(udp(port))] {
            let action = dataplane.test_run(&packet.build()).expect("BPF_PROG_TEST_RUN");
            assert_eq!(action, XDP_PASS, "{packet:?} must pass under an empty policy");
        }
    }
    let counts = dataplane.verdict_counts().expect("reading the counters");
    assert_eq!(counts.get(Verdict::PassNoMatch).packets, 12);
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
    assert!(parsed.programs.contains_key(PROGRAM_NAME), "no program {PROGRAM_NAME} in the object");
    for name in MAP_NAMES {
        assert!(name.len() <= 15, "map name {name} is longer than the kernel keeps");
        assert!(parsed.maps.contains_key(name), "no map {name} in the object");
    }
}
