//! Scribbling over the policy maps of a loaded program, as a stray tool or a bug would:
//! random values in both generations of every map the classifier reads (every entry of
//! the smaller maps, a good share of the big ones, all of the ranges a small policy
//! uses), random values for every trie key and random keys added, and `ACTIVE` itself.
//! Counters and event settings are left alone: they decide no verdict.

use aya::maps::{Array, LpmTrie, Map, MapData, lpm_trie::Key};
use policy_common::{
    ACTIVE_MAP, CONFIG_MAP, DPORT_BITMAPS_MAP, DPORT_CLASSES_MAP, DST_V4_MAP, DST_V6_MAP,
    EVENT_CLOCK_MAP, EVENT_SETTINGS_MAP, EVENTS_MAP, FIELD_BITMAPS_MAP, GenConfig, IPV4_KEY_LEN,
    IPV6_KEY_LEN, LIMIT_BUCKETS_MAP, LIMIT_STATS_MAP, LIMITS_MAP, LimitConfig, PORT_TABLE_MAP,
    REGIONS, RULE_COUNTERS_MAP, RULES_MAP, RuleBitmap, RuleInfo, SET_HITS_MAP, SET_SCRATCH_MAP,
    SET_STATS_MAP, SETS_MAP, SPORT_BITMAPS_MAP, SPORT_CLASSES_MAP, SRC_V4_MAP, SRC_V6_MAP,
    TCP_FLAGS_MAP, V4_CLASSES_MAP, V4_L1_MAP, V4_L2_MAP, V4_L3_MAP, V6_BLOCKS_MAP, V6_CLASSES_MAP,
    V6_L1_MAP, VERDICT_COUNTERS_MAP,
};

/// xorshift64*: cheap, deterministic by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Half the time small (a plausible class, block or rule), else anything.
    fn value(&mut self) -> u64 {
        let x = self.next();
        if x & 1 == 0 { (x >> 1) % 8 } else { x }
    }

    fn bitmap(&mut self) -> RuleBitmap {
        RuleBitmap { words: std::array::from_fn(|_| self.next()), summary: self.next() }
    }
}

/// What was scribbled: entries written per map.
pub type Scribbled = Vec<(String, usize)>;

/// Scribbles over the maps of a loaded program, by their ids.
pub fn by_ids(ids: &[u32], seed: u64) -> Scribbled {
    let maps = ids.iter().map(|id| {
        let map = MapData::from_id(*id).unwrap_or_else(|e| panic!("opening map {id}: {e}"));
        let info = map.info().expect("map info");
        (info.name_as_str().unwrap_or_default().to_string(), map)
    });
    scribble(maps.collect(), seed)
}

/// Scribbles over the maps pinned in `dir` (a filter's `maps/` directory).
pub fn pinned(dir: &std::path::Path, seed: u64) -> Scribbled {
    let maps = policy_common::MAP_NAMES.iter().map(|name| {
        let path = dir.join(name);
        let map = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (name.to_string(), map)
    });
    scribble(maps.collect(), seed)
}

