//! A read-only handle on a filter pinned by a daemon, whether or not that daemon still
//! runs: its counters, a test run of its program, its sampled drop events, the daemon
//! holding it, and detaching it. What `status`, `explain`, `events` and `detach` read.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    TestRun as _, TestRunOptions,
    maps::{Array, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp},
};
use aya_obj::programs::XdpAttachType;
use policy_common::{
    ACTIVE_MAP, CONFIG_MAP, Counter, DropEvent, EVENT_SETTINGS_MAP, EVENTS_MAP, EventSettings,
    GENERATIONS, GenConfig, LIMIT_BUCKETS_MAP, LIMIT_STATS_MAP, LIMITS_MAP, LimitConfig,
    RULE_COUNTERS_MAP, VERDICT_COUNTERS_MAP, rule_index,
};

use super::{
    VerdictCounts,
    limits::{LimitMapError, LimitMaps},
    pins::{PinError, Pins},
    state::{State, StateError},
};

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("no filter is pinned for {iface} under {}", pin_dir.display())]
    NotPinned { iface: String, pin_dir: PathBuf },
    #[error("reading the pinned map {} failed", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("opening the pinned program {} failed", path.display())]
    Program {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "the pins of {iface} are removed, but its XDP link (id {id}) is still held by a \
         process: the filter stays until that process lets it go"
    )]
    LinkHeld { iface: String, id: u32 },
}

/// The pins of one interface's filter.
#[derive(Clone, Debug)]
pub struct PinnedFilter {
    iface: String,
    pins: Pins,
}

impl PinnedFilter {
    /// Every interface with pins under `pin_dir` (a filter in force, or what is left of
    /// one), sorted by name; only `only` if given, which must be there.
    pub fn all(pin_dir: &Path, only: Option<&str>) -> Result<Vec<Self>, PinnedError> {
        let all: Vec<Self> = Pins::all(pin_dir)?
            .into_iter()
            .filter(|(iface, _)| only.is_none_or(|o| o == iface))
            .map(|(iface, pins)| Self { iface, pins })
            .collect();
        match only {
            Some(iface) if all.is_empty() => Err(not_pinned(pin_dir, iface)),
            _ => Ok(all),
        }
    }

