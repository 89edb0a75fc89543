//! The devices under test: what is installed on the rx end before a measurement, and
//! how each counts what it dropped.

use std::{
    fmt::Write as _,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use testbed::{Daemon, RX_IFACE, Testbed, XdpMode};

use super::counters::{self, PolicyCounts, in_netns};
use crate::{
    raw,
    xdpfilter::{Features, XdpFilter},
};

/// The UDP destination port of the generated traffic, which every filter drops.
pub const PORT: u16 = 9000;
/// Rules in the large xdp-policy policy, and the (0-based) one the test packet hits.
pub const MANY_RULES: usize = 1000;
pub const HIT_RULE: usize = 989;
const NFT_TABLE: &str = "xdpp_bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    NoFilter,
    Iptables,
    Nft,
    XdpFilterUdp,
    XdpFilterAll,
    XdpDrop,
    /// The minimal port filter (`raw::MinimalPortFilter`): what a port filter costs at
    /// least.
    LimitNative,
    PolicyPortNative,
    PolicyPortSkb,
    PolicyManyNative,
    PolicyManySkb,
    PolicyLimitNative,
}

impl Variant {
    pub const ALL: [Self; 12] = [
        Self::NoFilter,
        Self::Iptables,
        Self::Nft,
        Self::XdpFilterUdp,
        Self::XdpFilterAll,
        Self::XdpDrop,
        Self::LimitNative,
        Self::PolicyPortNative,
        Self::PolicyPortSkb,
        Self::PolicyManyNative,
        Self::PolicyManySkb,
        Self::PolicyLimitNative,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter (UDP socket)",
            Self::Iptables => "iptables raw PREROUTING",
            Self::Nft => "nft netdev ingress",
            Self::XdpFilterUdp => "xdp-filter native, udp-only",
            Self::XdpFilterAll => "xdp-filter native, all features",
            Self::XdpDrop => "XDP_DROP native (floor)",
            Self::LimitNative => "limit: minimal port filter, native",
            Self::PolicyPortNative => "xdp-policy native, port-only",
            Self::PolicyPortSkb => "xdp-policy skb, port-only",
            Self::PolicyManyNative => "xdp-policy native, 1,000 rules",
            Self::PolicyManySkb => "xdp-policy skb, 1,000 rules",
            Self::PolicyLimitNative => "xdp-policy native, limit rule",
        }
    }

    /// Generated packets that pass before the filter drops the rest: a limit rule's
    /// new bucket admits its burst (1).
    pub fn passes_first(self) -> u64 {
        u64::from(self == Self::PolicyLimitNative)
    }

    /// Whether the generated packets are to reach the UDP socket (else they must not).
    pub fn delivers(self) -> bool {
        self == Self::NoFilter
    }

    /// Whether the filter drops in native XDP, so that veth counts its drops too.
    pub fn native_xdp(self) -> bool {
        matches!(
            self,
            Self::XdpFilterUdp
                | Self::XdpFilterAll
                | Self::XdpDrop
                | Self::LimitNative
                | Self::PolicyPortNative
                | Self::PolicyManyNative
                | Self::PolicyLimitNative
        )
    }

    /// Whether the filter is an XDP program on veth1 (native or generic), whose run
    /// time the kernel's statistics can count.
    pub fn xdp(self) -> bool {
        self.native_xdp() || matches!(self, Self::PolicyPortSkb | Self::PolicyManySkb)
    }
}

/// The policy files for the xdp-policy variants, in a directory removed when dropped.
pub struct Policies {
    dir: PathBuf,
}

impl Policies {
    pub fn write() -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = std::env::temp_dir().join(format!("xdpp-bench-{}-policies", std::process::id()));
        // Leftovers of an earlier process with this pid are ours to replace.
        let _ = std::fs::remove_dir_all(&dir);
        // Only root may write here: the daemon refuses policy files others could change.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let policies = Self { dir };
        for (path, text) in [
            (policies.port_only(), port_only_policy()),
            (policies.many(), many_rules_policy()),
            (policies.limit(), limit_policy()),
        ] {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(policies)
    }

    pub fn port_only(&self) -> PathBuf {
        self.dir.join("port-only.toml")
    }

    pub fn many(&self) -> PathBuf {
        self.dir.join("1000-rules.toml")
    }

