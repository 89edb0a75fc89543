//! Upgrades that keep enforcing: a daemon that finds the maps of an older layout pinned
//! (or of other sizes than the policy needs) builds a new set of maps beside them and
//! swaps its program onto the link, without a detach.
//!
//! 1. [`examine`]: the pinned maps' [`LAYOUT_VERSION`] (in the `LAYOUT` map, which
//!    layout 1 did not have) and shapes. A newer layout is refused: this daemon cannot
//!    read it, and downgrading means `xdp-policy detach`.
//! 2. [`Dataplane::migrate`]: the program is loaded on new maps, what must outlive the
//!    change is copied from the pinned maps ([`CARRIED`]: counters, the named sets,
//!    limit buckets, the generation in force), the policy applied, the new maps pinned
//!    in `maps-new`, and the program swapped onto the link (the kernel swaps it
//!    atomically: every packet meets one program or the other, each with a whole
//!    policy). What the old program wrote between the copy and the swap is copied a
//!    second time, then `maps-new` becomes `maps` and the old maps go.
//! 3. [`recover`], at every start: a migration a crash interrupted is finished if the
//!    program on the link already uses the new maps, else its new maps are removed and
//!    the next start migrates again. Never a mix.

use std::{path::Path, time::Instant};

use aya::maps::{Array, Map, MapData, MapInfo};
use policy_common::{
    ACTIVE_MAP, CONFIG_MAP, DPORT_BITMAPS_MAP, DPORT_CLASSES_MAP, EVENT_SETTINGS_MAP,
    FIELD_BITMAPS_MAP, GENERATIONS, LAYOUT_MAP, LAYOUT_VERSION, LIMIT_BUCKETS_MAP, LIMIT_STATS_MAP,
    LIMITS_MAP, MAP_NAMES, MAX_PORT_CLASSES, MAX_RULES, PORT_TABLE_MAP, REGIONS,
    RULE_COUNTER_SLOTS, RULE_COUNTERS_MAP, RULES_MAP, SET_HITS_MAP, SET_STATS_MAP, SETS_MAP,
    SPORT_BITMAPS_MAP, SPORT_CLASSES_MAP, TCP_FLAGS_MAP, V4_CLASSES_MAP, V4_L1_MAP, V4_L2_MAP,
    V4_L3_MAP, V6_BLOCKS_MAP, V6_CLASSES_MAP, V6_L1_MAP, VERDICT_COUNTERS_MAP, field, field_bitmap,
    port_table, tcp_flags, v4_table, v6_table,
};

use super::{
    Dataplane, DataplaneError, StaleMap,
    apply::{ApplyReport, Generations, PortFieldId, RuleSlot},
    batch::{BatchError, BatchMap, RawEntries},
    check_pinned_maps, error_chain,
    pins::Pins,
    sets::FileEntries,
};
use crate::policy::{Ruleset, V4Table, V6Table};

/// How a map's contents cross a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carry {
    /// Copied once: only the daemon writes it (under the sets lock, which the migration
    /// holds), or the copy is what the new maps start from.
    Once,
    /// Per-CPU counters the program adds to: copied, then what the old program added
    /// until the swap is added too.
    Counters,
    /// The limit buckets the program updates: copied, then copied again, the later
    /// (more used) of the two times kept for a bucket both hold.
    Buckets,
}

/// The maps whose contents outlive a migration; the others hold the policy, which is
/// applied whole to the new maps, or nothing that needs to last (the event ring, the
/// per-CPU scratch and event clock). A map is carried byte for byte when its key and
/// value sizes are unchanged: a layout that changes what one of these holds without
/// changing its sizes must skip it (or convert it) here for pins of older layouts.
const CARRIED: [(&str, Carry); 10] = [
    // The generation in force and its configuration: the new policy goes to the other
    // generation, as an apply on the old maps would, so that the set hits counted under
    // the old one are credited to their sets at the next apply.
    (ACTIVE_MAP, Carry::Once),
    (CONFIG_MAP, Carry::Once),
    (SETS_MAP, Carry::Once),
    (SET_STATS_MAP, Carry::Once),
    (EVENT_SETTINGS_MAP, Carry::Once),
    (VERDICT_COUNTERS_MAP, Carry::Counters),
    (RULE_COUNTERS_MAP, Carry::Counters),
    (LIMIT_STATS_MAP, Carry::Counters),
    (SET_HITS_MAP, Carry::Counters),
    (LIMIT_BUCKETS_MAP, Carry::Buckets),
];

