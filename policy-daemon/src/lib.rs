//! xdp-policy: the daemon and CLI that load the XDP policy program, fill its maps from
//! TOML policies and attach it to interfaces.
//!
//! - [`pinned`]: `status`, `explain` and `detach`, on the pinned filters.
//! - [`policy`]: TOML → validated policy → map contents (pure, no kernel).
//! - [`dataplane`]: the only module that talks to the kernel (load, fill, attach, count).
//! - [`cli`]: the `xdp-policy` subcommands.
//! - [`config`]: the daemon's configuration file.
//! - [`daemon`]: `run`: start-up, the reload loop, shutdown.
//! - [`reload`]: watching policy files.
//! - [`safety`]: the SSH lock-out check before a policy is applied.
//! - [`state`]: the per-interface state file beside the pinned maps.
//! - [`metrics`]: the Prometheus endpoint: per-rule and per-verdict counters, reloads.
//! - [`packet`]: the frame builder (`explain`, the kernel tests, the bench).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
pub mod packet;
pub mod pinned;
pub mod policy;
pub mod reload;
pub mod safety;
pub mod state;
