//! Every map the program uses, sized from `policy-common`; the names are the ones the
//! daemon looks up (`policy_common::*_MAP`). Layouts are documented there.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use policy_common::{
    Counter, EVENTS_BYTES, EventSettings, GENERATIONS, GenConfig, IPV4_KEY_LEN, IPV6_KEY_LEN,
    LAYOUT_ENTRIES, LIMIT_STATS_SLOTS, LimitConfig, LimitKey, MAX_PORT_CLASSES, MAX_PREFIXES,
    MAX_RULES, MAX_SET_ENTRIES, MAX_SOURCES, PORT_CLASS_WORDS, RULE_COUNTER_SLOTS, RuleBitmap,
    RuleInfo, SET_HIT_SLOTS, SET_KEY_LEN, SET_STATS_ENTRIES, SetEntry, VERDICT_SLOTS, field_bitmap,
    port_table, tcp_flags, v4_table, v6_table,
};

#[map(name = "ACTIVE")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "PORT_TABLE")]
pub static PORT_TABLE: Array<u64> = Array::with_max_entries(
    GENERATIONS * port_table::MAX_ROWS_PER_GENERATION * port_table::WORDS_PER_ROW,
    0,
);

#[map(name = "V4_L1")]
pub static V4_L1: Array<u64> =
    Array::with_max_entries(GENERATIONS * 2 * v4_table::L1_ENTRIES / v4_table::L1_PER_WORD, 0);

#[map(name = "V4_L2")]
pub static V4_L2: Array<u32> = Array::with_max_entries(GENERATIONS * 2 * v4_table::BLOCKS * 256, 0);

#[map(name = "V4_L3")]
pub static V4_L3: Array<u32> = Array::with_max_entries(GENERATIONS * 2 * v4_table::BLOCKS * 256, 0);

#[map(name = "V4_CLASSES")]
pub static V4_CLASSES: Array<RuleBitmap> =
    Array::with_max_entries(GENERATIONS * 2 * v4_table::CLASSES, 0);

#[map(name = "V6_L1")]
pub static V6_L1: Array<u64> =
    Array::with_max_entries(GENERATIONS * 2 * v6_table::L1_ENTRIES / v4_table::L1_PER_WORD, 0);

#[map(name = "V6_BLOCKS")]
pub static V6_BLOCKS: Array<u32> =
    Array::with_max_entries(GENERATIONS * 2 * v6_table::BLOCKS * 256, 0);

#[map(name = "V6_CLASSES")]
pub static V6_CLASSES: Array<RuleBitmap> =
    Array::with_max_entries(v6_table::CLASS_STRIDE * v6_table::CLASSES, 0);

#[map(name = "CONFIG")]
pub static CONFIG: Array<GenConfig> = Array::with_max_entries(GENERATIONS, 0);

#[map(name = "RULES")]
pub static RULES: Array<RuleInfo> = Array::with_max_entries(GENERATIONS * MAX_RULES as u32, 0);

#[map(name = "FIELD_BITMAPS")]
pub static FIELD_BITMAPS: Array<RuleBitmap> =
    Array::with_max_entries(GENERATIONS * field_bitmap::PER_GENERATION, 0);

#[map(name = "DPORT_CLASSES")]
pub static DPORT_CLASSES: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_CLASS_WORDS, 0);

#[map(name = "SPORT_CLASSES")]
pub static SPORT_CLASSES: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_CLASS_WORDS, 0);

#[map(name = "DPORT_BITMAPS")]
pub static DPORT_BITMAPS: Array<RuleBitmap> =
    Array::with_max_entries(GENERATIONS * MAX_PORT_CLASSES, 0);

#[map(name = "SPORT_BITMAPS")]
pub static SPORT_BITMAPS: Array<RuleBitmap> =
    Array::with_max_entries(GENERATIONS * MAX_PORT_CLASSES, 0);

/// Each generation holds its prefixes plus the /0 entry.
const TRIE_ENTRIES: u32 = GENERATIONS * (MAX_PREFIXES + 1);