    pub fn limit(&self) -> PathBuf {
        self.dir.join("limit.toml")
    }
}

impl Drop for Policies {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One drop rule for the bench port: the smallest xdp-policy policy that drops the
/// generated traffic.
pub fn port_only_policy() -> String {
    format!(
        "# xdp-policy bench: drop UDP to port {PORT}, pass everything else.\n\
         [defaults]\naction = \"pass\"\nmode = \"enforce\"\n\n\
         [[rule]]\nname = \"bench-drop-port\"\naction = \"drop\"\nprotocol = \"udp\"\n\
         dst_ports = {PORT}\n"
    )
}

/// One limit rule on the bench port, per source, whose bucket (burst 1, one token an
/// hour) admits the first packet and drops the rest: the cost of a bucket's lookup,
/// clock and check on every packet.
pub fn limit_policy() -> String {
    format!(
        "# xdp-policy bench: limit UDP to port {PORT} to 1 packet an hour per source.\n\
         [[rule]]\nname = \"bench-limit-port\"\naction = \"limit\"\nprotocol = \"udp\"\n\
         dst_ports = {PORT}\nrate = \"1/h\"\nburst = 1\n"
    )
}

/// [`MANY_RULES`] rules mixing protocols, CIDRs (IPv4 and IPv6, source and destination),
/// single ports, port lists and ranges, drop and pass; the generated packet matches
/// none of them but rule [`HIT_RULE`], which drops it. Deterministic: the same text
/// every time.
pub fn many_rules_policy() -> String {
    let mut text = format!(
        "# xdp-policy bench: {MANY_RULES} mixed rules; the bench traffic (UDP \
         198.18.0.1 -> 198.18.0.2:{PORT}) hits rule {} of them.\n\
         [defaults]\naction = \"pass\"\nmode = \"enforce\"\n",
        HIT_RULE + 1
    );
    for i in 0..MANY_RULES {
        let (a, b) = ((i / 256) % 256, i % 256);
        let port = 1024 + (i * 37) % 50_000;
        let rule = if i == HIT_RULE {
            format!(
                "name = \"bench-hit\"\naction = \"drop\"\nprotocol = \"udp\"\n\
                 src = [\"198.18.0.0/15\"]\ndst_ports = [{PORT}]\n"
            )
        } else {
            match i % 6 {
                // The bench port, from elsewhere: near misses on the address.
                0 => format!(
                    "action = \"drop\"\nprotocol = \"udp\"\nsrc = [\"10.{a}.{b}.0/24\", \
                     \"2001:db8:{i:x}::/48\"]\ndst_ports = [{PORT}]\n"
                ),
                // The bench source, other ports: near misses on the port.
                1 => format!(
                    "action = \"drop\"\nprotocol = \"udp\"\nsrc = [\"198.18.0.0/15\"]\n\
                     dst_ports = [{port}, {}]\n",
                    port + 1
                ),
                2 => format!(
                    "action = \"drop\"\nprotocol = \"tcp\"\ndst = [\"172.16.{b}.0/24\"]\n\
                     dst_ports = \"{port}-{}\"\n",
                    port + 10
                ),
                3 => format!(
                    "action = \"pass\"\nprotocol = \"any\"\nsrc = [\"100.64.{b}.0/24\"]\n\
                     src_ports = \"{port}-{}\"\n",
                    port + 100
                ),
                4 => format!(
                    "action = \"drop\"\nprotocol = \"udp\"\ndst = [\"203.0.113.{b}/32\", \
                     \"2001:db8:ffff:{i:x}::/64\"]\n"
                ),
                _ => format!(
                    "action = \"pass\"\nprotocol = \"tcp\"\nsrc = [\"192.0.2.{}/31\"]\n\
                     dst_ports = [443, 8443]\n",
                    b & !1
                ),
            }
        };
        let name = if i == HIT_RULE { String::new() } else { format!("name = \"r{i:04}\"\n") };
        let _ = write!(text, "\n[[rule]]\n{name}{rule}");
    }
    text
}

/// A filter installed on rx, removed when dropped (or with its testbed).
pub enum Installed<'tb> {
    None,
    Iptables { netns: String },
    Nft { netns: String },
    XdpFilter(XdpFilter),
    XdpDrop { _link: OwnedFd },
    Limit { filter: raw::MinimalPortFilter, _link: OwnedFd },
    Policy { daemon: Option<Daemon<'tb>>, pin_dir: PathBuf, state_dir: PathBuf, binary: PathBuf },
}

/// Installs `variant` on the rx end of `testbed`.
pub fn install<'tb>(
    variant: Variant,
    testbed: &'tb Testbed,
    daemon: &Path,
    policies: &Policies,
) -> Result<Installed<'tb>> {
    let rx = testbed.rx().name().to_owned();
    let port = PORT.to_string();
    let policy = |path: PathBuf, mode: XdpMode| -> Result<Installed<'tb>> {
        let daemon_process = testbed
            .start_daemon(daemon, &path, mode)
            .with_context(|| format!("starting {} with {}", daemon.display(), path.display()))?;
        Ok(Installed::Policy {
            daemon: Some(daemon_process),
            pin_dir: testbed.dirs().pin_dir(),
            state_dir: testbed.dirs().state_dir(),
            binary: daemon.to_owned(),
        })
    };
    Ok(match variant {
        Variant::NoFilter => Installed::None,
        Variant::Iptables => {
            in_netns(
                &rx,
                "iptables",
                &["-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", &port, "-j", "DROP"],
            )?;
            Installed::Iptables { netns: rx }
        }
        Variant::Nft => {
            let ruleset = format!(
                "table netdev {NFT_TABLE} {{\n  chain ingress {{\n    type filter hook ingress \
                 device \"{RX_IFACE}\" priority -500; policy accept;\n    udp dport {PORT} \
                 counter drop\n  }}\n}}\n"
            );
            nft_apply(&rx, &ruleset)?;
            Installed::Nft { netns: rx }
        }
        Variant::XdpFilterUdp | Variant::XdpFilterAll => {
            let features =
                if variant == Variant::XdpFilterUdp { Features::UdpOnly } else { Features::All };
            let filter = XdpFilter::load(&rx, RX_IFACE, "native", features)?;
            filter.deny_port("udp", PORT)?;
            Installed::XdpFilter(filter)
        }
        Variant::XdpDrop => {
            let prog = raw::load_constant_xdp(1, "bench_drop").context("loading XDP_DROP")?;
            let link = native_link(testbed, prog.as_fd())
                .context("attaching XDP_DROP to veth1 (native)")?;
            Installed::XdpDrop { _link: link }
        }
        Variant::LimitNative => {
            let filter = raw::MinimalPortFilter::load("bench_limit")
                .context("loading the minimal port filter")?;
            filter.deny_port(PORT).context("setting the minimal port filter's port")?;
            let link = native_link(testbed, filter.prog())
                .context("attaching the minimal port filter to veth1 (native)")?;
            Installed::Limit { filter, _link: link }
        }
        Variant::PolicyPortNative => policy(policies.port_only(), XdpMode::Native)?,
        Variant::PolicyPortSkb => policy(policies.port_only(), XdpMode::Skb)?,
        Variant::PolicyManyNative => policy(policies.many(), XdpMode::Native)?,
        Variant::PolicyManySkb => policy(policies.many(), XdpMode::Skb)?,
        Variant::PolicyLimitNative => policy(policies.limit(), XdpMode::Native)?,
    })
}

