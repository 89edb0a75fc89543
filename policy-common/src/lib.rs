//! What the kernel program and the daemon must agree on: map and program names, the byte
//! layout of every map key and value, and the size limits.
//!
//! Every map value here is `#[repr(C)]` with explicit padding and a size assertion, holds
//! no `bool` or Rust enum, and states the byte order of each field. Changing a layout is a
//! change of the kernel ABI between the daemon and a loaded program.
//!
//! # Classifier layout
//!
//! Rules are numbered in evaluation order (0 = first). Every field lookup yields a
//! [`RuleBitmap`] of the rules that field admits; the program ANDs the bitmaps and the
//! lowest set bit is the winning rule. All rule maps hold [`GENERATIONS`] generations:
//! the daemon writes the inactive one whole, then flips [`ACTIVE_MAP`]; the program reads
//! it once per packet, so every packet sees one complete ruleset.
#![no_std]

use core::mem::size_of;

/// Name of the XDP program in the eBPF object. Kernel object names keep 15 bytes, so
/// every name here is at most 15 bytes long.
pub const PROGRAM_NAME: &str = "policy_xdp";

/// Name of the port program in the eBPF object: for a policy a port table decides
/// ([`active::PORT_TABLE`]), on the same maps; it judges no other generation.
pub const PORTS_PROGRAM_NAME: &str = "policy_ports";

/// `Array<u32>` of one entry: the generation the program reads (`value % GENERATIONS`),
/// with [`active::PORT_TABLE`] set when that generation has a port table, and then the
/// port table's row of each transport class ([`active::row`]).
pub const ACTIVE_MAP: &str = "ACTIVE";
/// `Array<u32>`, index [`v4_table::l1_index`]: the first level of the IPv4 address
/// tables (see [`v4_table`]), by the address's top 16 bits.
pub const V4_L1_MAP: &str = "V4_L1";
/// `Array<u32>`, index [`v4_table::block_index`]: second-level blocks, by the third byte.
pub const V4_L2_MAP: &str = "V4_L2";
/// `Array<u32>`, index [`v4_table::block_index`]: third-level blocks, by the last byte.
pub const V4_L3_MAP: &str = "V4_L3";
/// `Array<RuleBitmap>`, index [`v4_table::class_index`]: address class → rules.
pub const V4_CLASSES_MAP: &str = "V4_CLASSES";
/// `Array<u32>`, index [`v6_table::l1_index`]: the first level of the IPv6 address
/// tables (see [`v6_table`]), by the address's top 16 bits.
pub const V6_L1_MAP: &str = "V6_L1";
/// `Array<u32>`, index [`v6_table::block_index`]: blocks of every further level, by
/// the address's next byte.
pub const V6_BLOCKS_MAP: &str = "V6_BLOCKS";
/// `Array<RuleBitmap>`, index [`v6_table::class_index`]: address class → rules.
pub const V6_CLASSES_MAP: &str = "V6_CLASSES";
/// `Array<u64>` of 16-bit entries four to a word, in rows of [`port_table::PORTS`]
/// entries, entry index [`port_table::index`] (its word and shift: [`port_table::word`]):
/// for a generation whose rules constrain nothing but the protocol and the destination
/// port (or ICMP type), the decision for each (transport class, destination port), so
/// that such a policy costs one lookup per packet instead of one per field. `ACTIVE`
/// names each class's row ([`active::row`]); a class without one has no rule, and
/// classes with the same decisions share one. Each generation has rows of its own
/// (sized to the policy by the daemon). Entry values: [`port_table::entry`], 0 = no
/// rule.
pub const PORT_TABLE_MAP: &str = "PORT_TABLE";
/// `Array<GenConfig>`, one entry per generation.
pub const CONFIG_MAP: &str = "CONFIG";
/// `Array<RuleInfo>`, index [`rule_index`] (interleaved by generation), sized by the
/// daemon to the policy's rules.
pub const RULES_MAP: &str = "RULES";
/// `Array<RuleBitmap>`, index [`field_bitmap::index`] (interleaved by generation): the
/// entries of [`field_bitmap`]. Without sets, the map holds the entries before
/// [`field_bitmap::SET_RULES`] only (sized by the daemon).
pub const FIELD_BITMAPS_MAP: &str = "FIELD_BITMAPS";
/// `Array<u64>`: destination port → port class, four 16-bit classes per entry (port `p`
/// is bits `16 * (p % 4)..` of entry `generation * PORT_CLASS_WORDS + p / 4`). For ICMP
/// packets the "destination port" is the ICMP type.
pub const DPORT_CLASSES_MAP: &str = "DPORT_CLASSES";
/// `Array<u64>`: source port → port class, laid out as [`DPORT_CLASSES_MAP`].
pub const SPORT_CLASSES_MAP: &str = "SPORT_CLASSES";
/// `Array<RuleBitmap>`: destination port class → rules, index
/// `generation * MAX_PORT_CLASSES + class`.
pub const DPORT_BITMAPS_MAP: &str = "DPORT_BITMAPS";
/// `Array<RuleBitmap>`: source port class → rules.
pub const SPORT_BITMAPS_MAP: &str = "SPORT_BITMAPS";
/// `LpmTrie<Ipv4Key, RuleBitmap>` over source addresses.
pub const SRC_V4_MAP: &str = "SRC_V4";
/// `LpmTrie<Ipv4Key, RuleBitmap>` over destination addresses.
pub const DST_V4_MAP: &str = "DST_V4";
/// `LpmTrie<Ipv6Key, RuleBitmap>` over source addresses.
pub const SRC_V6_MAP: &str = "SRC_V6";
/// `LpmTrie<Ipv6Key, RuleBitmap>` over destination addresses.
pub const DST_V6_MAP: &str = "DST_V6";
/// `PerCpuArray<Counter>` indexed by a rule's counter slot ([`RuleInfo::counter_slot`]).
pub const RULE_COUNTERS_MAP: &str = "RULE_COUNTERS";
/// `PerCpuArray<Counter>` indexed by [`Verdict`], [`VERDICT_SLOTS`] entries.
pub const VERDICT_COUNTERS_MAP: &str = "VERDICTS";
/// Entries of [`VERDICT_COUNTERS_MAP`]: room for verdicts to come, so that adding one
/// does not change the map's layout.
pub const VERDICT_SLOTS: u32 = 32;

