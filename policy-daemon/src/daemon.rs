//! `xdp-policy run`: one loaded program per interface, pinned so that it stays in force
//! when the daemon exits; one loop that reloads a policy when its files change or on
//! SIGHUP, and stops on SIGTERM or SIGINT (leaving the filters in force).
//!
//! Every reload takes the same path: load and validate the files, compile, apply to the
//! inactive generation of each interface's maps, flip. A policy that fails is logged with
//! file:line:column and the ruleset in force stays in force.
//!
//! A daemon that finds an interface's link pinned adopts it: same maps (counters kept),
//! the current policy applied atomically, then its program swapped onto the link — no
//! detach, no gap, also when the binary was upgraded. Nothing else pinned is trusted:
//! maps without a link are left from a start that failed and are removed, and adopted
//! maps are written whole. One daemon per interface (a lock on its pin directory).
//!
//! The daemon audits what it enforces: regularly, on SIGUSR1 and for `status --verify`
//! it reads the active generation back, compares it with the compiled policy, and
//! repairs a difference atomically. A filter detached under it (its pins removed) is
//! reported as not enforcing and left detached until SIGHUP.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, sleep_until},
};
use tracing::{debug, error, info, warn};

use crate::{
    cli::{CliError, Settings},
    config,
    dataplane::{
        AttachMode, Dataplane, DataplaneError, ModeChoice, error_chain,
        pins::{InterfaceLock, PinError, Pins},
    },
    metrics::{Metrics, Snapshot},
    policy::{self, Policy, Ruleset},
    reload::{DEBOUNCE, PolicyWatcher},
    safety,
    state::{self, Audit, RuleState, State},
};

/// A policy path and the interfaces it is enforced on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub policy: PathBuf,
    pub ifaces: Vec<String>,
}

/// The filter of one interface: its program and pinned maps.
struct Instance {
    iface: String,
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
    /// The ruleset the maps hold (the policy's, unless its last apply failed here): what
    /// the audits compare them with.
    ruleset: Arc<Ruleset>,
    /// The audits so far; the last one's record.
    audit: Option<Audit>,
}

impl Instance {
    /// Someone took the filter off (its pins are gone): not enforcing until SIGHUP.
    fn detached(&self) -> bool {
        self.lock.is_none()
    }
}

/// One policy in force on its interfaces, and what it was compiled to.
struct Enforced {
    assignment: Assignment,
    instances: Vec<Instance>,
    ruleset: Arc<Ruleset>,
    policy: Policy,
}

/// Where pins and state go, and how policy files are read.
struct Places<'a> {
    pin_dir: &'a Path,
    state_dir: &'a Path,
    load: policy::LoadOptions,
}

