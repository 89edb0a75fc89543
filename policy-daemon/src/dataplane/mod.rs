//! The only module that talks to the kernel: load the embedded eBPF object, apply
//! compiled [`Ruleset`]s to its maps atomically ([`apply`]), attach the program to
//! interfaces, read counters; where a filter is pinned ([`pins`]) and what its state
//! file says ([`state`]); read-only handles on pinned filters ([`pinned`]).
//!
//! Maps are filled before the program is attached anywhere, so the first packet it sees
//! is already judged by the full policy.

pub mod apply;
mod batch;
mod kernel;
pub mod limits;
pub mod migrate;
pub mod netlink;
pub mod pinned;
pub mod pins;
pub mod sets;
pub mod state;

use std::{fmt, net::Ipv4Addr};

use aya::{
    Ebpf, EbpfLoader, TestRun as _, TestRunOptions,
    maps::{Array, MapData, MapError, PerCpuArray},
    pin::PinError as AyaPinError,
    programs::{
        ProgramError, Xdp, XdpMode as AyaXdpFlags,
        links::{FdLink, LinkError, LinkInfo, PinnedLink},
        xdp::XdpLink,
    },
};
use ipnet::Ipv4Net;
use policy_common::{
    Counter, GENERATION_PREFIX_BITS, GENERATIONS, GenConfig, LAYOUT_MAP, LAYOUT_VERSION,
    LIMIT_BUCKETS_MAP, LIMIT_STATS_MAP, MAP_NAMES, MAX_SOURCES, PORTS_PROGRAM_NAME, PROGRAM_NAME,
    RULE_COUNTERS_MAP, SET_HITS_MAP, SET_STATS_MAP, SETS_MAP, VERDICT_COUNTERS_MAP, Verdict,
};

use self::{
    apply::{AddrFieldId, ApplyReport, Drift, Generations, MapWriteError, Maps as _, RuleSlot},
    kernel::KernelMaps,
    migrate::Sizes,
    pins::Pins,
    sets::{FileEntries, FileSet, SetMap, SetMapError, SyncReport},
};
use crate::policy::Ruleset;

/// The eBPF object `cargo xtask build` produced (empty when built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy-ebpf.o"));

/// The `SETS` map out of a loaded object.
fn take_sets(ebpf: &mut Ebpf) -> Result<SetMap, DataplaneError> {
    let raw = ebpf.take_map(SETS_MAP).ok_or(DataplaneError::MissingMap(SETS_MAP))?;
    let stats = ebpf.take_map(SET_STATS_MAP).ok_or(DataplaneError::MissingMap(SET_STATS_MAP))?;
    let hits = ebpf.take_map(SET_HITS_MAP).ok_or(DataplaneError::MissingMap(SET_HITS_MAP))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| DataplaneError::Cpus(source))?;
    SetMap::new(raw, Some((stats, hits)), cpus)
        .map_err(|source| DataplaneError::MapType { map: SETS_MAP, source })
}

/// The embedded eBPF object; empty when the daemon was built without it.
pub fn embedded_object() -> &'static [u8] {
    OBJECT
}

/// Where the pinned filters (a directory of pins per interface, on a bpffs) and their
/// state files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Places {
    pub pin_dir: std::path::PathBuf,
    pub state_dir: std::path::PathBuf,
}

/// Which XDP mode to attach in: the one name for it in the configuration file, on the
/// command line and here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver takes it, else generic (skb) mode.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode, which every interface supports.
    Skb,
}

/// The mode a program was attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

