//! The filter of one interface: its loaded program, its pinned maps and link, this
//! daemon's lock on it, and its state file.

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use policy_common::{Counter, LAYOUT_VERSION};
use tracing::{debug, error, info, warn};

use super::{Options, StartError};
use crate::{
    dataplane::{
        AttachMode, Dataplane, DataplaneError, Places, Program, VerdictCounts, XdpMode,
        apply::ApplyReport,
        error_chain,
        limits::LimitSample,
        migrate::{self, Carried, Pinned, Recovered, Sizes},
        pinned::{self, KernelMemory},
        pins::{InterfaceLock, PinError, Pins},
        sets::{self, ChangeError, SetInfo, SetMap, SetSample},
        state::{self, Audit, RuleState, SetState, State},
    },
    policy::{Policy, Ruleset},
};

pub struct Instance {
    iface: String,
    /// The bucket map's size when the policy has a limit rule (`max_sources`).
    max_sources: u32,
    pins: Pins,
    /// This daemon's hold on the interface; given up when the filter is detached.
    lock: Option<InterfaceLock>,
    dataplane: Dataplane,
    mode: AttachMode,
    /// Applies since the filter was first attached (an adopted filter continues the
    /// count of the daemon before).
    generation: u64,
    /// The interface's index when attached; 0 while it is gone.
    ifindex: u32,
    /// The policy in force here and what it compiled to: what the maps hold, what the
    /// audits compare them with and what the state file describes. It lags the policy
    /// file's latest version while applying that version fails here.
    policy: Arc<Policy>,
    ruleset: Arc<Ruleset>,
    /// The link's pin was removed to attach afresh and attaching failed: a missing link
    /// pin is this daemon's doing, not a detach, and the next tick tries again.
    relinking: bool,
    /// The audits so far; the last one's record.
    audit: Option<Audit>,
    /// Sweeps of expired set entries so far.
    sweeps: u64,
    /// The limit rules' buckets by id, from the last walk of the map, and when.
    limit_walk: Option<(Instant, HashMap<u32, u64>)>,
}

/// How long a walk of the limit buckets is reused: a walk of a full map (a million
/// buckets) takes a good part of a second.
const LIMIT_WALK_EVERY: Duration = Duration::from_secs(10);

/// Every this many sweeps (10 s apart), the sweep walks the sets even when no entry can
/// have expired, to mend counts a writer that died part-way left wrong.
const FULL_SWEEP_EVERY: u64 = 60;

/// An interface index not known yet (the lookup failed when the filter was attached).
const INDEX_UNKNOWN: u32 = u32::MAX;

/// An interface's counters, per verdict and per rule in force (in rule order).
pub struct Counts {
    pub verdicts: VerdictCounts,
    pub rules: Vec<(String, Counter)>,
}

impl Instance {
    /// The program judging the policy in force (see [`Program`]).
    pub fn program(&self) -> Program {
        self.dataplane.current_program()
    }

