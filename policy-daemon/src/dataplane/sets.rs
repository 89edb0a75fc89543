//! The contents of the named sets in the kernel (`SETS`, one LPM trie for every set of
//! an interface's filter): reading them, writing file and run-time entries, expiring
//! them.
//!
//! Everyone who writes a filter's sets (the daemon applying a policy or sweeping expired
//! entries, `xdp-policy set` whether or not a daemon runs) holds its [`SetsLock`]: a
//! sweep never removes an entry that a concurrent `set add` has just renewed.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{
    HashMap as BpfHashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::fcntl::{Flock, FlockArg};
use policy_common::{
    GenConfig, MAX_SET_REFS, SET_HITS_MAP, SET_KEY_LEN, SET_KEY_PREFIX_BITS, SET_STATS_MAP,
    SetEntry, set_key, set_origin, set_stat,
};

use super::batch::{BatchError, BatchMap};

/// Why the set map could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SetMapError {
    #[error("opening the set map {} failed", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("reading the set map failed")]
    Read(#[source] std::io::Error),
    #[error("writing the set map failed after {done} of {of} entries")]
    Write {
        done: usize,
        of: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("locking the sets of {} failed", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// A filter's `SETS` map, and its sets' counters.
pub struct SetMap {
    map: LpmTrie<MapData, [u8; SET_KEY_LEN], SetEntry>,
    batch: BatchMap,
    /// `None` for pins of a version without the counters: nothing is counted.
    counters: Option<CounterMaps>,
}

/// `SET_STATS` and `SET_HITS` (see `policy_common`).
struct CounterMaps {
    stats: BpfHashMap<MapData, [u32; 2], u64>,
    hits: PerCpuArray<MapData, u64>,
}

/// A named set's figures for metrics and `status`: its entries now (as its count key
/// says) and its counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetSample {
    pub name: String,
    pub entries: u64,
    pub counters: SetCounters,
}

/// A set's counters (see [`set_stat`]), summed over the CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SetCounters {
    pub hits: u64,
    pub adds: u64,
    pub deletes: u64,
    pub expiries: u64,
}

/// One entry: the set's id, the network, and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: u32,
    pub net: IpNet,
    pub value: SetEntry,
}

impl Entry {
    /// Whether one of the set's files lists it.
    pub fn from_file(&self) -> bool {
        self.value.origin & set_origin::FILE != 0
    }

    /// Whether it has expired at `now` (`CLOCK_BOOTTIME` ns): the program no longer
    /// matches it.
    pub fn expired(&self, now: u64) -> bool {
        self.value.expires_ns != 0 && self.value.expires_ns <= now
    }
}

/// Held while a filter's sets are written.
pub struct SetsLock {
    _lock: Flock<fs::File>,
}

/// Takes the lock on the sets of the filter whose maps are pinned in `maps_dir`,
/// waiting for another holder to finish. A migration (`super::migrate`) holds it while
/// it copies the sets, then renames new maps into `maps_dir`: a lock taken on the
/// directory it replaced is let go and taken again on the new one.
pub fn lock(maps_dir: &Path) -> Result<SetsLock, SetMapError> {
    use std::os::unix::fs::MetadataExt as _;
    let err = |source| SetMapError::Lock { path: maps_dir.to_path_buf(), source };
    let errno = |e: std::io::Error| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(0)));
    loop {
        let dir = fs::File::open(maps_dir).map_err(errno)?;
        let locked = dir.metadata().map_err(errno)?.ino();
        let lock = Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| err(errno))?;
        match fs::metadata(maps_dir) {
            Ok(now) if now.ino() == locked => return Ok(SetsLock { _lock: lock }),
            Ok(_) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock the program compares expiries with
/// (`bpf_ktime_get_boot_ns`), which counts time suspended too.
pub fn boot_now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is always available on Linux");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// When an entry given `timeout` at `now` expires; 0 (never) for a zero timeout.
pub fn expiry(now: u64, timeout: Duration) -> u64 {
    if timeout.is_zero() {
        0
    } else {
        now.saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)).max(1)
    }
}

/// The key of `net` in set `id`.
pub fn key(id: u32, net: &IpNet) -> Key<[u8; SET_KEY_LEN]> {
    let (version, addr) = match net {
        IpNet::V4(n) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&n.network().octets());
            (4, addr)
        }
        IpNet::V6(n) => (6, n.network().octets()),
    };
    Key::new(SET_KEY_PREFIX_BITS + u32::from(net.prefix_len()), set_key(id, version, addr))
}

