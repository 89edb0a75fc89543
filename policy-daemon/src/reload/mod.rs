//! The one path to what is in force. Starting and every reload take it: [`prepare`]
//! (read and validate the files, refuse a lock-out, compile), then apply to each
//! interface's filter ([`Instance`]): the inactive generation of its maps is written,
//! then flipped to. A policy that fails is logged with file:line:column and the ruleset
//! in force stays in force.
//!
//! A filter found pinned is adopted (same maps, counters kept; the policy written whole;
//! its program swapped on the pinned link: no detach, no gap). The filters are audited:
//! their maps read back, compared with the compiled policy, and repaired when they
//! differ. A filter detached under the daemon is left detached until [`Enforced::reattach`].

pub mod files;
mod instance;
pub mod watch;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

pub use self::{
    files::{LoadError, LoadOptions},
    instance::Instance,
};
use crate::{
    dataplane::{
        DataplaneError, Places, XdpMode, error_chain,
        pins::PinError,
        sets::{ChangeError, SetInfo, SetMap},
    },
    policy::{self, Policy, Ruleset},
    safety::{self, Lockout},
};

/// A policy path and the interfaces it is enforced on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub policy: PathBuf,
    /// Empty: the interfaces the policy names for itself (`interfaces = [...]`).
    pub ifaces: Vec<String>,
}

/// What every start and reload goes by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub places: Places,
    /// How policy files are read.
    pub load: LoadOptions,
    pub mode: XdpMode,
    /// Size of the limit buckets' map while the policy has a limit rule.
    pub max_sources: u32,
}

/// A policy read, checked and compiled: ready to apply.
pub struct Prepared {
    pub policy: Policy,
    pub ruleset: Arc<Ruleset>,
    /// The interfaces it was checked for: the assignment's, else the policy's own.
    pub ifaces: Vec<String>,
    /// How long reading, checking and compiling took.
    pub took: Duration,
}

/// Why a policy cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{}: no interface to enforce it on: the policy names none (interfaces = [...])", .0.display())]
    NoInterfaces(PathBuf),
    #[error("{}: {lockout}", policy.display())]
    Lockout { policy: PathBuf, lockout: Lockout },
}

/// Why a policy could not be put in force at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// Another daemon holds the interface.
    #[error(transparent)]
    InUse(PinError),
    #[error(transparent)]
    Dataplane(Box<DataplaneError>),
}

impl From<DataplaneError> for StartError {
    fn from(e: DataplaneError) -> Self {
        Self::Dataplane(Box::new(e))
    }
}

/// Reads, validates, checks for SSH lock-out and compiles the policy of `assignment`.
pub fn prepare(assignment: &Assignment, load: LoadOptions) -> Result<Prepared, PrepareError> {
    let started = Instant::now();
    let path = &assignment.policy;
    let policy = files::load(path, load)?;
    for w in &policy.warnings {
        warn!("{}: {}", w.location, w.message);
    }
    let ifaces = if assignment.ifaces.is_empty() {
        if policy.interfaces.is_empty() {
            return Err(PrepareError::NoInterfaces(path.clone()));
        }
        policy.interfaces.clone()
    } else {
        if !policy.interfaces.is_empty() && policy.interfaces != assignment.ifaces {
            warn!(
                policy = %path.display(),
                "the interfaces it is assigned to ({}) override the policy's own ({})",
                assignment.ifaces.join(", "),
                policy.interfaces.join(", ")
            );
        }
        assignment.ifaces.clone()
    };
    safety::check(&policy, &safety::Host::probe(&ifaces))
        .map_err(|lockout| PrepareError::Lockout { policy: path.clone(), lockout })?;
    let ruleset = Arc::new(policy::compile(&policy));
    Ok(Prepared { policy, ruleset, ifaces, took: started.elapsed() })
}

/// One policy on its interfaces: the latest version of its files that prepared well,
/// and the filter of each interface (which holds that version once applying it worked
/// there).
pub struct Enforced {
    assignment: Assignment,
    instances: Vec<Instance>,
    /// The version every interface is to hold; reattached filters start with it.
    policy: Arc<Policy>,
    ruleset: Arc<Ruleset>,
}

impl Enforced {
    /// Prepares the policy, then brings up its interfaces: maps are full before the first
    /// packet reaches a program. Each interface's state file is written as soon as it is
    /// up, so that a start failing on a later interface leaves the earlier ones whole.
    pub fn start(assignment: Assignment, options: &Options) -> Result<Self, StartError> {
        let prepared = prepare(&assignment, options.load)?;
        let policy = Arc::new(prepared.policy);
        let mut instances = Vec::new();
        for iface in &prepared.ifaces {
            let began = Instant::now();
            let instance = Instance::start(iface, &policy, &prepared.ruleset, options)?;
            info!(
                iface,
                policy = %assignment.policy.display(),
                generation = instance.generation(),
                rules = policy.rules.len(),
                compile_us = prepared.took.as_micros() as u64,
                apply_us = began.elapsed().as_micros() as u64,
                mode = %instance.mode(),
                program = %instance.program(),
                "policy applied"
            );
            instance.write_state(&assignment.policy, &options.places);
            instances.push(instance);
        }
        Ok(Self { assignment, instances, policy, ruleset: prepared.ruleset })
    }