/// Attaches `prog` to rx's veth1 in native mode with a bpf_link, attached while the
/// returned link lives.
fn native_link(testbed: &Testbed, prog: BorrowedFd<'_>) -> Result<OwnedFd> {
    let link = testbed.rx().run(|| -> std::io::Result<OwnedFd> {
        let index = nix::net::if_::if_nametoindex(RX_IFACE)?;
        raw::xdp_link(prog, index, raw::XDP_FLAGS_DRV_MODE)
    })?;
    Ok(link?)
}

fn nft_apply(netns: &str, ruleset: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running nft in {netns}"))?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(ruleset.as_bytes())
        .context("writing the ruleset to nft")?;
    let output = child.wait_with_output().context("waiting for nft")?;
    if !output.status.success() {
        anyhow::bail!(
            "`nft -f -` in {netns} failed: {}\nruleset:\n{ruleset}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// What a filter's own counters say it dropped (and, for xdp-policy, saw).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterCount {
    pub dropped: u64,
    /// xdp-policy only: packets its program saw, all verdicts.
    pub seen: Option<u64>,
}

impl Installed<'_> {
    /// The filter's own count of what it dropped so far; `None` for no filter and for
    /// the trivial XDP_DROP, which counts nothing itself (veth's `xdp_drops` does).
    pub fn count(&self) -> Result<Option<FilterCount>> {
        Ok(Some(match self {
            Self::None | Self::XdpDrop { .. } => return Ok(None),
            Self::Iptables { netns } => {
                let text = in_netns(
                    netns,
                    "iptables",
                    &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
                )?;
                let dropped = counters::parse_iptables_drops(&text, PORT)
                    .with_context(|| format!("no DROP rule for udp dpt:{PORT} in:\n{text}"))?;
                FilterCount { dropped, seen: None }
            }
            Self::Nft { netns } => {
                let json = in_netns(
                    netns,
                    "nft",
                    &["-j", "list", "chain", "netdev", NFT_TABLE, "ingress"],
                )?;
                FilterCount { dropped: counters::parse_nft_counter(&json)?, seen: None }
            }
            Self::XdpFilter(filter) => FilterCount { dropped: filter.dropped()?, seen: None },
            Self::Limit { filter, .. } => FilterCount {
                dropped: filter.drops().context("reading the minimal port filter's counter")?,
                seen: None,
            },
            Self::Policy { pin_dir, state_dir, binary, .. } => {
                let counts = policy_counts(binary, pin_dir, state_dir)?;
                FilterCount { dropped: counts.dropped, seen: Some(counts.all) }
            }
        }))
    }

    /// Stops a daemon in order (SIGTERM) and checks it exited cleanly; the rest is
    /// removed with the testbed.
    pub fn finish(mut self) -> Result<()> {
        if let Self::Policy { daemon, .. } = &mut self
            && let Some(daemon) = daemon.take()
        {
            let output = daemon.stop().context("stopping xdp-policy")?;
            if !output.status.success() {
                anyhow::bail!(
                    "xdp-policy exited with {}; its log:\n{}",
                    output.status,
                    output.stderr
                );
            }
        }
        Ok(())
    }
}

fn policy_counts(binary: &Path, pin_dir: &Path, state_dir: &Path) -> Result<PolicyCounts> {
    let output = std::process::Command::new(binary)
        .args(["status", "--json", "--config", "/dev/null", "--iface", RX_IFACE, "--pin-dir"])
        .arg(pin_dir)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .with_context(|| format!("running `{} status`", binary.display()))?;
    if !output.status.success() {
        anyhow::bail!(
            "`xdp-policy status --json` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    counters::parse_policy_status(&String::from_utf8_lossy(&output.stdout), RX_IFACE)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use policy_common::Verdict;
    use policy_daemon::policy::{self, reference};
    use testbed::{RX_V4, TX_V4};

    use super::*;
    use crate::drop_rate::generator::{SRC_PORT, udp_frame};

    fn verdict_of_bench_packet(text: &str) -> (Verdict, Option<usize>, usize) {
        let policy = policy::parse([(Path::new("bench.toml"), text)])
            .unwrap_or_else(|e| panic!("the generated policy does not load: {e}\n{text}"));
        let frame = udp_frame([2; 6], [4; 6], TX_V4, RX_V4, SRC_PORT, PORT);
        let outcome = reference::classify(&policy, &reference::parse_packet(&frame));
        (outcome.verdict, outcome.rule, policy.rules.len())
    }

    #[test]
    fn port_only_policy_drops_the_bench_packet() {
        let (verdict, rule, rules) = verdict_of_bench_packet(&port_only_policy());
        assert_eq!((verdict, rule, rules), (Verdict::DropRule, Some(0), 1));
    }

    #[test]
    fn many_rules_policy_drops_the_bench_packet_late() {
        let text = many_rules_policy();
        assert_eq!(text, many_rules_policy(), "not deterministic");
        let (verdict, rule, rules) = verdict_of_bench_packet(&text);
        assert_eq!((verdict, rule, rules), (Verdict::DropRule, Some(HIT_RULE), MANY_RULES));
        for needle in
            ["src = [\"10.", "dst = [\"172.16.", "2001:db8:", "dst_ports = \"", "src_ports"]
        {
            assert!(text.contains(needle), "no `{needle}` in the policy");
        }
    }
}