/// The sizes of the maps that follow the policy; the others have the object's. A map
/// the policy does not use has one entry (the program does not read it): the limits'
/// maps without a limit rule (a preallocated million buckets hold about 92 MiB of
/// kernel memory, the limits and their counters 256 KiB), the port table without a
/// port-only policy (1.25 MiB with all its rows; a port-only policy has a row a
/// generation for each transport class it decides differently, 128 KiB each). The
/// address tables and the port classes have room for what the policy uses
/// ([`TableRoom`]). A reload that needs other sizes moves the filter to new maps
/// ([`Dataplane::migrate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub buckets: u32,
    /// `LIMITS` and `LIMIT_STATS` at the object's size.
    pub limits: bool,
    /// The port table's rows per generation (0: the map has one entry).
    pub port_rows: u32,
    /// `TCP_FLAGS` at the object's size, for a policy with a flags rule; else the
    /// classes' entries only.
    pub flags: bool,
    /// `FIELD_BITMAPS` at the object's size, for a policy with sets; else the entries
    /// before the sets' only.
    pub sets: bool,
    /// Rules `RULES` (and `LIMITS`, when used) have room for: the next power of two from
    /// the policy's rules, at least [`Sizes::MIN_RULES`].
    pub rules: u32,
    pub tables: TableRoom,
}

impl Sizes {
    pub const MIN_RULES: u32 = 64;

    /// What `ruleset` needs, with `max_sources` buckets if it has a limit rule.
    pub fn for_ruleset(ruleset: &Ruleset, max_sources: u32) -> Self {
        let limits = ruleset.rules.iter().any(|rule| rule.limit.is_some());
        Self {
            buckets: if limits { max_sources } else { 1 },
            limits,
            port_rows: ruleset.port_rows().map_or(0, |ports| ports.rows.len() as u32),
            flags: ruleset.config.fields & field::TCP_FLAGS != 0,
            sets: ruleset.config.src_sets | ruleset.config.dst_sets != 0,
            rules: (ruleset.rules.len() as u32)
                .next_power_of_two()
                .clamp(Self::MIN_RULES, MAX_RULES as u32),
            tables: TableRoom::for_ruleset(ruleset),
        }
    }

    /// Every map at full size: any policy fits (for tests and benchmarks that apply
    /// many policies to one program).
    pub fn full(max_sources: u32) -> Self {
        Self {
            buckets: max_sources,
            limits: true,
            port_rows: port_table::MAX_ROWS_PER_GENERATION,
            flags: true,
            sets: true,
            rules: MAX_RULES as u32,
            tables: TableRoom::FULL,
        }
    }

    /// The entries of map `name`; `None`: the object's.
    pub fn entries(&self, name: &str) -> Option<u32> {
        match name {
            LIMIT_BUCKETS_MAP => Some(self.buckets),
            LIMITS_MAP | LIMIT_STATS_MAP if !self.limits => Some(1),
            RULES_MAP | LIMITS_MAP => Some(GENERATIONS * self.rules),
            PORT_TABLE_MAP => Some(match self.port_rows {
                0 => 1,
                rows => GENERATIONS * rows * port_table::WORDS_PER_ROW,
            }),
            TCP_FLAGS_MAP if !self.flags => Some(GENERATIONS * tcp_flags::CLASSES_ONLY),
            FIELD_BITMAPS_MAP if !self.sets => Some(GENERATIONS * field_bitmap::SET_RULES),
            _ => self.tables.entries(name),
        }
    }

    /// The sizes of maps whose entries `entries_of` reads.
    pub fn of(
        mut entries_of: impl FnMut(&'static str) -> Result<u32, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        Ok(Self {
            buckets: entries_of(LIMIT_BUCKETS_MAP)?,
            limits: entries_of(LIMITS_MAP)? > 1,
            port_rows: entries_of(PORT_TABLE_MAP)? / (GENERATIONS * port_table::WORDS_PER_ROW),
            flags: entries_of(TCP_FLAGS_MAP)? > GENERATIONS * tcp_flags::CLASSES_ONLY,
            sets: entries_of(FIELD_BITMAPS_MAP)? > GENERATIONS * field_bitmap::SET_RULES,
            rules: entries_of(RULES_MAP)? / GENERATIONS,
            tables: TableRoom::of(entries_of)?,
        })
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = |on: bool| if on { "used" } else { "unused" };
        write!(
            f,
            "{} buckets, limits {}, rules {}, port table rows {}, TCP flags {}, sets {}, {}",
            self.buckets,
            used(self.limits),
            self.rules,
            self.port_rows,
            used(self.flags),
            used(self.sets),
            self.tables
        )
    }
}

/// The room the address tables' maps have, per generation and field: the fields whose
/// first level is there (256 KiB a field and family, both generations: 1 for the source
/// alone, 2 for the destination too, which comes second), and how many blocks of each
/// deeper level and classes; and each port field's: its classes by port (256 KiB), and
/// room for how many class bitmaps. The blocks and classes are interleaved by generation
/// and field (`policy_common::v4_table::block_index`, `port_bitmap_index`), so a map
/// with room for `n` holds numbers 0 to n - 1 of each share. 0: the program does not
/// read the maps (one entry). A policy gets the next power of two above what its
/// tables use (at least [`TableRoom::MIN_BLOCKS`] and [`TableRoom::MIN_CLASSES`]), so
/// that most reloads that change a few prefixes fit the maps they have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRoom {
    pub v4_l1: u32,
    pub v4_l2: u32,
    pub v4_l3: u32,
    pub v4_classes: u32,
    pub v6_l1: u32,
    pub v6_blocks: u32,
    pub v6_classes: u32,
    pub dport_classes: u32,
    pub sport_classes: u32,
}

