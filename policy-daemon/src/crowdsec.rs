//! A CrowdSec bouncer: the local API's decisions stream (`GET /v1/decisions/stream`, a
//! full pull at start-up, then what changed since the last pull), turned into entries of
//! a named set.
//!
//! A thread of its own does the HTTP, so that a slow or unreachable API never holds up
//! the daemon; it hands each pull (or failure) to the daemon's loop, which writes the
//! set on every interface whose policy has it. An unreachable API keeps the last known
//! decisions in force (they still expire on time) and is retried with back-off.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    dataplane::sets::{self, SetMap},
    settings::CrowdSec,
};

/// Longest wait between attempts while the API fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A decision as the API sends it.
#[derive(Clone, Debug, Deserialize)]
pub struct RawDecision {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    /// Time left, as Go writes durations ("3h59m58.9s"); negative once expired.
    pub duration: String,
}

#[derive(Debug, Default, Deserialize)]
struct Stream {
    new: Option<Vec<RawDecision>>,
    deleted: Option<Vec<RawDecision>>,
}

/// What the poller thread reports.
#[derive(Debug)]
pub enum Event {
    /// A pull: `startup` is the full list of decisions in force.
    Pulled { startup: bool, new: Vec<RawDecision>, deleted: Vec<RawDecision> },
    /// A pull failed; the next attempt is in `retry_in`.
    Failed { error: String, retry_in: Duration },
}

/// The poller thread; it stops when the receiver is dropped or [`Poller::stop`] is
/// called.
pub struct Poller {
    pub events: mpsc::UnboundedReceiver<Event>,
    stop: Arc<AtomicBool>,
}

impl Poller {
    pub fn start(settings: CrowdSec) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("crowdsec".into())
            .spawn(move || poll(&settings, &tx, &stopping))
            .expect("spawning the CrowdSec poller");
        Self { events, stop }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn poll(settings: &CrowdSec, tx: &mpsc::UnboundedSender<Event>, stop: &AtomicBool) {
    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
    let mut startup = true;
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        let url = format!("{}/v1/decisions/stream?startup={startup}", settings.url);
        let result = agent
            .get(&url)
            .set("X-Api-Key", &settings.key)
            .set("User-Agent", concat!("xdp-policy/", env!("CARGO_PKG_VERSION")))
            .call()
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_json::<Stream>().map_err(|e| format!("reading the answer: {e}")));
        let wait = match result {
            Ok(stream) => {
                let event = Event::Pulled {
                    startup,
                    new: stream.new.unwrap_or_default(),
                    deleted: stream.deleted.unwrap_or_default(),
                };
                if tx.send(event).is_err() {
                    return;
                }
                startup = false;
                backoff = Duration::from_secs(1);
                settings.poll_interval
            }
            Err(error) => {
                let retry_in = backoff;
                if tx.send(Event::Failed { error, retry_in }).is_err() {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                retry_in
            }
        };
        // Sleep in steps, so that a stop is seen soon.
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100).min(wait));
        }
    }
}

/// A ban decision the set can hold: its id, network and when it expires
/// (`CLOCK_BOOTTIME` ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    pub id: i64,
    pub net: IpNet,
    pub expires_ns: u64,
}

/// The ban a decision stands for, if the set can hold it: type `ban`, scope `Ip` or
/// `Range`, a positive duration. Anything else is skipped (and said at debug level).
pub fn ban(decision: &RawDecision, now: u64) -> Option<Ban> {
    if !decision.kind.eq_ignore_ascii_case("ban") {
        debug!(id = decision.id, kind = decision.kind, "not a ban: skipped");
        return None;
    }
    let net = if decision.scope.eq_ignore_ascii_case("ip") {
        decision.value.parse::<IpAddr>().ok().map(IpNet::from)
    } else if decision.scope.eq_ignore_ascii_case("range") {
        decision.value.parse::<IpNet>().ok().map(|n| n.trunc())
    } else {
        None
    };
    let Some(net) = net else {
        debug!(
            id = decision.id,
            scope = decision.scope,
            value = decision.value,
            "not an address or range: skipped"
        );
        return None;
    };
    let left = go_parse_duration::parse_duration(&decision.duration).ok()?;
    let left = u64::try_from(left).ok().filter(|ns| *ns > 0)?;
    Some(Ban { id: decision.id, net, expires_ns: now.saturating_add(left) })
}

/// The decisions in force, by network (several decisions can ban one network).
#[derive(Default)]
pub struct Decisions {
    by_net: HashMap<IpNet, HashMap<i64, u64>>,
    pub pulls: u64,
    pub failures: u64,
    /// The last pull worked.
    pub up: bool,
}

/// What one pull changes in the set: entries to write (network, expiry) and networks to
/// remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub write: Vec<(IpNet, u64)>,
    pub remove: Vec<IpNet>,
    /// A start-up pull: the set's CrowdSec entries not in `write` are stale.
    pub startup: bool,
}

