//! The apply logic against an in-memory model of the maps: what is written where, that
//! the flip comes last, that only differences are written, that counter slots follow
//! rule identity, and that a failure part-way leaves the ruleset in force untouched.

use std::{collections::BTreeMap, path::Path};

use super::*;
use crate::policy::{self, compile};
use policy_common::{BITMAP_WORDS, L4Class, field, rule_index};

/// A value the fake maps hold; rendered as the tests compare it. A bitmap (520 bytes) is
/// most of them; boxing it would only cost the tests allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    Config(GenConfig),
    Rule(RuleInfo),
    Limit(LimitConfig),
    Bitmap(RuleBitmap),
    Word(u64),
    Entry(u32),
    Zeroed,
}

impl Value {
    fn render(&self) -> String {
        match self {
            Self::Config(c) => format!("{c:?}"),
            Self::Rule(r) => format!("{r:?}"),
            Self::Limit(l) => format!("{l:?}"),
            Self::Bitmap(b) => format!("{b:?}"),
            Self::Word(w) => w.to_string(),
            Self::Entry(e) => e.to_string(),
            Self::Zeroed => String::new(),
        }
    }
}

/// The kernel maps as plain data, with an optional failure on the n-th element written
/// (counted over all batches, so a batch can fail after any number of its elements).
/// Array entries never written read as zero, as in the kernel.
#[derive(Default)]
struct FakeMaps {
    active: u32,
    /// What `ACTIVE` holds, flag included.
    active_raw: u32,
    writes: Vec<String>,
    /// Every cell's value as the tests compare it, by `map/index` or `map/key`.
    cells: BTreeMap<String, String>,
    values: BTreeMap<String, Value>,
    /// The array cells of `values` again, by map and index, for reading ranges.
    arrays: BTreeMap<(String, u32), Value>,
    fail_at: Option<usize>,
    zeroed: Vec<u32>,
    /// The map and size of every batch.
    batches: Vec<(String, usize)>,
    grace_periods: usize,
    /// `writes.len()` at each wait for readers.
    waits: Vec<usize>,
    /// Every trie key ever inserted, to answer `visit_v4`/`visit_v6` from `values`.
    v4: Vec<V4Key>,
    v6: Vec<V6Key>,
    /// The port table's rows per generation (`None`: all of them).
    port_rows: Option<u32>,
    /// The address tables' room; `None`: room for any.
    table_room: Option<TableRoom>,
}

fn bitmap_cell(map: BitmapMap, index: u32) -> String {
    match map {
        BitmapMap::Fields => format!("field/{index}"),
        BitmapMap::TcpFlags => format!("tcpflags/{index}"),
        BitmapMap::Ports(field) => format!("portmap/{field:?}/{index}"),
        BitmapMap::V4Classes => format!("v4class/{index}"),
        BitmapMap::V6Classes => format!("v6class/{index}"),
    }
}

fn word_cell(map: WordMap, index: u32) -> String {
    match map {
        WordMap::V4L1 => format!("v4table/L1/{index}"),
        WordMap::V6L1 => format!("v6table/L1/{index}"),
    }
}

impl FakeMaps {
    /// First-level entry `index` of `map` (0 where its word was never written).
    fn l1_entry(&self, map: WordMap, index: u32) -> u32 {
        let (word, shift) = v4_table::l1_word(index);
        let word = match self.values.get(&word_cell(map, word)) {
            Some(Value::Word(w)) => *w,
            _ => 0,
        };
        v4_table::l1_entry((word >> shift) as u32 & 0xffff)
    }
}

fn entry_cell(map: EntryMap, index: u32) -> String {
    match map {
        EntryMap::V4Table(level) => format!("v4table/{level:?}/{index}"),
        EntryMap::V6Blocks => format!("v6table/blocks/{index}"),
    }
}

impl FakeMaps {
    /// One batch: element by element, stopping at the injected failure like the kernel.
    fn batch<T>(
        &mut self,
        map: &str,
        elements: &[T],
        mut cell: impl FnMut(&mut Self, &T) -> (String, Option<Value>),
    ) -> Result<(), MapWriteError> {
        self.batches.push((map.to_string(), elements.len()));
        for (written, element) in elements.iter().enumerate() {
            let (key, value) = cell(self, element);
            if self.fail_at == Some(self.writes.len()) {
                return Err(MapWriteError {
                    map: "FAKE",
                    element: fake_element(&key),
                    batch: elements.len(),
                    written,
                    source: "injected failure".into(),
                });
            }
            self.writes.push(key.clone());
            self.set(key, value);
        }
        Ok(())
    }

    /// Sets a cell (or removes it, for `None`) without counting a write, as another
    /// program writing the maps would.
    fn set(&mut self, key: String, value: Option<Value>) {
        let key = key.trim_start_matches("remove ").to_string();
        let array = key
            .rsplit_once('/')
            .and_then(|(map, index)| Some((map.to_string(), index.parse::<u32>().ok()?)));
        match value {
            Some(value) => {
                self.cells.insert(key.clone(), value.render());
                self.values.insert(key, value);
                if let Some(cell) = array {
                    self.arrays.insert(cell, value);
                }
            }
            None => {
                self.cells.remove(&key);
                self.values.remove(&key);
                if let Some(cell) = array {
                    self.arrays.remove(&cell);
                }
            }
        }
    }

    /// `count` cells of array `map` from `start`, zero where nothing was written.
    fn read<T: Clone>(
        &self,
        map: &str,
        start: u32,
        count: u32,
        value: impl Fn(Option<&Value>) -> T,
    ) -> Vec<T> {
        let mut out = vec![value(None); count as usize];
        let range = (map.to_string(), start)..(map.to_string(), start + count);
        for ((_, index), cell) in self.arrays.range(range) {
            out[(index - start) as usize] = value(Some(cell));
        }
        out
    }

    fn bitmap_of(value: Option<&Value>) -> RuleBitmap {
        match value {
            Some(Value::Bitmap(b)) => *b,
            _ => RuleBitmap::EMPTY,
        }
    }
}

