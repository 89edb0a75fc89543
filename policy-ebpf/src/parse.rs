//! Header parsing with one bounds-checked cursor.
//!
//! Contract (the userspace reference parser, `policy::reference::parse_packet`, follows
//! it byte for byte, and the differential and evasion tests hold the two to it). The
//! rule behind it: a packet Linux could deliver is either classified from exactly the
//! headers Linux will read, or it is `Unparsable` (and the policy's `unparsable` action,
//! drop by default, decides it); it is never passed because the parser gave up.
//! - Ethernet, then VLAN tags (802.1Q `0x8100` or 802.1ad `0x88a8`, any VID, in any
//!   order; Linux strips priority tags, VID 0, that no VLAN device claims) up to
//!   `MAX_VLAN_TAGS`. An EtherType other than IPv4, IPv6 or a VLAN TPID after the last
//!   tag is `NotIp`; a frame too short for its Ethernet header or tags, or a further tag
//!   past the bound, is `Unparsable`.
//! - IPv4: version 4, IHL ≥ 5, and a total length that holds the header and fits in the
//!   frame; bytes past it (an Ethernet trailer) are not the packet's, as for Linux. A
//!   total length of 0 means "up to the end of the frame" (the kernel's own large GRO
//!   packets; Linux drops such a packet from the wire anyway). Options are skipped. A
//!   non-zero fragment offset is a non-first fragment: it has no transport header.
//! - IPv6: version 6 and a payload length that fits in the frame (0: up to its end, as
//!   for jumbograms). Hop-by-hop, routing, destination-options, mobility, HIP, shim6,
//!   AH and fragment headers are walked, each of which must lie whole inside the
//!   packet, at most `MAX_IPV6_EXT_HEADERS` of them and within `MAX_IPV6_HEADER_CHAIN`
//!   bytes of the IPv6 header's start; a fragment header with a non-zero offset makes a
//!   non-first fragment.
//! - Transport: TCP needs its whole header (data offset ≥ 5, all `4 × doff` bytes), UDP
//!   its 8-byte header, ICMP (over IPv4) and ICMPv6 (over IPv6) their 8-byte header,
//!   all inside the IP packet: a first fragment that does not hold them (or, for IPv6,
//!   the whole extension-header chain) is `Unparsable` (RFC 1858, RFC 7112, RFC 9098).
//!   Other protocols, and ICMP over the other IP version, are class `Other`, with no
//!   header read.
//! - Bytes the classifier does not need are not checked: IPv4 options, checksums, the
//!   TCP options' contents, the payload.
//! - Ports are returned in host byte order; for ICMP the type stands in the destination
//!   port, for other protocols both ports are 0. TCP's flags byte is returned as it is.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use policy_common::{
    L4Class, MAX_IPV6_EXT_HEADERS, MAX_IPV6_HEADER_CHAIN, MAX_VLAN_TAGS, tcp_flags,
};

/// An IP packet whose transport header cannot be located and read whole, or a frame
/// too short to say what it carries.
pub struct Unparsable;

/// A parsed packet, laid out in C's way: the global parse functions write it into
/// their caller's frame. A struct with every field always initialised rather than an enum
/// with data: LLVM assembled the enum's unused fields from uninitialised registers, which
/// the verifier rightly rejects (`R0 !read_ok`).
#[repr(C)]
pub struct Packet {
    pub family: Family,
    /// Source address as four 32-bit words holding the address bytes in network order
    /// (as in the packet); IPv4 in the first word, the rest zero; all zero if not IP.
    /// Words, not bytes: a `[u8; 16]` was zeroed through a `memset` subprogram call
    /// and copied byte by byte.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub l4: Transport,
    /// Offset of the IP header in the frame (0 if not IP): where [`addresses`] reads
    /// them for a packet parsed without.
    pub ip: usize,
}

#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    NotIp,
    V4,
    V6,
}

impl Packet {
    const NOT_IP: Self = Self {
        family: Family::NotIp,
        src: [0; 4],
        dst: [0; 4],
        l4: Transport {
            class: L4Class::Other,
            dport: 0,
            sport: 0,
            flag_index: tcp_flags::other(L4Class::Other),
            fragment: false,
        },
        ip: 0,
    };

    #[inline(always)]
    fn v4(src: [u8; 4], dst: [u8; 4], l4: Transport, ip: usize) -> Self {
        let (src, dst) = (u32::from_ne_bytes(src), u32::from_ne_bytes(dst));
        Self { family: Family::V4, src: [src, 0, 0, 0], dst: [dst, 0, 0, 0], l4, ip }
    }
}

