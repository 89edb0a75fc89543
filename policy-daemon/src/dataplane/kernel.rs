//! The [`Maps`] implementation over the loaded program's real maps.

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    util::nr_cpus,
};
use policy_common::{
    ACTIVE_MAP, CONFIG_MAP, Counter, DPORT_BITMAPS_MAP, DPORT_CLASSES_MAP, DST_V4_MAP, DST_V6_MAP,
    FIELD_BITMAPS_MAP, GenConfig, IPV4_KEY_LEN, IPV6_KEY_LEN, RULE_COUNTERS_MAP, RULES_MAP,
    RuleBitmap, RuleInfo, SPORT_BITMAPS_MAP, SPORT_CLASSES_MAP, SRC_V4_MAP, SRC_V6_MAP,
    VERDICT_COUNTERS_MAP,
};

use super::{
    DataplaneError,
    apply::{AddrFieldId, MapWriteError, Maps, PortFieldId, V4Key, V6Key},
};

/// Every map of the program, taken out of the [`Ebpf`] object with its type checked.
pub struct KernelMaps {
    active: Array<MapData, u32>,
    config: Array<MapData, GenConfig>,
    rules: Array<MapData, RuleInfo>,
    field_bitmaps: Array<MapData, RuleBitmap>,
    dport_classes: Array<MapData, u64>,
    sport_classes: Array<MapData, u64>,
    dport_bitmaps: Array<MapData, RuleBitmap>,
    sport_bitmaps: Array<MapData, RuleBitmap>,
    src_v4: LpmTrie<MapData, [u8; IPV4_KEY_LEN], RuleBitmap>,
    dst_v4: LpmTrie<MapData, [u8; IPV4_KEY_LEN], RuleBitmap>,
    src_v6: LpmTrie<MapData, [u8; IPV6_KEY_LEN], RuleBitmap>,
    dst_v6: LpmTrie<MapData, [u8; IPV6_KEY_LEN], RuleBitmap>,
    pub rule_counters: PerCpuArray<MapData, Counter>,
    pub verdict_counters: PerCpuArray<MapData, Counter>,
    cpus: usize,
}