#[map(name = "SRC_V4")]
pub static SRC_V4: LpmTrie<[u8; IPV4_KEY_LEN], RuleBitmap> =
    LpmTrie::with_max_entries(TRIE_ENTRIES, 0);

#[map(name = "DST_V4")]
pub static DST_V4: LpmTrie<[u8; IPV4_KEY_LEN], RuleBitmap> =
    LpmTrie::with_max_entries(TRIE_ENTRIES, 0);

#[map(name = "SRC_V6")]
pub static SRC_V6: LpmTrie<[u8; IPV6_KEY_LEN], RuleBitmap> =
    LpmTrie::with_max_entries(TRIE_ENTRIES, 0);

#[map(name = "DST_V6")]
pub static DST_V6: LpmTrie<[u8; IPV6_KEY_LEN], RuleBitmap> =
    LpmTrie::with_max_entries(TRIE_ENTRIES, 0);

#[map(name = "SETS")]
pub static SETS: LpmTrie<[u32; SET_KEY_LEN / 4], SetEntry> =
    LpmTrie::with_max_entries(MAX_SET_ENTRIES, 0);

/// Per CPU, the source and the destination bitmap merged with the rules of the sets the
/// address is in: 256 bytes the BPF stack has no room for.
#[map(name = "SET_SCRATCH")]
pub static SET_SCRATCH: PerCpuArray<RuleBitmap> = PerCpuArray::with_max_entries(2, 0);

/// Each set's counters ([`policy_common::SET_STATS_MAP`]), kept by the daemon and the
/// commands; declared here so that the object carries it. Not preallocated: a policy
/// without sets uses none of its 4,096 entries (320 KiB preallocated).
#[map(name = "SET_STATS")]
pub static SET_STATS: HashMap<[u32; 2], u64> =
    HashMap::with_max_entries(SET_STATS_ENTRIES, BPF_F_NO_PREALLOC);

/// Hits per generation and set slot ([`policy_common::SET_HITS_MAP`]).
#[map(name = "SET_HITS")]
pub static SET_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SET_HIT_SLOTS, 0);

/// The rules each TCP flags byte admits, per generation
/// ([`policy_common::TCP_FLAGS_MAP`]).
#[map(name = "TCP_FLAGS")]
pub static TCP_FLAGS: Array<RuleBitmap> =
    Array::with_max_entries(GENERATIONS * tcp_flags::PER_GENERATION, 0);

/// Each limit rule's bucket parameters, per generation ([`policy_common::LIMITS_MAP`]).
#[map(name = "LIMITS")]
pub static LIMITS: Array<LimitConfig> = Array::with_max_entries(GENERATIONS * MAX_RULES as u32, 0);

/// The limit rules' buckets ([`policy_common::LIMIT_BUCKETS_MAP`]); the daemon may size
/// it (`max_sources`) when it creates it.
#[map(name = "LIMIT_BUCKETS")]
pub static LIMIT_BUCKETS: LruHashMap<LimitKey, u64> = LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// Packets over each rule's limit, and buckets created ([`policy_common::LIMIT_STATS_MAP`]).
#[map(name = "LIMIT_STATS")]
pub static LIMIT_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(LIMIT_STATS_SLOTS, 0);

/// The layout version of the maps ([`policy_common::LAYOUT_MAP`]), written by the
/// daemon; declared here so that the object carries it.
#[map(name = "LAYOUT")]
pub static LAYOUT: Array<u32> = Array::with_max_entries(LAYOUT_ENTRIES, 0);

#[map(name = "RULE_COUNTERS")]
pub static RULE_COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(RULE_COUNTER_SLOTS, 0);

#[map(name = "VERDICTS")]
pub static VERDICT_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(VERDICT_SLOTS, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "EVENT_SETTINGS")]
pub static EVENT_SETTINGS: Array<EventSettings> = Array::with_max_entries(1, 0);

#[map(name = "EVENT_CLOCK")]
pub static EVENT_CLOCK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Adds one packet of `bytes` bytes to a per-CPU counter.
#[inline(always)]
pub fn count(counters: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is
        // valid for this CPU and no other CPU writes it; the program is not re-entered
        // on the same CPU while it runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