/// An address's bytes, in network order, from its words (see [`Packet::src`]).
#[inline(always)]
pub fn address_bytes(words: [u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = words.map(u32::to_ne_bytes);
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

/// An IPv6 address from the packet as words (see [`Packet::src`]).
#[inline(always)]
fn words(bytes: &[u8; 16]) -> [u32; 4] {
    // SAFETY: 16 readable bytes; read_unaligned allows any alignment.
    unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<[u32; 4]>()) }
}

/// What the classifier needs of the transport header.
#[repr(C)]
pub struct Transport {
    pub class: L4Class,
    /// Destination port, or ICMP type; 0 for other protocols.
    pub dport: u16,
    pub sport: u16,
    /// Where the packet's class and TCP flags are looked up in `TCP_FLAGS` (in a
    /// generation with a flags rule): the entry of a TCP header's flags byte
    /// (`tcp_flags::byte`), `tcp_flags::UNKNOWN` for a TCP fragment,
    /// `tcp_flags::other(class)` for the rest; never below `tcp_flags::other(class)`
    /// (the classifier subtracts it). Set here, where the protocol is
    /// known anyway: a branch on it in the classifier doubled the verifier's paths.
    pub flag_index: u32,
    /// A non-first fragment: `dport` and `sport` are unknown (and its flags: `flag_index`
    /// says so).
    pub fragment: bool,
}

const ETHER_TYPE_VLAN: u16 = EtherType::Ieee8021q as u16;
const ETHER_TYPE_QINQ: u16 = EtherType::Ieee8021ad as u16;
const ETHER_TYPE_IPV4: u16 = EtherType::Ipv4 as u16;
const ETHER_TYPE_IPV6: u16 = EtherType::Ipv6 as u16;

/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

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

/// The ICMP and ICMPv6 header: type, code, checksum and four bytes that depend on the
/// type. Linux reads all eight before it looks at a message.
#[repr(C)]
struct IcmpHdr {
    icmp_type: u8,
    _code: u8,
    _checksum: [u8; 2],
    _rest: [u8; 4],
}

/// A position in the packet. Every read is checked against the end of the frame (for
/// the verifier) and against `end`, the end of the IP packet once its length is known
/// (for the contract: nothing past the IP length is the packet's).
struct Cursor<'a> {
    ctx: &'a XdpContext,
    offset: usize,
    end: usize,
}

impl Cursor<'_> {
    /// Returns a pointer to a `T` at the cursor, if all of it lies inside the packet.
    #[inline(always)]
    fn peek<T>(&self) -> Result<*const T, Unparsable> {
        let start = self.ctx.data() + self.offset;
        if self.offset + size_of::<T>() > self.end || start + size_of::<T>() > self.ctx.data_end() {
            return Err(Unparsable);
        }
        Ok(start as *const T)
    }

    /// Returns the `T` at the cursor and moves past it.
    #[inline(always)]
    fn read<T>(&mut self) -> Result<*const T, Unparsable> {
        let ptr = self.peek::<T>()?;
        self.offset += size_of::<T>();
        Ok(ptr)
    }

    /// Moves past `len` bytes, all of which must lie inside the IP packet.
    #[inline(always)]
    fn skip(&mut self, len: usize) -> Result<(), Unparsable> {
        if self.offset + len > self.end {
            return Err(Unparsable);
        }
        self.offset += len;
        Ok(())
    }

    /// The IP packet at `start` is `len` bytes long (0: up to the end of the frame),
    /// which must fit in the frame.
    #[inline(always)]
    fn limit(&mut self, start: usize, len: u16) -> Result<(), Unparsable> {
        if len != 0 {
            let end = start + usize::from(len);
            if end > self.end {
                return Err(Unparsable);
            }
            self.end = end;
        }
        Ok(())
    }
}

/// The source and destination address of `packet`, parsed without them, read where
/// its IP header is (see [`Packet::src`] for their form).
#[inline(always)]
pub fn addresses(ctx: &XdpContext, packet: &Packet) -> Option<([u32; 4], [u32; 4])> {
    // Where the parser found the IP header; for the verifier, the bound.
    if packet.ip > MAX_IP_OFFSET {
        return None;
    }
    let cursor = Cursor { ctx, offset: packet.ip, end: ctx.data_end() - ctx.data() };
    match packet.family {
        Family::V4 => {
            let ip = cursor.peek::<Ipv4Hdr>().ok()?;
            // SAFETY: bounds checked by `peek`.
            let (src, dst) = unsafe { ((*ip).src_addr, (*ip).dst_addr) };
            let (src, dst) = (u32::from_ne_bytes(src), u32::from_ne_bytes(dst));
            Some(([src, 0, 0, 0], [dst, 0, 0, 0]))
        }
        Family::V6 => {
            let ip = cursor.peek::<Ipv6Hdr>().ok()?;
            // SAFETY: bounds checked by `peek`.
            unsafe { Some((words(&(*ip).src_addr), words(&(*ip).dst_addr))) }
        }
        Family::NotIp => None,
    }
}