impl TableRoom {
    /// The least room a table in use gets: 16 KiB of blocks, 8 KiB of classes.
    pub const MIN_BLOCKS: u32 = 4;
    pub const MIN_CLASSES: u32 = 16;
    /// The words of a field's first level, both generations.
    const L1_WORDS: u32 = GENERATIONS * v4_table::L1_ENTRIES / v4_table::L1_PER_WORD;

    /// Room for any tables.
    pub const FULL: Self = Self {
        v4_l1: 2,
        v4_l2: v4_table::BLOCKS,
        v4_l3: v4_table::BLOCKS,
        v4_classes: v4_table::CLASSES,
        v6_l1: 2,
        v6_blocks: v6_table::BLOCKS,
        v6_classes: v6_table::CLASSES,
        dport_classes: MAX_PORT_CLASSES,
        sport_classes: MAX_PORT_CLASSES,
    };

    /// What `ruleset`'s tables use ([`Self::used_by`]), rounded up.
    pub fn for_ruleset(ruleset: &Ruleset) -> Self {
        let used = Self::used_by(ruleset);
        let room = |n: u32, min: u32, limit: u32| match n {
            0 => 0,
            n => n.next_power_of_two().max(min).min(limit),
        };
        Self {
            v4_l1: used.v4_l1,
            v4_l2: room(used.v4_l2, Self::MIN_BLOCKS, v4_table::BLOCKS),
            v4_l3: room(used.v4_l3, Self::MIN_BLOCKS, v4_table::BLOCKS),
            v4_classes: room(used.v4_classes, Self::MIN_CLASSES, v4_table::CLASSES),
            v6_l1: used.v6_l1,
            v6_blocks: room(used.v6_blocks, Self::MIN_BLOCKS, v6_table::BLOCKS),
            v6_classes: room(used.v6_classes, Self::MIN_CLASSES, v6_table::CLASSES),
            dport_classes: room(used.dport_classes, Self::MIN_CLASSES, MAX_PORT_CLASSES),
            sport_classes: room(used.sport_classes, Self::MIN_CLASSES, MAX_PORT_CLASSES),
        }
    }

    /// Exactly what `ruleset`'s tables use: the most of either field.
    pub fn used_by(ruleset: &Ruleset) -> Self {
        let read = PortFieldId::read_by(ruleset);
        let ports = |id: PortFieldId| {
            if read.contains(&id) { id.of(ruleset).bitmaps.len() as u32 } else { 0 }
        };
        let blocks = |entries: &[u32]| (entries.len() / 256) as u32;
        let (v4, v6) = (ruleset.v4_tables.iter().flatten(), ruleset.v6_tables.iter().flatten());
        // The fields from the first whose first level is read.
        let first = |walked: [bool; 2]| match walked {
            [_, true] => 2,
            [true, false] => 1,
            [false, false] => 0,
        };
        let v4_l1 =
            first(ruleset.v4_tables.each_ref().map(|t| t.as_ref().is_some_and(V4Table::walked)));
        let v6_l1 =
            first(ruleset.v6_tables.each_ref().map(|t| t.as_ref().is_some_and(V6Table::walked)));
        let most = |values: &mut dyn Iterator<Item = u32>| values.max().unwrap_or(0);
        Self {
            v4_l1,
            v4_l2: most(&mut v4.clone().map(|t| blocks(&t.l2))),
            v4_l3: most(&mut v4.clone().map(|t| blocks(&t.l3))),
            v4_classes: most(&mut v4.map(|t| t.classes.len() as u32)),
            v6_l1,
            v6_blocks: most(&mut v6.clone().map(|t| blocks(&t.blocks))),
            v6_classes: most(&mut v6.map(|t| t.classes.len() as u32)),
            dport_classes: ports(PortFieldId::Dst),
            sport_classes: ports(PortFieldId::Src),
        }
    }

    /// Whether tables that use `used` fit in this room.
    pub fn holds(&self, used: &Self) -> bool {
        self.short_of(used).is_none()
    }

