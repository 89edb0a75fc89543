//! Sampled drop events: a summary of a dropped (or, in monitor mode, would-be-dropped)
//! packet goes into a ring buffer, at most one per configured interval per CPU, and only
//! while someone has switched sampling on (`xdp-policy events`). Packets that pass pay
//! nothing here; dropped ones one array lookup while sampling is off.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use policy_common::{DropEvent, Verdict};

use crate::{
    classify::Decision,
    maps::{EVENT_CLOCK, EVENT_SETTINGS, EVENTS},
    parse::{Family, Packet, address_bytes},
};

#[inline(always)]
pub fn sample(decision: &Decision, packet: &Packet) {
    let interesting = matches!(
        decision.verdict,
        Verdict::DropRule
            | Verdict::DropDefault
            | Verdict::DropFragment
            | Verdict::MonitorRule
            | Verdict::MonitorDefault
            | Verdict::DropLimit
            | Verdict::MonitorLimit
    );
    if !interesting {
        return;
    }
    let Some(settings) = EVENT_SETTINGS.get(0) else { return };
    if settings.interval_ns == 0 {
        return;
    }
    let Some(last) = EVENT_CLOCK.get_ptr_mut(0) else { return };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU slot from a successful lookup; this CPU runs one program at a time.
    unsafe {
        if now.wrapping_sub(*last) < settings.interval_ns {
            return;
        }
        *last = now;
    }
    if let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) {
        entry.write(DropEvent {
            time_ns: now,
            counter_slot: decision.counter_slot.unwrap_or(u32::MAX),
            verdict: decision.verdict as u8,
            l4_class: packet.l4.class as u8,
            ip_version: if packet.family == Family::V6 { 6 } else { 4 },
            _pad: 0,
            src_port: packet.l4.sport,
            dst_port: packet.l4.dport,
            _pad2: 0,
            src: address_bytes(packet.src),
            dst: address_bytes(packet.dst),
        });
        entry.submit(0);
    }
}
