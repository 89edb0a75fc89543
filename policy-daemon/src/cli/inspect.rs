//! The commands on the pinned filters, which work whether or not a daemon runs:
//! `status` (what is in force, with its counters; `--verify` has the daemon audit
//! first), `explain` (why a given packet is passed or dropped, by the live program and
//! by the reference classifier), `events` (sampled drops) and `detach`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use policy_common::{
    LIMIT_SHIFT, Verdict, limit_flags,
    xdp_action::{XDP_DROP, XDP_PASS},
};

use super::{CliError, DetachArgs, EventsArgs, ExplainArgs, StatusArgs};
use crate::{
    dataplane::{
        Places,
        limits::{self, LimitSample},
        pinned::{self, PinnedFilter},
        state::{RuleState, State, now_ms},
    },
    packet,
    policy::{
        self,
        reference::{self, IpPacket, L4, Parsed},
    },
    reload::files,
    render::{
        self, BucketStatus, Count, Explanation, InterfaceStatus, LimitStatus, LiveOutcome,
        ReferenceOutcome, RuleStatus, SetStatus,
    },
    settings,
};

/// How long `status --verify` waits for a daemon's audit.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "no xdp-policy daemon holds the filter of {iface}, so nothing holds the compiled \
         policy to compare its maps with: start the daemon (`xdp-policy run`; it writes the \
         policy whole when it adopts the pins)"
    )]
    NoDaemon { iface: String },
    #[error("telling the daemon (pid {pid}) to audit failed")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("the daemon (pid {pid}) did not audit {iface} within {timeout:?}")]
    AuditTimeout { iface: String, pid: u32, timeout: Duration },
    #[error("{count} interfaces are pinned: name one with --iface")]
    WhichInterface { count: usize },
}

/// A packet `explain` cannot build from its flags.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("--proto {0} needs --dst-port")]
    NeedsDstPort(String),
    #[error("--proto {0}: expected tcp, udp, icmp, icmpv6 or a protocol number")]
    UnknownProtocol(String),
    #[error("icmp goes with IPv4 addresses, icmpv6 with IPv6")]
    IcmpFamily,
    #[error("the source and the destination address must both be IPv4 or both IPv6")]
    MixedFamilies,
    #[error("--tcp-flags {0:?}: {1}")]
    TcpFlags(String, String),
    #[error("--tcp-flags goes with --proto tcp")]
    TcpFlagsNotTcp,
}

pub fn status(args: &StatusArgs) -> Result<(), CliError> {
    let places = args.places.resolve()?;
    let only = args.iface.as_deref();
    if args.verify {
        verify(&places, only)?;
    }
    let all = read_status(&places, only)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else {
        print!("{}", render::render_status(&all));
    }
    if !args.verify {
        return Ok(());
    }
    let audits = all.iter().filter_map(|s| Some((&s.iface, s.state.as_ref()?.audit.as_ref()?)));
    let failed: Vec<String> =
        audits.clone().filter(|(_, a)| a.error.is_some()).map(|(i, _)| i.clone()).collect();
    let drifted: Vec<String> =
        audits.filter(|(_, a)| !a.drift.is_empty()).map(|(i, _)| i.clone()).collect();
    if !drifted.is_empty() {
        return Err(CliError::Drift(drifted));
    }
    if !failed.is_empty() {
        return Err(CliError::AuditFailed(failed));
    }
    Ok(())
}

