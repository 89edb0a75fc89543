//! Commands on the pinned filters, working whether or not a daemon runs: `status`
//! (what is in force and its counters), `explain` (why a given packet is passed or
//! dropped, by the live program and by the reference classifier) and `detach`.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    TestRun as _, TestRunOptions,
    maps::{Map, MapData, PerCpuArray},
    programs::Xdp,
};
use aya_obj::programs::XdpAttachType;
use policy_common::{
    Counter, RULE_COUNTERS_MAP, VERDICT_COUNTERS_MAP, Verdict,
    xdp_action::{XDP_DROP, XDP_PASS},
};
use serde::Serialize;

use crate::{
    dataplane::pins::Pins,
    packet,
    policy::{
        self,
        reference::{self, IpPacket, L4, Parsed},
    },
    state::{self, State},
};

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("no filter is pinned for {iface} under {}", pin_dir.display())]
    NotPinned { iface: String, pin_dir: PathBuf },
    #[error("reading the pinned map {} failed", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("opening the pinned program {} failed", path.display())]
    Program {
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Pins(#[from] crate::dataplane::pins::PinError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("explain builds whole packets, not fragments")]
    FragmentProbe,
    #[error("the source and the destination address must both be IPv4 or both IPv6")]
    MixedFamilies,
    #[error("{count} interfaces are pinned: name one")]
    WhichInterface { count: usize },
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
    #[error(
        "the pins of {iface} are removed, but its XDP link (id {id}) is still held by a \
         process: the filter stays until that process lets it go"
    )]
    LinkHeld { iface: String, id: u32 },
    #[error("the daemon (pid {pid}) did not audit {iface} within {timeout:?}")]
    AuditTimeout { iface: String, pid: u32, timeout: std::time::Duration },
}

/// How long `status --verify` waits for a daemon's audit.
pub const VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Has the daemon holding each pinned interface (or only `only`) audit its maps now
/// (SIGUSR1), and waits until it has recorded the result in the state file; then
/// returns the status, whose `state.audit` says what the audit found.
pub fn verify(
    pin_dir: &Path,
    state_dir: &Path,
    only: Option<&str>,
) -> Result<Vec<InterfaceStatus>, PinnedError> {
    let audits = |iface: &str| -> Result<u64, PinnedError> {
        // A damaged state file counts as no audit yet: the daemon writes a good one.
        Ok(State::read(state_dir, iface)
            .ok()
            .flatten()
            .and_then(|s| s.audit)
            .map_or(0, |a| a.count))
    };
    let mut asked = Vec::new();
    for (iface, pins) in Pins::all(pin_dir)? {
        if only.is_some_and(|o| o != iface) {
            continue;
        }
        let pid =
            pins.lock_holder().ok_or_else(|| PinnedError::NoDaemon { iface: iface.clone() })?;
        let before = audits(&iface)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGUSR1)
            .map_err(|source| PinnedError::Signal { pid, source })?;
        asked.push((iface, pid, before));
    }
    let deadline = std::time::Instant::now() + VERIFY_TIMEOUT;
    for (iface, pid, before) in asked {
        while audits(&iface)? <= before {
            if std::time::Instant::now() >= deadline {
                return Err(PinnedError::AuditTimeout { iface, pid, timeout: VERIFY_TIMEOUT });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    status(pin_dir, state_dir, only)
}

/// One interface as `status` reports it.
#[derive(Debug, Serialize)]
pub struct InterfaceStatus {
    pub iface: String,
    /// A link is pinned: the filter is in force (if the interface still exists).
    pub attached: bool,
    /// From the state file; `None` when there is none, or it is damaged.
    pub state: Option<State>,
    /// Why the state file was ignored, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
    pub verdicts: BTreeMap<&'static str, Count>,
    /// Rules in force with their counters, in rule order.
    pub rules: Vec<RuleStatus>,
}

/// Packets and bytes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct RuleStatus {
    pub name: String,
    pub action: String,
    pub mode: String,
    pub packets: u64,
    pub bytes: u64,
}

fn per_cpu(pins: &Pins, name: &str) -> Result<PerCpuArray<MapData, Counter>, PinnedError> {
    let path = pins.map(name);
    let err = |source| PinnedError::Map { path: path.clone(), source };
    let data = MapData::from_pin(&path).map_err(err)?;
    PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(err)
}

fn read(
    map: &PerCpuArray<MapData, Counter>,
    pins: &Pins,
    name: &str,
    index: u32,
) -> Result<Counter, PinnedError> {
    let values =
        map.get(&index, 0).map_err(|source| PinnedError::Map { path: pins.map(name), source })?;
    Ok(values.iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    }))
}