impl Maps for FakeMaps {
    fn set_config(&mut self, generation: u32, config: &GenConfig) -> Result<(), MapWriteError> {
        self.batch("config", &[(generation, *config)], |_, (g, c)| {
            (format!("config/{g}"), Some(Value::Config(*c)))
        })
    }
    fn set_rules(&mut self, indices: &[u32], infos: &[RuleInfo]) -> Result<(), MapWriteError> {
        let entries: Vec<_> = indices.iter().zip(infos).collect();
        self.batch("rules", &entries, |_, (i, v)| (format!("rule/{i}"), Some(Value::Rule(**v))))
    }
    fn set_limits(&mut self, indices: &[u32], limits: &[LimitConfig]) -> Result<(), MapWriteError> {
        let entries: Vec<_> = indices.iter().zip(limits).collect();
        self.batch("limits", &entries, |_, (i, v)| (format!("limit/{i}"), Some(Value::Limit(**v))))
    }
    fn set_bitmaps(
        &mut self,
        map: BitmapMap,
        indices: &[u32],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError> {
        let entries: Vec<_> = indices.iter().zip(bitmaps).collect();
        let name = bitmap_cell(map, 0);
        let name = name.trim_end_matches("/0");
        self.batch(name, &entries, |_, (i, v)| (bitmap_cell(map, **i), Some(Value::Bitmap(**v))))
    }
    fn set_port_classes(
        &mut self,
        field: PortFieldId,
        indices: &[u32],
        words: &[u64],
    ) -> Result<(), MapWriteError> {
        let entries: Vec<_> = indices.iter().zip(words).collect();
        self.batch(&format!("classes/{field:?}"), &entries, |_, (i, w)| {
            (format!("classes/{field:?}/{i}"), Some(Value::Word(**w)))
        })
    }
    fn set_port_table(&mut self, indices: &[u32], words: &[u64]) -> Result<(), MapWriteError> {
        let entries: Vec<_> = indices.iter().zip(words).collect();
        self.batch("port_table", &entries, |_, (i, w)| {
            (format!("port_table/{i}"), Some(Value::Word(**w)))
        })
    }
    fn set_words(
        &mut self,
        map: WordMap,
        indices: &[u32],
        words: &[u64],
    ) -> Result<(), MapWriteError> {
        let pairs: Vec<_> = indices.iter().zip(words).collect();
        let name = word_cell(map, 0);
        let name = name.trim_end_matches("/0");
        self.batch(name, &pairs, |_, (i, w)| (word_cell(map, **i), Some(Value::Word(**w))))
    }
    fn set_entries(
        &mut self,
        map: EntryMap,
        indices: &[u32],
        entries: &[u32],
    ) -> Result<(), MapWriteError> {
        let pairs: Vec<_> = indices.iter().zip(entries).collect();
        let name = entry_cell(map, 0);
        let name = name.trim_end_matches("/0");
        self.batch(name, &pairs, |_, (i, e)| (entry_cell(map, **i), Some(Value::Entry(**e))))
    }
    fn insert_v4(
        &mut self,
        field: AddrFieldId,
        keys: &[V4Key],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError> {
        let entries: Vec<_> = keys.iter().zip(bitmaps).collect();
        self.batch(&format!("v4/{field:?}"), &entries, |m, (k, v)| {
            m.v4.push(**k);
            (format!("v4/{field:?}/{k:?}"), Some(Value::Bitmap(**v)))
        })
    }
    fn remove_v4(&mut self, field: AddrFieldId, keys: &[V4Key]) -> Result<(), MapWriteError> {
        self.batch(&format!("remove v4/{field:?}"), keys, |_, k| {
            (format!("remove v4/{field:?}/{k:?}"), None)
        })
    }
    fn insert_v6(
        &mut self,
        field: AddrFieldId,
        keys: &[V6Key],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError> {
        let entries: Vec<_> = keys.iter().zip(bitmaps).collect();
        self.batch(&format!("v6/{field:?}"), &entries, |m, (k, v)| {
            m.v6.push(**k);
            (format!("v6/{field:?}/{k:?}"), Some(Value::Bitmap(**v)))
        })
    }
    fn remove_v6(&mut self, field: AddrFieldId, keys: &[V6Key]) -> Result<(), MapWriteError> {
        self.batch(&format!("remove v6/{field:?}"), keys, |_, k| {
            (format!("remove v6/{field:?}/{k:?}"), None)
        })
    }
    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), MapWriteError> {
        self.batch("zero", slots, |m, slot| {
            m.zeroed.push(*slot);
            (format!("zero/{slot}"), Some(Value::Zeroed))
        })
    }
    fn set_active(&mut self, value: u32) -> Result<(), MapWriteError> {
        self.batch("active", &[value], |_, v| ("active".into(), Some(Value::Entry(*v))))?;
        // Rendered as the tests compare it.
        let generation = value % GENERATIONS;
        let port_table = value & active::PORT_TABLE != 0;
        let shown = format!("{generation}{}", if port_table { "+table" } else { "" });
        self.cells.insert("active".into(), shown);
        self.active = generation;
        self.active_raw = value;
        Ok(())
    }
    fn port_table_rows(&self) -> u32 {
        self.port_rows.unwrap_or(port_table::MAX_ROWS_PER_GENERATION)
    }
    fn table_room(&self) -> TableRoom {
        self.table_room.unwrap_or(TableRoom::FULL)
    }
    fn start_grace_period(&mut self) {
        self.grace_periods += 1;
    }
    fn wait_for_readers(&mut self) {
        self.waits.push(self.writes.len());
    }
    fn active(&mut self) -> Result<u32, MapReadError> {
        Ok(self.active_raw)
    }
    fn config(&mut self, generation: u32) -> Result<GenConfig, MapReadError> {
        Ok(match self.values.get(&format!("config/{generation}")) {
            Some(Value::Config(c)) => *c,
            _ => ZERO_CONFIG,
        })
    }
    fn rules(&mut self, start: u32, count: u32) -> Result<Vec<RuleInfo>, MapReadError> {
        Ok(self.read("rule", start, count, |v| match v {
            Some(Value::Rule(r)) => *r,
            _ => ZERO_RULE,
        }))
    }
    fn limits(&mut self, start: u32, count: u32) -> Result<Vec<LimitConfig>, MapReadError> {
        Ok(self.read("limit", start, count, |v| match v {
            Some(Value::Limit(l)) => *l,
            _ => LimitConfig::default(),
        }))
    }
    fn bitmaps(
        &mut self,
        map: BitmapMap,
        start: u32,
        count: u32,
    ) -> Result<Vec<RuleBitmap>, MapReadError> {
        let name = bitmap_cell(map, 0);
        Ok(self.read(name.trim_end_matches("/0"), start, count, Self::bitmap_of))
    }
    fn port_classes(
        &mut self,
        field: PortFieldId,
        start: u32,
        count: u32,
    ) -> Result<Vec<u64>, MapReadError> {
        Ok(self.read(&format!("classes/{field:?}"), start, count, |v| match v {
            Some(Value::Word(w)) => *w,
            _ => 0,
        }))
    }
    fn port_table(&mut self, start: u32, count: u32) -> Result<Vec<u64>, MapReadError> {
        Ok(self.read("port_table", start, count, |v| match v {
            Some(Value::Word(w)) => *w,
            _ => 0,
        }))
    }
    fn words(&mut self, map: WordMap, start: u32, count: u32) -> Result<Vec<u64>, MapReadError> {
        let name = word_cell(map, 0);
        Ok(self.read(name.trim_end_matches("/0"), start, count, |v| match v {
            Some(Value::Word(w)) => *w,
            _ => 0,
        }))
    }
    fn entries(&mut self, map: EntryMap, start: u32, count: u32) -> Result<Vec<u32>, MapReadError> {
        let name = entry_cell(map, 0);
        Ok(self.read(name.trim_end_matches("/0"), start, count, |v| match v {
            Some(Value::Entry(e)) => *e,
            _ => 0,
        }))
    }
    fn visit_v4(
        &mut self,
        field: AddrFieldId,
        visit: &mut dyn FnMut(V4Key, &RuleBitmap),
    ) -> Result<(), MapReadError> {
        let mut keys = self.v4.clone();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if let Some(Value::Bitmap(b)) = self.values.get(&format!("v4/{field:?}/{key:?}")) {
                visit(key, b);
            }
        }
        Ok(())
    }
    fn visit_v6(
        &mut self,
        field: AddrFieldId,
        visit: &mut dyn FnMut(V6Key, &RuleBitmap),
    ) -> Result<(), MapReadError> {
        let mut keys = self.v6.clone();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if let Some(Value::Bitmap(b)) = self.values.get(&format!("v6/{field:?}/{key:?}")) {
                visit(key, b);
            }
        }
        Ok(())
    }
}