/// Parses the packet; without `ADDRESSES`, the addresses are not read (left zero): the
/// same checks, the same outcome, fewer loads, for a program that never looks at them.
///
/// An untagged IPv4 packet, or IPv6 without extension headers, is parsed here, inline.
/// A tagged frame, and an IPv6 extension-header chain, are parsed by a global function
/// (exported by the linker, see xtask's build), which the verifier checks once on its
/// own, for any offset. All inline, the verifier checked the IP headers once for each
/// number of tags, and the classifier once for each way through them: the port program
/// took 400,000 instructions to verify, and its first apply half a second. Not all
/// through functions: a call and its return cost about 7 ns a packet in test runs on
/// the bench's AMD host, whose kernel returns through its Safe RET thunk (the bench's
/// "one BPF-to-BPF call" line; a `memset` call LLVM once put on the port program's path
/// cost 25), and the packets of the common case make none.
#[inline(always)]
pub fn parse<const ADDRESSES: bool>(ctx: &XdpContext) -> Result<Packet, Unparsable> {
    let mut cursor = Cursor { ctx, offset: 0, end: ctx.data_end() - ctx.data() };
    let eth = cursor.read::<EthHdr>()?;
    // SAFETY: `read` checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    match ether_type {
        ETHER_TYPE_IPV4 => parse_ipv4(cursor, ADDRESSES),
        ETHER_TYPE_IPV6 => {
            let ip = cursor.peek::<Ipv6Hdr>()?;
            // SAFETY: bounds checked by `peek`.
            if extension(unsafe { (*ip).next_hdr }) {
                let offset = cursor.offset;
                through(|out| xdp_policy_ipv6(ctx.ctx, offset, u32::from(ADDRESSES), out))
            } else {
                parse_ipv6::<false>(cursor, ADDRESSES)
            }
        }
        ETHER_TYPE_VLAN | ETHER_TYPE_QINQ => {
            through(|out| xdp_policy_tagged(ctx.ctx, u32::from(ADDRESSES), out))
        }
        _ => Ok(Packet::NOT_IP),
    }
}

/// The packet a global parse function writes (see [`parse`]). Kept apart from the
/// inline paths, whose packets stay in registers: a packet in the frame is filled
/// through a call to `memset`, a return the common case would pay for.
#[inline(always)]
fn through(parse: impl FnOnce(*mut Packet) -> i32) -> Result<Packet, Unparsable> {
    let mut packet = Packet::NOT_IP;
    if parse(&mut packet) != 0 {
        return Err(Unparsable);
    }
    Ok(packet)
}

/// Parses a frame with VLAN tags into `out` (its addresses only if `addresses` is not
/// 0): 0, or -1 if it is unparsable. A global function: see [`parse`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_policy_tagged(ctx: *mut xdp_md, addresses: u32, out: *mut Packet) -> i32 {
    // SAFETY: null or the caller's `Packet` (the verifier checks the size).
    let Some(out) = (unsafe { out.as_mut() }) else { return -1 };
    let ctx = XdpContext::new(ctx);
    let mut cursor = Cursor { ctx: &ctx, offset: 0, end: ctx.data_end() - ctx.data() };
    let Ok(eth) = cursor.read::<EthHdr>() else { return -1 };
    // SAFETY: `read` checked that the header lies inside the packet.
    let mut ether_type = unsafe { (*eth).ether_type };
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETHER_TYPE_VLAN && ether_type != ETHER_TYPE_QINQ {
            break;
        }
        let Ok(vlan) = cursor.read::<VlanHdr>() else { return -1 };
        // SAFETY: bounds checked by `read`.
        ether_type = unsafe { (*vlan).ether_type };
    }
    match ether_type {
        ETHER_TYPE_IPV4 => xdp_policy_ipv4(ctx.ctx, cursor.offset, addresses, out),
        ETHER_TYPE_IPV6 => xdp_policy_ipv6(ctx.ctx, cursor.offset, addresses, out),
        // More tags than the bound: whatever is inside may well be IP.
        ETHER_TYPE_VLAN | ETHER_TYPE_QINQ => -1,
        _ => {
            *out = Packet::NOT_IP;
            0
        }
    }
}