/// The set id and network of a key; `None` for a key no writer here makes.
pub fn parse_key(prefix_len: u32, data: &[u8; SET_KEY_LEN]) -> Option<(u32, IpNet)> {
    let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let len = u8::try_from(prefix_len.checked_sub(SET_KEY_PREFIX_BITS)?).ok()?;
    let net = match data[4] {
        4 => {
            let addr = Ipv4Addr::new(data[8], data[9], data[10], data[11]);
            IpNet::V4(Ipv4Net::new(addr, len).ok()?)
        }
        6 => {
            let mut octets = [0; 16];
            octets.copy_from_slice(&data[8..24]);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(octets), len).ok()?)
        }
        _ => return None,
    };
    Some((id, net))
}

/// Bits of a count key: the set id and a version byte of 0, which no address key has.
/// Every address key is longer ([`SET_KEY_PREFIX_BITS`] and more), so no lookup of the
/// program, whose keys have version 4 or 6, can match a count key.
const COUNT_KEY_BITS: u32 = 40;

/// The key under which the number of entries of set `id` is kept (in
/// `SetEntry::expires_ns`), so that a run-time add checks `max_entries` without walking
/// the set. Every writer holds the sets' lock and keeps it up to date; the daemon's
/// sweep recounts it from the entries.
fn count_key(id: u32) -> Key<[u8; SET_KEY_LEN]> {
    Key::new(COUNT_KEY_BITS, set_key(id, 0, [0; 16]))
}

/// The value of a new entry for `net`.
pub fn value(net: &IpNet, expires_ns: u64, origin: u32) -> SetEntry {
    SetEntry { expires_ns, prefix_len: SET_KEY_PREFIX_BITS + u32::from(net.prefix_len()), origin }
}

impl SetMap {
    /// The maps as aya took them out of a loaded object: `SETS`, and `SET_STATS` with
    /// `SET_HITS`.
    pub fn new(map: Map, counters: Option<(Map, Map)>, cpus: usize) -> Result<Self, MapError> {
        let map: LpmTrie<MapData, [u8; SET_KEY_LEN], SetEntry> = LpmTrie::try_from(map)?;
        let batch = BatchMap::new(policy_common::SETS_MAP, IterableMap::map(&map), cpus)?;
        let counters = match counters {
            Some((stats, hits)) => Some(CounterMaps {
                stats: BpfHashMap::try_from(stats)?,
                hits: PerCpuArray::try_from(hits)?,
            }),
            None => None,
        };
        Ok(Self { map, batch, counters })
    }

    /// The map pinned at `path`, with the counters pinned beside it (if they are).
    pub fn from_pin(path: &Path) -> Result<Self, SetMapError> {
        let open = |path: &Path| {
            MapData::from_pin(path)
                .map_err(|source| SetMapError::Open { path: path.to_path_buf(), source })
        };
        let data = open(path)?;
        let stats = path.with_file_name(SET_STATS_MAP);
        let hits = path.with_file_name(SET_HITS_MAP);
        let counters = if stats.exists() && hits.exists() {
            Some((Map::HashMap(open(&stats)?), Map::PerCpuArray(open(&hits)?)))
        } else {
            None
        };
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        Self::new(Map::LpmTrie(data), counters, cpus)
            .map_err(|source| SetMapError::Open { path: path.to_path_buf(), source })
    }

    pub fn data(&self) -> &MapData {
        IterableMap::map(&self.map)
    }

    /// `SET_STATS` and `SET_HITS`, if there are.
    pub fn counter_maps(&self) -> Option<(&MapData, &MapData)> {
        self.counters.as_ref().map(|c| (IterableMap::map(&c.stats), IterableMap::map(&c.hits)))
    }

    /// The counters of set `id` (zero where none were counted). `configs` are the
    /// generations' configurations in the kernel: the hits of the slots they give the
    /// set and that were not yet credited to it are added.
    pub fn counters(&self, id: u32, configs: &[GenConfig]) -> SetCounters {
        let Some(c) = &self.counters else { return SetCounters::default() };
        let stat = |kind: u32| c.stats.get(&[id, kind], 0).unwrap_or(0);
        let mut hits = stat(set_stat::HITS);
        for (generation, config) in configs.iter().enumerate() {
            for slot in used_set_slots(config) {
                if config.set_ids[slot as usize] == id {
                    let index = hit_index(generation as u32, slot);
                    hits = hits.wrapping_add(c.uncredited(index));
                }
            }
        }
        SetCounters {
            hits,
            adds: stat(set_stat::ADDS),
            deletes: stat(set_stat::DELETES),
            expiries: stat(set_stat::EXPIRIES),
        }
    }

