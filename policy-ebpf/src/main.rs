//! The xdp-policy XDP program: parse the packet, classify it against the active rule
//! generation, count the verdict (and the winning rule), and drop or pass.
//!
//! Hot-path rules: no allocation, no logging, at most five field lookups per packet and
//! one or two per-CPU counter updates.
#![no_std]
#![no_main]
// The bucket's compare-and-swap: the BPF target has no `AtomicU64::compare_exchange`.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod classify;
mod events;
mod limit;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

const _: () = assert!(
    xdp_action::XDP_DROP == policy_common::xdp_action::XDP_DROP
        && xdp_action::XDP_PASS == policy_common::xdp_action::XDP_PASS
        && xdp_action::XDP_ABORTED == policy_common::xdp_action::XDP_ABORTED
);

/// The program that judges every policy.
#[xdp]
pub fn policy_xdp(ctx: XdpContext) -> u32 {
    run::<true>(&ctx)
}

/// The program for policies whose rules look at nothing but the protocol and the
/// destination port (a port table decides them): it reads no address and has no sets
/// or limits, so it is a fraction of the size and cost of `policy_xdp`. The daemon
/// loads it for such a policy and swaps programs on the link when a reload changes
/// that (see `classify::classify`).
#[xdp]
pub fn policy_ports(ctx: XdpContext) -> u32 {
    run::<false>(&ctx)
}

#[inline(always)]
fn run<const FULL: bool>(ctx: &XdpContext) -> u32 {
    let parsed = parse::parse::<FULL>(ctx);
    let decision = match &parsed {
        Ok(packet) => classify::classify::<FULL>(packet, ctx),
        Err(parse::Unparsable) => classify::unparsable(),
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    maps::count(&maps::VERDICT_COUNTERS, decision.verdict as u32, bytes);
    if let Some(slot) = decision.counter_slot {
        maps::count(&maps::RULE_COUNTERS, slot, bytes);
    }
    if let Ok(packet) = &parsed
        && let Some(now) = events::due(&decision)
    {
        if FULL {
            events::emit(&decision, packet, (packet.src, packet.dst), now);
        } else if let Some(addresses) = parse::addresses(ctx, packet) {
            // Read now, for the one packet in an interval whose summary is kept.
            events::emit(&decision, packet, addresses, now);
        }
    }
    if decision.verdict.drops() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
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
