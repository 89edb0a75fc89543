//! The counters a drop-rate measurement reads, and parsers for the tools that print
//! them: `ethtool -S` (packets the veth processed), `/proc/PID/schedstat` (CPU time of
//! the NAPI thread), `/proc/net/snmp` (datagrams that reached UDP sockets), and the
//! filters' own counts (iptables, nft, xdp-policy status).

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result, bail};
use testbed::NetNs;

/// Runs `program args` in the network namespace `netns` (keeping this mount namespace,
/// as `nsenter --net` does) and returns its stdout; fails with its stderr.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(program)
        .args(args)
        .output()
        .with_context(|| format!("running `{program}` in {netns} (nsenter)"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` in {netns} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ethtool -S IFACE` in `netns`, by counter name.
pub fn ethtool_stats(netns: &str, iface: &str) -> Result<BTreeMap<String, u64>> {
    let text = in_netns(netns, "ethtool", &["-S", iface])?;
    let stats = parse_ethtool_stats(&text);
    if stats.is_empty() {
        bail!("no counters in `ethtool -S {iface}` in {netns}:\n{text}");
    }
    Ok(stats)
}

/// The ethtool statistics of one interface read in-process (SIOCETHTOOL on a socket
/// made in its namespace): microseconds instead of the milliseconds of running
/// `ethtool`, so the reads at the edges of a measurement window line up with the
/// schedstat reads next to them.
pub struct EthtoolReader {
    socket: std::os::fd::OwnedFd,
    iface: String,
    names: Vec<String>,
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Offset of `n_stats` in struct ethtool_drvinfo.
const DRVINFO_N_STATS: usize = 180;
const DRVINFO_LEN: usize = 196;

impl EthtoolReader {
    pub fn open(netns: &NetNs, iface: &str) -> Result<Self> {
        let socket = netns
            .run(|| {
                nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Datagram,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    None,
                )
            })?
            .with_context(|| format!("making a socket in {}", netns.name()))?;
        let mut reader = Self { socket, iface: iface.to_owned(), names: Vec::new() };
        let mut drvinfo = vec![0u64; DRVINFO_LEN.div_ceil(8)];
        reader.ioctl(ETHTOOL_GDRVINFO, &mut drvinfo)?;
        let bytes = as_bytes(&drvinfo);
        let n =
            u32::from_ne_bytes(bytes[DRVINFO_N_STATS..DRVINFO_N_STATS + 4].try_into()?) as usize;
        let mut strings = vec![0u64; (12 + n * ETH_GSTRING_LEN).div_ceil(8)];
        // struct ethtool_gstrings: cmd, string_set, len, then the names.
        strings[0] = u64::from(ETHTOOL_GSTRINGS) | (u64::from(ETH_SS_STATS) << 32);
        strings[1] = n as u64;
        if cfg!(target_endian = "big") {
            bail!("ethtool ioctl layout written for little-endian only");
        }
        reader.ioctl(ETHTOOL_GSTRINGS, &mut strings)?;
        reader.names = as_bytes(&strings)[12..12 + n * ETH_GSTRING_LEN]
            .chunks(ETH_GSTRING_LEN)
            .map(|name| {
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                String::from_utf8_lossy(&name[..end]).into_owned()
            })
            .collect();
        Ok(reader)
    }

    /// The interface's statistics, by name, as `ethtool -S` shows them.
    pub fn read(&self) -> Result<BTreeMap<String, u64>> {
        let n = self.names.len();
        // struct ethtool_stats: cmd, n_stats, then the values.
        let mut stats = vec![0u64; 1 + n];
        stats[0] = u64::from(ETHTOOL_GSTATS) | ((n as u64) << 32);
        self.ioctl(ETHTOOL_GSTATS, &mut stats)?;
        Ok(self.names.iter().cloned().zip(stats[1..].iter().copied()).collect())
    }

    /// SIOCETHTOOL with `buf` (whose first u32 is set to `cmd`) as the request.
    fn ioctl(&self, cmd: u32, buf: &mut [u64]) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        buf[0] = (buf[0] & !0xffff_ffff) | u64::from(cmd);
        // SAFETY: ifreq is plain bytes; all zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(self.iface.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
        // SAFETY: the request buffer is as large as the command needs (sized from the
        // driver's own count) and outlives the call.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("SIOCETHTOOL {cmd:#x} on {}", self.iface));
        }
        Ok(())
    }
}

fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: any u64 is 8 valid bytes; the slice covers exactly the words.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), std::mem::size_of_val(words)) }
}

/// One counter of `ethtool -S` output, or an error naming it.
pub fn stat(stats: &BTreeMap<String, u64>, name: &str) -> Result<u64> {
    stats.get(name).copied().with_context(|| format!("no `{name}` in `ethtool -S`"))
}

/// `ethtool -S` output: a `NIC statistics:` line, then `name: value` lines.
pub fn parse_ethtool_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            Some((name.trim().to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Nanoseconds thread `pid` has run on a CPU so far (`/proc/PID/schedstat`).
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_schedstat(&text).with_context(|| format!("unexpected {path}: `{}`", text.trim()))
}

/// `/proc/PID/schedstat`: time on CPU (ns), time waiting to run (ns), timeslices run.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The UDP counters of a namespace that say whether a datagram reached a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Delivered to a socket's receive queue.
    pub in_datagrams: u64,
    /// Reached a socket whose receive buffer was full.
    pub rcvbuf_errors: u64,
}

impl UdpCounters {
    /// Datagrams that reached a socket, queued or not.
    pub fn reached_socket(&self) -> u64 {
        self.in_datagrams + self.rcvbuf_errors
    }

    pub fn since(&self, before: &Self) -> Self {
        Self {
            in_datagrams: self.in_datagrams.wrapping_sub(before.in_datagrams),
            rcvbuf_errors: self.rcvbuf_errors.wrapping_sub(before.rcvbuf_errors),
        }
    }
}

/// The UDP counters of `netns`, read from a thread inside it (`/proc/thread-self/net`
/// is the calling thread's namespace; `/proc/self/net` would be the main thread's).
pub fn udp_counters(netns: &NetNs) -> Result<UdpCounters> {
    let text = netns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?
        .with_context(|| format!("reading /proc/net/snmp in {}", netns.name()))?;
    parse_snmp_udp(&text)
        .with_context(|| format!("no Udp lines in /proc/net/snmp of {}", netns.name()))
}

/// `/proc/net/snmp`: per protocol a line of names and a line of values, both starting
/// with `Udp:`.
pub fn parse_snmp_udp(text: &str) -> Option<UdpCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let fields: BTreeMap<&str, u64> = names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .map(|(name, value)| Some((name, value.parse().ok()?)))
        .collect::<Option<_>>()?;
    Some(UdpCounters {
        in_datagrams: *fields.get("InDatagrams")?,
        rcvbuf_errors: *fields.get("RcvbufErrors")?,
    })
}

/// Packets the DROP rules for UDP destination port `port` matched, from
/// `iptables -t raw -L PREROUTING -v -x -n`; `None` if there is no such rule.
pub fn parse_iptables_drops(text: &str, port: u16) -> Option<u64> {
    let wanted = format!("dpt:{port}");
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            // pkts bytes target prot opt in out source destination [match…]
            let is_rule = words.get(2) == Some(&"DROP") && words.contains(&wanted.as_str());
            if is_rule { words[0].parse().ok() } else { None }
        })
        .collect();
    if counts.is_empty() { None } else { Some(counts.iter().sum()) }
}

/// Packets counted by the `counter` statements of the rules in `nft -j list chain …`.
pub fn parse_nft_counter(json: &str) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_str(json).context("parsing `nft -j` output")?;
    let items = value["nftables"].as_array().context("no `nftables` array in `nft -j` output")?;
    let counters: Vec<u64> = items
        .iter()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|expr| expr["counter"]["packets"].as_u64())
        .collect();
    if counters.is_empty() {
        bail!("no rule with a counter in `nft -j` output: {json}");
    }
    Ok(counters.iter().sum())
}

/// What `xdp-policy status --json` says the program did on one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Packets dropped by a rule (verdicts `drop_rule` and `drop_limit`).
    pub dropped: u64,
    /// Packets the program saw, summed over all verdicts.
    pub all: u64,
}

