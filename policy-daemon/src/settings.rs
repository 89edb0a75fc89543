//! What `run` and the other commands work with: the daemon's configuration file
//! (`/etc/xdp-policy/xdp-policy.toml` by default: which policy each interface enforces,
//! the XDP mode, where state is pinned and kept, the metrics address) merged with the
//! command line's flags into typed [`Settings`]. Flags override the file; every setting
//! has a default.
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    dataplane::{Places, XdpMode},
    policy::Diagnostic,
    reload::{
        Assignment, LoadOptions,
        files::{Untrusted, check_trusted_file},
    },
};
use policy_common::MAX_SOURCES;

/// Where `run` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/xdp-policy/xdp-policy.toml";
/// bpffs directory holding one directory of pins per interface.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdp-policy";
/// Directory for the per-interface state files `status` and `explain` read.
pub const DEFAULT_STATE_DIR: &str = "/run/xdp-policy";
/// Prometheus metrics, on loopback only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9559";
/// Seconds between audits of the kernel's maps against the policy in force.
pub const DEFAULT_AUDIT_INTERVAL: u64 = 60;
/// The largest `max_sources`: some 1.5 GiB of kernel memory per interface.
pub const MAX_MAX_SOURCES: u32 = 16 * 1024 * 1024;
/// The longest audit interval, in seconds (30 days).
pub const MAX_AUDIT_INTERVAL: u64 = 30 * 24 * 3600;

/// The configuration file as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Interface name → policy file or directory.
    #[serde(default)]
    pub interfaces: BTreeMap<String, PathBuf>,
    pub xdp_mode: Option<XdpMode>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// `host:port`, or `"off"`.
    pub metrics: Option<String>,
    /// Reload when policy files change (SIGHUP always reloads).
    pub watch: Option<bool>,
    /// Seconds between audits of the kernel's maps; 0 turns them off.
    pub audit_interval: Option<u64>,
    /// Read policy files even if someone other than root could change them (for test
    /// setups).
    pub insecure_policy_files: Option<bool>,
    /// Act as a CrowdSec bouncer: the local API's decisions go into a named set.
    pub crowdsec: Option<CrowdSecConfig>,
    /// Buckets the limit rules of an interface keep at most (sources, or source
    /// networks), preallocated while its policy has a limit rule [default: 1,000,000].
    pub max_sources: Option<u32>,
}

/// The `[crowdsec]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdSecConfig {
    /// The local API, e.g. `http://127.0.0.1:8080/`.
    pub url: String,
    /// A file holding the bouncer's API key (`cscli bouncers add NAME`); only root may
    /// be able to change it.
    pub key_file: PathBuf,
    /// The set the decisions go into (every interface whose policy has it).
    pub set: String,
    /// Seconds between polls of the decisions stream [default: 10].
    pub poll_interval: Option<u64>,
}

/// The bouncer's settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrowdSec {
    /// Without a trailing `/`.
    pub url: String,
    pub key: String,
    pub set: String,
    pub poll_interval: Duration,
}

/// Seconds between polls of CrowdSec's decisions stream unless configured.
pub const DEFAULT_CROWDSEC_POLL: u64 = 10;

/// Where metrics are served, if at all: `host:port`, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    On(SocketAddr),
}

/// A metrics address that is neither `host:port` nor `off`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid metrics address {0:?}: expected host:port or \"off\"")]
pub struct BadMetricsAddr(pub String);

impl FromStr for MetricsAddr {
    type Err = BadMetricsAddr;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value == "off" {
            return Ok(Self::Off);
        }
        value.parse().map(Self::On).map_err(|_| BadMetricsAddr(value.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{0}")]
    Invalid(Diagnostic),
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
}

impl ConfigFile {
    /// Reads the file at `path`, which only root may be able to change (like a policy
    /// file: it decides what is enforced, and can switch the policy files' checks off).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        check_trusted_file(path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_path_buf(), error })?;
        Self::parse(path, &text)
    }

    /// The file at `path`; without one, the default file if it exists, else an empty
    /// configuration (every default).
    pub fn find(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None if Path::new(DEFAULT_CONFIG).exists() => Self::load(Path::new(DEFAULT_CONFIG)),
            None => Ok(Self::default()),
        }
    }

