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
use classify::Decision;
use policy_common::Verdict;

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
    let packet = match parse::parse::<FULL>(ctx) {
        Ok(packet) => packet,
        Err(parse::Unparsable) => return finish(ctx, None, classify::unparsable()),
    };
    if packet.family == parse::Family::NotIp {
        return finish(ctx, Some(&packet), Decision::of(Verdict::PassNotIp));
    }
    let active = classify::active();
    // The port table's decision, apart: inlined with its own copy of `finish`, the port
    // program's common case runs straight through (about 1 ns a packet less in test
    // runs than through the classifier's shared exit).
    if let Some(decision) = classify::by_port_table(active, &packet.l4) {
        return finish(ctx, Some(&packet), decision);
    }
    finish(ctx, Some(&packet), classify::classify::<FULL>(active, &packet, ctx))
}

/// Counts the decision (and its rule), samples it, and returns its action.
#[inline(always)]
fn finish(ctx: &XdpContext, packet: Option<&parse::Packet>, decision: Decision) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    maps::count(&maps::VERDICT_COUNTERS, decision.verdict as u32, bytes);
    if let Some(slot) = decision.counter_slot {
        maps::count(&maps::RULE_COUNTERS, slot, bytes);
    }
    if let Some(packet) = packet
        && let Some(now) = events::due(&decision)
        // Read now, for the one packet in an interval whose summary is kept: kept in
        // registers (or the frame) through the classifier, they cost every packet.
        && let Some(addresses) = parse::addresses(ctx, packet)
    {
        events::emit(&decision, packet, addresses, now);
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
