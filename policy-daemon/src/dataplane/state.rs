//! The per-interface state file, `<state_dir>/<iface>.json`: what `status`, `explain` and
//! a restarted daemon need to know beyond the pinned maps: which policy (path, content
//! hash, generation, when), the attach mode, and each rule's counter slot and identity.
//! Written after every apply, atomically (a temporary file renamed over the old one).

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use policy_common::{MAX_RULES, RULE_COUNTER_SLOTS};
use serde::{Deserialize, Serialize};

use super::{AttachMode, apply::RuleSlot};
use crate::policy::{Action, Mode};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub iface: String,
    pub policy: PathBuf,
    /// SHA-256 of the policy files as applied.
    pub policy_hash: String,
    /// Applies since the filter was first attached (adoptions continue the count).
    pub generation: u64,
    /// When the ruleset in force was applied, seconds since the Unix epoch.
    pub applied_at: u64,
    pub attach_mode: AttachMode,
    /// Whether the interface existed at the last update (the daemon re-attaches when a
    /// vanished interface comes back).
    #[serde(default = "present")]
    pub interface_present: bool,
    pub rules: Vec<RuleState>,
    /// The daemon that wrote this (0: unknown, from an older version).
    #[serde(default)]
    pub pid: u32,
    /// The version of that daemon (empty: one older than 0.2.0).
    #[serde(default)]
    pub version: String,
    /// The last audit of the kernel's maps against the policy, if any ran yet.
    #[serde(default)]
    pub audit: Option<Audit>,
    /// The policy's named sets: what `xdp-policy set` needs to change them, whether or
    /// not a daemon runs.
    #[serde(default)]
    pub sets: Vec<SetState>,
}

/// A named set of the policy in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    pub name: String,
    /// The id in the `SETS` map's keys (`policy::set_id` of the name).
    pub id: u32,
    pub max_entries: u32,
    /// Expiry of run-time entries added without a timeout, milliseconds; 0: none.
    pub timeout_ms: u64,
    /// Entries of its files.
    pub file_entries: usize,
}

/// What the daemon's last audit found (see `dataplane::apply::Generations::audit`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// When it began, milliseconds since the Unix epoch; `status --verify` waits for an
    /// audit that began after it asked.
    pub at_ms: u64,
    /// Audits since the daemon started.
    pub count: u64,
    /// Map → entries that differed from the policy in force (empty: none did).
    pub drift: BTreeMap<String, u64>,
    /// Whether the drift was repaired (the policy written whole and flipped to).
    pub repaired: bool,
    /// Why the audit or the repair failed, if it did.
    pub error: Option<String>,
    /// Entries found differing by every audit since the daemon started.
    pub drift_total: u64,
}

impl Audit {
    /// Entries that differed in this audit.
    pub fn drift_entries(&self) -> u64 {
        self.drift.values().sum()
    }
}

/// A rule in force: what it does, and where it counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleState {
    pub name: String,
    pub action: Action,
    pub mode: Mode,
    /// Index of the rule's counters in the pinned `RULE_COUNTERS` map.
    pub slot: u32,
    /// `policy::Rule::identity`: the slot stays with the rule while this is unchanged.
    pub identity: String,
}

impl RuleState {
    /// What a daemon adopting the maps needs of the rule.
    pub fn slot(&self) -> RuleSlot {
        RuleSlot { name: self.name.clone(), identity: self.identity.clone(), slot: self.slot }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: not a state file of this version of xdp-policy", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: damaged: {damage}", path.display())]
    Damaged { path: PathBuf, damage: Damage },
}

/// What makes a state file that parses unusable: nothing in it is trusted then.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Damage {
    #[error("it describes interface {found:?}, not {expected:?}")]
    Interface { found: String, expected: String },
    #[error("the policy hash is not 64 hex digits")]
    Hash,
    #[error("{0} rules, more than a policy has ({MAX_RULES} at most)")]
    TooManyRules(usize),
    #[error("rule {rule:?} has counter slot {slot}, past the last ({})", RULE_COUNTER_SLOTS - 1)]
    Slot { rule: String, slot: u32 },
    #[error("counter slot {slot} is given to two rules")]
    SharedSlot { slot: u32 },
}

impl State {
    pub fn path(state_dir: &Path, iface: &str) -> PathBuf {
        state_dir.join(format!("{iface}.json"))
    }