    /// The filter of `iface`, whose program must be pinned.
    pub fn open(pin_dir: &Path, iface: &str) -> Result<Self, PinnedError> {
        let pins = Pins::new(pin_dir, iface);
        if !pins.program().exists() {
            return Err(not_pinned(pin_dir, iface));
        }
        Ok(Self { iface: iface.to_string(), pins })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// A link is pinned: the filter is in force (if the interface still exists).
    pub fn attached(&self) -> bool {
        self.pins.linked()
    }

    /// The daemon holding the filter (its lock), if one runs.
    pub fn daemon(&self) -> Option<u32> {
        self.pins.lock_holder()
    }

    /// Per-verdict packets and bytes since the filter was first attached.
    pub fn verdict_counts(&self) -> Result<VerdictCounts, PinnedError> {
        let map = self.counters(VERDICT_COUNTERS_MAP)?;
        VerdictCounts::read(&map.map).map_err(|source| PinnedError::Map { path: map.path, source })
    }

    /// The entries of set `id` (its count key) and its counters, if the filter has a
    /// set map.
    pub fn set_figures(&self, id: u32) -> Option<(u64, super::sets::SetCounters)> {
        let map = super::sets::SetMap::from_pin(&self.pins.map(policy_common::SETS_MAP)).ok()?;
        Some((map.count(id), map.counters(id, &self.configs())))
    }

    /// Each generation's configuration, as far as it can be read.
    fn configs(&self) -> Vec<GenConfig> {
        let Ok(data) = MapData::from_pin(self.pins.map(CONFIG_MAP)) else { return Vec::new() };
        let Ok(map) = Array::<MapData, GenConfig>::try_from(Map::Array(data)) else {
            return Vec::new();
        };
        (0..GENERATIONS).filter_map(|g| map.get(&g, 0).ok()).collect()
    }

    /// The kernel memory the filter holds, by the kernel's own accounting.
    pub fn kernel_memory(&self) -> KernelMemory {
        kernel_memory(&self.pins)
    }

    /// The name of the program on the pinned link (`policy_xdp`, or `policy_ports`
    /// for a policy a port table decides), if the link can be read.
    pub fn program_name(&self) -> Option<String> {
        super::pinned_link_program_name(&self.pins.link())
    }

    /// The layout version of the pinned maps (see [`super::migrate`]), if they can be read.
    pub fn layout(&self) -> Option<u32> {
        super::migrate::pinned_layout(&self.pins.maps()).ok()
    }

    /// The bucket parameters of the rule at `index` (rule order) in the generation in
    /// force, if it is a limit rule.
    pub fn limit_config(&self, index: usize) -> Option<LimitConfig> {
        let active = MapData::from_pin(self.pins.map(ACTIVE_MAP)).ok()?;
        let active = Array::<MapData, u32>::try_from(Map::Array(active)).ok()?.get(&0, 0).ok()?;
        let limits = MapData::from_pin(self.pins.map(LIMITS_MAP)).ok()?;
        let limits = Array::<MapData, LimitConfig>::try_from(Map::Array(limits)).ok()?;
        let index = rule_index(active % GENERATIONS, u32::try_from(index).ok()?);
        limits.get(&index, 0).ok().filter(|l| l.id != 0)
    }

    /// The limit rules' counters and buckets.
    pub fn limit_maps(&self) -> Result<LimitMaps, LimitMapError> {
        LimitMaps::from_pins(&self.pins.map(LIMIT_STATS_MAP), &self.pins.map(LIMIT_BUCKETS_MAP))
    }

    /// The rule counters at these slots (as the state file gives them), in order.
    pub fn rule_counts(&self, slots: &[u32]) -> Result<Vec<Counter>, PinnedError> {
        let map = self.counters(RULE_COUNTERS_MAP)?;
        slots.iter().map(|slot| map.get(*slot)).collect()
    }

    fn counters(&self, name: &'static str) -> Result<Counters, PinnedError> {
        let path = self.pins.map(name);
        let err = |source| PinnedError::Map { path: path.clone(), source };
        let data = MapData::from_pin(&path).map_err(err)?;
        let map = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(err)?;
        Ok(Counters { map, path })
    }

    /// Runs the pinned program once on `frame` (BPF_PROG_TEST_RUN) and returns its XDP
    /// action. It counts like a packet on the interface.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, PinnedError> {
        let path = self.pins.program();
        let program = Xdp::from_pin(&path, XdpAttachType::Interface)
            .map_err(|source| PinnedError::Program { path: path.clone(), source })?;
        let opts = TestRunOptions { data_in: Some(frame), ..TestRunOptions::default() };
        let result =
            program.test_run(opts).map_err(|source| PinnedError::Program { path, source })?;
        Ok(result.return_value)
    }

    /// The filter's drop events and their sampling switch.
    pub fn events(&self) -> Result<Events, PinnedError> {
        if !self.attached() {
            return Err(not_pinned(self.pins.dir().parent().unwrap_or(Path::new("")), &self.iface));
        }
        let open = |name: &str| {
            let path = self.pins.map(name);
            MapData::from_pin(&path).map_err(|source| PinnedError::Map { path, source })
        };
        let err = |name: &str| {
            let path = self.pins.map(name);
            move |source| PinnedError::Map { path, source }
        };
        let ring = RingBuf::try_from(Map::RingBuf(open(EVENTS_MAP)?)).map_err(err(EVENTS_MAP))?;
        let settings = Array::try_from(Map::Array(open(EVENT_SETTINGS_MAP)?))
            .map_err(err(EVENT_SETTINGS_MAP))?;
        Ok(Events { ring, settings, settings_path: self.pins.map(EVENT_SETTINGS_MAP) })
    }
}

fn not_pinned(pin_dir: &Path, iface: &str) -> PinnedError {
    PinnedError::NotPinned { iface: iface.to_string(), pin_dir: pin_dir.to_path_buf() }
}