    /// The first map without room for tables that use `used`.
    pub fn short_of(&self, used: &Self) -> Option<&'static str> {
        [
            (used.v4_l1 > self.v4_l1, V4_L1_MAP),
            (used.v4_l2 > self.v4_l2, V4_L2_MAP),
            (used.v4_l3 > self.v4_l3, V4_L3_MAP),
            (used.v4_classes > self.v4_classes, V4_CLASSES_MAP),
            (used.v6_l1 > self.v6_l1, V6_L1_MAP),
            (used.v6_blocks > self.v6_blocks, V6_BLOCKS_MAP),
            (used.v6_classes > self.v6_classes, V6_CLASSES_MAP),
            (used.dport_classes > self.dport_classes, DPORT_BITMAPS_MAP),
            (used.sport_classes > self.sport_classes, SPORT_BITMAPS_MAP),
        ]
        .into_iter()
        .find_map(|(short, map)| short.then_some(map))
    }

    /// The entries of map `name` if it is one of the tables'; `None` for the port
    /// fields' classes in use (the object's size) and the other maps.
    pub fn entries(&self, name: &str) -> Option<u32> {
        let blocks = |n: u32| Some((n * REGIONS * 256).max(1));
        let first = |used: bool| if used { None } else { Some(1) };
        let l1 = |fields: u32| Some((fields * Self::L1_WORDS).max(1));
        match name {
            V4_L1_MAP => l1(self.v4_l1),
            V4_L2_MAP => blocks(self.v4_l2),
            V4_L3_MAP => blocks(self.v4_l3),
            V4_CLASSES_MAP => Some((self.v4_classes * REGIONS).max(1)),
            V6_L1_MAP => l1(self.v6_l1),
            V6_BLOCKS_MAP => blocks(self.v6_blocks),
            V6_CLASSES_MAP => Some((self.v6_classes * REGIONS).max(1)),
            DPORT_CLASSES_MAP => first(self.dport_classes > 0),
            SPORT_CLASSES_MAP => first(self.sport_classes > 0),
            DPORT_BITMAPS_MAP => Some((self.dport_classes * GENERATIONS).max(1)),
            SPORT_BITMAPS_MAP => Some((self.sport_classes * GENERATIONS).max(1)),
            _ => None,
        }
    }

    /// The room of maps whose entries `entries_of` reads.
    pub fn of(
        mut entries_of: impl FnMut(&'static str) -> Result<u32, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        let mut blocks = |name| Ok::<_, DataplaneError>(entries_of(name)? / (REGIONS * 256));
        let (v4_l2, v4_l3, v6_blocks) =
            (blocks(V4_L2_MAP)?, blocks(V4_L3_MAP)?, blocks(V6_BLOCKS_MAP)?);
        Ok(Self {
            v4_l1: entries_of(V4_L1_MAP)? / Self::L1_WORDS,
            v4_l2,
            v4_l3,
            v4_classes: entries_of(V4_CLASSES_MAP)? / REGIONS,
            v6_l1: entries_of(V6_L1_MAP)? / Self::L1_WORDS,
            v6_blocks,
            v6_classes: entries_of(V6_CLASSES_MAP)? / REGIONS,
            dport_classes: entries_of(DPORT_BITMAPS_MAP)? / GENERATIONS,
            sport_classes: entries_of(SPORT_BITMAPS_MAP)? / GENERATIONS,
        })
    }
}

impl std::fmt::Display for TableRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = |fields: u32| match fields {
            0 => "no first level",
            1 => "the source's first level",
            _ => "both fields' first levels",
        };
        write!(
            f,
            "IPv4 address tables {}, {}+{} blocks, {} classes; IPv6 address tables {}, {} \
             blocks, {} classes; port classes {} (destination), {} (source)",
            first(self.v4_l1),
            self.v4_l2,
            self.v4_l3,
            self.v4_classes,
            first(self.v6_l1),
            self.v6_blocks,
            self.v6_classes,
            self.dport_classes,
            self.sport_classes
        )
    }
}

/// What [`examine`] found pinned.
#[derive(Debug, PartialEq, Eq)]
pub enum Pinned {
    /// This layout, with the sizes wanted: adopt the maps as they are.
    Fits,
    /// An older layout, or other sizes: migrate. `why` says what differs.
    Migrate { from: u32, why: String },
}

/// The layout version of the maps pinned under `pins` (1 if they have no `LAYOUT`
/// map, which layout 1 did not have).
pub fn pinned_layout(maps_dir: &Path) -> Result<u32, DataplaneError> {
    let path = maps_dir.join(LAYOUT_MAP);
    if !path.exists() {
        return Ok(1);
    }
    let read = || -> Result<u32, aya::maps::MapError> {
        let map = Array::<_, u32>::try_from(Map::Array(MapData::from_pin(&path)?))?;
        map.get(&0, 0)
    };
    read().map_err(|source| DataplaneError::MapRead { map: LAYOUT_MAP, source })
}

/// Whether the maps pinned under `pins` can be adopted as they are by this version
/// with maps of `sizes`, or must be migrated. A newer layout is an error
/// ([`DataplaneError::NewerLayout`]).
pub fn examine(pins: &Pins, sizes: &Sizes) -> Result<Pinned, DataplaneError> {
    let found = pinned_layout(&pins.maps())?;
    if found > LAYOUT_VERSION {
        return Err(DataplaneError::NewerLayout { dir: pins.dir().to_path_buf(), found });
    }
    if found < LAYOUT_VERSION {
        return Ok(Pinned::Migrate { from: found, why: format!("layout {found}") });
    }
    let map_paths: Vec<_> = MAP_NAMES.iter().map(|name| (*name, pins.map(name))).collect();
    if let Some((name, _)) = map_paths.iter().find(|(_, path)| !path.exists()) {
        return Ok(Pinned::Migrate { from: found, why: format!("map {name} missing") });
    }
    match check_pinned_maps(pins, &map_paths, sizes) {
        Ok(()) => Ok(Pinned::Fits),
        Err(DataplaneError::StalePins { map, why, .. })
            if matches!(*why, StaleMap::Layout { .. }) =>
        {
            Ok(Pinned::Migrate { from: found, why: format!("map {map}: {why}") })
        }
        Err(e) => Err(e),
    }
}

