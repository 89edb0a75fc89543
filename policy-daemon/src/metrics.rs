//! Prometheus metrics: the latest counters of every interface and the outcome of every
//! policy reload, served as `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! The kernel's counters are the source of truth, so nothing here counts packets: the
//! daemon hands over a [`Snapshot`] per interface and the series are rendered from the
//! latest snapshots at scrape time. A rule that leaves the policy leaves the next scrape
//! with it. Only the reload outcomes ([`Metrics::reload`]) are kept here.
//!
//! Series, all prefixed `xdp_policy_`:
//!
//! | series | type | labels |
//! | --- | --- | --- |
//! | `rule_packets_total`, `rule_bytes_total` | counter | `iface`, `rule` |
//! | `verdict_packets_total`, `verdict_bytes_total` | counter | `iface`, `verdict` |
//! | `unparsable_packets_total` (`drop_unparsable` and `pass_unparsable`) | counter | `iface` |
//! | `generation` | gauge | `iface`, `policy` |
//! | `attach_mode_info` (always 1) | gauge | `iface`, `mode` |
//! | `enforcing` (1: attached; 0: detached, or the interface is gone) | gauge | `iface` |
//! | `kernel_memory_bytes` (maps and program, the kernel's accounting) | gauge | `iface` |
//! | `drift_entries_total` (map entries an audit found differing, then repaired) | counter | `iface` |
//! | `last_audit_timestamp_seconds` | gauge | `iface` |
//! | `last_reload_successful` (1 or 0) | gauge | `policy` |
//! | `last_reload_timestamp_seconds` | gauge | `policy` |
//! | `reload_errors_total` | counter | `policy` |
//! | `rule_limited_packets_total`, `rule_limited_bytes_total` (over a limit rule's rate) | counter | `iface`, `rule` |
//! | `rule_limit_sources` (buckets a limit rule holds) | gauge | `iface`, `rule` |
//! | `rule_limit_evictions_total` (buckets dropped to make room) | counter | `iface`, `rule` |
//! | `set_entries` | gauge | `iface`, `set` |
//! | `set_hits_total` (packets whose address the set held) | counter | `iface`, `set` |
//! | `set_adds_total`, `set_deletes_total`, `set_expired_entries_total` | counter | `iface`, `set` |
//! | `crowdsec_up` (1: the last pull of decisions worked) | gauge | |
//! | `crowdsec_decisions` (networks banned by CrowdSec decisions) | gauge | |
//! | `crowdsec_pulls_total`, `crowdsec_pull_errors_total` | counter | |

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    fmt, io,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use policy_common::{Counter, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{net::TcpListener, task::AbortHandle};
use tracing::{debug, warn};

use crate::dataplane::{AttachMode, VerdictCounts, limits::LimitSample, sets::SetSample};

/// Prefix of every series.
const PREFIX: &str = "xdp_policy";
/// The one path served.
const PATH: &str = "/metrics";
/// A client that has not sent its request headers by then is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once at most. Past it, the daemon accepts no more until one
/// ends: the rest wait in the kernel's backlog, so that no number of clients (the
/// endpoint is on loopback by default: any local user) can use up the daemon's file
/// descriptors, which it needs for reloads, state files and interface lookups.
const MAX_CONNECTIONS: usize = 32;
/// The longest a connection is served, keep-alive included: a client that keeps one
/// open without end gives its place up after this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Pause after a failed `accept` (out of file descriptors): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The counters of one interface, read from the kernel, and what it enforces.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub iface: &'a str,
    pub policy: &'a Path,
    pub generation: u64,
    pub attach_mode: AttachMode,
    pub verdicts: &'a VerdictCounts,
    /// Rules in force, in rule order: the names are unique.
    pub rules: &'a [(String, Counter)],
    /// The filter is attached to the interface, as far as the daemon knows.
    pub enforcing: bool,
    /// Map entries the audits found differing from the policy, since the daemon started.
    pub drift_entries: u64,
    /// When the maps were last audited.
    pub last_audit: Option<SystemTime>,
    /// Each named set of the policy in force.
    pub sets: &'a [SetSample],
    /// Each limit rule of the policy in force.
    pub limits: &'a [LimitSample],
    /// Kernel memory of the filter's maps and program, bytes.
    pub kernel_memory: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: cannot listen on {addr}: address in use")]
    AddressInUse { addr: SocketAddr },
    #[error("metrics: cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("metrics: serving needs a tokio runtime")]
    NoRuntime,
}