/// The compiled ruleset of `text`, its IPv4 addresses in the tries (as a policy with
/// more prefixes than the address tables hold): most tests here are about the tries.
fn ruleset(text: &str) -> Ruleset {
    ruleset_with_tables(text).without_address_tables()
}

/// The compiled ruleset of `text` as `compile` makes it.
fn ruleset_with_tables(text: &str) -> Ruleset {
    compile(&policy::parse([(Path::new("t.toml"), text)]).expect("valid test policy"))
}

const TWO_RULES: &str = "[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = 23\nsrc = \"192.0.2.0/24\"\n\
                         [[rule]]\nname = \"b\"\naction = \"pass\"\nprotocol = \"udp\"\n";

#[test]
fn the_first_apply_fills_generation_1_then_flips() {
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    let report = generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("apply");
    assert_eq!(report.kernel_generation, 1);
    assert_eq!(maps.active, 1);
    assert_eq!(maps.writes.last().map(String::as_str), Some("active"), "the flip comes last");
    assert_eq!(maps.grace_periods, 1, "a grace period starts after the flip");
    assert!(maps.waits.is_empty(), "fresh maps: nobody reads generation 1 before the flip");
    let gen1_rules = |maps: &FakeMaps| {
        maps.writes.iter().filter(|w| w.starts_with("rule/")).cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        gen1_rules(&maps),
        vec![format!("rule/{}", rule_index(1, 0)), format!("rule/{}", rule_index(1, 1))]
    );
    assert!(maps.writes.contains(&"config/1".to_string()));
    assert!(!maps.writes.iter().any(|w| w == "config/0"), "generation 0 is not touched");
    assert_eq!(maps.zeroed, vec![0, 1], "fresh counter slots are zeroed first");
    assert_eq!(named_slots(&generations), &[("a".to_string(), 0), ("b".to_string(), 1)]);
}

#[test]
fn applying_the_same_ruleset_twice_writes_each_generation_once() {
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    let rules = ruleset(TWO_RULES);
    generations.apply(&mut maps, &rules).expect("first");
    let first = maps.writes.len();
    generations.apply(&mut maps, &rules).expect("second: fills generation 0");
    let second = maps.writes.len() - first;
    generations.apply(&mut maps, &rules).expect("third: generation 1 already holds it");
    let third = maps.writes.len() - first - second;
    assert!(second > 2, "generation 0 had to be written");
    assert_eq!(third, 1, "only the flip: generation 1 still holds exactly this ruleset");
    assert_eq!(maps.active, 1);
}

#[test]
fn the_next_apply_waits_for_the_grace_period_before_writing() {
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("first");
    let before = maps.writes.len();
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("second");
    assert_eq!(maps.waits, vec![before], "one wait, before the first write into generation 0");
    assert_eq!(maps.grace_periods, 2);
}

#[test]
fn each_map_is_written_in_one_batch() {
    let mut maps = FakeMaps::default();
    let text = format!(
        "{TWO_RULES}[[rule]]\nname = \"c\"\naction = \"drop\"\nsrc = [\"198.51.100.0/24\", \"2001:db8::/32\"]\nsrc_ports = [1, 5, \"10-20\"]\n"
    );
    Generations::new().apply(&mut maps, &ruleset(&text)).expect("apply");
    let mut seen = std::collections::HashSet::new();
    for (map, _) in &maps.batches {
        assert!(
            seen.insert(map.clone()),
            "map {map} written in more than one batch: {:?}",
            maps.batches
        );
    }
    let v4 = maps.batches.iter().find(|(m, _)| m == "v4/Src").expect("v4 source prefixes");
    assert_eq!(v4.1, 3, "198.51.100.0/24, 192.0.2.0/24 and the /0");
}

#[test]
fn unchanged_rules_keep_their_counter_slots() {
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("first");
    // `a` unchanged but now second; `b` changed (tcp); `c` new.
    let next = "[[rule]]\nname = \"c\"\naction = \"drop\"\n\
                [[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = 23\nsrc = \"192.0.2.0/24\"\n\
                [[rule]]\nname = \"b\"\naction = \"pass\"\nprotocol = \"tcp\"\n";
    maps.zeroed.clear();
    generations.apply(&mut maps, &ruleset(next)).expect("second");
    assert_eq!(
        named_slots(&generations),
        &[("c".to_string(), 2), ("a".to_string(), 0), ("b".to_string(), 3)],
        "a keeps slot 0; new and changed rules get slots the active generation did not use"
    );
    assert_eq!(maps.zeroed, vec![2, 3]);
    // Next time, slot 1 (the old `b`) is free again.
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("third");
    assert_eq!(named_slots(&generations), &[("a".to_string(), 0), ("b".to_string(), 1)]);
}

#[test]
fn removed_prefixes_are_deleted_from_the_generation() {
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("first");
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("second");
    let no_src = "[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = 23\n";
    generations.apply(&mut maps, &ruleset(no_src)).expect("third, generation 1 again");
    let key = v4_key(1, &"192.0.2.0/24".parse().expect("net"));
    let removed = format!("remove v4/Src/{key:?}");
    assert!(maps.writes.contains(&removed), "{:?}", maps.writes);
    assert!(!maps.cells.contains_key(&format!("v4/Src/{key:?}")));
}

#[test]
fn stale_prefixes_are_removed_before_new_ones_are_inserted() {
    // A generation at its limit must not have to hold the old and the new prefixes at once.
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("first");
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("second");
    let other = TWO_RULES.replace("192.0.2.0/24", "198.51.100.0/24");
    let before = maps.writes.len();
    generations.apply(&mut maps, &ruleset(&other)).expect("third, generation 1 again");
    let position = |net: &str, prefix: &str| {
        let key = v4_key(1, &net.parse().expect("net"));
        let write = format!("{prefix}v4/Src/{key:?}");
        maps.writes[before..].iter().position(|w| *w == write).expect("written")
    };
    assert!(position("192.0.2.0/24", "remove ") < position("198.51.100.0/24", ""));
}

