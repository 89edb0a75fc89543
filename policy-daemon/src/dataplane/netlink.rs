//! Which XDP program the kernel runs on an interface, asked over rtnetlink (`RTM_GETLINK`,
//! the `IFLA_XDP` attributes): aya attaches and detaches programs but cannot say what
//! else holds an interface, and an attach the kernel refuses with EBUSY or EEXIST is
//! only useful to an operator with the name of what is in the way.

use std::io;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// An XDP program attached to an interface, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProgram {
    pub id: u32,
    /// `native`, `skb`, `offload`, or `several modes` (one program per mode).
    pub mode: &'static str,
    /// The program's name as the kernel has it (its first 15 bytes); `None` if the
    /// program went away before its name could be read.
    pub name: Option<String>,
}

/// The largest `RTM_NEWLINK` reply expected for one interface (iproute2 reads into as
/// much).
const REPLY_BYTES: usize = 32 * 1024;

/// The XDP program on the interface with index `ifindex`, if one is attached.
pub fn attached_program(ifindex: u32) -> io::Result<Option<AttachedProgram>> {
    let Some((id, mode)) = attached_id(ifindex)? else { return Ok(None) };
    let name = aya::programs::loaded_programs()
        .flatten()
        .find(|program| program.id() == id)
        .and_then(|program| program.name_as_str().map(str::to_owned));
    Ok(Some(AttachedProgram { id, mode, name }))
}

fn attached_id(ifindex: u32) -> io::Result<Option<(u32, &'static str)>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)),
    );
    request.header.flags = NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut reply = vec![0; REPLY_BYTES];
    let size = socket.recv(&mut &mut reply[..], 0)?;
    let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..size])
        .map_err(io::Error::other)?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(xdp_of(&link)),
        NetlinkPayload::Error(error) => Err(error.to_io()),
        other => Err(io::Error::other(format!("unexpected rtnetlink reply: {other:?}"))),
    }
}

/// The id and mode of the XDP program in `link`'s attributes.
fn xdp_of(link: &LinkMessage) -> Option<(u32, &'static str)> {
    let xdp = link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Xdp(xdp) => Some(xdp),
        _ => None,
    })?;
    let attached = xdp.iter().find_map(|nla| match nla {
        LinkXdp::Attached(attached) => Some(*attached),
        _ => None,
    })?;
    let id_of = |wanted: fn(&LinkXdp) -> Option<u32>| xdp.iter().find_map(wanted);
    let prog_id = |nla: &LinkXdp| match nla {
        LinkXdp::ProgId(id) => Some(*id),
        _ => None,
    };
    match attached {
        XdpAttached::None => None,
        XdpAttached::Driver => Some((id_of(prog_id)?, "native")),
        XdpAttached::SocketBuffer => Some((id_of(prog_id)?, "skb")),
        XdpAttached::Hardware => Some((id_of(prog_id)?, "offload")),
        // One program per mode: ProgId is absent, each mode has its own id.
        _ => {
            let any_mode = |nla: &LinkXdp| match nla {
                LinkXdp::DrvProgId(id) | LinkXdp::SkbProgId(id) | LinkXdp::HwProgId(id) => {
                    Some(*id)
                }
                _ => None,
            };
            Some((id_of(any_mode)?, "several modes"))
        }
    }
}
