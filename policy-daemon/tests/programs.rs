//! The object's two programs (`dataplane::Program`): the port program for a policy a
//! port table decides, the full one for the rest, and the swap between them on a link
//! whose maps fit both, around the flip (the full program goes on before a flip to a
//! generation only it judges, the port program after a flip to one it judges), under a
//! stream of datagrams with every one accounted for. The daemon's reloads between the
//! two move the filter to new maps as well (`tests/reload.rs`); the differential and
//! evasion tests run both programs on their packets.
//!
//! Needs root (see `support::privileged`); the tests share kernel state, so each holds
//! `support::serial`.

mod support;

use std::{path::Path, time::Duration};

use policy_common::{
    MAX_SOURCES, Verdict,
    xdp_action::{XDP_DROP, XDP_PASS},
};
use policy_daemon::{
    dataplane::{Dataplane, Program, XdpMode, migrate::Sizes, pinned::PinnedFilter, pins::Pins},
    policy::{self, Ruleset},
};
use testbed::{RX_IFACE, Testbed};

use support::serial;

const PORT_A: u16 = 6101;
const PORT_B: u16 = 6102;

/// Port A dropped, port B passed; with `src`, both rules also look at the source (which
/// every datagram of the testbed has), which only the full program can judge.
fn ruleset(src: bool) -> Ruleset {
    let src = if src { "src = [\"198.18.0.0/15\", \"fd00::/8\"]\n" } else { "" };
    let text = format!(
        "[[rule]]\nname = \"block\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = {PORT_A}\n\
         {src}[[rule]]\nname = \"open\"\naction = \"pass\"\nprotocol = \"udp\"\n\
         dst_ports = {PORT_B}\n{src}"
    );
    let policy = policy::parse([(Path::new("programs.toml"), text.as_str())]).expect("a policy");
    policy::compile(&policy)
}

#[test]
fn each_policy_gets_the_cheapest_program_that_judges_it() {
    assert_eq!(Program::for_ruleset(&ruleset(false)), Program::Ports);
    assert_eq!(Program::for_ruleset(&ruleset(true)), Program::Full);
}