/// Kernel memory of one filter, in bytes: what the kernel charges for its maps and its
/// program (`memlock` in their fdinfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelMemory {
    pub maps: u64,
    pub program: u64,
}

impl KernelMemory {
    pub fn total(&self) -> u64 {
        self.maps + self.program
    }
}

/// The kernel memory of the filter pinned under `pins`; a pin that cannot be opened
/// counts nothing (an older filter without some map).
pub fn kernel_memory(pins: &Pins) -> KernelMemory {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let maps = policy_common::MAP_NAMES
        .iter()
        .filter_map(|name| MapData::from_pin(pins.map(name)).ok())
        .filter_map(|map| memlock(map.fd().as_fd().as_raw_fd()))
        .sum();
    let program = Xdp::from_pin(pins.program(), XdpAttachType::Interface)
        .ok()
        .and_then(|p| p.fd().ok().and_then(|fd| memlock(fd.as_fd().as_raw_fd())))
        .unwrap_or(0);
    KernelMemory { maps, program }
}

/// The `memlock:` line of a BPF object descriptor's fdinfo.
fn memlock(fd: i32) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

/// A pinned per-CPU counter map.
struct Counters {
    map: PerCpuArray<MapData, Counter>,
    path: PathBuf,
}

impl Counters {
    /// The counter at `index`, summed over CPUs.
    fn get(&self, index: u32) -> Result<Counter, PinnedError> {
        super::sum_counter(&self.map, index)
            .map_err(|source| PinnedError::Map { path: self.path.clone(), source })
    }
}

/// One filter's ring of sampled drop events, and its sampling switch.
pub struct Events {
    ring: RingBuf<MapData>,
    settings: Array<MapData, EventSettings>,
    settings_path: PathBuf,
}

impl Events {
    /// Turns sampling on at `per_second` events per second per CPU, or off with 0.
    pub fn set_rate(&mut self, per_second: u32) -> Result<(), PinnedError> {
        let interval_ns = if per_second == 0 { 0 } else { 1_000_000_000 / u64::from(per_second) };
        self.settings
            .set(0, EventSettings { interval_ns }, 0)
            .map_err(|source| PinnedError::Map { path: self.settings_path.clone(), source })
    }

    /// The events waiting in the ring.
    pub fn drain(&mut self) -> Vec<DropEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<DropEvent>() {
                continue;
            }
            // SAFETY: the program writes whole `DropEvent`s, a plain `repr(C)` type for
            // which every bit pattern is valid; read unaligned from the ring's bytes.
            events.push(unsafe { std::ptr::read_unaligned::<DropEvent>(item.as_ptr().cast()) });
        }
        events
    }
}

/// How long `detach` waits for the kernel to let the links go.
const DETACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes the pins (and so the filter) and state of `only`, or of every interface, and
/// returns once the kernel has let their links go.
pub fn detach(
    pin_dir: &Path,
    state_dir: &Path,
    only: Option<&str>,
) -> Result<Vec<String>, PinnedError> {
    let mut done = Vec::new();
    let mut links = Vec::new();
    for filter in PinnedFilter::all(pin_dir, only)? {
        let link = pinned_link_id(&filter.pins);
        filter.pins.remove()?;
        State::remove(state_dir, &filter.iface)?;
        links.extend(link.map(|id| (filter.iface.clone(), id)));
        done.push(filter.iface);
    }
    // The kernel lets a link go a moment after its last pin (bpffs frees inodes after
    // an RCU grace period): return once the filters are really off.
    let deadline = Instant::now() + DETACH_TIMEOUT;
    while let Some((iface, id)) = links.iter().find(|(_, id)| link_exists(*id)) {
        if Instant::now() >= deadline {
            return Err(PinnedError::LinkHeld { iface: iface.clone(), id: *id });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(done)
}

/// The id of the link pinned under `pins`, if one is.
fn pinned_link_id(pins: &Pins) -> Option<u32> {
    super::pinned_link_info(&pins.link()).ok().map(|info| info.id())
}

/// Whether the kernel still holds the link `id`.
fn link_exists(id: u32) -> bool {
    aya::programs::loaded_links().flatten().any(|link| link.id() == id)
}
