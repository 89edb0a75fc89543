//! The frame builder: Ethernet, VLAN tags, IPv4 (with options and fragments) or IPv6
//! (with extension headers), TCP/UDP/ICMP, and ways to break each of them; for the
//! packets `explain` runs through the live program, the kernel packet tests and the
//! bench. Checksums are left zero (the XDP program does not check them), unless
//! [`Packet::ipv4_checksum`] asks for a valid IPv4 header checksum, as the Linux stack
//! wants before it delivers a packet, and [`Packet::tcp_segment`] for a TCP segment the
//! stack takes (checksum, sequence number, window).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        dst_port: u16,
        data_offset: u8,
    },
    Udp {
        dst_port: u16,
    },
    /// ICMP or ICMPv6 (by `proto`) with this type.
    Icmp {
        proto: u8,
        icmp_type: u8,
    },
    /// Any other protocol with an opaque 8-byte header.
    Other {
        proto: u8,
    },
}

#[derive(Clone, Debug)]
enum L3 {
    V4 { ihl: u8, options: Vec<u8>, frag_offset: u16, more_fragments: bool, version: u8 },
    V6 { ext: Vec<(u8, Vec<u8>)> },
    Arp,
}

#[derive(Clone, Debug)]
pub struct Packet {
    vlans: Vec<u16>,
    l3: L3,
    l4: L4,
    truncate_to: Option<usize>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    src_port: u16,
    /// Overrides the IPv4 total length or the IPv6 payload length.
    ip_len: Option<u16>,
    /// Bytes after the IP packet (an Ethernet trailer).
    trailer: usize,
    /// Bytes after the transport header, counted in the IP and UDP lengths.
    payload: usize,
    /// Destination and source MAC addresses.
    macs: ([u8; 6], [u8; 6]),
    /// Fill in the IPv4 header checksum.
    ipv4_checksum: bool,
    /// The TCP flags byte [default: SYN].
    tcp_flags: u8,
    /// A real TCP segment with this sequence number (see [`Packet::tcp_segment`]).
    tcp_seq: Option<u32>,
}

pub fn tcp(dst_port: u16) -> L4 {
    L4::Tcp { dst_port, data_offset: 5 }
}

pub fn udp(dst_port: u16) -> L4 {
    L4::Udp { dst_port }
}

pub fn icmp(icmp_type: u8) -> L4 {
    L4::Icmp { proto: IPPROTO_ICMP, icmp_type }
}

pub fn icmpv6(icmp_type: u8) -> L4 {
    L4::Icmp { proto: IPPROTO_ICMPV6, icmp_type }
}

impl Packet {
    pub fn ipv4(l4: L4) -> Self {
        let l3 =
            L3::V4 { ihl: 5, options: vec![], frag_offset: 0, more_fragments: false, version: 4 };
        Self::with(l3, l4)
    }

    pub fn ipv6(l4: L4) -> Self {
        Self::with(L3::V6 { ext: vec![] }, l4)
    }

    pub fn arp() -> Self {
        Self::with(L3::Arp, L4::Other { proto: 0 })
    }

    fn with(l3: L3, l4: L4) -> Self {
        Self {
            vlans: vec![],
            l3,
            l4,
            truncate_to: None,
            src: None,
            dst: None,
            src_port: 40000,
            ip_len: None,
            trailer: 0,
            payload: 0,
            macs: ([0x02, 0, 0, 0, 0, 2], [0x02, 0, 0, 0, 0, 1]),
            ipv4_checksum: false,
            tcp_flags: policy_common::tcp_flags::SYN,
            tcp_seq: None,
        }
    }