/// What [`recover`] did with a migration a crash interrupted.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    /// None was interrupted.
    Nothing,
    /// The program on the link used the new maps: they are now the pinned ones.
    Finished,
    /// It did not: the new maps were removed, the old ones are in force.
    Undone,
}

/// Finishes or undoes a migration a crash interrupted (see the module's description).
/// Call with the interface's lock held, before anything else reads the pins.
pub fn recover(pins: &Pins) -> Result<Recovered, DataplaneError> {
    let staged = pins.staged_maps();
    if !staged.exists() {
        if pins.retired_maps().exists() {
            // Killed after the renames, before the old maps were removed.
            pins.commit_staged()?;
            return Ok(Recovered::Finished);
        }
        return Ok(Recovered::Nothing);
    }
    let on_link = if pins.linked() { link_map_ids(pins)? } else { Vec::new() };
    let staged_active = MapInfo::from_pin(staged.join(ACTIVE_MAP)).ok().map(|info| info.id());
    if staged_active.is_some_and(|id| on_link.contains(&id)) {
        pins.commit_staged()?;
        Ok(Recovered::Finished)
    } else {
        pins.remove_staged()?;
        Ok(Recovered::Undone)
    }
}

/// The ids of the maps the program on the pinned link uses.
fn link_map_ids(pins: &Pins) -> Result<Vec<u32>, DataplaneError> {
    match super::pinned_link_program_info(&pins.link())? {
        Some(program) => {
            program.map_ids().map(Option::unwrap_or_default).map_err(DataplaneError::ProgramType)
        }
        None => Ok(Vec::new()),
    }
}

/// What a migration carried over, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    /// The apply of the policy to the new maps.
    pub applied: ApplyReport,
    /// Map → entries copied from the old maps.
    pub maps: Vec<(&'static str, usize)>,
    /// Maps not carried, and why.
    pub skipped: Vec<(&'static str, String)>,
    /// Entries the second copy changed (what the old program wrote after the first).
    pub second_copy: usize,
    /// From the start of the migration to the swap, and to the end.
    pub to_swap_ms: u64,
    pub total_ms: u64,
}

impl Carried {
    /// `MAP entries, ...` for the log.
    pub fn summary(&self) -> String {
        self.maps.iter().map(|(map, n)| format!("{map} {n}")).collect::<Vec<_>>().join(", ")
    }

    pub fn skipped_summary(&self) -> String {
        self.skipped.iter().map(|(map, why)| format!("{map}: {why}")).collect::<Vec<_>>().join("; ")
    }
}

/// One carried map: the old map's handle, the new map's, and what the first copy read.
struct Pair {
    name: &'static str,
    how: Carry,
    old: BatchMap,
    new: BatchMap,
    first: RawEntries,
    /// Where the old map's entries go in the new one.
    moves: Moves,
}

/// How an array's indices change between layouts: from index `from` on, entries move
/// `by` further (in `LIMIT_STATS`, the buckets' counts follow the counter slots, whose
/// number grew in layout 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Moves {
    from: u32,
    by: u32,
}

impl Moves {
    const NONE: Self = Self { from: u32::MAX, by: 0 };

    /// The moves of map `name` from layout `layout` to this one.
    fn of(name: &str, layout: u32) -> Self {
        // Layouts before 5 had 2,048 counter slots.
        const SLOTS_BEFORE_5: u32 = 2 * 1024;
        if name == LIMIT_STATS_MAP && layout < 5 {
            Self { from: SLOTS_BEFORE_5, by: RULE_COUNTER_SLOTS - SLOTS_BEFORE_5 }
        } else {
            Self::NONE
        }
    }

    /// `entries` (of an array: 4-byte keys) at their new indices.
    fn apply(self, mut entries: RawEntries) -> RawEntries {
        if self == Self::NONE {
            return entries;
        }
        for key in entries.keys.chunks_exact_mut(4) {
            let index = u32::from_ne_bytes([key[0], key[1], key[2], key[3]]);
            if index >= self.from {
                key.copy_from_slice(&(index + self.by).to_ne_bytes());
            }
        }
        entries
    }
}

fn carry_err(map: &'static str) -> impl Fn(BatchError) -> DataplaneError {
    move |e| DataplaneError::Carry { map, source: e.source }
}

