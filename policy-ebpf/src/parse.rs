//! Header parsing with one bounds-checked cursor.
//!
//! Contract (the verdicts are in `policy_common::Verdict`):
//! - Ethernet, then at most two VLAN tags (802.1Q `0x8100` or 802.1ad `0x88a8`, in any
//!   order). A third tag, or any EtherType other than IPv4/IPv6, is `NotIp`.
//! - IPv4: version 4, header length from IHL (options skipped); IHL < 5 is malformed.
//!   A non-zero fragment offset is a non-first fragment: it has no transport header.
//! - IPv6: version 6; hop-by-hop, routing, destination-options, mobility, HIP, shim6 and
//!   AH headers are skipped (at most `MAX_IPV6_EXT_HEADERS`); a fragment header with a
//!   non-zero offset makes a non-first fragment. ESP, "no next header" and anything else
//!   is `Other`.
//! - TCP needs its full 20-byte header and a data offset ≥ 5; UDP its 8-byte header.
//! - A header that runs past the end of the packet makes the packet `Malformed`. A
//!   malformed packet is never matched against a rule.
//! - Ports are returned in host byte order.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use policy_common::MAX_IPV6_EXT_HEADERS;

/// The packet is truncated or its headers contradict themselves.
pub struct Malformed;

pub enum Packet {
    NotIp,
    Ip(Transport),
}

pub enum Transport {
    Tcp {
        dst_port: u16,
    },
    Udp {
        dst_port: u16,
    },
    /// A non-first fragment: no transport header.
    Fragment,
    /// Any other protocol (ICMP, ICMPv6, ESP, …).
    Other,
}

/// VLAN tags parsed before the EtherType is taken as final.
const MAX_VLAN_TAGS: usize = 2;

const ETHER_TYPE_VLAN: u16 = EtherType::Ieee8021q as u16;
const ETHER_TYPE_QINQ: u16 = EtherType::Ieee8021ad as u16;
const ETHER_TYPE_IPV4: u16 = EtherType::Ipv4 as u16;
const ETHER_TYPE_IPV6: u16 = EtherType::Ipv6 as u16;

const PROTO_TCP: u8 = IpProto::Tcp as u8;
const PROTO_UDP: u8 = IpProto::Udp as u8;
const PROTO_HOP_OPTS: u8 = IpProto::HopOpt as u8;
const PROTO_ROUTING: u8 = IpProto::Ipv6Route as u8;
const PROTO_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;
const PROTO_DEST_OPTS: u8 = IpProto::Ipv6Opts as u8;
const PROTO_AH: u8 = IpProto::Ah as u8;
const PROTO_MOBILITY: u8 = IpProto::MobilityHeader as u8;
const PROTO_HIP: u8 = IpProto::Hip as u8;
const PROTO_SHIM6: u8 = IpProto::Shim6 as u8;

/// IPv6 fragment header (RFC 8200 §4.5).
#[repr(C)]
struct Ipv6FragHdr {
    next_hdr: u8,
    _reserved: u8,
    /// Offset in 8-octet units (13 bits), 2 reserved bits, M flag; network byte order.
    offset_flags: [u8; 2],
    _id: [u8; 4],
}

/// The generic IPv6 extension header prefix: next header and length.
#[repr(C)]
struct Ipv6ExtHdr {
    next_hdr: u8,
    hdr_ext_len: u8,
}

/// A position in the packet; every read is checked against the packet's end.
struct Cursor<'a> {
    ctx: &'a XdpContext,
    offset: usize,
}

impl<'a> Cursor<'a> {
    /// Returns a pointer to a `T` at the cursor, if all of it lies inside the packet.
    #[inline(always)]
    fn peek<T>(&self) -> Result<*const T, Malformed> {
        let start = self.ctx.data() + self.offset;
        if start + size_of::<T>() > self.ctx.data_end() {
            return Err(Malformed);
        }
        Ok(start as *const T)
    }

