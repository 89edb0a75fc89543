//! `xdp-policy run`: the daemon's loop. It starts every assigned policy (see
//! [`crate::reload`]), then waits: a change to a policy's files (debounced) or SIGHUP
//! reloads, SIGHUP also attaches detached filters again, SIGUSR1 and the audit interval
//! audit the maps, a tick follows the interfaces and refreshes the metrics, SIGTERM or
//! SIGINT stops it (leaving the filters in force: they are pinned).

use std::{
    collections::HashMap,
    io,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, sleep_until},
};
use tracing::{info, warn};

use crate::{
    crowdsec,
    dataplane::{error_chain, sets},
    metrics::{Metrics, MetricsError, Snapshot},
    reload::{
        Enforced, Options, StartError,
        watch::{DEBOUNCE, PolicyWatcher, WatchError},
    },
    render,
    settings::{MetricsAddr, Settings},
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("installing the signal handlers failed")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), DaemonError> {
    let Settings {
        assignments,
        mode,
        watch,
        places,
        metrics,
        audit_interval,
        load,
        crowdsec,
        max_sources,
    } = settings;
    let options = Options { places, load, mode, max_sources };
    // Before anything is attached: a taken port stops start-up while nothing changed.
    let metrics = match metrics {
        MetricsAddr::Off => None,
        MetricsAddr::On(addr) => {
            let served = Metrics::serve(addr)?;
            info!(addr = %served.local_addr(), "serving Prometheus metrics at /metrics");
            Some(served)
        }
    };
    // Signal handlers first: a SIGTERM during start-up must not kill us half attached.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(DaemonError::Signals)?;

    // Watching starts before the policies are first read, so that a change made while
    // the daemon starts up is not missed: it is applied right after.
    let paths: Vec<PathBuf> =
        if watch { assignments.iter().map(|a| a.policy.clone()).collect() } else { Vec::new() };
    let mut watcher = PolicyWatcher::new(&paths)?;
    let mut enforced = Vec::new();
    for assignment in assignments {
        let e = Enforced::start(assignment, &options)?;
        if let Some(m) = &metrics {
            m.reload(e.policy_path(), true, SystemTime::now());
        }
        enforced.push(e);
    }
    release_freed_memory();
    publish(metrics.as_ref(), &mut enforced);
    let mut tick = tokio::time::interval(METRICS_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sweep_tick = tokio::time::interval(SWEEP_INTERVAL);
    sweep_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // The first audit one interval after start-up: what was just written is known.
    // Without an interval (0), only SIGUSR1 audits.
    let mut audit_tick = audit_interval.map(|every| {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick
    });
    if watch {
        info!("enforcing; SIGHUP or a change to a policy file reloads, SIGTERM or SIGINT stops");
    } else {
        info!("enforcing; SIGHUP reloads (files are not watched), SIGTERM or SIGINT stops");
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&status_line(&enforced))]);
    // The sets' files, watched like the policies (rebuilt when a reload names others).
    let mut set_files = if watch { set_files_of(&enforced) } else { Vec::new() };
    let mut set_watcher = watch_set_files(&set_files);
    let mut bouncer = crowdsec.map(|settings| {
        if !enforced.iter().any(|e| e.has_set(&settings.set)) {
            warn!(
                set = settings.set,
                "[crowdsec] names a set no policy in force has: decisions are kept until one does"
            );
        }
        info!(url = settings.url, set = settings.set, "pulling CrowdSec decisions");
        (crowdsec::Poller::start(settings.clone()), crowdsec::Decisions::default(), settings)
    });

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
                    reload(&mut enforced, i, "SIGHUP", &options, metrics.as_ref());
                    reattached |= enforced[i].reattach(&options);
                }
                if reattached {
                    notify(&[NotifyState::Status(&status_line(&enforced))]);
                }
                if watch {
                    rewatch_set_files(&enforced, &mut set_files, &mut set_watcher);
                }
                publish(metrics.as_ref(), &mut enforced);
            }
            _ = sigusr1.recv() => {
                enforced.iter_mut().for_each(|e| e.audit("SIGUSR1", &options));
                publish(metrics.as_ref(), &mut enforced);
            }
            Some(event) = next_decisions(bouncer.as_mut().map(|b| &mut b.0)) => {
                let Some((_, decisions, settings)) = bouncer.as_mut() else { continue };
                match event {
                    crowdsec::Event::Pulled { startup, new, deleted } => {
                        let now = sets::boot_now_ns();
                        let changes = decisions.apply(startup, &new, &deleted, now);
                        for e in &mut enforced {
                            e.change_set(&settings.set, |map, set| {
                                crowdsec::write(map, set, &changes, decisions)
                            });
                        }
                    }
                    crowdsec::Event::Failed { error, retry_in } => {
                        crowdsec::failed(decisions, &error, retry_in);
                    }
                }
                if let Some(m) = &metrics {
                    m.crowdsec(decisions.up, decisions.active(), decisions.pulls, decisions.failures);
                }
            }
            _ = sweep_tick.tick() => {
                enforced.iter_mut().for_each(Enforced::sweep_sets);
            }
            _ = next_tick(audit_tick.as_mut()) => {
                enforced.iter_mut().for_each(|e| e.audit("interval", &options));
                publish(metrics.as_ref(), &mut enforced);
            }
            _ = tick.tick() => {
                let mut changed = false;
                for e in &mut enforced {
                    changed |= e.follow_interfaces(&options);
                }
                if changed {
                    notify(&[NotifyState::Status(&status_line(&enforced))]);
                }
                publish(metrics.as_ref(), &mut enforced);
            }
            Some(i) = watcher.changed() => {
                due.insert(i, Instant::now() + DEBOUNCE);
            }
            Some(i) = next_change(set_watcher.as_mut()) => {
                due.insert(i, Instant::now() + DEBOUNCE);
            }
            _ = sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                let now = Instant::now();
                let ready: Vec<usize> = due.iter().filter(|(_, t)| **t <= now).map(|(i, _)| *i).collect();
                for i in ready {
                    due.remove(&i);
                    reload(&mut enforced, i, "file change", &options, metrics.as_ref());
                }
                if watch {
                    rewatch_set_files(&enforced, &mut set_files, &mut set_watcher);
                }
                publish(metrics.as_ref(), &mut enforced);
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    if let Some((poller, ..)) = &bouncer {
        poller.stop();
    }
    for e in &enforced {
        for i in e.instances() {
            match i.counts() {
                Ok(counts) => print!(
                    "{}",
                    render::final_counters(
                        e.policy_path(),
                        i.iface(),
                        i.generation(),
                        &counts.verdicts,
                        &counts.rules
                    )
                ),
                Err(err) => {
                    warn!(iface = i.iface(), "reading the counters failed: {}", error_chain(&err))
                }
            }
        }
    }
    info!(
        pin_dir = %options.places.pin_dir.display(),
        "stopping; the filters stay in force (pinned): `xdp-policy detach` removes them"
    );
    Ok(())
}