    pub fn policy_path(&self) -> &Path {
        &self.assignment.policy
    }

    pub fn instances_mut(&mut self) -> &mut [Instance] {
        &mut self.instances
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Puts the policy in its current version in force everywhere it is not detached;
    /// returns whether it now is. Each interface is compared with what it holds, so one
    /// where an earlier apply failed gets the current version whatever the others hold.
    /// Never fails the daemon: a bad policy is logged and the one in force stays.
    pub fn reload(&mut self, trigger: &str, options: &Options) -> bool {
        let path = self.assignment.policy.display().to_string();
        let prepared = match prepare(&self.assignment, options.load) {
            Ok(prepared) => prepared,
            Err(err @ PrepareError::Load(_)) => {
                error!(policy = %path, trigger, "policy rejected, the previous one stays in force:\n{err}");
                return false;
            }
            Err(err) => {
                error!(policy = %path, trigger, "policy refused, the previous one stays in force: {err}");
                return false;
            }
        };
        let enforced_on: Vec<&str> = self.instances.iter().map(Instance::iface).collect();
        if prepared.ifaces != enforced_on {
            warn!(
                policy = %path,
                trigger,
                "the policy now names interfaces {}; it stays enforced on {} until a restart",
                prepared.ifaces.join(", "),
                enforced_on.join(", ")
            );
        }
        self.policy = Arc::new(prepared.policy);
        self.ruleset = prepared.ruleset;
        let (mut all, mut written) = (true, false);
        for instance in &mut self.instances {
            if instance.detached() {
                info!(
                    iface = instance.iface(),
                    policy = %path,
                    trigger,
                    "not applied there: the filter was detached (SIGHUP attaches it again)"
                );
                continue;
            }
            let began = Instant::now();
            let new_files = instance.policy().hash != self.policy.hash;
            match instance.apply(&self.policy, &self.ruleset) {
                Ok(Some(report)) => {
                    written = true;
                    info!(
                        iface = instance.iface(),
                        policy = %path,
                        trigger,
                        generation = instance.generation(),
                        rules = self.policy.rules.len(),
                        compile_us = prepared.took.as_micros() as u64,
                        apply_us = began.elapsed().as_micros() as u64,
                        map_writes = report.writes,
                        program = %instance.program(),
                        "policy applied"
                    );
                }
                // The maps hold it already; the state file describes the files' version.
                Ok(None) if new_files => {}
                Ok(None) => continue,
                Err(err) => {
                    all = false;
                    error!(
                        iface = instance.iface(),
                        policy = %path,
                        trigger,
                        "applying failed, the previous policy stays in force there: {}",
                        error_chain(&err)
                    );
                    continue;
                }
            }
            instance.write_state(&self.assignment.policy, &options.places);
        }
        if all && !written {
            info!(policy = %path, trigger, "policy unchanged");
        }
        all
    }

    /// Attaches the detached filters again, afresh (new maps, the latest policy);
    /// whether any was.
    pub fn reattach(&mut self, options: &Options) -> bool {
        let mut any = false;
        for i in self.instances.iter_mut().filter(|i| i.detached()) {
            match Instance::start(i.iface(), &self.policy, &self.ruleset, options) {
                Ok(fresh) => {
                    *i = fresh;
                    any = true;
                    info!(iface = i.iface(), mode = %i.mode(), "the detached filter is attached again");
                    i.write_state(&self.assignment.policy, &options.places);
                }
                Err(err) => error!(
                    iface = i.iface(),
                    "attaching the detached filter again failed, it stays detached: {}",
                    error_chain(&err)
                ),
            }
        }
        any
    }

    /// Follows the interfaces: gone, back, or the filter detached under the daemon (see
    /// [`Instance::follow`]). Returns whether anything changed.
    pub fn follow_interfaces(&mut self, options: &Options) -> bool {
        let mut changed = false;
        for i in &mut self.instances {
            if i.follow(options.mode, &options.places.state_dir) {
                changed = true;
                i.write_state(&self.assignment.policy, &options.places);
            }
        }
        changed
    }

    /// The files of the sets of the policy version last read (what a change to should
    /// reload).
    pub fn set_files(&self) -> Vec<PathBuf> {
        self.policy.sets.iter().flat_map(|s| s.files.iter().cloned()).collect()
    }

    /// Whether the policy in force has the set `name`.
    pub fn has_set(&self, name: &str) -> bool {
        self.policy.sets.iter().any(|s| s.name == name)
    }

    /// Runs `change` on the set `name` of every interface whose policy has it, holding
    /// the sets' lock; failures are logged.
    pub fn change_set(
        &mut self,
        name: &str,
        mut change: impl FnMut(&mut SetMap, &SetInfo) -> Result<(), ChangeError>,
    ) {
        for i in &mut self.instances {
            i.change_set(name, &mut change);
        }
    }

    /// Removes expired run-time set entries on every interface.
    pub fn sweep_sets(&mut self) {
        for i in &mut self.instances {
            i.sweep_sets();
        }
    }

    /// Audits every filter in force (see [`Instance::audit`]) and records the result in
    /// its state file.
    pub fn audit(&mut self, trigger: &str, options: &Options) {
        for i in self.instances.iter_mut().filter(|i| !i.detached()) {
            i.audit(trigger);
            i.write_state(&self.assignment.policy, &options.places);
        }
    }
}
