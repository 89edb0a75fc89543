//! Policies: TOML text → validated [`Policy`] → compiled [`Ruleset`].
//!
//! Pure code: no aya, no kernel, no file system (the daemon's `reload::files` reads the
//! files and hands their text to [`parse`]), so every step is unit-tested without root.
//!
//! Semantics: rules are evaluated in order and the first that matches decides; a rule's
//! fields combine with AND, the values of one field with OR; a field left out matches
//! anything. When no rule matches, the default action applies.
#![forbid(unsafe_code)]

mod compile;
mod diagnostic;
pub mod limit;
pub mod reference;
mod schema;
mod shadow;
mod v4_table;
mod v6_table;

use std::{
    collections::HashMap,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

pub(crate) use compile::BitmapPool;
pub use compile::{PortField, PortRows, Prefixes, Ruleset, compile};
pub use diagnostic::{Diagnostic, Location};
use ipnet::IpNet;
use policy_common::{L4Class, MAX_PREFIXES, MAX_RULES, MAX_SET_REFS};
pub use schema::{
    Action, DEFAULT_SET_ENTRIES, Field, Fragments, Mode, PortRange, Protocol, parse_duration,
    parse_net,
};
use sha2::{Digest as _, Sha256};
pub use v4_table::V4Table;
pub use v6_table::V6Table;

/// A validated policy: the rules of one file, or of every `*.toml` file of a directory
/// in file-name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The files the rules came from, in the order they were read.
    pub sources: Vec<PathBuf>,
    /// Interfaces the policy names for itself (`interfaces = [...]`), if any.
    pub interfaces: Vec<String>,
    pub defaults: Defaults,
    /// Rules in evaluation order: the first that matches decides.
    pub rules: Vec<Rule>,
    /// The named sets (`[[set]]`), in the order they are defined.
    pub sets: Vec<SetDef>,
    /// Problems that do not stop the policy from being applied (shadowed rules).
    pub warnings: Vec<Diagnostic>,
    /// [`content_hash`] of the files as read.
    pub hash: String,
}

/// The `[defaults]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// What happens to a packet no rule matches.
    pub action: Action,
    /// The mode of the default action and of rules that set none.
    pub mode: Mode,
    pub fragments: Fragments,
    /// What happens to an IP packet whose transport header cannot be located and read
    /// whole; drop unless the policy says otherwise (fail closed). Monitor mode does not
    /// change it.
    pub unparsable: Action,
    /// The operator accepts that this policy drops SSH from everywhere (see `safety`).
    pub i_know_this_blocks_ssh: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            action: Action::Pass,
            mode: Mode::Enforce,
            fragments: Fragments::Rules,
            unparsable: Action::Drop,
            i_know_this_blocks_ssh: false,
        }
    }
}

/// A named set of addresses and networks (`[[set]]`), which rules name as `@name` in
/// `src` or `dst`. Its contents live in the kernel: the entries of its `files`, written
/// on every apply, and entries added at run time (`xdp-policy set add`), which outlive
/// reloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDef {
    pub name: String,
    /// The set's id in the kernel's keys: [`set_id`] of the name.
    pub id: u32,
    /// Files of addresses and networks, one a line (relative paths are taken from the
    /// directory of the policy file that defines the set).
    pub files: Vec<PathBuf>,
    /// Most entries the set may hold, file and run-time ones together.
    pub max_entries: u32,
    /// How long a run-time entry stays unless its command says otherwise; zero: for good.
    pub timeout: Duration,
    /// What `files` list, once read ([`parse_set_file`]); sorted, without duplicates.
    pub entries: Vec<IpNet>,
    /// Where the set's `name` is written.
    pub location: Location,
}

