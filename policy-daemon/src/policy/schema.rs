//! The TOML policy format: raw serde types (unknown fields rejected) and the checks that
//! turn one file into validated rules.

use std::{
    collections::HashMap, fmt, marker::PhantomData, net::IpAddr, ops::Range, path::Path,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de};
use toml::Spanned;

use super::{
    Defaults, Diagnostic, Location, Rule, SetDef, TcpFlags,
    diagnostic::LineIndex,
    limit::{Limit, Per, Rate},
    set_id,
};

/// Longest accepted rule name; names end up in logs and metric labels.
const MAX_NAME_LEN: usize = 64;

/// What a matching rule (or the default) does with the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Pass,
    Drop,
    /// Rules only: pass within the rule's `rate`, drop over it.
    Limit,
}

/// `enforce` applies the action; `monitor` counts what would be dropped and passes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// What happens to non-first fragments, which carry no ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fragments {
    /// Judged by the rules that do not look at ports or ICMP types, then the default.
    #[default]
    Rules,
    Pass,
    Drop,
}

/// Which transport protocols a rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP over IPv4.
    Icmp,
    /// ICMPv6 over IPv6.
    Icmpv6,
    /// Every protocol; with port fields, TCP and UDP (the protocols that have ports).
    #[default]
    Any,
}

impl Protocol {
    /// As written in a policy.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
            Self::Any => "any",
        }
    }
}

impl Action {
    /// As written in a policy.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::Limit => "limit",
        }
    }
}

impl Mode {
    /// As written in a policy.
    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        }
    }
}

impl Fragments {
    /// As written in a policy.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rules => "rules",
            Self::Pass => "pass",
            Self::Drop => "drop",
        }
    }
}

/// An inclusive range of ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

const PORT_EXPECTED: &str = "a port number from 0 to 65535 or a \"low-high\" range";

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = PortRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PORT_EXPECTED)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                let port = u16::try_from(v).map_err(|_| {
                    E::custom(format!("invalid port {v}: expected a number from 0 to 65535"))
                })?;
                Ok(PortRange { low: port, high: port })
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                let parse = |s: &str| s.trim().parse::<u16>().ok();
                let (low, high) = match v.split_once('-') {
                    Some((low, high)) => (parse(low), parse(high)),
                    None => (parse(v), parse(v)),
                };
                let (Some(low), Some(high)) = (low, high) else {
                    return Err(E::custom(format!(
                        "invalid port range \"{v}\": expected {PORT_EXPECTED}"
                    )));
                };
                if low > high {
                    return Err(E::custom(format!(
                        "invalid port range \"{v}\": the low end is above the high end"
                    )));
                }
                Ok(PortRange { low, high })
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// An address or network (`192.0.2.7`, `192.0.2.0/24`, `2001:db8::/32`), or a named set
/// (`@blocklist`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Net {
    Net(IpNet),
    Set(String),
}

/// Parses an address or a CIDR network whose host bits are clear; the error says what
/// was expected.
pub fn parse_net(v: &str) -> Result<IpNet, String> {
    if let Ok(addr) = v.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net = v.parse::<IpNet>().map_err(|_| {
        format!(
            "invalid network \"{v}\": expected an IPv4 or IPv6 address or CIDR network such as \
             \"192.0.2.0/24\""
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "network \"{v}\" has host bits set: did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = Net;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an IPv4 or IPv6 address or CIDR network such as \"192.0.2.0/24\", or a set \
                     such as \"@blocklist\"",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Net, E> {
                if let Some(name) = v.strip_prefix('@') {
                    return Ok(Net::Set(name.to_string()));
                }
                parse_net(v).map(Net::Net).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

/// An ICMP type, 0–255.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IcmpType(u8);

impl<'de> Deserialize<'de> for IcmpType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = IcmpType;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ICMP type from 0 to 255")
            }

            // Checked here rather than after deserializing an integer, so the error
            // carries the span of the value itself.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IcmpType, E> {
                u8::try_from(v).map(IcmpType).map_err(|_| {
                    E::custom(format!("invalid ICMP type {v}: expected a number from 0 to 255"))
                })
            }
        }

        deserializer.deserialize_i64(Visitor)
    }
}

/// A list, or a single value written without brackets.
struct OneOrMany<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(de::value::I64Deserializer::new(v)).map(|t| OneOrMany(vec![t]))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::new(v)).map(|t| OneOrMany(vec![t]))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }

        deserializer.deserialize_any(Visitor(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    interfaces: Option<Spanned<OneOrMany<String>>>,
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    set: Vec<RawSet>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    name: Spanned<String>,
    #[serde(default)]
    files: Vec<Spanned<String>>,
    max_entries: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    action: DefaultAction,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    fragments: Fragments,
    #[serde(default = "drop_action")]
    unparsable: DefaultAction,
    #[serde(default)]
    i_know_this_blocks_ssh: bool,
}

/// Unparsable packets are dropped unless a policy says otherwise.
fn drop_action() -> DefaultAction {
    DefaultAction::Drop
}

/// The actions `[defaults]` takes: not `limit`, which needs a rule's rate.
#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DefaultAction {
    #[default]
    Pass,
    Drop,
}