impl AttachMode {
    fn flags(self) -> AyaXdpFlags {
        match self {
            Self::Native => AyaXdpFlags::Driver,
            Self::Skb => AyaXdpFlags::Skb,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this xdp-policy binary was built without its eBPF program: build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("a call on the XDP program failed")]
    ProgramType(#[source] ProgramError),
    #[error("the kernel rejected program `{0}`")]
    ProgramLoad(&'static str, #[source] ProgramError),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("the named sets")]
    Sets(#[source] SetMapError),
    #[error("map `{map}` does not have the expected type or layout")]
    MapType {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("applying the ruleset failed; the ruleset in force stays in force")]
    Apply(#[source] MapWriteError),
    #[error("reading the maps back failed")]
    Audit(#[source] apply::MapReadError),
    #[error("reading the prefixes of an address trie failed")]
    TrieRead(#[source] apply::MapReadError),
    #[error("reading the number of possible CPUs failed")]
    Cpus(#[source] std::io::Error),
    #[error("the limit rules' maps")]
    Limits(#[source] limits::LimitMapError),
    #[error("reading map `{map}` failed")]
    MapRead {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching to `{iface}` in {mode} mode failed{hint}")]
    Attach {
        iface: String,
        mode: AttachMode,
        hint: AttachHint,
        #[source]
        source: ProgramError,
    },
    #[error(
        "`{iface}` already runs XDP program {} (id {}, {} mode), and xdp-policy takes an \
         interface alone: unload that program first (`xdp-loader unload {iface} --all`, or \
         with the tool that loaded it), then start again",
        holder.name.as_deref().map(|n| format!("`{n}`")).unwrap_or_else(|| "(name unknown)".into()),
        holder.id,
        holder.mode
    )]
    Occupied {
        iface: String,
        holder: Box<netlink::AttachedProgram>,
        #[source]
        source: ProgramError,
    },
    #[error("interface `{0}` does not exist")]
    UnknownInterface(String),
    #[error("BPF_PROG_TEST_RUN of the XDP program failed")]
    TestRun(#[source] ProgramError),
    #[error(
        "the pinned maps in {} do not fit this version of xdp-policy (map `{map}`: {why}): \
         remove them with `xdp-policy detach`, then start again",
        dir.display()
    )]
    StalePins { dir: std::path::PathBuf, map: &'static str, why: Box<StaleMap> },
    #[error(
        "the filter pinned in {} was set up by a newer xdp-policy (map layout {found}; this \
         version knows layouts up to {LAYOUT_VERSION}) and is left in force as it is: to go \
         back to this version, `xdp-policy detach` the interface (the filter is off until \
         this version attaches again), then start",
        dir.display()
    )]
    NewerLayout { dir: std::path::PathBuf, found: u32 },
    #[error("carrying map `{map}` over to the new maps failed")]
    Carry {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning {} failed", path.display())]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: AyaPinError,
    },
    #[error("opening the pinned link {} failed", path.display())]
    PinnedLink {
        path: std::path::PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("replacing the program on the pinned link {} failed", path.display())]
    ReplaceProgram {
        path: std::path::PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error("the embedded eBPF object does not parse")]
    Object(#[source] aya_obj::ParseError),
}

impl DataplaneError {
    /// The program could not be put on a pinned link because the kernel has released
    /// the link from its interface (the interface went away): ENOLINK from
    /// `BPF_LINK_UPDATE`. The link can only be replaced by a new one.
    pub fn link_defunct(&self) -> bool {
        matches!(
            self,
            Self::ReplaceProgram { source: ProgramError::SyscallError(e), .. }
                if e.io_error.raw_os_error() == Some(libc::ENOLINK)
        )
    }
}

/// Why a pinned map cannot be reused by this version of the program.
#[derive(Debug, thiserror::Error)]
pub enum StaleMap {
    #[error("{}", error_chain(.0))]
    Unreadable(MapError),
    #[error("{}", error_chain(.0))]
    WrongType(MapError),
    #[error(
        "pinned (type, key bytes, value bytes, entries) {found:?}, this version needs {expected:?}"
    )]
    Layout { found: (u32, u32, u32, u32), expected: (u32, u32, u32, u32) },
}

/// Advice for attach errors the kernel reports with nothing but an errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachHint {
    None,
    /// ERANGE in native mode on veth.
    PeerMtu,
    /// EOPNOTSUPP in native mode.
    NoNativeSupport,
    /// EBUSY or EEXIST.
    Occupied,
}

impl fmt::Display for AttachHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "",
            Self::PeerMtu => {
                " (ERANGE: on veth this means the peer's MTU is too large for native XDP; \
                 lower it to 3,500 or less, or attach in skb mode)"
            }
            Self::NoNativeSupport => " (the driver has no native XDP support: attach in skb mode)",
            Self::Occupied => {
                " (another XDP program is attached to this interface in a different mode or \
                 without a replaceable link: detach it first)"
            }
        })
    }
}

/// Per-verdict totals, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts(pub [Counter; Verdict::COUNT as usize]);

/// The counter at `index` of a per-CPU counter map, summed over CPUs.
fn sum_counter(map: &PerCpuArray<MapData, Counter>, index: u32) -> Result<Counter, MapError> {
    Ok(map.get(&index, 0)?.iter().fold(Counter::default(), |sum, c| Counter {
        packets: sum.packets + c.packets,
        bytes: sum.bytes + c.bytes,
    }))
}

impl VerdictCounts {
    /// Every verdict's counter from a `VERDICTS` map.
    fn read(map: &PerCpuArray<MapData, Counter>) -> Result<Self, MapError> {
        let mut counts = Self::default();
        for verdict in Verdict::ALL {
            counts.0[verdict as usize] = sum_counter(map, verdict as u32)?;
        }
        Ok(counts)
    }

    pub fn get(&self, verdict: Verdict) -> Counter {
        self.0[verdict as usize]
    }

