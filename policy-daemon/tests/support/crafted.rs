//! A corpus of crafted frames for evasion tests, as data: each shot is one frame or a few
//! fragments sent in order from the tx end of the testbed to the rx end, with what it is
//! aimed at (a TCP SYN, a UDP datagram, an echo request, a neighbour solicitation or an ARP
//! request, each with something unique that shows it arrived) and whether it is an attack
//! on [`BLOCKED_PORT`] or a control that must arrive.
//!
//! Unlike [`super::packet`], every checksum is right (IPv4 header; TCP, UDP, ICMP and
//! ICMPv6 with their pseudo-headers, over the whole datagram before it is fragmented; a
//! UDP checksum of 0 is sent as 0xffff), so what the Linux stack does with a shot depends
//! only on its shape. Addresses are the testbed's (tx → rx); the MACs are the veth pair's
//! ([`Params`]). Identifiers (source ports, tokens, IP IDs, fragment IDs, echo IDs) derive
//! from the shot's index and the corpus's epoch: shots of one corpus, and of corpora of
//! different epochs, never share a reassembly queue or an answer.
//!
//! The shapes: plain packets; IPv6 extension-header chains of every length 0–24 (all
//! destination options, and a mix of hop-by-hop, destination options of 8–32 bytes,
//! routing type 0 and atomic fragment headers); single headers Linux may refuse (routing
//! types 2 and 4, hop-by-hop not first, two fragment headers); VLAN stacks of 1–6 tags
//! (VID 0 priority tags of either TPID or a mix, and a non-zero VID); first fragments
//! that end at every byte inside the transport header (IPv4) or inside the
//! extension-header chain and transport header after the fragment header (IPv6), some
//! with trailer bytes past the IP length that look like the rest of the header or like a
//! header to the open port; trailers past the IP length; lengths that cut headers short
//! or are 0; IPv4 options up to IHL 15; IHL < 5; TCP data offsets below 5 and beyond the
//! segment; overlapping, duplicated, rewritten and out-of-order fragments.
//!
//! What Linux (6.18) does with them, found by `tests/evasion.rs`: it strips any number of
//! VID 0 tags of either TPID and drops a non-zero VID no VLAN device claims; walks any
//! number of extension headers but drops hop-by-hop anywhere but first, a second fragment
//! header and (with `seg6_enabled` off) a segment routing header; trims an IPv4 first
//! fragment to a multiple of 8 and drops one shorter than 8; drops an IPv6 first
//! fragment that is not a multiple of 8, or whose chain it can walk (each header's first
//! two bytes) to a transport header that is not whole in it (RFC 8200 §4.5), but
//! reassembles one whose chain stops at a header boundary inside it; drops overlapping
//! fragments, keeps the first copy of a duplicate.

use std::net::IpAddr;

use testbed::{RX_V4, RX_V6, TX_V4, TX_V6};

use super::packet::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP,
    IPPROTO_UDP,
};

/// The port attacks are aimed at: every policy of the evasion tests stops TCP and UDP to it.
pub const BLOCKED_PORT: u16 = 7777;
/// The port controls are aimed at: every policy lets TCP and UDP to it through.
pub const OPEN_PORT: u16 = 7778;
/// Shots in one corpus at most, so that the identifiers of different epochs never meet.
pub const MAX_SHOTS: usize = 1000;
/// Source ports of TCP shots start here (above both test ports, below the ephemeral range).
const FIRST_SRC_PORT: u16 = 10_000;
/// How many epochs fit under the ephemeral port range (32768) with [`MAX_SHOTS`] each.
pub const MAX_EPOCHS: u16 = 22;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;
const TCP_SYN: u8 = 0x02;
/// Data carried by every TCP SYN (Linux answers a SYN with data like any SYN), so a split
/// anywhere in the TCP header leaves something for the last fragment.
const TCP_DATA: &[u8] = b"evasion!";
const ECHO_DATA: &[u8] = b"xdp-policy evasion echo";
/// IPv4 option types (RFC 791) and the IPv6 options used to fill option headers.
const IPOPT_EOL: u8 = 0;
const IPOPT_NOP: u8 = 1;
const IPOPT_RR: u8 = 7;
const IPOPT_TIMESTAMP: u8 = 68;
const IPOPT_ROUTER_ALERT: u8 = 148;
const IPV6_TLV_PADN: u8 = 1;
/// An unknown option whose top two bits say "skip it" (RFC 8200 §4.2; 0x1e is the RFC 3692
/// experiment type), to fill option headers longer than PadN may (7 bytes).
const IPV6_TLV_SKIPPABLE: u8 = 0x1e;
/// Routing header types (RFC 8200, RFC 6275, RFC 8754).
const ROUTING_TYPE_0: u8 = 0;
const ROUTING_TYPE_2: u8 = 2;
const ROUTING_TYPE_SRH: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V6 => "v6",
        }
    }

    fn src(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(TX_V4),
            Self::V6 => IpAddr::V6(TX_V6),
        }
    }

    fn dst(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(RX_V4),
            Self::V6 => IpAddr::V6(RX_V6),
        }
    }
}

/// What a shot is aimed at, and so what shows that the Linux stack in rx delivered it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A TCP SYN from `src_port`: delivered when rx answers with a SYN-ACK from `port`.
    TcpSyn { family: Family, port: u16, src_port: u16 },
    /// A UDP datagram: delivered when `token` arrives on rx's socket on `port`.
    Udp { family: Family, port: u16, token: String },
    /// An ICMP or ICMPv6 echo request: delivered when the reply with this `id` comes back.
    Echo { family: Family, id: u16 },
    /// A neighbour solicitation for rx's IPv6 address: delivered when rx advertises it.
    NeighbourSolicitation,
    /// An ARP request for rx's IPv4 address: delivered when rx replies.
    ArpRequest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Aimed at [`BLOCKED_PORT`]: must never arrive while a policy that stops it is in force.
    Attack,
    /// Must arrive under every policy of the evasion tests.
    Control,
}