    /// Credits each set with the hits the program counted in its slots of `generation`
    /// (as `config`, the configuration the generation had, gave them), before the
    /// generation is rewritten and its slots change hands. No packet may be reading the
    /// generation.
    ///
    /// Only sets in `known` (those of the policy being applied) are credited: the
    /// counters of a set the policy dropped were removed with it, and crediting it would
    /// bring back an entry nobody removes.
    pub fn credit_hits(&mut self, generation: u32, config: &GenConfig, known: &[u32]) {
        let Some(c) = &mut self.counters else { return };
        let used: Vec<u32> = used_set_slots(config).collect();
        for slot in 0..2 * MAX_SET_REFS as u32 {
            let index = hit_index(generation, slot);
            let delta = c.uncredited(index);
            if delta == 0 {
                continue;
            }
            let id = config.set_ids[slot as usize];
            if used.contains(&slot) && known.contains(&id) {
                let total = c.stats.get(&[id, set_stat::HITS], 0).unwrap_or(0);
                let _ = c.stats.insert([id, set_stat::HITS], total.wrapping_add(delta), 0);
            }
            let base = c.stats.get(&[0, set_stat::BASE + index], 0).unwrap_or(0);
            let _ = c.stats.insert([0, set_stat::BASE + index], base.wrapping_add(delta), 0);
        }
    }

    /// Adds `n` to counter `kind` of set `id`. A failure is not the change's: the
    /// counter misses it.
    fn bump(&mut self, id: u32, kind: u32, n: u64) {
        let Some(c) = &mut self.counters else { return };
        if n == 0 {
            return;
        }
        let value = c.stats.get(&[id, kind], 0).unwrap_or(0).wrapping_add(n);
        let _ = c.stats.insert([id, kind], value, 0);
    }

    /// No run-time entry of set `id` expires before this (`u64::MAX`: none expires);
    /// `None`: unknown (no counters, or never walked).
    pub fn earliest(&self, id: u32) -> Option<u64> {
        self.counters.as_ref()?.stats.get(&[id, set_stat::EARLIEST], 0).ok()
    }

    fn set_earliest(&mut self, id: u32, at: u64) {
        if let Some(c) = &mut self.counters {
            let _ = c.stats.insert([id, set_stat::EARLIEST], at, 0);
        }
    }

    /// An entry of set `id` that expires at `at` was written: the earliest expiry is at
    /// most that. Left unknown if it was.
    fn lower_earliest(&mut self, id: u32, at: u64) {
        if at == 0 {
            return;
        }
        if let Some(earliest) = self.earliest(id)
            && at < earliest
        {
            self.set_earliest(id, at);
        }
    }

    /// Removes the counters of set `id` (the policy no longer has it).
    fn remove_counters(&mut self, id: u32) {
        let Some(c) = &mut self.counters else { return };
        for kind in set_stat::ALL {
            let _ = c.stats.remove(&[id, kind]);
        }
    }