/// How often expired run-time set entries are removed. The program stops matching an
/// entry the moment it expires; this only frees its memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How often the metrics are refreshed and the interfaces followed.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Reloads one policy, telling systemd and the metrics. Never fails the daemon: a bad
/// policy is logged and the one in force stays.
fn reload(
    enforced: &mut [Enforced],
    index: usize,
    trigger: &str,
    options: &Options,
    metrics: Option<&Metrics>,
) {
    notify(&[NotifyState::Reloading]);
    let ok = enforced[index].reload(trigger, options);
    release_freed_memory();
    if let Some(m) = metrics {
        m.reload(enforced[index].policy_path(), ok, SystemTime::now());
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&status_line(enforced))]);
}

/// Gives the memory a compile and an apply freed back to the system. Their temporaries
/// (a 100,000-network policy's run to tens of MiB) are freed in pieces the allocator
/// keeps for the process otherwise, and the daemon then idles with them until it exits.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a plain call into glibc's allocator, which takes its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands every interface's counters to the metrics endpoint, if there is one.
fn publish(metrics: Option<&Metrics>, enforced: &mut [Enforced]) {
    let Some(metrics) = metrics else { return };
    for e in enforced {
        let policy = e.policy_path().to_path_buf();
        for i in e.instances_mut() {
            let sets = i.set_stats();
            let limits = i.limit_stats();
            match i.counts() {
                Ok(counts) => metrics.update(&Snapshot {
                    iface: i.iface(),
                    policy: &policy,
                    generation: i.generation(),
                    attach_mode: i.mode(),
                    verdicts: &counts.verdicts,
                    rules: &counts.rules,
                    enforcing: i.enforcing(),
                    drift_entries: i.last_audit().map_or(0, |a| a.drift_total),
                    last_audit: i.last_audit_at(),
                    sets: &sets,
                    limits: &limits,
                    kernel_memory: i.kernel_memory().total(),
                }),
                Err(err) => warn!(
                    iface = i.iface(),
                    "reading counters for metrics failed: {}",
                    error_chain(&err)
                ),
            }
        }
    }
}

/// Every set file of every policy, with the policy's index.
fn set_files_of(enforced: &[Enforced]) -> Vec<(usize, PathBuf)> {
    let mut files: Vec<(usize, PathBuf)> = enforced
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.set_files().into_iter().map(move |f| (i, f)))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// A watcher on the set files, if there are any and watching them works (a failure is
/// logged: SIGHUP still reloads them).
fn watch_set_files(files: &[(usize, PathBuf)]) -> Option<PolicyWatcher> {
    if files.is_empty() {
        return None;
    }
    match PolicyWatcher::files(files) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            warn!("set files are not watched (SIGHUP reloads them): {}", error_chain(&err));
            None
        }
    }
}

/// Watches the set files the policies name now, if they changed.
fn rewatch_set_files(
    enforced: &[Enforced],
    files: &mut Vec<(usize, PathBuf)>,
    watcher: &mut Option<PolicyWatcher>,
) {
    let now = set_files_of(enforced);
    if now != *files {
        *watcher = watch_set_files(&now);
        *files = now;
    }
}

/// The next policy whose set files changed; never, without a watcher.
async fn next_change(watcher: Option<&mut PolicyWatcher>) -> Option<usize> {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}

/// The next report of the CrowdSec poller; never, without one.
async fn next_decisions(poller: Option<&mut crowdsec::Poller>) -> Option<crowdsec::Event> {
    match poller {
        Some(poller) => poller.events.recv().await,
        None => std::future::pending().await,
    }
}

/// The next tick of `tick`; never, without one.
async fn next_tick(tick: Option<&mut tokio::time::Interval>) {
    match tick {
        Some(tick) => drop(tick.tick().await),
        None => std::future::pending().await,
    }
}

/// Tells systemd (when it started us with Type=notify; a no-op otherwise).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("telling systemd failed: {e}");
    }
}

/// systemd's STATUS= line: what each interface is doing.
fn status_line(enforced: &[Enforced]) -> String {
    enforced
        .iter()
        .flat_map(Enforced::instances)
        .map(|i| {
            if i.detached() {
                format!("{}: detached, not enforcing (SIGHUP attaches it again)", i.iface())
            } else if i.interface_gone() {
                format!("{}: interface gone, not enforcing", i.iface())
            } else {
                format!(
                    "{}: {} rules, generation {}",
                    i.iface(),
                    i.policy().rules.len(),
                    i.generation()
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