#[derive(Clone, Debug)]
pub struct Shot {
    /// Unique in the corpus, and the same for the same shape in every epoch.
    pub name: String,
    /// Ethernet frames, sent in this order.
    pub frames: Vec<Vec<u8>>,
    pub target: Target,
    pub kind: Kind,
    /// The Linux stack is known to deliver this shape: a run without a filter that does not
    /// deliver it has a broken oracle (a wrong checksum, address or sysctl), not a finding.
    pub linux_delivers: bool,
}

/// What the frames depend on besides their shape.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Destination MAC: the rx end of the veth pair.
    pub rx_mac: [u8; 6],
    /// Source MAC: the tx end.
    pub tx_mac: [u8; 6],
    /// Which of several corpora sent through one testbed this is (< [`MAX_EPOCHS`]).
    pub epoch: u16,
}

impl Default for Params {
    fn default() -> Self {
        Self { rx_mac: [0x02, 0, 0, 0, 0, 2], tx_mac: [0x02, 0, 0, 0, 0, 1], epoch: 0 }
    }
}

/// The allow-list every attack must not get through: default drop; TCP and UDP to
/// [`OPEN_PORT`], ICMP and ICMPv6 echo requests pass (neighbour discovery passes by itself).
pub fn allow_list() -> String {
    format!(
        "[defaults]\naction = \"drop\"\ni_know_this_blocks_ssh = true\n\n\
         [[rule]]\nname = \"open-tcp\"\naction = \"pass\"\nprotocol = \"tcp\"\ndst_ports = {OPEN_PORT}\n\n\
         [[rule]]\nname = \"open-udp\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = {OPEN_PORT}\n\n\
         [[rule]]\nname = \"echo\"\naction = \"pass\"\nprotocol = \"icmp\"\nicmp_types = 8\n\n\
         [[rule]]\nname = \"echo6\"\naction = \"pass\"\nprotocol = \"icmpv6\"\nicmp_types = 128\n"
    )
}

/// The deny-list every attack must not get through: default pass; TCP and UDP to
/// [`BLOCKED_PORT`] dropped.
pub fn deny_list() -> String {
    format!(
        "[defaults]\naction = \"pass\"\n\n\
         [[rule]]\nname = \"blocked-tcp\"\naction = \"drop\"\nprotocol = \"tcp\"\ndst_ports = {BLOCKED_PORT}\n\n\
         [[rule]]\nname = \"blocked-udp\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = {BLOCKED_PORT}\n"
    )
}

/// A limit every attack must not get through once its one bucket is empty: TCP and UDP
/// to [`BLOCKED_PORT`] share a bucket of one packet an hour; default pass.
pub fn limit_list() -> String {
    format!(
        "[defaults]\naction = \"pass\"\n\n\
         [[rule]]\nname = \"limited\"\naction = \"limit\"\ndst_ports = {BLOCKED_PORT}\n\
         rate = \"1/h\"\nburst = 1\nper = \"rule\"\n"
    )
}

/// Every shot, in the order they are to be sent.
pub fn corpus(params: &Params) -> Vec<Shot> {
    assert!(params.epoch < MAX_EPOCHS, "epoch {} is not below {MAX_EPOCHS}", params.epoch);
    let mut c = Corpus { params: *params, shots: Vec::new() };
    c.plain_and_controls();
    c.ipv6_extension_chains();
    c.vlan_stacks();
    c.ipv4_split_transport();
    c.ipv6_split_chain();
    c.fragment_order_and_overlap();
    c.ipv4_options();
    c.lengths_and_trailers();
    assert!(c.shots.len() <= MAX_SHOTS, "{} shots, more than MAX_SHOTS", c.shots.len());
    let mut names: Vec<&str> = c.shots.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "shot names must be unique");
    c.shots
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// An IPv6 extension header.
#[derive(Clone, Copy, Debug)]
enum Ext {
    /// Hop-by-hop options, `blocks` × 8 bytes.
    HopByHop { blocks: u8 },
    /// Destination options, `blocks` × 8 bytes.
    DestOpts { blocks: u8 },
    /// A routing header with `addresses` addresses (each rx's), segments left as given.
    Routing { routing_type: u8, segments_left: u8, addresses: u8 },
    /// A fragment header; offset 0 without M is an atomic fragment (RFC 6946).
    Fragment { offset: u16, more: bool, id: u32 },
}

const ATOMIC_FRAGMENT: Ext = Ext::Fragment { offset: 0, more: false, id: 0 };
const ROUTING_0: Ext =
    Ext::Routing { routing_type: ROUTING_TYPE_0, segments_left: 0, addresses: 0 };

