//! `xdp-policy run`: one loaded program per policy, attached to that policy's interfaces;
//! one loop that reloads a policy when its files change or on SIGHUP, and stops on
//! SIGTERM or SIGINT.
//!
//! Every reload takes the same path: load and validate the files, compile, apply to the
//! inactive generation, flip. A policy that fails is logged with file:line:column and the
//! ruleset in force stays in force.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Instant,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::sleep_until,
};
use tracing::{error, info, warn};

use crate::{
    cli::{CliError, Settings},
    dataplane::{Dataplane, ModeChoice, error_chain},
    policy::{self, Ruleset},
    reload::{DEBOUNCE, PolicyWatcher},
};

/// A policy path and the interfaces it is enforced on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub policy: PathBuf,
    pub ifaces: Vec<String>,
}

/// One policy in force: its program, what it was compiled to, and how often applied.
struct Enforced {
    assignment: Assignment,
    dataplane: Dataplane,
    ruleset: Ruleset,
    /// Applies so far (1 after start-up): logged with every apply.
    generation: u64,
}

pub async fn run(settings: Settings) -> Result<(), CliError> {
    let Settings { assignments, mode, watch, .. } = settings;
    // Signal handlers first: a SIGTERM during start-up must not kill us half attached.
    let mut sigterm = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(CliError::Signals)?;

    let mut enforced = Vec::new();
    for assignment in assignments {
        enforced.push(start(assignment, mode)?);
    }
    let paths: Vec<PathBuf> = if watch {
        enforced.iter().map(|e| e.assignment.policy.clone()).collect()
    } else {
        Vec::new()
    };
    let mut watcher = PolicyWatcher::new(&paths).map_err(CliError::Watch)?;
    if watch {
        info!("enforcing; SIGHUP or a change to a policy file reloads, SIGTERM or SIGINT stops");
    } else {
        info!("enforcing; SIGHUP reloads (files are not watched), SIGTERM or SIGINT stops");
    }

    // Policies with a pending reload, and when it is due.
    let mut due: HashMap<usize, Instant> = HashMap::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                info!("SIGHUP: reloading every policy");
                for e in &mut enforced {
                    reload(e, "SIGHUP");
                }
            }
            Some(i) = watcher.changed() => {
                due.insert(i, Instant::now() + DEBOUNCE);
            }
            _ = sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                let now = Instant::now();
                let ready: Vec<usize> = due.iter().filter(|(_, t)| **t <= now).map(|(i, _)| *i).collect();
                for i in ready {
                    due.remove(&i);
                    reload(&mut enforced[i], "file change");
                }
            }
        }
    }
    for e in &enforced {
        print!("{}", report(e)?);
    }
    info!("stopping: detaching");
    Ok(())
}

/// Loads, compiles and applies a policy, then attaches it: maps are full before the
/// first packet reaches the program.
fn start(mut assignment: Assignment, mode: ModeChoice) -> Result<Enforced, CliError> {
    let started = Instant::now();
    let policy = policy::load(&assignment.policy)?;
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
    let ruleset = policy::compile(&policy);
    let compiled = started.elapsed();
    let mut dataplane = Dataplane::load(&ruleset)?;
    info!(
        policy = %assignment.policy.display(),
        generation = 1,
        rules = policy.rules.len(),
        compile_us = compiled.as_micros() as u64,
        load_us = (started.elapsed() - compiled).as_micros() as u64,
        "policy applied"
    );
    for iface in &assignment.ifaces {
        let attached = dataplane.attach(iface, mode)?;
        info!(iface, mode = %attached, policy = %assignment.policy.display(), "attached");
    }
    Ok(Enforced { assignment, dataplane, ruleset, generation: 1 })
}

fn log_warnings(policy: &policy::Policy) {
    for w in &policy.warnings {
        warn!("{}: {}", w.location, w.message);
    }
}

/// The one reload path. Never fails the daemon: a bad policy is logged and the one in
/// force stays.
fn reload(e: &mut Enforced, trigger: &str) {
    let path = e.assignment.policy.display().to_string();
    let started = Instant::now();
    let policy = match policy::load(&e.assignment.policy) {
        Ok(policy) => policy,
        Err(err) => {
            error!(policy = %path, trigger, "policy rejected, the previous one stays in force:\n{err}");
            return;
        }
    };
    log_warnings(&policy);
    let ruleset = policy::compile(&policy);
    let compiled = started.elapsed();
    if ruleset == e.ruleset {
        info!(policy = %path, trigger, generation = e.generation, "policy unchanged");
        return;
    }
    match e.dataplane.apply(&ruleset) {
        Ok(report) => {
            e.generation += 1;
            e.ruleset = ruleset;
            info!(
                policy = %path,
                trigger,
                generation = e.generation,
                rules = policy.rules.len(),
                compile_us = compiled.as_micros() as u64,
                apply_us = (started.elapsed() - compiled).as_micros() as u64,
                map_writes = report.writes,
                "policy applied"
            );
        }
        Err(err) => {
            error!(policy = %path, trigger, "applying failed, the previous policy stays in force: {}", error_chain(&err));
        }
    }
}

/// Counters of one policy: per verdict, then per rule.
fn report(e: &Enforced) -> Result<String, CliError> {
    let mut out = format!(
        "policy {} on {} (generation {})\n",
        e.assignment.policy.display(),
        e.assignment.ifaces.join(", "),
        e.generation
    );
    out.push_str(&crate::cli::counter_table(&e.dataplane.verdict_counts()?));
    let rules = e.dataplane.rule_counts()?;
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