    /// Brings up one interface: takes its lock, adopts its pinned filter if there is one,
    /// else attaches a new one and pins it.
    pub fn start(
        iface: &str,
        policy: &Arc<Policy>,
        ruleset: &Arc<Ruleset>,
        options: &Options,
    ) -> Result<Self, StartError> {
        let Places { pin_dir, state_dir } = &options.places;
        let pins = Pins::new(pin_dir, iface);
        pins.prepare(pin_dir).map_err(DataplaneError::from)?;
        let lock = pins.lock().map_err(|e| match e {
            e @ PinError::Locked { .. } => StartError::InUse(e),
            e => DataplaneError::from(e).into(),
        })?;
        let instance = |dataplane, mode, generation, pins| Self {
            iface: iface.to_string(),
            pins,
            lock: Some(lock),
            dataplane,
            mode,
            generation,
            // Just attached there: the interface exists, whatever a failed lookup says.
            ifindex: ifindex(iface).unwrap_or(INDEX_UNKNOWN),
            policy: Arc::clone(policy),
            ruleset: Arc::clone(ruleset),
            relinking: false,
            audit: None,
            sweeps: 0,
            limit_walk: None,
            max_sources: options.max_sources,
        };
        if !pins.linked() {
            // No filter in force: whatever is pinned is left from a start that failed
            // before it attached, or from a filter whose link went with its interface.
            // Nothing of it is trusted.
            let removed = pins.remove_unlinked().map_err(DataplaneError::from)?;
            if removed > 0 {
                warn!(iface, pins = removed, "removed the pins of a filter without a link");
            }
            let sizes = Sizes::for_ruleset(ruleset, options.max_sources);
            let attached = Dataplane::load_sized(ruleset, &sizes).and_then(|mut dataplane| {
                let mode = dataplane.attach_pinned(iface, options.mode, &pins)?;
                Ok((dataplane, mode))
            });
            return match attached {
                Ok((dataplane, attached)) => {
                    info!(iface, mode = %attached, pin = %pins.link().display(), "attached and pinned");
                    Ok(instance(dataplane, attached, 1, pins))
                }
                Err(e) => {
                    // Nothing is attached: leave nothing pinned either.
                    if let Err(removing) = pins.remove() {
                        warn!(iface, "removing the pins of the failed start: {removing}");
                    }
                    Err(e.into())
                }
            };
        }
        match migrate::recover(&pins)? {
            Recovered::Nothing => {}
            Recovered::Finished => {
                warn!(iface, "finished a migration a crash interrupted after its swap");
            }
            Recovered::Undone => warn!(
                iface,
                "undid a migration a crash interrupted before its swap: the old maps are in \
                 force, migrating again"
            ),
        }
        let previous = State::read(state_dir, iface).unwrap_or_else(|e| {
            warn!(iface, "ignoring the state file: {}", error_chain(&e));
            None
        });
        let slots = previous.iter().flat_map(|s| s.rules.iter().map(RuleState::slot)).collect();
        let generation = previous.as_ref().map_or(0, |s| s.generation) + 1;
        // Without a state file, the mode asked for is the best guess: under `auto`,
        // native (which it tries first).
        let asked = match options.mode {
            XdpMode::Skb => AttachMode::Skb,
            XdpMode::Auto | XdpMode::Native => AttachMode::Native,
        };
        let mode = previous.as_ref().map_or(asked, |s| s.attach_mode);
        let sizes = Sizes::for_ruleset(ruleset, options.max_sources);
        let sets_lock = sets::lock(&pins.maps()).map_err(DataplaneError::Sets)?;
        // The interface went away since the link was pinned (the kernel released the
        // link from it): attach afresh. Any other failure leaves the pinned filter as
        // it is.
        let relink = |mut dataplane: Dataplane, e: DataplaneError| {
            warn!(iface, "the pinned link cannot be reused, attaching again: {}", error_chain(&e));
            let attached = dataplane.attach_pinned(iface, options.mode, &pins)?;
            info!(iface, mode = %attached, pin = %pins.link().display(), "attached and pinned");
            Ok::<_, DataplaneError>((dataplane, attached))
        };
        let dataplane = match migrate::examine(&pins, &sizes)? {
            Pinned::Fits => {
                let mut dataplane = Dataplane::adopt(&pins, slots, &sizes)?;
                dataplane.apply(ruleset)?;
                drop(sets_lock);
                match dataplane.replace_on_pinned_link(&pins) {
                    Ok(()) => {
                        info!(
                            iface,
                            "adopted the pinned filter: program replaced on its link, no detach"
                        );
                        dataplane
                    }
                    Err(e) if e.link_defunct() => {
                        pins.unpin_link().map_err(DataplaneError::from)?;
                        let (dataplane, attached) = relink(dataplane, e)?;
                        return Ok(instance(dataplane, attached, generation, pins.clone()));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Pinned::Migrate { from, why } => {
                match Dataplane::migrate(&pins, slots, ruleset, &sizes) {
                    Ok((dataplane, carried)) => {
                        let what = "migrated the pinned filter to new maps";
                        log_move(iface, what, from, &why, &sizes, &carried);
                        dataplane
                    }
                    // Nothing to carry the old maps' contents to: they go with the link.
                    Err(e) if e.link_defunct() => {
                        drop(sets_lock);
                        pins.unpin_link().map_err(DataplaneError::from)?;
                        pins.remove_unlinked().map_err(DataplaneError::from)?;
                        let (dataplane, attached) =
                            relink(Dataplane::load_sized(ruleset, &sizes)?, e)?;
                        return Ok(instance(dataplane, attached, 1, pins.clone()));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(instance(dataplane, mode, generation, pins))
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The last audit's record, if one ran.
    pub fn last_audit(&self) -> Option<&Audit> {
        self.audit.as_ref()
    }

    /// Someone took the filter off (its pins are gone): not enforcing until reattached.
    pub fn detached(&self) -> bool {
        self.lock.is_none()
    }

    /// Whether the interface is gone (the filter is attached again when it is back).
    pub fn interface_gone(&self) -> bool {
        self.ifindex == 0
    }

    /// Attached to an interface that exists, as far as the daemon knows.
    pub fn enforcing(&self) -> bool {
        !self.detached() && !self.interface_gone()
    }

    /// The policy in force here.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The per-verdict and per-rule counters.
    pub fn counts(&self) -> Result<Counts, DataplaneError> {
        Ok(Counts {
            verdicts: self.dataplane.verdict_counts()?,
            rules: self.dataplane.rule_counts()?,
        })
    }

    /// Makes `policy` (compiled to `ruleset`) the one in force here, atomically; on error
    /// the previous one stays. Returns `None` when the maps hold `ruleset` already (the
    /// files changed, not what they say): then only the policy recorded is updated.
    pub fn apply(
        &mut self,
        policy: &Arc<Policy>,
        ruleset: &Arc<Ruleset>,
    ) -> Result<Option<ApplyReport>, DataplaneError> {
        let report = if *ruleset == self.ruleset {
            None
        } else {
            // `xdp-policy set` may be writing the sets (the maps are pinned by now).
            let _sets = sets::lock(&self.pins.maps()).map_err(DataplaneError::Sets)?;
            let sizes = Sizes::for_ruleset(ruleset, self.max_sources);
            let report = if sizes != self.dataplane.sizes()? && self.pins.linked() {
                // The first limit rule, or the last one gone, a policy that becomes
                // port-only or gets IPv4 prefixes, or the other way: maps of other
                // sizes, which only new maps can have.
                let slots = self.dataplane.rule_slots().to_vec();
                let (dataplane, carried) = Dataplane::migrate(&self.pins, slots, ruleset, &sizes)?;
                let what = "moved the filter to new maps sized for the policy";
                let why = "the policy needs maps of other sizes";
                log_move(&self.iface, what, LAYOUT_VERSION, why, &sizes, &carried);
                self.dataplane = dataplane;
                self.limit_walk = None;
                carried.applied
            } else {
                self.dataplane.apply(ruleset)?
            };
            self.ruleset = Arc::clone(ruleset);
            self.generation += 1;
            Some(report)
        };
        self.policy = Arc::clone(policy);
        Ok(report)
    }

    /// Notices the interface going away (a veth deleted, a NIC unplugged) and attaches
    /// again, with the policy in force, when it comes back: the maps outlive the
    /// interface, the link does not. Notices the filter detached under the daemon (its
    /// pins removed, as `xdp-policy detach` does) and stops treating it as in force.
    /// Returns whether anything changed.
    pub fn follow(&mut self, mode: XdpMode, state_dir: &Path) -> bool {
        if self.detached() {
            return false;
        }
        let Some(now) = ifindex(&self.iface) else { return false };
        // The pin directory gone, or the link pin gone under a live interface (unless
        // this daemon removed it to attach afresh).
        let pins_gone =
            !self.pins.dir().exists() || (now != 0 && !self.pins.linked() && !self.relinking);
        if pins_gone {
            error!(
                iface = self.iface,
                pins = %self.pins.dir().display(),
                "the filter was detached (its pins were removed, as `xdp-policy detach` \
                 does): not enforcing; SIGHUP (`systemctl reload xdp-policy`) or a \
                 restart attaches it again"
            );
            self.lock = None;
            // The state file went with the pins; one written since (a write racing the
            // detach) describes nothing in force.
            if let Err(e) = State::remove(state_dir, &self.iface) {
                warn!(iface = self.iface, "removing the state file: {}", error_chain(&e));
            }
            return true;
        }
        if !self.relinking && (now == self.ifindex || (self.ifindex == INDEX_UNKNOWN && now != 0)) {
            self.ifindex = now;
            return false;
        }
        if now == 0 {
            warn!(
                iface = self.iface,
                "the interface went away; the filter is attached again when it is back"
            );
            self.ifindex = 0;
            return true;
        }
        // Back (or replaced by a new interface of the same name): the old link is
        // defunct; attach afresh.
        self.relinking = true;
        let attached = self
            .pins
            .unpin_link()
            .map_err(DataplaneError::from)
            .and_then(|()| self.dataplane.attach_pinned(&self.iface, mode, &self.pins));
        match attached {
            Ok(attached) => {
                self.relinking = false;
                self.mode = attached;
                self.ifindex = now;
                info!(
                    iface = self.iface,
                    mode = %attached,
                    generation = self.generation,
                    "the interface is back: re-attached"
                );
            }
            // Tried again on the next tick.
            Err(err) => warn!(iface = self.iface, "re-attaching failed: {}", error_chain(&err)),
        }
        true
    }

    /// Reads the kernel's maps back, compares them with the ruleset in force, and
    /// repairs a difference (the ruleset written whole into the other generation, then
    /// flipped to). Also checks that the pinned link runs this daemon's program, and
    /// puts it back if not. The result is kept as the last audit's record.
    /// Runs `change` on the set `name`, if the policy in force here has it, holding the
    /// sets' lock; a failure is logged.
    pub fn change_set(
        &mut self,
        name: &str,
        change: &mut impl FnMut(&mut SetMap, &SetInfo) -> Result<(), ChangeError>,
    ) {
        let Some(set) = self.policy.sets.iter().find(|s| s.name == name) else { return };
        if self.detached() {
            return;
        }
        let info = SetInfo {
            name: set.name.clone(),
            id: set.id,
            max_entries: set.max_entries,
            timeout: set.timeout,
        };
        let result = sets::lock(&self.pins.maps())
            .map_err(ChangeError::from)
            .and_then(|_lock| change(self.dataplane.sets(), &info));
        if let Err(err) = result {
            error!(
                iface = self.iface,
                set = name,
                "changing the set failed: {}",
                error_chain(&err)
            );
        }
    }

    /// Removes the run-time set entries that have expired (the program already ignores
    /// them); returns how many, per set id.
    pub fn sweep_sets(&mut self) -> HashMap<u32, u64> {
        if self.detached() || self.policy.sets.is_empty() {
            return HashMap::new();
        }
        // A full walk (recounting every set) at the first sweep and every
        // FULL_SWEEP_EVERY-th; between them only when an entry can have expired.
        let full = self.sweeps.is_multiple_of(FULL_SWEEP_EVERY);
        self.sweeps += 1;
        let ids: Vec<u32> = self.policy.sets.iter().map(|s| s.id).collect();
        let swept = sets::lock(&self.pins.maps())
            .map_err(DataplaneError::Sets)
            .and_then(|_lock| self.dataplane.sweep_sets(&ids, full));
        match swept {
            Ok(counts) => {
                let total: u64 = counts.values().sum();
                if total > 0 {
                    debug!(iface = self.iface, expired = total, "expired set entries removed");
                }
                counts
            }
            Err(err) => {
                warn!(
                    iface = self.iface,
                    "removing expired set entries failed: {}",
                    error_chain(&err)
                );
                HashMap::new()
            }
        }
    }

    /// Each set of the policy in force: its name, entries (as its count says) and
    /// counters.
    pub fn set_stats(&mut self) -> Vec<SetSample> {
        let policy = Arc::clone(&self.policy);
        policy
            .sets
            .iter()
            .map(|s| SetSample {
                name: s.name.clone(),
                entries: self.dataplane.sets().count(s.id),
                counters: self.dataplane.set_counters(s.id),
            })
            .collect()
    }

    /// Kernel memory of this filter's maps and program, from its pins.
    pub fn kernel_memory(&self) -> KernelMemory {
        pinned::kernel_memory(&self.pins)
    }

    /// Each limit rule of the policy in force: its over-limit counters, the buckets it
    /// holds (from a walk at most [`LIMIT_WALK_EVERY`] old) and its evictions. Empty
    /// when the policy has no limit rule; a read that fails is logged and left out.
    pub fn limit_stats(&mut self) -> Vec<LimitSample> {
        let ruleset = Arc::clone(&self.ruleset);
        if ruleset.rules.iter().all(|r| r.limit.is_none()) {
            return Vec::new();
        }
        let mut maps = match self.dataplane.limit_maps() {
            Ok(maps) => maps,
            Err(err) => {
                warn!(iface = %self.iface, "reading the limit maps failed: {}", error_chain(&err));
                return Vec::new();
            }
        };
        let stale = self.limit_walk.as_ref().is_none_or(|(at, _)| at.elapsed() >= LIMIT_WALK_EVERY);
        if stale {
            match maps.buckets_by_id() {
                Ok(counts) => self.limit_walk = Some((Instant::now(), counts)),
                Err(err) => warn!(
                    iface = %self.iface,
                    "walking the limit buckets failed: {}",
                    error_chain(&err)
                ),
            }
        }
        let held = self.limit_walk.as_ref().map(|(_, counts)| counts);
        let slots = self.dataplane.rule_slots();
        ruleset
            .rules
            .iter()
            .zip(slots)
            .filter_map(|(rule, slot)| {
                let limit = rule.limit?;
                let figures = maps.figures(slot.slot).ok()?;
                let sources = held.and_then(|h| h.get(&limit.id)).copied().unwrap_or(0);
                Some(LimitSample::new(rule.name.clone(), figures, sources))
            })
            .collect()
    }

    pub fn audit(&mut self, trigger: &str) {
        let last = self.audit.take().unwrap_or_default();
        let mut record = Audit {
            at_ms: state::now_ms(),
            count: last.count + 1,
            drift_total: last.drift_total,
            ..Audit::default()
        };
        self.audit_into(trigger, &mut record);
        record.drift_total += record.drift_entries();
        self.audit = Some(record);
    }

    fn audit_into(&mut self, trigger: &str, record: &mut Audit) {
        let began = Instant::now();
        let ruleset = Arc::clone(&self.ruleset);
        let iface = self.iface.as_str();
        let mut drift = match self.dataplane.audit(&ruleset) {
            Ok(drift) => drift,
            Err(err) => {
                error!(iface, trigger, "auditing the maps failed: {}", error_chain(&err));
                record.error = Some(error_chain(&err));
                return;
            }
        };
        let foreign_program = self.ifindex != 0
            && matches!(self.dataplane.link_runs_this_program(&self.pins), Ok(false));
        if foreign_program {
            drift.maps.insert("link", 1);
        }
        record.drift = drift.maps.iter().map(|(map, n)| (map.to_string(), *n)).collect();
        if drift.is_empty() {
            debug!(
                iface,
                trigger,
                audit_us = began.elapsed().as_micros() as u64,
                "audit: the kernel holds the policy in force"
            );
            return;
        }
        let maps: Vec<String> = drift.maps.iter().map(|(m, n)| format!("{m} {n}")).collect();
        error!(
            iface,
            trigger,
            entries = drift.entries(),
            maps = maps.join(", "),
            "audit: the kernel's maps differ from the policy in force; repairing"
        );
        // The repair rewrites the sets' file entries: under their lock.
        let mut repaired = sets::lock(&self.pins.maps())
            .map_err(DataplaneError::Sets)
            .and_then(|_lock| self.dataplane.repair(&ruleset).map(drop));
        if foreign_program && repaired.is_ok() {
            repaired = self.dataplane.replace_on_pinned_link(&self.pins);
        }
        match repaired {
            Ok(()) => {
                record.repaired = true;
                warn!(
                    iface,
                    trigger, "audit: repaired, the policy in force is written whole and active"
                );
            }
            Err(err) => {
                error!(iface, trigger, "audit: repairing failed: {}", error_chain(&err));
                record.error = Some(error_chain(&err));
            }
        }
    }

    /// When the last audit ran, as a time.
    pub fn last_audit_at(&self) -> Option<SystemTime> {
        self.audit.as_ref().map(|a| SystemTime::UNIX_EPOCH + Duration::from_millis(a.at_ms))
    }

    /// Records what is in force here (the policy read from `path`) in the state file, for
    /// `status`, `explain` and the next daemon.
    pub fn write_state(&self, path: &Path, places: &Places) {
        if self.detached() || !self.pins.dir().exists() {
            // Detaching removed the state file with the pins; nothing is in force to
            // describe.
            return;
        }
        let rules = self
            .dataplane
            .rule_slots()
            .iter()
            .zip(&self.policy.rules)
            .map(|(slot, rule)| RuleState {
                name: slot.name.clone(),
                action: rule.action,
                mode: rule.mode,
                slot: slot.slot,
                identity: slot.identity.clone(),
            })
            .collect();
        let state = State {
            iface: self.iface.clone(),
            policy: path.to_path_buf(),
            policy_hash: self.policy.hash.clone(),
            generation: self.generation,
            applied_at: state::now(),
            attach_mode: self.mode,
            interface_present: self.ifindex != 0,
            rules,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            audit: self.audit.clone(),
            sets: self
                .policy
                .sets
                .iter()
                .map(|s| SetState {
                    name: s.name.clone(),
                    id: s.id,
                    max_entries: s.max_entries,
                    timeout_ms: u64::try_from(s.timeout.as_millis()).unwrap_or(u64::MAX),
                    file_entries: s.entries.len(),
                })
                .collect(),
        };
        if let Err(err) = state.write(&places.state_dir) {
            // Enforcement is unaffected; `status` and a restart see less.
            error!(iface = self.iface, "writing the state file failed: {}", error_chain(&err));
        }
    }
}

/// Logs a move of the filter to new maps ([`Dataplane::migrate`]): `what` happened,
/// from maps of layout `from`, and `why`.
fn log_move(iface: &str, what: &str, from: u32, why: &str, sizes: &Sizes, carried: &Carried) {
    info!(
        iface,
        from_layout = from,
        to_layout = LAYOUT_VERSION,
        because = why,
        sizes = %sizes,
        carried = carried.summary(),
        not_carried = carried.skipped_summary(),
        second_copy = carried.second_copy,
        to_swap_ms = carried.to_swap_ms,
        total_ms = carried.total_ms,
        "{what}: program swapped on its link, no detach"
    );
}

/// The index of `iface`, 0 if there is no such interface (in this network namespace);
/// `None` when the lookup itself failed (out of file descriptors, say): that says
/// nothing about the interface, which must not be taken for gone.
fn ifindex(iface: &str) -> Option<u32> {
    match nix::net::if_::if_nametoindex(iface) {
        Ok(index) => Some(index),
        Err(nix::errno::Errno::ENODEV | nix::errno::Errno::ENXIO) => Some(0),
        Err(e) => {
            warn!(iface, "looking the interface up failed: {e}");
            None
        }
    }
}
