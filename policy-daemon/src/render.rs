//! Every text a person reads from `xdp-policy`, as pure functions over plain data: the
//! policy `check` describes, the tables of `status`, `explain`'s answer, `events`' lines
//! and the counters the daemon prints when it stops. The data `status` and `explain`
//! print as JSON with `--json` is defined here too, beside its text.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use policy_common::{Counter, DropEvent, L4Class, Verdict};
use serde::Serialize;

use crate::{
    dataplane::{
        VerdictCounts,
        limits::LimitSample,
        pinned::KernelMemory,
        sets::{AddReport, DelReport, Entry as SetEntry, SetCounters},
        state::{self, Audit, State},
    },
    policy::{self, Policy, Rule, TcpFlags, reference::L4},
};

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
    /// The policy's named sets with the entries each holds now.
    pub sets: Vec<SetStatus>,
    /// Kernel memory of the filter's maps and program, bytes.
    pub kernel_memory: KernelMemory,
    /// The layout version of the pinned maps, if they can be read.
    pub layout: Option<u32>,
    /// The program on the link, by its kernel name, if it can be read.
    pub program: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SetStatus {
    pub name: String,
    /// Entries now (files' and run-time ones), as the set's count says.
    pub entries: u64,
    pub max_entries: u32,
    /// Expiry of run-time entries added without a timeout, ms; 0: none.
    pub timeout_ms: u64,
    /// Hits, adds, deletes and expiries, from the kernel's counters.
    #[serde(flatten)]
    pub counters: SetCounters,
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
    pub action: policy::Action,
    pub mode: policy::Mode,
    pub packets: u64,
    pub bytes: u64,
    /// A limit rule's bucket size and rate, and what it limited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitStatus>,
}

/// A limit rule in `status`.
#[derive(Debug, Serialize)]
pub struct LimitStatus {
    /// Tokens (packets, or bytes with `bytes`) per second.
    pub rate_per_second: f64,
    /// The bucket's size in tokens.
    pub burst: f64,
    pub bytes: bool,
    #[serde(flatten)]
    pub sample: LimitSample,
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
        if let Some(st) = &s.state {
            let version = if st.version.is_empty() { "before 0.2.0" } else { &st.version };
            let layout = s.layout.map(|l| format!(", map layout {l}")).unwrap_or_default();
            out.push_str(&format!("  daemon: xdp-policy {version} (pid {}){layout}\n", st.pid));
        }
        if let Some(audit) = s.state.as_ref().and_then(|st| st.audit.as_ref()) {
            out.push_str(&format!("  {}\n", describe_audit(audit)));
        }
        if let Some(program) = &s.program {
            let what = match program.as_str() {
                policy_common::PORTS_PROGRAM_NAME => {
                    " (the port program: the rules look at protocol and destination port only)"
                }
                _ => "",
            };
            out.push_str(&format!("  program: {program}{what}\n"));
        }
        let m = &s.kernel_memory;
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        out.push_str(&format!(
            "  kernel memory: {:.1} MiB (maps {:.1} MiB, program {:.2} MiB)\n",
            mib(m.total()),
            mib(m.maps),
            mib(m.program)
        ));
        out.push_str(&verdict_rows("  ", |verdict| {
            let c = s.verdicts.get(verdict.name()).copied().unwrap_or_default();
            (c.packets, c.bytes)
        }));
        if !s.rules.is_empty() {
            let width = s.rules.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
            out.push_str(&format!(
                "  {:<width$} {:<6} {:<8} {:>12} {:>14}\n",
                "rule", "action", "mode", "packets", "bytes"
            ));
            for r in &s.rules {
                out.push_str(&format!(
                    "  {:<width$} {:<6} {:<8} {:>12} {:>14}\n",
                    r.name,
                    r.action.name(),
                    r.mode.name(),
                    r.packets,
                    r.bytes
                ));
            }
        }
        for (r, l) in s.rules.iter().filter_map(|r| Some((r, r.limit.as_ref()?))) {
            let unit = if l.bytes { "bytes" } else { "packets" };
            out.push_str(&format!(
                "  limit {}: {}, bucket {:.0} {unit}; {} packets ({} bytes) over the limit, {} \
                 sources held, {} evicted\n",
                r.name,
                rate_text(l.rate_per_second, unit),
                l.burst,
                l.sample.limited_packets,
                l.sample.limited_bytes,
                l.sample.sources,
                l.sample.evictions
            ));
        }
        for set in &s.sets {
            let timeout = if set.timeout_ms == 0 {
                "for good".to_string()
            } else {
                humantime::format_duration(Duration::from_millis(set.timeout_ms)).to_string()
            };
            let c = &set.counters;
            out.push_str(&format!(
                "  set @{}: {} entries (at most {}), run-time entries stay {timeout} unless \
                 added with a timeout; {} hits, {} added, {} deleted, {} expired\n",
                set.name, set.entries, set.max_entries, c.hits, c.adds, c.deletes, c.expiries
            ));
        }
    }
    out
}

