//! Applying a compiled [`Ruleset`] atomically: write the inactive generation whole (only
//! what differs from what that generation is known to hold), flip `ACTIVE`, wait until
//! no packet can still be reading the old generation, then commit. And checking that the
//! kernel still holds it: [`Generations::audit`] reads the active generation back and
//! compares it with the ruleset, [`Generations::repair`] rewrites the other generation
//! whole and flips to it.
//!
//! Pure logic: it drives a [`Maps`] implementation, the kernel's
//! (`dataplane::kernel::KernelMaps`) or an in-memory one in tests, which is how a failure
//! in the middle of an apply is tested. A write that fails leaves `ACTIVE` untouched, so
//! the ruleset in force stays in force.
//!
//! Nothing is trusted that this process did not write: a generation of maps it adopted
//! (pinned by an earlier daemon) is unknown until written, entry by entry: every entry a
//! ruleset needs is written the first time, whatever the map is thought to hold.

use std::collections::{BTreeMap, HashMap, HashSet};

use ipnet::{Ipv4Net, Ipv6Net};
use policy_common::{
    ACTIVE_MAP, Action, CONFIG_MAP, DPORT_BITMAPS_MAP, DPORT_CLASSES_MAP, DST_V4_MAP, DST_V6_MAP,
    FIELD_BITMAPS_MAP, GENERATION_PREFIX_BITS, GENERATIONS, GenConfig, IPV4_KEY_LEN, IPV6_KEY_LEN,
    L4Class, LIMITS_MAP, LimitConfig, MAX_RULES, PORT_CLASS_WORDS, PORT_TABLE_MAP, REGIONS,
    RULE_COUNTER_SLOTS, RULES_MAP, RuleBitmap, RuleInfo, SPORT_BITMAPS_MAP, SPORT_CLASSES_MAP,
    SRC_V4_MAP, SRC_V6_MAP, TCP_FLAGS_MAP, V4_CLASSES_MAP, V4_L1_MAP, V4_L2_MAP, V4_L3_MAP,
    V6_BLOCKS_MAP, V6_CLASSES_MAP, V6_L1_MAP, Verdict, active, field, field_bitmap, ipv4_key,
    ipv6_key, port_bitmap_index, port_table, rule_index, tcp_flags, v4_table, v6_table,
};

use super::migrate::TableRoom;
use crate::policy::{BitmapPool, PortField, Ruleset, V4Table, V6Table};

/// The two port fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortFieldId {
    Dst,
    Src,
}

/// The two address fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrFieldId {
    Src,
    Dst,
}

/// The levels of the IPv4 address tables under the first (`V4_L2`, `V4_L3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum V4Level {
    L2,
    L3,
}

/// The array maps of `u32` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryMap {
    V4Table(V4Level),
    V6Blocks,
}

/// The address tables' first levels: `u64` words of four 16-bit entries
/// (`policy_common::v4_table::l1_word`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WordMap {
    V4L1,
    V6L1,
}

impl WordMap {
    fn name(self) -> &'static str {
        match self {
            Self::V4L1 => V4_L1_MAP,
            Self::V6L1 => V6_L1_MAP,
        }
    }
}

/// The array maps of [`RuleBitmap`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BitmapMap {
    Fields,
    TcpFlags,
    Ports(PortFieldId),
    V4Classes,
    V6Classes,
}

impl PortFieldId {
    fn classes_map(self) -> &'static str {
        match self {
            Self::Dst => DPORT_CLASSES_MAP,
            Self::Src => SPORT_CLASSES_MAP,
        }
    }

    /// The field of `ruleset`.
    pub fn of(self, ruleset: &Ruleset) -> &PortField {
        match self {
            Self::Dst => &ruleset.dport,
            Self::Src => &ruleset.sport,
        }
    }

    /// The port fields whose classes the program reads for `ruleset`: those a rule
    /// constrains, unless a port table decides its packets.
    pub fn read_by(ruleset: &Ruleset) -> Vec<Self> {
        if ruleset.port_table.is_some() {
            return Vec::new();
        }
        [(Self::Dst, field::DPORT), (Self::Src, field::SPORT)]
            .into_iter()
            .filter(|(_, bit)| ruleset.config.fields & bit != 0)
            .map(|(id, _)| id)
            .collect()
    }
}

impl AddrFieldId {
    fn v4_map(self) -> &'static str {
        match self {
            Self::Src => SRC_V4_MAP,
            Self::Dst => DST_V4_MAP,
        }
    }

    fn v6_map(self) -> &'static str {
        match self {
            Self::Src => SRC_V6_MAP,
            Self::Dst => DST_V6_MAP,
        }
    }
}

impl EntryMap {
    fn name(self) -> &'static str {
        match self {
            Self::V4Table(V4Level::L2) => V4_L2_MAP,
            Self::V4Table(V4Level::L3) => V4_L3_MAP,
            Self::V6Blocks => V6_BLOCKS_MAP,
        }
    }
}

impl BitmapMap {
    fn name(self) -> &'static str {
        match self {
            Self::Fields => FIELD_BITMAPS_MAP,
            Self::TcpFlags => TCP_FLAGS_MAP,
            Self::Ports(PortFieldId::Dst) => DPORT_BITMAPS_MAP,
            Self::Ports(PortFieldId::Src) => SPORT_BITMAPS_MAP,
            Self::V4Classes => V4_CLASSES_MAP,
            Self::V6Classes => V6_CLASSES_MAP,
        }
    }
}

pub type V4Key = (u32, [u8; IPV4_KEY_LEN]);
pub type V6Key = (u32, [u8; IPV6_KEY_LEN]);

/// A map write the kernel refused. A batch stops at the first element the kernel
/// refuses: the `written` elements before it took effect, it and the rest did not.
#[derive(Debug, thiserror::Error)]
#[error("writing {element}{} of map `{map}` failed", batch_position(*.written, *.batch))]
pub struct MapWriteError {
    pub map: &'static str,
    /// The element the kernel refused.
    pub element: Element,
    /// Elements in the batch.
    pub batch: usize,
    /// Elements of the batch that were written before the failure.
    pub written: usize,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A map element a write is refused at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Element {
    /// Of an array map.
    Entry(u32),
    /// Of the rule counters.
    Slot(u32),
    /// Of an IPv4 trie: prefix length (generation byte included), then the key's bytes.
    V4Prefix(V4Key),
    V6Prefix(V6Key),
    /// The entries, read back before they are written.
    ReadBack,
    /// Past the end of the batch.
    Unknown,
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Entry(i) => write!(f, "entry {i}"),
            Self::Slot(s) => write!(f, "slot {s}"),
            Self::V4Prefix(k) => write!(f, "prefix {k:?}"),
            Self::V6Prefix(k) => write!(f, "prefix {k:?}"),
            Self::ReadBack => f.write_str("the entries (read back first)"),
            Self::Unknown => f.write_str("a batch"),
        }
    }
}