    /// Every entry of every set (`id` given: of that set only).
    pub fn entries(&mut self, id: Option<u32>) -> Result<Vec<Entry>, SetMapError> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if id.is_none_or(|id| id == e.id) {
                out.push(e);
            }
        })?;
        Ok(out)
    }

    /// Calls `f` with every entry of every set, a batch at a time: the map is never
    /// held in memory whole.
    pub fn visit(&mut self, f: &mut dyn FnMut(Entry)) -> Result<(), SetMapError> {
        let mut each = |key: &Key<[u8; SET_KEY_LEN]>, value: &SetEntry| {
            if let Some((id, net)) = parse_key(key.prefix_len(), &key.data()) {
                f(Entry { id, net, value: *value });
            }
        };
        match self.batch.entries(&mut each) {
            Some(result) => result.map_err(|e| SetMapError::Read(e.source))?,
            None => {
                for entry in self.map.iter() {
                    let (key, value) = entry.map_err(|e| SetMapError::Read(map_io(e)))?;
                    each(&key, &value);
                }
            }
        }
        Ok(())
    }

    /// The entries of set `id` as its count key says.
    pub fn count(&self, id: u32) -> u64 {
        let key = count_key(id);
        self.map
            .get(&key, 0)
            .ok()
            .filter(|v| v.prefix_len == COUNT_KEY_BITS)
            .map_or(0, |v| v.expires_ns)
    }

    /// Sets the count key of set `id`.
    pub fn set_count(&mut self, id: u32, entries: u64) -> Result<(), SetMapError> {
        let value = SetEntry { expires_ns: entries, prefix_len: COUNT_KEY_BITS, origin: 0 };
        self.map.insert(&count_key(id), value, 0).map_err(|e| SetMapError::Write {
            done: 0,
            of: 1,
            source: map_io(e),
        })
    }

    /// Removes the count key of set `id`.
    fn remove_count(&mut self, id: u32) -> Result<(), SetMapError> {
        match self.map.remove(&count_key(id)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = map_io(e);
                if e.raw_os_error() == Some(libc::ENOENT) {
                    Ok(())
                } else {
                    Err(SetMapError::Write { done: 0, of: 1, source: e })
                }
            }
        }
    }

    /// Adds `delta` to the count of set `id` (never below zero), and counts the adds
    /// (`delta` > 0) or deletes.
    fn add_count(&mut self, id: u32, delta: i64) -> Result<(), SetMapError> {
        if delta == 0 {
            return Ok(());
        }
        let kind = if delta > 0 { set_stat::ADDS } else { set_stat::DELETES };
        self.bump(id, kind, delta.unsigned_abs());
        let count = self.count(id).saturating_add_signed(delta);
        self.set_count(id, count)
    }

    /// The entry for exactly `net` in set `id`, if there is one.
    pub fn get(&self, id: u32, net: &IpNet) -> Option<SetEntry> {
        let key = key(id, net);
        // The trie gives the longest match: it is `net` itself only if the lengths agree.
        self.map.get(&key, 0).ok().filter(|v| v.prefix_len == key.prefix_len())
    }

    /// Writes entries (new ones and changed ones), in one batch.
    pub fn insert(&mut self, entries: &[Entry]) -> Result<(), SetMapError> {
        if entries.is_empty() {
            return Ok(());
        }
        let keys: Vec<_> = entries.iter().map(|e| key(e.id, &e.net)).collect();
        let values: Vec<SetEntry> = entries.iter().map(|e| e.value).collect();
        self.batch.update(&keys, &values).map_err(|e| write_failed(e, entries.len()))
    }

    /// Removes entries, in one batch; those already gone are skipped.
    pub fn remove(&mut self, entries: &[(u32, IpNet)]) -> Result<(), SetMapError> {
        let mut keys: Vec<_> = entries.iter().map(|(id, net)| key(*id, net)).collect();
        while !keys.is_empty() {
            match self.batch.delete(&keys) {
                Ok(()) => return Ok(()),
                // Removed meanwhile (a sweep, another command): go on after it.
                Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => {
                    keys.drain(..=e.done.min(keys.len() - 1));
                }
                Err(e) => return Err(write_failed(e, entries.len())),
            }
        }
        Ok(())
    }
}

impl CounterMaps {
    /// What `SET_HITS` slot `index` counted (over the CPUs) beyond what was credited.
    fn uncredited(&self, index: u32) -> u64 {
        let live =
            self.hits.get(&index, 0).map_or(0, |v| v.iter().copied().fold(0, u64::wrapping_add));
        let base = self.stats.get(&[0, set_stat::BASE + index], 0).unwrap_or(0);
        live.wrapping_sub(base)
    }
}

/// The set slots `config` uses: the source ones, then the destination ones.
fn used_set_slots(config: &GenConfig) -> impl Iterator<Item = u32> + '_ {
    let refs = MAX_SET_REFS as u32;
    let count = |n: u8| u32::from(n).min(refs);
    (0..count(config.src_sets)).chain(refs..refs + count(config.dst_sets))
}

/// The `SET_HITS` index of `slot` in `generation`.
fn hit_index(generation: u32, slot: u32) -> u32 {
    generation * 2 * MAX_SET_REFS as u32 + slot
}

fn write_failed(e: BatchError, of: usize) -> SetMapError {
    SetMapError::Write { done: e.done, of, source: e.source }
}