pub async fn run(settings: Settings) -> Result<(), CliError> {
    let Settings { assignments, mode, watch, pin_dir, state_dir, metrics, audit_interval, load } =
        settings;
    let places = Places { pin_dir: &pin_dir, state_dir: &state_dir, load };
    // Before anything is attached: a taken port stops start-up while nothing changed.
    let metrics = match metrics {
        config::Metrics::Off => None,
        config::Metrics::On(addr) => {
            let served = Metrics::serve(addr)?;
            info!(addr = %served.local_addr(), "serving Prometheus metrics at /metrics");
            Some(served)
        }
    };
    // Signal handlers first: a SIGTERM during start-up must not kill us half attached.
    let mut sigterm = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(CliError::Signals)?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(CliError::Signals)?;

    // Watching starts before the policies are first read, so that a change made while
    // the daemon starts up is not missed: it is applied right after.
    let paths: Vec<PathBuf> =
        if watch { assignments.iter().map(|a| a.policy.clone()).collect() } else { Vec::new() };
    let mut watcher = PolicyWatcher::new(&paths).map_err(CliError::Watch)?;
    let mut enforced = Vec::new();
    for assignment in assignments {
        let e = start(assignment, mode, &places)?;
        if let Some(m) = &metrics {
            m.reload(&e.assignment.policy, true, SystemTime::now());
        }
        enforced.push(e);
    }
    publish(metrics.as_ref(), &enforced);
    let mut tick = tokio::time::interval(METRICS_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The first audit one interval after start-up: what was just written is known.
    let audit_every = audit_interval.unwrap_or(Duration::MAX);
    let mut audit_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + audit_every, audit_every);
    audit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    if watch {
        info!("enforcing; SIGHUP or a change to a policy file reloads, SIGTERM or SIGINT stops");
    } else {
        info!("enforcing; SIGHUP reloads (files are not watched), SIGTERM or SIGINT stops");
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&status_line(&enforced))]);

    // Policies with a pending reload, and when it is due.
    let mut due: HashMap<usize, Instant> = HashMap::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                info!("SIGHUP: reloading every policy, attaching detached filters again");
                let mut reattached = false;
                for i in 0..enforced.len() {
                    reload(&mut enforced, i, "SIGHUP", &places, metrics.as_ref());
                    reattached |= reattach(&mut enforced[i], mode, &places);
                }
                if reattached {
                    notify(&[NotifyState::Status(&status_line(&enforced))]);
                }
                publish(metrics.as_ref(), &enforced);
            }
            _ = sigusr1.recv() => {
                audit(&mut enforced, "SIGUSR1", &places);
                publish(metrics.as_ref(), &enforced);
            }
            _ = audit_tick.tick(), if audit_interval.is_some() => {
                audit(&mut enforced, "interval", &places);
                publish(metrics.as_ref(), &enforced);
            }
            _ = tick.tick() => {
                if watch_interfaces(&mut enforced, mode, &places) {
                    notify(&[NotifyState::Status(&status_line(&enforced))]);
                }
                publish(metrics.as_ref(), &enforced);
            }
            Some(i) = watcher.changed() => {
                due.insert(i, Instant::now() + DEBOUNCE);
            }
            _ = sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                let now = Instant::now();
                let ready: Vec<usize> = due.iter().filter(|(_, t)| **t <= now).map(|(i, _)| *i).collect();
                for i in ready {
                    due.remove(&i);
                    reload(&mut enforced, i, "file change", &places, metrics.as_ref());
                }
                publish(metrics.as_ref(), &enforced);
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    for e in &enforced {
        for instance in &e.instances {
            print!("{}", report(e, instance)?);
        }
    }
    info!(
        pin_dir = %pin_dir.display(),
        "stopping; the filters stay in force (pinned): `xdp-policy detach` removes them"
    );
    Ok(())
}

/// An interface index not known yet (the lookup failed when the filter was attached).
const INDEX_UNKNOWN: u32 = u32::MAX;

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

/// Notices interfaces that went away (a veth deleted, a NIC unplugged) and attaches
/// again, with the policy in force, when they come back: the maps outlive the interface,
/// the link does not. Notices filters detached under the daemon (their pins removed, as
/// `xdp-policy detach` does) and stops treating them as in force. Returns whether
/// anything changed.
fn watch_interfaces(enforced: &mut [Enforced], mode: ModeChoice, places: &Places) -> bool {
    let mut changed = false;
    for e in enforced.iter_mut() {
        for i in &mut e.instances {
            if i.detached() {
                continue;
            }
            let Some(now) = ifindex(&i.iface) else { continue };
            // The pin directory gone, or the link pin gone under a live interface.
            let pins_gone = !i.pins.dir().exists() || (now != 0 && !i.pins.linked());
            if pins_gone {
                error!(
                    iface = i.iface,
                    pins = %i.pins.dir().display(),
                    "the filter was detached (its pins were removed, as `xdp-policy detach` \
                     does): not enforcing; SIGHUP (`systemctl reload xdp-policy`) or a \
                     restart attaches it again"
                );
                i.lock = None;
                changed = true;
                continue;
            }
            if now == i.ifindex || (i.ifindex == INDEX_UNKNOWN && now != 0) {
                i.ifindex = now;
                continue;
            }
            changed = true;
            if now == 0 {
                warn!(
                    iface = i.iface,
                    "the interface went away; the filter is attached again when it is back"
                );
                i.ifindex = 0;
                write_state(&e.assignment.policy, &e.policy, &e.ruleset, i, places);
                continue;
            }
            // Back (or replaced by a new interface of the same name): the old link is
            // defunct; attach afresh.
            let attached = i
                .pins
                .unpin_link()
                .map_err(DataplaneError::from)
                .and_then(|()| i.dataplane.attach_pinned(&i.iface, mode, &i.pins));
            match attached {
                Ok(attached) => {
                    i.mode = attached;
                    i.ifindex = now;
                    info!(iface = i.iface, mode = %attached, generation = i.generation, "the interface is back: re-attached");
                    write_state(&e.assignment.policy, &e.policy, &e.ruleset, i, places);
                }
                // Tried again on the next tick.
                Err(err) => warn!(iface = i.iface, "re-attaching failed: {}", error_chain(&err)),
            }
        }
    }
    changed
}

