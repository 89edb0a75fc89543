//! Reading the state of the limit rules: their over-limit counters, the buckets they
//! hold, and one source's bucket (see `policy_common::LIMIT_BUCKETS_MAP`).

use std::{collections::HashMap, net::IpAddr, path::Path};

use aya::maps::{HashMap as AyaHashMap, Map, MapData, MapError, PerCpuArray};
use policy_common::{
    Counter, LIMIT_BUCKETS_MAP, LIMIT_SHIFT, LIMIT_STATS_MAP, LimitConfig, LimitKey,
    RULE_COUNTER_SLOTS, limit_flags,
};

use super::batch::BatchMap;

#[derive(Debug, thiserror::Error)]
#[error("reading map `{map}` failed")]
pub struct LimitMapError {
    pub map: &'static str,
    #[source]
    pub source: MapError,
}

/// What one limit rule counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitFigures {
    /// Packets (and their bytes) over the limit: dropped, or in monitor mode counted.
    pub limited: Counter,
    /// Buckets the rule created since its counters started.
    pub created: u64,
}

/// One limit rule of the policy in force, as the metrics and `status` report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitSample {
    pub rule: String,
    /// Packets over the limit (dropped, or counted in monitor mode) and their bytes.
    pub limited_packets: u64,
    pub limited_bytes: u64,
    /// Buckets (sources, or source networks) the rule holds now.
    pub sources: u64,
    /// Buckets the rule created that the map no longer holds: the least recently used
    /// ones it dropped to make room.
    pub evictions: u64,
}

impl LimitSample {
    pub fn new(rule: String, figures: LimitFigures, sources: u64) -> Self {
        Self {
            rule,
            limited_packets: figures.limited.packets,
            limited_bytes: figures.limited.bytes,
            sources,
            evictions: figures.created.saturating_sub(sources),
        }
    }
}

/// One source's bucket, as `explain` shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Tokens the bucket holds now (packets or bytes), at most the burst.
    pub tokens: f64,
    /// The bucket's size in tokens.
    pub burst: f64,
}

/// Handles on the limit maps of one filter.
pub struct LimitMaps {
    stats: PerCpuArray<MapData, Counter>,
    buckets: AyaHashMap<MapData, LimitKey, u64>,
    walk: BatchMap,
}

fn err(map: &'static str) -> impl Fn(MapError) -> LimitMapError {
    move |source| LimitMapError { map, source }
}

impl LimitMaps {
    /// The maps pinned as `stats` and `buckets`.
    pub fn from_pins(stats: &Path, buckets: &Path) -> Result<Self, LimitMapError> {
        let stats = MapData::from_pin(stats).map_err(err(LIMIT_STATS_MAP))?;
        let buckets = MapData::from_pin(buckets).map_err(err(LIMIT_BUCKETS_MAP))?;
        Self::new(stats, buckets)
    }

    /// The maps of these kernel ids.
    pub fn from_ids(stats: u32, buckets: u32) -> Result<Self, LimitMapError> {
        let stats = MapData::from_id(stats).map_err(err(LIMIT_STATS_MAP))?;
        let buckets = MapData::from_id(buckets).map_err(err(LIMIT_BUCKETS_MAP))?;
        Self::new(stats, buckets)
    }