/// " (element 3 of a batch of 10)", or nothing for a batch of one.
fn batch_position(written: usize, batch: usize) -> String {
    if batch <= 1 { String::new() } else { format!(" (element {written} of a batch of {batch})") }
}

/// A map read the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("reading map `{map}` failed")]
pub struct MapReadError {
    pub map: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl From<MapReadError> for MapWriteError {
    fn from(e: MapReadError) -> Self {
        Self { map: e.map, element: Element::ReadBack, batch: 1, written: 0, source: e.source }
    }
}

/// The map operations an apply and an audit need. Each write hands over the whole batch
/// for one map (`keys[i]` → `values[i]`, written in order); indices are absolute
/// (generation folded in). A failing write reports in [`MapWriteError::written`] how
/// many of its elements took effect. Reads of array maps return `count` entries from
/// index `start`.
pub trait Maps {
    fn set_config(&mut self, generation: u32, config: &GenConfig) -> Result<(), MapWriteError>;
    fn set_rules(&mut self, indices: &[u32], infos: &[RuleInfo]) -> Result<(), MapWriteError>;
    fn set_limits(&mut self, indices: &[u32], limits: &[LimitConfig]) -> Result<(), MapWriteError>;
    fn set_bitmaps(
        &mut self,
        map: BitmapMap,
        indices: &[u32],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError>;
    fn set_port_classes(
        &mut self,
        field: PortFieldId,
        indices: &[u32],
        words: &[u64],
    ) -> Result<(), MapWriteError>;
    /// Words of `PORT_TABLE` (see `policy_common::port_table`).
    fn set_port_table(&mut self, indices: &[u32], words: &[u64]) -> Result<(), MapWriteError>;
    /// Words of `V4_L1` or `V6_L1` (see `policy_common::v4_table::l1_word`).
    fn set_words(
        &mut self,
        map: WordMap,
        indices: &[u32],
        words: &[u64],
    ) -> Result<(), MapWriteError>;
    /// Entries of `V4_L2`, `V4_L3` or `V6_BLOCKS` (see `policy_common`).
    fn set_entries(
        &mut self,
        map: EntryMap,
        indices: &[u32],
        entries: &[u32],
    ) -> Result<(), MapWriteError>;
    fn insert_v4(
        &mut self,
        field: AddrFieldId,
        keys: &[V4Key],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError>;
    fn remove_v4(&mut self, field: AddrFieldId, keys: &[V4Key]) -> Result<(), MapWriteError>;
    fn insert_v6(
        &mut self,
        field: AddrFieldId,
        keys: &[V6Key],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError>;
    fn remove_v6(&mut self, field: AddrFieldId, keys: &[V6Key]) -> Result<(), MapWriteError>;
    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), MapWriteError>;
    /// Writes `ACTIVE`: the generation the program reads, with its port table's flag
    /// and rows (one write: they change together).
    fn set_active(&mut self, value: u32) -> Result<(), MapWriteError>;
    /// `PORT_TABLE`'s rows per generation (see `policy_common::port_table`).
    fn port_table_rows(&self) -> u32;
    /// The room the address tables' maps have.
    fn table_room(&self) -> TableRoom;
    /// Starts an RCU grace period after a flip of `ACTIVE`, without waiting for it to
    /// end: the apply that flipped need not wait for packets still reading the
    /// generation it left, only the next apply, which rewrites that generation.
    fn start_grace_period(&mut self);
    /// Returns once no program run that could have read the previous `ACTIVE` value is
    /// still running: when the grace period started last has ended, or (when none was
    /// started here, as after adopting pinned maps) after a full one.
    fn wait_for_readers(&mut self);

    /// What `ACTIVE` holds, flags included.
    fn active(&mut self) -> Result<u32, MapReadError>;
    fn config(&mut self, generation: u32) -> Result<GenConfig, MapReadError>;
    fn rules(&mut self, start: u32, count: u32) -> Result<Vec<RuleInfo>, MapReadError>;
    fn limits(&mut self, start: u32, count: u32) -> Result<Vec<LimitConfig>, MapReadError>;
    fn bitmaps(
        &mut self,
        map: BitmapMap,
        start: u32,
        count: u32,
    ) -> Result<Vec<RuleBitmap>, MapReadError>;
    fn port_classes(
        &mut self,
        field: PortFieldId,
        start: u32,
        count: u32,
    ) -> Result<Vec<u64>, MapReadError>;
    fn port_table(&mut self, start: u32, count: u32) -> Result<Vec<u64>, MapReadError>;
    fn entries(&mut self, map: EntryMap, start: u32, count: u32) -> Result<Vec<u32>, MapReadError>;
    fn words(&mut self, map: WordMap, start: u32, count: u32) -> Result<Vec<u64>, MapReadError>;
    /// Calls `visit` with every entry of an IPv4 trie, of every generation.
    fn visit_v4(
        &mut self,
        field: AddrFieldId,
        visit: &mut dyn FnMut(V4Key, &RuleBitmap),
    ) -> Result<(), MapReadError>;
    fn visit_v6(
        &mut self,
        field: AddrFieldId,
        visit: &mut dyn FnMut(V6Key, &RuleBitmap),
    ) -> Result<(), MapReadError>;
}

/// What one generation of the maps holds, as far as this process wrote it. Kept exact
/// by recording each write only after it succeeded. An array entry past the end of its
/// record is unknown and written whenever a ruleset needs it; a generation this process
/// has not written (adopted from pinned maps) starts with empty records, and with
/// tries whose keys are read back from the kernel on the first write, to remove the
/// stale ones.
struct Shadow {
    /// The tries' records hold every key of the generation (a fresh map, or keys read
    /// back), so a key not in them is not in the kernel either.
    tries_known: bool,
    config: Option<GenConfig>,
    rules: Vec<RuleInfo>,
    limits: Vec<LimitConfig>,
    field_bitmaps: Vec<RuleBitmap>,
    tcp_flags: Vec<RuleBitmap>,
    port_words: HashMap<PortFieldId, Vec<u64>>,
    port_bitmaps: HashMap<PortFieldId, Vec<RuleBitmap>>,
    v4: HashMap<AddrFieldId, TrieShadow<V4Key>>,
    v6: HashMap<AddrFieldId, TrieShadow<V6Key>>,
    /// The words of the generation's rows of `PORT_TABLE` (see
    /// `policy_common::port_table`).
    port_table: Vec<u64>,
    /// The IPv4 address tables of the source and the destination field.
    v4_tables: [V4TableShadow; 2],
    /// The IPv6 address tables of the source and the destination field.
    v6_tables: [V6TableShadow; 2],
}

/// What one field's trie holds in one generation: each key's bitmap as an index into the
/// distinct bitmaps held. A block list of 100,000 networks has a handful of distinct
/// bitmaps: a few bytes an entry instead of the bitmap's 128.
#[derive(Clone)]
struct TrieShadow<K> {
    entries: HashMap<K, u32>,
    bitmaps: BitmapPool,
}

impl<K: Copy + Eq + std::hash::Hash> TrieShadow<K> {
    fn new() -> Self {
        Self { entries: HashMap::new(), bitmaps: BitmapPool::default() }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&self, key: &K) -> Option<&RuleBitmap> {
        self.entries.get(key).map(|&id| self.bitmaps.get(id))
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    fn insert(&mut self, key: K, bitmap: &RuleBitmap) {
        let id = self.bitmaps.intern(bitmap);
        self.entries.insert(key, id);
    }

    fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Forgets the bitmaps no entry holds any more, once they outnumber the entries:
    /// keeps the record from growing with every reload that changes bitmaps.
    fn compact(&mut self) {
        if self.bitmaps.len() <= 64 + 2 * self.entries.len() {
            return;
        }
        let mut bitmaps = BitmapPool::default();
        for id in self.entries.values_mut() {
            *id = bitmaps.intern(self.bitmaps.get(*id));
        }
        self.bitmaps = bitmaps;
    }
}

/// What one field's IPv4 address tables hold in one generation. Blocks and classes past
/// what a ruleset uses are left as they are: no first-level entry refers to them.
#[derive(Clone, Default)]
struct V4TableShadow {
    /// The first level's words.
    l1: Vec<u64>,
    l2: Vec<u32>,
    l3: Vec<u32>,
    classes: Vec<RuleBitmap>,
}

/// The same for the IPv6 address tables.
#[derive(Clone, Default)]
struct V6TableShadow {
    l1: Vec<u64>,
    blocks: Vec<u32>,
    classes: Vec<RuleBitmap>,
}

const ZERO_CONFIG: GenConfig = GenConfig {
    words: 0,
    fields: 0,
    default_action: 0,
    default_monitor: 0,
    fragments: 0,
    unparsable: 0,
    src_sets: 0,
    dst_sets: 0,
    _pad2: 0,
    set_ids: [0; 2 * policy_common::MAX_SET_REFS],
};
const ZERO_RULE: RuleInfo = RuleInfo { action: 0, monitor: 0, _pad: 0, counter_slot: 0 };

impl Shadow {
    /// A generation of maps someone else wrote: nothing known.
    fn unknown() -> Self {
        fn ports<T>() -> HashMap<PortFieldId, Vec<T>> {
            HashMap::from([(PortFieldId::Dst, Vec::new()), (PortFieldId::Src, Vec::new())])
        }
        fn tries<K: Copy + Eq + std::hash::Hash>() -> HashMap<AddrFieldId, TrieShadow<K>> {
            HashMap::from([
                (AddrFieldId::Src, TrieShadow::new()),
                (AddrFieldId::Dst, TrieShadow::new()),
            ])
        }
        Self {
            tries_known: false,
            config: None,
            rules: Vec::new(),
            limits: Vec::new(),
            field_bitmaps: Vec::new(),
            tcp_flags: Vec::new(),
            port_words: ports(),
            port_bitmaps: ports(),
            v4: tries(),
            v6: tries(),
            port_table: Vec::new(),
            v4_tables: Default::default(),
            v6_tables: Default::default(),
        }
    }

    /// A generation of freshly created maps: all zero, tries empty.
    fn zeroed() -> Self {
        let words = || vec![0u64; PORT_CLASS_WORDS as usize];
        // A field's share of a first level, in words.
        const L1_WORDS: usize = (v4_table::L1_ENTRIES / v4_table::L1_PER_WORD) as usize;
        let zero_table = || V4TableShadow { l1: vec![0; L1_WORDS], ..Default::default() };
        let zero_v6_table = || V6TableShadow { l1: vec![0; L1_WORDS], ..Default::default() };
        Self {
            tries_known: true,
            config: Some(ZERO_CONFIG),
            rules: vec![ZERO_RULE; MAX_RULES],
            limits: vec![LimitConfig::default(); MAX_RULES],
            field_bitmaps: vec![RuleBitmap::EMPTY; field_bitmap::PER_GENERATION as usize],
            tcp_flags: vec![RuleBitmap::EMPTY; tcp_flags::PER_GENERATION as usize],
            port_words: HashMap::from([(PortFieldId::Dst, words()), (PortFieldId::Src, words())]),
            port_table: vec![
                0;
                (port_table::MAX_ROWS_PER_GENERATION * port_table::WORDS_PER_ROW)
                    as usize
            ],
            v4_tables: [zero_table(), zero_table()],
            v6_tables: [zero_v6_table(), zero_v6_table()],
            ..Self::unknown()
        }
    }
}

/// Everything one generation must hold for a ruleset, at absolute indices: the entries
/// the program can read when that generation is active. Tries are given by the
/// ruleset's networks, keyed with the generation as they are written.
struct Image<'a> {
    generation: u32,
    ruleset: &'a Ruleset,
    rules: Vec<RuleInfo>,
    /// `LIMITS` of the generation's rules (all zero for a rule that does not limit);
    /// none without a limit rule.
    limits: Vec<LimitConfig>,
    /// The port fields the program reads (see [`PortFieldId::read_by`]), with their class
    /// words.
    port_words: Vec<(PortFieldId, Vec<u64>)>,
    /// The generation's rows of `PORT_TABLE`, for a ruleset with a port table.
    port_table: Option<PortImage>,
}

/// What one generation holds of `PORT_TABLE`: its rows, from the first word of its
/// region (`generation * rows_per_generation` rows in), and `ACTIVE`'s bits naming each
/// class's row.
struct PortImage {
    words: Vec<u64>,
    /// The first word of the generation's region.
    base: u32,
    rows: u32,
    active: u32,
}

impl<'a> Image<'a> {
    /// The image of `ruleset` in `generation` of maps whose port table holds
    /// `rows_per_generation` rows a generation.
    fn new(ruleset: &'a Ruleset, slots: &[u32], generation: u32, rows_per_generation: u32) -> Self {
        let rules: Vec<RuleInfo> = ruleset
            .rules
            .iter()
            .zip(slots)
            .map(|(rule, slot)| RuleInfo {
                action: rule.action as u8,
                monitor: u8::from(rule.monitor),
                _pad: 0,
                counter_slot: *slot,
            })
            .collect();
        let port_table = ruleset.port_rows().map(|ports| {
            let first_row = generation * rows_per_generation;
            let words = ports
                .rows
                .iter()
                .flat_map(|row| row.iter())
                .map(|&rule| match rule.checked_sub(1) {
                    None => 0,
                    Some(rule) => {
                        let info = &rules[usize::from(rule)];
                        let verdict = match (info.action, info.monitor) {
                            (a, 0) if a == Action::Drop as u8 => Verdict::DropRule,
                            (a, _) if a == Action::Drop as u8 => Verdict::MonitorRule,
                            _ => Verdict::PassRule,
                        };
                        port_table::entry(verdict, info.counter_slot as u16)
                    }
                })
                .collect::<Vec<u16>>()
                .chunks(port_table::PER_WORD as usize)
                .map(|entries| {
                    entries.iter().rev().fold(0u64, |word, &entry| word << 16 | u64::from(entry))
                })
                .collect();
            let active =
                L4Class::ALL.iter().zip(ports.class_rows).fold(0, |bits, (&class, row)| {
                    bits | active::row(class, row.map(|r| first_row + r))
                });
            PortImage {
                words,
                base: first_row * port_table::WORDS_PER_ROW,
                rows: ports.rows.len() as u32,
                active,
            }
        });
        // Without a limit rule the program reads no `LIMITS` entry (the map may have one).
        let limits = if ruleset.rules.iter().any(|r| r.limit.is_some()) {
            ruleset.rules.iter().map(|r| r.limit.unwrap_or_default()).collect()
        } else {
            Vec::new()
        };
        Self {
            generation,
            ruleset,
            rules,
            limits,
            port_words: PortFieldId::read_by(ruleset)
                .into_iter()
                .map(|id| (id, id.of(ruleset).class_words()))
                .collect(),
            port_table,
        }
    }

    fn port_bitmaps(&self, field: PortFieldId) -> &'a [RuleBitmap] {
        &field.of(self.ruleset).bitmaps
    }

    /// The address tables of field `index` (0 source, 1 destination), if it has them.
    fn v4_table(&self, index: usize) -> Option<&'a V4Table> {
        self.ruleset.v4_tables[index].as_ref()
    }