fn take<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let raw = ebpf.take_map(map).ok_or(DataplaneError::MissingMap(map))?;
    T::try_from(raw).map_err(|source| DataplaneError::MapType { map, source })
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            active: take(ebpf, ACTIVE_MAP)?,
            config: take(ebpf, CONFIG_MAP)?,
            rules: take(ebpf, RULES_MAP)?,
            field_bitmaps: take(ebpf, FIELD_BITMAPS_MAP)?,
            dport_classes: take(ebpf, DPORT_CLASSES_MAP)?,
            sport_classes: take(ebpf, SPORT_CLASSES_MAP)?,
            dport_bitmaps: take(ebpf, DPORT_BITMAPS_MAP)?,
            sport_bitmaps: take(ebpf, SPORT_BITMAPS_MAP)?,
            src_v4: take(ebpf, SRC_V4_MAP)?,
            dst_v4: take(ebpf, DST_V4_MAP)?,
            src_v6: take(ebpf, SRC_V6_MAP)?,
            dst_v6: take(ebpf, DST_V6_MAP)?,
            rule_counters: take(ebpf, RULE_COUNTERS_MAP)?,
            verdict_counters: take(ebpf, VERDICT_COUNTERS_MAP)?,
            cpus: nr_cpus().map_err(|(_, source)| DataplaneError::Cpus(source))?,
        })
    }

    /// What `ACTIVE` holds: the generation the program reads.
    pub fn active(&self) -> Result<u32, DataplaneError> {
        self.active.get(&0, 0).map_err(|source| DataplaneError::MapRead { map: ACTIVE_MAP, source })
    }

    /// A counter summed over CPUs.
    pub fn read_counter(
        map: &PerCpuArray<MapData, Counter>,
        name: &'static str,
        index: u32,
    ) -> Result<Counter, DataplaneError> {
        let per_cpu =
            map.get(&index, 0).map_err(|source| DataplaneError::MapRead { map: name, source })?;
        Ok(per_cpu.iter().fold(Counter::default(), |sum, c| Counter {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
    }
}

/// The keys of a trie that belong to `generation` (its first data byte).
fn trie_keys<const N: usize>(
    map: &LpmTrie<MapData, [u8; N], RuleBitmap>,
    name: &'static str,
    generation: u32,
) -> Result<Vec<(u32, [u8; N])>, MapWriteError> {
    let mut keys = Vec::new();
    for key in map.keys() {
        let key = key.map_err(failed(name, "keys"))?;
        if key.data()[0] == generation as u8 {
            keys.push((key.prefix_len(), key.data()));
        }
    }
    Ok(keys)
}

fn failed(map: &'static str, what: impl Into<String>) -> impl FnOnce(MapError) -> MapWriteError {
    let what = what.into();
    move |source| MapWriteError { map, what, source: Box::new(source) }
}

impl Maps for KernelMaps {
    fn set_config(&mut self, generation: u32, config: &GenConfig) -> Result<(), MapWriteError> {
        self.config
            .set(generation, config, 0)
            .map_err(failed(CONFIG_MAP, format!("entry {generation}")))
    }

    fn set_rule(&mut self, index: u32, info: &RuleInfo) -> Result<(), MapWriteError> {
        self.rules.set(index, info, 0).map_err(failed(RULES_MAP, format!("entry {index}")))
    }

    fn set_field_bitmap(&mut self, index: u32, bitmap: &RuleBitmap) -> Result<(), MapWriteError> {
        self.field_bitmaps
            .set(index, bitmap, 0)
            .map_err(failed(FIELD_BITMAPS_MAP, format!("entry {index}")))
    }

    fn set_port_classes(
        &mut self,
        field: PortFieldId,
        index: u32,
        word: u64,
    ) -> Result<(), MapWriteError> {
        let (map, name) = match field {
            PortFieldId::Dst => (&mut self.dport_classes, DPORT_CLASSES_MAP),
            PortFieldId::Src => (&mut self.sport_classes, SPORT_CLASSES_MAP),
        };
        map.set(index, word, 0).map_err(failed(name, format!("entry {index}")))
    }

    fn set_port_bitmap(
        &mut self,
        field: PortFieldId,
        index: u32,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError> {
        let (map, name) = match field {
            PortFieldId::Dst => (&mut self.dport_bitmaps, DPORT_BITMAPS_MAP),
            PortFieldId::Src => (&mut self.sport_bitmaps, SPORT_BITMAPS_MAP),
        };
        map.set(index, bitmap, 0).map_err(failed(name, format!("entry {index}")))
    }

    fn insert_v4(
        &mut self,
        field: AddrFieldId,
        key: V4Key,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError> {
        let (map, name) = match field {
            AddrFieldId::Src => (&mut self.src_v4, SRC_V4_MAP),
            AddrFieldId::Dst => (&mut self.dst_v4, DST_V4_MAP),
        };
        map.insert(&Key::new(key.0, key.1), bitmap, 0)
            .map_err(failed(name, format!("prefix {key:?}")))
    }

    fn remove_v4(&mut self, field: AddrFieldId, key: V4Key) -> Result<(), MapWriteError> {
        let (map, name) = match field {
            AddrFieldId::Src => (&mut self.src_v4, SRC_V4_MAP),
            AddrFieldId::Dst => (&mut self.dst_v4, DST_V4_MAP),
        };
        map.remove(&Key::new(key.0, key.1)).map_err(failed(name, format!("prefix {key:?}")))
    }

    fn insert_v6(
        &mut self,
        field: AddrFieldId,
        key: V6Key,
        bitmap: &RuleBitmap,
    ) -> Result<(), MapWriteError> {
        let (map, name) = match field {
            AddrFieldId::Src => (&mut self.src_v6, SRC_V6_MAP),
            AddrFieldId::Dst => (&mut self.dst_v6, DST_V6_MAP),
        };
        map.insert(&Key::new(key.0, key.1), bitmap, 0)
            .map_err(failed(name, format!("prefix {key:?}")))
    }

    fn remove_v6(&mut self, field: AddrFieldId, key: V6Key) -> Result<(), MapWriteError> {
        let (map, name) = match field {
            AddrFieldId::Src => (&mut self.src_v6, SRC_V6_MAP),
            AddrFieldId::Dst => (&mut self.dst_v6, DST_V6_MAP),
        };
        map.remove(&Key::new(key.0, key.1)).map_err(failed(name, format!("prefix {key:?}")))
    }

    fn v4_keys(
        &mut self,
        field: AddrFieldId,
        generation: u32,
    ) -> Result<Vec<V4Key>, MapWriteError> {
        match field {
            AddrFieldId::Src => trie_keys(&self.src_v4, SRC_V4_MAP, generation),
            AddrFieldId::Dst => trie_keys(&self.dst_v4, DST_V4_MAP, generation),
        }
    }

    fn v6_keys(
        &mut self,
        field: AddrFieldId,
        generation: u32,
    ) -> Result<Vec<V6Key>, MapWriteError> {
        match field {
            AddrFieldId::Src => trie_keys(&self.src_v6, SRC_V6_MAP, generation),
            AddrFieldId::Dst => trie_keys(&self.dst_v6, DST_V6_MAP, generation),
        }
    }

    fn zero_rule_counter(&mut self, slot: u32) -> Result<(), MapWriteError> {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); self.cpus]).map_err(|e| {
            MapWriteError {
                map: RULE_COUNTERS_MAP,
                what: format!("slot {slot}"),
                source: Box::new(e),
            }
        })?;
        self.rule_counters
            .set(slot, zeros, 0)
            .map_err(failed(RULE_COUNTERS_MAP, format!("slot {slot}")))
    }

    fn set_active(&mut self, generation: u32) -> Result<(), MapWriteError> {
        self.active.set(0, generation, 0).map_err(failed(ACTIVE_MAP, "entry 0"))
    }

    fn wait_for_readers(&mut self) {
        // XDP programs run inside RCU read-side critical sections, and
        // membarrier(MEMBARRIER_CMD_GLOBAL) returns after synchronize_rcu(): once it
        // returns, no packet is still being judged by the generation we left.
        const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
        // SAFETY: membarrier takes no pointers; the arguments are plain integers.
        let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
        if rc != 0 {
            // Not available (nohz_full kernels refuse it): a program run takes
            // microseconds, so this is a generous bound.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