/// The metrics endpoint and the values it serves. Dropping it stops the server.
#[derive(Debug)]
pub struct Metrics {
    exposition: Arc<Exposition>,
    local_addr: SocketAddr,
    server: AbortHandle,
}

impl Metrics {
    /// Listens on `addr` and serves `GET /metrics` on a task of the current tokio
    /// runtime. Binding happens before this returns, so a taken address is an error here.
    pub fn serve(addr: SocketAddr) -> Result<Self, MetricsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MetricsError::NoRuntime)?;
        let listen_error = |source: io::Error| match source.kind() {
            io::ErrorKind::AddrInUse => MetricsError::AddressInUse { addr },
            _ => MetricsError::Listen { addr, source },
        };
        let listener = std::net::TcpListener::bind(addr).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        let listener = TcpListener::from_std(listener).map_err(listen_error)?;
        let exposition = Arc::new(Exposition::new());
        let server = runtime.spawn(accept_loop(listener, Arc::clone(&exposition))).abort_handle();
        Ok(Self { exposition, local_addr, server })
    }

    /// The address actually listened on (the port is chosen by the kernel for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces everything known about `snapshot.iface` with `snapshot`.
    pub fn update(&self, snapshot: &Snapshot<'_>) {
        self.exposition.update(snapshot);
    }

    /// Records a reload attempt of `policy` at `at`: its outcome, and one more error if
    /// it failed.
    pub fn reload(&self, policy: &Path, ok: bool, at: SystemTime) {
        self.exposition.reload(policy, ok, at);
    }

    /// The CrowdSec bouncer's state: whether its last pull worked, the networks banned,
    /// the pulls and failed pulls since start-up.
    pub fn crowdsec(&self, up: bool, decisions: usize, pulls: u64, failures: u64) {
        self.exposition.lock().crowdsec = Some(CrowdSecState { up, decisions, pulls, failures });
    }
}

#[derive(Clone, Copy, Debug)]
struct CrowdSecState {
    up: bool,
    decisions: usize,
    pulls: u64,
    failures: u64,
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The latest state and the registry that renders it.
#[derive(Debug)]
struct Exposition {
    state: Arc<Mutex<State>>,
    registry: Registry,
}

impl Exposition {
    fn new() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(StateCollector(Arc::clone(&state))));
        Self { state, registry }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn update(&self, s: &Snapshot<'_>) {
        let iface = IfaceState {
            policy: s.policy.display().to_string(),
            generation: s.generation,
            mode: s.attach_mode,
            verdicts: s.verdicts.clone(),
            rules: s.rules.to_vec(),
            enforcing: s.enforcing,
            drift_entries: s.drift_entries,
            last_audit: s.last_audit,
            sets: s.sets.to_vec(),
            limits: s.limits.to_vec(),
            kernel_memory: s.kernel_memory,
        };
        self.lock().ifaces.insert(s.iface.to_string(), iface);
    }

    fn reload(&self, policy: &Path, ok: bool, at: SystemTime) {
        let mut state = self.lock();
        let reloads = state.reloads.entry(policy.display().to_string()).or_default();
        reloads.last = Some(LastReload { ok, at });
        if !ok {
            reloads.errors += 1;
        }
    }

    fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Plain data, consistent after every statement: a panic elsewhere while the lock was
/// held leaves nothing half-written worth refusing to serve.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct State {
    /// Interface → its latest snapshot.
    ifaces: BTreeMap<String, IfaceState>,
    /// Policy path → its reloads.
    reloads: BTreeMap<String, Reloads>,
    crowdsec: Option<CrowdSecState>,
}

#[derive(Debug)]
struct IfaceState {
    policy: String,
    generation: u64,
    mode: AttachMode,
    verdicts: VerdictCounts,
    rules: Vec<(String, Counter)>,
    enforcing: bool,
    drift_entries: u64,
    last_audit: Option<SystemTime>,
    sets: Vec<SetSample>,
    limits: Vec<LimitSample>,
    kernel_memory: u64,
}

#[derive(Debug, Default)]
struct Reloads {
    last: Option<LastReload>,
    errors: u64,
}

#[derive(Clone, Copy, Debug)]
struct LastReload {
    ok: bool,
    at: SystemTime,
}