/// A crash injected at a step of a migration, for the tests that check what the next
/// start makes of it (`XDP_POLICY_TEST_CRASH_MIGRATION=staged|swapped`). The process
/// aborts as a `kill -9` would leave it: nothing cleaned up.
fn crash_point(step: &str) {
    if std::env::var("XDP_POLICY_TEST_CRASH_MIGRATION").is_ok_and(|at| at == step) {
        tracing::error!(step, "crashing the migration as asked (XDP_POLICY_TEST_CRASH_MIGRATION)");
        std::process::abort();
    }
}

impl Dataplane {
    /// Migrates the filter pinned under `pins` to new maps of this layout and of `sizes`,
    /// with `ruleset` in force (see the module's description).
    /// `rules`: the rules in force with their counter slots (from the state file), so
    /// that unchanged rules keep counting where they were. On error before the swap the
    /// pinned filter stays as it was and the new maps are removed.
    ///
    /// The caller holds the interface's lock and the sets lock of `pins.maps()`.
    pub fn migrate(
        pins: &Pins,
        rules: Vec<RuleSlot>,
        ruleset: &Ruleset,
        sizes: &Sizes,
    ) -> Result<(Self, Carried), DataplaneError> {
        let started = Instant::now();
        pins.remove_staged()?;
        let layout = pinned_layout(&pins.maps())?;
        let mut next = Self::load_program(sizes)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| DataplaneError::Cpus(source))?;
        let mut carried = Carried {
            applied: ApplyReport { kernel_generation: 0, writes: 0 },
            maps: Vec::new(),
            skipped: Vec::new(),
            second_copy: 0,
            to_swap_ms: 0,
            total_ms: 0,
        };
        let with_limits = ruleset.rules.iter().any(|rule| rule.limit.is_some());
        let mut pairs = Vec::new();
        for (name, how) in CARRIED {
            // Without a limit rule the new maps have no room for the limits' counters.
            if (how == Carry::Buckets || name == LIMIT_STATS_MAP) && !with_limits {
                carried.skipped.push((name, "the policy has no limit rule".into()));
                continue;
            }
            let path = pins.map(name);
            let old = match MapData::from_pin(&path) {
                Ok(old) => old,
                Err(_) if !path.exists() => {
                    carried.skipped.push((name, "not in the old maps".into()));
                    continue;
                }
                Err(source) => return Err(DataplaneError::MapRead { map: name, source }),
            };
            let batch = |map: &MapData| {
                BatchMap::new(name, map, cpus)
                    .map_err(|source| DataplaneError::MapRead { map: name, source })
            };
            let (old, new) = (batch(&old)?, batch(next.map_data(name)?)?);
            if (old.key_size(), old.value_size()) != (new.key_size(), new.value_size()) {
                let why = format!(
                    "its entries changed size ({}+{} bytes, now {}+{})",
                    old.key_size(),
                    old.value_size(),
                    new.key_size(),
                    new.value_size()
                );
                carried.skipped.push((name, why));
                continue;
            }
            let moves = Moves::of(name, layout);
            pairs.push(Pair { name, how, old, new, first: RawEntries::new(0, 0), moves });
        }
        // First what the apply reads: the generation in force, the sets, and the set
        // hits (it credits those of the generation it writes to their sets). The rest
        // of what the program writes last, just before the swap, so that a crash
        // between the swap and the second copy loses as little as can be.
        let read_by_apply = |p: &Pair| p.how == Carry::Once || p.name == SET_HITS_MAP;
        let mut first_copy = |pairs: &mut Vec<Pair>, before_apply: bool| {
            for pair in pairs.iter_mut().filter(|p| read_by_apply(p) == before_apply) {
                pair.first = pair.moves.apply(pair.old.dump().map_err(carry_err(pair.name))?);
                pair.new.load(&pair.first).map_err(carry_err(pair.name))?;
                carried.maps.push((pair.name, pair.first.count));
            }
            Ok::<_, DataplaneError>(())
        };
        first_copy(&mut pairs, true)?;
        next.generations = Generations::carried(next.maps.active_generation()?, rules);
        next.file_entries = FileEntries::unknown();
        let applied = next.apply(ruleset)?;
        first_copy(&mut pairs, false)?;
        carried.applied = applied;
        let staged = pins.staged_maps();
        let swapped = next.pin_maps_in(&staged).and_then(|()| {
            crash_point("staged");
            next.replace_on_pinned_link(pins)
        });
        if let Err(e) = swapped {
            if let Err(removing) = pins.remove_staged() {
                tracing::warn!("removing the new maps of the failed migration: {removing}");
            }
            return Err(e);
        }
        carried.to_swap_ms = started.elapsed().as_millis() as u64;
        crash_point("swapped");
        // Packets the old program was judging during the swap are counted once it ends.
        super::kernel::wait_for_rcu_grace_period();
        for pair in &mut pairs {
            carried.second_copy += second_copy(pair).unwrap_or_else(|e| {
                tracing::warn!(
                    map = pair.name,
                    "the second copy failed; what the old program wrote since the first is \
                     lost: {}",
                    error_chain(&e)
                );
                0
            });
        }
        pins.commit_staged()?;
        next.maps_pinned = true;
        carried.total_ms = started.elapsed().as_millis() as u64;
        Ok((next, carried))
    }
}