    /// The IPv4 trie entries of a field, `None` when the field is read from the address
    /// tables instead (its trie is then left as it is).
    fn v4(
        &self,
        field: AddrFieldId,
    ) -> Option<impl Iterator<Item = (V4Key, &'a RuleBitmap)> + Clone> {
        let (index, entries) = match field {
            AddrFieldId::Src => (0, &self.ruleset.src_v4),
            AddrFieldId::Dst => (1, &self.ruleset.dst_v4),
        };
        let generation = self.generation;
        self.ruleset.v4_tables[index]
            .is_none()
            .then(|| entries.iter().map(move |(net, b)| (v4_key(generation, net), b)))
    }

    /// The IPv6 address tables of field `index` (0 source, 1 destination), if it has them.
    fn v6_table(&self, index: usize) -> Option<&'a V6Table> {
        self.ruleset.v6_tables[index].as_ref()
    }

    /// The IPv6 trie entries of a field, `None` when the field is read from the address
    /// tables instead (its trie is then left as it is).
    fn v6(
        &self,
        field: AddrFieldId,
    ) -> Option<impl Iterator<Item = (V6Key, &'a RuleBitmap)> + Clone> {
        let (index, entries) = match field {
            AddrFieldId::Src => (0, &self.ruleset.src_v6),
            AddrFieldId::Dst => (1, &self.ruleset.dst_v6),
        };
        let generation = self.generation;
        self.ruleset.v6_tables[index]
            .is_none()
            .then(|| entries.iter().map(move |(net, b)| (v6_key(generation, net), b)))
    }