    /// Parses configuration text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigError::Invalid(Diagnostic::new(
                path.to_path_buf(),
                text,
                span,
                e.message().trim_end(),
            ))
        })?;
        if let Some(metrics) = &config.metrics
            && let Err(message) = metrics.parse::<MetricsAddr>()
        {
            let at = text.find(metrics.as_str()).unwrap_or(0);
            return Err(ConfigError::Invalid(Diagnostic::new(
                path.to_path_buf(),
                text,
                at..at + metrics.len(),
                message.to_string(),
            )));
        }
        Ok(config)
    }
}

/// Everything `run` needs, from the flags, then the configuration file, then defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub assignments: Vec<Assignment>,
    pub mode: XdpMode,
    pub places: Places,
    pub metrics: MetricsAddr,
    pub watch: bool,
    /// How often the maps are audited; `None`: never (SIGUSR1 and `status --verify`
    /// still audit).
    pub audit_interval: Option<Duration>,
    /// How policy files are read: the same for the first load and every reload.
    pub load: LoadOptions,
    pub crowdsec: Option<CrowdSec>,
    /// Size of each interface's bucket map (`policy_common::LIMIT_BUCKETS_MAP`).
    pub max_sources: u32,
}

/// What the command line says; `None`, empty and `false` leave the setting to the
/// configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// `--iface`, for `--policy`.
    pub ifaces: Vec<String>,
    pub policy: Option<PathBuf>,
    /// `--attach IFACE=PATH`.
    pub attach: Vec<(String, PathBuf)>,
    pub xdp_mode: Option<XdpMode>,
    pub metrics: Option<MetricsAddr>,
    pub no_watch: bool,
    pub audit_interval: Option<u64>,
    pub allow_insecure_policy_files: bool,
    pub max_sources: Option<u32>,
}

/// Why the settings are unusable (the daemon does not start: exit 64).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "an audit interval of {0} s is more than {MAX_AUDIT_INTERVAL} s (30 days); 0 turns the \
         periodic audit off"
    )]
    AuditInterval(u64),
    #[error("--iface needs --policy")]
    IfaceWithoutPolicy,
    #[error("max_sources must be 1 to {MAX_MAX_SOURCES}, not {0}")]
    MaxSources(u32),
    #[error("[crowdsec] {0}")]
    CrowdSec(String),
    #[error(
        "interface {iface} is given two policies: {} and {}",
        first.display(),
        second.display()
    )]
    TwoPolicies { iface: String, first: PathBuf, second: PathBuf },
    #[error(
        "nothing to enforce: give --policy PATH (with --iface IFACE, or interfaces = [...] in \
         the policy), or --attach IFACE=PATH, or [interfaces] in the configuration file"
    )]
    NothingToEnforce,
}

impl Settings {
    /// The flags over the configuration file (`--config`, or the default one if it
    /// exists) over the defaults.
    pub fn resolve(flags: &Flags) -> Result<Self, SettingsError> {
        let file = ConfigFile::find(flags.config.as_deref())?;
        let from_flags =
            flags.policy.is_some() || !flags.attach.is_empty() || !flags.ifaces.is_empty();
        let assignments = if from_flags || file.interfaces.is_empty() {
            assignments(&flags.attach, &flags.ifaces, flags.policy.as_ref())?
        } else {
            let attach: Vec<_> =
                file.interfaces.iter().map(|(i, p)| (i.clone(), p.clone())).collect();
            assignments(&attach, &[], None)?
        };
        // The file's address was checked when it was read.
        let from_file = file.metrics.as_deref().and_then(|m| m.parse().ok());
        Ok(Self {
            assignments,
            mode: flags.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            places: merge_places(flags.pin_dir.as_ref(), flags.state_dir.as_ref(), &file),
            metrics: flags.metrics.or(from_file).unwrap_or(DEFAULT_METRICS_ADDR),
            watch: !flags.no_watch && file.watch.unwrap_or(true),
            audit_interval: match flags
                .audit_interval
                .or(file.audit_interval)
                .unwrap_or(DEFAULT_AUDIT_INTERVAL)
            {
                0 => None,
                seconds if seconds > MAX_AUDIT_INTERVAL => {
                    return Err(SettingsError::AuditInterval(seconds));
                }
                seconds => Some(Duration::from_secs(seconds)),
            },
            load: load_options(flags.allow_insecure_policy_files, &file),
            crowdsec: file.crowdsec.as_ref().map(crowdsec).transpose()?,
            max_sources: match flags.max_sources.or(file.max_sources).unwrap_or(MAX_SOURCES) {
                n @ 1..=MAX_MAX_SOURCES => n,
                n => return Err(SettingsError::MaxSources(n)),
            },
        })
    }
}