/// `RingBuf` of [`DropEvent`]s: sampled summaries of dropped (and would-be-dropped)
/// packets, for `xdp-policy events`. Bounded: when nobody reads, new events are lost.
pub const EVENTS_MAP: &str = "EVENTS";
/// `Array<EventSettings>` of one entry; all zero (the default) means no events.
pub const EVENT_SETTINGS_MAP: &str = "EVENT_SETTINGS";
/// `PerCpuArray<u64>` of one entry: when this CPU last emitted an event (ns).
pub const EVENT_CLOCK_MAP: &str = "EVENT_CLOCK";
/// Size of the event ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// `LpmTrie<[u8; SET_KEY_LEN], SetEntry>`: the entries of every named set (`[[set]]`),
/// hosts and networks, IPv4 and IPv6, keyed by [`set_key`]. Not part of a generation:
/// run-time entries (`xdp-policy set add`) outlive policy reloads; which rules a set
/// feeds is per generation ([`GenConfig::set_ids`], [`field_bitmap::SET_RULES`]).
pub const SETS_MAP: &str = "SETS";
/// `PerCpuArray<RuleBitmap>` of two entries: the program's scratch space for the
/// source and destination bitmaps merged with their sets' rules.
pub const SET_SCRATCH_MAP: &str = "SET_SCRATCH";
/// `HashMap<[u32; 2], u64>`: counters of each set, keyed by the set's id and a
/// [`set_stat`] kind. Whoever changes a set (the daemon, `xdp-policy set`) counts adds,
/// deletes and expiries, holding the sets' lock; the daemon credits each set with the
/// hits the program counted in [`SET_HITS_MAP`] before a generation's slots change
/// hands. Pinned: the counts outlive restarts.
pub const SET_STATS_MAP: &str = "SET_STATS";
/// Entries of [`SET_STATS_MAP`]: the five [`set_stat`] entries of some 800 sets, and the
/// hit bases. A write past it fails and only the counter misses it.
pub const SET_STATS_ENTRIES: u32 = 4 * 1024;
/// `PerCpuArray<u64>`: hits the program counts per generation and set slot, at
/// `generation * 2 * MAX_SET_REFS + slot` (the slots of [`GenConfig::set_ids`]).
pub const SET_HITS_MAP: &str = "SET_HITS";
pub const SET_HIT_SLOTS: u32 = GENERATIONS * 2 * MAX_SET_REFS as u32;

/// `Array<LimitConfig>`, index [`rule_index`], as `RULES`: the token bucket of each
/// `action = "limit"` rule (`id` 0 for every other rule).
pub const LIMITS_MAP: &str = "LIMITS";
/// `LruHashMap<LimitKey, u64>`: the buckets, one per limit rule and source (or source
/// prefix, or one for the rule), each holding its theoretical arrival time (GCRA: the
/// `CLOCK_MONOTONIC` ns at which the bucket is full again). Not part of a generation:
/// keyed by the rule's [`LimitConfig::id`], so buckets outlive reloads that keep the
/// rule; pinned, so they outlive restarts. The least recently used bucket makes room.
pub const LIMIT_BUCKETS_MAP: &str = "LIMIT_BUCKETS";
/// Buckets the program keeps at most (`max_sources`, the default of the daemon's
/// setting): about 97 bytes of kernel memory each, allocated when the map is created.
pub const MAX_SOURCES: u32 = 1_000_000;
/// `PerCpuArray<Counter>` of `2 * RULE_COUNTER_SLOTS` entries: at a rule's counter slot,
/// the packets and bytes its limit dropped (or, in monitor mode, would have); at
/// `RULE_COUNTER_SLOTS + slot`, `packets` counts the buckets the rule created.
pub const LIMIT_STATS_MAP: &str = "LIMIT_STATS";
pub const LIMIT_STATS_SLOTS: u32 = 2 * RULE_COUNTER_SLOTS;
/// Fixed-point bits of [`LimitConfig::interval`].
pub const LIMIT_SHIFT: u32 = 16;
/// Largest packet a byte limit charges; a linear XDP frame is never larger.
pub const LIMIT_MAX_COST: u32 = 65_535;
/// Compare-and-swap attempts on a contended bucket before the packet counts as over
/// the limit (fail closed; two CPUs racing need at most two).
pub const LIMIT_CAS_TRIES: usize = 4;

/// Kinds of counters in [`SET_STATS_MAP`].
pub mod set_stat {
    /// Packets whose address (source or destination, as the rule's field says) the set
    /// held, as credited from [`super::SET_HITS_MAP`].
    pub const HITS: u32 = 0;
    /// Entries added (not those renewed).
    pub const ADDS: u32 = 1;
    /// Entries removed, other than by expiry.
    pub const DELETES: u32 = 2;
    /// Run-time entries removed because they expired.
    pub const EXPIRIES: u32 = 3;
    /// Not a counter: no run-time entry of the set expires before this
    /// (`CLOCK_BOOTTIME` ns; `u64::MAX`: none expires). Written by the sweep that walked
    /// the set and lowered by every add; missing means unknown. The daemon's sweep skips
    /// the walk while it is in the future.
    pub const EARLIEST: u32 = 4;
    pub const ALL: [u32; 5] = [HITS, ADDS, DELETES, EXPIRIES, EARLIEST];
    /// Key `[0, BASE + slot]`: the part of a [`super::SET_HITS_MAP`] slot's count
    /// already credited to the set that held the slot.
    pub const BASE: u32 = 0x100;
}

/// `Array<RuleBitmap>`: per generation, the rules a packet's transport class admits, and
/// for TCP its flags too, at [`tcp_flags::index`] (interleaved by generation) of
/// `tcp_flags::other(class)` for a class, `tcp_flags::UNKNOWN` for a TCP fragment, and
/// `tcp_flags::byte(flags)` for a TCP segment (see [`tcp_flags`]). One lookup for both
/// fields. A generation without a flags rule has the class entries only, and reads its
/// TCP segments and fragments there; without one in either generation, the map holds
/// the class entries only (sized by the daemon).
pub const TCP_FLAGS_MAP: &str = "TCP_FLAGS";

/// `Array<u32>` of [`LAYOUT_ENTRIES`]: at 0, the [`LAYOUT_VERSION`] of the maps pinned
/// beside it (the program does not read it). Pins without it are layout 1.
pub const LAYOUT_MAP: &str = "LAYOUT";
pub const LAYOUT_ENTRIES: u32 = 4;
/// The version of the maps' layout: what each map holds and how it is keyed. A daemon
/// that finds an older layout pinned migrates it in place; one that finds a newer one
/// refuses it. Bump it whenever a map's meaning changes, even if its sizes do not.
/// 1: everything up to the release that added this map; 2: `LIMIT_BUCKETS` sized to the
/// policy (one entry without a limit rule), `SET_STATS` not preallocated, and this map;
/// 3: `PORT_TABLE` in rows named by `ACTIVE` ([`active::row`]), and `LIMITS` and
/// `LIMIT_STATS` of one entry without a limit rule, and the IPv6 address tables;
/// 4: the address tables' blocks and classes interleaved by generation and field
/// ([`v4_table::block_index`], [`v4_table::class_index`], the same for IPv6), so that
/// their maps are sized to the policy, and IPv4 fields without IPv4 prefixes read
/// class 0 ([`field::SRC_V4_DEFAULT_ONLY`]); the port classes' bitmaps interleaved by
/// generation ([`port_bitmap_index`]), and sized as well; the first levels' entries
/// 16 bits each, four to a word ([`v4_table::l1_word`]);
/// 5: [`MAX_RULES`] 4,096, so every [`RuleBitmap`] has 64 words and a summary word; the
/// sets' rules by combination of sets ([`field_bitmap::set_rules`]); `FIELD_BITMAPS`,
/// `TCP_FLAGS`, `RULES` and `LIMITS` interleaved by generation and sized (classes first
/// in `TCP_FLAGS`; [`rule_index`]); twice as many counter slots (and
/// [`LIMIT_STATS_MAP`]'s bucket counts from the new [`RULE_COUNTER_SLOTS`] on); the port
/// table's entries with 14-bit slots and a verdict code ([`port_table::entry`]).
pub const LAYOUT_VERSION: u32 = 5;