    /// `ACTIVE` with this generation in force.
    fn active(&self) -> u32 {
        match &self.port_table {
            Some(ports) => self.generation | active::PORT_TABLE | ports.active,
            None => self.generation,
        }
    }

    /// Why the image does not fit maps of `rows_per_generation` port table rows a
    /// generation and address tables of `room`: the map it would write past the end of.
    fn misfit(&self, rows_per_generation: u32, room: &TableRoom) -> Option<(&'static str, String)> {
        if self.port_table.as_ref().is_some_and(|ports| ports.rows > rows_per_generation) {
            let why = format!(
                "the policy needs more port table rows than the map's {rows_per_generation}"
            );
            return Some((PORT_TABLE_MAP, why));
        }
        let used = TableRoom::used_by(self.ruleset);
        let map = room.short_of(&used)?;
        Some((map, format!("the policy's tables ({used}) do not fit the maps' ({room})")))
    }
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// The kernel generation (0 or 1) now active.
    pub kernel_generation: u32,
    /// Map entries written or removed.
    pub writes: usize,
}

/// Where the kernel's maps differ from the ruleset in force: per map, the entries that
/// do (an entry missing, one too many, or one with another value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    pub maps: BTreeMap<&'static str, u64>,
}

impl Drift {
    /// Entries that differ, over every map.
    pub fn entries(&self) -> u64 {
        self.maps.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Adds `entries` differing entries of `map`.
    pub fn add(&mut self, map: &'static str, entries: u64) {
        if entries > 0 {
            *self.maps.entry(map).or_default() += entries;
        }
    }

    /// Compares what an array map holds from some index on with what it should.
    fn compare<V: PartialEq>(&mut self, map: &'static str, wanted: &[V], held: &[V]) {
        let differ = wanted.iter().zip(held).filter(|(w, h)| w != h).count();
        self.add(map, (differ + wanted.len().abs_diff(held.len())) as u64);
    }
}

/// Compares the entries of generation `generation` of a trie, as `visit` reads them one
/// by one (nothing held but the wanted keys), with `wanted`.
fn compare_trie<K: Copy + Eq + std::hash::Hash, const N: usize>(
    drift: &mut Drift,
    map: &'static str,
    generation: u32,
    wanted: HashMap<K, &RuleBitmap>,
    visit: impl FnOnce(&mut dyn FnMut(K, &RuleBitmap)) -> Result<(), MapReadError>,
    data: impl Fn(&K) -> &[u8; N],
) -> Result<(), MapReadError> {
    let (mut present, mut differ) = (0, 0);
    visit(&mut |key, bitmap| {
        if data(&key)[0] != generation as u8 {
            return;
        }
        match wanted.get(&key) {
            Some(w) => {
                present += 1;
                differ += usize::from(**w != *bitmap);
            }
            // A key that should not be there.
            None => differ += 1,
        }
    })?;
    // Keys that should be there and are not.
    let missing = wanted.len() - present;
    drift.add(map, (differ + missing) as u64);
    Ok(())
}

/// A rule in force and the slot of its counters: what the state file keeps so that a
/// later daemon adopting the maps keeps counting each unchanged rule where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSlot {
    pub name: String,
    /// [`crate::policy::Rule::identity`]: the slot stays with the rule while this is
    /// unchanged.
    pub identity: String,
    /// Index of the rule's counters in `RULE_COUNTERS`.
    pub slot: u32,
}