/// The IPv6 extension headers: what [`parse_ipv6`] walks (with `CHAIN`), and what
/// sends an IPv6 packet to it from [`parse`]: one list for both.
#[inline(always)]
fn extension(next_hdr: u8) -> bool {
    matches!(
        next_hdr,
        PROTO_FRAGMENT
            | PROTO_HOP_OPTS
            | PROTO_ROUTING
            | PROTO_DEST_OPTS
            | PROTO_MOBILITY
            | PROTO_HIP
            | PROTO_SHIM6
            | PROTO_AH
    )
}

/// The furthest an IP header starts in the frame: after the Ethernet header and
/// `MAX_VLAN_TAGS` tags.
const MAX_IP_OFFSET: usize = size_of::<EthHdr>() + MAX_VLAN_TAGS * size_of::<VlanHdr>();

/// Parses the IPv4 packet at `offset` into `out` (its addresses only if `addresses` is
/// not 0): 0, or -1 if it is unparsable. A global function: see [`parse`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_policy_ipv4(
    ctx: *mut xdp_md,
    offset: usize,
    addresses: u32,
    out: *mut Packet,
) -> i32 {
    at_ip(ctx, offset, out, |cursor| parse_ipv4(cursor, addresses != 0))
}

/// [`xdp_policy_ipv4`] for IPv6.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_policy_ipv6(
    ctx: *mut xdp_md,
    offset: usize,
    addresses: u32,
    out: *mut Packet,
) -> i32 {
    at_ip(ctx, offset, out, |cursor| parse_ipv6::<true>(cursor, addresses != 0))
}

#[inline(always)]
fn at_ip(
    ctx: *mut xdp_md,
    offset: usize,
    out: *mut Packet,
    parse: impl FnOnce(Cursor) -> Result<Packet, Unparsable>,
) -> i32 {
    // SAFETY: null or the caller's `Packet` (the verifier checks the size).
    let Some(out) = (unsafe { out.as_mut() }) else { return -1 };
    // Never further for a caller that walked the tags; for the verifier, the bound.
    if offset > MAX_IP_OFFSET {
        return -1;
    }
    let ctx = XdpContext::new(ctx);
    let cursor = Cursor { ctx: &ctx, offset, end: ctx.data_end() - ctx.data() };
    match parse(cursor) {
        Ok(packet) => {
            *out = packet;
            0
        }
        Err(Unparsable) => -1,
    }
}

#[inline(always)]
fn fragment(proto: u8, v6: bool) -> Transport {
    let class = L4Class::of(proto, v6);
    let flag_index =
        if class == L4Class::Tcp { tcp_flags::UNKNOWN } else { tcp_flags::other(class) };
    Transport { class, dport: 0, sport: 0, flag_index, fragment: true }
}

#[inline(always)]
fn parse_ipv4(mut cursor: Cursor, addresses: bool) -> Result<Packet, Unparsable> {
    let start = cursor.offset;
    let ip = cursor.peek::<Ipv4Hdr>()?;
    // SAFETY: bounds checked by `peek`.
    let (version, header_len, total_len, frag_offset, proto) = unsafe {
        ((*ip).version(), (*ip).ihl(), (*ip).tot_len(), (*ip).frag_offset(), (*ip).proto)
    };
    if version != 4 || usize::from(header_len) < Ipv4Hdr::LEN {
        return Err(Unparsable);
    }
    // SAFETY: as above.
    let (src, dst) =
        if addresses { unsafe { ((*ip).src_addr, (*ip).dst_addr) } } else { ([0; 4], [0; 4]) };
    cursor.limit(cursor.offset, total_len)?;
    // `ihl()` is at most 60: the verifier sees a bounded offset. A total length shorter
    // than the header fails here.
    cursor.skip(usize::from(header_len))?;
    let l4 = if frag_offset != 0 {
        fragment(proto, false)
    } else {
        parse_transport(cursor, proto, false)?
    };
    Ok(Packet::v4(src, dst, l4, start))
}