#[test]
fn a_failure_part_way_leaves_the_active_generation_in_force() {
    let rules = ruleset(TWO_RULES);
    for fail_at in 0..40 {
        let mut maps = FakeMaps::default();
        let mut generations = Generations::new();
        generations.apply(&mut maps, &rules).expect("first apply");
        let before = generations.active_rules().to_vec();
        maps.fail_at = Some(maps.writes.len() + fail_at);
        let other = ruleset("[[rule]]\nname = \"z\"\naction = \"drop\"\nsrc = \"2001:db8::/32\"\n");
        match generations.apply(&mut maps, &other) {
            Err(e) => {
                assert!(e.to_string().starts_with("writing "), "{e}");
                assert_eq!(maps.active, 1, "ACTIVE unchanged after failing at write {fail_at}");
                assert_eq!(generations.active(), 1);
                assert_eq!(generations.active_rules(), before.as_slice());
                // What did get written is recorded, so a retry writes the rest and
                // ends with exactly the wanted contents.
                maps.fail_at = None;
                generations.apply(&mut maps, &other).expect("retry");
                assert_eq!(maps.active, 0);
                let mut fresh = FakeMaps::default();
                let mut g = Generations::new();
                g.apply(&mut fresh, &rules).expect("fresh 1");
                g.apply(&mut fresh, &other).expect("fresh 2");
                let gen0 = |m: &FakeMaps| {
                    m.cells
                        .iter()
                        .filter(|(k, _)| !k.starts_with("zero") && k.as_str() != "active")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<BTreeMap<_, _>>()
                };
                assert_eq!(gen0(&maps), gen0(&fresh), "after a failure at write {fail_at}");
            }
            Ok(_) => {
                assert!(fail_at > 10, "a failure at write {fail_at} went unnoticed");
                break;
            }
        }
    }
}

#[test]
fn adopted_maps_are_rewritten_whole_and_stale_prefixes_removed() {
    // A previous daemon applied two policies (generation 1, then 0) and died.
    let mut maps = FakeMaps::default();
    let mut before = Generations::new();
    let old = ruleset("[[rule]]\nname = \"old\"\naction = \"drop\"\nsrc = \"198.51.100.0/24\"\n");
    before.apply(&mut maps, &old).expect("first");
    before.apply(&mut maps, &ruleset(TWO_RULES)).expect("second");
    let slots = before.active_rules().to_vec();
    assert_eq!(maps.active, 0);

    // A new daemon adopts the maps and applies the same two rules again.
    let mut adopted = Generations::adopt(maps.active, slots);
    let writes_before = maps.writes.len();
    adopted.apply(&mut maps, &ruleset(TWO_RULES)).expect("apply after adopting");
    assert_eq!(maps.active, 1);
    assert_eq!(
        maps.waits.last(),
        Some(&writes_before),
        "the previous daemon's flip may be recent: wait before writing"
    );
    let stale = v4_key(1, &"198.51.100.0/24".parse().expect("net"));
    assert!(
        !maps.cells.contains_key(&format!("v4/Src/{stale:?}")),
        "the old policy's prefix is removed: {:?}",
        maps.writes[writes_before..].iter().filter(|w| w.contains("v4")).collect::<Vec<_>>()
    );
    let new_writes = &maps.writes[writes_before..];
    // The destination port's classes (the only port field a rule constrains).
    assert!(
        new_writes.iter().filter(|w| w.starts_with("classes/Dst")).count() >= 16384,
        "every port word"
    );
    assert!(!new_writes.iter().any(|w| w.starts_with("classes/Src")), "no source port's");
    assert!(
        maps.batches.iter().any(|b| *b == ("classes/Dst".to_string(), 16384)),
        "a generation's port words in one batch: {:?}",
        maps.batches
    );
    assert!(new_writes.iter().any(|w| w == "config/1"));
    assert!(
        maps.zeroed.iter().filter(|s| **s < 2).count() == 2,
        "only the first daemon's fresh slots"
    );
    assert_eq!(adopted.active_rules(), before.active_rules(), "unchanged rules keep their slots");
}

const PORT_ONLY: &str = "[[rule]]\nname = \"ssh\"\naction = \"pass\"\nprotocol = \"tcp\"\ndst_ports = 22\n\
                         [[rule]]\nname = \"low-udp\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = \"1-10\"\n";
/// [`PORT_ONLY`] without its first rule.
const PORT_ONLY_NARROWER: &str =
    "[[rule]]\nname = \"low-udp\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = \"1-10\"\n";

/// The port table's entry for (generation, class, port), if `ACTIVE` names the class's
/// row, its word was written and the entry is not 0. `generation` is the active one.
fn table_cell(maps: &FakeMaps, generation: u32, class: L4Class, port: u16) -> Option<u16> {
    assert_eq!(maps.active, generation, "the rows of the active generation");
    let row = active::row_of(maps.active_raw, class as u32).checked_sub(1)?;
    let (word, shift) = port_table::word(port_table::index(row, port));
    let word = maps.values.get(&format!("port_table/{word}"))?;
    let Value::Word(word) = word else { return None };
    let entry = (word >> shift) as u16;
    (entry != 0).then_some(entry)
}

#[test]
fn port_only_rulesets_are_written_to_the_port_table_and_flagged_in_active() {
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    generations.apply(&mut maps, &ruleset(PORT_ONLY)).expect("port-only");
    assert_eq!(maps.cells.get("active").map(String::as_str), Some("1+table"));
    // Slots 0 and 1 (fresh maps); the TCP rule passes, the UDP one drops.
    let ssh = port_table::entry(Verdict::PassRule, 0);
    let low = port_table::entry(Verdict::DropRule, 1);
    assert_eq!(table_cell(&maps, 1, L4Class::Tcp, 22), Some(ssh));
    for port in 1..=10 {
        assert_eq!(table_cell(&maps, 1, L4Class::Udp, port), Some(low));
    }
    assert_eq!(table_cell(&maps, 1, L4Class::Udp, 11), None);
    assert_eq!(table_cell(&maps, 1, L4Class::Udp, 0), None);
    let table_writes = maps.writes.iter().filter(|w| w.starts_with("port_table/")).count();
    // tcp/22's word, and udp 0-3, 4-7 and 8-11.
    assert_eq!(table_writes, 4, "only the words of decided (class, port) pairs are written");

    // The UDP rule alone, into generation 0: it keeps its slot; tcp/22 is undecided.
    generations.apply(&mut maps, &ruleset(PORT_ONLY_NARROWER)).expect("narrower");
    assert_eq!(maps.cells.get("active").map(String::as_str), Some("0+table"));
    assert_eq!(table_cell(&maps, 0, L4Class::Udp, 5), Some(low));
    assert_eq!(table_cell(&maps, 0, L4Class::Tcp, 22), None);

    // A ruleset with addresses has no table: ACTIVE says so.
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("addresses");
    assert_eq!(maps.cells.get("active").map(String::as_str), Some("1"));

    // Back to a port-only ruleset in generation 0: only what differs is written.
    let before = maps.writes.len();
    generations.apply(&mut maps, &ruleset(PORT_ONLY_NARROWER)).expect("again");
    assert_eq!(maps.cells.get("active").map(String::as_str), Some("0+table"));
    let written: Vec<_> =
        maps.writes[before..].iter().filter(|w| w.starts_with("port_table/")).collect();
    // Generation 0 still holds this table (the rule got slot 1 again): nothing to write.
    assert!(written.is_empty(), "{written:?}");
    assert_eq!(table_cell(&maps, 0, L4Class::Udp, 5), Some(low));
}

