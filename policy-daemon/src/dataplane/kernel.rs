//! The [`Maps`] implementation over the loaded program's real maps: each write is one
//! batch (`super::batch`), and the grace period after a flip runs on a thread of its own.

use std::thread::JoinHandle;

use aya::{
    Ebpf,
    maps::{Array, IterableMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    util::nr_cpus,
};
use policy_common::{
    ACTIVE_MAP, CONFIG_MAP, Counter, DPORT_BITMAPS_MAP, DPORT_CLASSES_MAP, DST_V4_MAP, DST_V6_MAP,
    FIELD_BITMAPS_MAP, GenConfig, IPV4_KEY_LEN, IPV6_KEY_LEN, LIMIT_STATS_MAP, LIMITS_MAP,
    LimitConfig, PORT_TABLE_MAP, RULE_COUNTER_SLOTS, RULE_COUNTERS_MAP, RULES_MAP, RuleBitmap,
    RuleInfo, SPORT_BITMAPS_MAP, SPORT_CLASSES_MAP, SRC_V4_MAP, SRC_V6_MAP, TCP_FLAGS_MAP,
    V4_CLASSES_MAP, V4_L1_MAP, V4_L2_MAP, V4_L3_MAP, V6_BLOCKS_MAP, V6_CLASSES_MAP, V6_L1_MAP,
    VERDICT_COUNTERS_MAP, port_table,
};

use super::{
    DataplaneError,
    apply::{
        AddrFieldId, BitmapMap, Element, EntryMap, MapReadError, MapWriteError, Maps, PortFieldId,
        V4Key, V4Level, V6Key, WordMap,
    },
    batch::{BatchError, BatchMap},
    migrate::TableRoom,
};

/// Every map of the program, taken out of the [`Ebpf`] object with its type checked,
/// and a batch handle on each map an apply writes.
pub struct KernelMaps {
    active: Array<MapData, u32>,
    pub rule_counters: PerCpuArray<MapData, Counter>,
    pub verdict_counters: PerCpuArray<MapData, Counter>,
    cpus: usize,
    config: Batched<Array<MapData, GenConfig>>,
    rules: Batched<Array<MapData, RuleInfo>>,
    limits: Batched<Array<MapData, LimitConfig>>,
    pub limit_stats: PerCpuArray<MapData, Counter>,
    limit_stats_batch: BatchMap,
    port_table: Batched<Array<MapData, u64>>,
    v4_l1: Batched<Array<MapData, u64>>,
    v4_l2: Batched<Array<MapData, u32>>,
    v4_l3: Batched<Array<MapData, u32>>,
    v4_classes: Batched<Array<MapData, RuleBitmap>>,
    v6_l1: Batched<Array<MapData, u64>>,
    v6_blocks: Batched<Array<MapData, u32>>,
    v6_classes: Batched<Array<MapData, RuleBitmap>>,
    field_bitmaps: Batched<Array<MapData, RuleBitmap>>,
    tcp_flags: Batched<Array<MapData, RuleBitmap>>,
    dport_classes: Batched<Array<MapData, u64>>,
    sport_classes: Batched<Array<MapData, u64>>,
    dport_bitmaps: Batched<Array<MapData, RuleBitmap>>,
    sport_bitmaps: Batched<Array<MapData, RuleBitmap>>,
    src_v4: Trie<IPV4_KEY_LEN>,
    dst_v4: Trie<IPV4_KEY_LEN>,
    src_v6: Trie<IPV6_KEY_LEN>,
    dst_v6: Trie<IPV6_KEY_LEN>,
    counters: BatchMap,
    /// The grace period started after the last flip, running on its own thread.
    grace_period: Option<JoinHandle<()>>,
}

/// A map as aya took it, with a batch handle on it. The aya handle stays open: the
/// program's instructions name the map by that descriptor's number until it is loaded.
struct Batched<T> {
    _map: T,
    batch: BatchMap,
}

/// An LPM trie: aya's handle to read keys one by one, the batch handle for the rest.
struct Trie<const N: usize> {
    map: LpmTrie<MapData, [u8; N], RuleBitmap>,
    batch: BatchMap,
}

fn take<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let raw = ebpf.take_map(map).ok_or(DataplaneError::MissingMap(map))?;
    T::try_from(raw).map_err(|source| DataplaneError::MapType { map, source })
}