/// Checks the `[crowdsec]` table and reads its key file.
fn crowdsec(config: &CrowdSecConfig) -> Result<CrowdSec, SettingsError> {
    let err = |m: String| SettingsError::CrowdSec(m);
    if !config.url.starts_with("http://") {
        return Err(err(format!(
            "url {:?}: expected http://HOST:PORT of the local API (https is not supported \
             yet: use the API on loopback)",
            config.url
        )));
    }
    let poll = config.poll_interval.unwrap_or(DEFAULT_CROWDSEC_POLL);
    if !(1..=3600).contains(&poll) {
        return Err(err(format!("poll_interval {poll}: expected 1 to 3600 seconds")));
    }
    check_trusted_file(&config.key_file).map_err(|e| {
        err(format!(
            "key_file {} {}: the key must be in a file only root can change",
            config.key_file.display(),
            e.problem
        ))
    })?;
    let key = std::fs::read_to_string(&config.key_file)
        .map_err(|e| err(format!("key_file {}: {e}", config.key_file.display())))?;
    let key = key.trim().to_string();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(err(format!(
            "key_file {}: expected one API key (from `cscli bouncers add NAME`)",
            config.key_file.display()
        )));
    }
    Ok(CrowdSec {
        url: config.url.trim_end_matches('/').to_string(),
        key,
        set: config.set.clone(),
        poll_interval: Duration::from_secs(poll),
    })
}

/// [`DEFAULT_METRICS`], parsed.
const DEFAULT_METRICS_ADDR: MetricsAddr =
    MetricsAddr::On(SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9559));

/// The pin and state directories: flags, then the configuration file (`config`, or
/// the default one if it exists), then defaults.
pub fn places(
    config: Option<&Path>,
    pin_dir: Option<&PathBuf>,
    state_dir: Option<&PathBuf>,
) -> Result<Places, SettingsError> {
    Ok(merge_places(pin_dir, state_dir, &ConfigFile::find(config)?))
}

fn merge_places(
    pin_dir: Option<&PathBuf>,
    state_dir: Option<&PathBuf>,
    file: &ConfigFile,
) -> Places {
    Places {
        pin_dir: pin_dir.or(file.pin_dir.as_ref()).cloned().unwrap_or(DEFAULT_PIN_DIR.into()),
        state_dir: state_dir
            .or(file.state_dir.as_ref())
            .cloned()
            .unwrap_or(DEFAULT_STATE_DIR.into()),
    }
}

/// How policy files are read: the flag, then the configuration file (`config`, or the
/// default one if it exists). `check` reads policies as `run` does.
pub fn policy_load_options(
    config: Option<&Path>,
    allow_insecure: bool,
) -> Result<LoadOptions, SettingsError> {
    Ok(load_options(allow_insecure, &ConfigFile::find(config)?))
}

fn load_options(allow_insecure: bool, file: &ConfigFile) -> LoadOptions {
    LoadOptions {
        allow_insecure_files: allow_insecure || file.insecure_policy_files.unwrap_or(false),
    }
}