/// Renders [`State`] on every scrape.
#[derive(Debug)]
struct StateCollector(Arc<Mutex<State>>);

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let state = lock(&self.0);
        let ifaces = &state.ifaces;
        let rules = || {
            ifaces
                .iter()
                .flat_map(|(iface, s)| s.rules.iter().map(move |(rule, c)| (iface, rule, c)))
        };
        let verdicts = || {
            ifaces.iter().flat_map(|(iface, s)| {
                Verdict::ALL.into_iter().map(move |v| (iface, v, s.verdicts.get(v)))
            })
        };
        family(
            &mut encoder,
            "rule_packets",
            "Packets that matched the rule, since it was first applied unchanged.",
            rules().map(|(i, r, c)| ([("iface", i), ("rule", r)], ConstCounter::new(c.packets))),
        )?;
        family(
            &mut encoder,
            "rule_bytes",
            "Bytes (from the Ethernet header on) of the packets that matched the rule.",
            rules().map(|(i, r, c)| ([("iface", i), ("rule", r)], ConstCounter::new(c.bytes))),
        )?;
        family(
            &mut encoder,
            "verdict_packets",
            "Packets by verdict; every packet has exactly one.",
            verdicts().map(|(i, v, c)| {
                ([("iface", i.as_str()), ("verdict", v.name())], ConstCounter::new(c.packets))
            }),
        )?;
        family(
            &mut encoder,
            "verdict_bytes",
            "Bytes (from the Ethernet header on) of the packets by verdict.",
            verdicts().map(|(i, v, c)| {
                ([("iface", i.as_str()), ("verdict", v.name())], ConstCounter::new(c.bytes))
            }),
        )?;
        family(
            &mut encoder,
            "unparsable_packets",
            "IP packets whose transport header could not be located and read whole, decided by the policy's unparsable action (verdicts drop_unparsable and pass_unparsable).",
            ifaces.iter().map(|(i, s)| {
                let v = &s.verdicts;
                let n =
                    v.get(Verdict::DropUnparsable).packets + v.get(Verdict::PassUnparsable).packets;
                ([("iface", i)], ConstCounter::new(n))
            }),
        )?;
        family(
            &mut encoder,
            "generation",
            "Policy applies since start-up; 1 after the first.",
            ifaces.iter().map(|(i, s)| {
                ([("iface", i), ("policy", &s.policy)], ConstGauge::new(s.generation))
            }),
        )?;
        family(
            &mut encoder,
            "attach_mode",
            "The XDP mode the program is attached in.",
            ifaces.iter().map(|(i, s)| ([("iface", i)], ModeInfo(s.mode))),
        )?;
        family(
            &mut encoder,
            "enforcing",
            "Whether the filter is attached to the interface (1), or not: detached, or the interface is gone (0).",
            ifaces.iter().map(|(i, s)| ([("iface", i)], ConstGauge::new(i64::from(s.enforcing)))),
        )?;
        family(
            &mut encoder,
            "kernel_memory_bytes",
            "Kernel memory the interface's filter holds (its maps and program), by the kernel's own accounting.",
            ifaces.iter().map(|(i, s)| ([("iface", i)], ConstGauge::new(s.kernel_memory as i64))),
        )?;
        family(
            &mut encoder,
            "drift_entries",
            "Map entries the audits found differing from the policy in force (then repaired), since the daemon started.",
            ifaces.iter().map(|(i, s)| ([("iface", i)], ConstCounter::new(s.drift_entries))),
        )?;
        family(
            &mut encoder,
            "last_audit_timestamp_seconds",
            "When the kernel's maps were last read back and compared with the policy, in seconds since the Unix epoch.",
            ifaces.iter().filter_map(|(i, s)| {
                Some(([("iface", i)], ConstGauge::new(unix_seconds(s.last_audit?))))
            }),
        )?;
        let sets = || ifaces.iter().flat_map(|(i, s)| s.sets.iter().map(move |set| (i, set)));
        fn labels<'a>(i: &'a str, set: &'a SetSample) -> [(&'static str, &'a str); 2] {
            [("iface", i), ("set", set.name.as_str())]
        }
        family(
            &mut encoder,
            "set_entries",
            "Entries of the named set (its files' and run-time ones).",
            sets().map(|(i, set)| (labels(i, set), ConstGauge::new(set.entries as i64))),
        )?;
        family(
            &mut encoder,
            "set_hits",
            "Packets whose address (source or destination, as the rules naming the set look) the set held.",
            sets().map(|(i, set)| (labels(i, set), ConstCounter::new(set.counters.hits))),
        )?;
        family(
            &mut encoder,
            "set_adds",
            "Entries added to the set (by its files, commands, CrowdSec); renewed ones are not counted.",
            sets().map(|(i, set)| (labels(i, set), ConstCounter::new(set.counters.adds))),
        )?;
        family(
            &mut encoder,
            "set_deletes",
            "Entries removed from the set, other than by expiry.",
            sets().map(|(i, set)| (labels(i, set), ConstCounter::new(set.counters.deletes))),
        )?;
        family(
            &mut encoder,
            "set_expired_entries",
            "Run-time entries of the set that expired and were removed.",
            sets().map(|(i, set)| (labels(i, set), ConstCounter::new(set.counters.expiries))),
        )?;
        let limits = || ifaces.iter().flat_map(|(i, s)| s.limits.iter().map(move |l| (i, l)));
        fn rule<'a>(i: &'a str, l: &'a LimitSample) -> [(&'static str, &'a str); 2] {
            [("iface", i), ("rule", l.rule.as_str())]
        }
        family(
            &mut encoder,
            "rule_limited_packets",
            "Packets over the limit rule's rate: dropped, or in monitor mode counted and passed.",
            limits().map(|(i, l)| (rule(i, l), ConstCounter::new(l.limited_packets))),
        )?;
        family(
            &mut encoder,
            "rule_limited_bytes",
            "Bytes (from the Ethernet header on) of the packets over the limit rule's rate.",
            limits().map(|(i, l)| (rule(i, l), ConstCounter::new(l.limited_bytes))),
        )?;
        family(
            &mut encoder,
            "rule_limit_sources",
            "Buckets the limit rule holds: sources (or source networks) seen lately.",
            limits().map(|(i, l)| (rule(i, l), ConstGauge::new(l.sources as i64))),
        )?;
        family(
            &mut encoder,
            "rule_limit_evictions",
            "Buckets of the limit rule dropped to make room for new sources (the map holds max_sources).",
            limits().map(|(i, l)| (rule(i, l), ConstCounter::new(l.evictions))),
        )?;
        let reloads = || state.reloads.iter().filter_map(|(p, r)| r.last.map(|last| (p, last)));
        family(
            &mut encoder,
            "last_reload_successful",
            "Whether the last reload of the policy succeeded (1) or left the previous one in force (0).",
            reloads().map(|(p, last)| ([("policy", p)], ConstGauge::new(i64::from(last.ok)))),
        )?;
        family(
            &mut encoder,
            "last_reload_timestamp_seconds",
            "When the policy was last reloaded, successfully or not, in seconds since the Unix epoch.",
            reloads().map(|(p, last)| ([("policy", p)], ConstGauge::new(unix_seconds(last.at)))),
        )?;
        // Every known policy, so that a first error is an increase from 0.
        let policies: BTreeSet<&String> =
            ifaces.values().map(|s| &s.policy).chain(state.reloads.keys()).collect();
        family(
            &mut encoder,
            "reload_errors",
            "Reloads of the policy that failed and left the previous one in force.",
            policies.into_iter().map(|p| {
                let errors = state.reloads.get(p).map_or(0, |r| r.errors);
                ([("policy", p)], ConstCounter::new(errors))
            }),
        )?;
        let no_labels: [(&str, &str); 0] = [];
        let cs = state.crowdsec.iter();
        family(
            &mut encoder,
            "crowdsec_up",
            "Whether the last pull of CrowdSec's decisions worked (1); while it fails (0) the decisions known stay in force.",
            cs.clone().map(|c| (no_labels, ConstGauge::new(i64::from(c.up)))),
        )?;
        family(
            &mut encoder,
            "crowdsec_decisions",
            "Networks banned by CrowdSec decisions in force.",
            cs.clone().map(|c| (no_labels, ConstGauge::new(c.decisions as i64))),
        )?;
        family(
            &mut encoder,
            "crowdsec_pulls",
            "Pulls of CrowdSec's decisions stream that worked.",
            cs.clone().map(|c| (no_labels, ConstCounter::new(c.pulls))),
        )?;
        family(
            &mut encoder,
            "crowdsec_pull_errors",
            "Pulls of CrowdSec's decisions stream that failed.",
            cs.map(|c| (no_labels, ConstCounter::new(c.failures))),
        )?;
        Ok(())
    }
}