/// Every map the program declares, for checks that the built object carries them all.
pub const MAP_NAMES: [&str; 34] = [
    ACTIVE_MAP,
    PORT_TABLE_MAP,
    V4_L1_MAP,
    V4_L2_MAP,
    V4_L3_MAP,
    V4_CLASSES_MAP,
    V6_L1_MAP,
    V6_BLOCKS_MAP,
    V6_CLASSES_MAP,
    CONFIG_MAP,
    RULES_MAP,
    FIELD_BITMAPS_MAP,
    DPORT_CLASSES_MAP,
    SPORT_CLASSES_MAP,
    DPORT_BITMAPS_MAP,
    SPORT_BITMAPS_MAP,
    SRC_V4_MAP,
    DST_V4_MAP,
    SRC_V6_MAP,
    DST_V6_MAP,
    RULE_COUNTERS_MAP,
    VERDICT_COUNTERS_MAP,
    EVENTS_MAP,
    EVENT_SETTINGS_MAP,
    EVENT_CLOCK_MAP,
    SETS_MAP,
    SET_SCRATCH_MAP,
    SET_STATS_MAP,
    SET_HITS_MAP,
    TCP_FLAGS_MAP,
    LIMITS_MAP,
    LIMIT_BUCKETS_MAP,
    LIMIT_STATS_MAP,
    LAYOUT_MAP,
];

/// Rules per policy: one bit each in a [`RuleBitmap`].
pub const MAX_RULES: usize = 4096;
/// 64-bit words in a [`RuleBitmap`].
pub const BITMAP_WORDS: usize = MAX_RULES / 64;
/// Rule generations kept in every rule map.
pub const GENERATIONS: u32 = 2;

/// The index of `entry` of `generation` in a map interleaved by generation, so that a
/// map of `n * GENERATIONS` entries holds entries 0 to n - 1 of both, and a map sized
/// to a policy serves both generations: `RULES`, `LIMITS`, `FIELD_BITMAPS`, `TCP_FLAGS`,
/// `DPORT_BITMAPS` and `SPORT_BITMAPS`.
pub const fn interleaved(generation: u32, entry: u32) -> u32 {
    entry * GENERATIONS + generation
}

/// The index of `rule` of `generation` in `RULES` and `LIMITS` ([`interleaved`]).
pub const fn rule_index(generation: u32, rule: u32) -> u32 {
    interleaved(generation, rule)
}
/// The address tables' shares of their maps: one per generation and address field.
pub const REGIONS: u32 = GENERATIONS * 2;
/// Distinct port classes per port field: N rules with one range each cut the port space
/// into at most 2N + 1 classes.
pub const MAX_PORT_CLASSES: u32 = 16384;
const _: () = assert!(MAX_PORT_CLASSES > 2 * MAX_RULES as u32, "a range per rule always fits");
/// Entries of a port-class map per generation (four ports per entry).
pub const PORT_CLASS_WORDS: u32 = (1 << 16) / 4;

/// Index of (generation, class) in `DPORT_BITMAPS` or `SPORT_BITMAPS` ([`interleaved`]).
pub const fn port_bitmap_index(generation: u32, class: u32) -> u32 {
    interleaved(generation, class)
}
/// Prefixes per address field and IP version (src IPv4, dst IPv4, src IPv6, dst IPv6).
/// The tries allocate entries as they are inserted (BPF_F_NO_PREALLOC), so the limit
/// costs no memory until it is used.
pub const MAX_PREFIXES: u32 = 1_048_576;
/// Counter slots: a rule keeps its slot across reloads while it is unchanged, and the
/// old and the new generation may use different slots at once.
pub const RULE_COUNTER_SLOTS: u32 = 2 * MAX_RULES as u32;

/// Sets one address field of a policy may name (`src` and `dst` each): the program
/// looks the packet's address up in each.
pub const MAX_SET_REFS: usize = 4;
const _: () = assert!((2 * MAX_SET_REFS).is_power_of_two(), "the program masks set slots");
/// Entries of [`SETS_MAP`], all sets together. The trie allocates an entry when it is
/// inserted, so the limit costs no memory until it is used.
pub const MAX_SET_ENTRIES: u32 = 4 * 1024 * 1024;
/// Data bytes of a [`SETS_MAP`] key: the set's id (4 bytes, big-endian), the IP
/// version (4 or 6), three zero bytes, then 16 address bytes (IPv4 in the first 4,
/// the rest zero). The trie's prefix length counts the 64 bits before the address.
pub const SET_KEY_LEN: usize = 24;
/// Bits of a [`SETS_MAP`] key before the address.
pub const SET_KEY_PREFIX_BITS: u32 = 64;
/// Expired entries a lookup steps over to the longest prefix above them, in case the
/// daemon has not removed them yet.
pub const SET_EXPIRED_STEPS: usize = 4;

/// The data of a [`SETS_MAP`] key.
pub const fn set_key(id: u32, version: u8, addr: [u8; 16]) -> [u8; SET_KEY_LEN] {
    let mut key = [0; SET_KEY_LEN];
    let id = id.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        key[i] = id[i];
        i += 1;
    }
    key[4] = version;
    let mut i = 0;
    while i < 16 {
        key[8 + i] = addr[i];
        i += 1;
    }
    key
}

/// Bits of [`SetEntry::origin`].
pub mod set_origin {
    /// Listed in one of the set's `files`: replaced when the policy is reloaded, never
    /// expires.
    pub const FILE: u32 = 1 << 0;
    /// Added at run time (`xdp-policy set add`, fail2ban, CrowdSec).
    pub const RUNTIME: u32 = 1 << 1;
    /// Added by the daemon for a CrowdSec decision: removed when CrowdSec deletes the
    /// decision (an entry added again by hand loses the mark, and stays).
    pub const CROWDSEC: u32 = 1 << 2;
}