/// Without `CHAIN`, for a header followed by the transport header (no extension
/// header: see [`extension`]).
#[inline(always)]
fn parse_ipv6<const CHAIN: bool>(
    mut cursor: Cursor,
    addresses: bool,
) -> Result<Packet, Unparsable> {
    let start = cursor.offset;
    let ip = cursor.read::<Ipv6Hdr>()?;
    // SAFETY: bounds checked by `read`.
    let (version, payload_len, mut next_hdr) =
        unsafe { ((*ip).version(), (*ip).payload_len(), (*ip).next_hdr) };
    if version != 6 {
        return Err(Unparsable);
    }
    // SAFETY: as above.
    let (src, dst) = if addresses {
        unsafe { (words(&(*ip).src_addr), words(&(*ip).dst_addr)) }
    } else {
        ([0; 4], [0; 4])
    };
    cursor.limit(cursor.offset, payload_len)?;
    if !CHAIN {
        let l4 = parse_transport(cursor, next_hdr, true)?;
        return Ok(Packet { family: Family::V6, src, dst, l4, ip: start });
    }
    let transport = 'chain: {
        // One more round than headers: the last one can only find the transport header.
        for _ in 0..=MAX_IPV6_EXT_HEADERS {
            // The second test never fails when the first passes (`start` is at most
            // `MAX_IP_OFFSET`): it is what keeps packet offsets bounded for the verifier.
            if cursor.offset - start > MAX_IPV6_HEADER_CHAIN
                || cursor.offset > MAX_IP_OFFSET + MAX_IPV6_HEADER_CHAIN
            {
                return Err(Unparsable);
            }
            // The one list of what is walked, which `parse` also reads: a header it
            // names is walked here, whichever path the packet took.
            if !extension(next_hdr) {
                break 'chain parse_transport(cursor, next_hdr, true)?;
            }
            let len = match next_hdr {
                PROTO_FRAGMENT => {
                    let frag = cursor.read::<Ipv6FragHdr>()?;
                    // SAFETY: bounds checked by `read`.
                    let (next, offset_flags) = unsafe { ((*frag).next_hdr, (*frag).offset_flags) };
                    if u16::from_be_bytes(offset_flags) >> 3 != 0 {
                        break 'chain fragment(next, true);
                    }
                    next_hdr = next;
                    continue;
                }
                PROTO_AH => {
                    let ext = cursor.peek::<Ipv6ExtHdr>()?;
                    // SAFETY: bounds checked by `peek`.
                    let (next, len) = unsafe { ((*ext).next_hdr, (*ext).hdr_ext_len) };
                    next_hdr = next;
                    // RFC 4302: length in 4-octet units, minus 2.
                    (usize::from(len) + 2) * 4
                }
                // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
                _ => {
                    let ext = cursor.peek::<Ipv6ExtHdr>()?;
                    // SAFETY: bounds checked by `peek`.
                    let (next, len) = unsafe { ((*ext).next_hdr, (*ext).hdr_ext_len) };
                    next_hdr = next;
                    // RFC 8200: length in 8-octet units, not counting the first 8 octets.
                    (usize::from(len) + 1) * 8
                }
            };
            cursor.skip(len)?;
        }
        // Still an extension header after the last one we walk: past the bound.
        return Err(Unparsable);
    };
    Ok(Packet { family: Family::V6, src, dst, l4: transport, ip: start })
}

#[inline(always)]
fn parse_transport(cursor: Cursor, proto: u8, v6: bool) -> Result<Transport, Unparsable> {
    let class = L4Class::of(proto, v6);
    let mut flag_index = tcp_flags::other(class);
    let (dport, sport) = match class {
        L4Class::Tcp => {
            let tcp = cursor.peek::<TcpHdr>()?;
            // SAFETY: bounds checked by `peek`; the flags are the header's 14th byte.
            let (source, dest, doff) = unsafe { ((*tcp).source, (*tcp).dest, (*tcp).doff()) };
            // SAFETY: as above.
            flag_index = tcp_flags::byte(unsafe { *tcp.cast::<u8>().add(TCP_FLAGS_OFFSET) });
            // The options too: Linux drops a segment whose header runs past its end.
            if doff < 5 || cursor.offset + 4 * usize::from(doff) > cursor.end {
                return Err(Unparsable);
            }
            (u16::from_be_bytes(dest), u16::from_be_bytes(source))
        }
        L4Class::Udp => {
            let udp = cursor.peek::<UdpHdr>()?;
            // SAFETY: bounds checked by `peek`.
            let (src, dst) = unsafe { ((*udp).src, (*udp).dst) };
            (u16::from_be_bytes(dst), u16::from_be_bytes(src))
        }
        L4Class::Icmp | L4Class::Icmpv6 => {
            let icmp = cursor.peek::<IcmpHdr>()?;
            // SAFETY: bounds checked by `peek`.
            (u16::from(unsafe { (*icmp).icmp_type }), 0)
        }
        L4Class::Other => (0, 0),
    };
    Ok(Transport { class, dport, sport, flag_index, fragment: false })
}