/// The apply state of one loaded program: what each generation holds, which one is
/// active, and which counter slot each live rule uses.
pub struct Generations {
    shadows: Vec<Shadow>,
    active: u32,
    /// Counter slot of every rule of the active generation, by rule identity.
    slots: HashMap<String, u32>,
    /// The rules of the active generation, in rule order, with their slots.
    active_rules: Vec<RuleSlot>,
    /// Packets may still be reading the inactive generation (`ACTIVE` was flipped away
    /// from it, or by another process): wait before writing it.
    readers_pending: bool,
}

impl Default for Generations {
    fn default() -> Self {
        Self::new()
    }
}

impl Generations {
    /// The state of freshly created maps: generation 0 active and empty (every packet
    /// passes with the default verdict).
    pub fn new() -> Self {
        Self {
            shadows: (0..GENERATIONS).map(|_| Shadow::zeroed()).collect(),
            active: 0,
            slots: HashMap::new(),
            active_rules: Vec::new(),
            readers_pending: false,
        }
    }

    /// The state of maps adopted from pins: `active` is what `ACTIVE` holds; `rules` the
    /// rules in force with their counter slots, by identity (from the state file), so
    /// unchanged rules keep counting into the same slots. Both generations are unknown.
    pub fn adopt(active: u32, rules: Vec<RuleSlot>) -> Self {
        Self {
            shadows: (0..GENERATIONS).map(|_| Shadow::unknown()).collect(),
            active: active % GENERATIONS,
            slots: rules.iter().map(|r| (r.identity.clone(), r.slot)).collect(),
            active_rules: rules,
            // The previous daemon may have flipped `ACTIVE` a moment ago.
            readers_pending: true,
        }
    }

    /// The state of new maps a migration filled (`super::migrate`): `ACTIVE` and `CONFIG`
    /// copied from the old maps (`active` the generation in force there, `rules` its
    /// rules with their counter slots), everything else zero as created. No program
    /// reads them yet.
    pub fn carried(active: u32, rules: Vec<RuleSlot>) -> Self {
        let copied = || Shadow { config: None, ..Shadow::zeroed() };
        Self {
            shadows: (0..GENERATIONS).map(|_| copied()).collect(),
            active: active % GENERATIONS,
            slots: rules.iter().map(|r| (r.identity.clone(), r.slot)).collect(),
            active_rules: rules,
            readers_pending: false,
        }
    }

    pub fn active(&self) -> u32 {
        self.active
    }

    /// The rules in force with their counter slots, in rule order (for the state file,
    /// so that a later daemon can [`Self::adopt`]).
    pub fn active_rules(&self) -> &[RuleSlot] {
        &self.active_rules
    }

    /// Writes `ruleset` into the inactive generation and makes it active. On error the
    /// active generation is untouched and still in force.
    ///
    /// Returns once the new generation is in force. The grace period after the flip
    /// runs on: the next apply waits for it before it rewrites the generation left here.
    /// Waits until no packet reads the generation the next apply writes.
    pub fn settle(&mut self, maps: &mut impl Maps) {
        if self.readers_pending {
            maps.wait_for_readers();
            self.readers_pending = false;
        }
    }

    /// The generation the next apply writes.
    pub fn next_generation(&self) -> u32 {
        (self.active + 1) % GENERATIONS
    }

    pub fn apply(
        &mut self,
        maps: &mut impl Maps,
        ruleset: &Ruleset,
    ) -> Result<ApplyReport, MapWriteError> {
        let target = self.next_generation();
        let slots = self.plan_slots(ruleset);
        let rows = maps.port_table_rows();
        let image = Image::new(ruleset, &slots, target, rows);
        // Before anything is written: maps sized for a smaller port table or smaller
        // address tables cannot take it.
        if let Some((map, why)) = image.misfit(rows, &maps.table_room()) {
            return Err(MapWriteError {
                map,
                element: Element::Unknown,
                batch: 0,
                written: 0,
                source: why.into(),
            });
        }
        // Also before zeroing counter slots: the old generation's rules count into
        // them until its last packet is judged.
        self.settle(maps);
        let used: HashSet<u32> = self.slots.values().copied().collect();
        // Slots the active generation does not use: no packet counts into them now.
        let fresh: Vec<u32> = slots.iter().copied().filter(|s| !used.contains(s)).collect();
        if !fresh.is_empty() {
            maps.zero_rule_counters(&fresh)?;
        }
        let writes =
            fresh.len() + write_generation(&mut self.shadows[target as usize], maps, &image)?;
        maps.set_active(image.active())?;
        maps.start_grace_period();
        self.readers_pending = true;
        self.active = target;
        self.slots =
            ruleset.rules.iter().map(|r| r.identity.clone()).zip(slots.iter().copied()).collect();
        self.active_rules = ruleset
            .rules
            .iter()
            .zip(slots)
            .map(|(r, slot)| RuleSlot { name: r.name.clone(), identity: r.identity.clone(), slot })
            .collect();
        Ok(ApplyReport { kernel_generation: target, writes: writes + 1 })
    }

    /// Reads back what the kernel holds for `ruleset`, the ruleset in force (the last
    /// one applied): `ACTIVE`, and every entry of the active generation the program can
    /// read. Counters and event settings are not part of it.
    pub fn audit(&self, maps: &mut impl Maps, ruleset: &Ruleset) -> Result<Drift, MapReadError> {
        let slots: Vec<u32> = self.active_rules.iter().map(|r| r.slot).collect();
        let rows = maps.port_table_rows();
        let image = Image::new(ruleset, &slots, self.active, rows);
        let mut drift = Drift::default();
        if let Some((map, _)) = image.misfit(rows, &maps.table_room()) {
            // Maps too small for the policy in force hold some other policy.
            drift.add(map, 1);
            return Ok(drift);
        }
        drift.add(ACTIVE_MAP, u64::from(maps.active()? != image.active()));
        audit_generation(&mut drift, maps, &image)?;
        Ok(drift)
    }