impl Ext {
    fn proto(self) -> u8 {
        match self {
            Self::HopByHop { .. } => IPPROTO_HOPOPTS,
            Self::DestOpts { .. } => IPPROTO_DSTOPTS,
            Self::Routing { .. } => IPPROTO_ROUTING,
            Self::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Self::HopByHop { blocks } | Self::DestOpts { blocks } => {
                assert!((1..=32).contains(&blocks), "option header of {blocks} blocks");
                let len = usize::from(blocks) * 8;
                let mut out = vec![next, blocks - 1];
                let room = len - 2;
                if room <= 7 {
                    // PadN; Linux refuses more than 7 bytes of padding in a row.
                    out.extend_from_slice(&[IPV6_TLV_PADN, (room - 2) as u8]);
                } else {
                    out.extend_from_slice(&[IPV6_TLV_SKIPPABLE, (room - 2) as u8]);
                }
                out.resize(len, 0);
                out
            }
            Self::Routing { routing_type, segments_left, addresses } => {
                let mut out = vec![next, addresses * 2, routing_type, segments_left];
                // Type-specific: reserved for types 0 and 2; last entry, flags, tag for SRH.
                let last_entry =
                    if routing_type == ROUTING_TYPE_SRH { addresses.saturating_sub(1) } else { 0 };
                out.extend_from_slice(&[last_entry, 0, 0, 0]);
                for _ in 0..addresses {
                    out.extend_from_slice(&RX_V6.octets());
                }
                out
            }
            Self::Fragment { offset, more, id } => {
                assert!(offset < 1 << 13, "fragment offset {offset} does not fit");
                let mut out = vec![next, 0];
                out.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                out
            }
        }
    }
}

/// The chain's bytes, each header naming the next and the last naming `last`; and the
/// protocol number of its first header (`last` if empty).
fn chain(exts: &[Ext], last: u8) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(last, |e| e.proto());
        out.extend(ext.bytes(next));
    }
    (exts.first().map_or(last, |e| e.proto()), out)
}

/// The Internet checksum over `chunks` in order.
fn checksum(chunks: &[&[u8]]) -> u16 {
    super::packet::internet_checksum(&chunks.concat())
}

/// The transport checksum of `segment` (checksum field zero) with its pseudo-header.
fn transport_checksum(family: Family, proto: u8, segment: &[u8]) -> u16 {
    let len = segment.len();
    match (family.src(), family.dst()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let pseudo =
                [&s.octets()[..], &d.octets(), &[0, proto], &(len as u16).to_be_bytes()].concat();
            checksum(&[&pseudo, segment])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let pseudo =
                [&s.octets()[..], &d.octets(), &(len as u32).to_be_bytes(), &[0, 0, 0, proto]]
                    .concat();
            checksum(&[&pseudo, segment])
        }
        _ => unreachable!("a family's addresses are of that family"),
    }
}

/// A transport segment with its checksum, and what it is aimed at.
struct L4 {
    proto: u8,
    segment: Vec<u8>,
    target: Target,
}

/// What makes one shot's frames its own.
struct Ids {
    src_port: u16,
    token: String,
    /// IPv4 identification; also the low half of the IPv6 fragment identification.
    ip_id: u16,
    frag_id: u32,
}

/// One piece of a fragmented datagram: `data` at byte `offset` of the fragmentable part,
/// then `trailer` in the frame past what the IP length covers.
struct Piece {
    offset: usize,
    data: Vec<u8>,
    more: bool,
    trailer: Vec<u8>,
    /// IPv6: the next header its fragment header names, if not the datagram's (Linux
    /// takes it from the first fragment only).
    next_header: Option<u8>,
}

impl Piece {
    fn of(payload: &[u8], start: usize, end: usize) -> Self {
        let more = end < payload.len();
        let data = payload[start..end].to_vec();
        Self { offset: start, data, more, trailer: Vec::new(), next_header: None }
    }
}

/// Two fragments: the first ends at byte `at` of the fragmentable part; the second holds
/// the rest from the multiple of 8 Linux keeps of the first (it trims a non-last IPv4
/// fragment to a multiple of 8; IPv6 drops it unless it is one), and from 8 when that is
/// 0 (Linux drops a first fragment shorter than 8: the datagram never completes).
fn split_at(payload: &[u8], at: usize) -> Vec<Piece> {
    let resume = (at / 8 * 8).max(8);
    vec![Piece::of(payload, 0, at), Piece::of(payload, resume, payload.len())]
}

/// The shape of a single-frame shot, beyond its family and target.
#[derive(Clone, Default)]
struct Shape {
    /// (TPID, TCI), outermost first.
    vlans: Vec<(u16, u16)>,
    v4_options: Vec<u8>,
    /// IPv4 IHL field, if not what the options make it.
    ihl: Option<u8>,
    /// IPv4 total length or IPv6 payload length field, if not the true one.
    ip_len: Option<u16>,
    v6_ext: Vec<Ext>,
    /// TCP data offset field, if not 5.
    doff: Option<u8>,
    /// Bytes in the frame past the IP datagram.
    trailer: Vec<u8>,
}

struct Corpus {
    params: Params,
    shots: Vec<Shot>,
}

impl Corpus {
    fn ids(&self) -> Ids {
        let index = self.shots.len() as u16;
        let serial = self.params.epoch * MAX_SHOTS as u16 + index;
        Ids {
            src_port: FIRST_SRC_PORT + serial,
            token: format!("xdpp-evasion-{:02}-{index:03}", self.params.epoch),
            ip_id: serial,
            frag_id: 0x5e00_0000 | u32::from(serial),
        }
    }

    fn push(&mut self, name: String, kind: Kind, target: Target, frames: Vec<Vec<u8>>) {
        self.shots.push(Shot { name, frames, target, kind, linux_delivers: false });
    }

    /// Marks the shot just added as one Linux is known to deliver.
    fn delivered_by_linux(&mut self) {
        if let Some(shot) = self.shots.last_mut() {
            shot.linux_delivers = true;
        }
    }