    /// Packets dropped and passed.
    pub fn dropped_passed(&self) -> (u64, u64) {
        Verdict::ALL.iter().fold((0, 0), |(d, p), v| {
            let n = self.get(*v).packets;
            if v.drops() { (d + n, p) } else { (d, p + n) }
        })
    }
}

/// Which of the object's programs judges packets: both use the same maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `policy_xdp`, which judges every policy.
    Full,
    /// `policy_ports`, for a policy a port table decides (its rules look at nothing but
    /// the protocol and the destination port): it reads no address, no set, no limit,
    /// and judges no other generation (it drops what it cannot judge).
    Ports,
}

impl Program {
    /// The cheapest program that judges `ruleset`.
    pub fn for_ruleset(ruleset: &Ruleset) -> Self {
        if ruleset.port_table.is_some() { Self::Ports } else { Self::Full }
    }

    /// Its name in the object and in the kernel.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => PROGRAM_NAME,
            Self::Ports => PORTS_PROGRAM_NAME,
        }
    }

    /// The program the kernel names `name` (15 bytes at most) runs; any other name, a
    /// version's before the port program or another tool's, is taken for one that
    /// judges everything.
    fn named(name: &str) -> Self {
        if name == PORTS_PROGRAM_NAME { Self::Ports } else { Self::Full }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// The program for the policy last applied (loaded on first use).
    program: Program,
    /// The pinned link this process put its program on, or adopted, and which program
    /// runs there: an apply that changes programs swaps them around its flip.
    link: Option<(Pins, Program)>,
    /// Waited between a flip and the swap after it (tests: see [`Self::delay_swaps`]).
    swap_delay: std::time::Duration,
    maps: KernelMaps,
    /// The named sets' entries, and what is known of the file entries among them.
    sets: SetMap,
    file_entries: FileEntries,
    generations: Generations,
    /// The maps are pinned (adopted from pins, or pinned once attached).
    maps_pinned: bool,
}

impl Dataplane {
    /// Loads the program into the kernel and applies `ruleset` to its maps; attaches
    /// nothing.
    pub fn load(ruleset: &Ruleset) -> Result<Self, DataplaneError> {
        Self::load_sized(ruleset, &Sizes::full(MAX_SOURCES))
    }

    /// [`Self::load`] with maps of `sizes`, which must fit `ruleset` and whatever is
    /// applied later.
    pub fn load_sized(ruleset: &Ruleset, sizes: &Sizes) -> Result<Self, DataplaneError> {
        let mut dataplane = Self::load_program(sizes)?;
        dataplane.apply(ruleset)?;
        Ok(dataplane)
    }

    /// Loads the program into the kernel on new, empty maps of `sizes`, marked with this
    /// [`LAYOUT_VERSION`]; applies and attaches nothing.
    fn load_program(sizes: &Sizes) -> Result<Self, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            if let Some(entries) = sizes.entries(name) {
                loader.map_max_entries(name, entries);
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        let sets = take_sets(&mut ebpf)?;
        let mut dataplane = Self {
            ebpf,
            program: Program::Full,
            link: None,
            swap_delay: std::time::Duration::ZERO,
            maps,
            sets,
            file_entries: FileEntries::empty(),
            generations: Generations::new(),
            maps_pinned: false,
        };
        let layout =
            dataplane.ebpf.map_mut(LAYOUT_MAP).ok_or(DataplaneError::MissingMap(LAYOUT_MAP))?;
        let mut layout = Array::<_, u32>::try_from(layout)
            .map_err(|source| DataplaneError::MapType { map: LAYOUT_MAP, source })?;
        layout
            .set(0, LAYOUT_VERSION, 0)
            .map_err(|source| DataplaneError::MapType { map: LAYOUT_MAP, source })?;
        Ok(dataplane)
    }