    fn new(stats: MapData, buckets: MapData) -> Result<Self, LimitMapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, io_error)| LimitMapError {
            map: LIMIT_STATS_MAP,
            source: MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error }),
        })?;
        let walk =
            BatchMap::new(LIMIT_BUCKETS_MAP, &buckets, cpus).map_err(err(LIMIT_BUCKETS_MAP))?;
        Ok(Self {
            stats: PerCpuArray::try_from(Map::PerCpuArray(stats)).map_err(err(LIMIT_STATS_MAP))?,
            buckets: AyaHashMap::try_from(Map::LruHashMap(buckets))
                .map_err(err(LIMIT_BUCKETS_MAP))?,
            walk,
        })
    }

    /// What the rule counting at `slot` (its counter slot) counted.
    pub fn figures(&self, slot: u32) -> Result<LimitFigures, LimitMapError> {
        let limited = super::sum_counter(&self.stats, slot).map_err(err(LIMIT_STATS_MAP))?;
        let created = super::sum_counter(&self.stats, RULE_COUNTER_SLOTS + slot)
            .map_err(err(LIMIT_STATS_MAP))?;
        Ok(LimitFigures { limited, created: created.packets })
    }

    /// Buckets held, by bucket id: one walk of the map.
    pub fn buckets_by_id(&mut self) -> Result<HashMap<u32, u64>, LimitMapError> {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        let mut visit = |key: &LimitKey, _: &u64| *counts.entry(key.id).or_default() += 1;
        match self.walk.entries::<LimitKey, u64>(&mut visit) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(LimitMapError {
                    map: LIMIT_BUCKETS_MAP,
                    source: MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_lookup_batch",
                        io_error: e.source,
                    }),
                });
            }
            None => {
                counts.clear();
                for key in self.buckets.keys() {
                    *counts.entry(key.map_err(err(LIMIT_BUCKETS_MAP))?.id).or_default() += 1;
                }
            }
        }
        Ok(counts)
    }

    /// The bucket of `source` under `config` (a rule's `LIMITS` entry) at `now_ns`
    /// (`CLOCK_MONOTONIC`); a source without a bucket has a full one.
    pub fn bucket(
        &self,
        config: &LimitConfig,
        source: IpAddr,
        now_ns: u64,
    ) -> Result<Bucket, LimitMapError> {
        let key = bucket_key(config, source);
        let tat = match self.buckets.get(&key, 0) {
            Ok(tat) => Some(tat),
            Err(MapError::KeyNotFound) => None,
            Err(e) => return Err(err(LIMIT_BUCKETS_MAP)(e)),
        };
        Ok(bucket_at(config, tat, now_ns))
    }
}

/// The key of `source`'s bucket under `config`, as the program makes it.
pub fn bucket_key(config: &LimitConfig, source: IpAddr) -> LimitKey {
    let mut key = LimitKey { id: config.id, version: 0, addr: [0; 4] };
    if config.flags & limit_flags::PER_SOURCE != 0 {
        match source {
            IpAddr::V4(a) => {
                key.version = 4;
                key.addr[0] = u32::from_ne_bytes(a.octets()) & config.v4_mask;
            }
            IpAddr::V6(a) => {
                key.version = 6;
                let o = a.octets();
                for (w, word) in key.addr.iter_mut().enumerate() {
                    let bytes = [o[4 * w], o[4 * w + 1], o[4 * w + 2], o[4 * w + 3]];
                    *word = u32::from_ne_bytes(bytes) & config.v6_mask[w];
                }
            }
        }
    }
    key
}

/// The tokens of a bucket whose theoretical arrival time is `tat` (none: never used).
pub fn bucket_at(config: &LimitConfig, tat: Option<u64>, now_ns: u64) -> Bucket {
    let per_token = config.interval as f64 / f64::from(1u32 << LIMIT_SHIFT);
    let burst = config.tolerance as f64 / per_token;
    let ahead = tat.map_or(0, |t| t.saturating_sub(now_ns));
    let tokens = (config.tolerance.saturating_sub(ahead)) as f64 / per_token;
    Bucket { tokens, burst }
}

/// `CLOCK_MONOTONIC` now, the clock the program's buckets read.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a pointer to a timespec of ours.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mask_the_source_as_the_program_does() {
        let config = LimitConfig {
            id: 9,
            flags: limit_flags::PER_SOURCE,
            interval: 1 << LIMIT_SHIFT,
            tolerance: 10,
            v4_mask: u32::from_ne_bytes([255, 255, 255, 0]),
            v6_mask: [u32::MAX, u32::MAX, 0, 0],
        };
        let key = bucket_key(&config, "198.18.7.9".parse().expect("valid"));
        assert_eq!((key.id, key.version), (9, 4));
        assert_eq!(key.addr[0].to_ne_bytes(), [198, 18, 7, 0]);
        let key = bucket_key(&config, "fd00:1:2:3:4::5".parse().expect("valid"));
        assert_eq!(key.version, 6);
        assert_eq!(key.addr[2..], [0, 0]);
        let rule = LimitConfig { flags: 0, ..config };
        assert_eq!(bucket_key(&rule, "198.18.7.9".parse().expect("valid")).addr, [0; 4]);
    }

    #[test]
    fn a_bucket_refills_with_time() {
        // 1 token per ns, 10 tokens of burst.
        let config =
            LimitConfig { interval: 1 << LIMIT_SHIFT, tolerance: 10, ..Default::default() };
        assert_eq!(bucket_at(&config, None, 100).tokens, 10.0);
        assert_eq!(bucket_at(&config, Some(106), 100).tokens, 4.0);
        assert_eq!(bucket_at(&config, Some(50), 100).tokens, 10.0);
        assert_eq!(bucket_at(&config, Some(106), 100).burst, 10.0);
    }
}