fn map_io(e: MapError) -> std::io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        other => std::io::Error::other(other.to_string()),
    }
}

/// What the daemon knows of the file entries of the sets it writes: read from the map
/// once (after adopting pinned maps), then kept as it writes.
#[derive(Default)]
pub struct FileEntries {
    /// Set id → its file entries.
    by_set: Option<HashMap<u32, HashSet<IpNet>>>,
    /// The sets the previous apply wrote (`None`: unknown, after adopting).
    sets: Option<HashSet<u32>>,
    /// Write every file entry the next sync, whatever the map is thought to hold (after
    /// an audit found the map changed behind this process's back).
    force: bool,
}

/// A set as an apply writes it: its id and the entries of its files.
pub struct FileSet<'a> {
    pub id: u32,
    pub entries: &'a [IpNet],
}

/// What syncing the sets did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
    /// Entries of sets the policy no longer has, removed.
    pub purged: usize,
}

impl FileEntries {
    /// For maps created empty.
    pub fn empty() -> Self {
        Self { by_set: Some(HashMap::new()), sets: Some(HashSet::new()), force: false }
    }

    /// For adopted maps: nothing known until read.
    pub fn unknown() -> Self {
        Self::default()
    }

    /// For maps an audit found changed: nothing known, every file entry rewritten.
    pub fn distrusted() -> Self {
        Self { force: true, ..Self::default() }
    }

    /// Makes the map hold exactly `sets`' file entries, and run-time entries of those sets
    /// only: file entries no longer listed are removed, and every entry of a set not in
    /// `sets` (which the policy dropped) once `purge` is set. Call with `purge` unset
    /// before a new generation is in force and set after.
    pub fn sync(
        &mut self,
        map: &mut SetMap,
        sets: &[FileSet],
        purge: bool,
    ) -> Result<SyncReport, SetMapError> {
        let mut report = SyncReport::default();
        if self.by_set.is_none() || (purge && self.sets.is_none()) {
            let mut by_set: HashMap<u32, HashSet<IpNet>> = HashMap::new();
            let mut ids = HashSet::new();
            for entry in map.entries(None)? {
                ids.insert(entry.id);
                if entry.value.origin & set_origin::FILE != 0 {
                    by_set.entry(entry.id).or_default().insert(entry.net);
                }
            }
            self.by_set = Some(by_set);
            self.sets = Some(ids);
        }
        let by_set = self.by_set.as_mut().expect("read above");
        for set in sets {
            let held = by_set.entry(set.id).or_default();
            let wanted: HashSet<IpNet> = set.entries.iter().copied().collect();
            let force = self.force;
            let new: Vec<Entry> = set
                .entries
                .iter()
                .filter(|n| force || !held.contains(n))
                .map(|net| Entry { id: set.id, net: *net, value: value(net, 0, set_origin::FILE) })
                .collect();
            // An entry added at run time that a file now lists becomes the file's.
            let before = new.iter().filter(|e| map.get(set.id, &e.net).is_some()).count();
            let before = if force { new.len() } else { before };
            map.insert(&new)?;
            map.add_count(set.id, (new.len() - before) as i64)?;
            report.added += new.len();
            held.extend(new.iter().map(|e| e.net));
            let gone: Vec<(u32, IpNet)> =
                held.iter().filter(|n| !wanted.contains(n)).map(|n| (set.id, *n)).collect();
            map.remove(&gone)?;
            map.add_count(set.id, -(gone.len() as i64))?;
            report.removed += gone.len();
            for (_, net) in &gone {
                held.remove(net);
            }
        }
        let ids: HashSet<u32> = sets.iter().map(|s| s.id).collect();
        if purge {
            self.force = false;
            let previous = self.sets.take().unwrap_or_default();
            if previous.iter().any(|id| !ids.contains(id)) {
                let dropped: Vec<(u32, IpNet)> = map
                    .entries(None)?
                    .into_iter()
                    .filter(|e| !ids.contains(&e.id))
                    .map(|e| (e.id, e.net))
                    .collect();
                map.remove(&dropped)?;
                for id in previous.iter().filter(|id| !ids.contains(id)) {
                    map.remove_count(*id)?;
                    map.remove_counters(*id);
                }
                report.purged = dropped.len();
                by_set.retain(|id, _| ids.contains(id));
            }
            self.sets = Some(ids);
        } else if let Some(known) = &mut self.sets {
            known.extend(ids);
        }
        Ok(report)
    }
}

