//! The reference classifier: the policy semantics written plainly, rule by rule, with no
//! bitmaps, and a byte parser that follows the XDP program's parsing contract (see
//! `policy-ebpf/src/parse.rs`). The kernel program must agree with it on every packet:
//! the differential tests check that, and `explain` shows both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy_common::{L4Class, MAX_IPV6_EXT_HEADERS, MAX_IPV6_HEADER_CHAIN, MAX_VLAN_TAGS, Verdict};

use super::{Action, Fragments, Mode, Policy, Rule, SetDef};

/// The transport part of a packet, as far as the classifier looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        /// The flags byte (FIN bit 0 … CWR bit 7).
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Icmp {
        icmp_type: u8,
    },
    Icmpv6 {
        icmp_type: u8,
    },
    /// Another protocol, or ICMP over the wrong IP version.
    Other {
        proto: u8,
    },
    /// A non-first fragment of this transport class: no ports, no ICMP type.
    Fragment {
        class: L4Class,
    },
}

impl L4 {
    pub fn class(&self) -> L4Class {
        match self {
            Self::Tcp { .. } => L4Class::Tcp,
            Self::Udp { .. } => L4Class::Udp,
            Self::Icmp { .. } => L4Class::Icmp,
            Self::Icmpv6 { .. } => L4Class::Icmpv6,
            Self::Other { .. } => L4Class::Other,
            Self::Fragment { class } => *class,
        }
    }

    /// The classifier's "destination port": the port, or the ICMP type.
    fn dport(&self) -> Option<u16> {
        match *self {
            Self::Tcp { dst_port, .. } | Self::Udp { dst_port, .. } => Some(dst_port),
            Self::Icmp { icmp_type } | Self::Icmpv6 { icmp_type } => Some(u16::from(icmp_type)),
            Self::Other { .. } | Self::Fragment { .. } => None,
        }
    }

    /// TCP's flags; `None` for other protocols and fragments.
    fn tcp_flags(&self) -> Option<u8> {
        match *self {
            Self::Tcp { flags, .. } => Some(flags),
            _ => None,
        }
    }

    fn sport(&self) -> Option<u16> {
        match *self {
            Self::Tcp { src_port, .. } | Self::Udp { src_port, .. } => Some(src_port),
            _ => None,
        }
    }
}

/// An IP packet's classification inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
}

/// What the parser makes of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    NotIp,
    /// An IP packet whose transport header cannot be located and read whole.
    Unparsable,
    Ip(IpPacket),
}

/// The decision for one packet: the verdict and, if a rule decided, its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub rule: Option<usize>,
}

/// Whether `rule` matches `packet`: every field it has admits the packet. A set holds
/// the entries of its files.
pub fn rule_matches(rule: &Rule, sets: &[SetDef], packet: &IpPacket) -> bool {
    let in_ranges = |ranges: Option<Vec<super::PortRange>>, value: Option<u16>| match ranges {
        None => true,
        Some(ranges) => value.is_some_and(|v| ranges.iter().any(|r| r.contains(v))),
    };
    let in_set = |name: &String, addr: IpAddr| {
        sets.iter().any(|s| &s.name == name && s.entries.iter().any(|n| n.contains(&addr)))
    };
    let in_nets = |nets: &Option<Vec<ipnet::IpNet>>, named: &[String], addr: IpAddr| match nets {
        None => true,
        Some(nets) => {
            nets.iter().any(|n| n.contains(&addr)) || named.iter().any(|s| in_set(s, addr))
        }
    };
    rule.admits(packet.l4.class())
        && in_ranges(rule.dport_values(), packet.l4.dport())
        && in_ranges(rule.src_ports.clone(), packet.l4.sport())
        && rule.tcp_flags.is_none_or(|f| packet.l4.tcp_flags().is_some_and(|v| f.admits(v)))
        && in_nets(&rule.src, &rule.src_sets, packet.src)
        && in_nets(&rule.dst, &rule.dst_sets, packet.dst)
}

/// ICMPv6 router/neighbour solicitation/advertisement and redirect.
fn is_neighbour_discovery(l4: &L4) -> bool {
    matches!(l4, L4::Icmpv6 { icmp_type: 133..=137 })
}

/// Classifies a parsed packet under `policy`.
pub fn classify(policy: &Policy, packet: &Parsed) -> Outcome {
    let packet = match packet {
        Parsed::NotIp => return Outcome { verdict: Verdict::PassNotIp, rule: None },
        Parsed::Unparsable => {
            let verdict = match policy.defaults.unparsable {
                Action::Pass => Verdict::PassUnparsable,
                // `parse` refuses a limit here.
                Action::Drop | Action::Limit => Verdict::DropUnparsable,
            };
            return Outcome { verdict, rule: None };
        }
        Parsed::Ip(packet) => packet,
    };
    let defaults = &policy.defaults;
    if let L4::Fragment { .. } = packet.l4 {
        match defaults.fragments {
            Fragments::Pass => return Outcome { verdict: Verdict::PassFragment, rule: None },
            Fragments::Drop => return Outcome { verdict: Verdict::DropFragment, rule: None },
            Fragments::Rules => {}
        }
    }
    if let Some((index, rule)) =
        policy.rules.iter().enumerate().find(|(_, r)| rule_matches(r, &policy.sets, packet))
    {
        let verdict = match (rule.action, rule.mode) {
            (Action::Pass, _) => Verdict::PassRule,
            (Action::Drop, Mode::Enforce) => Verdict::DropRule,
            (Action::Drop, Mode::Monitor) => Verdict::MonitorRule,
            // Stateless: a limit rule's bucket is taken to have room.
            (Action::Limit, _) => Verdict::PassLimit,
        };
        return Outcome { verdict, rule: Some(index) };
    }
    let verdict = match (defaults.action, defaults.mode) {
        (Action::Pass, _) => Verdict::PassDefault,
        (Action::Drop, _) if is_neighbour_discovery(&packet.l4) => Verdict::PassNeighbour,
        (Action::Drop, Mode::Enforce) => Verdict::DropDefault,
        (Action::Drop, Mode::Monitor) => Verdict::MonitorDefault,
        // `parse` refuses a limit here.
        (Action::Limit, _) => Verdict::DropDefault,
    };
    Outcome { verdict, rule: None }
}

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
/// Extension headers with the generic (next header, length in 8-octet units) layout:
/// hop-by-hop, routing, destination options, mobility, HIP, shim6.
const GENERIC_EXT: [u8; 6] = [0, 43, 60, 135, 139, 140];
/// Bytes of an ICMP or ICMPv6 header (type, code, checksum, four more).
const ICMP_HLEN: usize = 8;

