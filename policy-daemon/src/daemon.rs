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
//! detach, no gap, also when the binary was upgraded.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, sleep_until},
};
use tracing::{error, info, warn};

use crate::{
    cli::{CliError, Settings},
    config,
    dataplane::{AttachMode, Dataplane, ModeChoice, error_chain, pins::Pins},
    metrics::{Metrics, Snapshot},
    policy::{self, Policy, Ruleset},
    reload::{DEBOUNCE, PolicyWatcher},
    safety,
    state::{self, RuleState, State},
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
    dataplane: Dataplane,
    mode: AttachMode,
    /// Applies since the filter was first attached (an adopted filter continues the
    /// count of the daemon before).
    generation: u64,
    /// The interface's index when attached; 0 while it is gone.
    ifindex: u32,
}

/// One policy in force on its interfaces, and what it was compiled to.
struct Enforced {
    assignment: Assignment,
    instances: Vec<Instance>,
    ruleset: Ruleset,
    policy: Policy,
}

/// Where pins and state go, and how policy files are read.
struct Places<'a> {
    pin_dir: &'a Path,
    state_dir: &'a Path,
    load: policy::LoadOptions,
}

pub async fn run(settings: Settings) -> Result<(), CliError> {
    let Settings { assignments, mode, watch, pin_dir, state_dir, metrics, load } = settings;
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
                info!("SIGHUP: reloading every policy");
                for i in 0..enforced.len() {
                    reload(&mut enforced, i, "SIGHUP", &places, metrics.as_ref());
                }
                publish(metrics.as_ref(), &enforced);
            }
            _ = tick.tick() => {
                watch_interfaces(&mut enforced, mode, &places);
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

/// The index of `iface`, 0 if there is no such interface (in this network namespace).
fn ifindex(iface: &str) -> u32 {
    nix::net::if_::if_nametoindex(iface).unwrap_or(0)
}

/// Notices interfaces that went away (a veth deleted, a NIC unplugged) and attaches
/// again, with the policy in force, when they come back: the maps outlive the interface,
/// the link does not.
fn watch_interfaces(enforced: &mut [Enforced], mode: ModeChoice, places: &Places) {
    for e in enforced.iter_mut() {
        for i in &mut e.instances {
            let now = ifindex(&i.iface);
            if now == i.ifindex {
                continue;
            }
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
            let pins = Pins::new(places.pin_dir, &i.iface);
            let _ = std::fs::remove_file(pins.link());
            match i.dataplane.attach_pinned(&i.iface, mode, &pins) {
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
            match counts {
                Ok((verdicts, rules)) => metrics.update(&Snapshot {
                    iface: &i.iface,
                    policy: &e.assignment.policy,
                    generation: i.generation,
                    attach_mode: i.mode,
                    verdicts: &verdicts,
                    rules: &rules,
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
        .map(|(e, i)| {
            format!("{}: {} rules, generation {}", i.iface, e.policy.rules.len(), i.generation)
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
    safety::check(&policy).map_err(CliError::Safety)?;
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
    let ruleset = policy::compile(&policy);
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

/// Brings up one interface: adopts its pinned filter if there is one, else attaches and
/// pins a new one.
fn start_instance(
    iface: &str,
    mode: ModeChoice,
    ruleset: &Ruleset,
    places: &Places,
) -> Result<Instance, CliError> {
    let pins = Pins::new(places.pin_dir, iface);
    pins.prepare(places.pin_dir).map_err(crate::dataplane::DataplaneError::from)?;
    let previous = if pins.linked() {
        State::read(places.state_dir, iface).unwrap_or_else(|e| {
            warn!(iface, "ignoring the state file: {}", error_chain(&e));
            None
        })
    } else {
        None
    };
    let slots = previous
        .iter()
        .flat_map(|s| s.rules.iter().map(|r| (r.name.clone(), r.identity.clone(), r.slot)))
        .collect();
    let mut dataplane = Dataplane::open_pinned(&pins, slots)?;
    dataplane.apply(ruleset)?;
    let generation = previous.as_ref().map_or(0, |s| s.generation) + 1;
    if pins.linked() {
        match dataplane.replace_on_pinned_link(&pins) {
            Ok(()) => {
                let mode = match previous.as_ref().map(|s| s.attach_mode.as_str()) {
                    Some("skb") => AttachMode::Skb,
                    _ => AttachMode::Native,
                };
                info!(iface, "adopted the pinned filter: program replaced on its link, no detach");
                let ifindex = ifindex(iface);
                return Ok(Instance {
                    iface: iface.to_string(),
                    dataplane,
                    mode,
                    generation,
                    ifindex,
                });
            }
            // The interface went away since (its link is defunct): attach afresh.
            Err(e) => {
                warn!(
                    iface,
                    "the pinned link cannot be reused, attaching again: {}",
                    error_chain(&e)
                );
                let _ = std::fs::remove_file(pins.link());
            }
        }
    }
    let attached = dataplane.attach_pinned(iface, mode, &pins)?;
    info!(iface, mode = %attached, pin = %pins.link().display(), "attached and pinned");
    let ifindex = ifindex(iface);
    Ok(Instance { iface: iface.to_string(), dataplane, mode: attached, generation, ifindex })
}

fn write_state(
    path: &Path,
    policy: &Policy,
    ruleset: &Ruleset,
    instance: &Instance,
    places: &Places,
) {
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
    if let Err(err) = safety::check(&policy) {
        error!(policy = %path, trigger, "policy refused, the previous one stays in force: {err}");
        return false;
    }
    let ruleset = policy::compile(&policy);
    let compiled = started.elapsed();
    if ruleset == e.ruleset {
        info!(policy = %path, trigger, "policy unchanged");
        return true;
    }
    let mut applied = Vec::new();
    for instance in &mut e.instances {
        let began = Instant::now();
        match instance.dataplane.apply(&ruleset) {
            Ok(report) => {
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
    let all = applied.len() == e.instances.len();
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