impl Decisions {
    /// Takes a pull in; returns what the set must change.
    pub fn apply(
        &mut self,
        startup: bool,
        new: &[RawDecision],
        deleted: &[RawDecision],
        now: u64,
    ) -> Changes {
        self.pulls += 1;
        self.up = true;
        if startup {
            self.by_net.clear();
        }
        let mut touched = HashSet::new();
        for d in deleted {
            let net = ban_net(d);
            if let Some(net) = net
                && let Some(ids) = self.by_net.get_mut(&net)
            {
                ids.remove(&d.id);
                touched.insert(net);
            }
        }
        for ban in new.iter().filter_map(|d| ban(d, now)) {
            self.by_net.entry(ban.net).or_default().insert(ban.id, ban.expires_ns);
            touched.insert(ban.net);
        }
        let mut changes = Changes { startup, ..Changes::default() };
        for net in touched {
            match self.by_net.get(&net).and_then(|ids| ids.values().max().copied()) {
                Some(expires) => changes.write.push((net, expires)),
                None => {
                    self.by_net.remove(&net);
                    changes.remove.push(net);
                }
            }
        }
        changes.write.sort_unstable();
        changes.remove.sort_unstable();
        changes
    }

    /// Decisions in force (counting each once per network).
    pub fn active(&self) -> usize {
        self.by_net.len()
    }

    /// Whether `net` has a decision.
    pub fn holds(&self, net: &IpNet) -> bool {
        self.by_net.contains_key(net)
    }
}

fn ban_net(d: &RawDecision) -> Option<IpNet> {
    ban(&RawDecision { duration: "1s".into(), ..d.clone() }, 0).map(|b| b.net)
}

/// Writes `changes` into one interface's set map (the caller holds the sets' lock):
/// bans marked as CrowdSec's, removals only of entries that still carry the mark, and
/// after a start-up pull, the removal of CrowdSec entries no decision stands for.
pub fn write(
    map: &mut SetMap,
    set: &sets::SetInfo,
    changes: &Changes,
    decisions: &Decisions,
) -> Result<(), sets::ChangeError> {
    let mark = policy_common::set_origin::CROWDSEC;
    sets::add(map, set, &changes.write, mark)?;
    let mut remove = changes.remove.clone();
    if changes.startup {
        let stale = map
            .entries(Some(set.id))?
            .into_iter()
            .filter(|e| e.value.origin & mark != 0 && !decisions.holds(&e.net))
            .map(|e| e.net);
        remove.extend(stale);
    }
    sets::remove_added_by(map, set.id, &remove, mark)?;
    if !changes.write.is_empty() || !remove.is_empty() {
        info!(
            set = set.name,
            banned = changes.write.len(),
            unbanned = remove.len(),
            "CrowdSec decisions applied"
        );
    }
    Ok(())
}

/// Logs a failed pull (the first of a run as a warning, the rest at debug level).
pub fn failed(decisions: &mut Decisions, error: &str, retry_in: Duration) {
    decisions.failures += 1;
    if decisions.up || decisions.failures == 1 {
        warn!(
            error,
            retry_in_s = retry_in.as_secs(),
            "the CrowdSec API cannot be reached; the decisions known stay in force"
        );
    } else {
        debug!(error, retry_in_s = retry_in.as_secs(), "the CrowdSec API still cannot be reached");
    }
    decisions.up = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: i64, scope: &str, value: &str, duration: &str) -> RawDecision {
        RawDecision {
            id,
            kind: "ban".into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
        }
    }

    #[test]
    fn ip_and_range_bans_land_with_their_expiry_and_the_rest_is_skipped() {
        let now = 1_000;
        let b = ban(&decision(1, "Ip", "198.18.0.1", "3h59m58.5s"), now).expect("valid");
        assert_eq!(b.net, "198.18.0.1/32".parse::<IpNet>().expect("valid"));
        assert_eq!(b.expires_ns, now + 14_398_500_000_000);
        let r = ban(&decision(2, "range", "198.18.7.9/24", "10s"), now).expect("valid");
        assert_eq!(r.net, "198.18.7.0/24".parse::<IpNet>().expect("valid"));
        assert_eq!(ban(&decision(3, "Country", "FR", "10s"), now), None);
        assert_eq!(
            ban(
                &RawDecision { kind: "captcha".into(), ..decision(4, "Ip", "198.18.0.1", "1s") },
                now
            ),
            None
        );
        assert_eq!(ban(&decision(5, "Ip", "198.18.0.1", "-1.5s"), now), None, "expired");
        assert_eq!(ban(&decision(6, "Ip", "nonsense", "1s"), now), None);
    }

    #[test]
    fn a_network_stays_while_any_decision_bans_it() {
        let mut d = Decisions::default();
        let net: IpNet = "198.18.0.1/32".parse().expect("valid");
        let a = decision(1, "Ip", "198.18.0.1", "10s");
        let b = decision(2, "Ip", "198.18.0.1", "20s");
        let changes = d.apply(true, &[a.clone(), b.clone()], &[], 0);
        assert_eq!(changes.write, [(net, 20_000_000_000)]);
        let changes = d.apply(false, &[], &[b], 0);
        assert_eq!(changes.write, [(net, 10_000_000_000)], "the other decision's expiry");
        let changes = d.apply(false, &[], &[a], 0);
        assert_eq!(changes.remove, [net]);
        assert_eq!(d.active(), 0);
    }
}