/// A map whose type and layout aya checked (as `T`), with a batch handle.
fn take_batch<T>(
    ebpf: &mut Ebpf,
    map: &'static str,
    cpus: usize,
) -> Result<Batched<T>, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = MapError> + IterableMapData,
{
    let typed: T = take(ebpf, map)?;
    let batch = batch_of(&typed, map, cpus)?;
    Ok(Batched { _map: typed, batch })
}

fn batch_of<T: IterableMapData>(
    typed: &T,
    map: &'static str,
    cpus: usize,
) -> Result<BatchMap, DataplaneError> {
    BatchMap::new(map, typed.map_data(), cpus)
        .map_err(|source| DataplaneError::MapRead { map, source })
}

/// The [`MapData`] under a typed aya map.
trait IterableMapData {
    fn map_data(&self) -> &MapData;
}

impl<V: aya::Pod> IterableMapData for Array<MapData, V> {
    fn map_data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

impl<V: aya::Pod> IterableMapData for PerCpuArray<MapData, V> {
    fn map_data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

impl<const N: usize> IterableMapData for LpmTrie<MapData, [u8; N], RuleBitmap> {
    fn map_data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

fn take_trie<const N: usize>(
    ebpf: &mut Ebpf,
    map: &'static str,
    cpus: usize,
) -> Result<Trie<N>, DataplaneError> {
    let typed: LpmTrie<MapData, [u8; N], RuleBitmap> = take(ebpf, map)?;
    let batch = batch_of(&typed, map, cpus)?;
    Ok(Trie { map: typed, batch })
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let cpus = nr_cpus().map_err(|(_, source)| DataplaneError::Cpus(source))?;
        let rule_counters: PerCpuArray<MapData, Counter> = take(ebpf, RULE_COUNTERS_MAP)?;
        let counters = batch_of(&rule_counters, RULE_COUNTERS_MAP, cpus)?;
        let limit_stats: PerCpuArray<MapData, Counter> = take(ebpf, LIMIT_STATS_MAP)?;
        let limit_stats_batch = batch_of(&limit_stats, LIMIT_STATS_MAP, cpus)?;
        Ok(Self {
            limits: take_batch::<Array<MapData, LimitConfig>>(ebpf, LIMITS_MAP, cpus)?,
            limit_stats,
            limit_stats_batch,
            active: take(ebpf, ACTIVE_MAP)?,
            config: take_batch::<Array<MapData, GenConfig>>(ebpf, CONFIG_MAP, cpus)?,
            rules: take_batch::<Array<MapData, RuleInfo>>(ebpf, RULES_MAP, cpus)?,
            port_table: take_batch::<Array<MapData, u64>>(ebpf, PORT_TABLE_MAP, cpus)?,
            v4_l1: take_batch::<Array<MapData, u64>>(ebpf, V4_L1_MAP, cpus)?,
            v4_l2: take_batch::<Array<MapData, u32>>(ebpf, V4_L2_MAP, cpus)?,
            v4_l3: take_batch::<Array<MapData, u32>>(ebpf, V4_L3_MAP, cpus)?,
            v4_classes: take_batch::<Array<MapData, RuleBitmap>>(ebpf, V4_CLASSES_MAP, cpus)?,
            v6_l1: take_batch::<Array<MapData, u64>>(ebpf, V6_L1_MAP, cpus)?,
            v6_blocks: take_batch::<Array<MapData, u32>>(ebpf, V6_BLOCKS_MAP, cpus)?,
            v6_classes: take_batch::<Array<MapData, RuleBitmap>>(ebpf, V6_CLASSES_MAP, cpus)?,
            field_bitmaps: take_batch::<Array<MapData, RuleBitmap>>(ebpf, FIELD_BITMAPS_MAP, cpus)?,
            tcp_flags: take_batch::<Array<MapData, RuleBitmap>>(ebpf, TCP_FLAGS_MAP, cpus)?,
            dport_classes: take_batch::<Array<MapData, u64>>(ebpf, DPORT_CLASSES_MAP, cpus)?,
            sport_classes: take_batch::<Array<MapData, u64>>(ebpf, SPORT_CLASSES_MAP, cpus)?,
            dport_bitmaps: take_batch::<Array<MapData, RuleBitmap>>(ebpf, DPORT_BITMAPS_MAP, cpus)?,
            sport_bitmaps: take_batch::<Array<MapData, RuleBitmap>>(ebpf, SPORT_BITMAPS_MAP, cpus)?,
            src_v4: take_trie(ebpf, SRC_V4_MAP, cpus)?,
            dst_v4: take_trie(ebpf, DST_V4_MAP, cpus)?,
            src_v6: take_trie(ebpf, SRC_V6_MAP, cpus)?,
            dst_v6: take_trie(ebpf, DST_V6_MAP, cpus)?,
            rule_counters,
            counters,
            verdict_counters: take(ebpf, VERDICT_COUNTERS_MAP)?,
            cpus,
            grace_period: None,
        })
    }