/// Encodes one metric family; a family without series is left out entirely.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, M)>,
) -> Result<(), fmt::Error> {
    let mut series = series.peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The attach mode as an info metric: `…_info{mode="native"} 1`.
#[derive(Debug)]
struct ModeInfo(AttachMode);

impl EncodeMetric for ModeInfo {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_info(&[("mode", self.0.to_string())])
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Info
    }
}

/// Seconds since the Unix epoch; 0 for a clock set before it.
fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

async fn accept_loop(listener: TcpListener, exposition: Arc<Exposition>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A place first: at the cap, nothing more is accepted until a connection ends.
        let Ok(place) = Arc::clone(&places).acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                warn!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let exposition = Arc::clone(&exposition);
        let service = service_fn(move |request: Request<Incoming>| {
            let response = respond(&exposition, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "metrics: connection ended with an error"),
                Err(_) => debug!("metrics: connection closed after {CONNECTION_LIFETIME:?}"),
            }
            drop(place);
        });
    }
}

fn respond(exposition: &Exposition, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are served at /metrics\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match exposition.render() {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            response
        }
        Err(fmt::Error) => {
            warn!("metrics: encoding the metrics failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n")
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use crate::dataplane::sets::SetCounters;
    use std::io::{Read as _, Write as _};

    use super::*;

    fn counts(packets: u64, bytes: u64) -> Counter {
        Counter { packets, bytes }
    }

    fn verdicts() -> VerdictCounts {
        let mut v = VerdictCounts::default();
        v.0[Verdict::PassRule as usize] = counts(10, 1_000);
        v.0[Verdict::DropRule as usize] = counts(3, 180);
        v.0[Verdict::DropUnparsable as usize] = counts(2, 70);
        v
    }

    fn rules(names: &[&str]) -> Vec<(String, Counter)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), counts(i as u64 + 1, 100 * (i as u64 + 1))))
            .collect()
    }

    fn snapshot<'a>(
        iface: &'a str,
        verdicts: &'a VerdictCounts,
        rules: &'a [(String, Counter)],
    ) -> Snapshot<'a> {
        Snapshot {
            iface,
            policy: Path::new("/etc/xdp-policy/edge.toml"),
            generation: 3,
            attach_mode: AttachMode::Native,
            verdicts,
            rules,
            enforcing: true,
            drift_entries: 7,
            last_audit: Some(at(1_700_000_100, 500)),
            sets: &[],
            limits: &[],
            kernel_memory: 105_000_000,
        }
    }

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn render(e: &Exposition) -> String {
        e.render().expect("rendering cannot fail")
    }

    #[test]
    fn renders_every_series_of_a_snapshot() {
        let e = Exposition::new();
        let v = verdicts();
        let r = rules(&["ssh", "web"]);
        let sets = vec![SetSample {
            name: "blocklist".into(),
            entries: 12,
            counters: SetCounters { hits: 40, adds: 15, deletes: 0, expiries: 3 },
        }];
        e.update(&Snapshot { sets: &sets, ..snapshot("eth0", &v, &r) });
        e.reload(Path::new("/etc/xdp-policy/edge.toml"), false, at(1_700_000_000, 250));
        e.lock().crowdsec = Some(CrowdSecState { up: true, decisions: 2, pulls: 5, failures: 1 });

        let expected = r#"# HELP xdp_policy_rule_packets_total Packets that matched the rule, since it was first applied unchanged.
# TYPE xdp_policy_rule_packets_total counter
xdp_policy_rule_packets_total{iface="eth0",rule="ssh"} 1
xdp_policy_rule_packets_total{iface="eth0",rule="web"} 2
# HELP xdp_policy_rule_bytes_total Bytes (from the Ethernet header on) of the packets that matched the rule.
# TYPE xdp_policy_rule_bytes_total counter
xdp_policy_rule_bytes_total{iface="eth0",rule="ssh"} 100
xdp_policy_rule_bytes_total{iface="eth0",rule="web"} 200
# HELP xdp_policy_verdict_packets_total Packets by verdict; every packet has exactly one.
# TYPE xdp_policy_verdict_packets_total counter
xdp_policy_verdict_packets_total{iface="eth0",verdict="pass_rule"} 10
xdp_policy_verdict_packets_total{iface="eth0",verdict="drop_rule"} 3
xdp_policy_verdict_packets_total{iface="eth0",verdict="monitor_rule"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="pass_default"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="drop_default"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="monitor_default"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="pass_not_ip"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="pass_neighbour"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="pass_fragment"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="drop_fragment"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="pass_unparsable"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="drop_unparsable"} 2
xdp_policy_verdict_packets_total{iface="eth0",verdict="pass_limit"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="drop_limit"} 0
xdp_policy_verdict_packets_total{iface="eth0",verdict="monitor_limit"} 0
# HELP xdp_policy_verdict_bytes_total Bytes (from the Ethernet header on) of the packets by verdict.
# TYPE xdp_policy_verdict_bytes_total counter
xdp_policy_verdict_bytes_total{iface="eth0",verdict="pass_rule"} 1000
xdp_policy_verdict_bytes_total{iface="eth0",verdict="drop_rule"} 180
xdp_policy_verdict_bytes_total{iface="eth0",verdict="monitor_rule"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="pass_default"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="drop_default"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="monitor_default"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="pass_not_ip"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="pass_neighbour"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="pass_fragment"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="drop_fragment"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="pass_unparsable"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="drop_unparsable"} 70
xdp_policy_verdict_bytes_total{iface="eth0",verdict="pass_limit"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="drop_limit"} 0
xdp_policy_verdict_bytes_total{iface="eth0",verdict="monitor_limit"} 0
# HELP xdp_policy_unparsable_packets_total IP packets whose transport header could not be located and read whole, decided by the policy's unparsable action (verdicts drop_unparsable and pass_unparsable).
# TYPE xdp_policy_unparsable_packets_total counter
xdp_policy_unparsable_packets_total{iface="eth0"} 2
# HELP xdp_policy_generation Policy applies since start-up; 1 after the first.
# TYPE xdp_policy_generation gauge
xdp_policy_generation{iface="eth0",policy="/etc/xdp-policy/edge.toml"} 3
# HELP xdp_policy_attach_mode_info The XDP mode the program is attached in.
# TYPE xdp_policy_attach_mode_info gauge
xdp_policy_attach_mode_info{iface="eth0",mode="native"} 1
# HELP xdp_policy_enforcing Whether the filter is attached to the interface (1), or not: detached, or the interface is gone (0).
# TYPE xdp_policy_enforcing gauge
xdp_policy_enforcing{iface="eth0"} 1
# HELP xdp_policy_kernel_memory_bytes Kernel memory the interface's filter holds (its maps and program), by the kernel's own accounting.
# TYPE xdp_policy_kernel_memory_bytes gauge
xdp_policy_kernel_memory_bytes{iface="eth0"} 105000000
# HELP xdp_policy_drift_entries_total Map entries the audits found differing from the policy in force (then repaired), since the daemon started.
# TYPE xdp_policy_drift_entries_total counter
xdp_policy_drift_entries_total{iface="eth0"} 7
# HELP xdp_policy_last_audit_timestamp_seconds When the kernel's maps were last read back and compared with the policy, in seconds since the Unix epoch.
# TYPE xdp_policy_last_audit_timestamp_seconds gauge
xdp_policy_last_audit_timestamp_seconds{iface="eth0"} 1700000100.5
# HELP xdp_policy_set_entries Entries of the named set (its files' and run-time ones).
# TYPE xdp_policy_set_entries gauge
xdp_policy_set_entries{iface="eth0",set="blocklist"} 12
# HELP xdp_policy_set_hits_total Packets whose address (source or destination, as the rules naming the set look) the set held.
# TYPE xdp_policy_set_hits_total counter
xdp_policy_set_hits_total{iface="eth0",set="blocklist"} 40
# HELP xdp_policy_set_adds_total Entries added to the set (by its files, commands, CrowdSec); renewed ones are not counted.
# TYPE xdp_policy_set_adds_total counter
xdp_policy_set_adds_total{iface="eth0",set="blocklist"} 15
# HELP xdp_policy_set_deletes_total Entries removed from the set, other than by expiry.
# TYPE xdp_policy_set_deletes_total counter
xdp_policy_set_deletes_total{iface="eth0",set="blocklist"} 0
# HELP xdp_policy_set_expired_entries_total Run-time entries of the set that expired and were removed.
# TYPE xdp_policy_set_expired_entries_total counter
xdp_policy_set_expired_entries_total{iface="eth0",set="blocklist"} 3
# HELP xdp_policy_last_reload_successful Whether the last reload of the policy succeeded (1) or left the previous one in force (0).
# TYPE xdp_policy_last_reload_successful gauge
xdp_policy_last_reload_successful{policy="/etc/xdp-policy/edge.toml"} 0
# HELP xdp_policy_last_reload_timestamp_seconds When the policy was last reloaded, successfully or not, in seconds since the Unix epoch.
# TYPE xdp_policy_last_reload_timestamp_seconds gauge
xdp_policy_last_reload_timestamp_seconds{policy="/etc/xdp-policy/edge.toml"} 1700000000.25
# HELP xdp_policy_reload_errors_total Reloads of the policy that failed and left the previous one in force.
# TYPE xdp_policy_reload_errors_total counter
xdp_policy_reload_errors_total{policy="/etc/xdp-policy/edge.toml"} 1
# HELP xdp_policy_crowdsec_up Whether the last pull of CrowdSec's decisions worked (1); while it fails (0) the decisions known stay in force.
# TYPE xdp_policy_crowdsec_up gauge
xdp_policy_crowdsec_up 1
# HELP xdp_policy_crowdsec_decisions Networks banned by CrowdSec decisions in force.
# TYPE xdp_policy_crowdsec_decisions gauge
xdp_policy_crowdsec_decisions 2
# HELP xdp_policy_crowdsec_pulls_total Pulls of CrowdSec's decisions stream that worked.
# TYPE xdp_policy_crowdsec_pulls_total counter
xdp_policy_crowdsec_pulls_total 5
# HELP xdp_policy_crowdsec_pull_errors_total Pulls of CrowdSec's decisions stream that failed.
# TYPE xdp_policy_crowdsec_pull_errors_total counter
xdp_policy_crowdsec_pull_errors_total 1
"#;
        assert_eq!(render(&e), expected);
    }

    #[test]
    fn nothing_known_renders_nothing() {
        assert_eq!(render(&Exposition::new()), "");
    }

    #[test]
    fn renders_the_limit_rules() {
        let e = Exposition::new();
        let v = verdicts();
        let r = rules(&["limit-syn"]);
        let limits = vec![LimitSample {
            rule: "limit-syn".into(),
            limited_packets: 797_400,
            limited_bytes: 47_844_000,
            sources: 10_001,
            evictions: 3,
        }];
        e.update(&Snapshot { limits: &limits, ..snapshot("eth0", &v, &r) });
        let text = render(&e);
        for line in [
            r#"xdp_policy_rule_limited_packets_total{iface="eth0",rule="limit-syn"} 797400"#,
            r#"xdp_policy_rule_limited_bytes_total{iface="eth0",rule="limit-syn"} 47844000"#,
            r#"xdp_policy_rule_limit_sources{iface="eth0",rule="limit-syn"} 10001"#,
            r#"xdp_policy_rule_limit_evictions_total{iface="eth0",rule="limit-syn"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Without limit rules, no limit families.
        e.update(&snapshot("eth0", &v, &r));
        let text = render(&e);
        assert!(
            !text.contains("xdp_policy_rule_limit"),
            "limit families without limit rules:\n{text}"
        );
    }

    #[test]
    fn a_removed_rule_leaves_the_output() {
        let e = Exposition::new();
        let v = verdicts();
        e.update(&snapshot("eth0", &v, &rules(&["ssh", "web"])));
        assert!(render(&e).contains(r#"rule="web""#));

        e.update(&snapshot("eth0", &v, &rules(&["ssh"])));
        let text = render(&e);
        assert!(!text.contains(r#"rule="web""#), "the removed rule's series stayed:\n{text}");
        assert!(text.contains(r#"xdp_policy_rule_packets_total{iface="eth0",rule="ssh"} 1"#));

        // A policy without rules has no rule families at all, not empty ones.
        e.update(&snapshot("eth0", &v, &[]));
        let text = render(&e);
        assert!(!text.contains("xdp_policy_rule_"), "rule families without rules:\n{text}");
        assert!(text.contains("xdp_policy_verdict_packets_total"));
    }

    #[test]
    fn interfaces_are_kept_apart_and_counters_are_set_not_added() {
        let e = Exposition::new();
        let v = verdicts();
        let r = rules(&["ssh"]);
        e.update(&snapshot("eth0", &v, &r));
        e.update(&snapshot("eth0", &v, &r));
        let mut skb = snapshot("eth1", &v, &r);
        skb.attach_mode = AttachMode::Skb;
        e.update(&skb);
        let text = render(&e);
        for line in [
            r#"xdp_policy_rule_packets_total{iface="eth0",rule="ssh"} 1"#,
            r#"xdp_policy_rule_packets_total{iface="eth1",rule="ssh"} 1"#,
            r#"xdp_policy_attach_mode_info{iface="eth0",mode="native"} 1"#,
            r#"xdp_policy_attach_mode_info{iface="eth1",mode="skb"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // One policy shared by both interfaces: one reload error series, at 0.
        let errors: Vec<&str> =
            text.lines().filter(|l| l.starts_with("xdp_policy_reload_errors_total{")).collect();
        assert_eq!(
            errors,
            [r#"xdp_policy_reload_errors_total{policy="/etc/xdp-policy/edge.toml"} 0"#]
        );
    }

    #[test]
    fn reload_outcomes_count_errors_and_keep_the_last() {
        let e = Exposition::new();
        let policy = Path::new("/etc/xdp-policy/mgmt.d");
        e.reload(policy, false, at(100, 0));
        e.reload(policy, false, at(200, 0));
        e.reload(policy, true, at(300, 500));
        let text = render(&e);
        for line in [
            r#"xdp_policy_last_reload_successful{policy="/etc/xdp-policy/mgmt.d"} 1"#,
            r#"xdp_policy_last_reload_timestamp_seconds{policy="/etc/xdp-policy/mgmt.d"} 300.5"#,
            r#"xdp_policy_reload_errors_total{policy="/etc/xdp-policy/mgmt.d"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let e = Exposition::new();
        e.reload(Path::new("/etc/x\"y\\z.toml"), true, at(1, 0));
        assert!(
            render(&e).contains(r#"xdp_policy_reload_errors_total{policy="/etc/x\"y\\z.toml"} 0"#),
            "{}",
            render(&e)
        );
    }

    /// A blocking HTTP/1.1 request: status line, headers (lowercase names), body.
    fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
    ) -> (String, Vec<(String, String)>, String) {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics server");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read the whole response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_metrics_over_http_and_404_elsewhere() {
        let metrics = Metrics::serve("127.0.0.1:0".parse().expect("addr")).expect("serve");
        let addr = metrics.local_addr();
        assert_ne!(addr.port(), 0);
        let v = verdicts();
        let r = rules(&["ssh", "web"]);
        metrics.update(&snapshot("eth0", &v, &r));
        metrics.reload(Path::new("/etc/xdp-policy/edge.toml"), true, at(1_700_000_000, 0));

        // The runtime has one thread, which the server needs: block elsewhere.
        let (ok, missing, post) = tokio::task::spawn_blocking(move || {
            (
                request(addr, "GET", "/metrics"),
                request(addr, "GET", "/nope"),
                request(addr, "POST", "/metrics"),
            )
        })
        .await
        .expect("the scrapes ran");

        let (status, headers, body) = ok;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        for line in [
            r#"xdp_policy_rule_packets_total{iface="eth0",rule="web"} 2"#,
            r#"xdp_policy_verdict_packets_total{iface="eth0",verdict="drop_rule"} 3"#,
            r#"xdp_policy_unparsable_packets_total{iface="eth0"} 2"#,
            r#"xdp_policy_generation{iface="eth0",policy="/etc/xdp-policy/edge.toml"} 3"#,
            r#"xdp_policy_last_reload_successful{policy="/etc/xdp-policy/edge.toml"} 1"#,
            r#"xdp_policy_last_reload_timestamp_seconds{policy="/etc/xdp-policy/edge.toml"} 1700000000.0"#,
        ] {
            assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
        }

        let (status, _, body) = missing;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        assert_eq!(body, "not found: metrics are served at /metrics\n");

        let (status, headers, _) = post;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_taken_address_is_a_clear_error() {
        let first = Metrics::serve("127.0.0.1:0".parse().expect("addr")).expect("serve");
        let addr = first.local_addr();
        let err = Metrics::serve(addr).expect_err("the address is taken");
        assert_eq!(err.to_string(), format!("metrics: cannot listen on {addr}: address in use"));
    }

    #[test]
    fn serving_outside_a_runtime_is_an_error() {
        let err = Metrics::serve("127.0.0.1:0".parse().expect("addr")).expect_err("no runtime");
        assert!(matches!(err, MetricsError::NoRuntime), "{err}");
    }
}
