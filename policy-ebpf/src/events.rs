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

/// Whether a summary of this packet goes into the ring now: its verdict is a drop (or
/// would be), sampling is on, and this CPU's interval has passed. Returns the time,
/// which the CPU's clock now holds.
#[inline(always)]
pub fn due(decision: &Decision) -> Option<u64> {
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
        return None;
    }
    let settings = EVENT_SETTINGS.get(0)?;
    if settings.interval_ns == 0 {
        return None;
    }
    let last = EVENT_CLOCK.get_ptr_mut(0)?;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a per-CPU slot from a successful lookup; this CPU runs one program at a time.
    unsafe {
        if now.wrapping_sub(*last) < settings.interval_ns {
            return None;
        }
        *last = now;
    }
    Some(now)
}

/// Puts the summary of `packet` into the ring, with the addresses `src` and `dst`.
#[inline(always)]
pub fn emit(decision: &Decision, packet: &Packet, (src, dst): ([u32; 4], [u32; 4]), now: u64) {
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
            src: address_bytes(src),
            dst: address_bytes(dst),
        });
        entry.submit(0);
    }
}