fn scribble(maps: Vec<(String, MapData)>, seed: u64) -> Scribbled {
    let mut rng = Rng(seed | 1);
    let mut done = Vec::new();
    for (name, map) in maps {
        let n = match name.as_str() {
            ACTIVE_MAP => {
                let mut a: Array<_, u32> = Array::try_from(Map::Array(map)).expect("ACTIVE");
                a.set(0, rng.next() as u32, 0).expect("scribbling ACTIVE");
                1
            }
            CONFIG_MAP => fill(
                map,
                &name,
                |_| true,
                |r| GenConfig {
                    words: r.value() as u32,
                    fields: r.next() as u32,
                    default_action: r.next() as u8 & 1,
                    default_monitor: r.next() as u8 & 1,
                    fragments: r.next() as u8 % 3,
                    unparsable: r.next() as u8 & 1,
                    src_sets: r.next() as u8 % 5,
                    dst_sets: r.next() as u8 % 5,
                    _pad2: 0,
                    set_ids: [0; 8].map(|_: u32| r.next() as u32),
                },
                &mut rng,
            ),
            LIMITS_MAP => fill(
                map,
                &name,
                |_| true,
                |r| LimitConfig {
                    id: r.next() as u32,
                    flags: r.next() as u32 & 3,
                    interval: r.next(),
                    tolerance: r.next(),
                    v4_mask: r.next() as u32,
                    v6_mask: [0; 4].map(|_: u32| r.next() as u32),
                },
                &mut rng,
            ),
            RULES_MAP => fill(
                map,
                &name,
                |_| true,
                |r| RuleInfo {
                    action: r.next() as u8 & 1,
                    monitor: r.next() as u8 & 1,
                    _pad: 0,
                    counter_slot: r.value() as u32,
                },
                &mut rng,
            ),
            FIELD_BITMAPS_MAP | DPORT_BITMAPS_MAP | SPORT_BITMAPS_MAP | V4_CLASSES_MAP
            | V6_CLASSES_MAP | TCP_FLAGS_MAP => fill(map, &name, |_| true, Rng::bitmap, &mut rng),
            DPORT_CLASSES_MAP | SPORT_CLASSES_MAP => fill(
                map,
                &name,
                |_| true,
                |r| r.value().wrapping_mul(0x0001_0001_0001_0001),
                &mut rng,
            ),
            // Words of four 16-bit entries.
            V4_L1_MAP | V6_L1_MAP => fill(
                map,
                &name,
                |i| i % 4 == 0,
                |r| r.value().wrapping_mul(0x0001_0001_0001_0001),
                &mut rng,
            ),
            // The first blocks of each generation and field (what a small policy uses:
            // they are interleaved), and one entry in 64 of the rest.
            V4_L2_MAP | V4_L3_MAP => fill(
                map,
                &name,
                |i| i / 256 < 8 * REGIONS || i % 64 == 0,
                |r| r.value() as u32,
                &mut rng,
            ),
            V6_BLOCKS_MAP => fill(
                map,
                &name,
                |i| i / 256 < 8 * REGIONS || i % 64 == 0,
                |r| r.value() as u32,
                &mut rng,
            ),
            PORT_TABLE_MAP => fill(map, &name, |i| i % 2 == 0, |r| r.next(), &mut rng),
            SRC_V4_MAP | DST_V4_MAP => trie::<IPV4_KEY_LEN>(map, &name, &mut rng),
            SRC_V6_MAP | DST_V6_MAP => trie::<IPV6_KEY_LEN>(map, &name, &mut rng),
            // Counters and event sampling: no verdict reads them.
            RULE_COUNTERS_MAP | VERDICT_COUNTERS_MAP | EVENTS_MAP | EVENT_SETTINGS_MAP
            | EVENT_CLOCK_MAP | SET_STATS_MAP | SET_HITS_MAP | LIMIT_STATS_MAP => continue,
            // The buckets: state the program keeps, no policy's content (a scribbled
            // bucket is a source's rate, not a verdict the audit could restore).
            LIMIT_BUCKETS_MAP => continue,
            // Per-CPU scratch space the program writes before it reads.
            SET_SCRATCH_MAP => continue,
            // The daemon's note of the maps' layout, which the program does not read.
            policy_common::LAYOUT_MAP => continue,
            // The audit checks the sets' file entries and finds sets nobody has, but keeps
            // no record of run-time entries: scribbled ones of a known set would stay.
            SETS_MAP => continue,
            // The program's constants, frozen by the loader: no process can write them.
            ".rodata" => continue,
            // A new map the program reads would go unscribbled: say so.
            other => panic!("the program has a map `{other}` this scribbler does not know"),
        };
        done.push((name, n));
    }
    done
}

/// Writes `value` into every entry of an array whose index `pick` chooses.
fn fill<V: aya::Pod>(
    map: MapData,
    name: &str,
    pick: impl Fn(u32) -> bool,
    value: impl Fn(&mut Rng) -> V,
    rng: &mut Rng,
) -> usize {
    let entries = map.info().expect("map info").max_entries();
    let mut array: Array<_, V> =
        Array::try_from(Map::Array(map)).unwrap_or_else(|e| panic!("{name} as an array: {e}"));
    let mut written = 0;
    for i in (0..entries).filter(|i| pick(*i)) {
        array.set(i, value(rng), 0).unwrap_or_else(|e| panic!("scribbling {name}[{i}]: {e}"));
        written += 1;
    }
    written
}

/// A random value for every key of the trie, and 32 random keys per generation.
fn trie<const N: usize>(map: MapData, name: &str, rng: &mut Rng) -> usize {
    let mut trie: LpmTrie<_, [u8; N], RuleBitmap> =
        LpmTrie::try_from(Map::LpmTrie(map)).unwrap_or_else(|e| panic!("{name} as a trie: {e}"));
    let mut keys: Vec<Key<[u8; N]>> = trie.keys().map(|k| k.expect("a trie key")).collect();
    for generation in 0..2u8 {
        for _ in 0..32 {
            let mut data = [0u8; N];
            data.iter_mut().for_each(|b| *b = rng.next() as u8);
            data[0] = generation;
            let bits = (N as u32 - 1) * 8;
            let len = 8 + (rng.next() as u32 % (bits + 1));
            // Host bits zero, as the kernel wants them.
            for bit in len..N as u32 * 8 {
                data[(bit / 8) as usize] &= !(0x80 >> (bit % 8));
            }
            keys.push(Key::new(len, data));
        }
    }
    for key in &keys {
        trie.insert(key, rng.bitmap(), 0).unwrap_or_else(|e| panic!("scribbling {name}: {e}"));
    }
    keys.len()
}