    /// The Ethernet source and destination addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.macs = (dst, src);
        self
    }

    /// `len` bytes of data after the transport header (the IP and UDP lengths count
    /// them).
    pub fn payload(mut self, len: usize) -> Self {
        self.payload = len;
        self
    }

    /// A valid IPv4 header checksum (the UDP checksum stays zero: optional over IPv4).
    pub fn ipv4_checksum(mut self) -> Self {
        self.ipv4_checksum = true;
        self
    }

    /// Source address (the family must match the packet's).
    pub fn src_ip(mut self, addr: IpAddr) -> Self {
        self.src = Some(addr);
        self
    }

    /// Destination address (the family must match the packet's).
    pub fn dst_ip(mut self, addr: IpAddr) -> Self {
        self.dst = Some(addr);
        self
    }

    /// [`Self::src_ip`] from text, for tables of test packets; panics if it is no address.
    pub fn src(self, addr: &str) -> Self {
        self.src_ip(addr.parse().expect("a valid test address"))
    }

    /// [`Self::dst_ip`] from text, for tables of test packets; panics if it is no address.
    pub fn dst(self, addr: &str) -> Self {
        self.dst_ip(addr.parse().expect("a valid test address"))
    }

    /// The TCP flags byte (FIN bit 0 … CWR bit 7).
    pub fn tcp_flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// A TCP segment the Linux stack takes as a real one: sequence number `seq`, the
    /// acknowledgement number 0x2000_0001 when ACK is set, a window of 64,240 and a valid
    /// TCP checksum (IPv4's header checksum is [`Self::ipv4_checksum`]).
    pub fn tcp_segment(mut self, seq: u32) -> Self {
        self.tcp_seq = Some(seq);
        self
    }

    pub fn src_port(mut self, port: u16) -> Self {
        self.src_port = port;
        self
    }

    /// Adds a VLAN tag with this TPID (outermost first).
    pub fn vlan(mut self, tpid: u16) -> Self {
        self.vlans.push(tpid);
        self
    }

    /// IPv4 options (padded with NOPs to a multiple of 4 bytes); IHL follows.
    pub fn ipv4_options(mut self, len: usize) -> Self {
        if let L3::V4 { ihl, options, .. } = &mut self.l3 {
            let padded = len.div_ceil(4) * 4;
            *options = vec![1; padded]; // NOP
            *ihl = 5 + (padded / 4) as u8;
        }
        self
    }

    /// Overrides the IPv4 IHL field without changing what follows.
    pub fn ipv4_ihl(mut self, value: u8) -> Self {
        if let L3::V4 { ihl, .. } = &mut self.l3 {
            *ihl = value;
        }
        self
    }

    pub fn ip_version(mut self, value: u8) -> Self {
        if let L3::V4 { version, .. } = &mut self.l3 {
            *version = value;
        }
        self
    }

    /// IPv4 fragment offset (in 8-byte units) and MF flag.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        if let L3::V4 { frag_offset, more_fragments, .. } = &mut self.l3 {
            *frag_offset = offset;
            *more_fragments = more;
        }
        self
    }

    /// An IPv6 extension header (hop-by-hop, routing, destination options): 8 bytes.
    pub fn ipv6_ext(mut self, proto: u8) -> Self {
        if let L3::V6 { ext } = &mut self.l3 {
            ext.push((proto, vec![0; 6]));
        }
        self
    }

    /// An IPv6 extension header of the generic layout, `(units + 1) * 8` bytes long.
    pub fn ipv6_ext_sized(mut self, proto: u8, units: u8) -> Self {
        if let L3::V6 { ext } = &mut self.l3 {
            ext.push((proto, vec![0; (usize::from(units) + 1) * 8 - 2]));
        }
        self
    }

    /// An IPv6 fragment header with this offset (8-byte units) and the M flag set.
    pub fn ipv6_fragment(mut self, offset: u16) -> Self {
        if let L3::V6 { ext } = &mut self.l3 {
            let offset_flags = (offset << 3) | 1;
            let mut body = vec![0; 6];
            body[0..2].copy_from_slice(&offset_flags.to_be_bytes());
            ext.push((IPPROTO_FRAGMENT, body));
        }
        self
    }

    /// An IPv6 authentication header (12 bytes: 4-byte units minus 2 = 1).
    pub fn ipv6_ah(mut self) -> Self {
        if let L3::V6 { ext } = &mut self.l3 {
            ext.push((IPPROTO_AH, vec![0; 10]));
        }
        self
    }

    /// Writes `len` into the IPv4 total length or IPv6 payload length field instead of
    /// the packet's real length.
    pub fn ip_len(mut self, len: u16) -> Self {
        self.ip_len = Some(len);
        self
    }

    /// Appends `len` bytes (0x5a) after the IP packet, as an Ethernet trailer.
    pub fn trailer(mut self, len: usize) -> Self {
        self.trailer = len;
        self
    }

    /// Cuts the built packet to `len` bytes.
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate_to = Some(len);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.macs.0);
        out.extend_from_slice(&self.macs.1);
        for tpid in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&100u16.to_be_bytes()); // TCI: VLAN 100
        }
        let mut l4 = self.l4_bytes();
        match &self.l3 {
            L3::Arp => {
                out.extend_from_slice(&ETH_P_ARP.to_be_bytes());
                out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // request, Ethernet/IPv4
                out.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
                out.extend_from_slice(&SRC4.octets());
                out.extend_from_slice(&[0; 6]);
                out.extend_from_slice(&DST4.octets());
            }
            L3::V4 { ihl, options, frag_offset, more_fragments, version } => {
                out.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let header_at = out.len();
                let total = self.ip_len.map_or(20 + options.len() + l4.len(), usize::from);
                out.push((version << 4) | (ihl & 0xf));
                out.push(0);
                out.extend_from_slice(&(total as u16).to_be_bytes());
                out.extend_from_slice(&[0x12, 0x34]);
                let frags = (u16::from(*more_fragments) << 13) | (frag_offset & 0x1fff);
                out.extend_from_slice(&frags.to_be_bytes());
                out.extend_from_slice(&[64, self.proto(), 0, 0]);
                let (src, dst) = (self.v4(self.src, SRC4), self.v4(self.dst, DST4));
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(options);
                self.tcp_checksum(IpAddr::V4(src), IpAddr::V4(dst), &mut l4);
                if self.ipv4_checksum {
                    let header = &out[header_at..];
                    let checksum = internet_checksum(header).to_be_bytes();
                    out[header_at + 10..header_at + 12].copy_from_slice(&checksum);
                }
                out.extend_from_slice(&l4);
            }
            L3::V6 { ext } => {
                out.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let ext_len: usize = ext.iter().map(|(_, body)| 2 + body.len()).sum();
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                let payload = self.ip_len.map_or(ext_len + l4.len(), usize::from);
                out.extend_from_slice(&(payload as u16).to_be_bytes());
                let first = ext.first().map_or(self.proto(), |(p, _)| *p);
                out.extend_from_slice(&[first, 64]);
                let (src, dst) = (self.v6(self.src, SRC6), self.v6(self.dst, DST6));
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                self.tcp_checksum(IpAddr::V6(src), IpAddr::V6(dst), &mut l4);
                for (i, (proto, body)) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(self.proto(), |(p, _)| *p);
                    let len_field = match *proto {
                        IPPROTO_FRAGMENT => 0,
                        IPPROTO_AH => ((2 + body.len()) / 4 - 2) as u8,
                        _ => ((2 + body.len()) / 8 - 1) as u8,
                    };
                    out.extend_from_slice(&[next, len_field]);
                    out.extend_from_slice(body);
                }
                out.extend_from_slice(&l4);
            }
        }
        out.resize(out.len() + self.trailer, 0x5a);
        if let Some(len) = self.truncate_to {
            out.truncate(len);
        }
        out
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { proto, .. } | L4::Other { proto } => proto,
        }
    }

    fn v4(&self, addr: Option<IpAddr>, default: Ipv4Addr) -> Ipv4Addr {
        match addr {
            Some(IpAddr::V4(a)) => a,
            _ => default,
        }
    }

    fn v6(&self, addr: Option<IpAddr>, default: Ipv6Addr) -> Ipv6Addr {
        match addr {
            Some(IpAddr::V6(a)) => a,
            _ => default,
        }
    }

    /// With [`Self::tcp_segment`], fills in the TCP checksum of `l4` (a TCP header and
    /// its payload) between `src` and `dst`.
    fn tcp_checksum(&self, src: IpAddr, dst: IpAddr, l4: &mut [u8]) {
        if !matches!(self.l4, L4::Tcp { .. }) || self.tcp_seq.is_none() {
            return;
        }
        let whole = [tcp_pseudo_header(src, dst, l4.len() as u16), l4.to_vec()].concat();
        l4[16..18].copy_from_slice(&internet_checksum(&whole).to_be_bytes());
    }

    /// The transport header, then the payload.
    fn l4_bytes(&self) -> Vec<u8> {
        let src_port = self.src_port.to_be_bytes();
        let mut bytes = match self.l4 {
            L4::Tcp { dst_port, data_offset } => {
                let mut h = vec![0; 20];
                h[0..2].copy_from_slice(&src_port);
                h[2..4].copy_from_slice(&dst_port.to_be_bytes());
                h[12] = data_offset << 4;
                h[13] = self.tcp_flags;
                if let Some(seq) = self.tcp_seq {
                    h[4..8].copy_from_slice(&seq.to_be_bytes());
                    if self.tcp_flags & policy_common::tcp_flags::ACK != 0 {
                        h[8..12].copy_from_slice(&0x2000_0001u32.to_be_bytes());
                    }
                    h[14..16].copy_from_slice(&64_240u16.to_be_bytes());
                }
                h
            }
            L4::Udp { dst_port } => {
                let mut h = vec![0; 8];
                h[0..2].copy_from_slice(&src_port);
                h[2..4].copy_from_slice(&dst_port.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                h
            }
            L4::Icmp { icmp_type, .. } => vec![icmp_type, 0, 0, 0, 0, 1, 0, 1],
            L4::Other { .. } => vec![8, 0, 0, 0, 0, 1, 0, 1], // looks like an ICMP echo
        };
        bytes.resize(bytes.len() + self.payload, b'x');
        bytes
    }
}