/// Reads the map back against the sets' file entries: every one must be there, marked
/// as a file's and never expiring, no entry may claim a file that does not list it, and
/// no entry may belong to a set the policy does not have. Run-time entries are not
/// checked one by one (no record of them is kept). Returns the entries that differ.
pub fn audit(map: &mut SetMap, sets: &[FileSet]) -> Result<u64, SetMapError> {
    let wanted: HashMap<u32, HashSet<IpNet>> =
        sets.iter().map(|s| (s.id, s.entries.iter().copied().collect())).collect();
    let mut found: HashMap<u32, HashSet<IpNet>> = HashMap::new();
    let mut differ = 0;
    for e in map.entries(None)? {
        let Some(files) = wanted.get(&e.id) else {
            differ += 1;
            continue;
        };
        if e.value.origin & set_origin::FILE != 0 {
            let listed = files.contains(&e.net);
            if !listed || e.value.expires_ns != 0 {
                differ += 1;
            }
            if listed {
                found.entry(e.id).or_default().insert(e.net);
            }
        }
    }
    for (id, files) in &wanted {
        let held = found.get(id).map_or(0, HashSet::len);
        differ += (files.len() - held) as u64;
    }
    Ok(differ)
}

/// Removes the run-time entries that expired by `now`, recounts the entries of every
/// set (mending a count a writer that died part-way left wrong; `ids`, the sets the
/// policy has, are counted even when empty) and notes each set's earliest expiry;
/// returns how many expired per set id. Unless `full`, the walk is skipped while no
/// set in `ids` has an entry that can have expired: a set of a million permanent
/// entries costs nothing between the full sweeps. The walk streams: what it keeps is
/// the expired entries.
pub fn sweep(
    map: &mut SetMap,
    now: u64,
    ids: &[u32],
    full: bool,
) -> Result<HashMap<u32, u64>, SetMapError> {
    if !full && ids.iter().all(|id| map.earliest(*id).is_some_and(|at| at > now)) {
        return Ok(HashMap::new());
    }
    let mut expired: Vec<(u32, IpNet)> = Vec::new();
    let mut held: HashMap<u32, u64> = ids.iter().map(|id| (*id, 0)).collect();
    let mut earliest: HashMap<u32, u64> = ids.iter().map(|id| (*id, u64::MAX)).collect();
    map.visit(&mut |e| {
        let runtime = e.value.origin & set_origin::FILE == 0;
        if runtime && e.expired(now) {
            expired.push((e.id, e.net));
            return;
        }
        *held.entry(e.id).or_default() += 1;
        if runtime && e.value.expires_ns != 0 {
            let at = earliest.entry(e.id).or_insert(u64::MAX);
            *at = (*at).min(e.value.expires_ns);
        }
    })?;
    map.remove(&expired)?;
    let mut counts: HashMap<u32, u64> = HashMap::new();
    for (id, _) in &expired {
        *counts.entry(*id).or_default() += 1;
    }
    for (id, n) in &counts {
        map.bump(*id, set_stat::EXPIRIES, *n);
    }
    for (id, n) in held {
        if map.count(id) != n {
            map.set_count(id, n)?;
        }
    }
    for (id, at) in earliest {
        map.set_earliest(id, at);
    }
    Ok(counts)
}

/// What adding entries at run time did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddReport {
    /// Entries that were not there.
    pub added: usize,
    /// Entries that were there and took the new expiry.
    pub renewed: usize,
    /// Entries a set file lists: they stay for good, whatever the timeout.
    pub in_file: usize,
}

/// Why a run-time change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Map(#[from] SetMapError),
    #[error(
        "set \"{set}\" holds {held} entries; {adding} more would pass its max_entries of {max}: \
         nothing was changed"
    )]
    Full { set: String, held: usize, adding: usize, max: u32 },
    #[error("{0}")]
    Changed(String),
}

/// A set as run-time commands see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInfo {
    pub name: String,
    pub id: u32,
    pub max_entries: u32,
    /// For entries added without a timeout of their own; zero: for good.
    pub timeout: Duration,
}