/// The id of the set called `name` in the kernel's set keys: the first 32 bits of the
/// SHA-256 of the name, so that every interface and every daemon version agrees on it
/// without a registry. [`parse`] refuses a policy whose set names share an id.
pub fn set_id(name: &str) -> u32 {
    let digest = Sha256::digest(name.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Reads the text of a set file: one address or CIDR network a line; `#` or `;` starts
/// a comment (plain lists, FireHOL `.netset` files and Spamhaus DROP lists load as they
/// are). Every bad line is reported with its line and column.
pub fn parse_set_file(file: &Path, text: &str) -> Result<Vec<IpNet>, Vec<Diagnostic>> {
    let mut nets = Vec::new();
    let mut diagnostics = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        match parse_set_line(line) {
            Ok(Some(net)) => nets.push(net),
            Ok(None) => {}
            Err((at, len, message)) => diagnostics.push(Diagnostic::new(
                file.to_path_buf(),
                text,
                offset + at..offset + at + len,
                message,
            )),
        }
        offset += line.len();
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    nets.sort_unstable();
    nets.dedup();
    Ok(nets)
}

/// One line of a set file: its network, `None` for a blank or comment line, or where
/// the bad value starts in the line, its length, and what is wrong.
pub fn parse_set_line(line: &str) -> Result<Option<IpNet>, (usize, usize, String)> {
    let content = line.split(['#', ';']).next().unwrap_or_default();
    let trimmed = content.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let at = content.len() - content.trim_start().len();
    parse_net(trimmed).map(Some).map_err(|message| (at, trimmed.len(), message))
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    /// The rule's own mode, or the policy's default mode.
    pub mode: Mode,
    pub protocol: Protocol,
    /// `None` matches any port. For ICMP the types are in `icmp_types` instead.
    pub dst_ports: Option<Vec<PortRange>>,
    pub src_ports: Option<Vec<PortRange>>,
    /// The networks of `src`, `None` when the rule does not constrain the source; empty
    /// when `src` names sets only.
    pub src: Option<Vec<IpNet>>,
    pub dst: Option<Vec<IpNet>>,
    /// The sets `src` names (`@name`), by name: an address in one of them is admitted.
    pub src_sets: Vec<String>,
    pub dst_sets: Vec<String>,
    pub icmp_types: Option<Vec<u8>>,
    /// TCP flags the rule matches (`protocol = "tcp"` only); `None`: any.
    pub tcp_flags: Option<TcpFlags>,
    /// The rate limit of an `action = "limit"` rule (`None` for every other).
    pub limit: Option<limit::Limit>,
    /// Where the rule's `name` is written.
    pub location: Location,
}

/// A TCP flags condition: the flags of `mask` must be as in `value` (set or clear), the
/// others do not matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpFlags {
    pub mask: u8,
    pub value: u8,
}

impl TcpFlags {
    /// Whether a packet with this flags byte matches.
    pub fn admits(self, flags: u8) -> bool {
        flags & self.mask == self.value
    }

    /// Parses `tcp_flags`: `"syn,!ack"` (listed flags set, `!`-flags clear, the others
    /// any), or `"=syn,ack"` (exactly these set, all others clear; `"="` alone: none set).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (exact, list) = match text.strip_prefix('=') {
            Some(rest) => (true, rest.trim()),
            None => (false, text),
        };
        if list.is_empty() && !exact {
            return Err(
                "tcp_flags is empty: list flags (\"syn,!ack\"), or leave tcp_flags out to \
                 match any"
                    .into(),
            );
        }
        let (mut set, mut clear) = (0u8, 0u8);
        for item in list.split(',').filter(|_| !list.is_empty()) {
            let item = item.trim().to_ascii_lowercase();
            let (negated, name) = match item.strip_prefix('!') {
                Some(name) => (true, name.trim()),
                None => (false, item.as_str()),
            };
            if negated && exact {
                return Err(format!(
                    "\"!{name}\" in an exact tcp_flags (\"=...\"): list only the flags that \
                     are set, every other one must be clear"
                ));
            }
            let Some(&(_, bit)) = policy_common::tcp_flags::NAMES.iter().find(|(n, _)| *n == name)
            else {
                return Err(format!(
                    "unknown TCP flag {name:?}: expected fin, syn, rst, psh, ack, urg, ece or \
                     cwr, each maybe with a leading ! (clear), separated by commas"
                ));
            };
            if negated {
                clear |= bit
            } else {
                set |= bit
            }
            if set & clear & bit != 0 {
                return Err(format!("TCP flag {name:?} is both set and cleared"));
            }
        }
        Ok(if exact {
            Self { mask: u8::MAX, value: set }
        } else {
            Self { mask: set | clear, value: set }
        })
    }
}