/// Attaches the detached filters of `e` again, afresh (new maps, the policy in force);
/// whether any was.
fn reattach(e: &mut Enforced, mode: ModeChoice, places: &Places) -> bool {
    let mut any = false;
    for i in e.instances.iter_mut().filter(|i| i.detached()) {
        match start_instance(&i.iface, mode, &e.ruleset, places) {
            Ok(fresh) => {
                *i = fresh;
                any = true;
                info!(iface = i.iface, mode = %i.mode, "the detached filter is attached again");
                write_state(&e.assignment.policy, &e.policy, &e.ruleset, i, places);
            }
            Err(err) => error!(
                iface = i.iface,
                "attaching the detached filter again failed, it stays detached: {err:#}"
            ),
        }
    }
    any
}

/// Audits every filter in force: reads the kernel's maps back, compares them with the
/// compiled policy, and repairs a difference (the policy written whole into the other
/// generation, then flipped to). Also checks that the pinned link runs this daemon's
/// program, and puts it back if not.
fn audit(enforced: &mut [Enforced], trigger: &str, places: &Places) {
    for e in enforced.iter_mut() {
        for i in e.instances.iter_mut().filter(|i| !i.detached()) {
            let last = i.audit.take().unwrap_or_default();
            let mut record = Audit {
                at_ms: state::now_ms(),
                count: last.count + 1,
                drift_total: last.drift_total,
                ..Audit::default()
            };
            audit_instance(i, trigger, &mut record);
            record.drift_total += record.drift_entries();
            i.audit = Some(record);
            write_state(&e.assignment.policy, &e.policy, &e.ruleset, i, places);
        }
    }
}

fn audit_instance(i: &mut Instance, trigger: &str, record: &mut Audit) {
    let began = Instant::now();
    let ruleset = Arc::clone(&i.ruleset);
    let mut drift = match i.dataplane.audit(&ruleset) {
        Ok(drift) => drift,
        Err(err) => {
            error!(iface = i.iface, trigger, "auditing the maps failed: {}", error_chain(&err));
            record.error = Some(error_chain(&err));
            return;
        }
    };
    let foreign_program =
        i.ifindex != 0 && matches!(i.dataplane.link_runs_this_program(&i.pins), Ok(false));
    if foreign_program {
        drift.maps.insert("link", 1);
    }
    record.drift = drift.maps.iter().map(|(map, n)| (map.to_string(), *n)).collect();
    if drift.is_empty() {
        debug!(
            iface = i.iface,
            trigger,
            audit_us = began.elapsed().as_micros() as u64,
            "audit: the kernel holds the policy in force"
        );
        return;
    }
    let maps: Vec<String> = drift.maps.iter().map(|(m, n)| format!("{m} {n}")).collect();
    error!(
        iface = i.iface,
        trigger,
        entries = drift.entries(),
        maps = maps.join(", "),
        "audit: the kernel's maps differ from the policy in force; repairing"
    );
    let mut repaired = i.dataplane.repair(&ruleset).map(drop);
    if foreign_program && repaired.is_ok() {
        repaired = i.dataplane.replace_on_pinned_link(&i.pins);
    }
    match repaired {
        Ok(()) => {
            record.repaired = true;
            warn!(
                iface = i.iface,
                trigger, "audit: repaired, the policy in force is written whole and active"
            );
        }
        Err(err) => {
            error!(iface = i.iface, trigger, "audit: repairing failed: {}", error_chain(&err));
            record.error = Some(error_chain(&err));
        }
    }
}