/// A set entry's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetEntry {
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`) from which the entry no
    /// longer matches; 0: never expires.
    pub expires_ns: u64,
    /// The prefix length of the entry's own key ([`SET_KEY_PREFIX_BITS`] + the network's
    /// length): past an expired entry, the lookup tries the prefixes above it.
    pub prefix_len: u32,
    /// [`set_origin`] bits.
    pub origin: u32,
}

const _: () = assert!(size_of::<SetEntry>() == 16);

/// The parser's bounds (see `policy-ebpf/src/parse.rs`): a packet whose headers go past
/// one of them is unparsable ([`Verdict::DropUnparsable`] / [`Verdict::PassUnparsable`],
/// by the policy's `unparsable` setting), never passed unjudged. Real traffic stays far
/// inside them: QinQ has two tags, IPv6 packets seldom carry more than three extension
/// headers.
///
/// VLAN tags (802.1Q or 802.1ad, any VID, in any order) walked before the EtherType.
pub const MAX_VLAN_TAGS: usize = 8;
/// IPv6 extension headers walked before the transport header.
pub const MAX_IPV6_EXT_HEADERS: usize = 32;
/// Bytes from the start of the IPv6 header to the start of the transport header: the
/// IPv6 minimum MTU, the most a first fragment is sure to carry, and every first
/// fragment must carry the whole header chain (RFC 8200 §5, RFC 7112).
pub const MAX_IPV6_HEADER_CHAIN: usize = 1280;

/// XDP return codes (`enum xdp_action` of the kernel UAPI), for userspace that reads
/// them back from BPF_PROG_TEST_RUN. The kernel program uses aya's bindings and asserts
/// they are equal.
pub mod xdp_action {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
}

/// One bit per rule: bit `r % 64` of word `r / 64` stands for rule `r`; bit `w` of
/// `summary` is set when word `w` is not zero. Past the first 1,024 rules the program
/// reads a packet's bitmaps only up to the last word their summaries have in common.
/// Every bitmap written to a map must have its summary right: build them with
/// [`RuleBitmap::set`], [`RuleBitmap::clear`], [`RuleBitmap::union`] or
/// [`RuleBitmap::from_words`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleBitmap {
    /// Native byte order.
    pub words: [u64; BITMAP_WORDS],
    /// Native byte order: the words that are not zero.
    pub summary: u64,
}

const _: () = assert!(size_of::<RuleBitmap>() == 8 * BITMAP_WORDS + 8);
const _: () = assert!(BITMAP_WORDS <= 64, "one summary bit per word");

impl RuleBitmap {
    pub const EMPTY: Self = Self { words: [0; BITMAP_WORDS], summary: 0 };

    /// The bitmap of `words`, with its summary.
    pub const fn from_words(words: [u64; BITMAP_WORDS]) -> Self {
        let mut summary = 0;
        let mut w = 0;
        while w < BITMAP_WORDS {
            if words[w] != 0 {
                summary |= 1 << w;
            }
            w += 1;
        }
        Self { words, summary }
    }

    pub fn set(&mut self, rule: usize) {
        self.words[rule / 64] |= 1 << (rule % 64);
        self.summary |= 1 << (rule / 64);
    }

    pub fn clear(&mut self, rule: usize) {
        self.words[rule / 64] &= !(1 << (rule % 64));
        if self.words[rule / 64] == 0 {
            self.summary &= !(1 << (rule / 64));
        }
    }

    /// Adds the rules of `other`.
    pub fn union(&mut self, other: &Self) {
        for (w, o) in self.words.iter_mut().zip(other.words) {
            *w |= o;
        }
        self.summary |= other.summary;
    }

    pub fn contains(&self, rule: usize) -> bool {
        self.words[rule / 64] & (1 << (rule % 64)) != 0
    }

    /// The lowest rule in both bitmaps.
    pub fn first_common(&self, other: &Self) -> Option<usize> {
        self.words.iter().zip(other.words.iter()).enumerate().find_map(|(i, (a, b))| {
            let w = a & b;
            (w != 0).then(|| i * 64 + w.trailing_zeros() as usize)
        })
    }
}

/// The transport classes the protocol field distinguishes; index into the field bitmaps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Class {
    Tcp = 0,
    Udp = 1,
    /// ICMP over IPv4.
    Icmp = 2,
    /// ICMPv6 over IPv6.
    Icmpv6 = 3,
    /// Any other protocol (and ICMP over the wrong IP version).
    Other = 4,
}

impl L4Class {
    pub const COUNT: u32 = 5;
    pub const ALL: [Self; Self::COUNT as usize] =
        [Self::Tcp, Self::Udp, Self::Icmp, Self::Icmpv6, Self::Other];

    /// The class of IP protocol `proto` (IANA numbers) over IPv6 (`v6`) or IPv4: ICMP
    /// belongs to IPv4 and ICMPv6 to IPv6; over the other version each is `Other`.
    #[inline(always)]
    pub const fn of(proto: u8, v6: bool) -> Self {
        match (proto, v6) {
            (ip_proto::TCP, _) => Self::Tcp,
            (ip_proto::UDP, _) => Self::Udp,
            (ip_proto::ICMP, false) => Self::Icmp,
            (ip_proto::ICMPV6, true) => Self::Icmpv6,
            _ => Self::Other,
        }
    }
}

/// IP protocol numbers (IANA) the classifier tells apart.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Per generation, the entries of the field-bitmap map after the [`L4Class`] ones.
pub mod field_bitmap {
    use super::L4Class;

    /// Every rule of the generation: stands in for a field no rule constrains.
    pub const ALL_RULES: u32 = L4Class::COUNT;
    /// Rules without a destination port (or ICMP type) constraint: what a non-first
    /// fragment, which has no ports, can match in that field.
    pub const DPORT_UNCONSTRAINED: u32 = L4Class::COUNT + 1;
    /// Rules without a source port constraint.
    pub const SPORT_UNCONSTRAINED: u32 = L4Class::COUNT + 2;
    /// The first of 2 × [`SET_COMBINATIONS`] entries: at [`set_rules`]`(field, sets)`,
    /// the rules naming any of the field's sets in `sets` (bit `k`: the set
    /// `GenConfig::set_ids[field * MAX_SET_REFS + k]`). An address in those sets admits
    /// them, whatever its address class admits: the program merges one bitmap into the
    /// address's, however many of the field's sets hold it.
    pub const SET_RULES: u32 = L4Class::COUNT + 3;
    /// Combinations of one field's sets.
    pub const SET_COMBINATIONS: u32 = 1 << super::MAX_SET_REFS;
    /// Entries per generation.
    pub const PER_GENERATION: u32 = SET_RULES + 2 * SET_COMBINATIONS;

    /// The map index of `entry` of `generation` ([`super::interleaved`]).
    pub const fn index(generation: u32, entry: u32) -> u32 {
        super::interleaved(generation, entry)
    }

    /// The entry of the rules naming the sets `sets` of `field` (0 `src`, 1 `dst`).
    pub const fn set_rules(field: u32, sets: u32) -> u32 {
        SET_RULES + field * SET_COMBINATIONS + sets % SET_COMBINATIONS
    }
}

/// Bits of the [`ACTIVE_MAP`] value besides the generation. They are multiples of
/// [`GENERATIONS`], so `value % GENERATIONS` stays the generation.
pub mod active {
    use super::L4Class;

    /// The active generation has a port table ([`super::PORT_TABLE_MAP`]) and the
    /// program decides non-fragments with it.
    pub const PORT_TABLE: u32 = 1 << 8;
    /// Where the rows of the transport classes start: 4 bits each, in [`L4Class`] order.
    pub const ROWS_SHIFT: u32 = 12;
    /// Rows the port table can have: a row field holds 0 (no row) or a row + 1.
    pub const MAX_ROWS: u32 = 15;

    /// The bits of `ACTIVE` naming the port table's row of `class` (`None`: the class
    /// has no row, no rule decides its packets).
    pub const fn row(class: L4Class, row: Option<u32>) -> u32 {
        match row {
            Some(row) => (row + 1) << (ROWS_SHIFT + 4 * class as u32),
            None => 0,
        }
    }

    /// The row of `class` in `ACTIVE` value `value`, + 1 (0: none).
    pub const fn row_of(value: u32, class: u32) -> u32 {
        (value >> (ROWS_SHIFT + 4 * class)) & 0xf
    }

    const _: () = assert!(
        ROWS_SHIFT + 4 * L4Class::COUNT <= 32 && (1 << ROWS_SHIFT) > PORT_TABLE,
        "the rows fit above the flags"
    );
    const _: () = assert!(
        MAX_ROWS >= super::GENERATIONS * L4Class::COUNT,
        "every class of both generations can have a row"
    );
}

/// Layout of [`PORT_TABLE_MAP`]: 16-bit entries, four to a `u64` word (an array's values
/// take 8 bytes each in the kernel, whatever their size: 4-byte entries took twice the
/// memory and four to a word a quarter).
pub mod port_table {
    use super::{L4Class, Verdict};

    /// Destination ports (or ICMP types) per transport class: the entries of a row.
    pub const PORTS: u32 = 1 << 16;
    /// Entries per word.
    pub const PER_WORD: u32 = 4;
    /// Words per row.
    pub const WORDS_PER_ROW: u32 = PORTS / PER_WORD;
    /// Rows per generation at most: one per class.
    pub const MAX_ROWS_PER_GENERATION: u32 = L4Class::COUNT;

    /// Index of the entry of `port` in row `row`.
    pub const fn index(row: u32, port: u16) -> u32 {
        row * PORTS + port as u32
    }

    /// The word holding entry `index`, and the entry's shift in it.
    pub const fn word(index: u32) -> (u32, u32) {
        (index / PER_WORD, 16 * (index % PER_WORD))
    }

    /// Bits of an entry's counter slot (the low bits); the two above them hold its
    /// verdict's code ([`code`]), never 0.
    pub const SLOT_BITS: u32 = 14;

    /// The codes of the rule verdicts in an entry.
    pub const PASS: u16 = 1;
    pub const DROP: u16 = 2;
    pub const MONITOR: u16 = 3;

    /// The code of a rule verdict in an entry; `None` for a verdict no port table holds.
    pub const fn code(verdict: Verdict) -> Option<u16> {
        match verdict {
            Verdict::PassRule => Some(PASS),
            Verdict::DropRule => Some(DROP),
            Verdict::MonitorRule => Some(MONITOR),
            _ => None,
        }
    }

    /// The entry of a packet that rule with counter slot `slot` decides as `verdict`
    /// (a rule's verdict: pass, drop or monitor; any other is written as drop).
    pub const fn entry(verdict: Verdict, slot: u16) -> u16 {
        let code = match code(verdict) {
            Some(code) => code,
            None => DROP,
        };
        code << SLOT_BITS | (slot & ((1 << SLOT_BITS) - 1))
    }

    /// Verdict code ([`code`]) and counter slot of a non-zero entry.
    pub const fn decode(entry: u32) -> (u32, u32) {
        ((entry >> SLOT_BITS) & 0x3, entry & ((1 << SLOT_BITS) - 1))
    }
}

const _: () = assert!(
    RULE_COUNTER_SLOTS <= 1 << port_table::SLOT_BITS,
    "port table entries hold every counter slot"
);

/// Bits of [`GenConfig::fields`]: the fields at least one rule constrains. The program
/// skips the lookups of the others.
pub mod field {
    /// Not read by the program (the class is always looked up, with TCP's flags, in
    /// [`super::TCP_FLAGS_MAP`]); it still tells the port table whether rules differ by
    /// protocol.
    pub const L4: u32 = 1 << 0;
    pub const DPORT: u32 = 1 << 1;
    pub const SPORT: u32 = 1 << 2;
    pub const SRC: u32 = 1 << 3;
    pub const DST: u32 = 1 << 4;
    /// IPv4 source addresses are looked up in the address tables ([`super::v4_table`]),
    /// not in the `SRC_V4` trie.
    pub const SRC_V4_TABLE: u32 = 1 << 5;
    /// The same for destination addresses.
    pub const DST_V4_TABLE: u32 = 1 << 6;
    /// No rule names an IPv6 source network: every IPv6 source admits the rules of the
    /// `/0`, which the program reads as class 0 of the IPv6 address tables
    /// (`V6_CLASSES`), no walk needed.
    pub const SRC_V6_DEFAULT_ONLY: u32 = 1 << 7;
    /// The same for IPv6 destinations.
    pub const DST_V6_DEFAULT_ONLY: u32 = 1 << 8;
    /// IPv6 source addresses are looked up in the address tables ([`super::v6_table`]),
    /// not in the `SRC_V6` trie.
    pub const SRC_V6_TABLE: u32 = 1 << 11;
    /// The same for IPv6 destination addresses.
    pub const DST_V6_TABLE: u32 = 1 << 12;
    /// No rule names an IPv4 source network: every IPv4 source admits the rules of the
    /// `/0`, which the program reads as class 0 of the IPv4 address tables
    /// (`V4_CLASSES`), no walk needed.
    pub const SRC_V4_DEFAULT_ONLY: u32 = 1 << 13;
    /// The same for IPv4 destinations.
    pub const DST_V4_DEFAULT_ONLY: u32 = 1 << 14;
    /// A rule matches TCP flags (the class-and-flags lookup in
    /// [`super::TCP_FLAGS_MAP`] is done whatever the policy; this says the policy is no
    /// longer decided by protocol and port alone).
    pub const TCP_FLAGS: u32 = 1 << 9;
    /// A rule limits (`action = "limit"`): its decision is not a plain verdict, so the
    /// port table is not used. Not read by the program.
    pub const LIMIT: u32 = 1 << 10;
}

/// TCP flags (the 14th byte of the TCP header) and the layout of [`TCP_FLAGS_MAP`].
pub mod tcp_flags {
    use super::L4Class;

    pub const FIN: u8 = 1 << 0;
    pub const SYN: u8 = 1 << 1;
    pub const RST: u8 = 1 << 2;
    pub const PSH: u8 = 1 << 3;
    pub const ACK: u8 = 1 << 4;
    pub const URG: u8 = 1 << 5;
    pub const ECE: u8 = 1 << 6;
    pub const CWR: u8 = 1 << 7;
    /// The names policies use, in bit order.
    pub const NAMES: [(&str, u8); 8] = [
        ("fin", FIN),
        ("syn", SYN),
        ("rst", RST),
        ("psh", PSH),
        ("ack", ACK),
        ("urg", URG),
        ("ece", ECE),
        ("cwr", CWR),
    ];
    /// The entry of a packet of a transport class: that class's rules (for TCP, those
    /// matching no flags). The first entries: all a generation without a flags rule has.
    pub const fn other(class: L4Class) -> u32 {
        class as u32
    }
    /// The entry of a TCP packet whose flags are unknown (a non-first fragment): the
    /// TCP rules that match no flags.
    pub const UNKNOWN: u32 = L4Class::COUNT;
    /// The entry of a TCP segment with flags byte `flags`.
    pub const fn byte(flags: u8) -> u32 {
        UNKNOWN + 1 + flags as u32
    }
    /// Entries per generation: one per class, [`UNKNOWN`], then one per flags byte.
    pub const PER_GENERATION: u32 = UNKNOWN + 1 + 256;
    /// Entries per generation without a flags rule: the classes'.
    pub const CLASSES_ONLY: u32 = L4Class::COUNT;

    /// The map index of `entry` of `generation` ([`super::interleaved`]).
    pub const fn index(generation: u32, entry: u32) -> u32 {
        super::interleaved(generation, entry)
    }
}

/// IPv4 address tables: a three-level array lookup (16, 8 and 8 bits of the address)
/// that ends in an address class, whose bitmap holds the rules the address's longest
/// matching prefix admits; what the LPM trie gives, in two to four array loads instead
/// of a trie walk. Used for a field whose prefixes fit in [`BLOCKS`] blocks per level
/// and [`CLASSES`] classes; larger sets stay in the tries.
///
/// An entry of the first two levels is a class, or [`BLOCK`] | the index of a block of
/// the next level, or (second level only) a [`HOST`] entry; a third-level entry is a
/// class. Fields: 0 = source, 1 = destination.
pub mod v4_table {
    /// Blocks of 256 entries per level, field and generation.
    pub const BLOCKS: u32 = 1024;
    /// Address classes per field and generation.
    pub const CLASSES: u32 = 4096;
    /// An entry that refers to a block of the next level.
    pub const BLOCK: u32 = 1 << 31;
    /// A second-level entry for a /24 that holds one address of its own class (a host
    /// route) and one class for the rest: [`host`] packs both, so a host route costs one
    /// entry instead of a third-level block of 256.
    pub const HOST: u32 = 1 << 30;
    /// Classes a [`HOST`] entry can name (11 bits each).
    pub const HOST_CLASSES: u32 = 1 << 11;

    /// A [`HOST`] entry: address byte `byte` has class `host`, the others `rest`.
    pub const fn host(byte: u32, host: u32, rest: u32) -> u32 {
        HOST | byte << 22 | host << 11 | rest
    }

    /// The class of last byte `byte` under a [`HOST`] entry.
    pub const fn host_class(entry: u32, byte: u32) -> u32 {
        if (entry >> 22) & 0xff == byte { (entry >> 11) & 0x7ff } else { entry & 0x7ff }
    }
    /// First-level entries per field and generation.
    pub const L1_ENTRIES: u32 = 1 << 16;
    /// First-level entries are 16 bits, four to a word of `V4_L1` (the kernel holds an
    /// array's values in 8 bytes each, whatever their size: 512 KiB for all four
    /// shares instead of 2 MiB). A class (below [`CLASSES`]) or [`L1_BLOCK`] | a block
    /// (below [`BLOCKS`]).
    pub const L1_PER_WORD: u32 = 4;
    /// A first-level entry that refers to a block: [`BLOCK`] in the 16-bit form.
    pub const L1_BLOCK: u32 = 1 << 15;
    const _: () = assert!(CLASSES <= L1_BLOCK && BLOCKS <= L1_BLOCK);

    /// Index of (generation, field, top 16 bits) among the first-level entries: entry
    /// `i` is bits `16 * (i % 4)` up of word `i / 4` ([`l1_word`]). Field first, so
    /// that a policy with tables for the source alone needs the first half.
    pub const fn l1_index(generation: u32, field: u32, top: u32) -> u32 {
        (field * super::GENERATIONS + generation) * L1_ENTRIES + top
    }

    /// The word of `V4_L1` (or `V6_L1`) that holds first-level entry `index`, and the
    /// shift of its 16 bits.
    pub const fn l1_word(index: u32) -> (u32, u32) {
        (index / L1_PER_WORD, 16 * (index % L1_PER_WORD))
    }

    /// The entry (as the other levels write it: [`BLOCK`] | block, or a class) of a
    /// first-level entry's 16 bits.
    pub const fn l1_entry(bits: u32) -> u32 {
        (bits & !L1_BLOCK) | (bits & L1_BLOCK) << 16
    }

    /// The 16 bits of first-level entry `entry`; the inverse of [`l1_entry`].
    pub const fn l1_bits(entry: u32) -> u16 {
        ((entry & !BLOCK) | (entry & BLOCK) >> 16) as u16
    }

    /// Index of (generation, field, block, byte) in `V4_L2` or `V4_L3`: the blocks of
    /// one number are side by side for every generation and field ([`super::REGIONS`]),
    /// so that a map of `n * REGIONS * 256` entries holds blocks 0 to n - 1 of each.
    pub const fn block_index(generation: u32, field: u32, block: u32, byte: u32) -> u32 {
        (block * super::REGIONS + generation * 2 + field) * 256 + byte
    }

    /// Index of (generation, field, class) in `V4_CLASSES`; interleaved as the blocks
    /// are, so that the classes 0 of fields without IPv4 prefixes are the first four
    /// entries.
    pub const fn class_index(generation: u32, field: u32, class: u32) -> u32 {
        class * super::REGIONS + generation * 2 + field
    }
}

/// IPv6 address tables: the IPv6 form of [`v4_table`]. A first level by the top 16 bits
/// of the address, then a block of 256 entries by each further byte, as deep as the
/// longest prefix under those bits needs, ending in an address class: one array load
/// for an address no prefix longer than /16 covers, 1 + (length - 16) / 8 rounded up
/// for one inside a prefix. Used for a field whose IPv6 prefixes fit in [`BLOCKS`]
/// blocks and [`CLASSES`] classes; larger sets stay in the tries.
///
/// An entry is a class, or [`BLOCK`] | the index of a block (in the field's and
/// generation's share of `V6_BLOCKS`, whatever its level). Fields: 0 = source, 1 =
/// destination.
pub mod v6_table {
    /// First-level entries per field and generation.
    pub const L1_ENTRIES: u32 = 1 << 16;
    /// Blocks of 256 entries per field and generation, all levels together.
    pub const BLOCKS: u32 = 512;
    /// Address classes per field and generation. Class 0 is the `/0`'s: all a field
    /// without IPv6 prefixes has (`field::SRC_V6_DEFAULT_ONLY`), read without a walk.
    pub const CLASSES: u32 = 1024;
    /// Entries of `V6_CLASSES` per class: one per generation and field, so that the
    /// classes 0 a policy without IPv6 tables needs are the first four entries.
    pub const CLASS_STRIDE: u32 = super::REGIONS;
    /// An entry that refers to a block.
    pub const BLOCK: u32 = 1 << 31;
    /// The levels under the first: one per byte after the top two.
    pub const LEVELS: usize = 14;

    /// Index of (generation, field, top 16 bits) among the first-level entries, which
    /// `V6_L1` packs as `V4_L1` does ([`super::v4_table::l1_word`]); field first, as
    /// there.
    pub const fn l1_index(generation: u32, field: u32, top: u32) -> u32 {
        (field * super::GENERATIONS + generation) * L1_ENTRIES + top
    }
    const _: () =
        assert!(CLASSES <= super::v4_table::L1_BLOCK && BLOCKS <= super::v4_table::L1_BLOCK);
    const _: () = assert!(BLOCK == super::v4_table::BLOCK);

    /// Index of (generation, field, block, byte) in `V6_BLOCKS`, interleaved as
    /// [`super::v4_table::block_index`].
    pub const fn block_index(generation: u32, field: u32, block: u32, byte: u32) -> u32 {
        (block * super::REGIONS + generation * 2 + field) * 256 + byte
    }

    /// Index of (generation, field, class) in `V6_CLASSES`.
    pub const fn class_index(generation: u32, field: u32, class: u32) -> u32 {
        class * CLASS_STRIDE + generation * 2 + field
    }
}

/// What a verdict-deciding entry does with the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass = 0,
    Drop = 1,
    /// Rules only: the rule's token bucket ([`LIMITS_MAP`]) passes the packet or drops it.
    Limit = 2,
}

impl TryFrom<u8> for Action {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(Self::Pass),
            1 => Ok(Self::Drop),
            2 => Ok(Self::Limit),
            other => Err(other),
        }
    }
}

/// How non-first fragments, which carry no ports, are treated.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentAction {
    /// Classified by the rules, as a packet that matches no port or ICMP type
    /// constraint: address- and protocol-only rules apply, then the default.
    Rules = 0,
    Pass = 1,
    Drop = 2,
}

impl TryFrom<u8> for FragmentAction {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(Self::Rules),
            1 => Ok(Self::Pass),
            2 => Ok(Self::Drop),
            other => Err(other),
        }
    }
}

/// Per-generation settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// Words of the rule bitmaps in use: `ceil(rules / 64)`, at most [`BITMAP_WORDS`].
    pub words: u32,
    /// [`field`] bits.
    pub fields: u32,
    /// [`Action`] when no rule matches.
    pub default_action: u8,
    /// 1: the default action only counts (`mode = "monitor"`), never drops.
    pub default_monitor: u8,
    /// [`FragmentAction`].
    pub fragments: u8,
    /// [`Action`] for an IP packet whose transport header cannot be located and read
    /// whole (see [`Verdict::DropUnparsable`]). Not affected by `default_monitor`.
    pub unparsable: u8,
    /// Sets the `src` field names: the first `src_sets` of [`Self::set_ids`].
    pub src_sets: u8,
    /// Sets the `dst` field names: `set_ids[MAX_SET_REFS..MAX_SET_REFS + dst_sets]`.
    pub dst_sets: u8,
    pub _pad2: u16,
    /// Ids of the sets (their [`set_key`] ids) the rules name, source ones then
    /// destination ones; unused slots are 0.
    pub set_ids: [u32; 2 * MAX_SET_REFS],
}

const _: () = assert!(size_of::<GenConfig>() == 48);

/// What a rule does when it wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// [`Action`].
    pub action: u8,
    /// 1: a `drop` only counts (`mode = "monitor"`), the packet passes.
    pub monitor: u8,
    pub _pad: u16,
    /// Index into [`RULE_COUNTERS_MAP`], stable while the rule is unchanged.
    pub counter_slot: u32,
}

const _: () = assert!(size_of::<RuleInfo>() == 8);

/// A limit rule's token bucket, in the generic cell rate algorithm's form: a bucket
/// holds one `u64`, the time at which it is full again (its theoretical arrival time,
/// TAT). A packet costing `c` tokens moves it to `max(TAT, now) + c * interval`, and is
/// over the limit when that is more than `tolerance` ahead of now.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitConfig {
    /// [`LimitKey::id`] of the rule's buckets, stable while the rule is unchanged; 0: not
    /// a limit rule.
    pub id: u32,
    /// [`limit_flags`].
    pub flags: u32,
    /// ns per token, shifted left by [`LIMIT_SHIFT`]. A token is a packet, or a byte
    /// with [`limit_flags::BYTES`].
    pub interval: u64,
    /// ns: the burst's worth of tokens (`burst * interval`).
    pub tolerance: u64,
    /// The bits of an IPv4 source that pick its bucket (network byte order); 0 with
    /// `per = "rule"`.
    pub v4_mask: u32,
    /// The same for an IPv6 source, word by word as in the packet.
    pub v6_mask: [u32; 4],
}

const _: () = assert!(size_of::<LimitConfig>() == 48);

/// [`LimitConfig::flags`].
pub mod limit_flags {
    /// Tokens are bytes (from the Ethernet header on), not packets.
    pub const BYTES: u32 = 1 << 0;
    /// One bucket per source (or source prefix): the key carries the IP version and
    /// the masked address. Without it the rule has one bucket.
    pub const PER_SOURCE: u32 = 1 << 1;
}

/// Key of [`LIMIT_BUCKETS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitKey {
    pub id: u32,
    /// 4 or 6 with [`limit_flags::PER_SOURCE`], else 0.
    pub version: u32,
    /// The source address masked by the rule's prefix, as in the packet (IPv4 in the
    /// first word); zero for a per-rule bucket.
    pub addr: [u32; 4],
}