impl std::fmt::Display for TcpFlags {
    /// The form `parse` reads back: exact when every flag is decided.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = policy_common::tcp_flags::NAMES;
        if self.mask == u8::MAX {
            let set: Vec<&str> =
                names.iter().filter(|(_, b)| self.value & b != 0).map(|(n, _)| *n).collect();
            return write!(f, "={}", set.join(","));
        }
        let items: Vec<String> = names
            .iter()
            .filter(|(_, b)| self.mask & b != 0)
            .map(|(n, b)| if self.value & b != 0 { (*n).to_string() } else { format!("!{n}") })
            .collect();
        write!(f, "{}", items.join(","))
    }
}

impl Rule {
    /// Whether the rule admits packets of this transport class. Port fields imply TCP or
    /// UDP, since only they have ports.
    pub fn admits(&self, class: L4Class) -> bool {
        let has_ports = self.dst_ports.is_some() || self.src_ports.is_some();
        match self.protocol {
            Protocol::Tcp => class == L4Class::Tcp,
            Protocol::Udp => class == L4Class::Udp,
            Protocol::Icmp => class == L4Class::Icmp,
            Protocol::Icmpv6 => class == L4Class::Icmpv6,
            Protocol::Any if has_ports => matches!(class, L4Class::Tcp | L4Class::Udp),
            Protocol::Any => true,
        }
    }

    /// The "destination port" field of the classifier: ports for TCP/UDP, ICMP types for
    /// ICMP; `None` when the rule does not constrain it.
    pub fn dport_values(&self) -> Option<Vec<PortRange>> {
        match (&self.dst_ports, &self.icmp_types) {
            (Some(ports), _) => Some(ports.clone()),
            (None, Some(types)) => Some(
                types
                    .iter()
                    .map(|t| PortRange { low: u16::from(*t), high: u16::from(*t) })
                    .collect(),
            ),
            (None, None) => None,
        }
    }

    /// A key that changes whenever anything that decides what the rule counts changes:
    /// rule counters survive reloads that keep it. A SHA-256 (hex, 128 bits kept) over
    /// everything but the rule's position and file, stable across daemon versions that
    /// keep the policy format.
    pub fn identity(&self) -> String {
        let mut text = format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.name,
            self.action,
            self.mode,
            self.protocol,
            self.dst_ports,
            self.src_ports,
            self.src,
            self.dst,
            self.icmp_types
        );
        // Only rules that name sets (match flags) add these, so other rules keep their
        // identity.
        if !self.src_sets.is_empty() || !self.dst_sets.is_empty() {
            text.push_str(&format!("|{:?}|{:?}", self.src_sets, self.dst_sets));
        }
        if let Some(flags) = self.tcp_flags {
            text.push_str(&format!("|tcp_flags {:#04x}/{:#04x}", flags.value, flags.mask));
        }
        if let Some(limit) = &self.limit {
            let rate = &limit.rate;
            text.push_str(&format!(
                "|limit {}/{}ns {:?} burst {} per {}",
                rate.tokens, rate.period_ns, rate.unit, limit.burst, limit.per
            ));
        }
        let digest = Sha256::digest(text.as_bytes());
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why a policy's text was not accepted: every problem of every file, each with its
/// file, line and column.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}", render_all(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.to_string());
    }
    let n = diagnostics.len();
    out.push_str(&format!("{n} error{}", if n == 1 { "" } else { "s" }));
    out
}

