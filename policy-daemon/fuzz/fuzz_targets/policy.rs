//! Arbitrary bytes as a policy file. A policy that parses must compile to map contents
//! that keep the compiler's invariants, and those maps, read the way the kernel reads
//! them (`Ruleset::first_match`), must pick the same rule as the reference classifier
//! for a few packets derived from the input and aimed at its rules. A policy that does
//! not parse must render its error without panicking.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use policy_common::{MAX_PORT_CLASSES, field, field_bitmap, tcp_flags};
use policy_daemon::policy::{
    self, Policy, PortField, PortRange, Protocol, Ruleset,
    reference::{self, IpPacket, L4, Parsed},
};

/// Packets classified per policy: enough to reach a few rules, cheap next to parsing.
const PACKETS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let policy = match policy::parse([(Path::new("fuzz.toml"), text)]) {
        Ok(policy) => policy,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let ruleset = policy::compile(&policy);
    check_invariants(&policy, &ruleset);
    let mut rng = Rng::from_input(data);
    for _ in 0..PACKETS {
        let packet = aimed_packet(&policy, &mut rng);
        let expected = reference::classify(&policy, &Parsed::Ip(packet)).rule;
        assert_eq!(
            ruleset.first_match(&packet),
            expected,
            "the compiled maps and the reference disagree on {packet:?}"
        );
    }
});

fn check_invariants(policy: &Policy, ruleset: &Ruleset) {
    let rules = policy.rules.len();
    assert_eq!(ruleset.rules.len(), rules, "one compiled rule per policy rule");
    assert_eq!(ruleset.config.words as usize, rules.div_ceil(64), "bitmap words for {rules} rules");
    let with_sets = ruleset.config.src_sets | ruleset.config.dst_sets != 0;
    let entries = if with_sets { field_bitmap::PER_GENERATION } else { field_bitmap::SET_RULES };
    assert_eq!(ruleset.field_bitmaps.len(), entries as usize, "field bitmaps");
    let with_flags = ruleset.config.fields & field::TCP_FLAGS != 0;
    let entries = if with_flags { tcp_flags::PER_GENERATION } else { tcp_flags::CLASSES_ONLY };
    assert_eq!(ruleset.tcp_flags.len(), entries as usize, "class-and-flags bitmaps");
    assert!(ruleset.src_v4.iter().any(|(n, _)| n.prefix_len() == 0), "src IPv4 /0");
    assert!(ruleset.dst_v4.iter().any(|(n, _)| n.prefix_len() == 0), "dst IPv4 /0");
    assert!(ruleset.src_v6.iter().any(|(n, _)| n.prefix_len() == 0), "src IPv6 /0");
    assert!(ruleset.dst_v6.iter().any(|(n, _)| n.prefix_len() == 0), "dst IPv6 /0");
    for (name, field) in [("dport", &ruleset.dport), ("sport", &ruleset.sport)] {
        check_port_field(name, field);
    }
}

fn check_port_field(name: &str, field: &PortField) {
    assert_eq!(field.classes.len(), 1 << 16, "{name}: a class for every port");
    assert!(
        field.bitmaps.len() <= MAX_PORT_CLASSES as usize,
        "{name}: {} classes passed validation",
        field.bitmaps.len()
    );
    if let Some(bad) = field.classes.iter().find(|c| usize::from(**c) >= field.bitmaps.len()) {
        panic!("{name}: class {bad} of {} bitmaps", field.bitmaps.len());
    }
}

/// splitmix64 seeded from the input: packets depend on the input bytes only.
struct Rng(u64);