impl From<DefaultAction> for Action {
    fn from(action: DefaultAction) -> Self {
        match action {
            DefaultAction::Pass => Self::Pass,
            DefaultAction::Drop => Self::Drop,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Action,
    mode: Option<Mode>,
    protocol: Option<Spanned<Protocol>>,
    dst_ports: Option<Spanned<OneOrMany<PortRange>>>,
    src_ports: Option<Spanned<OneOrMany<PortRange>>>,
    src: Option<Spanned<OneOrMany<Net>>>,
    dst: Option<Spanned<OneOrMany<Net>>>,
    icmp_types: Option<Spanned<OneOrMany<IcmpType>>>,
    tcp_flags: Option<Spanned<String>>,
    rate: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
    per: Option<Spanned<String>>,
}

/// One parsed file: its rules and, if it sets them, the defaults and interfaces with
/// where they were set.
pub struct ParsedFile {
    pub defaults: Option<(Defaults, Range<usize>)>,
    pub interfaces: Option<(Vec<String>, Range<usize>)>,
    pub sets: Vec<SetDef>,
    pub rules: Vec<PendingRule>,
}

/// Parses one policy file; `file` is only used in messages. `names` holds the rule names
/// of the files before this one (names are unique across a policy) and gets this file's.
pub fn parse_file(
    file: &Path,
    text: &str,
    names: &mut HashMap<String, Location>,
) -> Result<ParsedFile, Vec<Diagnostic>> {
    let diag = |span, message: String| Diagnostic::new(file.to_path_buf(), text, span, message);
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        vec![diag(span, e.message().trim_end().to_string())]
    })?;
    let mut diagnostics = Vec::new();
    let lines = LineIndex::new(text);
    let location = |span: Range<usize>| lines.location(file.to_path_buf(), span.start);

    let defaults = raw.defaults.map(|d| {
        let span = d.span();
        let d = d.into_inner();
        let defaults = Defaults {
            action: d.action.into(),
            mode: d.mode,
            fragments: d.fragments,
            unparsable: d.unparsable.into(),
            i_know_this_blocks_ssh: d.i_know_this_blocks_ssh,
        };
        (defaults, span)
    });
    let interfaces = raw.interfaces.map(|i| (i.span(), i.into_inner().0)).map(|(s, i)| (i, s));

