//! The xdp-policy XDP program: parse the packet, look up its destination port in the rule
//! maps, count the verdict, and drop or pass.
//!
//! Hot-path rules: no allocation, no logging, one map lookup per classification and one
//! per-CPU counter update per packet.
#![no_std]
#![no_main]

mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use policy_common::{PortAction, Verdict};

use crate::parse::{Packet, Transport};

const _: () = assert!(
    xdp_action::XDP_DROP == policy_common::xdp_action::XDP_DROP
        && xdp_action::XDP_PASS == policy_common::xdp_action::XDP_PASS
        && xdp_action::XDP_ABORTED == policy_common::xdp_action::XDP_ABORTED
);

#[xdp]
pub fn policy_xdp(ctx: XdpContext) -> u32 {
    let verdict = match parse::parse(&ctx) {
        Ok(packet) => classify(&packet),
        Err(parse::Malformed) => Verdict::PassMalformed,
    };
    maps::count(verdict, ctx.data_end() - ctx.data());
    if verdict.drops() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[inline(always)]
fn classify(packet: &Packet) -> Verdict {
    let (map, port) = match packet {
        Packet::NotIp => return Verdict::PassNotIp,
        Packet::Ip(Transport::Fragment) => return Verdict::PassFragment,
        Packet::Ip(Transport::Other) => return Verdict::PassOtherProto,
        Packet::Ip(Transport::Tcp { dst_port }) => (&maps::TCP_DST_PORTS, *dst_port),
        Packet::Ip(Transport::Udp { dst_port }) => (&maps::UDP_DST_PORTS, *dst_port),
    };
    let action = map.get(u32::from(port)).map(|entry| PortAction::try_from(entry.action));
    match action {
        Some(Ok(PortAction::Drop)) => Verdict::DropRule,
        Some(Ok(PortAction::Pass)) => Verdict::PassRule,
        // A missing entry cannot happen (the array covers every port) and an unknown
        // action byte means a daemon/program mismatch: neither may drop traffic.
        Some(Ok(PortAction::NoRule)) | Some(Err(_)) | None => Verdict::PassNoMatch,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