/// SHA-256 (hex) over a policy's files, names and contents in order: what `status` shows
/// so an operator can tell which version of the files is in force.
pub fn content_hash<'a>(sources: impl IntoIterator<Item = (&'a Path, &'a str)>) -> String {
    let mut hasher = Sha256::new();
    for (file, text) in sources {
        hasher.update(file.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses and validates policy texts (`(file name for messages, text)`), merged in the
/// order given.
pub fn parse<'a>(
    sources: impl IntoIterator<Item = (&'a Path, &'a str)> + Clone,
) -> Result<Policy, PolicyError> {
    let hash = content_hash(sources.clone());
    let mut diagnostics = Vec::new();
    let mut names = HashMap::new();
    let mut files = Vec::new();
    let mut defaults: Option<(Defaults, Location)> = None;
    let mut interfaces: Option<(Vec<String>, Location)> = None;
    let mut pending = Vec::new();
    let mut sets: Vec<SetDef> = Vec::new();
    for (file, text) in sources {
        files.push(file.to_path_buf());
        match schema::parse_file(file, text, &mut names) {
            Ok(parsed) => {
                once(&mut defaults, parsed.defaults, "[defaults]", file, text, &mut diagnostics);
                once(
                    &mut interfaces,
                    parsed.interfaces,
                    "interfaces",
                    file,
                    text,
                    &mut diagnostics,
                );
                pending.extend(parsed.rules);
                for set in parsed.sets {
                    if let Some(first) = sets.iter().find(|s| s.name == set.name) {
                        diagnostics.push(Diagnostic {
                            message: format!(
                                "duplicate set name \"{}\": first defined at {}",
                                set.name, first.location
                            ),
                            location: set.location,
                            snippet: String::new(),
                        });
                    } else if let Some(other) = sets.iter().find(|s| s.id == set.id) {
                        diagnostics.push(Diagnostic {
                            message: format!(
                                "set \"{}\" has the same id as set \"{}\" at {}: rename one",
                                set.name, other.name, other.location
                            ),
                            location: set.location,
                            snippet: String::new(),
                        });
                    } else {
                        sets.push(set);
                    }
                }
            }
            Err(mut errors) => diagnostics.append(&mut errors),
        }
    }
    let defaults = defaults.map(|(d, _)| d).unwrap_or_default();
    let rules: Vec<Rule> = pending
        .into_iter()
        .map(|p| {
            let mut rule = p.rule;
            if !p.explicit_mode {
                rule.mode = defaults.mode;
            }
            for r in p.set_refs {
                if !sets.iter().any(|s| s.name == r.name) {
                    diagnostics.push(Diagnostic {
                        location: r.location,
                        message: format!(
                            "rule \"{}\" names set \"@{}\", which the policy does not define: \
                             add a [[set]] with name = \"{}\"",
                            rule.name, r.name, r.name
                        ),
                        snippet: String::new(),
                    });
                    continue;
                }
                let names = match r.field {
                    Field::Src => &mut rule.src_sets,
                    Field::Dst => &mut rule.dst_sets,
                };
                if !names.contains(&r.name) {
                    names.push(r.name);
                }
            }
            rule
        })
        .collect();
    diagnostics.extend(check_set_refs(&rules));
    diagnostics.extend(check_limits(&rules, &files));
    if !diagnostics.is_empty() {
        return Err(PolicyError::Invalid(diagnostics));
    }
    let warnings = shadow::shadowed(&rules);
    Ok(Policy {
        sources: files,
        interfaces: interfaces.map(|(i, _)| i).unwrap_or_default(),
        defaults,
        rules,
        sets,
        warnings,
        hash,
    })
}

/// The program looks an address up in at most [`MAX_SET_REFS`] sets per field.
fn check_set_refs(rules: &[Rule]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for (field, names) in [
        ("src", rules.iter().map(|r| (r, &r.src_sets)).collect::<Vec<_>>()),
        ("dst", rules.iter().map(|r| (r, &r.dst_sets)).collect()),
    ] {
        let mut seen: Vec<&String> = Vec::new();
        for (rule, sets) in names {
            for name in sets {
                if !seen.contains(&name) {
                    seen.push(name);
                    if seen.len() == MAX_SET_REFS + 1 {
                        diagnostics.push(Diagnostic {
                            location: rule.location.clone(),
                            message: format!(
                                "too many sets in {field}: the rules of a policy may name at most \
                                 {MAX_SET_REFS} different sets in {field}, and rule \"{}\" names \
                                 one more",
                                rule.name
                            ),
                            snippet: String::new(),
                        });
                    }
                }
            }
        }
    }
    diagnostics
}

/// `[defaults]` and `interfaces` may be set in one file of a policy only.
fn once<T>(
    slot: &mut Option<(T, Location)>,
    value: Option<(T, Range<usize>)>,
    what: &str,
    file: &Path,
    text: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let Some((value, span)) = value else { return };
    if let Some((_, first)) = slot {
        diagnostics.push(Diagnostic::new(
            file.to_path_buf(),
            text,
            span,
            format!("{what} is already set at {first}: a policy sets it in one file only"),
        ));
    } else {
        *slot = Some((value, Location::of(file.to_path_buf(), text, span.start)));
    }
}

/// The kernel's map sizes, checked before anything is compiled.
fn check_limits(rules: &[Rule], files: &[PathBuf]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    if let Some(rule) = rules.get(MAX_RULES) {
        diagnostics.push(Diagnostic {
            location: rule.location.clone(),
            message: format!(
                "too many rules: the policy has {}, the limit is {MAX_RULES}; this is the first \
                 rule past the limit",
                rules.len()
            ),
            snippet: String::new(),
        });
    }
    // Networks per address field and IP version: (src v4, src v6, dst v4, dst v6).
    let mut counts = [0usize; 4];
    let names = ["IPv4 src", "IPv6 src", "IPv4 dst", "IPv6 dst"];
    for rule in rules {
        let nets = rule
            .src
            .iter()
            .flatten()
            .map(|n| (0, n))
            .chain(rule.dst.iter().flatten().map(|n| (2, n)));
        let mut over = [false; 4];
        for (base, net) in nets {
            let i = base + usize::from(matches!(net, IpNet::V6(_)));
            counts[i] += 1;
            over[i] = counts[i] == MAX_PREFIXES as usize + 1;
        }
        for (i, _) in over.iter().enumerate().filter(|(_, o)| **o) {
            diagnostics.push(Diagnostic {
                location: rule.location.clone(),
                message: format!(
                    "too many {} networks: the limit is {MAX_PREFIXES} per policy, and this rule \
                     goes past it",
                    names[i]
                ),
                snippet: String::new(),
            });
        }
    }
    // Of the rules within the limit only: the others are already an error.
    let rules = &rules[..rules.len().min(MAX_RULES)];
    for (field, values) in [
        ("dst_ports and icmp_types", rules.iter().map(Rule::dport_values).collect::<Vec<_>>()),
        ("src_ports", rules.iter().map(|r| r.src_ports.clone()).collect()),
    ] {
        let classes = compile::count_port_classes(&values);
        if classes > policy_common::MAX_PORT_CLASSES as usize {
            diagnostics.push(Diagnostic {
                location: Location {
                    file: files.first().cloned().unwrap_or_default(),
                    line: 1,
                    column: 1,
                },
                message: format!(
                    "the policy's {field} cut the port space into {classes} distinct classes; the \
                     limit is {}",
                    policy_common::MAX_PORT_CLASSES
                ),
                snippet: String::new(),
            });
        }
    }
    diagnostics
}

#[cfg(test)]
mod tests;