    /// What `ACTIVE` holds: the generation the program reads.
    pub fn active_generation(&self) -> Result<u32, DataplaneError> {
        // The value also carries flags and rows (`policy_common::active`), multiples of GENERATIONS.
        self.active
            .get(&0, 0)
            .map(|value| value % policy_common::GENERATIONS)
            .map_err(|source| DataplaneError::MapRead { map: ACTIVE_MAP, source })
    }

    /// A counter summed over CPUs.
    pub fn read_counter(
        map: &PerCpuArray<MapData, Counter>,
        name: &'static str,
        index: u32,
    ) -> Result<Counter, DataplaneError> {
        super::sum_counter(map, index)
            .map_err(|source| DataplaneError::MapRead { map: name, source })
    }
}

/// A trie key as the apply logic holds it: prefix length and data.
type TrieKey<const N: usize> = (u32, [u8; N]);

/// Calls `visit` with every entry of a trie: in a few BPF_MAP_LOOKUP_BATCH calls, or one
/// by one where the kernel lacks it.
fn visit_trie<const N: usize>(
    trie: &mut Trie<N>,
    visit: &mut dyn FnMut(TrieKey<N>, &RuleBitmap),
) -> Result<(), MapReadError> {
    let map = trie.batch.name();
    let read_failed =
        |source: Box<dyn std::error::Error + Send + Sync>| MapReadError { map, source };
    let mut each =
        |key: &Key<[u8; N]>, bitmap: &RuleBitmap| visit((key.prefix_len(), key.data()), bitmap);
    match trie.batch.entries(&mut each) {
        Some(result) => result.map_err(|e| read_failed(Box::new(e.source))),
        None => {
            for entry in trie.map.iter() {
                let (key, bitmap) = entry.map_err(|e| read_failed(Box::new(e)))?;
                each(&key, &bitmap);
            }
            Ok(())
        }
    }
}

/// `count` entries of an array from `start`.
fn read_array<V: aya::Pod>(
    map: &mut BatchMap,
    start: u32,
    count: u32,
) -> Result<Vec<V>, MapReadError> {
    map.range(start, count)
        .map_err(|e| MapReadError { map: map.name(), source: Box::new(e.source) })
}

/// A batch of `batch` elements the kernel stopped at element `e.done`: `element`.
fn batch_failed(
    map: &'static str,
    element: Option<Element>,
    batch: usize,
    e: BatchError,
) -> MapWriteError {
    MapWriteError {
        map,
        element: element.unwrap_or(Element::Unknown),
        batch,
        written: e.done,
        source: Box::new(e.source),
    }
}

/// Writes an array batch; on failure names the index the kernel refused.
fn write_array<V: aya::Pod>(
    map: &mut BatchMap,
    indices: &[u32],
    values: &[V],
) -> Result<(), MapWriteError> {
    map.update(indices, values).map_err(|e| {
        let element = indices.get(e.done).map(|i| Element::Entry(*i));
        batch_failed(map.name(), element, indices.len(), e)
    })
}

fn trie_keys_of<const N: usize>(keys: &[(u32, [u8; N])]) -> Vec<Key<[u8; N]>> {
    keys.iter().map(|(len, data)| Key::new(*len, *data)).collect()
}

/// `prefix` names a key in errors.
fn insert_trie<const N: usize>(
    trie: &mut Trie<N>,
    keys: &[(u32, [u8; N])],
    bitmaps: &[RuleBitmap],
    prefix: fn((u32, [u8; N])) -> Element,
) -> Result<(), MapWriteError> {
    let name = trie.batch.name();
    trie.batch
        .update(&trie_keys_of(keys), bitmaps)
        .map_err(|e| batch_failed(name, keys.get(e.done).copied().map(prefix), keys.len(), e))
}

fn remove_trie<const N: usize>(
    trie: &mut Trie<N>,
    keys: &[(u32, [u8; N])],
    prefix: fn((u32, [u8; N])) -> Element,
) -> Result<(), MapWriteError> {
    let name = trie.batch.name();
    trie.batch
        .delete(&trie_keys_of(keys))
        .map_err(|e| batch_failed(name, keys.get(e.done).copied().map(prefix), keys.len(), e))
}

impl KernelMaps {
    /// The map `name` as aya holds it, if it is one of these.
    pub fn data(&self, name: &str) -> Option<&MapData> {
        let map: &MapData = match name {
            ACTIVE_MAP => IterableMap::map(&self.active),
            CONFIG_MAP => self.config._map.map_data(),
            RULES_MAP => self.rules._map.map_data(),
            LIMITS_MAP => self.limits._map.map_data(),
            LIMIT_STATS_MAP => self.limit_stats.map_data(),
            PORT_TABLE_MAP => self.port_table._map.map_data(),
            V4_L1_MAP => self.v4_l1._map.map_data(),
            V4_L2_MAP => self.v4_l2._map.map_data(),
            V4_L3_MAP => self.v4_l3._map.map_data(),
            V4_CLASSES_MAP => self.v4_classes._map.map_data(),
            V6_L1_MAP => self.v6_l1._map.map_data(),
            V6_BLOCKS_MAP => self.v6_blocks._map.map_data(),
            V6_CLASSES_MAP => self.v6_classes._map.map_data(),
            FIELD_BITMAPS_MAP => self.field_bitmaps._map.map_data(),
            TCP_FLAGS_MAP => self.tcp_flags._map.map_data(),
            DPORT_CLASSES_MAP => self.dport_classes._map.map_data(),
            SPORT_CLASSES_MAP => self.sport_classes._map.map_data(),
            DPORT_BITMAPS_MAP => self.dport_bitmaps._map.map_data(),
            SPORT_BITMAPS_MAP => self.sport_bitmaps._map.map_data(),
            SRC_V4_MAP => self.src_v4.map.map_data(),
            DST_V4_MAP => self.dst_v4.map.map_data(),
            SRC_V6_MAP => self.src_v6.map.map_data(),
            DST_V6_MAP => self.dst_v6.map.map_data(),
            RULE_COUNTERS_MAP => self.rule_counters.map_data(),
            VERDICT_COUNTERS_MAP => self.verdict_counters.map_data(),
            _ => return None,
        };
        Some(map)
    }