    /// The state of `iface`, or `None` if there is none. A file that does not parse, or
    /// that says impossible things ([`Damage`]), is an error: callers ignore it (with a
    /// warning) rather than trust any of it.
    pub fn read(state_dir: &Path, iface: &str) -> Result<Option<Self>, StateError> {
        let path = Self::path(state_dir, iface);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StateError::Io { path, error }),
        };
        Self::parse(&path, iface, &text).map(Some)
    }

    /// Parses and checks the state file text of `iface` (`path` is for messages).
    pub fn parse(path: &Path, iface: &str, text: &str) -> Result<Self, StateError> {
        let state: Self = serde_json::from_str(text)
            .map_err(|source| StateError::Format { path: path.to_path_buf(), source })?;
        state.damage(iface).map_or(Ok(state), |damage| {
            Err(StateError::Damaged { path: path.to_path_buf(), damage })
        })
    }

    /// What is wrong with this state as the state of `iface`, if anything.
    fn damage(&self, iface: &str) -> Option<Damage> {
        if self.iface != iface {
            return Some(Damage::Interface { found: self.iface.clone(), expected: iface.into() });
        }
        let hex = |c: char| c.is_ascii_hexdigit();
        if self.policy_hash.len() != 64 || !self.policy_hash.chars().all(hex) {
            return Some(Damage::Hash);
        }
        if self.rules.len() > MAX_RULES {
            return Some(Damage::TooManyRules(self.rules.len()));
        }
        let mut slots = std::collections::BTreeSet::new();
        for rule in &self.rules {
            if rule.slot >= RULE_COUNTER_SLOTS {
                return Some(Damage::Slot { rule: rule.name.clone(), slot: rule.slot });
            }
            if !slots.insert(rule.slot) {
                return Some(Damage::SharedSlot { slot: rule.slot });
            }
        }
        None
    }

    pub fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        let path = Self::path(state_dir, &self.iface);
        let io_err = |error| StateError::Io { path: path.clone(), error };
        fs::create_dir_all(state_dir).map_err(io_err)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|source| StateError::Format { path: path.clone(), source })?;
        fs::write(&tmp, text).map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)
    }

    pub fn remove(state_dir: &Path, iface: &str) -> Result<(), StateError> {
        let path = Self::path(state_dir, iface);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::Io { path, error: e }),
            _ => Ok(()),
        }
    }
}

fn present() -> bool {
    true
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("xdp-policy-state-{}", std::process::id()));
        let state = State {
            iface: "eth0".into(),
            policy: "/etc/xdp-policy/policies.d".into(),
            policy_hash: "ab".repeat(32),
            generation: 7,
            applied_at: 1_790_000_000,
            attach_mode: AttachMode::Native,
            interface_present: true,
            pid: 4242,
            version: "0.2.0".into(),
            audit: Some(Audit {
                at_ms: 1_790_000_000_250,
                count: 3,
                drift: BTreeMap::from([("RULES".to_string(), 2)]),
                repaired: true,
                error: None,
                drift_total: 2,
            }),
            rules: vec![RuleState {
                name: "ssh".into(),
                action: Action::Pass,
                mode: Mode::Enforce,
                slot: 3,
                identity: "0123".into(),
            }],
            sets: vec![SetState {
                name: "blocklist".into(),
                id: 7,
                max_entries: 100,
                timeout_ms: 600_000,
                file_entries: 3,
            }],
        };
        state.write(&dir).expect("write");
        assert_eq!(State::read(&dir, "eth0").expect("read"), Some(state));
        assert_eq!(State::read(&dir, "eth1").expect("read"), None);
        State::remove(&dir, "eth0").expect("remove");
        assert_eq!(State::read(&dir, "eth0").expect("read"), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_state_file_is_an_error_not_a_panic() {
        let good = State {
            iface: "eth0".into(),
            policy: "/etc/xdp-policy/policies.d".into(),
            policy_hash: "ab".repeat(32),
            generation: 1,
            applied_at: 0,
            attach_mode: AttachMode::Skb,
            interface_present: true,
            pid: 1,
            version: String::new(),
            audit: None,
            sets: Vec::new(),
            rules: vec![RuleState {
                name: "a".into(),
                action: Action::Drop,
                mode: Mode::Enforce,
                slot: 0,
                identity: "x".into(),
            }],
        };
        let path = Path::new("/run/xdp-policy/eth0.json");
        let parse = |state: &State| {
            let text = serde_json::to_string(state).expect("serialise");
            State::parse(path, "eth0", &text)
        };
        assert_eq!(parse(&good).expect("valid"), good);
        let damaged = |edit: &dyn Fn(&mut State)| {
            let mut state = good.clone();
            edit(&mut state);
            match parse(&state) {
                Err(StateError::Damaged { damage, .. }) => damage,
                other => panic!("expected damage, got {other:?}"),
            }
        };
        assert_eq!(damaged(&|s| s.policy_hash = "é".repeat(32)), Damage::Hash);
        assert_eq!(damaged(&|s| s.policy_hash = "ab".into()), Damage::Hash);
        assert_eq!(
            damaged(&|s| s.rules[0].slot = RULE_COUNTER_SLOTS),
            Damage::Slot { rule: "a".into(), slot: RULE_COUNTER_SLOTS }
        );
        assert_eq!(damaged(&|s| s.rules.push(s.rules[0].clone())), Damage::SharedSlot { slot: 0 });
        assert_eq!(
            damaged(&|s| s.iface = "eth1".into()),
            Damage::Interface { found: "eth1".into(), expected: "eth0".into() }
        );
        assert!(matches!(
            State::parse(path, "eth0", "{\"iface\": 7}"),
            Err(StateError::Format { .. })
        ));
        let message = parse(&State { policy_hash: "zz".into(), ..good.clone() })
            .expect_err("damaged")
            .to_string();
        assert_eq!(
            message,
            "/run/xdp-policy/eth0.json: damaged: the policy hash is not 64 hex digits"
        );
    }
}