    let mut pending = Vec::with_capacity(raw.rule.len());
    for raw in raw.rule {
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        if !valid_name(&name) {
            diagnostics.push(diag(
                name_span.clone(),
                format!(
                    "invalid rule name {name:?}: expected 1 to {MAX_NAME_LEN} letters, digits, \
                     '-', '_' or '.'"
                ),
            ));
        }
        let name_location = location(name_span.clone());
        if let Some(first) = names.get(&name) {
            diagnostics.push(diag(
                name_span.clone(),
                format!("duplicate rule name \"{name}\": first defined at {first}"),
            ));
        } else {
            names.insert(name.clone(), name_location.clone());
        }

        let (protocol, protocol_span) = match raw.protocol {
            Some(p) => (*p.get_ref(), Some(p.span())),
            None => (Protocol::Any, None),
        };
        let mut list = |field: &str, span: Option<Range<usize>>, empty: bool| {
            if let (Some(span), true) = (span, empty) {
                diagnostics.push(diag(
                    span,
                    format!(
                        "{field} is empty, so the rule could never match: list values, or leave \
                         {field} out to match any"
                    ),
                ));
            }
        };
        let dst_ports = non_empty(raw.dst_ports, |s, e| list("dst_ports", s, e));
        let src_ports = non_empty(raw.src_ports, |s, e| list("src_ports", s, e));
        let src = non_empty(raw.src, |s, e| list("src", s, e));
        let dst = non_empty(raw.dst, |s, e| list("dst", s, e));
        let icmp_types = non_empty(raw.icmp_types, |s, e| list("icmp_types", s, e));

        for (field, value) in [("dst_ports", &dst_ports), ("src_ports", &src_ports)] {
            if let (Some((span, _)), Protocol::Icmp | Protocol::Icmpv6) = (value, protocol) {
                diagnostics.push(diag(
                    span.clone(),
                    format!(
                        "{field} cannot be used with protocol \"{}\": ICMP has no ports (match \
                         ICMP messages with icmp_types)",
                        protocol.name()
                    ),
                ));
            }
        }
        if let Some((span, _)) = &icmp_types
            && !matches!(protocol, Protocol::Icmp | Protocol::Icmpv6)
        {
            diagnostics.push(diag(
                span.clone(),
                format!(
                    "icmp_types needs protocol = \"icmp\" or \"icmpv6\", not \"{}\"",
                    protocol.name()
                ),
            ));
        }

        let tcp_flags = raw.tcp_flags.and_then(|f| {
            let span = f.span();
            let parsed = match TcpFlags::parse(f.get_ref()) {
                Ok(flags) => Some(flags),
                Err(message) => {
                    diagnostics.push(diag(span.clone(), message));
                    None
                }
            };
            if protocol != Protocol::Tcp {
                let given = match protocol_span {
                    Some(_) => format!("not \"{}\"", protocol.name()),
                    None => "and the rule names no protocol".into(),
                };
                diagnostics.push(diag(
                    span,
                    format!("tcp_flags needs protocol = \"tcp\", {given}: only TCP has flags"),
                ));
            }
            parsed
        });

        let limit = rule_limit(raw.action, &name_span, raw.rate, raw.burst, raw.per)
            .unwrap_or_else(|errors| {
                diagnostics.extend(errors.into_iter().map(|(span, m)| diag(span, m)));
                None
            });

        // The networks of an address field (empty when it names sets only) and the sets
        // it names, with where the field is written.
        let mut set_refs = Vec::new();
        let mut nets = |v: Option<(Range<usize>, Vec<Net>)>, field: Field| {
            v.map(|(span, items)| {
                let mut nets = Vec::new();
                for item in items {
                    match item {
                        Net::Net(net) => nets.push(net),
                        Net::Set(name) => {
                            set_refs.push(SetRef { name, field, location: location(span.clone()) })
                        }
                    }
                }
                nets
            })
        };
        let rule = Rule {
            name,
            action: raw.action,
            mode: raw.mode.unwrap_or_default(),
            protocol,
            dst_ports: dst_ports.map(|(_, v)| v),
            src_ports: src_ports.map(|(_, v)| v),
            src: nets(src, Field::Src),
            dst: nets(dst, Field::Dst),
            src_sets: Vec::new(),
            dst_sets: Vec::new(),
            icmp_types: icmp_types.map(|(_, v)| v.into_iter().map(|t| t.0).collect()),
            tcp_flags,
            limit,
            location: name_location,
        };
        if let Some(reason) = never_matches(&rule, &set_refs) {
            diagnostics.push(diag(
                protocol_span.unwrap_or(name_span),
                format!("rule \"{}\" can never match: {reason}", rule.name),
            ));
        }
        pending.push(PendingRule { rule, explicit_mode: raw.mode.is_some(), set_refs });
    }
    let mut sets = Vec::new();
    for raw in raw.set {
        match parse_set(file, raw, &location) {
            Ok(set) => sets.push(set),
            Err((span, message)) => diagnostics.push(diag(span, message)),
        }
    }
    if diagnostics.is_empty() {
        Ok(ParsedFile { defaults, interfaces, sets, rules: pending })
    } else {
        Err(diagnostics)
    }
}

/// The limit of a rule: `rate` (with `burst` and `per`) exactly when the action is
/// `limit`. Errors with where they are written.
#[allow(clippy::type_complexity)]
fn rule_limit(
    action: Action,
    name_span: &Range<usize>,
    rate: Option<Spanned<String>>,
    burst: Option<Spanned<i64>>,
    per: Option<Spanned<String>>,
) -> Result<Option<Limit>, Vec<(Range<usize>, String)>> {
    if action != Action::Limit {
        let stray = [
            ("rate", rate.map(|r| r.span())),
            ("burst", burst.map(|b| b.span())),
            ("per", per.map(|p| p.span())),
        ];
        let errors: Vec<_> = stray
            .into_iter()
            .filter_map(|(key, span)| {
                span.map(|span| {
                    let message = format!(
                        "{key} needs action = \"limit\", not \"{}\": only a limit rule has a \
                         rate",
                        action.name()
                    );
                    (span, message)
                })
            })
            .collect();
        return if errors.is_empty() { Ok(None) } else { Err(errors) };
    }
    let mut errors = Vec::new();
    let rate = match rate {
        None => {
            errors.push((
                name_span.clone(),
                "action = \"limit\" needs a rate, such as rate = \"200/s\" (packets), \
                 \"20mbit/s\" or \"5MB/s\" (bytes)"
                    .to_string(),
            ));
            None
        }
        Some(rate) => Rate::parse(rate.get_ref()).map_err(|m| errors.push((rate.span(), m))).ok(),
    };
    let per = match per {
        None => Some(Per::Source { v4: 32, v6: 128 }),
        Some(per) => Per::parse(per.get_ref()).map_err(|m| errors.push((per.span(), m))).ok(),
    };
    let (Some(rate), Some(per)) = (rate, per) else { return Err(errors) };
    let burst_span = burst.as_ref().map(|b| b.span());
    match Limit::new(rate, burst.map(|b| *b.get_ref()), per) {
        Ok(limit) => Ok(Some(limit)),
        Err(message) => Err(vec![(burst_span.unwrap_or_else(|| name_span.clone()), message)]),
    }
}