    /// Puts `ruleset` back in force after an audit found the kernel holding something
    /// else: forgets what either generation was thought to hold, writes the generation
    /// `ACTIVE` does not name whole, and flips to it. Atomic like every apply: packets
    /// see the drifted generation or the repaired one.
    pub fn repair(
        &mut self,
        maps: &mut impl Maps,
        ruleset: &Ruleset,
    ) -> Result<ApplyReport, MapWriteError> {
        // Whatever ACTIVE says now is what packets read: write the other one.
        self.active = maps.active()? % GENERATIONS;
        for shadow in &mut self.shadows {
            *shadow = Shadow::unknown();
        }
        // ACTIVE may have been changed by someone else at any moment.
        self.readers_pending = true;
        self.apply(maps, ruleset)
    }

    /// A counter slot per rule: its current one if the rule is unchanged, else the lowest
    /// slot the active generation does not use.
    fn plan_slots(&self, ruleset: &Ruleset) -> Vec<u32> {
        let mut taken: HashSet<u32> = self.slots.values().copied().collect();
        let mut next_free = 0..RULE_COUNTER_SLOTS;
        ruleset
            .rules
            .iter()
            .map(|rule| match self.slots.get(&rule.identity) {
                Some(slot) => *slot,
                None => {
                    let slot = next_free
                        .find(|s| !taken.contains(s))
                        .expect("2 × MAX_RULES slots cover the active and the new rules");
                    taken.insert(slot);
                    slot
                }
            })
            .collect()
    }
}

/// Makes generation `image.generation` hold `image`, writing what `shadow` does not
/// record it holding; the config last, since it says which words and fields are in use.
fn write_generation(
    shadow: &mut Shadow,
    maps: &mut impl Maps,
    image: &Image,
) -> Result<usize, MapWriteError> {
    let generation = image.generation;
    let ruleset = image.ruleset;
    // A generation whose trie keys this process does not know: read them back, so that
    // stale ones are removed, and write every wanted entry.
    let force_tries = !shadow.tries_known;
    if force_tries {
        for field in [AddrFieldId::Src, AddrFieldId::Dst] {
            let mut v4 = TrieShadow::new();
            maps.visit_v4(field, &mut |key, _| {
                if key.1[0] == generation as u8 {
                    v4.insert(key, &RuleBitmap::EMPTY);
                }
            })?;
            shadow.v4.insert(field, v4);
            let mut v6 = TrieShadow::new();
            maps.visit_v6(field, &mut |key, _| {
                if key.1[0] == generation as u8 {
                    v6.insert(key, &RuleBitmap::EMPTY);
                }
            })?;
            shadow.v6.insert(field, v6);
        }
        shadow.tries_known = true;
    }
    let share = Share::interleaved(generation);
    // The buckets' parameters before the rules that use them.
    let mut writes =
        sync_share(&mut shadow.limits, &image.limits, share, |i, v| maps.set_limits(i, v))?;
    writes += sync_share(&mut shadow.rules, &image.rules, share, |i, v| maps.set_rules(i, v))?;
    writes += sync_share(&mut shadow.field_bitmaps, &ruleset.field_bitmaps, share, |i, v| {
        maps.set_bitmaps(BitmapMap::Fields, i, v)
    })?;
    writes += sync_share(&mut shadow.tcp_flags, &ruleset.tcp_flags, share, |i, v| {
        maps.set_bitmaps(BitmapMap::TcpFlags, i, v)
    })?;
    for (id, words) in &image.port_words {
        let id = *id;
        let bitmaps = shadow.port_bitmaps.get_mut(&id).expect("both fields present");
        writes +=
            sync_share(bitmaps, image.port_bitmaps(id), Share::interleaved(generation), |i, v| {
                maps.set_bitmaps(BitmapMap::Ports(id), i, v)
            })?;
        let held = shadow.port_words.get_mut(&id).expect("both fields present");
        let base = generation * PORT_CLASS_WORDS;
        writes += sync_array(held, words, base, |i, v| maps.set_port_classes(id, i, v))?;
    }
    for (field, held) in shadow.v4_tables.iter_mut().enumerate() {
        let Some(table) = image.v4_table(field) else { continue };
        let f = field as u32;
        // Blocks and classes before the first level that refers to them.
        writes += sync_share(
            &mut held.classes,
            &table.classes,
            Share::classes(generation, f),
            |i, v| maps.set_bitmaps(BitmapMap::V4Classes, i, v),
        )?;
        for (level, wanted, held) in
            [(V4Level::L3, &table.l3, &mut held.l3), (V4Level::L2, &table.l2, &mut held.l2)]
        {
            writes += sync_share(held, wanted, Share::blocks(generation, f), |i, v| {
                maps.set_entries(EntryMap::V4Table(level), i, v)
            })?;
        }
        let (base, _) = v4_table::l1_word(v4_table::l1_index(generation, f, 0));
        writes += sync_array(&mut held.l1, &l1_words(&table.l1), base, |i, v| {
            maps.set_words(WordMap::V4L1, i, v)
        })?;
    }
    for (field, held) in shadow.v6_tables.iter_mut().enumerate() {
        let Some(table) = image.v6_table(field) else { continue };
        let f = field as u32;
        writes += sync_share(
            &mut held.classes,
            &table.classes,
            Share::classes(generation, f),
            |i, v| maps.set_bitmaps(BitmapMap::V6Classes, i, v),
        )?;
        writes +=
            sync_share(&mut held.blocks, &table.blocks, Share::blocks(generation, f), |i, v| {
                maps.set_entries(EntryMap::V6Blocks, i, v)
            })?;
        let (base, _) = v4_table::l1_word(v6_table::l1_index(generation, f, 0));
        writes += sync_array(&mut held.l1, &l1_words(&table.l1), base, |i, v| {
            maps.set_words(WordMap::V6L1, i, v)
        })?;
    }
    for id in [AddrFieldId::Src, AddrFieldId::Dst] {
        // A field read from the address tables: its IPv4 trie is left as it is (what it
        // holds stays recorded, for when it is used again).
        let Some(wanted) = image.v4(id) else { continue };
        let held = shadow.v4.get_mut(&id).expect("both fields present");
        writes += sync_trie(held, wanted, force_tries, |keys, bitmaps| match bitmaps {
            Some(bitmaps) => maps.insert_v4(id, keys, bitmaps),
            None => maps.remove_v4(id, keys),
        })?;
    }
    for id in [AddrFieldId::Src, AddrFieldId::Dst] {
        let Some(wanted) = image.v6(id) else { continue };
        let held = shadow.v6.get_mut(&id).expect("both fields present");
        writes += sync_trie(held, wanted, force_tries, |keys, bitmaps| match bitmaps {
            Some(bitmaps) => maps.insert_v6(id, keys, bitmaps),
            None => maps.remove_v6(id, keys),
        })?;
    }
    if let Some(ports) = &image.port_table {
        writes += sync_array(&mut shadow.port_table, &ports.words, ports.base, |i, v| {
            maps.set_port_table(i, v)
        })?;
    }
    // Last: the config says how many rule words are in use and which fields.
    if shadow.config != Some(ruleset.config) {
        maps.set_config(generation, &ruleset.config)?;
        shadow.config = Some(ruleset.config);
        writes += 1;
    }
    Ok(writes)
}