    /// Loads the program on the maps of the filter pinned under `pins` (its link is
    /// pinned: it is in force), with their counters, and applies nothing yet. Neither
    /// generation's contents are trusted: each is written whole by its first apply.
    /// `rules` (the rules in force with their counter slots, from the state file) lets
    /// unchanged rules keep counting where they were. The maps must be of this layout and
    /// of `sizes` ([`migrate::examine`] says [`migrate::Pinned::Fits`]); others are
    /// migrated ([`Self::migrate`]).
    pub fn adopt(pins: &Pins, rules: Vec<RuleSlot>, sizes: &Sizes) -> Result<Self, DataplaneError> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let map_paths: Vec<_> = MAP_NAMES.iter().map(|name| (*name, pins.map(name))).collect();
        check_pinned_maps(pins, &map_paths, sizes)?;
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let maps = KernelMaps::take(&mut ebpf).map_err(|e| match e {
            DataplaneError::MapType { map, source } => DataplaneError::StalePins {
                dir: pins.dir().to_path_buf(),
                map,
                why: Box::new(StaleMap::WrongType(source)),
            },
            other => other,
        })?;
        let sets = take_sets(&mut ebpf)?;
        let generations = Generations::adopt(maps.active_generation()?, rules);
        let on_link = pinned_link_program(&pins.link()).unwrap_or(Program::Full);
        Ok(Self {
            ebpf,
            program: on_link,
            link: Some((pins.clone(), on_link)),
            swap_delay: std::time::Duration::ZERO,
            maps,
            sets,
            file_entries: FileEntries::unknown(),
            generations,
            maps_pinned: true,
        })
    }

    /// Pins every map under `pins` (for maps this process created: only once the
    /// program is attached, so that no pinned maps exist without a filter in force).
    fn pin_maps(&mut self, pins: &Pins) -> Result<(), DataplaneError> {
        self.pin_maps_in(&pins.maps())?;
        self.maps_pinned = true;
        Ok(())
    }

    /// Pins every map in `dir`.
    fn pin_maps_in(&self, dir: &std::path::Path) -> Result<(), DataplaneError> {
        std::fs::create_dir_all(dir)
            .map_err(|error| pins::PinError::Io { path: dir.to_path_buf(), error })?;
        for name in MAP_NAMES {
            let path = dir.join(name);
            self.map_data(name)?
                .pin(&path)
                .map_err(|source| DataplaneError::Pin { path, source })?;
        }
        Ok(())
    }

    /// The map `name` of the loaded program, wherever this process keeps it.
    fn map_data(&self, name: &'static str) -> Result<&MapData, DataplaneError> {
        if let Some(map) = self.maps.data(name) {
            return Ok(map);
        }
        let counters = self.sets.counter_maps();
        match name {
            SETS_MAP => Ok(self.sets.data()),
            SET_STATS_MAP => {
                counters.map(|(stats, _)| stats).ok_or(DataplaneError::MissingMap(name))
            }
            SET_HITS_MAP => counters.map(|(_, hits)| hits).ok_or(DataplaneError::MissingMap(name)),
            _ => match self.ebpf.map(name) {
                Some(
                    aya::maps::Map::Array(data)
                    | aya::maps::Map::PerCpuArray(data)
                    | aya::maps::Map::LruHashMap(data)
                    | aya::maps::Map::HashMap(data)
                    | aya::maps::Map::RingBuf(data)
                    | aya::maps::Map::LpmTrie(data),
                ) => Ok(data),
                _ => Err(DataplaneError::MissingMap(name)),
            },
        }
    }

    /// Attaches to `iface` and pins the maps (if this process created them), the link
    /// and the program: the filter now stays in force when this process exits. A failure
    /// after the attach drops the link again (it is owned by this process until pinned).
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        choice: XdpMode,
        pins: &Pins,
    ) -> Result<AttachMode, DataplaneError> {
        let (mode, link_id) = self.attach_link(iface, choice)?;
        if !self.maps_pinned {
            self.pin_maps(pins)?;
        }
        let program = self.program()?;
        let link = program.take_link(link_id).map_err(DataplaneError::ProgramType)?;
        let link = FdLink::try_from(link)
            .map_err(|source| DataplaneError::PinnedLink { path: pins.link(), source })?;
        link.pin(pins.link())
            .map_err(|source| DataplaneError::Pin { path: pins.link(), source })?;
        self.link = Some((pins.clone(), self.program));
        self.pin_program(pins)?;
        Ok(mode)
    }

    /// Puts this process's program on the link pinned under `pins`, atomically (the
    /// kernel swaps the program of the link: no packet goes unfiltered), and pins it.
    pub fn replace_on_pinned_link(&mut self, pins: &Pins) -> Result<(), DataplaneError> {
        let path = pins.link();
        let pinned = PinnedLink::from_pin(&path)
            .map_err(|source| DataplaneError::PinnedLink { path: path.clone(), source })?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|source| DataplaneError::PinnedLink { path: path.clone(), source })?;
        let program = self.program()?;
        let id = program
            .attach_to_link(link)
            .map_err(|source| DataplaneError::ReplaceProgram { path, source })?;
        // Hold no descriptor of the link: its pin alone keeps it, so `detach` (removing
        // the pin) takes the filter off even while a daemon runs.
        drop(program.take_link(id).map_err(DataplaneError::ProgramType)?);
        self.link = Some((pins.clone(), self.program));
        self.pin_program(pins)
    }

    /// Whether the link pinned under `pins` runs this process's program (not one that
    /// something else put on it).
    pub fn link_runs_this_program(&mut self, pins: &Pins) -> Result<bool, DataplaneError> {
        let on_link = pinned_link_info(&pins.link())?.program_id();
        let ours = self.program()?.info().map_err(DataplaneError::ProgramType)?.id();
        Ok(on_link == ours)
    }

    fn pin_program(&mut self, pins: &Pins) -> Result<(), DataplaneError> {
        let path = pins.program();
        // The previous program's pin; the program itself goes once nothing uses it.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(pins::PinError::Io { path, error: e }.into());
            }
            _ => {}
        }
        self.program()?.pin(&path).map_err(|source| DataplaneError::Pin { path, source })
    }

    /// The sizes the maps that follow the policy were created with.
    pub fn sizes(&self) -> Result<Sizes, DataplaneError> {
        Sizes::of(|name| {
            self.map_data(name)?
                .info()
                .map(|info| info.max_entries())
                .map_err(|source| DataplaneError::MapRead { map: name, source })
        })
    }

    /// The rules in force with their counter slots, in rule order.
    pub fn rule_slots(&self) -> &[RuleSlot] {
        self.generations.active_rules()
    }

    /// Makes `ruleset` the one in force, atomically: packets see the previous ruleset
    /// or this one, never a mix. On error the previous ruleset stays in force.
    ///
    /// The sets' file entries are written first (a set's contents are shared by both
    /// generations); once the new generation is in force, the entries of sets it no
    /// longer has are removed.
    ///
    /// A policy that needs the other program ([`Program::for_ruleset`]) gets it on the
    /// link: the full program goes on before the flip (it judges the generation in force
    /// as well), the port program after it, so that the port program never meets a
    /// generation it cannot judge.
    pub fn apply(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        let wanted = Program::for_ruleset(ruleset);
        let previous = self.program;
        self.before_flip(wanted)?;
        let report = self.write_and_flip(ruleset).inspect_err(|_| {
            // The generation in force is the previous one: so is its program, unless the
            // full one went on the link for the flip that failed.
            self.program = self.program_on_link().unwrap_or(previous);
        })?;
        self.after_flip(wanted);
        Ok(report)
    }

    /// Loads `wanted`, and puts the full program on the link if the port program runs
    /// there and `wanted` is the full one; waits until no packet is still judged by the
    /// port program: a grace period that starts after the swap (one an earlier flip
    /// started may end while a port program run that began later still reads `ACTIVE`).
    fn before_flip(&mut self, wanted: Program) -> Result<(), DataplaneError> {
        let previous = std::mem::replace(&mut self.program, wanted);
        if let Err(e) = self.program() {
            self.program = previous;
            return Err(e);
        }
        if let Some((pins, Program::Ports)) = self.link.clone()
            && wanted == Program::Full
        {
            self.swap_on_link(&pins)?;
            kernel::wait_for_rcu_grace_period();
        }
        Ok(())
    }

    /// Puts the program for the policy now in force on the link, if another runs there.
    /// A failure leaves the full program there, which judges every policy: logged, not
    /// an error of the apply, which took effect.
    fn after_flip(&mut self, wanted: Program) {
        let Some((pins, on_link)) = self.link.clone() else { return };
        if on_link == wanted {
            return;
        }
        std::thread::sleep(self.swap_delay);
        if let Err(e) = self.swap_on_link(&pins) {
            tracing::warn!(
                program = %wanted,
                on_link = %on_link,
                "could not put the program for this policy on the link, where the one that \
                 runs judges it too: {}",
                error_chain(&e)
            );
        }
    }

    /// [`Self::replace_on_pinned_link`], where a link that is gone or no longer on an
    /// interface runs nothing that must be swapped: forgotten instead.
    fn swap_on_link(&mut self, pins: &Pins) -> Result<(), DataplaneError> {
        if !pins.linked() {
            self.link = None;
            return Ok(());
        }
        match self.replace_on_pinned_link(pins) {
            Err(e) if e.link_defunct() => {
                self.link = None;
                Ok(())
            }
            other => other,
        }
    }

    /// For tests: waits `delay` between each flip and the swap of programs after it,
    /// widening the moment in which the program already on the link judges the new
    /// generation.
    pub fn delay_swaps(&mut self, delay: std::time::Duration) {
        self.swap_delay = delay;
    }

    /// The program the link runs, if this process knows of one.
    pub fn program_on_link(&self) -> Option<Program> {
        self.link.as_ref().map(|(_, program)| *program)
    }

    /// The program for the policy last applied.
    pub fn current_program(&self) -> Program {
        self.program
    }

    fn write_and_flip(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        self.sync_sets(ruleset, false)?;
        // The generation about to be written: once no packet reads it, its set slots'
        // hits go to the sets that held them, before the slots change hands.
        self.generations.settle(&mut self.maps);
        let next = self.generations.next_generation();
        if let Ok(config) = self.maps.config(next) {
            let known: Vec<u32> = ruleset.sets.iter().map(|s| s.id).collect();
            self.sets.credit_hits(next, &config, &known);
        }
        let report =
            self.generations.apply(&mut self.maps, ruleset).map_err(DataplaneError::Apply)?;
        self.sync_sets(ruleset, true)?;
        Ok(report)
    }

    fn sync_sets(&mut self, ruleset: &Ruleset, purge: bool) -> Result<(), DataplaneError> {
        let files: Vec<FileSet> =
            ruleset.sets.iter().map(|s| FileSet { id: s.id, entries: &s.entries }).collect();
        let report =
            self.file_entries.sync(&mut self.sets, &files, purge).map_err(DataplaneError::Sets)?;
        if report != SyncReport::default() {
            tracing::debug!(
                added = report.added,
                removed = report.removed,
                purged = report.purged,
                "set entries written"
            );
        }
        Ok(())
    }

    /// The counters of set `id` (see [`SetMap::counters`]).
    pub fn set_counters(&mut self, id: u32) -> sets::SetCounters {
        let configs: Vec<GenConfig> =
            (0..GENERATIONS).filter_map(|g| self.maps.config(g).ok()).collect();
        self.sets.counters(id, &configs)
    }

    /// The named sets' entries, to change at run time (see [`sets`]).
    pub fn sets(&mut self) -> &mut SetMap {
        &mut self.sets
    }

    /// Removes the run-time set entries that have expired (the program no longer
    /// matches them); returns how many, per set id. `ids`: the sets of the policy; `full`:
    /// walk the map even if no entry can have expired (see [`sets::sweep`]).
    pub fn sweep_sets(
        &mut self,
        ids: &[u32],
        full: bool,
    ) -> Result<std::collections::HashMap<u32, u64>, DataplaneError> {
        sets::sweep(&mut self.sets, sets::boot_now_ns(), ids, full).map_err(DataplaneError::Sets)
    }

    /// Reads back what the kernel holds for `ruleset`, the ruleset last applied, and
    /// says where it differs (see [`Generations::audit`]).
    ///
    /// The sets' file entries are checked too (see [`sets::audit`]).
    pub fn audit(&mut self, ruleset: &Ruleset) -> Result<Drift, DataplaneError> {
        let mut drift =
            self.generations.audit(&mut self.maps, ruleset).map_err(DataplaneError::Audit)?;
        let files: Vec<FileSet> =
            ruleset.sets.iter().map(|s| FileSet { id: s.id, entries: &s.entries }).collect();
        drift.add(SETS_MAP, sets::audit(&mut self.sets, &files).map_err(DataplaneError::Sets)?);
        Ok(drift)
    }

    /// Puts `ruleset` back in force whole after an audit found drift (see
    /// [`Generations::repair`]).
    ///
    /// The sets' file entries are written again whole, and entries of sets the policy
    /// does not have removed.
    pub fn repair(&mut self, ruleset: &Ruleset) -> Result<ApplyReport, DataplaneError> {
        let wanted = Program::for_ruleset(ruleset);
        let previous = self.program;
        self.before_flip(wanted)?;
        self.file_entries = FileEntries::distrusted();
        let report = self
            .sync_sets(ruleset, false)
            .and_then(|()| {
                self.generations.repair(&mut self.maps, ruleset).map_err(DataplaneError::Apply)
            })
            .inspect_err(|_| self.program = self.program_on_link().unwrap_or(previous))?;
        self.sync_sets(ruleset, true)?;
        self.after_flip(wanted);
        Ok(report)
    }

    /// The program for the policy last applied, loaded into the kernel on first use.
    fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let name = self.program.name();
        let program = self.ebpf.program_mut(name).ok_or(DataplaneError::MissingProgram(name))?;
        let program: &mut Xdp = program.try_into().map_err(DataplaneError::ProgramType)?;
        if program.fd().is_err() {
            program.load().map_err(|source| DataplaneError::ProgramLoad(name, source))?;
        }
        Ok(program)
    }

    /// Attaches the program to `iface` and returns the mode and the link's id. With
    /// [`XdpMode::Auto`], native mode is tried first and generic mode used when the
    /// driver refuses, with the reason logged.
    fn attach_link(
        &mut self,
        iface: &str,
        choice: XdpMode,
    ) -> Result<(AttachMode, aya::programs::xdp::XdpLinkId), DataplaneError> {
        match choice {
            XdpMode::Native => self.attach_in(iface, AttachMode::Native),
            XdpMode::Skb => self.attach_in(iface, AttachMode::Skb),
            XdpMode::Auto => match self.attach_in(iface, AttachMode::Native) {
                Ok(attached) => Ok(attached),
                // Another program holds the interface in one mode or the other: generic
                // mode is refused just the same.
                Err(
                    e @ (DataplaneError::UnknownInterface(_) | DataplaneError::Occupied { .. }),
                ) => Err(e),
                Err(e) => {
                    tracing::warn!(
                        iface,
                        reason = %error_chain(&e),
                        "native XDP refused, falling back to skb (generic) mode"
                    );
                    self.attach_in(iface, AttachMode::Skb)
                }
            },
        }
    }

    fn attach_in(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(AttachMode, aya::programs::xdp::XdpLinkId), DataplaneError> {
        let result = self.program()?.attach(iface, mode.flags());
        match result {
            Ok(link) => Ok((mode, link)),
            Err(ProgramError::UnknownInterface { name }) => {
                Err(DataplaneError::UnknownInterface(name))
            }
            Err(source) => {
                let hint = attach_hint(mode, &source);
                if hint == AttachHint::Occupied
                    && let Some(holder) = holder_of(iface)
                {
                    return Err(DataplaneError::Occupied {
                        iface: iface.to_string(),
                        holder: Box::new(holder),
                        source,
                    });
                }
                Err(DataplaneError::Attach { iface: iface.to_string(), mode, hint, source })
            }
        }
    }

    /// Per-verdict packet and byte counts since the program was loaded.
    pub fn verdict_counts(&self) -> Result<VerdictCounts, DataplaneError> {
        VerdictCounts::read(&self.maps.verdict_counters)
            .map_err(|source| DataplaneError::MapRead { map: VERDICT_COUNTERS_MAP, source })
    }

    /// One verdict's counter (cheaper than [`Self::verdict_counts`]).
    pub fn verdict_count(&self, verdict: Verdict) -> Result<Counter, DataplaneError> {
        KernelMaps::read_counter(&self.maps.verdict_counters, VERDICT_COUNTERS_MAP, verdict as u32)
    }

    /// The IPv4 prefixes of the source or destination trie in the generation in force,
    /// read back from the kernel, in key order.
    pub fn v4_prefixes(&mut self, field: AddrFieldId) -> Result<Vec<Ipv4Net>, DataplaneError> {
        let generation = self.generations.active() as u8;
        let mut nets = Vec::new();
        self.maps
            .visit_v4(field, &mut |(len, data), _| {
                if data[0] == generation {
                    let [_, a, b, c, d, ..] = data;
                    let len = (len - GENERATION_PREFIX_BITS) as u8;
                    nets.push(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len));
                }
            })
            .map_err(DataplaneError::TrieRead)?;
        nets.sort_unstable();
        Ok(nets)
    }

    /// The counter of the rule at `index` (rule order) of the ruleset in force.
    pub fn rule_count(&self, index: usize) -> Result<Option<Counter>, DataplaneError> {
        let Some(rule) = self.generations.active_rules().get(index) else {
            return Ok(None);
        };
        KernelMaps::read_counter(&self.maps.rule_counters, RULE_COUNTERS_MAP, rule.slot).map(Some)
    }

    /// Packets and bytes of every rule in force, in rule order. A rule's counts run
    /// from when it was first applied, across reloads that leave it unchanged.
    pub fn rule_counts(&self) -> Result<Vec<(String, Counter)>, DataplaneError> {
        self.generations
            .active_rules()
            .iter()
            .map(|rule| {
                let c = KernelMaps::read_counter(
                    &self.maps.rule_counters,
                    RULE_COUNTERS_MAP,
                    rule.slot,
                )?;
                Ok((rule.name.clone(), c))
            })
            .collect()
    }

    /// Handles on the limit rules' maps (counters and buckets) of this program.
    pub fn limit_maps(&self) -> Result<limits::LimitMaps, DataplaneError> {
        let id = |data: &MapData, map: &'static str| {
            data.info().map(|i| i.id()).map_err(|source| DataplaneError::MapRead { map, source })
        };
        let stats = id(aya::maps::IterableMap::map(&self.maps.limit_stats), LIMIT_STATS_MAP)?;
        let buckets = match self.ebpf.map(LIMIT_BUCKETS_MAP) {
            Some(aya::maps::Map::LruHashMap(data)) => id(data, LIMIT_BUCKETS_MAP)?,
            _ => return Err(DataplaneError::MissingMap(LIMIT_BUCKETS_MAP)),
        };
        limits::LimitMaps::from_ids(stats, buckets).map_err(DataplaneError::Limits)
    }

    /// The ids of the loaded program's maps (for tools and tests that open them as
    /// another process would).
    pub fn map_ids(&mut self) -> Result<Vec<u32>, DataplaneError> {
        let info = self.program()?.info().map_err(DataplaneError::ProgramType)?;
        Ok(info.map_ids().map_err(DataplaneError::ProgramType)?.unwrap_or_default())
    }

    /// The loaded program's descriptor, for benchmarks that test-run it many times.
    pub fn program_fd(&mut self) -> Result<std::os::fd::BorrowedFd<'_>, DataplaneError> {
        use std::os::fd::AsFd as _;
        Ok(self.program()?.fd().map_err(DataplaneError::TestRun)?.as_fd())
    }

    /// Runs the loaded program once on `packet` (BPF_PROG_TEST_RUN) and returns its XDP
    /// action. Counters are updated as for a real packet. Takes `&self`: threads may run
    /// it at once, each on its own CPU.
    pub fn test_run(&self, packet: &[u8]) -> Result<u32, DataplaneError> {
        let name = self.program.name();
        let program = self.ebpf.program(name).ok_or(DataplaneError::MissingProgram(name))?;
        let program: &Xdp = program.try_into().map_err(DataplaneError::ProgramType)?;
        let opts = TestRunOptions { data_in: Some(packet), ..TestRunOptions::default() };
        let result = program.test_run(opts).map_err(DataplaneError::TestRun)?;
        Ok(result.return_value)
    }
}