    fn bitmap_map(&mut self, map: BitmapMap) -> &mut BatchMap {
        match map {
            BitmapMap::Fields => &mut self.field_bitmaps.batch,
            BitmapMap::TcpFlags => &mut self.tcp_flags.batch,
            BitmapMap::Ports(PortFieldId::Dst) => &mut self.dport_bitmaps.batch,
            BitmapMap::Ports(PortFieldId::Src) => &mut self.sport_bitmaps.batch,
            BitmapMap::V4Classes => &mut self.v4_classes.batch,
            BitmapMap::V6Classes => &mut self.v6_classes.batch,
        }
    }

    fn entry_map(&mut self, map: EntryMap) -> &mut BatchMap {
        match map {
            EntryMap::V4Table(V4Level::L2) => &mut self.v4_l2.batch,
            EntryMap::V4Table(V4Level::L3) => &mut self.v4_l3.batch,
            EntryMap::V6Blocks => &mut self.v6_blocks.batch,
        }
    }

    fn word_map(&mut self, map: WordMap) -> &mut BatchMap {
        match map {
            WordMap::V4L1 => &mut self.v4_l1.batch,
            WordMap::V6L1 => &mut self.v6_l1.batch,
        }
    }

    fn v4(&mut self, field: AddrFieldId) -> &mut Trie<IPV4_KEY_LEN> {
        match field {
            AddrFieldId::Src => &mut self.src_v4,
            AddrFieldId::Dst => &mut self.dst_v4,
        }
    }

    fn v6(&mut self, field: AddrFieldId) -> &mut Trie<IPV6_KEY_LEN> {
        match field {
            AddrFieldId::Src => &mut self.src_v6,
            AddrFieldId::Dst => &mut self.dst_v6,
        }
    }
}

impl Maps for KernelMaps {
    fn set_config(&mut self, generation: u32, config: &GenConfig) -> Result<(), MapWriteError> {
        write_array(&mut self.config.batch, &[generation], std::slice::from_ref(config))
    }