/// Compares generation `image.generation` of the kernel's maps with `image`.
fn audit_generation(
    drift: &mut Drift,
    maps: &mut impl Maps,
    image: &Image,
) -> Result<(), MapReadError> {
    let generation = image.generation;
    let ruleset = image.ruleset;
    let len = |v: usize| v as u32;
    drift.compare(CONFIG_MAP, &[ruleset.config], &[maps.config(generation)?]);
    let share = Share::interleaved(generation);
    let rules = maps.rules(share.base, share.span(image.rules.len()))?;
    drift.compare(RULES_MAP, &image.rules, &share.pick(rules));
    if !image.limits.is_empty() {
        let limits = maps.limits(share.base, share.span(image.limits.len()))?;
        drift.compare(LIMITS_MAP, &image.limits, &share.pick(limits));
    }
    for (map, wanted) in
        [(BitmapMap::Fields, &ruleset.field_bitmaps), (BitmapMap::TcpFlags, &ruleset.tcp_flags)]
    {
        let held = maps.bitmaps(map, share.base, share.span(wanted.len()))?;
        drift.compare(map.name(), wanted, &share.pick(held));
    }
    for (id, words) in &image.port_words {
        let held = maps.port_classes(*id, generation * PORT_CLASS_WORDS, len(words.len()))?;
        drift.compare(id.classes_map(), words, &held);
        let wanted = image.port_bitmaps(*id);
        let share = Share::interleaved(generation);
        let held = maps.bitmaps(BitmapMap::Ports(*id), share.base, share.span(wanted.len()))?;
        drift.compare(BitmapMap::Ports(*id).name(), wanted, &share.pick(held));
    }
    for field in 0..2 {
        let Some(table) = image.v4_table(field) else { continue };
        let f = field as u32;
        let share = Share::classes(generation, f);
        let held =
            maps.bitmaps(BitmapMap::V4Classes, share.base, share.span(table.classes.len()))?;
        drift.compare(V4_CLASSES_MAP, &table.classes, &share.pick(held));
        audit_l1(drift, maps, WordMap::V4L1, &table.l1, v4_table::l1_index(generation, f, 0))?;
        for (level, wanted, share) in [
            (V4Level::L2, &table.l2, Share::blocks(generation, f)),
            (V4Level::L3, &table.l3, Share::blocks(generation, f)),
        ] {
            let map = EntryMap::V4Table(level);
            let held = maps.entries(map, share.base, share.span(wanted.len()))?;
            drift.compare(map.name(), wanted, &share.pick(held));
        }
    }
    for field in 0..2 {
        let Some(table) = image.v6_table(field) else { continue };
        let f = field as u32;
        let share = Share::classes(generation, f);
        let held =
            maps.bitmaps(BitmapMap::V6Classes, share.base, share.span(table.classes.len()))?;
        drift.compare(V6_CLASSES_MAP, &table.classes, &share.pick(held));
        audit_l1(drift, maps, WordMap::V6L1, &table.l1, v6_table::l1_index(generation, f, 0))?;
        let share = Share::blocks(generation, f);
        let held = maps.entries(EntryMap::V6Blocks, share.base, share.span(table.blocks.len()))?;
        drift.compare(V6_BLOCKS_MAP, &table.blocks, &share.pick(held));
    }
    for id in [AddrFieldId::Src, AddrFieldId::Dst] {
        if let Some(wanted) = image.v4(id) {
            let visit = |f: &mut dyn FnMut(V4Key, &RuleBitmap)| maps.visit_v4(id, f);
            compare_trie(drift, id.v4_map(), generation, wanted.collect(), visit, |k| &k.1)?;
        }
        if let Some(wanted) = image.v6(id) {
            let visit = |f: &mut dyn FnMut(V6Key, &RuleBitmap)| maps.visit_v6(id, f);
            compare_trie(drift, id.v6_map(), generation, wanted.collect(), visit, |k| &k.1)?;
        }
    }
    if let Some(ports) = &image.port_table {
        let held = maps.port_table(ports.base, len(ports.words.len()))?;
        drift.compare(PORT_TABLE_MAP, &ports.words, &held);
    }
    Ok(())
}

/// The first-level words of a table's entries (`policy_common::v4_table::l1_word`):
/// none for a table without a first level.
fn l1_words(l1: &[u32]) -> Vec<u64> {
    l1.chunks(v4_table::L1_PER_WORD as usize)
        .map(|entries| {
            entries.iter().rev().fold(0u64, |word, &entry| {
                let bits = v4_table::l1_bits(entry);
                debug_assert_eq!(v4_table::l1_entry(u32::from(bits)), entry, "16 bits hold it");
                word << 16 | u64::from(bits)
            })
        })
        .collect()
}

/// Compares a table's first level, from entry `first`, with the words of `map`.
fn audit_l1(
    drift: &mut Drift,
    maps: &mut impl Maps,
    map: WordMap,
    l1: &[u32],
    first: u32,
) -> Result<(), MapReadError> {
    let wanted = l1_words(l1);
    let (base, _) = v4_table::l1_word(first);
    let held = maps.words(map, base, wanted.len() as u32)?;
    drift.compare(map.name(), &wanted, &held);
    Ok(())
}

/// Where the elements of one generation's (and one field's) share of an array map lie:
/// in runs of `run` consecutive entries, `stride` entries apart, from `base`. The
/// address tables' blocks and classes are interleaved by generation and field
/// (`policy_common::v4_table::block_index`); everything else is one run.
#[derive(Clone, Copy)]
struct Share {
    base: u32,
    run: u32,
    stride: u32,
}

impl Share {
    fn contiguous(base: u32) -> Self {
        Self { base, run: u32::MAX, stride: 0 }
    }