/// How often the metrics are refreshed from the kernel's counters.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Hands every interface's counters to the metrics endpoint, if there is one.
fn publish(metrics: Option<&Metrics>, enforced: &[Enforced]) {
    let Some(metrics) = metrics else { return };
    for e in enforced {
        for i in &e.instances {
            let counts =
                i.dataplane.verdict_counts().and_then(|v| Ok((v, i.dataplane.rule_counts()?)));
            let audit = i.audit.as_ref();
            match counts {
                Ok((verdicts, rules)) => metrics.update(&Snapshot {
                    iface: &i.iface,
                    policy: &e.assignment.policy,
                    generation: i.generation,
                    attach_mode: i.mode,
                    verdicts: &verdicts,
                    rules: &rules,
                    enforcing: !i.detached() && i.ifindex != 0,
                    drift_entries: audit.map_or(0, |a| a.drift_total),
                    last_audit: audit
                        .map(|a| SystemTime::UNIX_EPOCH + Duration::from_millis(a.at_ms)),
                }),
                Err(err) => warn!(
                    iface = i.iface,
                    "reading counters for metrics failed: {}",
                    error_chain(&err)
                ),
            }
        }
    }
}

/// Tells systemd (when it started us with Type=notify; a no-op otherwise).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("telling systemd failed: {e}");
    }
}

