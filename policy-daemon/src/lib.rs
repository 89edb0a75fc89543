//! xdp-policy: the daemon and CLI that load the XDP policy program, fill its maps from
//! TOML policies and attach it to interfaces. Every arrow points down this list (see
//! docs/ARCHITECTURE.md):
//!
//! - [`cli`]: the `xdp-policy` subcommands; `check`, and `status`, `explain`, `events`
//!   and `detach` on the pinned filters.
//! - [`daemon`]: `run`'s loop: signals, file changes, audits, metrics.
//! - [`settings`]: the configuration file and the flags, merged.
//! - [`render`]: every text a person reads, from plain data.
//! - [`reload`]: the one path to what is in force: read, check, compile, apply; the
//!   policy files and watching them.
//! - [`safety`]: the SSH lock-out check before a policy is applied.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`packet`]: the frame builder (`explain`, the kernel tests, the bench).
//! - [`policy`]: TOML text → validated policy → map contents (pure: no kernel, no files).
//! - [`dataplane`]: the only module that talks to the kernel: load, fill, attach, count,
//!   the pins, the state files, read-only handles on pinned filters.

pub mod cli;
pub mod crowdsec;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
pub mod packet;
pub mod policy;
pub mod reload;
pub mod render;
pub mod safety;
pub mod settings;