/// Parses a frame the way the XDP program does.
pub fn parse_packet(frame: &[u8]) -> Parsed {
    parse(frame).unwrap_or(Parsed::Unparsable)
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
}

/// `len` bytes at `at` lie inside the first `end` bytes of the frame.
fn need(end: usize, at: usize, len: usize) -> Option<()> {
    (at + len <= end).then_some(())
}

/// The end of an IP packet starting at `start` whose length field says `len` (0: up
/// to the end of the frame), if it fits in the frame.
fn ip_end(frame: &[u8], start: usize, len: u16) -> Option<usize> {
    match len {
        0 => Some(frame.len()),
        len => (start + usize::from(len) <= frame.len()).then(|| start + usize::from(len)),
    }
}

fn parse(frame: &[u8]) -> Option<Parsed> {
    need(frame.len(), 0, ETH_HLEN)?;
    let mut ether_type = be16(frame, 12)?;
    let mut at = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        need(frame.len(), at, 4)?;
        ether_type = be16(frame, at + 2)?;
        at += 4;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(frame, at).map(Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(frame, at).map(Parsed::Ip),
        ETH_P_8021Q | ETH_P_8021AD => None,
        _ => Some(Parsed::NotIp),
    }
}

fn parse_ipv4(frame: &[u8], at: usize) -> Option<IpPacket> {
    need(frame.len(), at, 20)?;
    let (version, ihl) = (frame[at] >> 4, usize::from(frame[at] & 0xf) * 4);
    if version != 4 || ihl < 20 {
        return None;
    }
    let end = ip_end(frame, at, be16(frame, at + 2)?)?;
    need(end, at, ihl)?;
    let frag_offset = be16(frame, at + 6)? & 0x1fff;
    let proto = frame[at + 9];
    let src = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&frame[at + 12..at + 16]).ok()?));
    let dst = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&frame[at + 16..at + 20]).ok()?));
    let l4 = if frag_offset != 0 {
        L4::Fragment { class: L4Class::of(proto, false) }
    } else {
        parse_l4(frame, end, at + ihl, proto, false)?
    };
    Some(IpPacket { src, dst, l4 })
}

fn parse_ipv6(frame: &[u8], start: usize) -> Option<IpPacket> {
    need(frame.len(), start, 40)?;
    if frame[start] >> 4 != 6 {
        return None;
    }
    let end = ip_end(frame, start + 40, be16(frame, start + 4)?)?;
    let mut next = frame[start + 6];
    let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&frame[start + 8..start + 24]).ok()?));
    let dst =
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&frame[start + 24..start + 40]).ok()?));
    let mut at = start + 40;
    // One more round than headers: the last one can only find the transport header.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        if at - start > MAX_IPV6_HEADER_CHAIN {
            return None;
        }
        let len = if next == IPPROTO_FRAGMENT {
            need(end, at, 8)?;
            if be16(frame, at + 2)? >> 3 != 0 {
                let class = L4Class::of(frame[at], true);
                return Some(IpPacket { src, dst, l4: L4::Fragment { class } });
            }
            8
        } else if GENERIC_EXT.contains(&next) {
            need(end, at, 2)?;
            (usize::from(frame[at + 1]) + 1) * 8
        } else if next == IPPROTO_AH {
            need(end, at, 2)?;
            (usize::from(frame[at + 1]) + 2) * 4
        } else {
            return Some(IpPacket { src, dst, l4: parse_l4(frame, end, at, next, true)? });
        };
        need(end, at, len)?;
        (next, at) = (frame[at], at + len);
    }
    // Still an extension header after the last one walked: past the bound.
    None
}

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// The transport header at `at` of an IP packet that ends at `end`.
fn parse_l4(frame: &[u8], end: usize, at: usize, proto: u8, v6: bool) -> Option<L4> {
    Some(match L4Class::of(proto, v6) {
        L4Class::Tcp => {
            need(end, at, 20)?;
            let doff = usize::from(frame[at + 12] >> 4);
            if doff < 5 {
                return None;
            }
            need(end, at, 4 * doff)?;
            L4::Tcp {
                src_port: be16(frame, at)?,
                dst_port: be16(frame, at + 2)?,
                flags: frame[at + TCP_FLAGS_OFFSET],
            }
        }
        L4Class::Udp => {
            need(end, at, 8)?;
            L4::Udp { src_port: be16(frame, at)?, dst_port: be16(frame, at + 2)? }
        }
        L4Class::Icmp => {
            need(end, at, ICMP_HLEN)?;
            L4::Icmp { icmp_type: frame[at] }
        }
        L4Class::Icmpv6 => {
            need(end, at, ICMP_HLEN)?;
            L4::Icmpv6 { icmp_type: frame[at] }
        }
        L4Class::Other => L4::Other { proto },
    })
}