/// Groups `IFACE=PATH` pairs and `--iface`s for one `--policy` into assignments, in the
/// order first named.
pub fn assignments(
    attach: &[(String, PathBuf)],
    ifaces: &[String],
    policy: Option<&PathBuf>,
) -> Result<Vec<Assignment>, SettingsError> {
    let mut by_policy: BTreeMap<usize, Assignment> = BTreeMap::new();
    let mut order: HashMap<PathBuf, usize> = HashMap::new();
    let mut add = |path: &PathBuf, iface: Option<&String>| {
        let n = order.len();
        let index = *order.entry(path.clone()).or_insert(n);
        let entry = by_policy
            .entry(index)
            .or_insert_with(|| Assignment { policy: path.clone(), ifaces: Vec::new() });
        if let Some(iface) = iface {
            entry.ifaces.push(iface.clone());
        }
    };
    match policy {
        Some(path) if ifaces.is_empty() => add(path, None),
        Some(path) => ifaces.iter().for_each(|i| add(path, Some(i))),
        None if !ifaces.is_empty() => return Err(SettingsError::IfaceWithoutPolicy),
        None => {}
    }
    for (iface, path) in attach {
        add(path, Some(iface));
    }
    let mut seen = HashMap::new();
    for a in by_policy.values() {
        for iface in &a.ifaces {
            if let Some(first) = seen.insert(iface.clone(), a.policy.clone()) {
                return Err(SettingsError::TwoPolicies {
                    iface: iface.clone(),
                    first,
                    second: a.policy.clone(),
                });
            }
        }
    }
    if by_policy.is_empty() {
        return Err(SettingsError::NothingToEnforce);
    }
    Ok(by_policy.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_setting() {
        let text = r#"
xdp_mode = "native"
pin_dir = "/sys/fs/bpf/edge"
state_dir = "/run/edge"
metrics = "127.0.0.1:9600"
watch = false
audit_interval = 300
insecure_policy_files = true

[interfaces]
eth0 = "/etc/xdp-policy/policies.d"
eth1 = "/etc/xdp-policy/mgmt.toml"
"#;
        let config = ConfigFile::parse(Path::new("x.toml"), text).expect("valid");
        assert_eq!(config.xdp_mode, Some(XdpMode::Native));
        assert_eq!(config.interfaces.len(), 2);
        assert_eq!(config.interfaces["eth1"], PathBuf::from("/etc/xdp-policy/mgmt.toml"));
        assert_eq!(config.watch, Some(false));
        assert_eq!(config.audit_interval, Some(300));
        assert_eq!(config.insecure_policy_files, Some(true));
        assert_eq!(
            config.metrics.as_deref().unwrap_or_default().parse(),
            Ok(MetricsAddr::On("127.0.0.1:9600".parse().expect("addr")))
        );
    }

    #[test]
    fn an_empty_file_takes_every_default() {
        assert_eq!(
            ConfigFile::parse(Path::new("x.toml"), "").expect("valid"),
            ConfigFile::default()
        );
    }

    #[test]
    fn errors_point_at_the_setting() {
        let err = ConfigFile::parse(Path::new("/etc/x.toml"), "xdp_mode = \"fast\"\n")
            .expect_err("invalid")
            .to_string();
        assert_eq!(
            err,
            "/etc/x.toml:1:12: unknown variant `fast`, expected one of `auto`, `native`, `skb`\n  \
             |\n1 | xdp_mode = \"fast\"\n  |            ^^^^^^\n"
        );
        let err = ConfigFile::parse(Path::new("/etc/x.toml"), "metrics = \"localhost\"\n")
            .expect_err("invalid")
            .to_string();
        assert!(
            err.starts_with("/etc/x.toml:1:12: invalid metrics address \"localhost\""),
            "{err}"
        );
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn the_crowdsec_table_is_checked_and_its_key_read() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = dir.path().join("key");
        std::fs::write(&key, "0123abcd\n").expect("writing the key");
        let config = |url: &str, key: &Path, poll: u64| CrowdSecConfig {
            url: url.into(),
            key_file: key.to_path_buf(),
            set: "crowdsec".into(),
            poll_interval: Some(poll),
        };
        let good = crowdsec(&config("http://127.0.0.1:8080/", &key, 5)).expect("valid");
        assert_eq!(good.url, "http://127.0.0.1:8080");
        assert_eq!(good.key, "0123abcd");
        assert_eq!(good.poll_interval, Duration::from_secs(5));
        let error = |c: CrowdSecConfig| crowdsec(&c).expect_err("invalid").to_string();
        assert!(error(config("https://lapi:8080/", &key, 5)).contains("https is not supported"));
        assert_eq!(
            error(config("http://127.0.0.1:8080/", &key, 0)),
            "[crowdsec] poll_interval 0: expected 1 to 3600 seconds"
        );
        let missing = dir.path().join("nope");
        assert!(
            error(config("http://127.0.0.1:8080/", &missing, 5))
                .starts_with(&format!("[crowdsec] key_file {} cannot be read", missing.display())),
        );
        std::fs::write(&key, "").expect("emptying the key");
        assert!(error(config("http://127.0.0.1:8080/", &key, 5)).contains("expected one API key"));
    }

    #[test]
    fn the_default_metrics_address_is_the_documented_one() {
        assert_eq!(DEFAULT_METRICS.parse(), Ok(DEFAULT_METRICS_ADDR));
    }

    #[test]
    fn an_audit_interval_of_0_is_off_and_one_past_30_days_is_refused() {
        let flags = |seconds| Flags {
            config: Some(p("/dev/null")),
            policy: Some(p("p.toml")),
            ifaces: vec!["eth0".into()],
            audit_interval: Some(seconds),
            ..Flags::default()
        };
        let resolve = |seconds| Settings::resolve(&flags(seconds));
        assert_eq!(resolve(0).expect("valid").audit_interval, None);
        assert_eq!(
            resolve(MAX_AUDIT_INTERVAL).expect("valid").audit_interval,
            Some(Duration::from_secs(MAX_AUDIT_INTERVAL))
        );
        for past in [MAX_AUDIT_INTERVAL + 1, u64::MAX] {
            assert!(matches!(resolve(past), Err(SettingsError::AuditInterval(s)) if s == past));
        }
    }

    #[test]
    fn ifaces_with_one_policy_share_it() {
        let a =
            assignments(&[], &["eth0".into(), "eth1".into()], Some(&p("web.toml"))).expect("valid");
        assert_eq!(
            a,
            vec![Assignment { policy: p("web.toml"), ifaces: vec!["eth0".into(), "eth1".into()] }]
        );
    }

    #[test]
    fn attach_gives_each_interface_its_policy_grouped_by_path() {
        let attach = vec![
            ("eth0".to_string(), p("edge.toml")),
            ("eth1".to_string(), p("mgmt.d")),
            ("eth2".to_string(), p("edge.toml")),
        ];
        let a = assignments(&attach, &[], None).expect("valid");
        assert_eq!(
            a,
            vec![
                Assignment { policy: p("edge.toml"), ifaces: vec!["eth0".into(), "eth2".into()] },
                Assignment { policy: p("mgmt.d"), ifaces: vec!["eth1".into()] },
            ]
        );
    }

    #[test]
    fn a_policy_alone_takes_its_interfaces_from_the_file() {
        let a = assignments(&[], &[], Some(&p("host.toml"))).expect("valid");
        assert_eq!(a, vec![Assignment { policy: p("host.toml"), ifaces: vec![] }]);
    }

    #[test]
    fn conflicts_and_nothing_to_do_are_usage_errors() {
        let attach = vec![("eth0".to_string(), p("b.toml"))];
        let err = assignments(&attach, &["eth0".into()], Some(&p("a.toml"))).expect_err("two");
        assert_eq!(err.to_string(), "interface eth0 is given two policies: a.toml and b.toml");
        assert!(matches!(
            assignments(&[], &["eth0".into()], None),
            Err(SettingsError::IfaceWithoutPolicy)
        ));
        assert!(matches!(assignments(&[], &[], None), Err(SettingsError::NothingToEnforce)));
    }
}