/// The status of every pinned interface, or of `only`.
fn read_status(places: &Places, only: Option<&str>) -> Result<Vec<InterfaceStatus>, CliError> {
    let mut all = Vec::new();
    for filter in PinnedFilter::all(&places.pin_dir, only)? {
        let (state, state_error) = match State::read(&places.state_dir, filter.iface()) {
            Ok(state) => (state, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let counts = filter.verdict_counts()?;
        let verdicts = Verdict::ALL
            .iter()
            .map(|v| {
                let c = counts.get(*v);
                (v.name(), Count { packets: c.packets, bytes: c.bytes })
            })
            .collect();
        let in_force = state.as_ref().map(|s| s.rules.as_slice()).unwrap_or_default();
        let slots: Vec<u32> = in_force.iter().map(|r| r.slot).collect();
        let limits = limit_statuses(&filter, in_force);
        let rules = in_force
            .iter()
            .zip(filter.rule_counts(&slots)?)
            .zip(limits)
            .map(|((rule, c), limit)| RuleStatus {
                name: rule.name.clone(),
                action: rule.action,
                mode: rule.mode,
                packets: c.packets,
                bytes: c.bytes,
                limit,
            })
            .collect();
        let sets = state
            .iter()
            .flat_map(|st| st.sets.iter())
            .map(|set| {
                let (entries, counters) = filter.set_figures(set.id).unwrap_or_default();
                SetStatus {
                    name: set.name.clone(),
                    entries,
                    max_entries: set.max_entries,
                    timeout_ms: set.timeout_ms,
                    counters,
                }
            })
            .collect();
        all.push(InterfaceStatus {
            iface: filter.iface().to_string(),
            attached: filter.attached(),
            state,
            state_error,
            verdicts,
            rules,
            sets,
            kernel_memory: filter.kernel_memory(),
            layout: filter.layout(),
            program: filter.program_name(),
        });
    }
    Ok(all)
}

/// What each limit rule of `rules` (the rules in force, in order) counted and holds;
/// `None` for the other rules, and for all when the limit maps cannot be read (an
/// older filter).
fn limit_statuses(filter: &PinnedFilter, rules: &[RuleState]) -> Vec<Option<LimitStatus>> {
    let none = || rules.iter().map(|_| None).collect();
    if rules.iter().all(|r| r.action != policy::Action::Limit) {
        return none();
    }
    let Ok(mut maps) = filter.limit_maps() else { return none() };
    let held = maps.buckets_by_id().unwrap_or_default();
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let config = filter.limit_config(i)?;
            let figures = maps.figures(rule.slot).ok()?;
            let sources = held.get(&config.id).copied().unwrap_or(0);
            let per_token = config.interval as f64 / f64::from(1u32 << LIMIT_SHIFT);
            Some(LimitStatus {
                rate_per_second: 1e9 / per_token,
                burst: config.tolerance as f64 / per_token,
                bytes: config.flags & limit_flags::BYTES != 0,
                sample: LimitSample::new(rule.name.clone(), figures, sources),
            })
        })
        .collect()
}