const _: () = assert!(size_of::<LimitKey>() == 24);

/// Data bytes of an IPv4 trie key (after the 32-bit prefix length, which counts the
/// generation byte: a /24 of generation 1 is prefix length `8 + 24` over
/// `[1, a, b, c, d, 0, 0, 0]`). The address is in network byte order; the padding is zero.
pub const IPV4_KEY_LEN: usize = 8;
/// Data bytes of an IPv6 trie key: the generation, 16 address bytes, 3 zero bytes.
pub const IPV6_KEY_LEN: usize = 20;

/// The data of an IPv4 trie key.
pub const fn ipv4_key(generation: u8, addr: [u8; 4]) -> [u8; IPV4_KEY_LEN] {
    [generation, addr[0], addr[1], addr[2], addr[3], 0, 0, 0]
}

/// The data of an IPv6 trie key.
pub const fn ipv6_key(generation: u8, addr: [u8; 16]) -> [u8; IPV6_KEY_LEN] {
    let mut key = [0; IPV6_KEY_LEN];
    key[0] = generation;
    let mut i = 0;
    while i < 16 {
        key[1 + i] = addr[i];
        i += 1;
    }
    key
}

/// Bits of the generation byte at the start of every trie key.
pub const GENERATION_PREFIX_BITS: u32 = 8;

