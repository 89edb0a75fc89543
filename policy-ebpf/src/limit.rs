//! Rate limits: a limit rule's token buckets, in the generic cell rate algorithm's form
//! (see `policy_common::LimitConfig`). A bucket is one `u64` updated by compare-and-swap,
//! so a source whose packets arrive on several CPUs at once is held to its rate exactly.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use policy_common::{
    LIMIT_CAS_TRIES, LIMIT_MAX_COST, LIMIT_SHIFT, LimitKey, RULE_COUNTER_SLOTS, limit_flags,
};

use crate::maps::{LIMIT_BUCKETS, LIMIT_STATS, LIMITS, count};

/// What the limiter needs of one packet.
#[repr(C)]
pub struct LimitProbe {
    /// The source address, as in `Packet::src`.
    pub src: [u32; 4],
    /// `rule_index(generation, rule)`: the rule's entry in `LIMITS`.
    pub index: u32,
    /// The rule's counter slot, where its over-limit packets are counted.
    pub slot: u32,
    /// 4 or 6.
    pub version: u32,
    /// The packet's length from the Ethernet header on.
    pub bytes: u32,
}

/// Charges the packet to its bucket: 0 when the bucket had room (the packet passes), 1
/// when it is over the limit, or when the bucket could not be read or updated (fail
/// closed). Over-limit packets are counted in `LIMIT_STATS` at the rule's slot.
///
/// A global function (exported by the linker, see xtask's build): the verifier checks it
/// once on its own, not on every path of the classifier that reaches a limit rule.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_policy_limit(probe: *const LimitProbe) -> i32 {
    // SAFETY: null or a `LimitProbe` of the caller's (the verifier checks the size).
    let Some(probe) = (unsafe { probe.as_ref() }) else { return 1 };
    let over = match charge(probe) {
        Some(true) => return 0,
        Some(false) | None => 1,
    };
    count(&LIMIT_STATS, probe.slot, u64::from(probe.bytes));
    over
}

/// `Some(true)` when the packet fits its bucket (which is charged), `Some(false)` when
/// it is over, `None` when the bucket cannot be used.
#[inline(always)]
fn charge(probe: &LimitProbe) -> Option<bool> {
    let config = LIMITS.get(probe.index)?;
    if config.id == 0 {
        return None;
    }
    let mut key = LimitKey { id: config.id, version: 0, addr: [0; 4] };
    if config.flags & limit_flags::PER_SOURCE != 0 {
        key.version = probe.version;
        if probe.version == 4 {
            key.addr[0] = probe.src[0] & config.v4_mask;
        } else {
            for w in 0..4 {
                key.addr[w] = probe.src[w] & config.v6_mask[w];
            }
        }
    }
    let cost = if config.flags & limit_flags::BYTES != 0 {
        u64::from(probe.bytes.min(LIMIT_MAX_COST))
    } else {
        1
    };
    let charge = (cost * config.interval) >> LIMIT_SHIFT;
    // The fine clock: the coarse one (half the cost) moves a tick at a time, and on a VM
    // often two ticks at once, and a bucket loses what it would have refilled meanwhile
    // (11% of the rate at 20,000/s with a 5 ms bucket, measured).
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    for _ in 0..LIMIT_CAS_TRIES {
        let Some(tat) = LIMIT_BUCKETS.get_ptr_mut(key) else {
            // A new bucket, full: this packet takes its charge. Another CPU creating it
            // at the same moment makes the insert fail; the next turn charges theirs.
            if charge > config.tolerance {
                return Some(false);
            }
            if LIMIT_BUCKETS.insert(key, now + charge, u64::from(BPF_NOEXIST)).is_ok() {
                count(&LIMIT_STATS, RULE_COUNTER_SLOTS + probe.slot, 0);
                return Some(true);
            }
            continue;
        };
        // SAFETY: a value of the map from a successful lookup, 8-byte aligned; other
        // CPUs change it only through the same compare-and-swap.
        let current = unsafe { core::ptr::read_volatile(tat) };
        let next = current.max(now) + charge;
        if next - now > config.tolerance {
            return Some(false);
        }
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, current, next,
            )
        };
        if swapped {
            return Some(true);
        }
    }
    None
}