    fn l4(&self, family: Family, proto: Proto, port: u16, ids: &Ids, doff: Option<u8>) -> L4 {
        match proto {
            Proto::Tcp => {
                let mut h = vec![0; 20];
                h[0..2].copy_from_slice(&ids.src_port.to_be_bytes());
                h[2..4].copy_from_slice(&port.to_be_bytes());
                h[4..8].copy_from_slice(&ids.frag_id.to_be_bytes()); // sequence number
                h[12] = doff.unwrap_or(5) << 4;
                h[13] = TCP_SYN;
                h[14..16].copy_from_slice(&64_240u16.to_be_bytes()); // window
                h.extend_from_slice(TCP_DATA);
                let sum = transport_checksum(family, IPPROTO_TCP, &h);
                h[16..18].copy_from_slice(&sum.to_be_bytes());
                let target = Target::TcpSyn { family, port, src_port: ids.src_port };
                L4 { proto: IPPROTO_TCP, segment: h, target }
            }
            Proto::Udp => {
                let len = 8 + ids.token.len();
                let mut h = vec![0; 8];
                h[0..2].copy_from_slice(&ids.src_port.to_be_bytes());
                h[2..4].copy_from_slice(&port.to_be_bytes());
                h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
                h.extend_from_slice(ids.token.as_bytes());
                let sum = match transport_checksum(family, IPPROTO_UDP, &h) {
                    0 => 0xffff, // 0 means "no checksum", which IPv6 forbids
                    sum => sum,
                };
                h[6..8].copy_from_slice(&sum.to_be_bytes());
                let target = Target::Udp { family, port, token: ids.token.clone() };
                L4 { proto: IPPROTO_UDP, segment: h, target }
            }
        }
    }

    fn echo(&self, family: Family, ids: &Ids) -> L4 {
        let (proto, icmp_type) = match family {
            Family::V4 => (IPPROTO_ICMP, ICMP_ECHO_REQUEST),
            Family::V6 => (IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST),
        };
        let id = ids.src_port;
        let mut m = vec![icmp_type, 0, 0, 0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes()); // sequence
        m.extend_from_slice(ECHO_DATA);
        let sum = match family {
            Family::V4 => checksum(&[&m]),
            Family::V6 => transport_checksum(family, proto, &m),
        };
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        L4 { proto, segment: m, target: Target::Echo { family, id } }
    }