/// How drop events are sampled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSettings {
    /// At most one event per this many nanoseconds per CPU; 0 turns events off.
    pub interval_ns: u64,
}

const _: () = assert!(size_of::<EventSettings>() == 8);

/// A dropped (or, in monitor mode, would-be-dropped) packet, as sampled into
/// [`EVENTS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()`: nanoseconds since boot.
    pub time_ns: u64,
    /// The deciding rule's counter slot, or `u32::MAX` for a default or fragment verdict.
    pub counter_slot: u32,
    /// A [`Verdict`] as `u8`.
    pub verdict: u8,
    /// An [`L4Class`] as `u8`.
    pub l4_class: u8,
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: u8,
    /// Host byte order; 0 when the packet has no ports (ICMP type in `dst_port`).
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad2: u32,
    /// Network byte order; IPv4 in the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

const _: () = assert!(size_of::<DropEvent>() == 56);

/// Why the program passed or dropped a packet: the index into the verdict counters.
///
/// Every packet is counted under exactly one verdict.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Matched a rule whose action is `pass`.
    PassRule = 0,
    /// Matched a rule whose action is `drop`.
    DropRule = 1,
    /// Matched a `drop` rule in monitor mode: counted, passed.
    MonitorRule = 2,
    /// No rule matched; the default action is `pass`.
    PassDefault = 3,
    /// No rule matched; the default action is `drop`.
    DropDefault = 4,
    /// No rule matched; the default `drop` is in monitor mode: counted, passed.
    MonitorDefault = 5,
    /// Not IPv4 or IPv6 (ARP, LLDP, …): the EtherType after the last VLAN tag is neither
    /// IPv4, IPv6 nor a VLAN TPID.
    PassNotIp = 6,
    /// IPv6 neighbour discovery (ICMPv6 133–137) that no rule matched: never dropped by
    /// the default action, or a default-deny host would lose its neighbours.
    PassNeighbour = 7,
    /// A non-first fragment, passed by `fragments = "pass"`.
    PassFragment = 8,
    /// A non-first fragment, dropped by `fragments = "drop"`.
    DropFragment = 9,
    /// An IPv4 or IPv6 packet (after however many VLAN tags) whose transport header
    /// cannot be located and read whole: truncated or inconsistent headers, lengths that
    /// do not add up, a first fragment that splits the header chain, more than the
    /// parser's bounds of tags or extension headers. Never matched against a rule;
    /// passed by `unparsable = "pass"`.
    PassUnparsable = 10,
    /// The same, dropped by `unparsable = "drop"` (the default).
    DropUnparsable = 11,
    /// Matched a `limit` rule and its bucket had room: passed.
    PassLimit = 12,
    /// Matched a `limit` rule over its rate: dropped.
    DropLimit = 13,
    /// Matched a `limit` rule in monitor mode over its rate: counted, passed.
    MonitorLimit = 14,
}