    /// A field's address table blocks (`V4_L2`, `V4_L3`, `V6_BLOCKS`): 256 entries each.
    fn blocks(generation: u32, field: u32) -> Self {
        debug_assert_eq!(v4_table::block_index(0, 0, 1, 0), v6_table::block_index(0, 0, 1, 0));
        Self {
            base: v4_table::block_index(generation, field, 0, 0),
            run: 256,
            stride: REGIONS * 256,
        }
    }

    /// A field's address classes (`V4_CLASSES`, `V6_CLASSES`).
    fn classes(generation: u32, field: u32) -> Self {
        debug_assert_eq!(v4_table::class_index(0, 0, 1), v6_table::class_index(0, 0, 1));
        Self { base: v4_table::class_index(generation, field, 0), run: 1, stride: REGIONS }
    }

    /// A generation's entries of a map interleaved by generation: a port field's class
    /// bitmaps (`DPORT_BITMAPS`, `SPORT_BITMAPS`), `FIELD_BITMAPS`, `TCP_FLAGS`, `RULES`,
    /// `LIMITS`.
    fn interleaved(generation: u32) -> Self {
        debug_assert_eq!(rule_index(0, 1), GENERATIONS);
        debug_assert_eq!(port_bitmap_index(0, 1), GENERATIONS);
        debug_assert_eq!(field_bitmap::index(0, 1), GENERATIONS);
        debug_assert_eq!(tcp_flags::index(0, 1), GENERATIONS);
        let at = |generation, entry| policy_common::interleaved(generation, entry);
        Self { base: at(generation, 0), run: 1, stride: at(0, 1) }
    }

    /// The map index of element `i`.
    fn index(&self, i: usize) -> u32 {
        let i = i as u32;
        self.base + i / self.run * self.stride + i % self.run
    }

    /// The entries from `base` that hold the first `len` elements.
    fn span(&self, len: usize) -> u32 {
        if len == 0 { 0 } else { self.index(len - 1) - self.base + 1 }
    }

    /// The elements among entries read from `base`.
    fn pick<V: Copy>(&self, entries: Vec<V>) -> Vec<V> {
        let at = |i: usize| (self.index(i) - self.base) as usize;
        (0..).map(at).take_while(|&p| p < entries.len()).map(|p| entries[p]).collect()
    }
}

/// Writes, in one batch, the entries of `wanted` that differ from what `current` (one
/// generation of an array map, from index `base`) records, and those past its end
/// (unknown); then records in `current` what was written, also when the batch stopped
/// part-way.
fn sync_array<V: Copy + PartialEq>(
    current: &mut Vec<V>,
    wanted: &[V],
    base: u32,
    write: impl FnOnce(&[u32], &[V]) -> Result<(), MapWriteError>,
) -> Result<usize, MapWriteError> {
    sync_share(current, wanted, Share::contiguous(base), write)
}

/// [`sync_array`] for a share of an array laid out as `share` says.
fn sync_share<V: Copy + PartialEq>(
    current: &mut Vec<V>,
    wanted: &[V],
    share: Share,
    write: impl FnOnce(&[u32], &[V]) -> Result<(), MapWriteError>,
) -> Result<usize, MapWriteError> {
    let (positions, values): (Vec<usize>, Vec<V>) = wanted
        .iter()
        .enumerate()
        .filter(|(i, v)| current.get(*i) != Some(*v))
        .map(|(i, v)| (i, *v))
        .unzip();
    if positions.is_empty() {
        return Ok(0);
    }
    let indices: Vec<u32> = positions.iter().map(|i| share.index(*i)).collect();
    let result = write(&indices, &values);
    let written = result.as_ref().map_or_else(|e| e.written.min(indices.len()), |()| indices.len());
    if let Some(last) = positions[..written].last() {
        let needed = last + 1;
        if current.len() < needed {
            // Every position past the record's end is unknown, so in the batch: the loop
            // below overwrites each placeholder up to `needed`.
            current.resize(needed, values[0]);
        }
    }
    for (position, value) in positions.iter().zip(&values).take(written) {
        current[*position] = *value;
    }
    result.map(|()| indices.len())
}

/// Makes a trie generation hold `wanted`: removes the entries no longer wanted in one
/// batch, then inserts new and changed ones in another, in the order given (compile
/// sorts them, so consecutive inserts walk the same part of the trie), or every wanted
/// one if `force`. Removing first keeps the generation within its share of the trie's
/// entries at any time. Records in `current` what was written, also when a batch
/// stopped part-way. `write(keys, None)` removes, `write(keys, Some(bitmaps))` inserts.
fn sync_trie<'a, K: Copy + Ord + std::hash::Hash>(
    current: &mut TrieShadow<K>,
    wanted: impl Iterator<Item = (K, &'a RuleBitmap)> + Clone,
    force: bool,
    mut write: impl FnMut(&[K], Option<&[RuleBitmap]>) -> Result<(), MapWriteError>,
) -> Result<usize, MapWriteError> {
    let mut kept = 0;
    let (keys, bitmaps): (Vec<K>, Vec<RuleBitmap>) = wanted
        .clone()
        .filter(|(key, bitmap)| match current.get(key) {
            Some(held) => {
                kept += 1;
                force || held != *bitmap
            }
            None => true,
        })
        .map(|(key, bitmap)| (key, *bitmap))
        .unzip();
    let mut writes = 0;
    // Some entries held are not wanted: find and remove them.
    if kept < current.len() {
        let keep: HashSet<K> = wanted.map(|(key, _)| key).collect();
        let mut stale: Vec<K> = current.keys().filter(|k| !keep.contains(k)).copied().collect();
        stale.sort_unstable();
        let result = write(&stale, None);
        let written = result.as_ref().map_or_else(|e| e.written.min(stale.len()), |()| stale.len());
        for key in &stale[..written] {
            current.remove(key);
        }
        result?;
        writes += stale.len();
    }
    if !keys.is_empty() {
        let result = write(&keys, Some(&bitmaps));
        let written = result.as_ref().map_or_else(|e| e.written.min(keys.len()), |()| keys.len());
        for (key, bitmap) in keys[..written].iter().zip(&bitmaps[..written]) {
            current.insert(*key, bitmap);
        }
        result?;
        writes += keys.len();
    }
    current.compact();
    Ok(writes)
}

pub fn v4_key(generation: u32, net: &Ipv4Net) -> V4Key {
    (
        GENERATION_PREFIX_BITS + u32::from(net.prefix_len()),
        ipv4_key(generation as u8, net.network().octets()),
    )
}

pub fn v6_key(generation: u32, net: &Ipv6Net) -> V6Key {
    (
        GENERATION_PREFIX_BITS + u32::from(net.prefix_len()),
        ipv6_key(generation as u8, net.network().octets()),
    )
}

#[cfg(test)]
mod tests;