#[test]
fn port_table_rows_are_shared_by_classes_decided_alike_and_kept_to_their_generation() {
    // One rule for TCP and UDP alike: one row, which both classes name; ICMP, ICMPv6 and
    // the other protocols have none (no rule decides them).
    let alike = ruleset("[[rule]]\nname = \"dns\"\naction = \"drop\"\ndst_ports = 53\n");
    let rows = alike.port_rows().expect("a port table");
    assert_eq!(rows.rows.len(), 1);
    assert_eq!(rows.class_rows, [Some(0), Some(0), None, None, None]);
    // Two rules: two rows.
    assert_eq!(ruleset(PORT_ONLY).port_rows().expect("a port table").rows.len(), 2);

    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    generations.apply(&mut maps, &alike).expect("apply");
    // Generation 1's region starts MAX_ROWS_PER_GENERATION rows in; both classes name its
    // first row (row 5, written 6 in ACTIVE), ICMP none.
    let g1 = port_table::MAX_ROWS_PER_GENERATION;
    for class in [L4Class::Tcp, L4Class::Udp] {
        assert_eq!(active::row_of(maps.active_raw, class as u32), g1 + 1);
    }
    assert_eq!(active::row_of(maps.active_raw, L4Class::Icmp as u32), 0);
    let drop = port_table::entry(Verdict::DropRule, 0);
    assert_eq!(table_cell(&maps, 1, L4Class::Tcp, 53), Some(drop));
    assert_eq!(table_cell(&maps, 1, L4Class::Udp, 53), Some(drop));
    assert_eq!(table_cell(&maps, 1, L4Class::Icmp, 53), None);
    let (word, _) = port_table::word(port_table::index(g1, 53));
    assert!(maps.values.contains_key(&format!("port_table/{word}")));
    // The next generation writes its own region (row 0 on).
    generations.apply(&mut maps, &ruleset(PORT_ONLY)).expect("apply");
    assert_eq!(active::row_of(maps.active_raw, L4Class::Tcp as u32), 1);
    assert_eq!(active::row_of(maps.active_raw, L4Class::Udp as u32), 2);
    assert!(generations.audit(&mut maps, &ruleset(PORT_ONLY)).expect("audit").is_empty());

    // Maps sized for one row a generation: generation 1 starts one row in, and a policy
    // of two rows is refused before anything is written, the one in force staying.
    let mut maps = FakeMaps { port_rows: Some(1), ..FakeMaps::default() };
    let mut generations = Generations::new();
    generations.apply(&mut maps, &alike).expect("apply");
    assert_eq!(active::row_of(maps.active_raw, L4Class::Udp as u32), 2);
    let (writes, active) = (maps.writes.len(), maps.active_raw);
    let err = generations.apply(&mut maps, &ruleset(PORT_ONLY)).expect_err("two rows");
    assert_eq!(err.map, PORT_TABLE_MAP);
    assert!(err.to_string().contains("PORT_TABLE"), "{err}");
    assert_eq!((maps.writes.len(), maps.active_raw), (writes, active));
    assert!(generations.audit(&mut maps, &alike).expect("audit").is_empty());
}

#[test]
fn a_failure_in_the_port_table_leaves_the_active_generation_in_force() {
    for fail_at in 0..12 {
        let mut maps = FakeMaps::default();
        let mut generations = Generations::new();
        generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("first apply");
        let table_start = maps.writes.len()
            + 2 // fresh counter slots
            + 2; // two rules
        maps.fail_at = Some(table_start + fail_at);
        let result = generations.apply(&mut maps, &ruleset(PORT_ONLY));
        if result.is_ok() {
            continue;
        }
        assert_eq!(maps.cells.get("active").map(String::as_str), Some("1"), "at {fail_at}");
        maps.fail_at = None;
        generations.apply(&mut maps, &ruleset(PORT_ONLY)).expect("retry");
        let mut fresh = FakeMaps::default();
        let mut g = Generations::new();
        g.apply(&mut fresh, &ruleset(TWO_RULES)).expect("fresh 1");
        g.apply(&mut fresh, &ruleset(PORT_ONLY)).expect("fresh 2");
        let table =
            |m: &FakeMaps| m.cells.iter().filter(|(k, _)| k.starts_with("port_table/")).count();
        assert_eq!(table(&maps), table(&fresh), "after a failure at write {fail_at}");
        assert_eq!(maps.cells.get("active"), fresh.cells.get("active"));
    }
}

#[test]
fn small_ipv4_prefix_sets_go_to_the_address_tables_not_the_trie() {
    let mut maps = FakeMaps::default();
    let mut generations = Generations::new();
    let tables = ruleset_with_tables(TWO_RULES);
    assert_ne!(tables.config.fields & field::SRC_V4_TABLE, 0);
    generations.apply(&mut maps, &tables).expect("tables");
    assert!(!maps.writes.iter().any(|w| w.starts_with("v4/Src/")), "the trie is left alone");
    // 192.0.2.0/24: one second-level block under 192.0; classes: the /0's and the /24's.
    assert_eq!(maps.l1_entry(WordMap::V4L1, v4_table::l1_index(1, 0, 0xc000)), v4_table::BLOCK);
    let l2 = format!("v4table/L2/{}", v4_table::block_index(1, 0, 0, 2));
    assert_eq!(maps.cells.get(&l2).map(String::as_str), Some("1"));
    assert_eq!(maps.writes.iter().filter(|w| w.starts_with("v4class/")).count(), 2);

    // The same rules in the trie (as if the prefixes did not fit): generation 0.
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("trie");
    let key = v4_key(0, &"192.0.2.0/24".parse().expect("net"));
    assert!(maps.cells.contains_key(&format!("v4/Src/{key:?}")));
    // Back to the tables in generation 1: they hold this already, nothing is rewritten.
    let before = maps.writes.len();
    generations.apply(&mut maps, &tables).expect("tables again");
    assert!(
        !maps.writes[before..]
            .iter()
            .any(|w| w.starts_with("v4table/") || w.starts_with("v4class/")),
        "{:?}",
        &maps.writes[before..]
    );
}

/// A policy whose source networks fit the IPv4 address tables.
fn table_policy(src: &str, extra_rules: usize) -> String {
    let mut text = format!("[[rule]]\nname = \"net\"\naction = \"drop\"\nsrc = \"{src}\"\n");
    for i in 0..extra_rules {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = {}\n",
            100 + i
        ));
    }
    text
}

/// The audit as the test oracle: after every apply the active generation must hold
/// exactly the ruleset, as read back.
fn assert_in_force(generations: &Generations, maps: &mut FakeMaps, ruleset: &Ruleset, step: &str) {
    let drift = generations.audit(maps, ruleset).expect("reading the fake maps");
    assert!(drift.is_empty(), "{step}: the maps differ from the ruleset in force: {drift:?}");
}

