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
    GENERATION_PREFIX_BITS, GENERATIONS, GenConfig, IPV4_KEY_LEN, IPV6_KEY_LEN, MAX_PORT_CLASSES,
    MAX_RULES, PORT_CLASS_WORDS, RULE_COUNTER_SLOTS, RuleBitmap, RuleInfo, field_bitmap, ipv4_key,
    ipv6_key,
};

use crate::policy::{PortField, Ruleset};

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

pub type V4Key = (u32, [u8; IPV4_KEY_LEN]);
pub type V6Key = (u32, [u8; IPV6_KEY_LEN]);

/// A map write the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("writing {what} of map `{map}` failed")]
pub struct MapWriteError {
    pub map: &'static str,
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The map operations an apply needs; indices are absolute (generation folded in).
pub trait Maps {
    fn set_config(&mut self, generation: u32, config: &GenConfig) -> Result<(), MapWriteError>;
    fn set_rule(&mut self, index: u32, info: &RuleInfo) -> Result<(), MapWriteError>;
    fn set_field_bitmap(&mut self, index: u32, bitmap: &RuleBitmap) -> Result<(), MapWriteError>;
    fn set_port_classes(
        &mut self,
        field: PortFieldId,
        index: u32,
        word: u64,
    ) -> Result<(), MapWriteError>;
    fn set_port_bitmap(
        &mut self,
        field: PortFieldId,
        index: u32,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError>;
    fn insert_v4(
        &mut self,
        field: AddrFieldId,
        key: V4Key,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError>;
    fn remove_v4(&mut self, field: AddrFieldId, key: V4Key) -> Result<(), MapWriteError>;
    fn insert_v6(
        &mut self,
        field: AddrFieldId,
        key: V6Key,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError>;
    fn remove_v6(&mut self, field: AddrFieldId, key: V6Key) -> Result<(), MapWriteError>;
    /// Keys of an IPv4 trie that belong to `generation` (for a generation whose contents
    /// this process did not write: after adopting pinned maps).
    fn v4_keys(&mut self, field: AddrFieldId, generation: u32)
    -> Result<Vec<V4Key>, MapWriteError>;
    fn v6_keys(&mut self, field: AddrFieldId, generation: u32)
    -> Result<Vec<V6Key>, MapWriteError>;
    fn zero_rule_counter(&mut self, slot: u32) -> Result<(), MapWriteError>;
    fn set_active(&mut self, generation: u32) -> Result<(), MapWriteError>;
    /// Returns once no program run that could have read the previous `ACTIVE` value is
    /// still running (an RCU grace period).
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
}

const ZERO_CONFIG: GenConfig = GenConfig {
    words: 0,
    fields: 0,
    default_action: 0,
    default_monitor: 0,
    fragments: 0,
    _pad: 0,
    _pad2: 0,
};
const ZERO_RULE: RuleInfo = RuleInfo { action: 0, monitor: 0, _pad: 0, counter_slot: 0 };

impl Shadow {
    /// A generation of maps someone else wrote.
    fn unknown() -> Self {
        Self { known: false, ..Self::zeroed() }
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
    pub fn apply(
        &mut self,
        maps: &mut impl Maps,
        ruleset: &Ruleset,
    ) -> Result<ApplyReport, MapWriteError> {
        let target = (self.active + 1) % GENERATIONS;
        let slots = self.plan_slots(ruleset);
        let mut writes = 0;
        let used: HashSet<u32> = self.slots.values().copied().collect();
        for slot in slots.iter().filter(|s| !used.contains(s)) {
            // A slot the active generation does not use: no packet counts into it now.
            maps.zero_rule_counter(*slot)?;
            writes += 1;
        }
        writes += self.write_generation(maps, target, ruleset, &slots)?;
        maps.set_active(target)?;
        maps.wait_for_readers();
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
        let mut writes = 0;

        for (i, (rule, slot)) in ruleset.rules.iter().zip(slots).enumerate() {
            let info = RuleInfo {
                action: rule.action as u8,
                monitor: u8::from(rule.monitor),
                _pad: 0,
                counter_slot: *slot,
            };
            if force || shadow.rules[i] != info {
                maps.set_rule(generation * MAX_RULES as u32 + i as u32, &info)?;
                shadow.rules[i] = info;
                writes += 1;
            }
        }
        for (i, bitmap) in ruleset.field_bitmaps.iter().enumerate() {
            if force || shadow.field_bitmaps[i] != *bitmap {
                maps.set_field_bitmap(
                    generation * field_bitmap::PER_GENERATION + i as u32,
                    bitmap,
                )?;
                shadow.field_bitmaps[i] = *bitmap;
                writes += 1;
            }
        }
        for (id, field) in [(PortFieldId::Dst, &ruleset.dport), (PortFieldId::Src, &ruleset.sport)]
        {
            writes += write_port_field(maps, shadow, generation, id, field, force)?;
        }
        for (id, entries) in
            [(AddrFieldId::Src, &ruleset.src_v4), (AddrFieldId::Dst, &ruleset.dst_v4)]
        {
            let wanted: HashMap<V4Key, RuleBitmap> =
                entries.iter().map(|(net, b)| (v4_key(generation, net), *b)).collect();
            let current = shadow.v4.get_mut(&id).expect("both fields present");
            writes += sync_trie(current, &wanted, force, |k, b| maps_v4(maps, id, k, b))?;
        }
        for (id, entries) in
            [(AddrFieldId::Src, &ruleset.src_v6), (AddrFieldId::Dst, &ruleset.dst_v6)]
        {
            let wanted: HashMap<V6Key, RuleBitmap> =
                entries.iter().map(|(net, b)| (v6_key(generation, net), *b)).collect();
            let current = shadow.v6.get_mut(&id).expect("both fields present");
            writes += sync_trie(current, &wanted, force, |k, b| maps_v6(maps, id, k, b))?;
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

fn maps_v4(
    maps: &mut impl Maps,
    id: AddrFieldId,
    key: V4Key,
    bitmap: Option<&RuleBitmap>,
) -> Result<(), MapWriteError> {
    match bitmap {
        Some(b) => maps.insert_v4(id, key, b),
        None => maps.remove_v4(id, key),
    }
}

fn maps_v6(
    maps: &mut impl Maps,
    id: AddrFieldId,
    key: V6Key,
    bitmap: Option<&RuleBitmap>,
) -> Result<(), MapWriteError> {
    match bitmap {
        Some(b) => maps.insert_v6(id, key, b),
        None => maps.remove_v6(id, key),
    }
}

/// Makes a trie generation hold `wanted`: inserts new and changed entries, then removes
/// the ones no longer wanted. `write(key, Some(bitmap))` inserts, `None` removes.
fn sync_trie<K: Copy + Eq + std::hash::Hash>(
    current: &mut HashMap<K, RuleBitmap>,
    wanted: &HashMap<K, RuleBitmap>,
    force: bool,
    mut write: impl FnMut(K, Option<&RuleBitmap>) -> Result<(), MapWriteError>,
) -> Result<usize, MapWriteError> {
    let mut writes = 0;
    for (key, bitmap) in wanted {
        if force || current.get(key) != Some(bitmap) {
            write(*key, Some(bitmap))?;
            current.insert(*key, *bitmap);
            writes += 1;
        }
    }
    let stale: Vec<K> = current.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
    for key in stale {
        write(key, None)?;
        current.remove(&key);
        writes += 1;
    }
    Ok(writes)
}

fn write_port_field(
    maps: &mut impl Maps,
    shadow: &mut Shadow,
    generation: u32,
    id: PortFieldId,
    field: &PortField,
    force: bool,
) -> Result<usize, MapWriteError> {
    let mut writes = 0;
    let bitmaps = shadow.port_bitmaps.get_mut(&id).expect("both fields present");
    for (class, bitmap) in field.bitmaps.iter().enumerate() {
        if force || bitmaps.get(class) != Some(bitmap) {
            maps.set_port_bitmap(id, generation * MAX_PORT_CLASSES + class as u32, bitmap)?;
            if class >= bitmaps.len() {
                bitmaps.resize(class + 1, RuleBitmap::EMPTY);
            }
            bitmaps[class] = *bitmap;
            writes += 1;
        }
    }
    let words = shadow.port_words.get_mut(&id).expect("both fields present");
    for (i, word) in field.class_words().into_iter().enumerate() {
        if force || words[i] != word {
            maps.set_port_classes(id, generation * PORT_CLASS_WORDS + i as u32, word)?;
            words[i] = word;
            writes += 1;
        }
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
