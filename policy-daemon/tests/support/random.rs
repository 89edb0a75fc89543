//! Random policies and frames for the differential tests, and what the parsing contract
//! makes of each frame.
//!
//! Policies are written as TOML text (`PolicySpec`), with values drawn from small pools
//! of ports, ICMP types, addresses and prefixes that the frames draw from too, so that
//! packets hit rules. Frames are described (`FrameSpec`) rather than written byte by
//! byte: the description builds the bytes and, independently of any parser, says what
//! `parse_packet` must make of them (`FrameSpec::expected`). `support::packet` is not
//! enough here: its addresses and source port are fixed and it has no ICMP types.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnet::IpNet;
use policy_common::{L4Class, MAX_IPV6_EXT_HEADERS, MAX_IPV6_HEADER_CHAIN, MAX_VLAN_TAGS};
use policy_daemon::policy::{
    self, Policy, PortRange, Protocol, Rule,
    reference::{IpPacket, L4, Parsed},
};

use super::packet::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_AH, IPPROTO_DSTOPTS,
    IPPROTO_ESP, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING,
    IPPROTO_TCP, IPPROTO_UDP,
};

/// splitmix64: tiny, fast, and good enough to spread test cases.
pub struct Rng(u64);

impl Rng {
    /// The generator of policy `index` (and its packets) in `stream`.
    pub fn for_policy(seed: u64, stream: u64, index: usize) -> Self {
        let mut outer = Self(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        Self(outer.next() ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick_str<'a>(&mut self, items: &'a [String]) -> &'a str {
        &items[self.below(items.len())]
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Value pools: policies and packets draw from the same ones, so packets hit rules.

const PORTS: [u16; 11] = [0, 1, 22, 23, 53, 80, 443, 1023, 1024, 8080, 65535];
const ICMP_TYPES: [u8; 12] = [0, 3, 8, 11, 128, 129, 133, 134, 135, 136, 137, 255];
const V4_ANCHORS: [Ipv4Addr; 9] = [
    Ipv4Addr::new(198, 18, 0, 1),
    Ipv4Addr::new(198, 18, 0, 2),
    Ipv4Addr::new(198, 18, 0, 200),
    Ipv4Addr::new(198, 18, 1, 1),
    Ipv4Addr::new(198, 18, 255, 254),
    Ipv4Addr::new(198, 19, 0, 1),
    Ipv4Addr::new(198, 19, 128, 64),
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(10, 0, 0, 1),
];
const V4_PREFIX_LENS: [u8; 13] = [0, 1, 8, 15, 16, 17, 23, 24, 25, 28, 30, 31, 32];
const V6_ANCHORS: [Ipv6Addr; 9] = [
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 1, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0, 0, 0xffff, 0, 0, 0, 0xffff),
    Ipv6Addr::new(0xfd12, 0x3456, 0x789a, 1, 0, 0, 0, 1),
    Ipv6Addr::new(0xfdff, 0xffff, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
];
const V6_PREFIX_LENS: [u8; 15] = [0, 7, 8, 16, 32, 48, 56, 63, 64, 65, 96, 112, 120, 127, 128];

/// A port from the pool or next to it, sometimes anything.
fn pool_port(rng: &mut Rng) -> u16 {
    if rng.percent(15) {
        return rng.next() as u16;
    }
    let port = rng.pick(&PORTS);
    match rng.below(6) {
        0 => port.saturating_sub(1),
        1 => port.saturating_add(1),
        _ => port,
    }
}

fn pool_icmp_type(rng: &mut Rng) -> u8 {
    if rng.percent(10) { rng.next() as u8 } else { rng.pick(&ICMP_TYPES) }
}

/// An anchor address, often with a bit or two flipped (mostly low bits, sometimes the
/// bits around common prefix lengths).
fn pool_v4(rng: &mut Rng) -> Ipv4Addr {
    let mut addr = u32::from(rng.pick(&V4_ANCHORS));
    if rng.percent(50) {
        for _ in 0..rng.between(1, 2) {
            let bit = if rng.percent(70) { rng.below(12) } else { rng.below(32) };
            addr ^= 1 << bit;
        }
    }
    Ipv4Addr::from(addr)
}

fn pool_v6(rng: &mut Rng) -> Ipv6Addr {
    let mut addr = u128::from(rng.pick(&V6_ANCHORS));
    if rng.percent(50) {
        for _ in 0..rng.between(1, 2) {
            let bit = match rng.below(10) {
                0..7 => rng.below(16),
                7 | 8 => rng.pick(&[8, 16, 63, 64, 65, 80, 127 - 64]),
                _ => rng.below(128),
            };
            addr ^= 1 << bit;
        }
    }
    Ipv6Addr::from(addr)
}

fn pool_net(rng: &mut Rng, v6: bool) -> IpNet {
    let net = if v6 {
        IpNet::new(IpAddr::V6(pool_v6(rng)), rng.pick(&V6_PREFIX_LENS))
    } else {
        IpNet::new(IpAddr::V4(pool_v4(rng)), rng.pick(&V4_PREFIX_LENS))
    };
    net.expect("prefix lengths of the pools are valid").trunc()
}

// ---------------------------------------------------------------------------------------
// Random policies, as TOML

/// A policy as the generator wrote it: rendered to TOML, parsed by `policy::parse`.
/// Values are kept as TOML text so that shrinking a case can drop fields and items.
#[derive(Clone, Debug)]
pub struct PolicySpec {
    pub defaults: Option<DefaultsSpec>,
    /// `[defaults]` after the rules rather than before (valid TOML either way).
    pub defaults_last: bool,
    /// Named sets, with what their files would list (given to the parsed policy, as the
    /// daemon does once it has read the files).
    pub sets: Vec<SetSpec>,
    pub rules: Vec<RuleSpec>,
}

#[derive(Clone, Debug)]
pub struct SetSpec {
    pub name: String,
    pub entries: Vec<IpNet>,
}

#[derive(Clone, Debug, Default)]
pub struct DefaultsSpec {
    pub action: Option<&'static str>,
    pub mode: Option<&'static str>,
    pub fragments: Option<&'static str>,
    pub unparsable: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub name: String,
    pub action: &'static str,
    pub mode: Option<&'static str>,
    pub protocol: Option<&'static str>,
    /// `(key, value list)`: dst_ports, src_ports, src, dst, icmp_types.
    pub fields: Vec<(&'static str, TomlList)>,
    /// For a `limit` rule: its `per`.
    pub per: Option<&'static str>,
}

/// A TOML list of values; a single value may be written without brackets.
#[derive(Clone, Debug)]
pub struct TomlList {
    pub items: Vec<String>,
    pub bare: bool,
}

impl TomlList {
    fn render(&self) -> String {
        match self.items.as_slice() {
            [one] if self.bare => one.clone(),
            items => format!("[{}]", items.join(", ")),
        }
    }
}

impl PolicySpec {
    pub fn toml(&self) -> String {
        let mut out = String::new();
        if !self.defaults_last {
            self.write_defaults(&mut out);
        }
        for set in &self.sets {
            let _ = writeln!(out, "[[set]]\nname = \"{}\"\n", set.name);
        }
        for rule in &self.rules {
            out.push_str("[[rule]]\n");
            let _ = writeln!(out, "name = \"{}\"", rule.name);
            let _ = writeln!(out, "action = \"{}\"", rule.action);
            if let Some(mode) = rule.mode {
                let _ = writeln!(out, "mode = \"{mode}\"");
            }
            if let Some(protocol) = rule.protocol {
                let _ = writeln!(out, "protocol = \"{protocol}\"");
            }
            for (key, list) in &rule.fields {
                let _ = writeln!(out, "{key} = {}", list.render());
            }
            if rule.action == "limit" {
                // A bucket no run of the test can empty: the kernel's verdict is
                // pass_limit, as the reference (stateless) says.
                let per = rule.per.unwrap_or("source");
                let _ = writeln!(out, "rate = \"1/s\"\nburst = 1000000000\nper = \"{per}\"");
            }
            out.push('\n');
        }
        if self.defaults_last {
            self.write_defaults(&mut out);
        }
        out
    }

    fn write_defaults(&self, out: &mut String) {
        let Some(d) = &self.defaults else { return };
        out.push_str("[defaults]\n");
        let settings = [
            ("action", d.action),
            ("mode", d.mode),
            ("fragments", d.fragments),
            ("unparsable", d.unparsable),
        ];
        for (key, value) in settings {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = \"{value}\"");
            }
        }
        out.push('\n');
    }

    pub fn parse(&self) -> Result<Policy, String> {
        let text = self.toml();
        let mut policy = policy::parse([(Path::new("diff.toml"), text.as_str())])
            .map_err(|e| format!("{e:#}"))?;
        for set in &mut policy.sets {
            if let Some(spec) = self.sets.iter().find(|s| s.name == set.name) {
                let mut entries = spec.entries.clone();
                entries.sort_unstable();
                entries.dedup();
                set.entries = entries;
            }
        }
        Ok(policy)
    }
}

/// Policy 0 always has more than 64 rules (several bitmap words), policies 1 and 2
/// exactly 64 and 128; most have 0–40, some up to 200. Half of the long ones are
/// "narrow": every rule names one destination host, so that few rules shadow the ones
/// after them and rules past the first bitmap word win.
impl PolicySpec {
    /// The same policy with every field but `dst_ports` and `icmp_types` removed: a
    /// policy the kernel decides through its port table.
    pub fn port_only(mut self) -> Self {
        for rule in &mut self.rules {
            rule.fields.retain(|(key, _)| matches!(*key, "dst_ports" | "icmp_types"));
            // A limit rule's decision is not in the port table.
            if rule.action == "limit" {
                rule.action = "drop";
            }
        }
        self
    }
}

/// [`random_policy`], made port-only ([`PolicySpec::port_only`]) for every third index,
/// so that both of the kernel's classification paths are compared.
pub fn random_policy_both_paths(rng: &mut Rng, index: usize) -> PolicySpec {
    let spec = random_policy(rng, index);
    if index % 3 == 2 { spec.port_only() } else { spec }
}

pub fn random_policy(rng: &mut Rng, index: usize) -> PolicySpec {
    let rules = if index == 0 {
        rng.between(65, 200)
    } else if index == 1 || index == 2 {
        // A bitmap word exactly full.
        64 * index
    } else if rng.percent(15) {
        rng.between(41, 200)
    } else {
        rng.between(0, 40)
    };
    let narrow = rules > 64 && rng.percent(50);
    let defaults = rng.percent(85).then(|| DefaultsSpec {
        action: rng.percent(80).then(|| rng.pick(&["pass", "drop"])),
        mode: rng.percent(80).then(|| rng.pick(&["enforce", "monitor"])),
        fragments: rng.percent(80).then(|| rng.pick(&["rules", "pass", "drop"])),
        unparsable: rng.percent(50).then(|| rng.pick(&["pass", "drop"])),
    });
    // A third of the policies have one to three sets, holding networks of the pool that
    // rules use, both families.
    let sets: Vec<SetSpec> = if rng.percent(33) {
        (0..rng.between(1, 3))
            .map(|i| SetSpec {
                name: format!("s{i}"),
                entries: (0..rng.between(1, 6))
                    .map(|_| {
                        let v6 = rng.percent(50);
                        pool_net(rng, v6)
                    })
                    .collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
    PolicySpec {
        defaults,
        defaults_last: rng.percent(10),
        rules: (0..rules).map(|i| random_rule(rng, i, narrow, &names)).collect(),
        sets,
    }
}

fn random_rule(rng: &mut Rng, index: usize, narrow: bool, sets: &[String]) -> RuleSpec {
    loop {
        let protocol =
            rng.pick(&[None, Some("any"), Some("tcp"), Some("udp"), Some("icmp"), Some("icmpv6")]);
        let icmp = matches!(protocol, Some("icmp" | "icmpv6"));
        // Which address families the rule's networks come from; `None`: both.
        let family = match protocol {
            Some("icmp") => rng.pick(&[Some(false), None]),
            Some("icmpv6") => rng.pick(&[Some(true), None]),
            _ => rng.pick(&[Some(false), Some(true), None, None]),
        };
        let mut fields = Vec::new();
        let (mut v4, mut v6) = (protocol != Some("icmpv6"), protocol != Some("icmp"));
        if !icmp && rng.percent(45) {
            fields.push(("dst_ports", port_list(rng)));
        }
        if !icmp && rng.percent(20) {
            fields.push(("src_ports", port_list(rng)));
        }
        if narrow {
            let host_v6 = family.unwrap_or_else(|| rng.percent(50));
            let host = if host_v6 {
                IpAddr::V6(Ipv6Addr::from(
                    u128::from(rng.pick(&V6_ANCHORS)) ^ (rng.next() & 0xffff) as u128,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(
                    u32::from(rng.pick(&V4_ANCHORS)) ^ (rng.next() & 0xffff) as u32,
                ))
            };
            (v4, v6) = (v4 && !host_v6, v6 && host_v6);
            fields.push((
                "dst",
                TomlList { items: vec![format!("\"{host}\"")], bare: rng.percent(50) },
            ));
        }
        for (key, p) in [("src", 30), ("dst", if narrow { 0 } else { 40 })] {
            if rng.percent(p) {
                let (mut list, mut has_v4, mut has_v6) = net_list(rng, family);
                // A set beside the networks, or instead of them; it may hold either family.
                if !sets.is_empty() && rng.percent(35) {
                    let set = format!("\"@{}\"", rng.pick_str(sets));
                    if rng.percent(40) {
                        list.items.clear();
                    }
                    list.items.push(set);
                    list.bare = list.items.len() == 1 && rng.percent(30);
                    (has_v4, has_v6) = (true, true);
                }
                (v4, v6) = (v4 && has_v4, v6 && has_v6);
                fields.push((key, list));
            }
        }
        if protocol == Some("tcp") && rng.percent(35) {
            let items = vec![format!("\"{}\"", random_tcp_flags_spec(rng))];
            fields.push(("tcp_flags", TomlList { items, bare: true }));
        }
        if icmp && rng.percent(60) {
            let n = rng.between(1, 3);
            let items = (0..n).map(|_| pool_icmp_type(rng).to_string()).collect();
            fields.push(("icmp_types", TomlList { items, bare: n == 1 && rng.percent(30) }));
        }
        // The parser rejects a rule no packet can match (`never_matches`).
        if !v4 && !v6 {
            continue;
        }
        // A rule without fields takes every packet of its protocol (or every packet), so
        // that no later rule of that protocol could win: rare.
        if fields.is_empty() && !rng.percent(10) {
            continue;
        }
        return RuleSpec {
            name: format!("r{index}"),
            action: rng.pick(&["pass", "drop", "pass", "drop", "pass", "drop", "limit"]),
            per: Some(rng.pick(&["source", "source/24", "source/16,48", "rule"])),
            mode: rng.pick(&[None, None, Some("enforce"), Some("monitor"), Some("monitor")]),
            protocol,
            fields,
        };
    }
}

fn port_list(rng: &mut Rng) -> TomlList {
    let n = if rng.percent(85) { rng.between(1, 3) } else { rng.between(4, 8) };
    let items = (0..n)
        .map(|_| {
            let low = pool_port(rng);
            if rng.percent(60) {
                return if rng.percent(15) { format!("\"{low}\"") } else { low.to_string() };
            }
            let high = match rng.below(4) {
                0 => low.saturating_add(rng.pick(&[0, 1, 2, 10, 1000])),
                1 => low.saturating_add(rng.next() as u16),
                _ => pool_port(rng).max(low),
            };
            format!("\"{low}-{high}\"")
        })
        .collect();
    TomlList { items, bare: n == 1 && rng.percent(30) }
}

/// Networks with their host bits cleared, plus which families the list holds.
fn net_list(rng: &mut Rng, family: Option<bool>) -> (TomlList, bool, bool) {
    let n = if rng.percent(85) { rng.between(1, 3) } else { rng.between(4, 6) };
    let (mut has_v4, mut has_v6) = (false, false);
    let items = (0..n)
        .map(|_| {
            let v6 = family.unwrap_or_else(|| rng.percent(50));
            (has_v4, has_v6) = (has_v4 || !v6, has_v6 || v6);
            let net = pool_net(rng, v6);
            // A host route may be written as a bare address.
            if net.prefix_len() == net.max_prefix_len() && rng.percent(50) {
                format!("\"{}\"", net.addr())
            } else {
                format!("\"{net}\"")
            }
        })
        .collect();
    (TomlList { items, bare: n == 1 && rng.percent(30) }, has_v4, has_v6)
}

// ---------------------------------------------------------------------------------------
// Random frames

/// A frame as the generator built it. `build` gives the bytes, `expected` what the
/// parsing contract makes of them, worked out from this description (not by parsing).
#[derive(Clone, Debug)]
pub struct FrameSpec {
    /// TPIDs of the VLAN tags, outermost first.
    pub vlans: Vec<u16>,
    pub l3: L3Spec,
    /// Bytes after the transport header.
    pub payload: usize,
    /// Bytes after the IP packet (an Ethernet trailer, outside the IP length).
    pub trailer: usize,
    /// Write this IP length (IPv4 total length, IPv6 payload length) instead of the
    /// packet's real length: the bytes after the end it gives become a trailer.
    pub ip_len: Option<u16>,
    /// Cut the frame to this many bytes.
    pub truncate: Option<usize>,
}

#[derive(Clone, Debug)]
pub enum L3Spec {
    /// Any EtherType but IPv4, IPv6 and the VLAN TPIDs, with a 28-byte body.
    NotIp {
        ether_type: u16,
    },
    V4 {
        version: u8,
        /// Header length in 4-byte units; options are written to match when it is ≥ 5.
        ihl: u8,
        /// Reserved, DF, MF.
        flags: u8,
        frag_offset: u16,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4: L4Spec,
    },
    V6 {
        version: u8,
        ext: Vec<ExtSpec>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        l4: L4Spec,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum ExtSpec {
    /// Hop-by-hop, routing, destination options, mobility, HIP, shim6: `(len + 1) * 8`
    /// bytes.
    Generic { code: u8, len: u8 },
    /// Offset in 8-byte units.
    Fragment { offset: u16, more: bool },
    /// `(len + 2) * 4` bytes.
    Ah { len: u8 },
}

impl ExtSpec {
    fn code(self) -> u8 {
        match self {
            Self::Generic { code, .. } => code,
            Self::Fragment { .. } => IPPROTO_FRAGMENT,
            Self::Ah { .. } => IPPROTO_AH,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::Generic { len, .. } => (usize::from(len) + 1) * 8,
            Self::Fragment { .. } => 8,
            Self::Ah { len } => (usize::from(len) + 2) * 4,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum L4Spec {
    /// `doff` in 4-byte units; options are written to match when it is above 5.
    Tcp {
        sport: u16,
        dport: u16,
        doff: u8,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP (`v6 == false`, protocol 1) or ICMPv6 (protocol 58), over either IP version.
    Icmp {
        v6: bool,
        icmp_type: u8,
    },
    /// Any other protocol, with 8 opaque bytes.
    Other {
        proto: u8,
    },
}

impl L4Spec {
    fn proto(self) -> u8 {
        match self {
            Self::Tcp { .. } => IPPROTO_TCP,
            Self::Udp { .. } => IPPROTO_UDP,
            Self::Icmp { v6: false, .. } => IPPROTO_ICMP,
            Self::Icmp { v6: true, .. } => IPPROTO_ICMPV6,
            Self::Other { proto } => proto,
        }
    }

    fn bytes(self, rng: &mut Rng) -> Vec<u8> {
        match self {
            Self::Tcp { sport, dport, doff, flags } => {
                let mut h = rng.bytes(20 + 4 * usize::from(doff.saturating_sub(5)));
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = (doff << 4) | (h[12] & 0x0f);
                h[13] = flags;
                h
            }
            Self::Udp { sport, dport } => {
                let mut h = rng.bytes(8);
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h
            }
            Self::Icmp { icmp_type, .. } => {
                let mut h = rng.bytes(8);
                h[0] = icmp_type;
                h
            }
            Self::Other { .. } => rng.bytes(8),
        }
    }
}

/// Extension-header codes with the generic layout.
const GENERIC_EXT_CODES: [u8; 6] =
    [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, 135, 139, 140];
/// Protocols without a transport header the classifier reads. Over IPv6 the
/// extension-header codes are left out: those are built as `ExtSpec`s.
const OTHER_PROTOS: [u8; 14] = [
    IPPROTO_HOPOPTS,
    2,
    4,
    IPPROTO_ROUTING,
    IPPROTO_FRAGMENT,
    41,
    47,
    IPPROTO_ESP,
    IPPROTO_AH,
    59,
    IPPROTO_DSTOPTS,
    132,
    136,
    255,
];

fn is_ipv6_ext(code: u8) -> bool {
    GENERIC_EXT_CODES.contains(&code) || code == IPPROTO_FRAGMENT || code == IPPROTO_AH
}

/// The classifier's transport class of IP protocol `proto`, written out here rather than
/// taken from `L4Class::of`: the generator's expectations must not share the code of the
/// kernel program and the reference parser they check.
fn class_of(proto: u8, v6: bool) -> L4Class {
    match proto {
        IPPROTO_TCP => L4Class::Tcp,
        IPPROTO_UDP => L4Class::Udp,
        IPPROTO_ICMP if !v6 => L4Class::Icmp,
        IPPROTO_ICMPV6 if v6 => L4Class::Icmpv6,
        _ => L4Class::Other,
    }
}

pub const ETH_HLEN: usize = 14;

impl FrameSpec {
    /// The frame's bytes. Random filler comes from a generator seeded by the description,
    /// so the same description always gives the same bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut rng = Rng(0xf1a3_b0c5 ^ self.payload as u64 ^ ((self.vlans.len() as u64) << 8));
        let mut out = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for tpid in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&(rng.next() as u16 & 0x0fff).to_be_bytes());
        }
        match &self.l3 {
            L3Spec::NotIp { ether_type } => {
                out.extend_from_slice(&ether_type.to_be_bytes());
                out.extend(rng.bytes(28));
            }
            L3Spec::V4 { version, ihl, flags, frag_offset, src, dst, l4 } => {
                out.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let options = 4 * usize::from(ihl.saturating_sub(5));
                let transport = l4.bytes(&mut rng);
                let total =
                    self.ip_len.map_or(20 + options + transport.len() + self.payload, usize::from);
                out.push((version << 4) | (ihl & 0x0f));
                out.push(0);
                out.extend_from_slice(&(total as u16).to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                let frag = (u16::from(*flags) << 13) | (frag_offset & 0x1fff);
                out.extend_from_slice(&frag.to_be_bytes());
                out.extend_from_slice(&[64, l4.proto(), 0, 0]);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend(rng.bytes(options));
                out.extend(transport);
            }
            L3Spec::V6 { version, ext, src, dst, l4 } => {
                out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let transport = l4.bytes(&mut rng);
                let ext_len: usize = ext.iter().map(|e| e.size()).sum();
                out.extend_from_slice(&[version << 4, 0, 0, 0]);
                let payload =
                    self.ip_len.map_or(ext_len + transport.len() + self.payload, usize::from);
                out.extend_from_slice(&(payload as u16).to_be_bytes());
                out.push(ext.first().map_or(l4.proto(), |e| e.code()));
                out.push(64);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                for (i, e) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(l4.proto(), |e| e.code());
                    match *e {
                        ExtSpec::Generic { len, .. } | ExtSpec::Ah { len } => {
                            out.extend_from_slice(&[next, len]);
                            out.extend(rng.bytes(e.size() - 2));
                        }
                        ExtSpec::Fragment { offset, more } => {
                            out.extend_from_slice(&[next, 0]);
                            out.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                            out.extend(rng.bytes(4));
                        }
                    }
                }
                out.extend(transport);
            }
        }
        out.extend(rng.bytes(self.payload + self.trailer));
        if let Some(len) = self.truncate {
            out.truncate(len);
        }
        out
    }

    /// Where the IP packet starts in the frame, and where it ends by its length field
    /// (a length of 0: at the end of the frame).
    fn ip_bounds(&self) -> (usize, usize) {
        let at = ETH_HLEN + 4 * self.vlans.len();
        let header = if matches!(self.l3, L3Spec::V6 { .. }) { 40 } else { 0 };
        match self.ip_len {
            Some(0) => (at, self.build().len()),
            Some(len) => (at, at + header + usize::from(len)),
            None => (at, self.full_len() - self.trailer),
        }
    }

    /// What the contract makes of the frame as built, truncation included, worked out
    /// from the description; and the offset up to which the parser reads to get there
    /// (where a cut of the IP length or of the frame starts to matter).
    fn walk(&self) -> (Parsed, usize) {
        if self.vlans.len() > MAX_VLAN_TAGS {
            return (Parsed::Unparsable, ETH_HLEN + 4 * MAX_VLAN_TAGS + 2);
        }
        let frame = self.build().len();
        let (at, ip_end) = self.ip_bounds();
        if frame < at {
            return (Parsed::Unparsable, at);
        }
        let ip = |src: IpAddr, dst: IpAddr, l4| Parsed::Ip(IpPacket { src, dst, l4 });
        // Within the IP packet, as its length field says; that must fit in the frame.
        let fits = |needed: usize| needed <= ip_end && ip_end <= frame;
        match &self.l3 {
            L3Spec::NotIp { .. } => (Parsed::NotIp, at),
            L3Spec::V4 { version, ihl, frag_offset, src, dst, l4, .. } => {
                let header = at + 4 * usize::from(*ihl);
                if frame < at + 20 || *version != 4 || *ihl < 5 || !fits(header) {
                    return (Parsed::Unparsable, header.max(at + 20));
                }
                let (src, dst) = (IpAddr::V4(*src), IpAddr::V4(*dst));
                if *frag_offset != 0 {
                    let class = class_of(l4.proto(), false);
                    return (ip(src, dst, L4::Fragment { class }), header);
                }
                match transport(*l4, header, false) {
                    (Some(l4), needed) if fits(needed) => (ip(src, dst, l4), needed),
                    (_, needed) => (Parsed::Unparsable, needed),
                }
            }
            L3Spec::V6 { version, ext, src, dst, l4 } => {
                if frame < at + 40 || *version != 6 || !fits(at + 40) {
                    return (Parsed::Unparsable, at + 40);
                }
                let (src, dst) = (IpAddr::V6(*src), IpAddr::V6(*dst));
                let mut offset = at + 40;
                for (i, e) in ext.iter().enumerate() {
                    if i == MAX_IPV6_EXT_HEADERS + 1 || offset - at > MAX_IPV6_HEADER_CHAIN {
                        return (Parsed::Unparsable, offset);
                    }
                    let next = ext.get(i + 1).map_or(l4.proto(), |e| e.code());
                    offset += e.size();
                    if !fits(offset) {
                        return (Parsed::Unparsable, offset);
                    }
                    if let ExtSpec::Fragment { offset: 1.., .. } = e {
                        let class = class_of(next, true);
                        return (ip(src, dst, L4::Fragment { class }), offset);
                    }
                }
                if ext.len() > MAX_IPV6_EXT_HEADERS || offset - at > MAX_IPV6_HEADER_CHAIN {
                    return (Parsed::Unparsable, offset);
                }
                match transport(*l4, offset, true) {
                    (Some(l4), needed) if fits(needed) => (ip(src, dst, l4), needed),
                    (_, needed) => (Parsed::Unparsable, needed),
                }
            }
        }
    }

    /// What the contract makes of the frame as built.
    pub fn expected(&self) -> Parsed {
        self.walk().0
    }

    fn full_len(&self) -> usize {
        Self { truncate: None, ..self.clone() }.build().len()
    }
}

/// The transport header at `at`: what it parses to (`None`: unparsable) and where the
/// bytes needed to read it end. Other protocols need nothing: no transport header is
/// read.
fn transport(l4: L4Spec, at: usize, v6: bool) -> (Option<L4>, usize) {
    match l4 {
        L4Spec::Tcp { sport, dport, doff, flags } => (
            (doff >= 5).then_some(L4::Tcp { src_port: sport, dst_port: dport, flags }),
            at + 20.max(4 * usize::from(doff)),
        ),
        L4Spec::Udp { sport, dport } => {
            (Some(L4::Udp { src_port: sport, dst_port: dport }), at + 8)
        }
        L4Spec::Icmp { v6: false, icmp_type } if !v6 => (Some(L4::Icmp { icmp_type }), at + 8),
        L4Spec::Icmp { v6: true, icmp_type } if v6 => (Some(L4::Icmpv6 { icmp_type }), at + 8),
        L4Spec::Icmp { .. } | L4Spec::Other { .. } => (Some(L4::Other { proto: l4.proto() }), at),
    }
}

/// A random frame; half the time aimed at one of `policy`'s rules.
pub fn random_frame(rng: &mut Rng, policy: &Policy) -> FrameSpec {
    let target = (!policy.rules.is_empty() && rng.percent(50))
        .then(|| &policy.rules[rng.below(policy.rules.len())]);
    let tags = match rng.below(100) {
        0..70 => 0,
        70..85 => 1,
        85..93 => 2,
        93..98 => rng.between(3, 6),
        _ => rng.between(7, MAX_VLAN_TAGS + 1),
    };
    let vlans = (0..tags).map(|_| rng.pick(&[ETH_P_8021Q, ETH_P_8021AD])).collect();
    let v6 = match target {
        Some(rule) => rule_family(rng, rule),
        None if rng.percent(8) => {
            let ether_type = rng.pick(&[ETH_P_ARP, ETH_P_ARP, 0x88cc, 0x9100, 0x0842, 0x1234]);
            let l3 = L3Spec::NotIp { ether_type };
            let frame =
                FrameSpec { vlans, l3, payload: 0, trailer: 0, ip_len: None, truncate: None };
            return finish(rng, frame);
        }
        None => rng.percent(50),
    };
    let l4 = match target {
        Some(rule) => aimed_l4(rng, rule, v6),
        None => random_l4(rng, v6),
    };
    // A rule's networks, and those of the sets it names, for each address field.
    let aim = |nets: &Option<Vec<IpNet>>, names: &[String]| -> Option<Vec<IpNet>> {
        let mut all = nets.clone()?;
        for set in policy.sets.iter().filter(|s| names.contains(&s.name)) {
            all.extend(set.entries.iter().copied());
        }
        Some(all)
    };
    let src_aim = target.and_then(|r| aim(&r.src, &r.src_sets));
    let dst_aim = target.and_then(|r| aim(&r.dst, &r.dst_sets));
    let l3 = if v6 {
        let src = aimed_addr(rng, src_aim.as_deref(), true);
        let dst = aimed_addr(rng, dst_aim.as_deref(), true);
        let IpAddr::V6(src) = src else { unreachable!("aimed_addr keeps the family") };
        let IpAddr::V6(dst) = dst else { unreachable!("aimed_addr keeps the family") };
        let version = if rng.percent(2) { rng.pick(&[0, 4, 7, 15]) } else { 6 };
        let count = match rng.below(100) {
            0..50 => 0,
            50..80 => rng.between(1, 3),
            80..96 => rng.between(4, 8),
            _ => rng.between(9, MAX_IPV6_EXT_HEADERS + 2),
        };
        let ext = (0..count).map(|_| random_ext(rng)).collect();
        L3Spec::V6 { version, ext, src, dst, l4 }
    } else {
        let src = aimed_addr(rng, src_aim.as_deref(), false);
        let dst = aimed_addr(rng, dst_aim.as_deref(), false);
        let IpAddr::V4(src) = src else { unreachable!("aimed_addr keeps the family") };
        let IpAddr::V4(dst) = dst else { unreachable!("aimed_addr keeps the family") };
        let version = if rng.percent(2) { rng.pick(&[0, 5, 6, 15]) } else { 4 };
        let ihl = match rng.below(100) {
            0..65 => 5,
            65..96 => rng.between(6, 15) as u8,
            _ => rng.between(0, 4) as u8,
        };
        let frag_offset = match rng.below(100) {
            0..80 => 0,
            80..90 => rng.between(1, 3) as u16,
            _ => rng.between(1, 0x1fff) as u16,
        };
        L3Spec::V4 { version, ihl, flags: rng.below(8) as u8, frag_offset, src, dst, l4 }
    };
    let payload = if rng.percent(70) { rng.below(9) } else { rng.below(33) };
    finish(rng, FrameSpec { vlans, l3, payload, trailer: 0, ip_len: None, truncate: None })
}

/// Cuts one frame in five, by its length: often just short of, or exactly at, what the
/// parser needs; half of those by the IP length field, the rest of the frame left as a
/// trailer (the split headers of crafted first fragments), the other half by cutting
/// the frame itself. Gives one in ten a trailer past the IP packet.
fn finish(rng: &mut Rng, mut frame: FrameSpec) -> FrameSpec {
    if rng.percent(10) {
        frame.trailer = rng.between(1, 24);
    }
    if rng.percent(20) {
        let full = frame.full_len();
        let (_, needed) = frame.walk();
        let len = match rng.below(3) {
            0 => needed.saturating_sub(1),
            1 => needed,
            _ => rng.between(ETH_HLEN, full),
        };
        let (at, ip_end) = frame.ip_bounds();
        let header = match frame.l3 {
            L3Spec::V4 { .. } => Some(at),
            L3Spec::V6 { .. } => Some(at + 40),
            L3Spec::NotIp { .. } => None,
        };
        if let Some(start) = header.filter(|s| rng.percent(50) && (*s + 1..ip_end).contains(&len)) {
            frame.ip_len = u16::try_from(len - start).ok();
            frame.trailer += ip_end - len;
        } else {
            let len = len.max(ETH_HLEN);
            frame.truncate = (len < full).then_some(len);
        }
    }
    frame
}

fn random_ext(rng: &mut Rng) -> ExtSpec {
    match rng.below(10) {
        0..6 => ExtSpec::Generic {
            code: rng.pick(&GENERIC_EXT_CODES),
            len: if rng.percent(70) { 0 } else { rng.between(1, 3) as u8 },
        },
        6 | 7 => ExtSpec::Fragment {
            offset: if rng.percent(60) { 0 } else { rng.between(1, 0x1fff) as u16 },
            more: rng.percent(50),
        },
        _ => ExtSpec::Ah { len: if rng.percent(70) { 1 } else { rng.between(0, 4) as u8 } },
    }
}

fn random_l4(rng: &mut Rng, v6: bool) -> L4Spec {
    match rng.below(100) {
        0..35 => L4Spec::Tcp {
            sport: pool_port(rng),
            dport: pool_port(rng),
            doff: random_doff(rng),
            flags: random_tcp_flags(rng),
        },
        35..65 => L4Spec::Udp { sport: pool_port(rng), dport: pool_port(rng) },
        65..80 => L4Spec::Icmp { v6, icmp_type: pool_icmp_type(rng) },
        80..83 => L4Spec::Icmp { v6: !v6, icmp_type: pool_icmp_type(rng) },
        _ => {
            let proto = if rng.percent(80) { rng.pick(&OTHER_PROTOS) } else { rng.next() as u8 };
            let proto = match proto {
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => 59,
                p if v6 && is_ipv6_ext(p) => 59,
                p => p,
            };
            L4Spec::Other { proto }
        }
    }
}

/// A TCP flags byte: the common shapes (SYN, SYN+ACK, ACK, RST, FIN+ACK, NULL, Xmas)
/// more often than chance would give them.
fn random_tcp_flags(rng: &mut Rng) -> u8 {
    use policy_common::tcp_flags::*;
    if rng.percent(60) {
        rng.pick(&[SYN, SYN | ACK, ACK, RST, RST | ACK, FIN | ACK, PSH | ACK, 0, FIN | PSH | URG])
    } else {
        rng.next() as u8
    }
}

/// A `tcp_flags` value: one to three flags, each set or cleared, or the exact form.
fn random_tcp_flags_spec(rng: &mut Rng) -> String {
    let names = policy_common::tcp_flags::NAMES;
    let n = rng.between(1, 3);
    let mut picked: Vec<&str> = Vec::new();
    while picked.len() < n {
        let (name, _) = rng.pick(&names);
        if !picked.contains(&name) {
            picked.push(name);
        }
    }
    if rng.percent(20) {
        return format!("={}", picked.join(","));
    }
    let items: Vec<String> = picked
        .iter()
        .map(|n| if rng.percent(35) { format!("!{n}") } else { (*n).to_string() })
        .collect();
    items.join(",")
}

fn random_doff(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..80 => 5,
        80..96 => rng.between(6, 15) as u8,
        _ => rng.between(0, 4) as u8,
    }
}

/// An address family the rule admits (`true`: IPv6).
fn rule_family(rng: &mut Rng, rule: &Rule) -> bool {
    let (mut v4, mut v6) = (rule.protocol != Protocol::Icmpv6, rule.protocol != Protocol::Icmp);
    for (nets, sets) in [(&rule.src, &rule.src_sets), (&rule.dst, &rule.dst_sets)] {
        // A field naming a set may hold either family.
        let Some(nets) = nets.as_ref().filter(|_| sets.is_empty()) else { continue };
        v4 &= nets.iter().any(|n| matches!(n, IpNet::V4(_)));
        v6 &= nets.iter().any(|n| matches!(n, IpNet::V6(_)));
    }
    match (v4, v6) {
        (true, true) => rng.percent(50),
        (v4, _) => !v4,
    }
}

/// An address inside one of `nets` of the family, at its edges or just outside now and
/// then; from the pool when the rule does not constrain it.
fn aimed_addr(rng: &mut Rng, nets: Option<&[IpNet]>, v6: bool) -> IpAddr {
    let candidates: Vec<IpNet> =
        nets.into_iter().flatten().filter(|n| matches!(n, IpNet::V6(_)) == v6).copied().collect();
    if candidates.is_empty() {
        return if v6 { IpAddr::V6(pool_v6(rng)) } else { IpAddr::V4(pool_v4(rng)) };
    }
    let net = rng.pick(&candidates);
    let bits = u32::from(net.max_prefix_len());
    let host_bits = bits - u32::from(net.prefix_len());
    let host_mask = if host_bits == 0 { 0 } else { u128::MAX >> (128 - host_bits) };
    let mut addr = match net.network() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    addr |= match rng.below(4) {
        0 => 0,
        1 => host_mask,
        _ => u128::from(rng.next()) << 64 | u128::from(rng.next()),
    } & host_mask;
    // The neighbouring network of the same size.
    if host_bits < bits && rng.percent(15) {
        addr ^= 1 << host_bits;
    }
    match net {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(addr as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(addr)),
    }
}

/// A port in (or at the edge of, or just past) one of the ranges.
fn aimed_port(rng: &mut Rng, ranges: Option<&[PortRange]>) -> u16 {
    let Some(ranges) = ranges else { return pool_port(rng) };
    let r = rng.pick(ranges);
    match rng.below(10) {
        0..3 => r.low,
        3..6 => r.high,
        6 | 7 => rng.between(usize::from(r.low), usize::from(r.high)) as u16,
        8 => r.low.wrapping_sub(1),
        _ => r.high.wrapping_add(1),
    }
}

fn aimed_l4(rng: &mut Rng, rule: &Rule, v6: bool) -> L4Spec {
    let has_ports = rule.dst_ports.is_some() || rule.src_ports.is_some();
    let icmp_type = |rng: &mut Rng| match &rule.icmp_types {
        Some(types) if rng.percent(85) => rng.pick(types),
        _ => pool_icmp_type(rng),
    };
    let kind = match rule.protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Icmp | Protocol::Icmpv6 => 2,
        Protocol::Any if has_ports => rng.below(2),
        Protocol::Any => rng.below(4),
    };
    let sport = aimed_port(rng, rule.src_ports.as_deref());
    let dport = aimed_port(rng, rule.dst_ports.as_deref());
    match kind {
        0 => {
            // Most often flags the rule's condition admits.
            let flags = match rule.tcp_flags {
                Some(f) if rng.percent(80) => f.value | (random_tcp_flags(rng) & !f.mask),
                _ => random_tcp_flags(rng),
            };
            L4Spec::Tcp { sport, dport, doff: random_doff(rng), flags }
        }
        1 => L4Spec::Udp { sport, dport },
        2 => L4Spec::Icmp { v6, icmp_type: icmp_type(rng) },
        _ => random_l4(rng, v6),
    }
}

// ---------------------------------------------------------------------------------------
// One step simpler, for shrinking a failing case

impl PolicySpec {
    /// Policies one step simpler than this one, the biggest steps first: without half,
    /// a quarter, … of the rules, then without one rule's field, list item, mode or
    /// protocol, then without a default.
    pub fn simpler(&self) -> Vec<PolicySpec> {
        let mut out = Vec::new();
        let n = self.rules.len();
        let mut chunk = n.div_ceil(2);
        while chunk > 0 {
            for start in (0..n).step_by(chunk) {
                let mut p = self.clone();
                p.rules.drain(start..(start + chunk).min(n));
                out.push(p);
            }
            chunk = if chunk == 1 { 0 } else { chunk.div_ceil(2) };
        }
        let with_rule = |r: usize, edit: &dyn Fn(&mut RuleSpec)| {
            let mut p = self.clone();
            edit(&mut p.rules[r]);
            p
        };
        for (r, rule) in self.rules.iter().enumerate() {
            for (f, (_, list)) in rule.fields.iter().enumerate() {
                out.push(with_rule(r, &|rule| {
                    rule.fields.remove(f);
                }));
                for i in (0..list.items.len()).filter(|_| list.items.len() > 1) {
                    out.push(with_rule(r, &|rule| {
                        rule.fields[f].1.items.remove(i);
                    }));
                }
            }
            if rule.mode.is_some() {
                out.push(with_rule(r, &|rule| rule.mode = None));
            }
            if rule.protocol.is_some() {
                out.push(with_rule(r, &|rule| rule.protocol = None));
            }
        }
        if let Some(d) = &self.defaults {
            let with_defaults = |edit: &dyn Fn(&mut DefaultsSpec)| {
                let mut p = self.clone();
                if let Some(d) = &mut p.defaults {
                    edit(d);
                }
                p
            };
            out.push(Self { defaults: None, ..self.clone() });
            if d.action.is_some() {
                out.push(with_defaults(&|d| d.action = None));
            }
            if d.mode.is_some() {
                out.push(with_defaults(&|d| d.mode = None));
            }
            if d.fragments.is_some() {
                out.push(with_defaults(&|d| d.fragments = None));
            }
            if d.unparsable.is_some() {
                out.push(with_defaults(&|d| d.unparsable = None));
            }
        }
        if self.defaults_last {
            out.push(Self { defaults_last: false, ..self.clone() });
        }
        out
    }
}

impl FrameSpec {
    /// Frames one step simpler than this one: not truncated, no payload, a VLAN tag, IPv4
    /// options, IPv4 flags, an IPv6 extension header or TCP options fewer.
    pub fn simpler(&self) -> Vec<FrameSpec> {
        let mut out = Vec::new();
        let with = |edit: &dyn Fn(&mut FrameSpec)| {
            let mut f = self.clone();
            edit(&mut f);
            f
        };
        if self.truncate.is_some() {
            out.push(with(&|f| f.truncate = None));
        }
        if self.ip_len.is_some() {
            out.push(with(&|f| f.ip_len = None));
        }
        if self.trailer > 0 {
            out.push(with(&|f| f.trailer = 0));
        }
        if self.payload > 0 {
            out.push(with(&|f| f.payload = 0));
        }
        for i in 0..self.vlans.len() {
            out.push(with(&|f| {
                f.vlans.remove(i);
            }));
        }
        match &self.l3 {
            L3Spec::V4 { ihl, flags, .. } => {
                if *ihl > 5 {
                    out.push(with(&|f| {
                        if let L3Spec::V4 { ihl, .. } = &mut f.l3 {
                            *ihl = 5;
                        }
                    }));
                }
                if *flags != 0 {
                    out.push(with(&|f| {
                        if let L3Spec::V4 { flags, .. } = &mut f.l3 {
                            *flags = 0;
                        }
                    }));
                }
            }
            L3Spec::V6 { ext, .. } => {
                for i in 0..ext.len() {
                    out.push(with(&|f| {
                        if let L3Spec::V6 { ext, .. } = &mut f.l3 {
                            ext.remove(i);
                        }
                    }));
                }
            }
            L3Spec::NotIp { .. } => {}
        }
        if let L3Spec::V4 { l4, .. } | L3Spec::V6 { l4, .. } = &self.l3
            && let L4Spec::Tcp { doff: 6.., .. } = l4
        {
            out.push(with(&|f| {
                if let L3Spec::V4 { l4: L4Spec::Tcp { doff, .. }, .. }
                | L3Spec::V6 { l4: L4Spec::Tcp { doff, .. }, .. } = &mut f.l3
                {
                    *doff = 5;
                }
            }));
        }
        out
    }
}