/// Copies what the old program wrote since the first copy; returns the entries changed.
fn second_copy(pair: &mut Pair) -> Result<usize, DataplaneError> {
    if pair.how == Carry::Once {
        return Ok(0);
    }
    let last = pair.moves.apply(pair.old.dump().map_err(carry_err(pair.name))?);
    let mut changed = 0;
    match pair.how {
        Carry::Counters => {
            // Arrays: the same keys in the same order in both reads. The new program
            // counts into the same values meanwhile, and no system call adds to a map
            // value: each is read and written back at once, so that only a packet
            // counted in the microseconds between the two calls can be lost.
            for i in 0..last.count.min(pair.first.count) {
                let (first, last_value) = (pair.first.value(i), last.value(i));
                if first == last_value {
                    continue;
                }
                let key = last.key(i);
                let Some(mut value) = pair.new.lookup(key).map_err(carry_io(pair.name))? else {
                    continue;
                };
                let lanes = first.chunks_exact(8).zip(last_value.chunks_exact(8));
                for (lane, (then, later)) in value.chunks_exact_mut(8).zip(lanes) {
                    let added = u64_of(later).wrapping_sub(u64_of(then));
                    lane.copy_from_slice(&u64_of(lane).wrapping_add(added).to_ne_bytes());
                }
                let mut one = RawEntries::new(last.key_size, last.value_size);
                one.push(key, &value);
                pair.new.load(&one).map_err(carry_err(pair.name))?;
                changed += 1;
            }
        }
        Carry::Buckets => {
            // Up to a million buckets: read the new map whole, once. A bucket the new
            // program charges between that read and the write may lose that charge.
            let now = pair.new.dump().map_err(carry_err(pair.name))?;
            let held: std::collections::HashMap<&[u8], u64> =
                (0..now.count).map(|i| (now.key(i), u64_of(now.value(i)))).collect();
            let mut later = RawEntries::new(last.key_size, last.value_size);
            for i in 0..last.count {
                let tat = u64_of(last.value(i));
                if held.get(last.key(i)).is_none_or(|&new_tat| new_tat < tat) {
                    later.push(last.key(i), last.value(i));
                }
            }
            pair.new.load(&later).map_err(carry_err(pair.name))?;
            changed = later.count;
        }
        Carry::Once => {}
    }
    Ok(changed)
}