    fn set_rules(&mut self, indices: &[u32], infos: &[RuleInfo]) -> Result<(), MapWriteError> {
        write_array(&mut self.rules.batch, indices, infos)
    }

    fn set_limits(&mut self, indices: &[u32], limits: &[LimitConfig]) -> Result<(), MapWriteError> {
        write_array(&mut self.limits.batch, indices, limits)
    }

    fn set_bitmaps(
        &mut self,
        map: BitmapMap,
        indices: &[u32],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError> {
        write_array(self.bitmap_map(map), indices, bitmaps)
    }

    fn set_port_table(&mut self, indices: &[u32], words: &[u64]) -> Result<(), MapWriteError> {
        write_array(&mut self.port_table.batch, indices, words)
    }

    fn set_port_classes(
        &mut self,
        field: PortFieldId,
        indices: &[u32],
        words: &[u64],
    ) -> Result<(), MapWriteError> {
        let map = match field {
            PortFieldId::Dst => &mut self.dport_classes,
            PortFieldId::Src => &mut self.sport_classes,
        };
        write_array(&mut map.batch, indices, words)
    }

    fn insert_v4(
        &mut self,
        field: AddrFieldId,
        keys: &[V4Key],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError> {
        insert_trie(self.v4(field), keys, bitmaps, Element::V4Prefix)
    }

    fn remove_v4(&mut self, field: AddrFieldId, keys: &[V4Key]) -> Result<(), MapWriteError> {
        remove_trie(self.v4(field), keys, Element::V4Prefix)
    }

    fn insert_v6(
        &mut self,
        field: AddrFieldId,
        keys: &[V6Key],
        bitmaps: &[RuleBitmap],
    ) -> Result<(), MapWriteError> {
        insert_trie(self.v6(field), keys, bitmaps, Element::V6Prefix)
    }

    fn remove_v6(&mut self, field: AddrFieldId, keys: &[V6Key]) -> Result<(), MapWriteError> {
        remove_trie(self.v6(field), keys, Element::V6Prefix)
    }

    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), MapWriteError> {
        let zeros = vec![Counter::default(); slots.len() * self.cpus];
        self.counters.update(slots, &zeros).map_err(|e| {
            let element = slots.get(e.done).map(|s| Element::Slot(*s));
            batch_failed(RULE_COUNTERS_MAP, element, slots.len(), e)
        })?;
        // The slot's limit counters too: over-limit packets, buckets created (unless the
        // map has no room for them: there is no limit rule).
        if self.limit_stats_batch.max_entries() <= 1 {
            return Ok(());
        }
        let limit_slots: Vec<u32> =
            slots.iter().flat_map(|s| [*s, RULE_COUNTER_SLOTS + *s]).collect();
        let zeros = vec![Counter::default(); limit_slots.len() * self.cpus];
        self.limit_stats_batch.update(&limit_slots, &zeros).map_err(|e| {
            let element = limit_slots.get(e.done).map(|s| Element::Slot(*s));
            batch_failed(LIMIT_STATS_MAP, element, limit_slots.len(), e)
        })
    }

    fn set_words(
        &mut self,
        map: WordMap,
        indices: &[u32],
        words: &[u64],
    ) -> Result<(), MapWriteError> {
        write_array(self.word_map(map), indices, words)
    }

    fn set_entries(
        &mut self,
        map: EntryMap,
        indices: &[u32],
        entries: &[u32],
    ) -> Result<(), MapWriteError> {
        write_array(self.entry_map(map), indices, entries)
    }

    fn table_room(&self) -> TableRoom {
        let entries = |name| {
            Ok(match name {
                V4_L1_MAP => self.v4_l1.batch.max_entries(),
                V4_L2_MAP => self.v4_l2.batch.max_entries(),
                V4_L3_MAP => self.v4_l3.batch.max_entries(),
                V4_CLASSES_MAP => self.v4_classes.batch.max_entries(),
                V6_L1_MAP => self.v6_l1.batch.max_entries(),
                V6_BLOCKS_MAP => self.v6_blocks.batch.max_entries(),
                V6_CLASSES_MAP => self.v6_classes.batch.max_entries(),
                DPORT_BITMAPS_MAP => self.dport_bitmaps.batch.max_entries(),
                SPORT_BITMAPS_MAP => self.sport_bitmaps.batch.max_entries(),
                _ => unreachable!("TableRoom::of reads the tables' maps only"),
            })
        };
        TableRoom::of(entries).expect("the sizes are at hand")
    }

    fn port_table_rows(&self) -> u32 {
        let words = self.port_table.batch.max_entries();
        let rows = words / (policy_common::GENERATIONS * port_table::WORDS_PER_ROW);
        rows.min(port_table::MAX_ROWS_PER_GENERATION)
    }

    fn set_active(&mut self, value: u32) -> Result<(), MapWriteError> {
        self.active.set(0, value, 0).map_err(|source| MapWriteError {
            map: ACTIVE_MAP,
            element: Element::Entry(0),
            batch: 1,
            written: 0,
            source: Box::new(source),
        })
    }

    fn start_grace_period(&mut self) {
        // A grace period takes 10-30 ms; no need to hold the apply that long.
        match std::thread::Builder::new()
            .name("grace-period".into())
            .spawn(wait_for_rcu_grace_period)
        {
            Ok(handle) => self.grace_period = Some(handle),
            // No thread: the next apply waits a full grace period instead.
            Err(_) => self.grace_period = None,
        }
    }

    fn wait_for_readers(&mut self) {
        match self.grace_period.take().map(JoinHandle::join) {
            Some(Ok(())) => {}
            None | Some(Err(_)) => wait_for_rcu_grace_period(),
        }
    }

    fn active(&mut self) -> Result<u32, MapReadError> {
        self.active.get(&0, 0).map_err(|e| MapReadError { map: ACTIVE_MAP, source: Box::new(e) })
    }

    fn config(&mut self, generation: u32) -> Result<GenConfig, MapReadError> {
        let mut one = read_array(&mut self.config.batch, generation, 1)?;
        Ok(one.remove(0))
    }

    fn rules(&mut self, start: u32, count: u32) -> Result<Vec<RuleInfo>, MapReadError> {
        read_array(&mut self.rules.batch, start, count)
    }

    fn limits(&mut self, start: u32, count: u32) -> Result<Vec<LimitConfig>, MapReadError> {
        read_array(&mut self.limits.batch, start, count)
    }

    fn bitmaps(
        &mut self,
        map: BitmapMap,
        start: u32,
        count: u32,
    ) -> Result<Vec<RuleBitmap>, MapReadError> {
        read_array(self.bitmap_map(map), start, count)
    }

    fn port_table(&mut self, start: u32, count: u32) -> Result<Vec<u64>, MapReadError> {
        read_array(&mut self.port_table.batch, start, count)
    }

    fn port_classes(
        &mut self,
        field: PortFieldId,
        start: u32,
        count: u32,
    ) -> Result<Vec<u64>, MapReadError> {
        let map = match field {
            PortFieldId::Dst => &mut self.dport_classes,
            PortFieldId::Src => &mut self.sport_classes,
        };
        read_array(&mut map.batch, start, count)
    }

    fn entries(&mut self, map: EntryMap, start: u32, count: u32) -> Result<Vec<u32>, MapReadError> {
        read_array(self.entry_map(map), start, count)
    }

    fn words(&mut self, map: WordMap, start: u32, count: u32) -> Result<Vec<u64>, MapReadError> {
        read_array(self.word_map(map), start, count)
    }

    fn visit_v4(
        &mut self,
        field: AddrFieldId,
        visit: &mut dyn FnMut(V4Key, &RuleBitmap),
    ) -> Result<(), MapReadError> {
        visit_trie(self.v4(field), visit)
    }

    fn visit_v6(
        &mut self,
        field: AddrFieldId,
        visit: &mut dyn FnMut(V6Key, &RuleBitmap),
    ) -> Result<(), MapReadError> {
        visit_trie(self.v6(field), visit)
    }
}

/// Returns after an RCU grace period. XDP programs run inside RCU read-side critical
/// sections, and membarrier(MEMBARRIER_CMD_GLOBAL) returns after synchronize_rcu(): once
/// it returns, no packet is still being judged by a generation `ACTIVE` no longer names.
pub(super) fn wait_for_rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers; the arguments are plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // Not available (nohz_full kernels refuse it): a program run takes
        // microseconds, so this is a generous bound.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
