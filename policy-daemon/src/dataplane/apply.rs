//! Applying a compiled [`Ruleset`] atomically: write the inactive generation whole (only
//! what differs from what that generation already holds), flip `ACTIVE`, wait until no
//! packet can still be reading the old generation, then commit.
//!
//! Pure logic: it drives a [`Maps`] implementation, the kernel's
//! (`dataplane::kernel::KernelMaps`) or an in-memory one in tests, which is how a failure
//! in the middle of an apply is tested. A write that fails leaves `ACTIVE` untouched, so
//! the ruleset in force stays in force.

use std::collections::{HashMap, HashSet};

use ipnet::{Ipv4Net, Ipv6Net};
use policy_common::{
    Action, GENERATION_PREFIX_BITS, GENERATIONS, GenConfig, IPV4_KEY_LEN, IPV6_KEY_LEN,
    MAX_PORT_CLASSES, MAX_RULES, PORT_CLASS_WORDS, RULE_COUNTER_SLOTS, RuleBitmap, RuleInfo,
    Verdict, field_bitmap, ipv4_key, ipv6_key, port_table, v4_table,
};

use crate::policy::Ruleset;

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

/// The levels of the IPv4 address tables (`V4_L1`, `V4_L2`, `V4_L3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum V4Level {
    L1,
    L2,
    L3,
}

pub type V4Key = (u32, [u8; IPV4_KEY_LEN]);
pub type V6Key = (u32, [u8; IPV6_KEY_LEN]);