/// The status of every pinned interface, or of `only`.
pub fn status(
    pin_dir: &Path,
    state_dir: &Path,
    only: Option<&str>,
) -> Result<Vec<InterfaceStatus>, PinnedError> {
    let mut all = Vec::new();
    for (iface, pins) in Pins::all(pin_dir)? {
        if only.is_some_and(|o| o != iface) {
            continue;
        }
        let (state, state_error) = match State::read(state_dir, &iface) {
            Ok(state) => (state, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let verdict_map = per_cpu(&pins, VERDICT_COUNTERS_MAP)?;
        let mut verdicts = BTreeMap::new();
        for verdict in Verdict::ALL {
            let c = read(&verdict_map, &pins, VERDICT_COUNTERS_MAP, verdict as u32)?;
            verdicts.insert(verdict.name(), Count { packets: c.packets, bytes: c.bytes });
        }
        let rule_map = per_cpu(&pins, RULE_COUNTERS_MAP)?;
        let mut rules = Vec::new();
        for rule in state.iter().flat_map(|s| &s.rules) {
            let c = read(&rule_map, &pins, RULE_COUNTERS_MAP, rule.slot)?;
            rules.push(RuleStatus {
                name: rule.name.clone(),
                action: rule.action.clone(),
                mode: rule.mode.clone(),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        all.push(InterfaceStatus {
            iface: iface.clone(),
            attached: pins.linked(),
            state,
            state_error,
            verdicts,
            rules,
        });
    }
    if let Some(iface) = only
        && all.is_empty()
    {
        return Err(PinnedError::NotPinned {
            iface: iface.to_string(),
            pin_dir: pin_dir.to_path_buf(),
        });
    }
    Ok(all)
}

/// `status` as text.
pub fn render_status(all: &[InterfaceStatus]) -> String {
    if all.is_empty() {
        return "no filters are pinned\n".to_string();
    }
    let mut out = String::new();
    for s in all {
        let attached = match (s.attached, s.state.as_ref().is_none_or(|st| st.interface_present)) {
            (true, true) => "attached",
            (true, false) => "interface gone, attached again when it is back",
            (false, _) => "not attached",
        };
        match &s.state {
            Some(st) => out.push_str(&format!(
                "{}: {attached} ({}), policy {} (sha256 {}), generation {}, applied {} s ago\n",
                s.iface,
                st.attach_mode,
                st.policy.display(),
                st.policy_hash.chars().take(12).collect::<String>(),
                st.generation,
                state::now().saturating_sub(st.applied_at)
            )),
            None => match &s.state_error {
                Some(e) => {
                    out.push_str(&format!("{}: {attached}, state file ignored: {e}\n", s.iface))
                }
                None => out.push_str(&format!("{}: {attached}, no state file\n", s.iface)),
            },
        }
        if let Some(audit) = s.state.as_ref().and_then(|st| st.audit.as_ref()) {
            out.push_str(&format!("  {}\n", describe_audit(audit)));
        }
        out.push_str(&format!("  {:<18} {:>12} {:>14}\n", "verdict", "packets", "bytes"));
        for verdict in Verdict::ALL {
            let c = s.verdicts.get(verdict.name()).copied().unwrap_or_default();
            out.push_str(&format!("  {:<18} {:>12} {:>14}\n", verdict.name(), c.packets, c.bytes));
        }
        if !s.rules.is_empty() {
            let width = s.rules.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
            out.push_str(&format!(
                "  {:<width$} {:<6} {:<8} {:>12} {:>14}\n",
                "rule", "action", "mode", "packets", "bytes"
            ));
            for r in &s.rules {
                out.push_str(&format!(
                    "  {:<width$} {:<6} {:<8} {:>12} {:>14}\n",
                    r.name, r.action, r.mode, r.packets, r.bytes
                ));
            }
        }
    }
    out
}

/// One line on what the last audit found.
pub fn describe_audit(audit: &state::Audit) -> String {
    let ago = state::now_ms().saturating_sub(audit.at_ms) / 1000;
    let found = if audit.drift.is_empty() {
        "the kernel held the policy in force".to_string()
    } else {
        let maps: Vec<String> = audit.drift.iter().map(|(m, n)| format!("{m} {n}")).collect();
        format!(
            "{} map entries differed from the policy ({}), {}",
            audit.drift_entries(),
            maps.join(", "),
            if audit.repaired { "repaired" } else { "NOT repaired" }
        )
    };
    let error = audit.error.as_ref().map(|e| format!("; error: {e}")).unwrap_or_default();
    format!(
        "audit {ago} s ago: {found}{error} ({} entries drifted since the daemon started)",
        audit.drift_total
    )
}

/// The packet `explain` builds.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
}

/// An Ethernet frame carrying `probe`.
pub fn frame(probe: &Probe) -> Result<Vec<u8>, PinnedError> {
    let (l4, src_port) = match probe.l4 {
        L4::Tcp { src_port, dst_port } => (packet::tcp(dst_port), src_port),
        L4::Udp { src_port, dst_port } => (packet::udp(dst_port), src_port),
        L4::Icmp { icmp_type } => (packet::icmp(icmp_type), 0),
        L4::Icmpv6 { icmp_type } => (packet::icmpv6(icmp_type), 0),
        L4::Other { proto } => (packet::L4::Other { proto }, 0),
        L4::Fragment { .. } => return Err(PinnedError::FragmentProbe),
    };
    let packet = match (probe.src, probe.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => packet::Packet::ipv4(l4),
        (IpAddr::V6(_), IpAddr::V6(_)) => packet::Packet::ipv6(l4),
        _ => return Err(PinnedError::MixedFamilies),
    };
    Ok(packet.src_ip(probe.src).dst_ip(probe.dst).src_port(src_port).build())
}

/// What `explain` found out about one packet.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The packet, as a person would write it ("tcp 192.0.2.7 -> 198.51.100.1 (ports …)").
    pub packet: String,
    pub iface: String,
    /// What the live program did with it.
    pub live: LiveOutcome,
    /// What the reference classifier says from the policy files in force, if there is a
    /// policy to read.
    pub reference: Option<ReferenceOutcome>,
    /// Why there is no reference outcome, if there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_missing: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LiveOutcome {
    /// `DROP`, `PASS`, or `other`.
    pub action: &'static str,
    /// The verdict counters the run moved (usually one; traffic on the interface may
    /// move others at the same moment).
    pub verdicts: Vec<&'static str>,
    /// The rules whose counters it moved.
    pub rules: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ReferenceOutcome {
    pub policy: PathBuf,
    /// `DROP` or `PASS`.
    pub action: &'static str,
    pub verdict: &'static str,
    /// The deciding rule and where it is written, if a rule decided.
    pub rule: Option<String>,
    pub location: Option<String>,
    /// The policy files changed since they were applied: the reference read them as they
    /// are now.
    pub changed_since_applied: bool,
}

/// Runs `probe` through the live program of `iface` and through the reference
/// classifier over the policy files in force.
pub fn explain(
    pin_dir: &Path,
    state_dir: &Path,
    iface: &str,
    probe: &Probe,
) -> Result<Explanation, PinnedError> {
    let pins = Pins::new(pin_dir, iface);
    if !pins.program().exists() {
        return Err(PinnedError::NotPinned {
            iface: iface.to_string(),
            pin_dir: pin_dir.to_path_buf(),
        });
    }
    // A damaged state file leaves no policy to compare with: said below.
    let (state, state_error) = match State::read(state_dir, iface) {
        Ok(state) => (state, None),
        Err(e) => (None, Some(e)),
    };
    let bytes = frame(probe)?;
    let verdict_map = per_cpu(&pins, VERDICT_COUNTERS_MAP)?;
    let rule_map = per_cpu(&pins, RULE_COUNTERS_MAP)?;
    let rules = state.as_ref().map(|s| s.rules.clone()).unwrap_or_default();
    let snapshot = |pins: &Pins| -> Result<(Vec<u64>, Vec<u64>), PinnedError> {
        let v = Verdict::ALL
            .iter()
            .map(|v| read(&verdict_map, pins, VERDICT_COUNTERS_MAP, *v as u32).map(|c| c.packets))
            .collect::<Result<_, _>>()?;
        let r = rules
            .iter()
            .map(|r| read(&rule_map, pins, RULE_COUNTERS_MAP, r.slot).map(|c| c.packets))
            .collect::<Result<_, _>>()?;
        Ok((v, r))
    };
    let path = pins.program();
    let program = Xdp::from_pin(&path, XdpAttachType::Interface)
        .map_err(|source| PinnedError::Program { path: path.clone(), source })?;
    let before = snapshot(&pins)?;
    let opts = TestRunOptions { data_in: Some(&bytes), ..TestRunOptions::default() };
    let result = program.test_run(opts).map_err(|source| PinnedError::Program { path, source })?;
    let after = snapshot(&pins)?;
    // Traffic on the interface counts too: the verdict and rule this run added are the
    // ones that moved, and usually the only ones.
    let moved =
        |b: &[u64], a: &[u64]| -> Vec<usize> { (0..a.len()).filter(|i| a[*i] > b[*i]).collect() };
    let live = LiveOutcome {
        action: match result.return_value {
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
        (Some(state), _) => match policy::load(&state.policy) {
            Err(e) => (
                None,
                Some(format!("the policy at {} does not load now:\n{e}", state.policy.display())),
            ),
            Ok(policy) => {
                let outcome = reference::classify(
                    &policy,
                    &Parsed::Ip(IpPacket { src: probe.src, dst: probe.dst, l4: probe.l4 }),
                );
                let rule = outcome.rule.map(|i| &policy.rules[i]);
                let reference = ReferenceOutcome {
                    policy: state.policy.clone(),
                    action: if outcome.verdict.drops() { "DROP" } else { "PASS" },
                    verdict: outcome.verdict.name(),
                    rule: rule.map(|r| r.name.clone()),
                    location: rule.map(|r| r.location.to_string()),
                    changed_since_applied: policy.hash != state.policy_hash,
                };
                (Some(reference), None)
            }
        },
    };
    let packet =
        format!("{} {} -> {}{}", describe_l4(&probe.l4), probe.src, probe.dst, ports(&probe.l4));
    Ok(Explanation { packet, iface: iface.to_string(), live, reference, reference_missing })
}

/// `explain` as text.
pub fn render_explanation(e: &Explanation) -> String {
    let mut out = format!("packet: {}\n", e.packet);
    let rules = if e.live.rules.is_empty() {
        "none (no rule matched)".to_string()
    } else {
        e.live.rules.join(" or ")
    };
    out.push_str(&format!(
        "live program on {}: {}, verdict {}, rule {rules}\n",
        e.iface,
        e.live.action,
        e.live.verdicts.join(" or ")
    ));
    match (&e.reference, &e.reference_missing) {
        (Some(r), _) => {
            let rule = match (&r.rule, &r.location) {
                (Some(rule), Some(at)) => format!("{rule} ({at})"),
                _ => "none (no rule matched)".to_string(),
            };
            out.push_str(&format!(
                "reference ({}): {}, verdict {}, rule {rule}\n",
                r.policy.display(),
                r.action,
                r.verdict
            ));
            if r.changed_since_applied {
                out.push_str("note: the policy files changed since they were applied; the reference reads them as they are now\n");
            }
        }
        (None, Some(why)) => out.push_str(&format!("reference: {why}\n")),
        (None, None) => {}
    }
    out
}

fn describe_l4(l4: &L4) -> String {
    match l4 {
        L4::Tcp { .. } => "tcp".into(),
        L4::Udp { .. } => "udp".into(),
        L4::Icmp { icmp_type } => format!("icmp type {icmp_type}"),
        L4::Icmpv6 { icmp_type } => format!("icmpv6 type {icmp_type}"),
        L4::Other { proto } => format!("ip proto {proto}"),
        L4::Fragment { .. } => "fragment".into(),
    }
}

fn ports(l4: &L4) -> String {
    match l4 {
        L4::Tcp { src_port, dst_port } | L4::Udp { src_port, dst_port } => {
            format!(" (ports {src_port} -> {dst_port})")
        }
        _ => String::new(),
    }
}

/// Removes the pins (and so the filter) and state of `only`, or of every interface, and
/// returns once the kernel has let their links go.
pub fn detach(
    pin_dir: &Path,
    state_dir: &Path,
    only: Option<&str>,
) -> Result<Vec<String>, PinnedError> {
    let mut done = Vec::new();
    let mut links = Vec::new();
    for (iface, pins) in Pins::all(pin_dir)? {
        if only.is_some_and(|o| o != iface) {
            continue;
        }
        let link = pinned_link_id(&pins);
        pins.remove()?;
        State::remove(state_dir, &iface)?;
        links.extend(link.map(|id| (iface.clone(), id)));
        done.push(iface);
    }
    if let Some(iface) = only
        && done.is_empty()
    {
        return Err(PinnedError::NotPinned {
            iface: iface.to_string(),
            pin_dir: pin_dir.to_path_buf(),
        });
    }
    // The kernel lets a link go a moment after its last pin (bpffs frees inodes after
    // an RCU grace period): return once the filters are really off.
    let deadline = std::time::Instant::now() + DETACH_TIMEOUT;
    while let Some((iface, id)) = links.iter().find(|(_, id)| link_exists(*id)) {
        if std::time::Instant::now() >= deadline {
            return Err(PinnedError::LinkHeld { iface: iface.clone(), id: *id });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(done)
}

/// How long `detach` waits for the kernel to let the links go.
const DETACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The id of the link pinned under `pins`, if one is.
fn pinned_link_id(pins: &Pins) -> Option<u32> {
    let link = aya::programs::links::PinnedLink::from_pin(pins.link()).ok()?;
    Some(aya::programs::links::FdLink::from(link).info().ok()?.id())
}

/// Whether the kernel still holds the link `id`.
fn link_exists(id: u32) -> bool {
    aya::programs::loaded_links().flatten().any(|link| link.id() == id)
}

/// What `events` reads: one interface's ring buffer and sampling switch.
pub struct EventSource {
    pub iface: String,
    ring: aya::maps::RingBuf<MapData>,
    settings: aya::maps::Array<MapData, policy_common::EventSettings>,
    slot_names: BTreeMap<u32, String>,
}

impl EventSource {
    /// Opens the pinned event maps of `iface` (the only pinned interface if `None`).
    pub fn open(
        pin_dir: &Path,
        state_dir: &Path,
        iface: Option<&str>,
    ) -> Result<Self, PinnedError> {
        let all = Pins::all(pin_dir)?;
        let (iface, pins) = match (iface, all.as_slice()) {
            (Some(iface), _) => (iface.to_string(), Pins::new(pin_dir, iface)),
            (None, [(iface, pins)]) => (iface.clone(), pins.clone()),
            (None, _) => {
                return Err(PinnedError::WhichInterface { count: all.len() });
            }
        };
        if !pins.linked() {
            return Err(PinnedError::NotPinned { iface, pin_dir: pin_dir.to_path_buf() });
        }
        let open = |name: &str| {
            let path = pins.map(name);
            MapData::from_pin(&path).map_err(|source| PinnedError::Map { path, source })
        };
        let err = |name: &str| {
            let path = pins.map(name);
            move |source| PinnedError::Map { path, source }
        };
        let ring = aya::maps::RingBuf::try_from(Map::RingBuf(open(policy_common::EVENTS_MAP)?))
            .map_err(err(policy_common::EVENTS_MAP))?;
        let settings =
            aya::maps::Array::try_from(Map::Array(open(policy_common::EVENT_SETTINGS_MAP)?))
                .map_err(err(policy_common::EVENT_SETTINGS_MAP))?;
        // Without a usable state file, rules are shown by their counter slots.
        let slot_names = State::read(state_dir, &iface)
            .ok()
            .flatten()
            .map(|s| s.rules.into_iter().map(|r| (r.slot, r.name)).collect())
            .unwrap_or_default();
        Ok(Self { iface, ring, settings, slot_names })
    }

    /// Turns sampling on at `per_second` events per second per CPU, or off with 0.
    pub fn set_rate(&mut self, per_second: u32) -> Result<(), PinnedError> {
        let interval_ns = if per_second == 0 { 0 } else { 1_000_000_000 / u64::from(per_second) };
        let value = policy_common::EventSettings { interval_ns };
        self.settings.set(0, value, 0).map_err(|source| PinnedError::Map {
            path: PathBuf::from(policy_common::EVENT_SETTINGS_MAP),
            source,
        })
    }

    /// The events waiting in the ring buffer, rendered one per line.
    pub fn drain(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<policy_common::DropEvent>() {
                continue;
            }
            // SAFETY: the program writes whole `DropEvent`s, a plain `repr(C)` type for
            // which every bit pattern is valid; read unaligned from the ring's bytes.
            events.push(unsafe {
                std::ptr::read_unaligned::<policy_common::DropEvent>(item.as_ptr().cast())
            });
        }
        events.iter().map(|e| self.render(e)).collect()
    }

    fn render(&self, e: &policy_common::DropEvent) -> String {
        let addr = |bytes: [u8; 16]| -> IpAddr {
            if e.ip_version == 6 {
                IpAddr::from(bytes)
            } else {
                IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
            }
        };
        let verdict = Verdict::try_from(u32::from(e.verdict)).map_or("unknown", Verdict::name);
        let rule = match e.counter_slot {
            u32::MAX => "-".to_string(),
            slot => self.slot_names.get(&slot).cloned().unwrap_or_else(|| format!("slot {slot}")),
        };
        let proto = ["tcp", "udp", "icmp", "icmpv6", "other"]
            .get(usize::from(e.l4_class))
            .copied()
            .unwrap_or("?");
        let (src, dst) = (addr(e.src), addr(e.dst));
        let endpoints = match proto {
            "tcp" | "udp" => format!("{src} port {} -> {dst} port {}", e.src_port, e.dst_port),
            "icmp" | "icmpv6" => format!("{src} -> {dst} type {}", e.dst_port),
            _ => format!("{src} -> {dst}"),
        };
        format!("{} {verdict} rule {rule} {proto} {endpoints}", self.iface)
    }
}
