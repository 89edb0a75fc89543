//! The TOML policy format: raw serde types (unknown fields rejected) and their checks.

use std::{collections::HashMap, fmt, path::Path};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

use super::{Diagnostic, Location, Rule};

/// Longest accepted rule name; names end up in logs and metric labels.
const MAX_NAME_LEN: usize = 64;

/// What a matching rule does with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pass,
    Drop,
}

/// Which transport protocols a rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// TCP and UDP.
    #[default]
    Any,
}

impl Protocol {
    pub fn matches_tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Any)
    }

    pub fn matches_udp(self) -> bool {
        matches!(self, Self::Udp | Self::Any)
    }
}

/// An inclusive range of ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Action,
    #[serde(default)]
    protocol: Protocol,
    dst_ports: Option<Spanned<PortList>>,
}

/// `dst_ports`: a list of ports and ranges, or a single one written without brackets.
struct PortList(Vec<PortRange>);

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> de::Visitor<'de> for Visitor {
            type Value = PortList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of ports, or {PORT_EXPECTED}")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortList, E> {
                Ok(PortList(vec![PortRange::deserialize(de::value::I64Deserializer::new(v))?]))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortList, E> {
                Ok(PortList(vec![PortRange::deserialize(de::value::StrDeserializer::new(v))?]))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PortList, A::Error> {
                let mut ports = Vec::new();
                while let Some(port) = seq.next_element()? {
                    ports.push(port);
                }
                Ok(PortList(ports))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// Parses one policy file; `file` is only used in messages. `names` holds the rule names
/// of the files before this one (names are unique across a policy) and gets this file's.
pub fn parse_file(
    file: &Path,
    text: &str,
    names: &mut HashMap<String, Location>,
) -> Result<Vec<Rule>, Vec<Diagnostic>> {
    let diag = |span, message: String| Diagnostic::new(file.to_path_buf(), text, span, message);
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        vec![diag(span, e.message().trim_end().to_string())]
    })?;
    let mut diagnostics = Vec::new();
    let mut rules = Vec::with_capacity(raw.rule.len());
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
        let dst_ports = match raw.dst_ports {
            Some(ports) if ports.get_ref().0.is_empty() => {
                diagnostics.push(diag(
                    ports.span(),
                    "dst_ports is empty, so the rule could never match: list ports, or leave \
                     dst_ports out to match every port"
                        .into(),
                ));
                None
            }
            other => other.map(|ports| ports.into_inner().0),
        };
        let location = Location::of(file.to_path_buf(), text, name_span.start);
        if let Some(first) = names.get(&name) {
            diagnostics.push(diag(
                name_span,
                format!("duplicate rule name \"{name}\": first defined at {first}"),
            ));
        } else {
            names.insert(name.clone(), location.clone());
        }
        rules.push(Rule { name, action: raw.action, protocol: raw.protocol, dst_ports, location });
    }
    if diagnostics.is_empty() { Ok(rules) } else { Err(diagnostics) }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