    fn ethernet(&self, vlans: &[(u16, u16)], ether_type: u16, l3: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + 4 * vlans.len() + l3.len());
        out.extend_from_slice(&self.params.rx_mac);
        out.extend_from_slice(&self.params.tx_mac);
        for (tpid, tci) in vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&tci.to_be_bytes());
        }
        out.extend_from_slice(&ether_type.to_be_bytes());
        out.extend_from_slice(l3);
        out
    }

    /// An IPv4 header for `payload_len` bytes of payload, checksummed.
    fn ipv4_header(
        &self,
        ids: &Ids,
        proto: u8,
        payload_len: usize,
        shape: &Shape,
        fragment: (usize, bool),
    ) -> Vec<u8> {
        assert!(shape.v4_options.len().is_multiple_of(4) && shape.v4_options.len() <= 40);
        let header_len = 20 + shape.v4_options.len();
        let ihl = shape.ihl.unwrap_or((header_len / 4) as u8);
        let total = shape.ip_len.unwrap_or((header_len + payload_len) as u16);
        let (offset, more) = fragment;
        assert!(offset.is_multiple_of(8), "fragment offset {offset} is not a multiple of 8");
        let frag = ((offset / 8) as u16) | (u16::from(more) << 13);
        let mut h = vec![0x40 | ihl, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&ids.ip_id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&TX_V4.octets());
        h.extend_from_slice(&RX_V4.octets());
        h.extend_from_slice(&shape.v4_options);
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    fn ipv6_header(&self, payload_len: usize, next: u8, hop_limit: u8, shape: &Shape) -> Vec<u8> {
        let len = shape.ip_len.unwrap_or(payload_len as u16);
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[next, hop_limit]);
        h.extend_from_slice(&TX_V6.octets());
        h.extend_from_slice(&RX_V6.octets());
        h
    }

    /// One frame carrying `l4` whole, in the shape given.
    fn frame(&self, family: Family, ids: &Ids, l4: &L4, shape: &Shape) -> Vec<u8> {
        let mut l3 = match family {
            Family::V4 => {
                let mut l3 = self.ipv4_header(ids, l4.proto, l4.segment.len(), shape, (0, false));
                l3.extend_from_slice(&l4.segment);
                l3
            }
            Family::V6 => {
                let (first, ext) = chain(&shape.v6_ext, l4.proto);
                let mut l3 = self.ipv6_header(ext.len() + l4.segment.len(), first, 64, shape);
                l3.extend(ext);
                l3.extend_from_slice(&l4.segment);
                l3
            }
        };
        l3.extend_from_slice(&shape.trailer);
        let ether_type = match family {
            Family::V4 => ETH_P_IPV4,
            Family::V6 => ETH_P_IPV6,
        };
        self.ethernet(&shape.vlans, ether_type, &l3)
    }

    /// A single-frame TCP or UDP shot to `port` (an attack unless it is [`OPEN_PORT`]).
    fn whole(&mut self, name: String, family: Family, proto: Proto, port: u16, shape: &Shape) {
        let ids = self.ids();
        let l4 = self.l4(family, proto, port, &ids, shape.doff);
        let frame = self.frame(family, &ids, &l4, shape);
        let kind = if port == OPEN_PORT { Kind::Control } else { Kind::Attack };
        self.push(name, kind, l4.target, vec![frame]);
    }

    /// IPv4 fragments of `segment`, one frame per piece.
    fn ipv4_fragments(&self, ids: &Ids, proto: u8, pieces: &[Piece]) -> Vec<Vec<u8>> {
        pieces
            .iter()
            .map(|p| {
                let header = self.ipv4_header(
                    ids,
                    proto,
                    p.data.len(),
                    &Shape::default(),
                    (p.offset, p.more),
                );
                let l3 = [header, p.data.clone(), p.trailer.clone()].concat();
                self.ethernet(&[], ETH_P_IPV4, &l3)
            })
            .collect()
    }

    /// IPv6 fragments: `unfragmentable` headers in every frame, then the fragment header
    /// (next header `first`), then the piece.
    fn ipv6_fragments(
        &self,
        ids: &Ids,
        unfragmentable: &[Ext],
        first: u8,
        pieces: &[Piece],
    ) -> Vec<Vec<u8>> {
        pieces
            .iter()
            .map(|p| {
                let offset = p.offset / 8;
                assert_eq!(offset * 8, p.offset, "fragment offset is not a multiple of 8");
                let fragment =
                    Ext::Fragment { offset: offset as u16, more: p.more, id: ids.frag_id };
                let exts: Vec<Ext> =
                    unfragmentable.iter().copied().chain(std::iter::once(fragment)).collect();
                let (next, ext) = chain(&exts, p.next_header.unwrap_or(first));
                let header =
                    self.ipv6_header(ext.len() + p.data.len(), next, 64, &Shape::default());
                let l3 = [header, ext, p.data.clone(), p.trailer.clone()].concat();
                self.ethernet(&[], ETH_P_IPV6, &l3)
            })
            .collect()
    }

    /// A fragmented TCP or UDP attack: `pieces` cuts the fragmentable part (IPv4: the
    /// segment; IPv6: `chain_after` and the segment), sent in the order returned.
    fn fragmented(
        &mut self,
        name: String,
        family: Family,
        proto: Proto,
        (unfragmentable, chain_after): (&[Ext], &[Ext]),
        pieces: impl FnOnce(&[u8]) -> Vec<Piece>,
    ) {
        let ids = self.ids();
        let l4 = self.l4(family, proto, BLOCKED_PORT, &ids, None);
        let frames = match family {
            Family::V4 => self.ipv4_fragments(&ids, l4.proto, &pieces(&l4.segment)),
            Family::V6 => {
                let (first, ext) = chain(chain_after, l4.proto);
                let payload = [ext, l4.segment.clone()].concat();
                self.ipv6_fragments(&ids, unfragmentable, first, &pieces(&payload))
            }
        };
        self.push(name, Kind::Attack, l4.target, frames);
    }

    fn plain_and_controls(&mut self) {
        for family in FAMILIES {
            for proto in PROTOS {
                let (f, p) = (family.name(), proto.name());
                self.whole(
                    format!("plain-{p}-{f}"),
                    family,
                    proto,
                    BLOCKED_PORT,
                    &Shape::default(),
                );
                self.delivered_by_linux();
                self.whole(
                    format!("control-open-{p}-{f}"),
                    family,
                    proto,
                    OPEN_PORT,
                    &Shape::default(),
                );
                self.delivered_by_linux();
            }
        }
        for proto in PROTOS {
            let shape = Shape {
                v6_ext: vec![Ext::HopByHop { blocks: 1 }, Ext::DestOpts { blocks: 1 }],
                ..Shape::default()
            };
            let name = format!("control-open-{}-v6-hbh-dstopts", proto.name());
            self.whole(name, Family::V6, proto, OPEN_PORT, &shape);
            self.delivered_by_linux();
        }
        for family in FAMILIES {
            let ids = self.ids();
            let l4 = self.echo(family, &ids);
            let frame = self.frame(family, &ids, &l4, &Shape::default());
            self.push(
                format!("control-echo-{}", family.name()),
                Kind::Control,
                l4.target,
                vec![frame],
            );
            self.delivered_by_linux();
        }
        let ns = self.neighbour_solicitation();
        self.push(
            "control-neighbour-solicitation".into(),
            Kind::Control,
            Target::NeighbourSolicitation,
            vec![ns],
        );
        self.delivered_by_linux();
        let arp = self.arp_request();
        self.push("control-arp-request".into(), Kind::Control, Target::ArpRequest, vec![arp]);
        self.delivered_by_linux();
    }

    /// A unicast neighbour solicitation from tx for rx's address, with tx's link-layer
    /// address (what a NUD probe looks like).
    fn neighbour_solicitation(&self) -> Vec<u8> {
        let mut m = vec![ICMPV6_NEIGHBOUR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&RX_V6.octets());
        m.extend_from_slice(&[1, 1]); // source link-layer address option, 8 bytes
        m.extend_from_slice(&self.params.tx_mac);
        let sum = transport_checksum(Family::V6, IPPROTO_ICMPV6, &m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        // Hop limit 255, or Linux ignores it (RFC 4861 §7.1.1).
        let mut l3 = self.ipv6_header(m.len(), IPPROTO_ICMPV6, 255, &Shape::default());
        l3.extend(m);
        self.ethernet(&[], ETH_P_IPV6, &l3)
    }

    fn arp_request(&self) -> Vec<u8> {
        let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1]; // Ethernet, IPv4, request
        a.extend_from_slice(&self.params.tx_mac);
        a.extend_from_slice(&TX_V4.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&RX_V4.octets());
        self.ethernet(&[], ETH_P_ARP, &a)
    }

    fn ipv6_extension_chains(&mut self) {
        for proto in PROTOS {
            let p = proto.name();
            for n in 1..=24 {
                let shape =
                    Shape { v6_ext: vec![Ext::DestOpts { blocks: 1 }; n], ..Shape::default() };
                self.whole(format!("v6-{p}-dstopts-x{n}"), Family::V6, proto, BLOCKED_PORT, &shape);
                if n == 24 {
                    self.delivered_by_linux();
                }
            }
            for n in 1..=24 {
                let shape = Shape { v6_ext: mixed_chain(n), ..Shape::default() };
                self.whole(format!("v6-{p}-mixed-x{n}"), Family::V6, proto, BLOCKED_PORT, &shape);
                if n == 24 {
                    self.delivered_by_linux();
                }
            }
        }
        // Single headers and combinations whose fate in Linux is worth knowing.
        let probes: [(&str, Vec<Ext>); 10] = [
            ("routing0", vec![ROUTING_0]),
            ("routing0-x2", vec![ROUTING_0, ROUTING_0]),
            (
                "routing2-segleft0",
                vec![Ext::Routing { routing_type: ROUTING_TYPE_2, segments_left: 0, addresses: 1 }],
            ),
            (
                "srh-segleft0",
                vec![Ext::Routing {
                    routing_type: ROUTING_TYPE_SRH,
                    segments_left: 0,
                    addresses: 1,
                }],
            ),
            ("atomic-fragment", vec![ATOMIC_FRAGMENT]),
            ("atomic-fragment-x2", vec![ATOMIC_FRAGMENT; 2]),
            ("atomic-fragment-x8", vec![ATOMIC_FRAGMENT; 8]),
            ("hbh-second", vec![Ext::DestOpts { blocks: 1 }, Ext::HopByHop { blocks: 1 }]),
            ("hbh-x2", vec![Ext::HopByHop { blocks: 1 }; 2]),
            ("dstopts-192-bytes-x7", vec![Ext::DestOpts { blocks: 24 }; 7]),
        ];
        for (name, exts) in probes {
            for proto in PROTOS {
                let shape = Shape { v6_ext: exts.clone(), ..Shape::default() };
                let name = format!("v6-{}-{name}", proto.name());
                self.whole(name, Family::V6, proto, BLOCKED_PORT, &shape);
            }
        }
    }

    fn vlan_stacks(&mut self) {
        /// The (TPID, TCI) of the tag at depth `i` of a stack, outermost 0.
        type TagAt = fn(usize) -> (u16, u16);
        let stacks: [(&str, TagAt); 4] = [
            // VID 0 with a priority: a priority tag (802.1p).
            ("q-vid0", |i| (ETH_P_8021Q, (i as u16 % 8) << 13)),
            ("ad-vid0", |i| (ETH_P_8021AD, (i as u16 % 8) << 13)),
            ("mixed-vid0", |i| (if i % 2 == 0 { ETH_P_8021AD } else { ETH_P_8021Q }, 0)),
            ("q-vid100", |_| (ETH_P_8021Q, 100)),
        ];
        for (stack, tag) in stacks {
            for n in 1..=6 {
                for family in FAMILIES {
                    for proto in PROTOS {
                        let shape = Shape { vlans: (0..n).map(tag).collect(), ..Shape::default() };
                        let name = format!("vlan-{stack}-x{n}-{}-{}", proto.name(), family.name());
                        self.whole(name, family, proto, BLOCKED_PORT, &shape);
                        if n == 3 && stack.ends_with("vid0") {
                            self.delivered_by_linux();
                        }
                    }
                }
            }
        }
    }

    fn ipv4_split_transport(&mut self) {
        for proto in PROTOS {
            let header = match proto {
                Proto::Tcp => 20,
                Proto::Udp => 8,
            };
            for at in 1..=header {
                let name = format!("v4-{}-first-fragment-ends-at-{at}", proto.name());
                self.fragmented(name, Family::V4, proto, (&[], &[]), |s| split_at(s, at));
                if proto == Proto::Tcp && at == 8 {
                    self.delivered_by_linux();
                }
            }
        }
        // The IP length ends inside the TCP header, the frame goes on: zeros (a data
        // offset of 0 to a parser that reads the frame), or the real rest of the header.
        for at in 8..=12 {
            let name = format!("v4-tcp-first-fragment-ends-at-{at}-zero-trailer");
            self.fragmented(name, Family::V4, Proto::Tcp, (&[], &[]), |s| {
                let mut pieces = split_at(s, at);
                pieces[0].trailer = vec![0; 20 - at];
                pieces
            });
        }
        self.fragmented(
            "v4-tcp-first-fragment-ends-at-8-real-trailer".into(),
            Family::V4,
            Proto::Tcp,
            (&[], &[]),
            |s| {
                let mut pieces = split_at(s, 8);
                pieces[0].trailer = s[8..20].to_vec();
                pieces
            },
        );
        // Ordinary fragmentation, after the transport header.
        for (proto, at) in [(Proto::Tcp, 24), (Proto::Udp, 16)] {
            let name = format!("v4-{}-fragmented-at-{at}", proto.name());
            self.fragmented(name, Family::V4, proto, (&[], &[]), |s| split_at(s, at));
            self.delivered_by_linux();
        }
    }

    fn ipv6_split_chain(&mut self) {
        let two = [Ext::DestOpts { blocks: 1 }; 2];
        for proto in PROTOS {
            let p = proto.name();
            let header = match proto {
                Proto::Tcp => 20,
                Proto::Udp => 8,
            };
            // Every byte of the chain after the fragment header, and of the transport header.
            for at in 1..=16 + header {
                let name = format!("v6-{p}-dstopts-x2-first-fragment-ends-at-{at}");
                self.fragmented(name, Family::V6, proto, (&[], &two), |s| split_at(s, at));
                if at == 8 {
                    self.delivered_by_linux();
                }
            }
            // The IP length ends after the first header, and the frame goes on with the
            // rest of the chain and a transport header to the open port: Linux cuts the
            // frame at the IP length, so only a parser that reads past it sees that header.
            let name = format!("v6-{p}-dstopts-x2-first-fragment-ends-at-8-trailer-to-open-port");
            let ids = self.ids();
            let decoy = self.l4(Family::V6, proto, OPEN_PORT, &ids, None);
            let (_, decoy_chain) = chain(&two[1..], decoy.proto);
            let trailer = [decoy_chain, decoy.segment].concat();
            self.fragmented(name, Family::V6, proto, (&[], &two), |s| {
                let mut pieces = split_at(s, 8);
                pieces[0].trailer = trailer;
                pieces
            });
            self.delivered_by_linux();
            // The second fragment names ICMPv6 as its next header: Linux ignores it.
            let name = format!("v6-{p}-dstopts-x2-first-fragment-ends-at-8-rest-claims-icmpv6");
            self.fragmented(name, Family::V6, proto, (&[], &two), |s| {
                let mut pieces = split_at(s, 8);
                pieces[1].next_header = Some(IPPROTO_ICMPV6);
                pieces
            });
            self.delivered_by_linux();
            // The cut inside one header, a 16-byte destination options header. Linux walks
            // a chain by each header's first two bytes, so it finds the transport header
            // missing and drops the first fragment (RFC 8200 §4.5).
            let long = [Ext::DestOpts { blocks: 2 }];
            let name = format!("v6-{p}-dstopts16-first-fragment-ends-at-8");
            self.fragmented(name, Family::V6, proto, (&[], &long), |s| split_at(s, 8));
            // A longer chain: eight headers, cut at the first, the middle and the last.
            let eight = [Ext::DestOpts { blocks: 1 }; 8];
            for at in [8, 32, 56, 64] {
                let name = format!("v6-{p}-dstopts-x8-first-fragment-ends-at-{at}");
                self.fragmented(name, Family::V6, proto, (&[], &eight), |s| split_at(s, at));
            }
            // Ordinary fragmentation after the transport header, with no chain, and with
            // seven destination options in the unfragmentable part.
            let after = header.next_multiple_of(8);
            let name = format!("v6-{p}-fragmented-at-{after}");
            self.fragmented(name, Family::V6, proto, (&[], &[]), |s| split_at(s, after));
            self.delivered_by_linux();
            let seven = [Ext::DestOpts { blocks: 1 }; 7];
            let name = format!("v6-{p}-dstopts-x7-then-fragmented-at-{after}");
            self.fragmented(name, Family::V6, proto, (&seven, &[]), |s| split_at(s, after));
        }
    }

    fn fragment_order_and_overlap(&mut self) {
        for family in FAMILIES {
            for proto in PROTOS {
                let (f, p) = (family.name(), proto.name());
                let plain: (&[Ext], &[Ext]) = (&[], &[]);
                // The header whole in the first fragment, which comes last.
                let at = match proto {
                    Proto::Tcp => 24,
                    Proto::Udp => 8,
                };
                self.fragmented(format!("{f}-{p}-fragments-reversed"), family, proto, plain, |s| {
                    let mut pieces = split_at(s, at);
                    pieces.reverse();
                    pieces
                });
                // Three fragments of 8 bytes and the rest, last first.
                self.fragmented(
                    format!("{f}-{p}-three-fragments-reversed"),
                    family,
                    proto,
                    plain,
                    |s| {
                        let mut pieces = vec![
                            Piece::of(s, 0, 8),
                            Piece::of(s, 8, 16),
                            Piece::of(s, 16, s.len()),
                        ];
                        pieces.reverse();
                        pieces
                    },
                );
                // Overlap: Linux drops the whole datagram (RFC 5722 for IPv6).
                self.fragmented(
                    format!("{f}-{p}-overlapping-fragments"),
                    family,
                    proto,
                    plain,
                    |s| vec![Piece::of(s, 0, 16), Piece::of(s, 8, s.len())],
                );
                // The first fragment twice: Linux keeps the first copy, drops the second.
                self.fragmented(
                    format!("{f}-{p}-first-fragment-twice"),
                    family,
                    proto,
                    plain,
                    |s| vec![Piece::of(s, 0, 16), Piece::of(s, 0, 16), Piece::of(s, 16, s.len())],
                );
                self.first_fragment_rewritten(family, proto);
            }
        }
    }

    /// The first fragment aimed at the blocked port, then a second first fragment, the same
    /// but aimed at the open port (with its own checksum), then the rest: Linux reassembles
    /// the first copy it got; a filter that drops the first must not let the datagram
    /// through to the blocked port.
    fn first_fragment_rewritten(&mut self, family: Family, proto: Proto) {
        let ids = self.ids();
        let blocked = self.l4(family, proto, BLOCKED_PORT, &ids, None);
        let open = self.l4(family, proto, OPEN_PORT, &ids, None);
        let at = 8 + match proto {
            Proto::Tcp => 16, // past the checksum
            Proto::Udp => 0,
        };
        let pieces = |s: &[u8], o: &[u8]| {
            vec![Piece::of(s, 0, at), Piece::of(o, 0, at), Piece::of(s, at, s.len())]
        };
        let frames = match family {
            Family::V4 => {
                self.ipv4_fragments(&ids, blocked.proto, &pieces(&blocked.segment, &open.segment))
            }
            Family::V6 => self.ipv6_fragments(
                &ids,
                &[],
                blocked.proto,
                &pieces(&blocked.segment, &open.segment),
            ),
        };
        let name =
            format!("{}-{}-first-fragment-then-one-to-the-open-port", family.name(), proto.name());
        self.push(name, Kind::Attack, blocked.target, frames);
    }

    fn ipv4_options(&mut self) {
        for proto in PROTOS {
            let p = proto.name();
            for ihl in 6..=15usize {
                if proto == Proto::Udp && ihl != 15 {
                    continue;
                }
                let shape =
                    Shape { v4_options: vec![IPOPT_NOP; (ihl - 5) * 4], ..Shape::default() };
                self.whole(
                    format!("v4-{p}-ihl{ihl}-nops"),
                    Family::V4,
                    proto,
                    BLOCKED_PORT,
                    &shape,
                );
                if ihl == 15 {
                    self.delivered_by_linux();
                }
            }
            // Router alert, then a timestamp option with room for eight timestamps.
            let mut options = vec![IPOPT_ROUTER_ALERT, 4, 0, 0, IPOPT_TIMESTAMP, 36, 5, 0];
            options.resize(40, 0);
            let shape = Shape { v4_options: options, ..Shape::default() };
            self.whole(
                format!("v4-{p}-ihl15-router-alert-timestamp"),
                Family::V4,
                proto,
                BLOCKED_PORT,
                &shape,
            );
            // Record route with room for nine addresses, then end of options.
            let mut options = vec![IPOPT_RR, 39, 4];
            options.resize(40, IPOPT_EOL);
            let shape = Shape { v4_options: options, ..Shape::default() };
            self.whole(
                format!("v4-{p}-ihl15-record-route"),
                Family::V4,
                proto,
                BLOCKED_PORT,
                &shape,
            );
            // End of options first, garbage after it.
            let mut options = vec![IPOPT_EOL];
            options.resize(40, 0xee);
            let shape = Shape { v4_options: options, ..Shape::default() };
            self.whole(
                format!("v4-{p}-ihl15-eol-then-garbage"),
                Family::V4,
                proto,
                BLOCKED_PORT,
                &shape,
            );
        }
    }

    fn lengths_and_trailers(&mut self) {
        for family in FAMILIES {
            for proto in PROTOS {
                let (f, p) = (family.name(), proto.name());
                // A trailer that looks like another packet: IPv4 and TCP to the open port.
                let trailer = {
                    let ids = self.ids();
                    let l4 = self.l4(Family::V4, Proto::Tcp, OPEN_PORT, &ids, None);
                    let mut t = self.ipv4_header(
                        &ids,
                        l4.proto,
                        l4.segment.len(),
                        &Shape::default(),
                        (0, false),
                    );
                    t.extend(l4.segment);
                    t
                };
                let shape = Shape { trailer, ..Shape::default() };
                self.whole(
                    format!("{f}-{p}-trailer-like-a-packet"),
                    family,
                    proto,
                    BLOCKED_PORT,
                    &shape,
                );
                self.delivered_by_linux();
                let shape = Shape { ip_len: Some(0), ..Shape::default() };
                self.whole(format!("{f}-{p}-ip-length-0"), family, proto, BLOCKED_PORT, &shape);
                // The IP length ends inside the transport header; the frame holds the rest.
                let cut = match proto {
                    Proto::Tcp => 8,
                    Proto::Udp => 4,
                };
                let header_len = match family {
                    Family::V4 => 20,
                    Family::V6 => 0,
                };
                let shape = Shape { ip_len: Some(header_len + cut), ..Shape::default() };
                self.whole(
                    format!("{f}-{p}-ip-length-ends-at-{cut}-of-transport"),
                    family,
                    proto,
                    BLOCKED_PORT,
                    &shape,
                );
            }
            let f = family.name();
            for doff in [0, 4, 8, 15] {
                let shape = Shape { doff: Some(doff), ..Shape::default() };
                self.whole(
                    format!("{f}-tcp-data-offset-{doff}"),
                    family,
                    Proto::Tcp,
                    BLOCKED_PORT,
                    &shape,
                );
            }
        }
        for proto in PROTOS {
            for ihl in [0, 4] {
                let shape = Shape { ihl: Some(ihl), ..Shape::default() };
                self.whole(
                    format!("v4-{}-ihl{ihl}", proto.name()),
                    Family::V4,
                    proto,
                    BLOCKED_PORT,
                    &shape,
                );
            }
            // IPv6: the payload length ends inside the chain; the frame holds the rest.
            let shape = Shape {
                v6_ext: vec![Ext::DestOpts { blocks: 1 }; 3],
                ip_len: Some(12),
                ..Shape::default()
            };
            let name = format!("v6-{}-payload-length-ends-in-chain", proto.name());
            self.whole(name, Family::V6, proto, BLOCKED_PORT, &shape);
        }
    }
}

/// `n` extension headers Linux accepts in one chain: hop-by-hop first (where it must be),
/// one atomic fragment header (Linux drops a packet with a second fragment header), then
/// destination options of 8, 16 and 32 bytes and routing headers of type 0 with no
/// segments left in turn.
fn mixed_chain(n: usize) -> Vec<Ext> {
    (0..n)
        .map(|i| match (i, i % 4) {
            (0, _) => Ext::HopByHop { blocks: 1 },
            (3, _) => ATOMIC_FRAGMENT,
            (_, 1) => Ext::DestOpts { blocks: [1, 2, 4][i / 4 % 3] },
            (_, 2) => ROUTING_0,
            (_, 3) => Ext::DestOpts { blocks: 1 },
            _ => Ext::DestOpts { blocks: 2 },
        })
        .collect()
}