#[test]
fn programs_swap_in_place_around_the_flip_under_traffic() {
    let Some(_serial) = serial("programs_swap_in_place_around_the_flip_under_traffic") else {
        return;
    };
    const APPLIES: usize = 8;
    let testbed = Testbed::new().expect("testbed");
    let pin_dir = testbed.dirs().pin_dir();
    let pins = Pins::new(&pin_dir, RX_IFACE);
    // Maps at full size fit both kinds of policy: the applies swap programs in place.
    let mut dataplane =
        Dataplane::load_sized(&ruleset(false), &Sizes::full(MAX_SOURCES)).expect("loading");
    assert_eq!(dataplane.current_program(), Program::Ports);
    testbed
        .rx()
        .run(|| dataplane.attach_pinned(RX_IFACE, XdpMode::Skb, &pins))
        .expect("entering rx")
        .expect("attaching");
    let on_link = || PinnedFilter::open(&pin_dir, RX_IFACE).expect("pinned").program_name();
    assert_eq!(on_link().as_deref(), Some("policy_ports"));
    // The program already on the link judges the new generation this long after each
    // flip: a port program meeting a generation it cannot judge would drop port B's
    // datagrams as unparsable.
    dataplane.delay_swaps(Duration::from_millis(200));
    let mut seen = Vec::new();
    let result = testbed
        .udp_stream([PORT_A, PORT_B], Duration::from_secs(30), Duration::from_micros(300), |_| {
            for i in 1..=APPLIES {
                dataplane.apply(&ruleset(i % 2 == 1)).expect("an apply");
                seen.push((dataplane.current_program(), dataplane.program_on_link(), on_link()));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .expect("the udp stream");
    let counts = dataplane.verdict_counts().expect("the counters");
    let (drops, passes, unparsable) = (
        counts.get(Verdict::DropRule).packets,
        counts.get(Verdict::PassRule).packets,
        counts.get(Verdict::DropUnparsable).packets,
    );
    eprintln!(
        "in-place swaps: {APPLIES} applies; port A {} sent, {} received; port B {} sent, {} \
         received; drop_rule {drops}, pass_rule {passes}, drop_unparsable {unparsable}",
        result.sent[0], result.received[0], result.sent[1], result.received[1],
    );
    for (i, (current, link, kernel)) in seen.iter().enumerate() {
        let wanted = if i % 2 == 0 { Program::Full } else { Program::Ports };
        assert_eq!((*current, *link), (wanted, Some(wanted)), "apply {}", i + 1);
        assert_eq!(kernel.as_deref(), Some(wanted.name()), "the kernel's link, apply {}", i + 1);
    }
    assert_eq!(result.received[0], 0, "datagrams to the blocked port got through");
    assert_eq!(result.received[1], result.sent[1], "datagrams to the open port were lost");
    assert_eq!((drops, passes, unparsable), (result.sent[0], result.sent[1], 0));
}

/// A sampled drop names the packet's addresses and ports, whichever program judged it
/// and however the parser reached the IP header (untagged, VLAN-tagged, through an
/// IPv6 extension header): both programs read the addresses again for the sample,
/// where the parser found the IP header, rather than keep them through the classifier.
#[test]
fn both_programs_sample_drops_with_the_packets_addresses() {
    use policy_daemon::packet::{Packet, udp};
    let Some(_serial) = serial("both_programs_sample_drops_with_the_packets_addresses") else {
        return;
    };
    let frames: [(&str, &str, Packet); 4] = [
        ("198.18.0.1", "198.18.0.2", Packet::ipv4(udp(PORT_A))),
        ("198.18.7.9", "198.18.0.2", Packet::ipv4(udp(PORT_A)).vlan(0x8100)),
        ("fd00::1", "fd00::2", Packet::ipv6(udp(PORT_A))),
        ("fd00::7:9", "fd00::2", Packet::ipv6(udp(PORT_A)).ipv6_ext(0)),
    ];
    for src in [false, true] {
        let testbed = Testbed::new().expect("testbed");
        let pin_dir = testbed.dirs().pin_dir();
        let pins = Pins::new(&pin_dir, RX_IFACE);
        let mut dataplane = Dataplane::load(&ruleset(src)).expect("loading");
        let wanted = if src { Program::Full } else { Program::Ports };
        assert_eq!(dataplane.current_program(), wanted);
        testbed
            .rx()
            .run(|| dataplane.attach_pinned(RX_IFACE, XdpMode::Skb, &pins))
            .expect("entering rx")
            .expect("attaching");
        let filter = PinnedFilter::open(&pin_dir, RX_IFACE).expect("pinned");
        let mut events = filter.events().expect("the events");
        // An interval of 1 ns: every drop of a test run is sampled.
        events.set_rate(1_000_000_000).expect("sampling on");
        for (from, to, packet) in &frames {
            let frame = packet.clone().src(from).dst(to).src_port(4000).build();
            assert_eq!(filter.test_run(&frame).expect("a test run"), XDP_DROP, "{from}");
        }
        let passed = Packet::ipv4(udp(PORT_B)).src("198.18.0.1").dst("198.18.0.2").build();
        assert_eq!(filter.test_run(&passed).expect("a test run"), XDP_PASS);
        events.set_rate(0).expect("sampling off");
        let seen = events.drain();
        assert_eq!(seen.len(), frames.len(), "{wanted:?}: one sample per drop, none for the pass");
        for (event, (from, to, _)) in seen.iter().zip(&frames) {
            let bytes = |addr: &str| match addr.parse::<std::net::IpAddr>().expect("an address") {
                std::net::IpAddr::V4(a) => {
                    let mut b = [0; 16];
                    b[..4].copy_from_slice(&a.octets());
                    b
                }
                std::net::IpAddr::V6(a) => a.octets(),
            };
            let what = format!("{wanted:?}, {from} -> {to}");
            assert_eq!((event.src, event.dst), (bytes(from), bytes(to)), "{what}");
            assert_eq!((event.src_port, event.dst_port), (4000, PORT_A), "{what}");
            assert_eq!(event.ip_version, if from.contains(':') { 6 } else { 4 }, "{what}");
            assert_eq!(event.verdict, Verdict::DropRule as u8, "{what}");
        }
    }
}