/// The TCP pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1) of a segment of `len` bytes.
pub fn tcp_pseudo_header(src: IpAddr, dst: IpAddr, len: u16) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            [&s.octets()[..], &d.octets(), &[0, IPPROTO_TCP], &len.to_be_bytes()].concat()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            [&s.octets()[..], &d.octets(), &u32::from(len).to_be_bytes(), &[0, 0, 0, IPPROTO_TCP]]
                .concat()
        }
        _ => panic!("addresses of one family expected"),
    }
}

/// The Internet checksum (RFC 1071) of `bytes`, whose checksum field is zero.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_internet_checksum_of_a_textbook_header() {
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
    }

    #[test]
    fn a_tcp_segment_has_its_numbers_and_a_valid_checksum() {
        let (src, dst) = ("198.18.0.7".parse().expect("v4"), "fd00::9".parse().expect("v6"));
        for (packet, src, dst, at) in [
            (Packet::ipv4(tcp(443)).src_ip(src).ipv4_checksum(), src, IpAddr::V4(DST4), 34),
            (Packet::ipv6(tcp(443)).dst_ip(dst), IpAddr::V6(SRC6), dst, 54),
        ] {
            let ack = packet.clone().tcp_flags(0x12).tcp_segment(7).build();
            let syn = packet.tcp_segment(7).build();
            for frame in [&ack, &syn] {
                let whole = [tcp_pseudo_header(src, dst, 20), frame[at..].to_vec()].concat();
                assert_eq!(internet_checksum(&whole), 0, "a valid TCP checksum");
                assert_eq!(&frame[at + 4..at + 8], &7u32.to_be_bytes(), "the sequence number");
                assert_eq!(&frame[at + 14..at + 16], &64_240u16.to_be_bytes(), "a window");
            }
            assert_eq!(&ack[at + 8..at + 12], &0x2000_0001u32.to_be_bytes(), "ACK's number");
            assert_eq!(&syn[at + 8..at + 12], &[0; 4], "no acknowledgement without ACK");
        }
    }

    #[test]
    fn a_udp_frame_with_payload_and_checksum_is_what_the_stack_accepts() {
        let frame =
            Packet::ipv4(udp(9000)).macs([2; 6], [4; 6]).payload(18).ipv4_checksum().build();
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[0..6], &[4; 6], "destination MAC first");
        assert_eq!(&frame[6..12], &[2; 6]);
        assert_eq!(internet_checksum(&frame[14..34]), 0, "a valid header checksum sums to 0");
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 46, "IPv4 total length");
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 26, "UDP length");
    }
}