/// One line on what the last audit found.
pub fn describe_audit(audit: &Audit) -> String {
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
    /// The source's bucket under the limit rule that decided, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketStatus>,
}

/// A source's bucket under a limit rule, after the probe was charged to it.
#[derive(Debug, Serialize)]
pub struct BucketStatus {
    pub rule: String,
    /// Tokens left (packets, or bytes with `bytes`), and the bucket's size.
    pub tokens: f64,
    pub burst: f64,
    pub bytes: bool,
    /// Tokens per second.
    pub rate_per_second: f64,
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
    if let Some(b) = &e.bucket {
        let unit = if b.bytes { "bytes" } else { "packets" };
        out.push_str(&format!(
            "bucket of this source under {}: {:.1} of {:.0} {unit} left after this probe, \
             refilling at {}\n",
            b.rule,
            b.tokens,
            b.burst,
            rate_text(b.rate_per_second, unit)
        ));
        if e.reference.as_ref().is_some_and(|r| r.verdict == "pass_limit") {
            out.push_str("note: the reference takes a limit rule's bucket to have room\n");
        }
    }
    out
}

/// A rate in the largest period that gives at least one: "200 packets/s", "10
/// packets/m", "1 packets/h" (fractions kept to three digits).
fn rate_text(per_second: f64, unit: &str) -> String {
    let (value, period) = if per_second >= 1.0 {
        (per_second, "s")
    } else if per_second * 60.0 >= 1.0 {
        (per_second * 60.0, "m")
    } else {
        (per_second * 3600.0, "h")
    };
    let value = format!("{value:.3}");
    let value = value.trim_end_matches('0').trim_end_matches('.');
    format!("{value} {unit}/{period}")
}

/// `PATH: valid, N rules` and a line per rule.
pub fn describe_policy(policy: &Policy, path: &str) -> String {
    let n = policy.rules.len();
    let mut out = format!("{path}: valid, {n} rule{}\n", if n == 1 { "" } else { "s" });
    let d = &policy.defaults;
    out.push_str(&format!(
        "  default: {}{}, fragments: {}, unparsable: {}\n",
        d.action.name(),
        if d.mode == policy::Mode::Monitor { " (monitor)" } else { "" },
        d.fragments.name(),
        d.unparsable.name()
    ));
    if !policy.interfaces.is_empty() {
        out.push_str(&format!("  interfaces: {}\n", policy.interfaces.join(", ")));
    }
    for set in &policy.sets {
        let timeout = if set.timeout.is_zero() {
            "none".to_string()
        } else {
            humantime::format_duration(set.timeout).to_string()
        };
        out.push_str(&format!(
            "  set @{}: {} entries from {} file{}, at most {}, run-time entries expire after {}\n",
            set.name,
            set.entries.len(),
            set.files.len(),
            if set.files.len() == 1 { "" } else { "s" },
            set.max_entries,
            timeout
        ));
    }
    let width = policy.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for rule in &policy.rules {
        out.push_str(&format!("  {:width$}  {}\n", rule.name, describe_rule(rule)));
    }
    out
}