#[test]
fn an_adopted_generation_is_written_whole_before_it_is_trusted() {
    // A previous daemon: a /16 in the source address tables of generation 1, then a
    // policy without address tables in generation 0; it dies.
    let mut maps = FakeMaps::default();
    let mut before = Generations::new();
    let old = ruleset_with_tables(&table_policy("198.18.0.0/16", 3));
    before.apply(&mut maps, &old).expect("old policy");
    before.apply(&mut maps, &ruleset(PORT_ONLY)).expect("port-only");
    let stale_l1 = v4_table::l1_index(1, 0, 0xc612);
    assert_ne!(
        maps.l1_entry(WordMap::V4L1, stale_l1),
        0,
        "the old /16 is in generation 1's tables"
    );

    // The next daemon adopts the maps and applies three policies in turn: the third
    // writes generation 1's tables again, now for 198.19.0.0/16.
    let mut adopted = Generations::adopt(maps.active, Vec::new());
    let steps = [
        ruleset(PORT_ONLY_NARROWER),
        ruleset_with_tables(&table_policy("198.19.0.0/16", 0)),
        ruleset_with_tables(&table_policy("198.19.0.0/16", 1)),
    ];
    for (i, step) in steps.iter().enumerate() {
        adopted.apply(&mut maps, step).expect("apply");
        assert_in_force(&adopted, &mut maps, step, &format!("apply {i} after adopting"));
    }
    assert_eq!(maps.active, 1);
    // 198.18.0.0/16 belongs to no network of the policy now: the /0's class, 0 (an
    // entry never written is 0 too).
    let held = maps.l1_entry(WordMap::V4L1, stale_l1);
    assert_eq!(held, 0, "198.18/16 still maps to the old class or block");
}

#[test]
fn new_maps_a_migration_filled_are_written_only_where_the_policy_needs() {
    // A migration's new maps: ACTIVE and CONFIG copied from the old ones (generation 1
    // in force there, with a policy of address tables), all else zero as created.
    let mut old = FakeMaps::default();
    let mut before = Generations::new();
    let tables = ruleset_with_tables(&table_policy("198.18.0.0/16", 3));
    before.apply(&mut old, &tables).expect("old policy");
    assert_eq!(old.active, 1);
    let mut maps = FakeMaps { active: 1, active_raw: old.active_raw, ..FakeMaps::default() };
    let config = old.values.get("config/1").cloned().expect("generation 1's config");
    maps.values.insert("config/1".into(), config);

    let mut carried = Generations::carried(maps.active, before.active_rules().to_vec());
    let port_only = ruleset(PORT_ONLY);
    carried.apply(&mut maps, &port_only).expect("the policy, into the new maps");
    assert_eq!(maps.active, 0);
    assert_in_force(&carried, &mut maps, &port_only, "the migration's apply");
    // A few entries, not every port word and table entry of the generation.
    assert!(maps.writes.len() < 1000, "{} writes", maps.writes.len());
    assert!(maps.waits.is_empty(), "no program reads the new maps: nothing to wait for");
    // Back into generation 1, whose config was copied: written whole where needed.
    carried.apply(&mut maps, &tables).expect("the tables policy again");
    assert_in_force(&carried, &mut maps, &tables, "the next apply");
    carried.apply(&mut maps, &port_only).expect("and back");
    assert_in_force(&carried, &mut maps, &port_only, "and back");
}

#[test]
fn adopted_rule_entries_are_written_even_when_they_look_like_zeros() {
    // The previous daemon left drop rules in both generations' first entries.
    let mut maps = FakeMaps::default();
    let mut before = Generations::new();
    let drops = "[[rule]]\nname = \"d0\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = 53\n\
                 [[rule]]\nname = \"d1\"\naction = \"drop\"\nprotocol = \"udp\"\ndst_ports = 54\n";
    before.apply(&mut maps, &ruleset(drops)).expect("first");
    before.apply(&mut maps, &ruleset(drops)).expect("second");
    // A new daemon without a state file: every slot is free, so its pass rule takes
    // slot 0 and its entry is all zeros (pass, enforce, slot 0).
    let mut adopted = Generations::adopt(maps.active, Vec::new());
    let pass = ruleset(
        "[[rule]]\nname = \"dns\"\naction = \"pass\"\nprotocol = \"udp\"\ndst_ports = 53\n",
    );
    for round in 0..3 {
        adopted.apply(&mut maps, &pass).expect("apply");
        assert_eq!(named_slots(&adopted), &[("dns".to_string(), 0)]);
        let entry = format!("rule/{}", rule_index(maps.active, 0));
        assert_eq!(maps.values.get(&entry), Some(&Value::Rule(ZERO_RULE)), "round {round}");
        assert_in_force(&adopted, &mut maps, &pass, &format!("round {round}"));
    }
}

/// Every cell of the fake maps (and `ACTIVE`) changed to something else, and a few
/// trie keys added, as a stray program writing the maps would.
fn scribble(maps: &mut FakeMaps, seed: u64) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cells: Vec<(String, Value)> = maps.values.iter().map(|(k, v)| (k.clone(), *v)).collect();
    for (key, value) in cells {
        let mut bits = [0u64; BITMAP_WORDS];
        bits.iter_mut().for_each(|w| *w = next());
        let other = match value {
            Value::Config(mut c) => {
                c.fields ^= next() as u32 | 1;
                Value::Config(c)
            }
            Value::Rule(mut r) => {
                r.action ^= 1;
                Value::Rule(r)
            }
            Value::Limit(mut l) => {
                l.interval ^= next() | 1;
                Value::Limit(l)
            }
            Value::Bitmap(_) => Value::Bitmap(RuleBitmap::from_words(bits)),
            Value::Word(w) => Value::Word(w ^ (next() | 1)),
            Value::Entry(e) => Value::Entry(e ^ (next() as u32 | 1)),
            Value::Zeroed => Value::Zeroed,
        };
        maps.set(key, Some(other));
    }
    for generation in 0..2u8 {
        let key = (8 + 24, ipv4_key(generation, [198, 51, 100, next() as u8]));
        maps.v4.push(key);
        maps.set(
            format!("v4/Src/{key:?}"),
            Some(Value::Bitmap(RuleBitmap::from_words([!0; BITMAP_WORDS]))),
        );
    }
    maps.active_raw ^= 1;
}