impl Verdict {
    /// Number of verdicts, the size of the verdict counter map.
    pub const COUNT: u32 = 15;

    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::PassRule,
        Self::DropRule,
        Self::MonitorRule,
        Self::PassDefault,
        Self::DropDefault,
        Self::MonitorDefault,
        Self::PassNotIp,
        Self::PassNeighbour,
        Self::PassFragment,
        Self::DropFragment,
        Self::PassUnparsable,
        Self::DropUnparsable,
        Self::PassLimit,
        Self::DropLimit,
        Self::MonitorLimit,
    ];

    /// Stable name used in logs and output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassRule => "pass_rule",
            Self::DropRule => "drop_rule",
            Self::MonitorRule => "monitor_rule",
            Self::PassDefault => "pass_default",
            Self::DropDefault => "drop_default",
            Self::MonitorDefault => "monitor_default",
            Self::PassNotIp => "pass_not_ip",
            Self::PassNeighbour => "pass_neighbour",
            Self::PassFragment => "pass_fragment",
            Self::DropFragment => "drop_fragment",
            Self::PassUnparsable => "pass_unparsable",
            Self::DropUnparsable => "drop_unparsable",
            Self::PassLimit => "pass_limit",
            Self::DropLimit => "drop_limit",
            Self::MonitorLimit => "monitor_limit",
        }
    }

    /// Whether the program drops packets with this verdict.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Self::DropRule
                | Self::DropDefault
                | Self::DropFragment
                | Self::DropUnparsable
                | Self::DropLimit
        )
    }
}