fn describe_rule(rule: &Rule) -> String {
    let mut parts = vec![rule.action.name().to_string(), rule.protocol.name().to_string()];
    if rule.mode == policy::Mode::Monitor {
        parts.push("(monitor)".into());
    }
    let join = |items: Vec<String>| items.join(",");
    let addresses = |nets: &[ipnet::IpNet], sets: &[String]| {
        join(
            sets.iter()
                .map(|s| format!("@{s}"))
                .chain(nets.iter().map(ToString::to_string))
                .collect(),
        )
    };
    if let Some(nets) = &rule.src {
        parts.push(format!("src {}", addresses(nets, &rule.src_sets)));
    }
    if let Some(ports) = &rule.src_ports {
        parts.push(format!("sport {}", join(ports.iter().map(ToString::to_string).collect())));
    }
    if let Some(nets) = &rule.dst {
        parts.push(format!("dst {}", addresses(nets, &rule.dst_sets)));
    }
    if let Some(ports) = &rule.dst_ports {
        parts.push(format!("dport {}", join(ports.iter().map(ToString::to_string).collect())));
    }
    if let Some(types) = &rule.icmp_types {
        parts.push(format!("type {}", join(types.iter().map(ToString::to_string).collect())));
    }
    if let Some(flags) = rule.tcp_flags {
        parts.push(format!("flags {flags}"));
    }
    if let Some(limit) = &rule.limit {
        parts.push(format!("rate {limit}"));
    }
    parts.join(" ")
}

/// A header line, then a line per verdict with its packets and bytes, each indented.
fn verdict_rows(indent: &str, count: impl Fn(Verdict) -> (u64, u64)) -> String {
    let mut out = format!("{indent}{:<18} {:>12} {:>14}\n", "verdict", "packets", "bytes");
    for verdict in Verdict::ALL {
        let (packets, bytes) = count(verdict);
        out.push_str(&format!("{indent}{:<18} {packets:>12} {bytes:>14}\n", verdict.name()));
    }
    out
}

/// The verdict counters as a table, then a totals line.
pub fn counter_table(counts: &VerdictCounts) -> String {
    let mut out = verdict_rows("", |verdict| {
        let c = counts.get(verdict);
        (c.packets, c.bytes)
    });
    let (dropped, passed) = counts.dropped_passed();
    out.push_str(&format!("total: {dropped} dropped, {passed} passed\n"));
    out
}

/// What the daemon prints when it stops: the policy and generation of one interface,
/// its verdict counters, then its rules'.
pub fn final_counters(
    policy: &Path,
    iface: &str,
    generation: u64,
    verdicts: &VerdictCounts,
    rules: &[(String, Counter)],
) -> String {
    let mut out = format!("policy {} on {iface} (generation {generation})\n", policy.display());
    out.push_str(&counter_table(verdicts));
    if !rules.is_empty() {
        let width = rules.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(4);
        out.push_str(&format!("{:<width$} {:>12} {:>14}\n", "rule", "packets", "bytes"));
        for (name, c) in rules {
            out.push_str(&format!("{name:<width$} {:>12} {:>14}\n", c.packets, c.bytes));
        }
    }
    out
}

/// The packet `explain` tried, as a person would write it: "tcp 192.0.2.7 ->
/// 198.51.100.1 (ports 40000 -> 22, flags syn)".
pub fn describe_packet(src: IpAddr, dst: IpAddr, l4: &L4) -> String {
    let (what, ports) = match l4 {
        L4::Tcp { src_port, dst_port, flags } => {
            let set = TcpFlags { mask: u8::MAX, value: *flags }.to_string();
            let set = set.trim_start_matches('=');
            let set = if set.is_empty() { "none" } else { set };
            ("tcp".into(), format!(" (ports {src_port} -> {dst_port}, flags {set})"))
        }
        L4::Udp { src_port, dst_port } => {
            ("udp".into(), format!(" (ports {src_port} -> {dst_port})"))
        }
        L4::Icmp { icmp_type } => (format!("icmp type {icmp_type}"), String::new()),
        L4::Icmpv6 { icmp_type } => (format!("icmpv6 type {icmp_type}"), String::new()),
        L4::Other { proto } => (format!("ip proto {proto}"), String::new()),
        L4::Fragment { .. } => ("fragment".into(), String::new()),
    };
    format!("{what} {src} -> {dst}{ports}")
}