/// Reads `iface`'s verdict counters from `xdp-policy status --json`.
pub fn parse_policy_status(json: &str, iface: &str) -> Result<PolicyCounts> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("parsing `xdp-policy status --json`")?;
    let entry = value
        .as_array()
        .and_then(|all| all.iter().find(|s| s["iface"] == iface))
        .with_context(|| format!("no entry for {iface} in `xdp-policy status --json`: {json}"))?;
    let verdicts = entry["verdicts"]
        .as_object()
        .with_context(|| format!("no verdicts for {iface} in `xdp-policy status --json`"))?;
    let packets = |v: &serde_json::Value| v["packets"].as_u64();
    let all = verdicts.values().map(packets).sum::<Option<u64>>().with_context(|| {
        format!("a verdict without a packet count in `xdp-policy status --json`: {json}")
    })?;
    let count = |verdict: &str| {
        verdicts
            .get(verdict)
            .and_then(packets)
            .with_context(|| format!("no `{verdict}` count in `xdp-policy status --json`"))
    };
    Ok(PolicyCounts { dropped: count("drop_rule")? + count("drop_limit")?, all })
}

/// The NAPI kthreads of interfaces named `iface` (in any namespace): pid → name
/// (`napi/IFACE-ID`, from /proc/PID/comm).
pub fn napi_threads(iface: &str) -> Result<BTreeMap<u32, String>> {
    let prefix = format!("napi/{iface}-");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exits meanwhile has no comm any more: not ours anyway.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        if comm.trim_end().starts_with(&prefix) {
            found.insert(pid, comm.trim_end().to_owned());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ethtool_statistics() {
        let text = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_packets: \
                    123456789\n     rx_queue_0_xdp_drops: 17\n";
        let stats = parse_ethtool_stats(text);
        assert_eq!(stats.len(), 3, "{stats:?}");
        assert_eq!(stat(&stats, "rx_queue_0_xdp_packets").expect("parses"), 123_456_789);
        assert_eq!(stat(&stats, "rx_queue_0_xdp_drops").expect("parses"), 17);
        assert!(stat(&stats, "rx_queue_1_xdp_packets").is_err());
    }

    #[test]
    fn reads_schedstat() {
        assert_eq!(parse_schedstat("29074123 1262 2\n"), Some(29_074_123));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn reads_udp_counters_from_snmp() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors \
                    InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 120 3 880 0 880 0 0 0 0\n\
                    UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        let udp = parse_snmp_udp(text).expect("parses");
        assert_eq!(udp, UdpCounters { in_datagrams: 120, rcvbuf_errors: 880 });
        assert_eq!(udp.reached_socket(), 1000);
        let before = UdpCounters { in_datagrams: 20, rcvbuf_errors: 80 };
        assert_eq!(udp.since(&before).reached_socket(), 900);
        assert_eq!(parse_snmp_udp("Udp: InDatagrams\n"), None);
    }

    #[test]
    fn reads_iptables_rule_counters() {
        let text = "Chain PREROUTING (policy ACCEPT 5 packets, 300 bytes)\n    \
                    pkts      bytes target     prot opt in     out     source               \
                    destination\n 8123456 487407360 DROP       17   --  *      *       \
                    0.0.0.0/0            0.0.0.0/0            udp dpt:9000\n       4      240 \
                    DROP       17   --  *      *       0.0.0.0/0            0.0.0.0/0            \
                    udp dpt:90001\n";
        assert_eq!(parse_iptables_drops(text, 9000), Some(8_123_456));
        assert_eq!(parse_iptables_drops(text, 900), None);
    }

    #[test]
    fn reads_nft_counters() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family":
            "netdev", "table": "t", "name": "ingress", "handle": 1}}, {"rule": {"family":
            "netdev", "table": "t", "chain": "ingress", "handle": 2, "expr": [{"match": {"op":
            "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 9000}},
            {"counter": {"packets": 4242, "bytes": 254520}}, {"drop": null}]}}]}"#;
        assert_eq!(parse_nft_counter(json).expect("parses"), 4242);
        assert!(parse_nft_counter(r#"{"nftables": []}"#).is_err());
        assert!(parse_nft_counter("not json").is_err());
    }

    #[test]
    fn reads_xdp_policy_status() {
        let json = r#"[{"iface": "veth1", "attached": true, "state": null,
            "verdicts": {"drop_rule": {"packets": 900, "bytes": 54000},
                         "drop_limit": {"packets": 0, "bytes": 0},
                         "pass_default": {"packets": 7, "bytes": 420},
                         "pass_not_ip": {"packets": 3, "bytes": 180}},
            "rules": []}]"#;
        let counts = parse_policy_status(json, "veth1").expect("parses");
        assert_eq!(counts, PolicyCounts { dropped: 900, all: 910 });
        assert!(parse_policy_status(json, "veth0").is_err());
    }
}