fn status_line(enforced: &[Enforced]) -> String {
    enforced
        .iter()
        .flat_map(|e| e.instances.iter().map(move |i| (e, i)))
        .map(|(e, i)| match (i.detached(), i.ifindex) {
            (true, _) => format!("{}: detached, not enforcing (SIGHUP attaches it again)", i.iface),
            (false, 0) => format!("{}: interface gone, not enforcing", i.iface),
            (false, _) => {
                format!("{}: {} rules, generation {}", i.iface, e.policy.rules.len(), i.generation)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads, checks and compiles a policy, then brings up its interfaces: maps are full
/// before the first packet reaches a program.
fn start(
    mut assignment: Assignment,
    mode: ModeChoice,
    places: &Places,
) -> Result<Enforced, CliError> {
    let started = Instant::now();
    let policy = policy::load_with(&assignment.policy, places.load)?;
    log_warnings(&policy);
    if assignment.ifaces.is_empty() {
        if policy.interfaces.is_empty() {
            return Err(CliError::NoInterfaces(assignment.policy));
        }
        assignment.ifaces = policy.interfaces.clone();
    } else if !policy.interfaces.is_empty() && policy.interfaces != assignment.ifaces {
        warn!(
            policy = %assignment.policy.display(),
            "the command line's interfaces ({}) override the policy's ({})",
            assignment.ifaces.join(", "),
            policy.interfaces.join(", ")
        );
    }
    safety::check(&policy, &safety::Host::probe(&assignment.ifaces)).map_err(CliError::Safety)?;
    let ruleset = Arc::new(policy::compile(&policy));
    let compiled = started.elapsed();
    let mut instances = Vec::new();
    for iface in &assignment.ifaces {
        let began = Instant::now();
        let instance = start_instance(iface, mode, &ruleset, places)?;
        info!(
            iface,
            policy = %assignment.policy.display(),
            generation = instance.generation,
            rules = policy.rules.len(),
            compile_us = compiled.as_micros() as u64,
            apply_us = began.elapsed().as_micros() as u64,
            mode = %instance.mode,
            "policy applied"
        );
        instances.push(instance);
    }
    for instance in &instances {
        write_state(&assignment.policy, &policy, &ruleset, instance, places);
    }
    Ok(Enforced { assignment, instances, ruleset, policy })
}

/// Brings up one interface: takes its lock, adopts its pinned filter if there is one,
/// else attaches a new one and pins it.
fn start_instance(
    iface: &str,
    mode: ModeChoice,
    ruleset: &Arc<Ruleset>,
    places: &Places,
) -> Result<Instance, CliError> {
    let pins = Pins::new(places.pin_dir, iface);
    pins.prepare(places.pin_dir).map_err(DataplaneError::from)?;
    let lock = pins.lock().map_err(|e| match e {
        e @ PinError::Locked { .. } => CliError::InUse(e),
        e => DataplaneError::from(e).into(),
    })?;
    let instance = |dataplane, mode, generation, pins| Instance {
        iface: iface.to_string(),
        pins,
        lock: Some(lock),
        dataplane,
        mode,
        generation,
        // Just attached there: the interface exists, whatever a failed lookup says.
        ifindex: ifindex(iface).unwrap_or(INDEX_UNKNOWN),
        ruleset: Arc::clone(ruleset),
        audit: None,
    };
    if !pins.linked() {
        // No filter in force: whatever is pinned is left from a start that failed
        // before it attached. Nothing of it is trusted.
        let removed = pins.remove_unlinked().map_err(DataplaneError::from)?;
        if removed > 0 {
            warn!(iface, pins = removed, "removed pins of a filter that was never attached");
        }
        let attached = Dataplane::load(ruleset).and_then(|mut dataplane| {
            let mode = dataplane.attach_pinned(iface, mode, &pins)?;
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
    let previous = State::read(places.state_dir, iface).unwrap_or_else(|e| {
        warn!(iface, "ignoring the state file: {}", error_chain(&e));
        None
    });
    let slots = previous
        .iter()
        .flat_map(|s| s.rules.iter().map(|r| (r.name.clone(), r.identity.clone(), r.slot)))
        .collect();
    let mut dataplane = Dataplane::adopt(&pins, slots)?;
    dataplane.apply(ruleset)?;
    let generation = previous.as_ref().map_or(0, |s| s.generation) + 1;
    match dataplane.replace_on_pinned_link(&pins) {
        Ok(()) => {
            let mode = match previous.as_ref().map(|s| s.attach_mode.as_str()) {
                Some("skb") => AttachMode::Skb,
                _ => AttachMode::Native,
            };
            info!(iface, "adopted the pinned filter: program replaced on its link, no detach");
            Ok(instance(dataplane, mode, generation, pins))
        }
        // The interface went away since (its link is defunct): attach afresh.
        Err(e) => {
            warn!(iface, "the pinned link cannot be reused, attaching again: {}", error_chain(&e));
            pins.unpin_link().map_err(DataplaneError::from)?;
            let attached = dataplane.attach_pinned(iface, mode, &pins)?;
            info!(iface, mode = %attached, pin = %pins.link().display(), "attached and pinned");
            Ok(instance(dataplane, attached, generation, pins))
        }
    }
}

fn write_state(
    path: &Path,
    policy: &Policy,
    ruleset: &Ruleset,
    instance: &Instance,
    places: &Places,
) {
    if instance.detached() || !instance.pins.dir().exists() {
        // Detaching removed the state file with the pins; nothing is in force to describe.
        return;
    }
    let rules = ruleset
        .rules
        .iter()
        .zip(&policy.rules)
        .zip(instance.dataplane.slots())
        .map(|((compiled, rule), slot)| RuleState {
            name: compiled.name.clone(),
            action: format!("{:?}", rule.action).to_lowercase(),
            mode: format!("{:?}", rule.mode).to_lowercase(),
            slot,
            identity: compiled.identity.clone(),
        })
        .collect();
    let state = State {
        iface: instance.iface.clone(),
        policy: path.to_path_buf(),
        policy_hash: policy.hash.clone(),
        generation: instance.generation,
        applied_at: state::now(),
        attach_mode: instance.mode.to_string(),
        interface_present: instance.ifindex != 0,
        rules,
        pid: std::process::id(),
        audit: instance.audit.clone(),
    };
    if let Err(err) = state.write(places.state_dir) {
        // Enforcement is unaffected; `status` and a restart see less.
        error!(iface = instance.iface, "writing the state file failed: {}", error_chain(&err));
    }
}

fn log_warnings(policy: &policy::Policy) {
    for w in &policy.warnings {
        warn!("{}: {}", w.location, w.message);
    }
}

/// The one reload path. Never fails the daemon: a bad policy is logged and the one in
/// force stays.
fn reload(
    enforced: &mut [Enforced],
    index: usize,
    trigger: &str,
    places: &Places,
    metrics: Option<&Metrics>,
) {
    notify(&[NotifyState::Reloading]);
    let ok = reload_one(&mut enforced[index], trigger, places);
    if let Some(m) = metrics {
        m.reload(&enforced[index].assignment.policy, ok, SystemTime::now());
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&status_line(enforced))]);
}

/// Whether the policy in its current version is now in force everywhere.
fn reload_one(e: &mut Enforced, trigger: &str, places: &Places) -> bool {
    let path = e.assignment.policy.display().to_string();
    let started = Instant::now();
    let policy = match policy::load_with(&e.assignment.policy, places.load) {
        Ok(policy) => policy,
        Err(err) => {
            error!(policy = %path, trigger, "policy rejected, the previous one stays in force:\n{err}");
            return false;
        }
    };
    log_warnings(&policy);
    if let Err(err) = safety::check(&policy, &safety::Host::probe(&e.assignment.ifaces)) {
        error!(policy = %path, trigger, "policy refused, the previous one stays in force: {err}");
        return false;
    }
    let ruleset = Arc::new(policy::compile(&policy));
    let compiled = started.elapsed();
    if ruleset == e.ruleset {
        info!(policy = %path, trigger, "policy unchanged");
        return true;
    }
    let mut applied = Vec::new();
    for instance in &mut e.instances {
        if instance.detached() {
            info!(
                iface = instance.iface,
                policy = %path,
                trigger,
                "not applied there: the filter was detached (SIGHUP attaches it again)"
            );
            continue;
        }
        let began = Instant::now();
        match instance.dataplane.apply(&ruleset) {
            Ok(report) => {
                instance.ruleset = Arc::clone(&ruleset);
                instance.generation += 1;
                applied.push(instance.iface.clone());
                info!(
                    iface = instance.iface,
                    policy = %path,
                    trigger,
                    generation = instance.generation,
                    rules = policy.rules.len(),
                    compile_us = compiled.as_micros() as u64,
                    apply_us = began.elapsed().as_micros() as u64,
                    map_writes = report.writes,
                    "policy applied"
                );
            }
            Err(err) => error!(
                iface = instance.iface,
                policy = %path,
                trigger,
                "applying failed, the previous policy stays in force there: {}",
                error_chain(&err)
            ),
        }
    }
    for instance in e.instances.iter().filter(|i| applied.contains(&i.iface)) {
        write_state(&e.assignment.policy, &policy, &ruleset, instance, places);
    }
    // Interfaces that did not take it keep their previous ruleset; the next reload
    // retries them.
    let all = applied.len() == e.instances.iter().filter(|i| !i.detached()).count();
    if all {
        e.ruleset = ruleset;
        e.policy = policy;
    }
    all
}

/// Counters of one interface: per verdict, then per rule.
fn report(e: &Enforced, instance: &Instance) -> Result<String, CliError> {
    let mut out = format!(
        "policy {} on {} (generation {})\n",
        e.assignment.policy.display(),
        instance.iface,
        instance.generation
    );
    out.push_str(&crate::cli::counter_table(&instance.dataplane.verdict_counts()?));
    let rules = instance.dataplane.rule_counts()?;
    if !rules.is_empty() {
        let width = rules.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(4);
        out.push_str(&format!("{:<width$} {:>12} {:>14}\n", "rule", "packets", "bytes"));
        for (name, c) in rules {
            out.push_str(&format!("{name:<width$} {:>12} {:>14}\n", c.packets, c.bytes));
        }
    }
    Ok(out)
}

/// Groups `IFACE=PATH` pairs and `--iface`s for one `--policy` into assignments, in the
/// order first named.
pub fn assignments(
    attach: &[(String, PathBuf)],
    ifaces: &[String],
    policy: Option<&PathBuf>,
) -> Result<Vec<Assignment>, String> {
    let mut by_policy: BTreeMap<usize, Assignment> = BTreeMap::new();
    let mut order: HashMap<PathBuf, usize> = HashMap::new();
    let mut add = |path: &PathBuf, iface: Option<&String>| {
        let n = order.len();
        let index = *order.entry(path.clone()).or_insert(n);
        let entry = by_policy
            .entry(index)
            .or_insert_with(|| Assignment { policy: path.clone(), ifaces: Vec::new() });
        if let Some(iface) = iface {
            entry.ifaces.push(iface.clone());
        }
    };
    match policy {
        Some(path) if ifaces.is_empty() => add(path, None),
        Some(path) => ifaces.iter().for_each(|i| add(path, Some(i))),
        None if !ifaces.is_empty() => return Err("--iface needs --policy".into()),
        None => {}
    }
    for (iface, path) in attach {
        add(path, Some(iface));
    }
    let mut seen = HashMap::new();
    for a in by_policy.values() {
        for iface in &a.ifaces {
            if let Some(other) = seen.insert(iface.clone(), a.policy.clone()) {
                return Err(format!(
                    "interface {iface} is given two policies: {} and {}",
                    other.display(),
                    a.policy.display()
                ));
            }
        }
    }
    if by_policy.is_empty() {
        return Err(
            "nothing to enforce: give --policy PATH (with --iface IFACE, or interfaces = [...] \
                    in the policy), or --attach IFACE=PATH"
                .into(),
        );
    }
    Ok(by_policy.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn ifaces_with_one_policy_share_it() {
        let a =
            assignments(&[], &["eth0".into(), "eth1".into()], Some(&p("web.toml"))).expect("valid");
        assert_eq!(
            a,
            vec![Assignment { policy: p("web.toml"), ifaces: vec!["eth0".into(), "eth1".into()] }]
        );
    }

    #[test]
    fn attach_gives_each_interface_its_policy_grouped_by_path() {
        let attach = vec![
            ("eth0".to_string(), p("edge.toml")),
            ("eth1".to_string(), p("mgmt.d")),
            ("eth2".to_string(), p("edge.toml")),
        ];
        let a = assignments(&attach, &[], None).expect("valid");
        assert_eq!(
            a,
            vec![
                Assignment { policy: p("edge.toml"), ifaces: vec!["eth0".into(), "eth2".into()] },
                Assignment { policy: p("mgmt.d"), ifaces: vec!["eth1".into()] },
            ]
        );
    }

    #[test]
    fn a_policy_alone_takes_its_interfaces_from_the_file() {
        let a = assignments(&[], &[], Some(&p("host.toml"))).expect("valid");
        assert_eq!(a, vec![Assignment { policy: p("host.toml"), ifaces: vec![] }]);
    }

    #[test]
    fn conflicts_and_nothing_to_do_are_usage_errors() {
        let attach = vec![("eth0".to_string(), p("b.toml"))];
        assert_eq!(
            assignments(&attach, &["eth0".into()], Some(&p("a.toml"))),
            Err("interface eth0 is given two policies: a.toml and b.toml".into())
        );
        assert_eq!(assignments(&[], &["eth0".into()], None), Err("--iface needs --policy".into()));
        assert!(
            assignments(&[], &[], None).expect_err("nothing").starts_with("nothing to enforce")
        );
    }
}