/// One sampled drop: `IFACE VERDICT rule RULE PROTO ENDPOINTS`. `rule_names` names the
/// counter slots of the rules in force; a slot it lacks is shown as `slot N`.
pub fn event_line(iface: &str, e: &DropEvent, rule_names: &BTreeMap<u32, String>) -> String {
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
        slot => rule_names.get(&slot).cloned().unwrap_or_else(|| format!("slot {slot}")),
    };
    let class = L4Class::ALL.get(usize::from(e.l4_class)).copied();
    let (src, dst) = (addr(e.src), addr(e.dst));
    let (proto, endpoints) = match class {
        Some(c @ (L4Class::Tcp | L4Class::Udp)) => (
            if c == L4Class::Tcp { "tcp" } else { "udp" },
            format!("{src} port {} -> {dst} port {}", e.src_port, e.dst_port),
        ),
        Some(c @ (L4Class::Icmp | L4Class::Icmpv6)) => (
            if c == L4Class::Icmp { "icmp" } else { "icmpv6" },
            format!("{src} -> {dst} type {}", e.dst_port),
        ),
        Some(L4Class::Other) => ("other", format!("{src} -> {dst}")),
        None => ("?", format!("{src} -> {dst}")),
    };
    format!("{iface} {verdict} rule {rule} {proto} {endpoints}")
}

#[cfg(test)]
mod tests {

    #[test]
    fn rates_read_in_the_period_that_gives_at_least_one() {
        assert_eq!(rate_text(200.0, "packets"), "200 packets/s");
        assert_eq!(rate_text(2_500_000.0, "bytes"), "2500000 bytes/s");
        assert_eq!(rate_text(10.0 / 60.0, "packets"), "10 packets/m");
        assert_eq!(rate_text(1.0 / 3600.0, "packets"), "1 packets/h");
        assert_eq!(rate_text(1.5, "packets"), "1.5 packets/s");
    }
    use super::*;

    fn event(class: L4Class, verdict: Verdict, slot: u32) -> DropEvent {
        let mut src = [0; 16];
        src[..4].copy_from_slice(&[198, 18, 0, 1]);
        let mut dst = [0; 16];
        dst[..4].copy_from_slice(&[198, 18, 0, 2]);
        DropEvent {
            time_ns: 0,
            counter_slot: slot,
            verdict: verdict as u8,
            l4_class: class as u8,
            ip_version: 4,
            _pad: 0,
            src_port: 40000,
            dst_port: 23,
            _pad2: 0,
            src,
            dst,
        }
    }

    #[test]
    fn event_lines_name_the_rule_the_class_and_the_endpoints() {
        let names = BTreeMap::from([(3, "no-telnet".to_string())]);
        assert_eq!(
            event_line("eth0", &event(L4Class::Tcp, Verdict::DropRule, 3), &names),
            "eth0 drop_rule rule no-telnet tcp 198.18.0.1 port 40000 -> 198.18.0.2 port 23"
        );
        assert_eq!(
            event_line("eth0", &event(L4Class::Icmp, Verdict::DropRule, 7), &names),
            "eth0 drop_rule rule slot 7 icmp 198.18.0.1 -> 198.18.0.2 type 23",
            "a slot the state file does not name"
        );
        let mut unknown = event(L4Class::Other, Verdict::DropDefault, u32::MAX);
        unknown.l4_class = 9;
        assert_eq!(
            event_line("eth0", &unknown, &names),
            "eth0 drop_default rule - ? 198.18.0.1 -> 198.18.0.2"
        );
    }

    #[test]
    fn packets_are_described_as_people_write_them() {
        let (src, dst) = ("192.0.2.7".parse().expect("ip"), "198.51.100.1".parse().expect("ip"));
        assert_eq!(
            describe_packet(
                src,
                dst,
                &L4::Tcp { src_port: 40000, dst_port: 22, flags: policy_common::tcp_flags::SYN }
            ),
            "tcp 192.0.2.7 -> 198.51.100.1 (ports 40000 -> 22, flags syn)"
        );
        assert_eq!(
            describe_packet(src, dst, &L4::Icmp { icmp_type: 8 }),
            "icmp type 8 192.0.2.7 -> 198.51.100.1"
        );
        assert_eq!(
            describe_packet(src, dst, &L4::Other { proto: 47 }),
            "ip proto 47 192.0.2.7 -> 198.51.100.1"
        );
    }
}