/// Has the daemon holding each pinned interface (or only `only`) audit its maps now
/// (SIGUSR1), and waits until it has recorded the result in the state file.
fn verify(places: &Places, only: Option<&str>) -> Result<(), CliError> {
    // Audits record when they began: one that began after the signal was sent is one
    // this asked for (an interval audit under way, or the count of a daemon restarted
    // since, cannot pass for it).
    let audited_since = |iface: &str, since_ms: u64| -> bool {
        // A damaged state file counts as no audit yet: the daemon writes a good one.
        State::read(&places.state_dir, iface)
            .ok()
            .flatten()
            .and_then(|s| s.audit)
            .is_some_and(|a| a.at_ms >= since_ms)
    };
    let mut asked = Vec::new();
    for filter in PinnedFilter::all(&places.pin_dir, only)? {
        let iface = filter.iface().to_string();
        let pid = filter.daemon().ok_or_else(|| InspectError::NoDaemon { iface: iface.clone() })?;
        let since_ms = now_ms();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGUSR1)
            .map_err(|source| InspectError::Signal { pid, source })?;
        asked.push((iface, pid, since_ms));
    }
    let deadline = Instant::now() + VERIFY_TIMEOUT;
    for (iface, pid, since_ms) in asked {
        while !audited_since(&iface, since_ms) {
            if Instant::now() >= deadline {
                return Err(
                    InspectError::AuditTimeout { iface, pid, timeout: VERIFY_TIMEOUT }.into()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

pub fn explain(args: &ExplainArgs) -> Result<(), CliError> {
    let places = args.places.resolve()?;
    // The policy files are read as `run` reads them.
    let load = settings::policy_load_options(args.places.config.as_deref(), false)?;
    let explanation = explain_packet(&places, load, &args.iface, &probe(args)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation).unwrap_or_default());
    } else {
        print!("{}", render::render_explanation(&explanation));
    }
    Ok(())
}

/// The packet `explain` tries: as the reference classifier sees it, and as a frame.
struct Probe {
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    frame: Vec<u8>,
}

/// The packet the flags describe.
fn probe(args: &ExplainArgs) -> Result<Probe, ProbeError> {
    let port = || args.dst_port.ok_or_else(|| ProbeError::NeedsDstPort(args.proto.clone()));
    // The flags set, as a list ("syn,ack"); a new connection's SYN when not given.
    let tcp_flags = || match &args.tcp_flags {
        None => Ok(policy_common::tcp_flags::SYN),
        Some(text) => crate::policy::TcpFlags::parse(&format!("={text}"))
            .map(|f| f.value)
            .map_err(|e| ProbeError::TcpFlags(text.clone(), e)),
    };
    if args.tcp_flags.is_some() && args.proto != "tcp" {
        return Err(ProbeError::TcpFlagsNotTcp);
    }
    let v6 = args.src.is_ipv6();
    if v6 != args.dst.is_ipv6() {
        return Err(ProbeError::MixedFamilies);
    }
    let (l4, transport, src_port) = match args.proto.as_str() {
        "tcp" => {
            let dst_port = port()?;
            let l4 = L4::Tcp { src_port: args.src_port, dst_port, flags: tcp_flags()? };
            (l4, packet::tcp(dst_port), args.src_port)
        }
        "udp" => {
            let dst_port = port()?;
            (L4::Udp { src_port: args.src_port, dst_port }, packet::udp(dst_port), args.src_port)
        }
        "icmp" if !v6 => {
            let icmp_type = args.icmp_type.unwrap_or(8);
            (L4::Icmp { icmp_type }, packet::icmp(icmp_type), 0)
        }
        "icmpv6" if v6 => {
            let icmp_type = args.icmp_type.unwrap_or(128);
            (L4::Icmpv6 { icmp_type }, packet::icmpv6(icmp_type), 0)
        }
        "icmp" | "icmpv6" => return Err(ProbeError::IcmpFamily),
        other => match other.parse::<u8>() {
            Ok(proto) => (L4::Other { proto }, packet::L4::Other { proto }, 0),
            Err(_) => return Err(ProbeError::UnknownProtocol(other.to_string())),
        },
    };
    let packet = if v6 { packet::Packet::ipv6(transport) } else { packet::Packet::ipv4(transport) };
    let flags = if let L4::Tcp { flags, .. } = l4 { flags } else { 0 };
    let frame =
        packet.src_ip(args.src).dst_ip(args.dst).src_port(src_port).tcp_flags(flags).build();
    Ok(Probe { src: args.src, dst: args.dst, l4, frame })
}

/// Runs the packet through the live program of `iface` and through the reference
/// classifier over the policy files in force.
fn explain_packet(
    places: &Places,
    load: files::LoadOptions,
    iface: &str,
    probe: &Probe,
) -> Result<Explanation, CliError> {
    let filter = PinnedFilter::open(&places.pin_dir, iface)?;
    // A damaged state file leaves no policy to compare with: said below.
    let (state, state_error) = match State::read(&places.state_dir, iface) {
        Ok(state) => (state, None),
        Err(e) => (None, Some(e)),
    };
    let rules = state.as_ref().map(|s| s.rules.clone()).unwrap_or_default();
    let slots: Vec<u32> = rules.iter().map(|r| r.slot).collect();
    let snapshot = || -> Result<(Vec<u64>, Vec<u64>), CliError> {
        let verdicts = filter.verdict_counts()?;
        let v = Verdict::ALL.iter().map(|v| verdicts.get(*v).packets).collect();
        let r = filter.rule_counts(&slots)?.iter().map(|c| c.packets).collect();
        Ok((v, r))
    };
    let before = snapshot()?;
    let action = filter.test_run(&probe.frame)?;
    let after = snapshot()?;
    // Traffic on the interface counts too: the verdict and rule this run added are the
    // ones that moved, and usually the only ones.
    let moved =
        |b: &[u64], a: &[u64]| -> Vec<usize> { (0..a.len()).filter(|i| a[*i] > b[*i]).collect() };
    let live = LiveOutcome {
        action: match action {
            XDP_DROP => "DROP",
            XDP_PASS => "PASS",
            _ => "other",
        },
        verdicts: moved(&before.0, &after.0).iter().map(|i| Verdict::ALL[*i].name()).collect(),
        rules: moved(&before.1, &after.1).iter().map(|i| rules[*i].name.clone()).collect(),
    };
    let (reference, reference_missing) = match (&state, state_error) {
        (None, Some(e)) => {
            (None, Some(format!("state file ignored ({e}), so no policy to compare with")))
        }
        (None, None) => (None, Some("no state file, so no policy to compare with".to_string())),
        (Some(state), _) => match reference_outcome(state, load, probe) {
            Ok(outcome) => (Some(outcome), None),
            Err(e) => (
                None,
                Some(format!("the policy at {} does not load now:\n{e}", state.policy.display())),
            ),
        },
    };
    let bucket = bucket_status(&filter, &rules, &live.rules, probe.src);
    Ok(Explanation {
        packet: render::describe_packet(probe.src, probe.dst, &probe.l4),
        iface: iface.to_string(),
        live,
        reference,
        reference_missing,
        bucket,
    })
}

/// The bucket of `source` under the first of `moved` (the rules the probe counted for)
/// that is a limit rule.
fn bucket_status(
    filter: &PinnedFilter,
    rules: &[RuleState],
    moved: &[String],
    source: IpAddr,
) -> Option<BucketStatus> {
    let (index, rule) = rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.action == policy::Action::Limit && moved.contains(&r.name))?;
    let config = filter.limit_config(index)?;
    let maps = filter.limit_maps().ok()?;
    let bucket = maps.bucket(&config, source, limits::monotonic_now_ns()).ok()?;
    let per_token = config.interval as f64 / f64::from(1u32 << LIMIT_SHIFT);
    Some(BucketStatus {
        rule: rule.name.clone(),
        tokens: bucket.tokens,
        burst: bucket.burst,
        bytes: config.flags & limit_flags::BYTES != 0,
        rate_per_second: 1e9 / per_token,
    })
}

/// What the reference classifier says of the packet, from the policy files in force as
/// they are now.
fn reference_outcome(
    state: &State,
    load: files::LoadOptions,
    probe: &Probe,
) -> Result<ReferenceOutcome, files::LoadError> {
    let policy = files::load(&state.policy, load)?;
    let packet = IpPacket { src: probe.src, dst: probe.dst, l4: probe.l4 };
    let outcome = reference::classify(&policy, &Parsed::Ip(packet));
    let rule = outcome.rule.map(|i| &policy.rules[i]);
    Ok(ReferenceOutcome {
        policy: state.policy.clone(),
        action: if outcome.verdict.drops() { "DROP" } else { "PASS" },
        verdict: outcome.verdict.name(),
        rule: rule.map(|r| r.name.clone()),
        location: rule.map(|r| r.location.to_string()),
        changed_since_applied: policy.hash != state.policy_hash,
    })
}

/// Samples drops (and would-be drops) while it runs, a line each.
pub async fn events(args: &EventsArgs) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let places = args.places.resolve()?;
    let filter = match &args.iface {
        Some(iface) => PinnedFilter::open(&places.pin_dir, iface)?,
        None => {
            let mut all = PinnedFilter::all(&places.pin_dir, None)?;
            if all.len() != 1 {
                return Err(InspectError::WhichInterface { count: all.len() }.into());
            }
            all.remove(0)
        }
    };
    let mut events = filter.events()?;
    let iface = filter.iface();
    // Without a usable state file, rules are shown by their counter slots.
    let rule_names: BTreeMap<u32, String> = State::read(&places.state_dir, iface)
        .ok()
        .flatten()
        .map(|s| s.rules.into_iter().map(|r| (r.slot, r.name)).collect())
        .unwrap_or_default();
    let mut sigterm = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let deadline = args.seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    events.set_rate(args.rate)?;
    eprintln!("sampling drops on {iface} at up to {}/s per CPU; Ctrl-C stops", args.rate);
    let mut seen = 0;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    'outer: loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = poll.tick() => {
                for event in events.drain() {
                    println!("{}", render::event_line(iface, &event, &rule_names));
                    seen += 1;
                    if args.count.is_some_and(|n| seen >= n) {
                        break 'outer;
                    }
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    // Off again: sampling is for while someone watches.
    events.set_rate(0)?;
    Ok(())
}

pub fn detach(args: &DetachArgs) -> Result<(), CliError> {
    let Places { pin_dir, state_dir } = args.places.resolve()?;
    for iface in pinned::detach(&pin_dir, &state_dir, args.iface.as_deref())? {
        println!("{iface}: detached");
    }
    Ok(())
}