#[test]
fn the_audit_finds_one_changed_entry_in_any_map() {
    use policy_common::{
        CONFIG_MAP, DPORT_BITMAPS_MAP, DPORT_CLASSES_MAP, FIELD_BITMAPS_MAP, PORT_TABLE_MAP,
        RULES_MAP, SPORT_CLASSES_MAP, SRC_V4_MAP, SRC_V6_MAP, V4_CLASSES_MAP, V4_L1_MAP, V4_L2_MAP,
        V6_BLOCKS_MAP, V6_CLASSES_MAP, V6_L1_MAP,
    };
    let common = [CONFIG_MAP, RULES_MAP, FIELD_BITMAPS_MAP];
    // The destination port's classes: no policy here but the last has a source port.
    let classes = [DPORT_CLASSES_MAP, DPORT_BITMAPS_MAP];
    let sport = "[[rule]]\nname = \"dns\"\naction = \"drop\"\nprotocol = \"udp\"\nsrc_ports = 53\n";
    let v6 = "[[rule]]\nname = \"v6\"\naction = \"drop\"\nsrc = \"2001:db8::/32\"\n";
    let policies = [
        (
            ruleset_with_tables(&table_policy("198.18.0.0/24", 2)),
            [&classes[..], &[V4_L1_MAP, V4_L2_MAP, V4_CLASSES_MAP]].concat(),
        ),
        (ruleset(TWO_RULES), [&classes[..], &[SRC_V4_MAP]].concat()),
        // The port table decides: the port classes are neither written nor read.
        (ruleset(PORT_ONLY), vec![PORT_TABLE_MAP]),
        (ruleset(&format!("{TWO_RULES}{v6}")), [&classes[..], &[SRC_V4_MAP, SRC_V6_MAP]].concat()),
        // The IPv6 address tables instead of the trie.
        (
            ruleset_with_tables(&format!("{TWO_RULES}{v6}")),
            [&classes[..], &[V4_L1_MAP, V6_L1_MAP, V6_BLOCKS_MAP, V6_CLASSES_MAP]].concat(),
        ),
        // The source port's classes alone.
        (ruleset(sport), vec![SPORT_CLASSES_MAP, SPORT_BITMAPS_MAP]),
    ];
    for (p, (rules, maps_used)) in policies.iter().enumerate() {
        let mut maps = FakeMaps::default();
        let mut generations = Generations::new();
        generations.apply(&mut maps, rules).expect("apply");
        assert_in_force(&generations, &mut maps, rules, "after the apply");
        // Cells of every map, one at a time: up to 16 of those written per map, and
        // some never written (zero) of the big arrays.
        let mut per_map: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for (key, value) in &maps.values {
            let map = key.rsplit_once('/').map_or(key.as_str(), |(m, _)| m).to_string();
            per_map.entry(map).or_default().push((key.clone(), *value));
        }
        // With each cell, the entries its change must make the audit find: one apply
        // from fresh maps writes only the active generation, whose every cell the
        // program reads.
        let mut cells: Vec<(String, Value, u64)> = per_map
            .into_iter()
            .filter(|(map, _)| map != "zero" && map != "active")
            .flat_map(|(_, cells)| {
                let step = cells.len().div_ceil(16);
                cells.into_iter().step_by(step).map(|(key, value)| (key, value, 1))
            })
            .collect();
        // Unwritten (zero) cells of the active generation's big arrays: a port field's
        // classes are read by the policies that constrain it, but for the port-only one
        // (2), the address tables only by the policies that have them (0 and 4), the
        // port table only by the port-only policy.
        let g = generations.active();
        let read = PortFieldId::read_by(rules);
        for k in (0..PORT_CLASS_WORDS).step_by(1021) {
            for field in [PortFieldId::Dst, PortFieldId::Src] {
                let key = format!("classes/{field:?}/{}", g * PORT_CLASS_WORDS + k);
                cells.push((key, Value::Word(0), u64::from(read.contains(&field))));
            }
        }
        for k in (0..v4_table::L1_ENTRIES).step_by(4099) {
            let (word, _) = v4_table::l1_word(v4_table::l1_index(g, 0, k));
            let read = p == 0 || p == 4;
            cells.push((word_cell(WordMap::V4L1, word), Value::Word(0), u64::from(read)));
            let (word, _) = v4_table::l1_word(v6_table::l1_index(g, 0, k));
            cells.push((word_cell(WordMap::V6L1, word), Value::Word(0), u64::from(p == 4)));
        }
        let rows = rules.port_rows().map_or(1, |ports| ports.rows.len() as u32);
        let region = g * port_table::MAX_ROWS_PER_GENERATION * port_table::WORDS_PER_ROW;
        for k in (0..rows * port_table::WORDS_PER_ROW).step_by(10_007) {
            let index = region + k;
            cells.push((format!("port_table/{index}"), Value::Word(0), u64::from(p == 2)));
        }
        let mut found = std::collections::BTreeSet::new();
        for (key, value, expected) in cells {
            let changed = match value {
                Value::Config(mut c) => {
                    c.default_action ^= 1;
                    Value::Config(c)
                }
                Value::Rule(mut r) => {
                    r.counter_slot += 1;
                    Value::Rule(r)
                }
                Value::Limit(mut l) => {
                    l.tolerance ^= 1;
                    Value::Limit(l)
                }
                Value::Bitmap(mut b) => {
                    b.words[BITMAP_WORDS - 1] ^= 1 << 63;
                    Value::Bitmap(b)
                }
                Value::Word(w) => Value::Word(w ^ 1),
                Value::Entry(e) => Value::Entry(e ^ 1),
                Value::Zeroed => continue,
            };
            let before = maps.values.get(&key).copied();
            maps.set(key.clone(), Some(changed));
            let drift = generations.audit(&mut maps, rules).expect("audit");
            maps.set(key.clone(), before);
            assert_eq!(drift.entries(), expected, "policy {p}: {key} changed: {drift:?}");
            found.extend(drift.maps.keys().copied());
        }
        for map in common.iter().chain(maps_used) {
            assert!(found.contains(map), "policy {p}: no change found in {map}: {found:?}");
        }
        maps.active_raw ^= active::PORT_TABLE;
        let drift = generations.audit(&mut maps, rules).expect("audit");
        assert_eq!(drift.maps.get(policy_common::ACTIVE_MAP), Some(&1), "policy {p}: {drift:?}");
        maps.active_raw ^= active::PORT_TABLE;
    }
}

#[test]
fn a_scribbled_generation_is_found_and_repaired() {
    for seed in 1..5 {
        let rules = ruleset_with_tables(&format!(
            "{}{TWO_RULES}[[rule]]\nname = \"v6\"\naction = \"drop\"\nsrc = \"2001:db8::/32\"\n",
            table_policy("198.18.0.0/16", 2)
        ));
        let mut maps = FakeMaps::default();
        let mut generations = Generations::new();
        generations.apply(&mut maps, &rules).expect("apply");
        generations.apply(&mut maps, &rules).expect("apply again: both generations hold it");
        scribble(&mut maps, seed);
        let drift = generations.audit(&mut maps, &rules).expect("audit");
        assert!(drift.entries() > 10, "seed {seed}: {drift:?}");
        for map in [policy_common::ACTIVE_MAP, policy_common::RULES_MAP, policy_common::CONFIG_MAP]
        {
            assert!(drift.maps.contains_key(map), "seed {seed}: {map} in {drift:?}");
        }
        let waits = maps.waits.len();
        generations.repair(&mut maps, &rules).expect("repair");
        assert_eq!(maps.waits.len(), waits + 1, "a grace period before rewriting: ACTIVE moved");
        assert_in_force(&generations, &mut maps, &rules, &format!("seed {seed}, repaired"));
        // The other generation was scribbled too: the next apply writes it whole.
        generations.apply(&mut maps, &rules).expect("apply after the repair");
        assert_in_force(&generations, &mut maps, &rules, &format!("seed {seed}, then applied"));
    }
}

