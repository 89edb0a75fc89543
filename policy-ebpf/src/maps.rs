//! Every map the program uses, sized from `policy-common`; the names are the ones the
//! daemon looks up (`policy_common::*_MAP`).

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use policy_common::{Counter, PORT_MAP_ENTRIES, PortEntry, Verdict};

#[map(name = "TCP_DST_PORTS")]
pub static TCP_DST_PORTS: Array<PortEntry> = Array::with_max_entries(PORT_MAP_ENTRIES, 0);

#[map(name = "UDP_DST_PORTS")]
pub static UDP_DST_PORTS: Array<PortEntry> = Array::with_max_entries(PORT_MAP_ENTRIES, 0);

#[map(name = "VERDICTS")]
pub static VERDICT_COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Adds one packet of `bytes` bytes to the per-CPU counter of `verdict`.
#[inline(always)]
pub fn count(verdict: Verdict, bytes: usize) {
    if let Some(counter) = VERDICT_COUNTERS.get_ptr_mut(verdict as u32) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is
        // valid for this CPU and no other CPU writes it; the program is not re-entered
        // on the same CPU while it runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}