fn carry_io(map: &'static str) -> impl Fn(std::io::Error) -> DataplaneError {
    move |source| DataplaneError::Carry { map, source }
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut lane = [0u8; 8];
    lane.copy_from_slice(&bytes[..8]);
    u64::from_ne_bytes(lane)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{compile, parse};
    use policy_common::PORT_CLASS_WORDS;

    fn compiled(text: &str) -> Ruleset {
        compile(&parse([(Path::new("t.toml"), text)]).expect("valid test policy"))
    }

    /// Layout 4's limit counters: the rules' drops stay at their slots, the buckets'
    /// counts (from slot 2,048 on) move to the new `RULE_COUNTER_SLOTS + slot`; other
    /// maps and this layout's own move nothing.
    #[test]
    fn limit_counters_follow_the_counter_slots_from_layout_4() {
        let mut entries = RawEntries::new(4, 8);
        for index in [0u32, 7, 2047, 2048, 2050, 4095] {
            entries.push(&index.to_ne_bytes(), &u64::from(index).to_ne_bytes());
        }
        let keys = |e: &RawEntries| -> Vec<u32> {
            (0..e.count)
                .map(|i| u32::from_ne_bytes(e.key(i).try_into().expect("4 bytes")))
                .collect()
        };
        let moved = Moves::of(LIMIT_STATS_MAP, 4).apply(entries.clone());
        let slots = RULE_COUNTER_SLOTS;
        assert_eq!(keys(&moved), [0, 7, 2047, slots, slots + 2, slots + 2047]);
        assert_eq!(moved.values, entries.values, "values unchanged");
        assert_eq!(Moves::of(LIMIT_STATS_MAP, LAYOUT_VERSION).apply(entries.clone()), entries);
        assert_eq!(Moves::of(RULE_COUNTERS_MAP, 4).apply(entries.clone()), entries);
    }

    /// The rules' maps get the next power of two from the policy's rules (at least the
    /// least room, at most the limit), the class-and-flags and field bitmaps their full
    /// size only with a flags rule or a set; and sizes read back from maps of those
    /// entries are the same.
    #[test]
    fn sizes_follow_the_rules_flags_and_sets_and_read_back() {
        let rules = |n: usize, extra: &str| {
            let text: String = (0..n)
                .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"drop\"\n{extra}"))
                .collect();
            Sizes::for_ruleset(&compiled(&text), 1000)
        };
        let one = rules(1, "dst_ports = 9\n");
        assert_eq!((one.rules, one.flags, one.sets), (Sizes::MIN_RULES, false, false));
        assert_eq!(one.entries(RULES_MAP), Some(GENERATIONS * Sizes::MIN_RULES));
        assert_eq!(one.entries(TCP_FLAGS_MAP), Some(GENERATIONS * tcp_flags::CLASSES_ONLY));
        assert_eq!(one.entries(FIELD_BITMAPS_MAP), Some(GENERATIONS * field_bitmap::SET_RULES));
        assert_eq!(one.entries(LIMITS_MAP), Some(1), "no limit rule");
        assert_eq!(rules(65, "").rules, 128);
        assert_eq!(rules(MAX_RULES, "").rules, MAX_RULES as u32);
        let flags = rules(2, "protocol = \"tcp\"\ntcp_flags = \"syn\"\n");
        assert!(flags.flags && !flags.sets);
        assert_eq!(flags.entries(TCP_FLAGS_MAP), None, "the object's size");
        let text = "[[set]]\nname = \"bad\"\n\n[[rule]]\nname = \"a\"\naction = \"drop\"\n\
                    src = [\"@bad\"]\n";
        let sets = Sizes::for_ruleset(&compiled(text), 1000);
        assert!(sets.sets && !sets.flags);
        assert_eq!(sets.entries(FIELD_BITMAPS_MAP), None, "the object's size");
        for sizes in [one, flags, sets, Sizes::full(1000)] {
            let object = |name: &str| match name {
                TCP_FLAGS_MAP => GENERATIONS * tcp_flags::PER_GENERATION,
                FIELD_BITMAPS_MAP => GENERATIONS * field_bitmap::PER_GENERATION,
                RULES_MAP | LIMITS_MAP => GENERATIONS * MAX_RULES as u32,
                _ => 1 << 20,
            };
            let read = Sizes::of(|name| Ok(sizes.entries(name).unwrap_or_else(|| object(name))));
            assert_eq!(read.expect("read back"), sizes);
        }
    }

    /// The tables' maps get the next power of two above what the policy uses (at
    /// least the least room), nothing for a family without tables, and sizes read back
    /// from maps of those entries are the same.
    #[test]
    fn table_room_follows_the_policy_and_reads_back() {
        let none = TableRoom::for_ruleset(&compiled(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\ndst_ports = 9\n",
        ));
        assert_eq!(none, TableRoom::of(|name| Ok(none.entries(name).unwrap_or(1))).expect("of"));
        assert_eq!([none.v4_l1, none.v6_l1, none.v4_classes, none.v6_classes], [0; 4]);
        // A rule each: five /24s (in one second-level block), nine hosts of one /24 (a
        // third-level block), an IPv6 /48 (a block for each of its bytes past the first
        // level's two).
        let mut nets: Vec<String> = (0..5).map(|i| format!("198.18.{i}.0/24")).collect();
        nets.extend((1..10).map(|i| format!("198.18.200.{i}")));
        nets.push("fd00:1::/48".into());
        let text: String = nets
            .iter()
            .enumerate()
            .map(|(i, net)| {
                format!("[[rule]]\nname = \"r{i}\"\naction = \"drop\"\nsrc = [\"{net}\"]\n")
            })
            .collect();
        let ruleset = compiled(&text);
        let used = TableRoom::used_by(&ruleset);
        assert_eq!((used.v4_l2, used.v4_l3), (1, 1));
        assert_eq!(used.v4_classes, 1 + 5 + 9, "the /0's, the /24s', the hosts'");
        assert_eq!((used.v6_blocks, used.v6_classes), (4, 2));
        let room = TableRoom::for_ruleset(&ruleset);
        assert_eq!([room.v4_l1, room.v6_l1], [1, 1], "the source's first levels alone");
        assert_eq!((room.v4_l2, room.v4_l3, room.v4_classes), (4, 4, 16));
        assert_eq!((room.v6_blocks, room.v6_classes), (4, 16));
        assert!(room.holds(&used) && !none.holds(&used) && TableRoom::FULL.holds(&used));
        let entries = |name| Ok(room.entries(name).unwrap_or(GENERATIONS * PORT_CLASS_WORDS));
        assert_eq!(TableRoom::of(entries).expect("of"), room);
        assert_eq!(room.entries(V4_CLASSES_MAP), Some(16 * REGIONS));
        assert_eq!(room.entries(V4_L2_MAP), Some(4 * REGIONS * 256));
        // A destination's first level comes after the source's: both fields' room.
        let dst =
            compiled("[[rule]]\nname = \"d\"\naction = \"drop\"\ndst = [\"198.18.0.0/16\"]\n");
        assert_eq!(TableRoom::for_ruleset(&dst).v4_l1, 2);
        assert_eq!(TableRoom::for_ruleset(&dst).entries(V4_L1_MAP), Some(2 * TableRoom::L1_WORDS));
        // One more class past a power of two: twice the room.
        let mut more = used;
        more.v4_classes = 17;
        assert!(!room.holds(&more));
    }
}