impl TryFrom<u32> for Verdict {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        Self::ALL.get(value as usize).copied().ok_or(value)
    }
}

/// Value of the counter maps (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets, native byte order.
    pub packets: u64,
    /// Bytes of those packets as the program saw them (from the Ethernet header on).
    pub bytes: u64,
}

const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(Verdict::COUNT <= VERDICT_SLOTS);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): plain `repr(C)` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::RuleBitmap {}
    unsafe impl aya::Pod for super::GenConfig {}
    unsafe impl aya::Pod for super::RuleInfo {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::EventSettings {}
    unsafe impl aya::Pod for super::SetEntry {}
    unsafe impl aya::Pod for super::LimitConfig {}
    unsafe impl aya::Pod for super::LimitKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_all_is_indexed_by_discriminant() {
        for (i, verdict) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*verdict as usize, i);
            assert_eq!(Verdict::try_from(i as u32), Ok(*verdict));
        }
        assert_eq!(Verdict::try_from(Verdict::COUNT), Err(Verdict::COUNT));
    }

    #[test]
    fn l4_class_all_is_indexed_by_discriminant() {
        for (i, class) in L4Class::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
    }

    #[test]
    fn every_protocol_number_has_the_class_of_its_ip_version() {
        // IANA numbers written out, not the constants `of` uses.
        for proto in 0..=255u8 {
            for v6 in [false, true] {
                let expected = match (proto, v6) {
                    (6, _) => L4Class::Tcp,
                    (17, _) => L4Class::Udp,
                    (1, false) => L4Class::Icmp,
                    (58, true) => L4Class::Icmpv6,
                    _ => L4Class::Other,
                };
                assert_eq!(L4Class::of(proto, v6), expected, "protocol {proto}, IPv6 {v6}");
            }
        }
    }

    #[test]
    fn enums_round_trip_through_u8() {
        for action in [Action::Pass, Action::Drop, Action::Limit] {
            assert_eq!(Action::try_from(action as u8), Ok(action));
        }
        for f in [FragmentAction::Rules, FragmentAction::Pass, FragmentAction::Drop] {
            assert_eq!(FragmentAction::try_from(f as u8), Ok(f));
        }
        assert_eq!(Action::try_from(3), Err(3));
        assert_eq!(FragmentAction::try_from(3), Err(3));
    }

    #[test]
    fn names_fit_the_kernel_object_name_limit() {
        for name in MAP_NAMES.iter().chain([&PROGRAM_NAME, &PORTS_PROGRAM_NAME]) {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }

    #[test]
    fn bitmap_bits_and_first_common() {
        let mut a = RuleBitmap::EMPTY;
        let mut b = RuleBitmap::EMPTY;
        a.set(3);
        a.set(700);
        a.set(1023);
        b.set(700);
        b.set(1023);
        assert!(a.contains(700) && !a.contains(699));
        assert_eq!(a.first_common(&b), Some(700));
        assert_eq!(a.first_common(&RuleBitmap::EMPTY), None);
    }

    /// The summary names exactly the words that are not zero, however the bitmap was
    /// built: the program reads no other word.
    #[test]
    fn the_summary_follows_every_change() {
        let mut a = RuleBitmap::EMPTY;
        a.set(0);
        a.set(65);
        a.set(MAX_RULES - 1);
        assert_eq!(a.summary, 1 | 1 << 1 | 1 << (BITMAP_WORDS - 1));
        a.set(64);
        a.clear(65);
        assert_eq!(a.summary, 1 | 1 << 1 | 1 << (BITMAP_WORDS - 1), "rule 64 holds word 1");
        a.clear(64);
        assert_eq!(a.summary, 1 | 1 << (BITMAP_WORDS - 1), "word 1 empty");
        let mut b = RuleBitmap::EMPTY;
        b.set(200);
        b.union(&a);
        assert_eq!(b.summary, 1 | 1 << 3 | 1 << (BITMAP_WORDS - 1));
        // Whether the summary is the one of the words.
        let holds = |x: &RuleBitmap| RuleBitmap::from_words(x.words).summary == x.summary;
        assert!(holds(&a) && holds(&b));
        assert_eq!(RuleBitmap::from_words(b.words), b);
        let mut wrong = b;
        wrong.summary &= !1;
        assert!(!holds(&wrong));
    }

    /// Every counter slot and rule verdict round-trips through a port table entry, and
    /// no entry of a decided port is 0 (no rule).
    #[test]
    fn port_table_entries_hold_every_slot_and_verdict() {
        for verdict in [Verdict::PassRule, Verdict::DropRule, Verdict::MonitorRule] {
            for slot in [0, 1, 4095, 4096, RULE_COUNTER_SLOTS - 1] {
                let entry = port_table::entry(verdict, slot as u16);
                assert_ne!(entry, 0);
                let code = port_table::code(verdict).expect("a rule verdict") as u32;
                assert_eq!(port_table::decode(u32::from(entry)), (code, slot));
            }
        }
    }
}