/// A map write the kernel refused. A batch stops at the first element the kernel
/// refuses: the `written` elements before it took effect, it and the rest did not.
#[derive(Debug, thiserror::Error)]
#[error("writing {what} of map `{map}` failed")]
pub struct MapWriteError {
    pub map: &'static str,
    pub what: String,
    /// Elements of the batch that were written before the failure.
    pub written: usize,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The map operations an apply needs. Each write hands over the whole batch for one map
/// (`keys[i]` → `values[i]`, written in order); indices are absolute (generation folded
/// in). A failing write reports in [`MapWriteError::written`] how many of its elements
/// took effect.
pub trait Maps {
    fn set_config(&mut self, generation: u32, config: &GenConfig) -> Result<(), MapWriteError>;
    fn set_rules(&mut self, indices: &[u32], infos: &[RuleInfo]) -> Result<(), MapWriteError>;
    fn set_field_bitmaps(
        &mut self,
        indices: &[u32],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError>;
    fn set_port_classes(
        &mut self,
        field: PortFieldId,
        indices: &[u32],
        words: &[u64],
    ) -> Result<(), MapWriteError>;
    fn set_port_bitmaps(
        &mut self,
        field: PortFieldId,
        indices: &[u32],
        bitmaps: &[RuleBitmap],
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
    /// Keys of an IPv4 trie that belong to `generation` (for a generation whose contents
    /// this process did not write: after adopting pinned maps).
    fn v4_keys(&mut self, field: AddrFieldId, generation: u32)
    -> Result<Vec<V4Key>, MapWriteError>;
    fn v6_keys(&mut self, field: AddrFieldId, generation: u32)
    -> Result<Vec<V6Key>, MapWriteError>;
    /// Entries of one level of the IPv4 address tables (absolute indices, see
    /// `policy_common::v4_table`).
    fn set_v4_table(
        &mut self,
        level: V4Level,
        indices: &[u32],
        entries: &[u32],
    ) -> Result<(), MapWriteError>;
    /// Address classes of the IPv4 address tables.
    fn set_v4_classes(
        &mut self,
        indices: &[u32],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError>;
    /// Entries of `PORT_TABLE` (absolute indices, see `policy_common::port_table`).
    fn set_port_table(&mut self, indices: &[u32], entries: &[u32]) -> Result<(), MapWriteError>;
    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), MapWriteError>;
    /// Makes `generation` the one the program reads, with its port table if `port_table`
    /// (one write of `ACTIVE`: the generation and the flag change together).
    fn set_active(&mut self, generation: u32, port_table: bool) -> Result<(), MapWriteError>;
    /// Starts an RCU grace period after a flip of `ACTIVE`, without waiting for it to
    /// end: the apply that flipped need not wait for packets still reading the
    /// generation it left, only the next apply, which rewrites that generation.
    fn start_grace_period(&mut self);
    /// Returns once no program run that could have read the previous `ACTIVE` value is
    /// still running: when the grace period started last has ended, or (when none was
    /// started here, as after adopting pinned maps) after a full one.
    fn wait_for_readers(&mut self);
}

/// What one generation of the maps holds, as far as this process wrote it. Kept exact
/// by recording each write only after it succeeded. A generation this process has not
/// written whole (adopted from pinned maps) is not `known`: the next apply to it writes
/// every entry and reads the trie keys back from the kernel to remove stale ones.
struct Shadow {
    known: bool,
    config: GenConfig,
    rules: Vec<RuleInfo>,
    field_bitmaps: Vec<RuleBitmap>,
    port_words: HashMap<PortFieldId, Vec<u64>>,
    port_bitmaps: HashMap<PortFieldId, Vec<RuleBitmap>>,
    v4: HashMap<AddrFieldId, HashMap<V4Key, RuleBitmap>>,
    v6: HashMap<AddrFieldId, HashMap<V6Key, RuleBitmap>>,
    /// The generation's `PORT_TABLE` entries; `None` while unknown (adopted maps, until
    /// a ruleset with a port table writes it whole).
    port_table: Option<Vec<u32>>,
    /// The IPv4 address tables of the source and the destination field.
    v4_tables: [V4TableShadow; 2],
}

/// What one field's IPv4 address tables hold in one generation. Blocks and classes past
/// what a ruleset uses are left as they are: no first-level entry refers to them.
#[derive(Clone)]
struct V4TableShadow {
    l1: Vec<u32>,
    l2: Vec<u32>,
    l3: Vec<u32>,
    classes: Vec<RuleBitmap>,
}

impl V4TableShadow {
    fn zeroed() -> Self {
        Self {
            l1: vec![0; v4_table::L1_ENTRIES as usize],
            l2: Vec::new(),
            l3: Vec::new(),
            classes: Vec::new(),
        }
    }
}

const ZERO_CONFIG: GenConfig = GenConfig {
    words: 0,
    fields: 0,
    default_action: 0,
    default_monitor: 0,
    fragments: 0,
    unparsable: 0,
    _pad2: 0,
};
const ZERO_RULE: RuleInfo = RuleInfo { action: 0, monitor: 0, _pad: 0, counter_slot: 0 };

impl Shadow {
    /// A generation of maps someone else wrote.
    fn unknown() -> Self {
        Self { known: false, port_table: None, ..Self::zeroed() }
    }

    /// A generation of freshly created maps: all zero, tries empty.
    fn zeroed() -> Self {
        let words = || vec![0u64; PORT_CLASS_WORDS as usize];
        Self {
            known: true,
            config: ZERO_CONFIG,
            rules: vec![ZERO_RULE; MAX_RULES],
            field_bitmaps: vec![RuleBitmap::EMPTY; field_bitmap::PER_GENERATION as usize],
            port_words: HashMap::from([(PortFieldId::Dst, words()), (PortFieldId::Src, words())]),
            port_bitmaps: HashMap::from([
                (PortFieldId::Dst, Vec::new()),
                (PortFieldId::Src, Vec::new()),
            ]),
            v4: HashMap::from([
                (AddrFieldId::Src, HashMap::new()),
                (AddrFieldId::Dst, HashMap::new()),
            ]),
            v6: HashMap::from([
                (AddrFieldId::Src, HashMap::new()),
                (AddrFieldId::Dst, HashMap::new()),
            ]),
            port_table: Some(vec![0; port_table::PER_GENERATION as usize]),
            v4_tables: [V4TableShadow::zeroed(), V4TableShadow::zeroed()],
        }
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

/// The apply state of one loaded program: what each generation holds, which one is
/// active, and which counter slot each live rule uses.
pub struct Generations {
    shadows: Vec<Shadow>,
    active: u32,
    /// Counter slot of every rule of the active generation, by rule identity.
    slots: HashMap<String, u32>,
    /// Rule names of the active generation, in rule order, with their slots.
    active_rules: Vec<(String, u32)>,
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
    /// unchanged rules keep counting into the same slots.
    pub fn adopt(active: u32, rules: Vec<(String, String, u32)>) -> Self {
        Self {
            shadows: (0..GENERATIONS).map(|_| Shadow::unknown()).collect(),
            active: active % GENERATIONS,
            slots: rules.iter().map(|(_, identity, slot)| (identity.clone(), *slot)).collect(),
            active_rules: rules.into_iter().map(|(name, _, slot)| (name, slot)).collect(),
            // The previous daemon may have flipped `ACTIVE` a moment ago.
            readers_pending: true,
        }
    }

    /// Identity and counter slot of every rule in force, in rule order (for the state
    /// file, so that a later daemon can [`Self::adopt`]).
    pub fn slots(&self) -> &HashMap<String, u32> {
        &self.slots
    }

    pub fn active(&self) -> u32 {
        self.active
    }

    /// Names and counter slots of the rules in force, in rule order.
    pub fn active_rules(&self) -> &[(String, u32)] {
        &self.active_rules
    }

    /// Writes `ruleset` into the inactive generation and makes it active. On error the
    /// active generation is untouched and still in force.
    ///
    /// Returns once the new generation is in force. The grace period after the flip
    /// runs on: the next apply waits for it before it rewrites the generation left here.
    pub fn apply(
        &mut self,
        maps: &mut impl Maps,
        ruleset: &Ruleset,
    ) -> Result<ApplyReport, MapWriteError> {
        if self.readers_pending {
            // Also before zeroing counter slots: the old generation's rules count into
            // them until its last packet is judged.
            maps.wait_for_readers();
            self.readers_pending = false;
        }
        let target = (self.active + 1) % GENERATIONS;
        let slots = self.plan_slots(ruleset);
        let used: HashSet<u32> = self.slots.values().copied().collect();
        // Slots the active generation does not use: no packet counts into them now.
        let fresh: Vec<u32> = slots.iter().copied().filter(|s| !used.contains(s)).collect();
        if !fresh.is_empty() {
            maps.zero_rule_counters(&fresh)?;
        }
        let writes = fresh.len() + self.write_generation(maps, target, ruleset, &slots)?;
        maps.set_active(target, ruleset.port_table.is_some())?;
        maps.start_grace_period();
        self.readers_pending = true;
        self.active = target;
        self.slots =
            ruleset.rules.iter().map(|r| r.identity.clone()).zip(slots.iter().copied()).collect();
        self.active_rules = ruleset.rules.iter().map(|r| r.name.clone()).zip(slots).collect();
        Ok(ApplyReport { kernel_generation: target, writes: writes + 1 })
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

    fn write_generation(
        &mut self,
        maps: &mut impl Maps,
        generation: u32,
        ruleset: &Ruleset,
        slots: &[u32],
    ) -> Result<usize, MapWriteError> {
        let shadow = &mut self.shadows[generation as usize];
        // A generation this process did not write whole: write every entry, and remove
        // whatever the tries hold for it that is not wanted.
        let force = !shadow.known;
        if force {
            for field in [AddrFieldId::Src, AddrFieldId::Dst] {
                let v4 = maps.v4_keys(field, generation)?;
                shadow.v4.insert(field, v4.into_iter().map(|k| (k, RuleBitmap::EMPTY)).collect());
                let v6 = maps.v6_keys(field, generation)?;
                shadow.v6.insert(field, v6.into_iter().map(|k| (k, RuleBitmap::EMPTY)).collect());
            }
        }
        let infos: Vec<RuleInfo> = ruleset
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
        let rules_base = generation * MAX_RULES as u32;
        let mut writes =
            sync_array(&mut shadow.rules, &infos, rules_base, force, |i, v| maps.set_rules(i, v))?;
        let fields_base = generation * field_bitmap::PER_GENERATION;
        writes += sync_array(
            &mut shadow.field_bitmaps,
            &ruleset.field_bitmaps,
            fields_base,
            force,
            |i, v| maps.set_field_bitmaps(i, v),
        )?;
        for (id, field) in [(PortFieldId::Dst, &ruleset.dport), (PortFieldId::Src, &ruleset.sport)]
        {
            let bitmaps = shadow.port_bitmaps.get_mut(&id).expect("both fields present");
            let base = generation * MAX_PORT_CLASSES;
            writes += sync_array(bitmaps, &field.bitmaps, base, force, |i, v| {
                maps.set_port_bitmaps(id, i, v)
            })?;
            let words = shadow.port_words.get_mut(&id).expect("both fields present");
            let base = generation * PORT_CLASS_WORDS;
            writes += sync_array(words, &field.class_words(), base, force, |i, v| {
                maps.set_port_classes(id, i, v)
            })?;
        }
        for (field, table) in ruleset.v4_tables.iter().enumerate() {
            let Some(table) = table else { continue };
            let current = &mut shadow.v4_tables[field];
            let f = field as u32;
            // Blocks and classes before the first level that refers to them.
            writes += sync_array(
                &mut current.classes,
                &table.classes,
                v4_table::class_index(generation, f, 0),
                force,
                |i, v| maps.set_v4_classes(i, v),
            )?;
            for (level, wanted, held) in [
                (V4Level::L3, &table.l3, &mut current.l3),
                (V4Level::L2, &table.l2, &mut current.l2),
            ] {
                let base = v4_table::block_index(generation, f, 0, 0);
                writes +=
                    sync_array(held, wanted, base, force, |i, v| maps.set_v4_table(level, i, v))?;
            }
            writes += sync_array(
                &mut current.l1,
                &table.l1,
                v4_table::l1_index(generation, f, 0),
                force,
                |i, v| maps.set_v4_table(V4Level::L1, i, v),
            )?;
        }
        for (index, (id, entries)) in
            [(AddrFieldId::Src, &ruleset.src_v4), (AddrFieldId::Dst, &ruleset.dst_v4)]
                .into_iter()
                .enumerate()
        {
            if ruleset.v4_tables[index].is_some() {
                // The program reads the tables for this field: its IPv4 trie is left as
                // it is (what it holds stays recorded, for when it is used again).
                continue;
            }
            let current = shadow.v4.get_mut(&id).expect("both fields present");
            let wanted = entries.iter().map(|(net, b)| (v4_key(generation, net), b));
            writes += sync_trie(current, wanted, force, |keys, bitmaps| match bitmaps {
                Some(bitmaps) => maps.insert_v4(id, keys, bitmaps),
                None => maps.remove_v4(id, keys),
            })?;
        }
        for (id, entries) in
            [(AddrFieldId::Src, &ruleset.src_v6), (AddrFieldId::Dst, &ruleset.dst_v6)]
        {
            let current = shadow.v6.get_mut(&id).expect("both fields present");
            let wanted = entries.iter().map(|(net, b)| (v6_key(generation, net), b));
            writes += sync_trie(current, wanted, force, |keys, bitmaps| match bitmaps {
                Some(bitmaps) => maps.insert_v6(id, keys, bitmaps),
                None => maps.remove_v6(id, keys),
            })?;
        }
        if let Some(table) = &ruleset.port_table {
            let entries: Vec<u32> = table
                .iter()
                .map(|&rule| match rule.checked_sub(1) {
                    None => 0,
                    Some(rule) => {
                        let (info, slot) = (&infos[usize::from(rule)], slots[usize::from(rule)]);
                        let verdict = match (info.action, info.monitor) {
                            (a, 0) if a == Action::Drop as u8 => Verdict::DropRule,
                            (a, _) if a == Action::Drop as u8 => Verdict::MonitorRule,
                            _ => Verdict::PassRule,
                        };
                        port_table::entry(verdict, slot as u16)
                    }
                })
                .collect();
            // Unknown contents (adopted maps): written whole, from a blank record.
            let whole = shadow.port_table.is_none();
            let current = shadow
                .port_table
                .get_or_insert_with(|| vec![0; port_table::PER_GENERATION as usize]);
            let base = generation * port_table::PER_GENERATION;
            let result =
                sync_array(current, &entries, base, whole, |i, v| maps.set_port_table(i, v));
            if whole && result.is_err() {
                shadow.port_table = None;
            }
            writes += result?;
        }
        // Last: the config says how many rule words are in use and which fields.
        if force || shadow.config != ruleset.config {
            maps.set_config(generation, &ruleset.config)?;
            shadow.config = ruleset.config;
            writes += 1;
        }
        shadow.known = true;
        Ok(writes)
    }
}

/// Writes, in one batch, the entries of `wanted` that differ from what `current` (one
/// generation of an array map, from index `base`) holds, or all of them if `force`;
/// then records in `current` what was written, also when the batch stopped part-way.
fn sync_array<V: Copy + PartialEq>(
    current: &mut Vec<V>,
    wanted: &[V],
    base: u32,
    force: bool,
    write: impl FnOnce(&[u32], &[V]) -> Result<(), MapWriteError>,
) -> Result<usize, MapWriteError> {
    let (indices, values): (Vec<u32>, Vec<V>) = wanted
        .iter()
        .enumerate()
        .filter(|(i, v)| force || current.get(*i) != Some(*v))
        .map(|(i, v)| (base + i as u32, *v))
        .unzip();
    if indices.is_empty() {
        return Ok(0);
    }
    let result = write(&indices, &values);
    let written = result.as_ref().map_or_else(|e| e.written.min(indices.len()), |()| indices.len());
    if let Some(last) = indices[..written].last() {
        let needed = (last - base) as usize + 1;
        if current.len() < needed {
            // Only the port bitmaps grow (they are as long as the classes ever used).
            // Every index past the old end is in the batch, so the loop below
            // overwrites each placeholder up to `needed`.
            current.resize(needed, values[0]);
        }
    }
    for (index, value) in indices.iter().zip(&values).take(written) {
        current[(index - base) as usize] = *value;
    }
    result.map(|()| indices.len())
}

/// Makes a trie generation hold `wanted`: removes the entries no longer wanted in one
/// batch, then inserts new and changed ones in another, in the order given (compile
/// sorts them, so consecutive inserts walk the same part of the trie). Removing first
/// keeps the generation within its share of the trie's entries at any time. Records in
/// `current` what was written, also when a batch stopped part-way.
/// `write(keys, None)` removes, `write(keys, Some(bitmaps))` inserts.
fn sync_trie<'a, K: Copy + Ord + std::hash::Hash>(
    current: &mut HashMap<K, RuleBitmap>,
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
        current.extend(keys[..written].iter().copied().zip(bitmaps[..written].iter().copied()));
        result?;
        writes += keys.len();
    }
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