/// The names and counter slots of the rules in force, in rule order.
fn named_slots(generations: &Generations) -> Vec<(String, u32)> {
    generations.active_rules().iter().map(|r| (r.name.clone(), r.slot)).collect()
}

/// A fake map key (`rule/7`) as the element a write failed at.
fn fake_element(key: &str) -> Element {
    key.rsplit('/').next().and_then(|i| i.parse().ok()).map_or(Element::Unknown, Element::Entry)
}

#[test]
fn a_trie_record_forgets_the_bitmaps_no_entry_holds() {
    let mut record = TrieShadow::new();
    for i in 0..1000u64 {
        let bitmap = RuleBitmap::from_words([i; BITMAP_WORDS]);
        record.insert(1u32, &bitmap);
        record.insert(2u32, &RuleBitmap::EMPTY);
        record.compact();
        assert_eq!(record.get(&1), Some(&bitmap), "round {i}");
        assert_eq!(record.get(&2), Some(&RuleBitmap::EMPTY), "round {i}");
    }
    // Two entries: at most 64 + 2 × 2 bitmaps are kept, not the 1,001 ever held.
    assert!(record.bitmaps.len() <= 68, "{} bitmaps kept", record.bitmaps.len());
    record.remove(&1);
    assert_eq!((record.len(), record.get(&1)), (1, None));
}

/// Where a written cell of the address tables' maps lies: (map, index).
fn table_cell_index(key: &str) -> Option<(&str, u32)> {
    let (map, index) = key.rsplit_once('/')?;
    let map = map.strip_prefix("remove ").unwrap_or(map);
    let tables = ["v4table/L2", "v4table/L3", "v4class", "v6table/blocks", "v6class"];
    tables.contains(&map).then(|| (map, index.parse().expect("an index")))
}

/// The address tables of both fields and both generations share their maps,
/// interleaved: a generation written never touches the other's entries, every entry
/// written lies within the room the policy's sizes give, and a policy that needs more
/// room than the maps have is refused before anything is written.
#[test]
fn address_tables_keep_to_their_shares_and_their_room() {
    const WIDE: &str = "[[rule]]\nname = \"a\"\naction = \"drop\"\n\
        src = [\"198.18.1.0/24\", \"198.18.2.7\", \"198.18.4.128/25\", \"fd00:1::/48\"]\n\
        dst = [\"198.18.3.0/25\", \"fd00:2::/40\", \"fd00:3:1::/64\"]\n";
    const OTHER: &str = "[[rule]]\nname = \"b\"\naction = \"drop\"\n\
        src = [\"198.18.9.0/24\", \"198.18.10.0/26\", \"fd00:9::/64\"]\n\
        dst = [\"198.18.11.1\", \"fd00:8::/56\"]\n";
    let (wide, other) = (ruleset_with_tables(WIDE), ruleset_with_tables(OTHER));
    for (name, r) in [("wide", &wide), ("other", &other)] {
        let fields = r.config.fields;
        for bit in
            [field::SRC_V4_TABLE, field::DST_V4_TABLE, field::SRC_V6_TABLE, field::DST_V6_TABLE]
        {
            assert_ne!(fields & bit, 0, "{name}: every field in the tables");
        }
    }
    let room = TableRoom::for_ruleset(&wide);
    assert!(room.holds(&TableRoom::used_by(&other)), "{room} holds {}", TableRoom::used_by(&other));
    let mut maps = FakeMaps { table_room: Some(room), ..FakeMaps::default() };
    let mut generations = Generations::new();
    // Generation 1, then 0, then 1 again: what 0 wrote must not have touched 1's
    // entries, which the third apply finds as it left them (its record says so) and the
    // audit reads back.
    generations.apply(&mut maps, &wide).expect("apply");
    generations.apply(&mut maps, &other).expect("apply");
    generations.apply(&mut maps, &wide).expect("apply");
    assert!(generations.audit(&mut maps, &wide).expect("audit").is_empty());
    for key in &maps.writes {
        let Some((map, index)) = table_cell_index(key) else { continue };
        let name = match map {
            "v4table/L2" => V4_L2_MAP,
            "v4table/L3" => V4_L3_MAP,
            "v4class" => V4_CLASSES_MAP,
            "v6table/blocks" => V6_BLOCKS_MAP,
            _ => V6_CLASSES_MAP,
        };
        let entries = room.entries(name).expect("a table map");
        assert!(index < entries, "{key}: past the {entries} entries of {name}");
    }
    // Maps with room for a smaller policy: refused, nothing written, the policy in force
    // kept.
    let small = ruleset_with_tables(
        "[[rule]]\nname = \"c\"\naction = \"drop\"\nsrc = [\"198.18.1.0/24\"]\n",
    );
    let mut maps =
        FakeMaps { table_room: Some(TableRoom::for_ruleset(&small)), ..FakeMaps::default() };
    let mut generations = Generations::new();
    generations.apply(&mut maps, &small).expect("apply");
    let (writes, active) = (maps.writes.len(), maps.active_raw);
    let err = generations.apply(&mut maps, &wide).expect_err("too little room");
    assert_eq!(err.map, V4_L1_MAP);
    assert!(err.source.to_string().contains("do not fit"), "{}", err.source);
    assert_eq!((maps.writes.len(), maps.active_raw), (writes, active));
    assert!(generations.audit(&mut maps, &small).expect("audit").is_empty());
    // The audit of the wider policy on those maps: drift (they cannot hold it).
    assert!(!generations.audit(&mut maps, &wide).expect("audit").is_empty());
}

/// A share's elements: their map indices, the span that holds the first n, and the
/// elements picked from a read of that span.
#[test]
fn shares_place_and_pick_their_elements() {
    let blocks = Share::blocks(1, 1);
    assert_eq!(blocks.base, v4_table::block_index(1, 1, 0, 0));
    assert_eq!(blocks.index(255), v4_table::block_index(1, 1, 0, 255));
    assert_eq!(blocks.index(256 + 7), v4_table::block_index(1, 1, 1, 7));
    assert_eq!(blocks.span(0), 0);
    assert_eq!(blocks.span(512), v4_table::block_index(1, 1, 1, 255) - blocks.base + 1);
    let read: Vec<u32> = (0..blocks.span(512)).map(|i| blocks.base + i).collect();
    let picked = blocks.pick(read);
    let wanted: Vec<u32> = (0..512).map(|i| blocks.index(i)).collect();
    assert_eq!(picked, wanted);
    let classes = Share::classes(0, 1);
    assert_eq!(classes.index(3), v6_table::class_index(0, 1, 3));
    assert_eq!(classes.pick((0..classes.span(3)).collect::<Vec<u32>>()), vec![0, 4, 8]);
    let flat = Share::contiguous(10);
    assert_eq!((flat.index(5), flat.span(5)), (15, 5));
    assert_eq!(flat.pick(vec![7, 8, 9]), vec![7, 8, 9]);
}