/// Adds run-time entries to `set`, each `(network, expiry)` expiring at its
/// `CLOCK_BOOTTIME` nanoseconds (0: never), marked with `origin` ([`set_origin`] bits,
/// `RUNTIME` and maybe who added it). An entry already there takes the new expiry and
/// origin (a repeated ban extends, or shortens, the ban); one a set file lists stays as
/// it is. Refused whole if the set would pass its `max_entries`.
pub fn add(
    map: &mut SetMap,
    set: &SetInfo,
    entries: &[(IpNet, u64)],
    origin: u32,
) -> Result<AddReport, ChangeError> {
    let mut report = AddReport::default();
    let mut writes: HashMap<IpNet, Entry> = HashMap::new();
    for (net, expires_ns) in entries {
        if let Some(previous) = writes.get_mut(net) {
            // Named twice: the last expiry given.
            previous.value.expires_ns = *expires_ns;
            continue;
        }
        match map.get(set.id, net) {
            Some(v) if v.origin & set_origin::FILE != 0 => {
                report.in_file += 1;
                continue;
            }
            Some(_) => report.renewed += 1,
            None => report.added += 1,
        }
        let value = value(net, *expires_ns, set_origin::RUNTIME | origin);
        writes.insert(*net, Entry { id: set.id, net: *net, value });
    }
    let held = map.count(set.id);
    if held + report.added as u64 > u64::from(set.max_entries) {
        return Err(ChangeError::Full {
            set: set.name.clone(),
            held: held as usize,
            adding: report.added,
            max: set.max_entries,
        });
    }
    let writes: Vec<Entry> = writes.into_values().collect();
    map.insert(&writes)?;
    map.add_count(set.id, report.added as i64)?;
    let soonest = writes.iter().map(|e| e.value.expires_ns).filter(|t| *t != 0).min();
    map.lower_earliest(set.id, soonest.unwrap_or(0));
    Ok(report)
}

/// Removes the run-time entries of set `id` among `nets` that carry all of `origin`'s
/// bits (0: any run-time entry), leaving the others; returns how many it removed.
pub fn remove_added_by(
    map: &mut SetMap,
    id: u32,
    nets: &[IpNet],
    origin: u32,
) -> Result<usize, SetMapError> {
    let mut keys = Vec::new();
    for net in nets {
        if let Some(v) = map.get(id, net)
            && v.origin & set_origin::FILE == 0
            && v.origin & origin == origin
        {
            keys.push((id, *net));
        }
    }
    map.remove(&keys)?;
    map.add_count(id, -(keys.len() as i64))?;
    Ok(keys.len())
}

/// What removing entries at run time did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DelReport {
    pub removed: usize,
    /// Not in the set.
    pub missing: Vec<IpNet>,
    /// Listed in a set file: they stay until the file no longer lists them.
    pub in_file: Vec<IpNet>,
}

/// Removes run-time entries of `set`.
pub fn delete(map: &mut SetMap, id: u32, nets: &[IpNet]) -> Result<DelReport, SetMapError> {
    let mut report = DelReport::default();
    let mut keys = Vec::new();
    for net in nets {
        match map.get(id, net) {
            None => report.missing.push(*net),
            Some(v) if v.origin & set_origin::FILE != 0 => report.in_file.push(*net),
            Some(_) => keys.push((id, *net)),
        }
    }
    map.remove(&keys)?;
    map.add_count(id, -(keys.len() as i64))?;
    report.removed = keys.len();
    Ok(report)
}

/// Makes the run-time entries of `set` exactly `nets` (with `expires_ns`): the new ones
/// are written first, then the others removed, so an entry in both lists never leaves.
/// Refused whole if the set would pass its `max_entries`. Returns (written, removed).
pub fn replace(
    map: &mut SetMap,
    set: &SetInfo,
    nets: &[IpNet],
    expires_ns: u64,
) -> Result<(usize, usize), ChangeError> {
    replace_chunks(
        map,
        set,
        nets.len(),
        expires_ns,
        nets.chunks(REPLACE_CHUNK).map(|c| Ok(c.to_vec())),
    )
}

/// Entries written per batch by [`replace_chunks`].
pub const REPLACE_CHUNK: usize = 65_536;