    /// Returns the `T` at the cursor and moves past it.
    #[inline(always)]
    fn read<T>(&mut self) -> Result<*const T, Malformed> {
        let ptr = self.peek::<T>()?;
        self.offset += size_of::<T>();
        Ok(ptr)
    }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Malformed> {
    let mut cursor = Cursor { ctx, offset: 0 };
    let eth = cursor.read::<EthHdr>()?;
    // SAFETY: `read` checked that the header lies inside the packet.
    let mut ether_type = unsafe { (*eth).ether_type };
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETHER_TYPE_VLAN && ether_type != ETHER_TYPE_QINQ {
            break;
        }
        let vlan = cursor.read::<VlanHdr>()?;
        // SAFETY: bounds checked by `read`.
        ether_type = unsafe { (*vlan).ether_type };
    }
    match ether_type {
        ETHER_TYPE_IPV4 => parse_ipv4(cursor).map(Packet::Ip),
        ETHER_TYPE_IPV6 => parse_ipv6(cursor).map(Packet::Ip),
        _ => Ok(Packet::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4(mut cursor: Cursor) -> Result<Transport, Malformed> {
    let ip = cursor.peek::<Ipv4Hdr>()?;
    // SAFETY: bounds checked by `peek`.
    let (version, header_len, frag_offset, proto) =
        unsafe { ((*ip).version(), (*ip).ihl(), (*ip).frag_offset(), (*ip).proto) };
    if version != 4 || usize::from(header_len) < Ipv4Hdr::LEN {
        return Err(Malformed);
    }
    // `ihl()` is at most 60: the verifier sees a bounded offset.
    cursor.offset += usize::from(header_len);
    if frag_offset != 0 {
        return Ok(Transport::Fragment);
    }
    parse_transport(cursor, proto)
}

#[inline(always)]
fn parse_ipv6(mut cursor: Cursor) -> Result<Transport, Malformed> {
    let ip = cursor.read::<Ipv6Hdr>()?;
    // SAFETY: bounds checked by `read`.
    let (version, mut next_hdr) = unsafe { ((*ip).version(), (*ip).next_hdr) };
    if version != 6 {
        return Err(Malformed);
    }
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next_hdr {
            PROTO_FRAGMENT => {
                let frag = cursor.read::<Ipv6FragHdr>()?;
                // SAFETY: bounds checked by `read`.
                let (next, offset_flags) = unsafe { ((*frag).next_hdr, (*frag).offset_flags) };
                if u16::from_be_bytes(offset_flags) >> 3 != 0 {
                    return Ok(Transport::Fragment);
                }
                next_hdr = next;
            }
            PROTO_HOP_OPTS | PROTO_ROUTING | PROTO_DEST_OPTS | PROTO_MOBILITY | PROTO_HIP
            | PROTO_SHIM6 => {
                let ext = cursor.peek::<Ipv6ExtHdr>()?;
                // SAFETY: bounds checked by `peek`.
                let (next, len) = unsafe { ((*ext).next_hdr, (*ext).hdr_ext_len) };
                // RFC 8200: length in 8-octet units, not counting the first 8 octets.
                cursor.offset += (usize::from(len) + 1) * 8;
                next_hdr = next;
            }
            PROTO_AH => {
                let ext = cursor.peek::<Ipv6ExtHdr>()?;
                // SAFETY: bounds checked by `peek`.
                let (next, len) = unsafe { ((*ext).next_hdr, (*ext).hdr_ext_len) };
                // RFC 4302: length in 4-octet units, minus 2.
                cursor.offset += (usize::from(len) + 2) * 4;
                next_hdr = next;
            }
            _ => return parse_transport(cursor, next_hdr),
        }
    }
    // Still an extension header after the last one we walk: we cannot find the ports.
    match next_hdr {
        PROTO_FRAGMENT | PROTO_HOP_OPTS | PROTO_ROUTING | PROTO_DEST_OPTS | PROTO_MOBILITY
        | PROTO_HIP | PROTO_SHIM6 | PROTO_AH => Err(Malformed),
        _ => parse_transport(cursor, next_hdr),
    }
}

#[inline(always)]
fn parse_transport(cursor: Cursor, proto: u8) -> Result<Transport, Malformed> {
    match proto {
        PROTO_TCP => {
            let tcp = cursor.peek::<TcpHdr>()?;
            // SAFETY: bounds checked by `peek`.
            let (dest, doff) = unsafe { ((*tcp).dest, (*tcp).doff()) };
            if doff < 5 {
                return Err(Malformed);
            }
            Ok(Transport::Tcp { dst_port: u16::from_be_bytes(dest) })
        }
        PROTO_UDP => {
            let udp = cursor.peek::<UdpHdr>()?;
            // SAFETY: bounds checked by `peek`.
            let dst = unsafe { (*udp).dst };
            Ok(Transport::Udp { dst_port: u16::from_be_bytes(dst) })
        }
        _ => Ok(Transport::Other),
    }
}
