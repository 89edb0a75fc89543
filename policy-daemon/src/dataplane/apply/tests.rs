//! The apply logic against an in-memory model of the maps: what is written where, that
//! the flip comes last, that only differences are written, that counter slots follow
//! rule identity, and that a failure part-way leaves the ruleset in force untouched.

use std::{collections::BTreeMap, path::Path};

use super::*;
use crate::policy::{self, compile};

/// The kernel maps as plain data, with an optional failure on the n-th write.
#[derive(Default)]
struct FakeMaps {
    active: u32,
    writes: Vec<String>,
    cells: BTreeMap<String, String>,
    fail_at: Option<usize>,
    zeroed: Vec<u32>,
    waits: usize,
    /// Every trie key ever inserted, to answer `v4_keys`/`v6_keys` from `cells`.
    v4: Vec<V4Key>,
    v6: Vec<V6Key>,
}

impl FakeMaps {
    fn write(&mut self, key: String, value: String) -> Result<(), MapWriteError> {
        if self.fail_at == Some(self.writes.len()) {
            return Err(MapWriteError {
                map: "FAKE",
                what: key,
                source: "injected failure".into(),
            });
        }
        self.writes.push(key.clone());
        self.cells.insert(key, value);
        Ok(())
    }
}

impl Maps for FakeMaps {
    fn set_config(&mut self, generation: u32, config: &GenConfig) -> Result<(), MapWriteError> {
        self.write(format!("config/{generation}"), format!("{config:?}"))
    }
    fn set_rule(&mut self, index: u32, info: &RuleInfo) -> Result<(), MapWriteError> {
        self.write(format!("rule/{index}"), format!("{info:?}"))
    }
    fn set_field_bitmap(&mut self, index: u32, bitmap: &RuleBitmap) -> Result<(), MapWriteError> {
        self.write(format!("field/{index}"), format!("{bitmap:?}"))
    }
    fn set_port_classes(
        &mut self,
        field: PortFieldId,
        index: u32,
        word: u64,
    ) -> Result<(), MapWriteError> {
        self.write(format!("classes/{field:?}/{index}"), word.to_string())
    }
    fn set_port_bitmap(
        &mut self,
        field: PortFieldId,
        index: u32,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError> {
        self.write(format!("portmap/{field:?}/{index}"), format!("{bitmap:?}"))
    }
    fn insert_v4(
        &mut self,
        field: AddrFieldId,
        key: V4Key,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError> {
        self.v4.push(key);
        self.write(format!("v4/{field:?}/{key:?}"), format!("{bitmap:?}"))
    }
    fn remove_v4(&mut self, field: AddrFieldId, key: V4Key) -> Result<(), MapWriteError> {
        let k = format!("v4/{field:?}/{key:?}");
        self.write(format!("remove {k}"), String::new())?;
        self.cells.remove(&k);
        Ok(())
    }
    fn insert_v6(
        &mut self,
        field: AddrFieldId,
        key: V6Key,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError> {
        self.v6.push(key);
        self.write(format!("v6/{field:?}/{key:?}"), format!("{bitmap:?}"))
    }
    fn remove_v6(&mut self, field: AddrFieldId, key: V6Key) -> Result<(), MapWriteError> {
        let k = format!("v6/{field:?}/{key:?}");
        self.write(format!("remove {k}"), String::new())?;
        self.cells.remove(&k);
        Ok(())
    }
    fn v4_keys(
        &mut self,
        field: AddrFieldId,
        generation: u32,
    ) -> Result<Vec<V4Key>, MapWriteError> {
        let prefix = format!("v4/{field:?}/");
        Ok(self
            .v4
            .iter()
            .filter(|k| {
                k.1[0] == generation as u8 && self.cells.contains_key(&format!("{prefix}{k:?}"))
            })
            .copied()
            .collect())
    }
    fn v6_keys(
        &mut self,
        field: AddrFieldId,
        generation: u32,
    ) -> Result<Vec<V6Key>, MapWriteError> {
        let prefix = format!("v6/{field:?}/");
        Ok(self
            .v6
            .iter()
            .filter(|k| {
                k.1[0] == generation as u8 && self.cells.contains_key(&format!("{prefix}{k:?}"))
            })
            .copied()
            .collect())
    }
    fn zero_rule_counter(&mut self, slot: u32) -> Result<(), MapWriteError> {
        self.zeroed.push(slot);
        self.write(format!("zero/{slot}"), String::new())
    }
    fn set_active(&mut self, generation: u32) -> Result<(), MapWriteError> {
        self.write("active".into(), generation.to_string())?;
        self.active = generation;
        Ok(())
    }
    fn wait_for_readers(&mut self) {
        self.waits += 1;
    }
}

fn ruleset(text: &str) -> Ruleset {
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
    assert_eq!(maps.waits, 1, "the old generation is waited for after the flip");
    let gen1_rules = |maps: &FakeMaps| {
        maps.writes.iter().filter(|w| w.starts_with("rule/")).cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        gen1_rules(&maps),
        vec![format!("rule/{}", MAX_RULES), format!("rule/{}", MAX_RULES + 1)]
    );
    assert!(maps.writes.contains(&"config/1".to_string()));
    assert!(!maps.writes.iter().any(|w| w == "config/0"), "generation 0 is not touched");
    assert_eq!(maps.zeroed, vec![0, 1], "fresh counter slots are zeroed first");
    assert_eq!(generations.active_rules(), &[("a".to_string(), 0), ("b".to_string(), 1)]);
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
        generations.active_rules(),
        &[("c".to_string(), 2), ("a".to_string(), 0), ("b".to_string(), 3)],
        "a keeps slot 0; new and changed rules get slots the active generation did not use"
    );
    assert_eq!(maps.zeroed, vec![2, 3]);
    // Next time, slot 1 (the old `b`) is free again.
    generations.apply(&mut maps, &ruleset(TWO_RULES)).expect("third");
    assert_eq!(generations.active_rules(), &[("a".to_string(), 0), ("b".to_string(), 1)]);
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
    let slots: Vec<(String, String, u32)> = before
        .active_rules()
        .iter()
        .map(|(name, slot)| {
            let identity = before.slots().iter().find(|(_, s)| *s == slot).map(|(i, _)| i.clone());
            (name.clone(), identity.unwrap_or_default(), *slot)
        })
        .collect();
    assert_eq!(maps.active, 0);

    // A new daemon adopts the maps and applies the same two rules again.
    let mut adopted = Generations::adopt(maps.active, slots);
    let writes_before = maps.writes.len();
    adopted.apply(&mut maps, &ruleset(TWO_RULES)).expect("apply after adopting");
    assert_eq!(maps.active, 1);
    let stale = v4_key(1, &"198.51.100.0/24".parse().expect("net"));
    assert!(
        !maps.cells.contains_key(&format!("v4/Src/{stale:?}")),
        "the old policy's prefix is removed: {:?}",
        maps.writes[writes_before..].iter().filter(|w| w.contains("v4")).collect::<Vec<_>>()
    );
    let new_writes = &maps.writes[writes_before..];
    assert!(
        new_writes.iter().filter(|w| w.starts_with("classes/")).count() >= 2 * 16384,
        "every port word"
    );
    assert!(new_writes.iter().any(|w| w == "config/1"));
    assert!(
        maps.zeroed.iter().filter(|s| **s < 2).count() == 2,
        "only the first daemon's fresh slots"
    );
    assert_eq!(adopted.active_rules(), before.active_rules(), "unchanged rules keep their slots");
}