/// [`replace`] for a list given in chunks (read from a file as they are written, so that
/// a million entries never sit in memory at once); `total` entries in all, counted
/// beforehand for the `max_entries` check. A chunk that fails (the file changed between
/// the count and the read) stops the replacement: what was written stays, nothing is
/// removed.
pub fn replace_chunks(
    map: &mut SetMap,
    set: &SetInfo,
    total: usize,
    expires_ns: u64,
    chunks: impl Iterator<Item = Result<Vec<IpNet>, ChangeError>>,
) -> Result<(usize, usize), ChangeError> {
    let held = map.entries(Some(set.id))?;
    let from_files: HashSet<IpNet> =
        held.iter().filter(|e| e.value.origin & set_origin::FILE != 0).map(|e| e.net).collect();
    let mut stale: HashSet<IpNet> =
        held.iter().filter(|e| e.value.origin & set_origin::FILE == 0).map(|e| e.net).collect();
    drop(held);
    let runtime = stale.len();
    let files = from_files.len();
    if files + total > set.max_entries as usize {
        return Err(ChangeError::Full {
            set: set.name.clone(),
            held: files,
            adding: total,
            max: set.max_entries,
        });
    }
    let mut written = 0;
    for chunk in chunks {
        let mut chunk = chunk?;
        chunk.sort_unstable();
        chunk.dedup();
        let writes: Vec<Entry> = chunk
            .iter()
            .filter(|n| !from_files.contains(n))
            .map(|net| Entry {
                id: set.id,
                net: *net,
                value: value(net, expires_ns, set_origin::RUNTIME),
            })
            .collect();
        map.insert(&writes)?;
        written += writes.len();
        for net in &chunk {
            stale.remove(net);
        }
    }
    let stale: Vec<(u32, IpNet)> = stale.into_iter().map(|n| (set.id, n)).collect();
    map.remove(&stale)?;
    // Entries written that were not there before are adds; the others were renewed.
    let renewed = runtime - stale.len();
    map.bump(set.id, set_stat::ADDS, written.saturating_sub(renewed) as u64);
    map.bump(set.id, set_stat::DELETES, stale.len() as u64);
    // Exact unless a network came twice in different chunks; the daemon's sweep
    // recounts.
    map.set_count(set.id, (files + written) as u64)?;
    map.lower_earliest(set.id, expires_ns);
    Ok((written, stale.len()))
}

/// The entry of set `id` that decides whether `addr` is in it now, as the program looks:
/// the longest prefix holding it that has not expired.
pub fn matching(entries: &[Entry], id: u32, addr: IpAddr, now: u64) -> Option<Entry> {
    entries
        .iter()
        .filter(|e| e.id == id && e.net.contains(&addr) && !e.expired(now))
        .max_by_key(|e| e.net.prefix_len())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_keep_versions_apart() {
        for text in ["198.18.0.0/15", "198.18.3.4/32", "fd00::/8", "fd00::1/128", "0.0.0.0/0"] {
            let net: IpNet = text.parse().expect("valid");
            let key = key(0xdead_beef, &net);
            assert_eq!(parse_key(key.prefix_len(), &key.data()), Some((0xdead_beef, net)));
        }
        let v4 = key(1, &"0.0.0.0/0".parse().expect("valid"));
        let v6 = key(1, &"::/0".parse().expect("valid"));
        assert_ne!(v4.data(), v6.data(), "the version byte is part of every prefix");
        assert_eq!(v4.prefix_len(), SET_KEY_PREFIX_BITS);
    }

    #[test]
    fn expiry_is_now_plus_timeout_and_zero_means_never() {
        assert_eq!(expiry(5, Duration::ZERO), 0);
        assert_eq!(expiry(5, Duration::from_secs(2)), 2_000_000_005);
        assert_eq!(expiry(u64::MAX - 1, Duration::from_secs(2)), u64::MAX);
    }

    #[test]
    fn the_longest_live_prefix_decides() {
        let entry = |net: &str, expires_ns| {
            let net: IpNet = net.parse().expect("valid");
            Entry { id: 7, net, value: value(&net, expires_ns, set_origin::RUNTIME) }
        };
        let entries =
            [entry("198.18.0.0/16", 0), entry("198.18.1.0/24", 100), entry("198.18.1.1/32", 50)];
        let addr: IpAddr = "198.18.1.1".parse().expect("valid");
        assert_eq!(matching(&entries, 7, addr, 10).expect("valid").net, entries[2].net);
        assert_eq!(matching(&entries, 7, addr, 60).expect("valid").net, entries[1].net);
        assert_eq!(matching(&entries, 7, addr, 200).expect("valid").net, entries[0].net);
        assert_eq!(matching(&entries, 8, addr, 10), None);
    }
}