/// Which program runs on the link pinned at `path`, by its name in the kernel.
fn pinned_link_program(path: &std::path::Path) -> Option<Program> {
    Some(Program::named(&pinned_link_program_name(path)?))
}

/// The kernel's name of the program on the link pinned at `path`.
pub(crate) fn pinned_link_program_name(path: &std::path::Path) -> Option<String> {
    let info = pinned_link_program_info(path).ok()??;
    Some(info.name_as_str()?.to_string())
}

/// What the kernel says of the program on the link pinned at `path`; `None` if it is
/// no longer loaded.
fn pinned_link_program_info(
    path: &std::path::Path,
) -> Result<Option<aya::programs::ProgramInfo>, DataplaneError> {
    let id = pinned_link_info(path)?.program_id();
    Ok(aya::programs::loaded_programs().flatten().find(|p| p.id() == id))
}

/// What the kernel says of the link pinned at `path`.
fn pinned_link_info(path: &std::path::Path) -> Result<LinkInfo, DataplaneError> {
    let err = |source| DataplaneError::PinnedLink { path: path.to_path_buf(), source };
    FdLink::from(PinnedLink::from_pin(path).map_err(err)?).info().map_err(err)
}

/// Pinned maps are reused as they are, so each must be exactly what this version of the
/// program declares (type, key and value size, entries): a map left by another version
/// would be read with the wrong layout.
/// The sizes of the maps that follow the policy are `sizes`'.
fn check_pinned_maps(
    pins: &Pins,
    map_paths: &[(&'static str, std::path::PathBuf)],
    sizes: &Sizes,
) -> Result<(), DataplaneError> {
    let object = aya_obj::Object::parse(OBJECT).map_err(DataplaneError::Object)?;
    for (name, path) in map_paths {
        if !path.exists() {
            continue;
        }
        let stale = |why| DataplaneError::StalePins {
            dir: pins.dir().to_path_buf(),
            map: name,
            why: Box::new(why),
        };
        let info =
            aya::maps::MapInfo::from_pin(path).map_err(|e| stale(StaleMap::Unreadable(e)))?;
        let Some(wanted) = object.maps.get(*name) else { continue };
        let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let found = (pinned_type, info.key_size(), info.value_size(), info.max_entries());
        let max_entries = sizes.entries(name).unwrap_or(wanted.max_entries());
        let expected = (wanted.map_type(), wanted.key_size(), wanted.value_size(), max_entries);
        if found != expected {
            return Err(stale(StaleMap::Layout { found, expected }));
        }
    }
    Ok(())
}

/// The XDP program that holds `iface`, if the kernel names one (a failed lookup is no
/// worse than the attach error it would have explained).
fn holder_of(iface: &str) -> Option<netlink::AttachedProgram> {
    let ifindex = nix::net::if_::if_nametoindex(iface).ok()?;
    netlink::attached_program(ifindex).ok().flatten()
}

/// Advice for an attach error the kernel reports with nothing but an errno.
fn attach_hint(mode: AttachMode, error: &ProgramError) -> AttachHint {
    let errno = match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    match (mode, errno) {
        (AttachMode::Native, Some(libc::ERANGE)) => AttachHint::PeerMtu,
        (AttachMode::Native, Some(libc::EOPNOTSUPP)) => AttachHint::NoNativeSupport,
        (_, Some(libc::EBUSY) | Some(libc::EEXIST)) => AttachHint::Occupied,
        _ => AttachHint::None,
    }
}

/// `error: cause: cause`, for logging an error as one field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
