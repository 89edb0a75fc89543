//! xdp-filter from Debian's xdp-tools, the incumbent the bench compares with: loaded on
//! an interface of a bench namespace, with `LIBXDP_SKIP_DISPATCHER=1` so that its program
//! is attached plainly (no libxdp dispatcher in front) and can be test-run by id.
//!
//! xdp-filter keeps its maps pinned under /sys/fs/bpf/xdp-filter, so it is run with
//! `nsenter --net` (which keeps this mount namespace and its bpffs), not `ip netns exec`
//! (which remounts /sys).

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Which of xdp-filter's program variants to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Features {
    /// `-f udp`: only UDP port filtering compiled in (its cheapest program).
    UdpOnly,
    /// Every feature (tcp, udp, ipv4, ipv6, ethernet): its default.
    All,
}

impl Features {
    pub fn label(self) -> &'static str {
        match self {
            Self::UdpOnly => "udp-only",
            Self::All => "all features",
        }
    }
}

/// xdp-filter loaded on one interface; unloaded when dropped.
pub struct XdpFilter {
    netns: String,
    iface: String,
}

fn xdp_filter_output(netns: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["env", "LIBXDP_SKIP_DISPATCHER=1", "xdp-filter"])
        .args(args)
        .output()
        .context("running xdp-filter (install Debian's xdp-tools: `cargo xtask setup`)")
}

fn xdp_filter(netns: &str, args: &[&str]) -> Result<String> {
    let output = xdp_filter_output(netns, args)?;
    if !output.status.success() {
        bail!(
            "`xdp-filter {}` in {netns} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl XdpFilter {
    /// Loads xdp-filter on `iface` in `netns`, `mode` being `native` or `skb`.
    pub fn load(netns: &str, iface: &str, mode: &str, features: Features) -> Result<Self> {
        policy_daemon::dataplane::pins::ensure_bpffs(std::path::Path::new("/sys/fs/bpf"))?;
        let mut args = vec!["load", "-m", mode];
        if features == Features::UdpOnly {
            args.extend(["-f", "udp"]);
        }
        args.push(iface);
        xdp_filter(netns, &args)?;
        Ok(Self { netns: netns.to_owned(), iface: iface.to_owned() })
    }

    /// Denies destination `port` of `proto` (`tcp` or `udp`).
    pub fn deny_port(&self, proto: &str, port: u16) -> Result<()> {
        xdp_filter(&self.netns, &["port", "-p", proto, &port.to_string()]).map(drop)
    }

    /// The id of the program attached to the interface.
    pub fn prog_id(&self) -> Result<u32> {
        xdp_prog_id(&self.netns, &self.iface)
    }

    /// xdp-filter's own count of dropped packets (its per-action statistics).
    pub fn dropped(&self) -> Result<u64> {
        // With `-f udp`, `status` prints the statistics, then fails to list the address
        // maps that program has none of and exits non-zero: read what it printed.
        let output = xdp_filter_output(&self.netns, &["status"])?;
        parse_dropped(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
            format!(
                "no XDP_DROP line in `xdp-filter status` in {} ({}): {}",
                self.netns,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if let Err(e) = xdp_filter(&self.netns, &["unload", &self.iface]) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// The id of the XDP program attached to `iface` in `netns` (any mode), from iproute2.
pub fn xdp_prog_id(netns: &str, iface: &str) -> Result<u32> {
    let output = Command::new("ip")
        .args(["-j", "-n", netns, "link", "show", "dev", iface])
        .output()
        .context("running ip")?;
    let links: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing `ip -j link show`")?;
    links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program attached to {iface} in {netns}"))
}

fn parse_dropped(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.trim_start().starts_with("XDP_DROP"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_drop_count() {
        let status = "Aggregate per-action statistics:\n  XDP_ABORTED     0 pkts     0 KiB\n  \
                      XDP_DROP      1234 pkts    72 KiB\n  XDP_PASS   5 pkts  0 KiB\n";
        assert_eq!(super::parse_dropped(status), Some(1234));
    }
}