/// A list field with its span, or `None` when absent; an empty list is reported through
/// `report(span, is_empty)` and treated as absent.
fn non_empty<T>(
    value: Option<Spanned<OneOrMany<T>>>,
    mut report: impl FnMut(Option<Range<usize>>, bool),
) -> Option<(Range<usize>, Vec<T>)> {
    let value = value?;
    let span = value.span();
    let items = value.into_inner().0;
    report(Some(span.clone()), items.is_empty());
    (!items.is_empty()).then_some((span, items))
}

/// A rule whose mode may still come from the policy's defaults, and whose sets are still
/// to be found among the policy's.
pub struct PendingRule {
    pub rule: Rule,
    pub explicit_mode: bool,
    pub set_refs: Vec<SetRef>,
}

/// The address fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Src,
    Dst,
}

/// A set named in a rule's `src` or `dst`.
pub struct SetRef {
    pub name: String,
    pub field: Field,
    /// Where the field is written.
    pub location: Location,
}

/// Entries a set holds unless it says otherwise.
pub const DEFAULT_SET_ENTRIES: u32 = 1 << 20;

fn parse_set(
    file: &Path,
    raw: RawSet,
    location: &impl Fn(Range<usize>) -> Location,
) -> Result<SetDef, (Range<usize>, String)> {
    let name_span = raw.name.span();
    let name = raw.name.into_inner();
    if !valid_name(&name) {
        return Err((
            name_span,
            format!(
                "invalid set name {name:?}: expected 1 to {MAX_NAME_LEN} letters, digits, '-', \
                 '_' or '.'"
            ),
        ));
    }
    let max_entries = match raw.max_entries {
        None => DEFAULT_SET_ENTRIES,
        Some(m) => {
            let limit = policy_common::MAX_SET_ENTRIES;
            match u32::try_from(*m.get_ref()) {
                Ok(n) if (1..=limit).contains(&n) => n,
                _ => {
                    return Err((
                        m.span(),
                        format!(
                            "invalid max_entries {}: expected a number from 1 to {limit}",
                            m.get_ref()
                        ),
                    ));
                }
            }
        }
    };
    let timeout = match raw.timeout {
        None => Duration::ZERO,
        Some(t) => parse_duration(t.get_ref()).map_err(|e| (t.span(), e))?,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let files = raw.files.into_iter().map(|f| base.join(f.into_inner())).collect();
    Ok(SetDef {
        id: set_id(&name),
        name,
        files,
        max_entries,
        timeout,
        entries: Vec::new(),
        location: location(name_span),
    })
}

/// A duration such as `"90s"`, `"10m"`, `"1h 30m"` or `"7d"`; `"0"` is none.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "invalid duration \"{text}\": {e}; expected a number and a unit such as \"90s\", \
             \"10m\", \"1h 30m\" or \"7d\", or \"0\" for none"
        )
    })
}

/// Why a rule's fields contradict each other, if they do.
fn never_matches(rule: &Rule, set_refs: &[SetRef]) -> Option<String> {
    let family = |nets: &Option<Vec<IpNet>>| {
        nets.as_ref().map(|nets| {
            (
                nets.iter().any(|n| matches!(n, IpNet::V4(_))),
                nets.iter().any(|n| matches!(n, IpNet::V6(_))),
            )
        })
    };
    let (mut v4, mut v6) = (true, true);
    let mut why = Vec::new();
    match rule.protocol {
        Protocol::Icmp => {
            v6 = false;
            why.push("protocol \"icmp\" is IPv4 only");
        }
        Protocol::Icmpv6 => {
            v4 = false;
            why.push("protocol \"icmpv6\" is IPv6 only");
        }
        _ => {}
    }
    for (field, nets) in [("src", &rule.src), ("dst", &rule.dst)] {
        let named = if field == "src" { Field::Src } else { Field::Dst };
        // A set may hold addresses of either version.
        if set_refs.iter().any(|r| r.field == named) {
            continue;
        }
        if let Some((has_v4, has_v6)) = family(nets) {
            v4 &= has_v4;
            v6 &= has_v6;
            why.push(match (field, has_v4, has_v6) {
                ("src", true, false) => "src lists only IPv4 networks",
                ("src", false, true) => "src lists only IPv6 networks",
                ("dst", true, false) => "dst lists only IPv4 networks",
                ("dst", false, true) => "dst lists only IPv6 networks",
                _ => continue,
            });
        }
    }
    (!v4 && !v6).then(|| why.join(" but "))
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