impl Rng {
    fn from_input(data: &[u8]) -> Self {
        // FNV-1a.
        let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        Self(hash)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

/// A packet aimed at one rule: its protocol, an address in or next to its networks, a
/// port at or next to the edge of its ranges; or, now and then, anything.
fn aimed_packet(policy: &Policy, rng: &mut Rng) -> IpPacket {
    let rule = policy.rules.get(rng.below(policy.rules.len() + 1));
    let v6 = match rule.and_then(|r| r.src.as_ref().or(r.dst.as_ref())).and_then(|n| rng.pick(n)) {
        Some(net) => matches!(net, IpNet::V6(_)),
        None => rng.next() & 1 == 1,
    };
    let src = address(rule.and_then(|r| r.src.as_deref()), v6, rng);
    let dst = address(rule.and_then(|r| r.dst.as_deref()), v6, rng);
    let dports = rule.and_then(|r| r.dport_values());
    let sports = rule.and_then(|r| r.src_ports.clone());
    let dst_port = port(dports.as_deref(), rng);
    let src_port = port(sports.as_deref(), rng);
    let protocol = rule.map_or(Protocol::Any, |r| r.protocol);
    let l4 = match (protocol, rng.below(8)) {
        (_, 0) => {
            L4::Fragment { class: *rng.pick(&policy_common::L4Class::ALL).expect("not empty") }
        }
        (_, 1) => L4::Other { proto: rng.next() as u8 },
        (Protocol::Tcp, _) | (Protocol::Any, 2 | 3) => {
            // Flags the rule admits, most of the time.
            let random = rng.next() as u8;
            let flags = match rule.and_then(|r| r.tcp_flags) {
                Some(f) if rng.next() % 4 != 0 => f.value | (random & !f.mask),
                _ => random,
            };
            L4::Tcp { src_port, dst_port, flags }
        }
        (Protocol::Udp, _) | (Protocol::Any, 4 | 5) => L4::Udp { src_port, dst_port },
        (Protocol::Icmp, _) if !v6 => L4::Icmp { icmp_type: dst_port as u8 },
        (Protocol::Icmpv6, _) if v6 => L4::Icmpv6 { icmp_type: dst_port as u8 },
        _ if v6 => L4::Icmpv6 { icmp_type: dst_port as u8 },
        _ => L4::Icmp { icmp_type: dst_port as u8 },
    };
    IpPacket { src, dst, l4 }
}

fn address(nets: Option<&[IpNet]>, v6: bool, rng: &mut Rng) -> IpAddr {
    let random: u128 = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    let same_family = |n: &&IpNet| matches!(n, IpNet::V6(_)) == v6;
    let candidates: Vec<&IpNet> = nets.unwrap_or_default().iter().filter(same_family).collect();
    let Some(net) = rng.pick(&candidates).copied() else {
        return if v6 {
            Ipv6Addr::from(random).into()
        } else {
            Ipv4Addr::from(random as u32).into()
        };
    };
    // Inside the network (its first, last or a random host), or just past its end.
    match (net, rng.below(4)) {
        (IpNet::V4(n), 0) => n.network().into(),
        (IpNet::V4(n), 1) => n.broadcast().into(),
        (IpNet::V4(n), 2) => Ipv4Addr::from(u32::from(n.broadcast()).wrapping_add(1)).into(),
        (IpNet::V4(n), _) => {
            let host = (random as u32) & !u32::from(n.netmask());
            Ipv4Addr::from(u32::from(n.network()) | host).into()
        }
        (IpNet::V6(n), 0) => n.network().into(),
        (IpNet::V6(n), 1) => n.broadcast().into(),
        (IpNet::V6(n), 2) => Ipv6Addr::from(u128::from(n.broadcast()).wrapping_add(1)).into(),
        (IpNet::V6(n), _) => {
            let host = random & !u128::from(n.netmask());
            Ipv6Addr::from(u128::from(n.network()) | host).into()
        }
    }
}

fn port(ranges: Option<&[PortRange]>, rng: &mut Rng) -> u16 {
    let random = rng.next() as u16;
    let Some(range) = ranges.and_then(|r| rng.pick(r)) else { return random };
    match rng.below(5) {
        0 => range.low,
        1 => range.high,
        2 => range.low.wrapping_sub(1),
        3 => range.high.wrapping_add(1),
        _ => random,
    }
}