/// How long until `expires_ns` (`CLOCK_BOOTTIME`), for people: "for good" when 0.
fn expires_in(expires_ns: u64, now: u64) -> String {
    if expires_ns == 0 {
        return "for good".to_string();
    }
    let left = Duration::from_secs(expires_ns.saturating_sub(now).div_ceil(1_000_000_000));
    format!("expires in {}", humantime::format_duration(left))
}

/// `set add`'s line for one interface.
pub fn set_added(name: &str, iface: &str, report: &AddReport, timeout: Duration) -> String {
    let mut line = format!("{name} on {iface}: {} added, {} renewed", report.added, report.renewed);
    if timeout.is_zero() {
        line.push_str(", for good");
    } else {
        line.push_str(&format!(", expiring in {}", humantime::format_duration(timeout)));
    }
    if report.in_file > 0 {
        line.push_str(&format!(
            "; {} listed in the set's files already (they stay for good)",
            report.in_file
        ));
    }
    line
}

/// `set del`'s line for one interface.
pub fn set_deleted(name: &str, iface: &str, report: &DelReport) -> String {
    let mut line = format!("{name} on {iface}: {} removed", report.removed);
    let list = |nets: &[ipnet::IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    if !report.missing.is_empty() {
        line.push_str(&format!("; not in the set: {}", list(&report.missing).join(", ")));
    }
    if !report.in_file.is_empty() {
        line.push_str(&format!(
            "; listed in the set's files (remove them there): {}",
            list(&report.in_file).join(", ")
        ));
    }
    line
}

/// `set test`'s line for one interface.
pub fn set_test(name: &str, iface: &str, addr: IpAddr, hit: Option<&SetEntry>, now: u64) -> String {
    match hit {
        None => format!("{addr} is not in {name} on {iface}"),
        Some(e) => format!(
            "{addr} is in {name} on {iface}: entry {} ({}, {})",
            e.net,
            if e.from_file() { "from a file" } else { "run-time" },
            expires_in(e.value.expires_ns, now)
        ),
    }
}

/// One entry in `set list --json`.
#[derive(Serialize)]
struct SetEntryJson {
    net: String,
    /// "file" or "runtime".
    origin: &'static str,
    /// Milliseconds left; `null`: never expires.
    expires_in_ms: Option<u64>,
}

#[derive(Serialize)]
struct SetListJson<'a> {
    iface: &'a str,
    set: &'a str,
    entries: Vec<SetEntryJson>,
}

/// `set list`: per interface, the set's live entries.
pub fn set_lists(lists: &[(String, String, Vec<SetEntry>)], now: u64, json: bool) -> String {
    if json {
        let shaped: Vec<SetListJson> = lists
            .iter()
            .map(|(iface, set, entries)| SetListJson {
                iface,
                set,
                entries: entries
                    .iter()
                    .map(|e| SetEntryJson {
                        net: e.net.to_string(),
                        origin: if e.from_file() { "file" } else { "runtime" },
                        expires_in_ms: (e.value.expires_ns != 0)
                            .then(|| e.value.expires_ns.saturating_sub(now) / 1_000_000),
                    })
                    .collect(),
            })
            .collect();
        return serde_json::to_string_pretty(&shaped).expect("plain data serialises") + "\n";
    }
    let mut out = String::new();
    for (iface, set, entries) in lists {
        out.push_str(&format!("{set} on {iface}: {} entries\n", entries.len()));
        for e in entries {
            let origin = if e.from_file() { "file" } else { "run-time" };
            out.push_str(&format!(
                "  {:<43} {origin:<8} {}\n",
                e.net.to_string(),
                expires_in(e.value.expires_ns, now)
            ));
        }
    }
    out
}
