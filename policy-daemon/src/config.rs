//! The daemon's configuration file, `/etc/xdp-policy/xdp-policy.toml` by default: which
//! policy each interface enforces, the XDP mode, where state is pinned and kept, and the
//! metrics address. Every setting has a default; command-line flags override the file.
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::policy::Diagnostic;

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

/// XDP attach mode as written in the file and on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver takes it, else generic (skb) mode.
    #[default]
    Auto,
    Native,
    Skb,
}

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
}

/// Where metrics are served, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metrics {
    Off,
    On(SocketAddr),
}

impl Metrics {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value == "off" {
            return Ok(Self::Off);
        }
        value.parse().map(Self::On).map_err(|_| {
            format!("invalid metrics address {value:?}: expected host:port or \"off\"")
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostic),
    #[error(transparent)]
    Untrusted(#[from] crate::policy::files::Untrusted),
}

impl ConfigFile {
    /// Reads the file at `path`, which only root may be able to change (like a policy
    /// file: it decides what is enforced, and can switch the policy files' checks off).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::policy::files::check_trusted_file(path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
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
            && let Err(message) = Metrics::parse(metrics)
        {
            let at = text.find(metrics.as_str()).unwrap_or(0);
            return Err(ConfigError::Invalid(Diagnostic::new(
                path.to_path_buf(),
                text,
                at..at + metrics.len(),
                message,
            )));
        }
        Ok(config)
    }
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
            Metrics::parse(config.metrics.as_deref().unwrap_or_default()),
            Ok(Metrics::On("127.0.0.1:9600".parse().expect("addr")))
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
}
