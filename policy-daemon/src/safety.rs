//! The SSH lock-out check: a policy that would drop SSH to this host from everywhere
//! (a default `drop`, or a drop rule covering the SSH port) is refused before it is
//! applied, unless it allows SSH from somewhere or says it means it with
//! `i_know_this_blocks_ssh = true` in `[defaults]`.
//!
//! "To this host" and "from everywhere" are decided with the reference classifier, per
//! address family: a TCP SYN to each SSH port and each of the host's own addresses on
//! the interfaces the policy is enforced on, from a set of sources that stand for
//! anywhere (documentation addresses) and the networks the policy's rules name (so an
//! admin network counts as somewhere). If every probe to every address of a family is
//! dropped, SSH over that family is cut: the policy is refused, naming the family, the
//! addresses and what drops them.
//!
//! The SSH ports are found without looking into other processes (which the daemon's
//! three capabilities do not allow): the ports sshd's configuration and systemd's ssh
//! socket unit name (a socket-activated sshd), kept to those something listens on
//! (/proc/net/tcp and tcp6) when any is; port 22 when nothing says otherwise.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use crate::policy::{
    Policy,
    reference::{self, IpPacket, L4, Parsed},
};

/// The port sshd listens on when its configuration names none.
const DEFAULT_SSH_PORT: u16 = 22;
/// sshd's configuration.
const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
/// The socket units of a socket-activated sshd (Debian and Ubuntu name it `ssh`, others
/// `sshd`), and where systemd looks for units and drop-ins, most important first.
const SSH_SOCKET_UNITS: [&str; 2] = ["ssh.socket", "sshd.socket"];
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
/// Includes followed at most this deep (sshd refuses deeper nesting too).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Sources a policy is tried from: the documentation ranges stand for "anywhere".
const ANYWHERE_V4: [Ipv4Addr; 3] =
    [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(203, 0, 113, 1)];
const ANYWHERE_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)];
/// Destinations when the host has no address of its own on the interfaces: a policy must
/// still not cut SSH to whatever address the host gets.
const SOME_HOST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const SOME_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

/// What the check needs to know about this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The TCP ports sshd listens on (or will).
    pub ssh_ports: BTreeSet<u16>,
    /// The host's own addresses on the interfaces the policy is enforced on.
    pub addresses: Vec<IpAddr>,
}

impl Host {
    /// Finds the SSH ports and the addresses of `ifaces` (every interface's when empty).
    pub fn probe(ifaces: &[String]) -> Self {
        let listening = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .flat_map(|table| listening_ports(&fs::read_to_string(table).unwrap_or_default()))
            .collect();
        let configured = sshd_ports(Path::new(SSHD_CONFIG))
            .into_iter()
            .chain(socket_unit_ports(&UNIT_DIRS.map(PathBuf::from)))
            .collect();
        Self { ssh_ports: ssh_ports(configured, &listening), addresses: addresses(ifaces) }
    }
}

/// A policy that would drop SSH to every address of this host of one family, from
/// everywhere: why it is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this policy would drop SSH (tcp/{port}) to this host's {} from everywhere ({}), locking \
     you out: add a pass rule for tcp/{port} from your admin networks before it, or set \
     i_know_this_blocks_ssh = true in [defaults]",
    list_addresses(.addresses),
    list(.dropped_by)
)]
pub struct Lockout {
    pub port: u16,
    /// The host's addresses of the family (or the stand-in when it has none).
    pub addresses: Vec<IpAddr>,
    /// What drops the probes.
    pub dropped_by: Vec<DropCause>,
}

/// What drops an SSH probe.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropCause {
    Rule(String),
    DefaultAction,
}

impl std::fmt::Display for DropCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rule(name) => write!(f, "rule \"{name}\""),
            Self::DefaultAction => f.write_str("the default action"),
        }
    }
}

/// "IPv4 address 198.18.0.2", "IPv6 addresses fd00::2, fd00::3".
fn list_addresses(addresses: &[IpAddr]) -> String {
    let v6 = addresses.first().is_some_and(IpAddr::is_ipv6);
    let (name, plural) =
        (if v6 { "IPv6" } else { "IPv4" }, if addresses.len() > 1 { "es" } else { "" });
    format!("{name} address{plural} {}", list(addresses))
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Refuses `policy` if it would cut SSH to this host over a whole address family.
pub fn check(policy: &Policy, host: &Host) -> Result<(), Lockout> {
    if policy.defaults.i_know_this_blocks_ssh {
        return Ok(());
    }
    for port in &host.ssh_ports {
        for v6 in [false, true] {
            if let Some(lockout) = cut(policy, host, *port, v6) {
                return Err(lockout);
            }
        }
    }
    Ok(())
}

/// The TCP flags of the segments an SSH session needs: the SYN that opens it, and the
/// ACK and ACK+PSH segments that carry it.
const SSH_SEGMENTS: [u8; 3] = {
    use policy_common::tcp_flags::{ACK, PSH, SYN};
    [SYN, ACK, ACK | PSH]
};

/// Whether every source, on every address of the family, has one of the segments
/// to `port` an SSH session needs dropped.
fn cut(policy: &Policy, host: &Host, port: u16, v6: bool) -> Option<Lockout> {
    let family = |a: &IpAddr| a.is_ipv6() == v6;
    let mut targets: Vec<IpAddr> = host.addresses.iter().copied().filter(family).collect();
    if host.addresses.is_empty() {
        targets.push(if v6 { SOME_HOST_V6.into() } else { SOME_HOST_V4.into() });
    }
    if targets.is_empty() {
        // No address of this family: no SSH over it to cut.
        return None;
    }
    let mut sources: Vec<IpAddr> = if v6 {
        ANYWHERE_V6.iter().map(|a| IpAddr::V6(*a)).collect()
    } else {
        ANYWHERE_V4.iter().map(|a| IpAddr::V4(*a)).collect()
    };
    // The networks rules name: an admin network must count as "somewhere".
    sources.extend(policy.rules.iter().flat_map(|r| r.src.iter().flatten()).map(|n| n.network()));
    sources.retain(family);
    let mut why = BTreeSet::new();
    for dst in &targets {
        for src in &sources {
            // A new connection (SYN) and the segments of an open one (ACK, ACK+PSH):
            // dropping either cuts SSH.
            let mut cut = false;
            for flags in SSH_SEGMENTS {
                let packet = Parsed::Ip(IpPacket {
                    src: *src,
                    dst: *dst,
                    l4: L4::Tcp { src_port: 40_000, dst_port: port, flags },
                });
                let outcome = reference::classify(policy, &packet);
                if outcome.verdict.drops() {
                    cut = true;
                    why.insert(match outcome.rule {
                        Some(i) => DropCause::Rule(policy.rules[i].name.clone()),
                        None => DropCause::DefaultAction,
                    });
                }
            }
            if !cut {
                return None;
            }
        }
    }
    Some(Lockout { port, addresses: targets, dropped_by: why.into_iter().collect() })
}

/// The SSH ports: the configured ones something listens on, or all configured ones when
/// none is listened on (sshd not running now: protect what it will listen on).
fn ssh_ports(configured: BTreeSet<u16>, listening: &BTreeSet<u16>) -> BTreeSet<u16> {
    let configured =
        if configured.is_empty() { BTreeSet::from([DEFAULT_SSH_PORT]) } else { configured };
    let live: BTreeSet<u16> = configured.intersection(listening).copied().collect();
    if live.is_empty() { configured } else { live }
}

/// Ports in state LISTEN in a /proc/net/tcp or tcp6 table.
fn listening_ports(table: &str) -> BTreeSet<u16> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex, then rem_address, then st.
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            (*state == LISTEN).then(|| u16::from_str_radix(local.rsplit(':').next()?, 16).ok())?
        })
        .collect()
}

/// The ports sshd's configuration at `path` makes it listen on: `Port` lines (22 when
/// there are none) and ports given with `ListenAddress`, following `Include`s. Empty
/// when the file cannot be read.
fn sshd_ports(path: &Path) -> BTreeSet<u16> {
    let Ok(text) = fs::read_to_string(path) else { return BTreeSet::new() };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut config = SshdPorts::default();
    config.read(&text, dir, 0);
    if config.ports.is_empty() {
        config.ports.insert(DEFAULT_SSH_PORT);
    }
    config.ports.extend(config.listen_ports);
    config.ports
}

#[derive(Default)]
struct SshdPorts {
    ports: BTreeSet<u16>,
    /// Ports `ListenAddress host:port` names (listened on besides `Port`'s).
    listen_ports: BTreeSet<u16>,
}

impl SshdPorts {
    /// One configuration text; `dir` resolves relative `Include`s.
    fn read(&mut self, text: &str, dir: &Path, depth: usize) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
                Some((k, v)) => (k, v.trim_start_matches(|c: char| c.is_whitespace() || c == '=')),
                None => (line, ""),
            };
            match keyword.to_ascii_lowercase().as_str() {
                "port" => self.ports.extend(value.trim().parse::<u16>().ok()),
                "listenaddress" => {
                    let address = value.split_whitespace().next().unwrap_or_default();
                    self.listen_ports.extend(port_after_address(address));
                }
                "include" if depth < MAX_INCLUDE_DEPTH => {
                    for pattern in value.split_whitespace() {
                        for file in expand(&dir.join(pattern)) {
                            if let Ok(text) = fs::read_to_string(&file) {
                                self.read(&text, dir, depth + 1);
                            }
                        }
                    }
                }
                // Port and ListenAddress may not appear in Match blocks.
                "match" => return,
                _ => {}
            }
        }
    }
}

/// The port of `host:port`, `[v6]:port` or `ip:port`; `None` for a bare address.
fn port_after_address(address: &str) -> Option<u16> {
    let (host, port) = address.rsplit_once(':')?;
    // A bare IPv6 address has colons but no brackets and no port.
    if host.contains(':') && !host.ends_with(']') {
        return None;
    }
    port.parse().ok()
}

/// The files a path with `*` and `?` in its last component names, sorted (as sshd's
/// glob does); the path itself if it has no wildcard.
fn expand(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard_match(name, n)))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Shell-style matching of `*` and `?`.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.chars().next() {
        None => name.is_empty(),
        Some('*') => (0..=name.len())
            .filter(|i| name.is_char_boundary(*i))
            .any(|i| wildcard_match(&pattern[1..], &name[i..])),
        Some('?') => {
            let mut rest = name.chars();
            rest.next().is_some() && wildcard_match(&pattern[1..], rest.as_str())
        }
        Some(c) => {
            name.starts_with(c) && wildcard_match(&pattern[c.len_utf8()..], &name[c.len_utf8()..])
        }
    }
}

/// The ports of the `ListenStream=` lines of the ssh socket units in `dirs` (systemd's
/// unit directories, most important first): the unit file found first, then its drop-ins
/// in file-name order; an empty `ListenStream=` resets the list.
fn socket_unit_ports(dirs: &[PathBuf]) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for unit in SSH_SOCKET_UNITS {
        let Some(file) = dirs.iter().map(|d| d.join(unit)).find(|f| f.exists()) else { continue };
        let mut dropins: Vec<PathBuf> = Vec::new();
        for dir in dirs.iter().rev() {
            for entry in fs::read_dir(dir.join(format!("{unit}.d"))).into_iter().flatten().flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "conf") {
                    // A drop-in of the same name in a more important directory wins.
                    dropins.retain(|d| d.file_name() != path.file_name());
                    dropins.push(path);
                }
            }
        }
        dropins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut listen: Vec<u16> = Vec::new();
        for path in std::iter::once(file).chain(dropins) {
            let text = fs::read_to_string(&path).unwrap_or_default();
            listen_stream_ports(&text, &mut listen);
        }
        ports.extend(listen);
    }
    ports
}

/// Applies the `ListenStream=` lines of one unit file to `ports`.
fn listen_stream_ports(text: &str, ports: &mut Vec<u16>) {
    for line in text.lines() {
        let Some(value) = line.trim().strip_prefix("ListenStream=") else { continue };
        let value = value.trim();
        if value.is_empty() {
            ports.clear();
        } else if let Ok(port) = value.parse() {
            ports.push(port);
        } else if let Some(port) = port_after_address(value) {
            ports.push(port);
        }
    }
}

/// The host's own addresses on `ifaces` (on every interface when empty): not loopback,
/// not link-local.
fn addresses(ifaces: &[String]) -> Vec<IpAddr> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out: Vec<IpAddr> = all
        .filter(|a| ifaces.is_empty() || ifaces.contains(&a.interface_name))
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|a| match a {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified()
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn policy(text: &str) -> Policy {
        policy::parse([(Path::new("p.toml"), text)]).expect("valid")
    }

    /// A host with sshd on `ports` and these addresses on the filtered interface.
    fn host(ports: &[u16], addresses: &[&str]) -> Host {
        Host {
            ssh_ports: ports.iter().copied().collect(),
            addresses: addresses.iter().map(|a| a.parse().expect("an address")).collect(),
        }
    }

    const HOST: [&str; 2] = ["198.51.100.7", "2001:db8:7::7"];

    #[test]
    fn a_deny_list_is_fine() {
        let p = policy("[[rule]]\nname = \"x\"\naction = \"drop\"\ndst_ports = 23\n");
        assert_eq!(check(&p, &host(&[22], &HOST)), Ok(()));
    }

    #[test]
    fn a_default_drop_without_ssh_is_refused_naming_the_family_and_address() {
        let p = policy(
            "[defaults]\naction = \"drop\"\n[[rule]]\nname = \"web\"\naction = \"pass\"\ndst_ports = 443\n",
        );
        let err = check(&p, &host(&[22], &HOST)).expect_err("refused").to_string();
        assert_eq!(
            err,
            "this policy would drop SSH (tcp/22) to this host's IPv4 address 198.51.100.7 from \
             everywhere (the default action), locking you out: add a pass rule for tcp/22 from \
             your admin networks before it, or set i_know_this_blocks_ssh = true in [defaults]"
        );
    }

    #[test]
    fn ssh_from_an_admin_network_is_enough_but_only_on_sshds_port() {
        let p = policy(
            "[defaults]\naction = \"drop\"\n[[rule]]\nname = \"ssh\"\naction = \"pass\"\n\
             protocol = \"tcp\"\nsrc = [\"10.1.2.0/24\", \"fd00:1::/64\"]\ndst_ports = 22\n",
        );
        assert_eq!(check(&p, &host(&[22], &HOST)), Ok(()));
        let err = check(&p, &host(&[2222], &HOST)).expect_err("sshd on 2222 is cut").to_string();
        assert!(err.starts_with("this policy would drop SSH (tcp/2222)"), "{err}");
    }

    #[test]
    fn an_allow_list_passing_ssh_to_the_hosts_own_address_is_accepted() {
        let p = policy(
            "[defaults]\naction = \"drop\"\n[[rule]]\nname = \"ssh\"\naction = \"pass\"\n\
             protocol = \"tcp\"\ndst = [\"198.51.100.7\", \"2001:db8:7::7\"]\ndst_ports = 22\n",
        );
        assert_eq!(check(&p, &host(&[22], &HOST)), Ok(()));
    }

    #[test]
    fn dropping_ssh_to_the_hosts_own_address_is_refused() {
        let p = policy(
            "[[rule]]\nname = \"no-ssh-here\"\naction = \"drop\"\nprotocol = \"tcp\"\n\
             dst = \"198.51.100.7\"\ndst_ports = 22\n",
        );
        let err = check(&p, &host(&[22], &HOST)).expect_err("refused").to_string();
        assert!(err.contains("IPv4 address 198.51.100.7"), "{err}");
        assert!(err.contains("rule \"no-ssh-here\""), "{err}");
        // A host with a second IPv4 address on the interface still has a way in.
        assert_eq!(check(&p, &host(&[22], &["198.51.100.7", "198.51.100.8"])), Ok(()));
    }

    #[test]
    fn dropping_the_segments_of_open_ssh_sessions_or_new_ones_is_refused() {
        // Every segment of an open session carries ACK; a new one starts with a SYN.
        for (flags, cut) in [("ack", true), ("syn,!ack", true), ("=ack,psh", true), ("=", false)] {
            let p = policy(&format!(
                "[[rule]]\nname = \"flags\"\naction = \"drop\"\nprotocol = \"tcp\"\n\
                 dst_ports = 22\ntcp_flags = \"{flags}\"\n"
            ));
            let result = check(&p, &host(&[22], &HOST));
            assert_eq!(result.is_err(), cut, "tcp_flags = {flags:?}: {result:?}");
        }
    }

    #[test]
    fn dropping_ssh_from_all_of_one_family_is_refused() {
        let p = policy(
            "[[rule]]\nname = \"no-ssh-v4\"\naction = \"drop\"\nprotocol = \"tcp\"\n\
             src = \"0.0.0.0/0\"\ndst_ports = 22\n",
        );
        let err = check(&p, &host(&[22], &HOST))
            .expect_err("IPv6 still passing is no excuse")
            .to_string();
        assert!(err.contains("IPv4 address 198.51.100.7") && err.contains("no-ssh-v4"), "{err}");
        assert_eq!(check(&p, &host(&[22], &["2001:db8:7::7"])), Ok(()), "an IPv6-only host");
    }

    #[test]
    fn without_addresses_the_check_still_applies() {
        let p = policy("[defaults]\naction = \"drop\"\n");
        let err = check(&p, &host(&[22], &[])).expect_err("refused").to_string();
        assert!(err.contains("IPv4 address 192.0.2.100"), "{err}");
    }

    #[test]
    fn monitor_mode_and_the_override_pass_the_check() {
        let monitor = policy(
            "[[rule]]\nname = \"no-ssh\"\naction = \"drop\"\nmode = \"monitor\"\nprotocol = \"tcp\"\ndst_ports = 22\n",
        );
        assert_eq!(check(&monitor, &host(&[22], &HOST)), Ok(()), "monitor mode drops nothing");
        let p = policy("[defaults]\naction = \"drop\"\ni_know_this_blocks_ssh = true\n");
        assert_eq!(check(&p, &host(&[22], &HOST)), Ok(()));
    }

    #[test]
    fn listening_ports_are_read_from_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     0: 00000000:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0\n\
                     1: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1235 1 0\n\
                     2: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 99 1 0\n";
        assert_eq!(listening_ports(table), BTreeSet::from([22, 2222]));
    }

    #[test]
    fn the_ssh_ports_are_the_configured_ones_something_listens_on() {
        let listening = BTreeSet::from([22, 80, 2222]);
        assert_eq!(ssh_ports(BTreeSet::from([2222]), &listening), BTreeSet::from([2222]));
        assert_eq!(ssh_ports(BTreeSet::from([22, 2200]), &listening), BTreeSet::from([22]));
        // Not running now: what it will listen on.
        assert_eq!(ssh_ports(BTreeSet::from([2200]), &listening), BTreeSet::from([2200]));
        assert_eq!(ssh_ports(BTreeSet::new(), &BTreeSet::new()), BTreeSet::from([22]));
    }

    /// A scratch directory for configuration files, and its path; removed on drop.
    struct Scratch(PathBuf, #[allow(dead_code, reason = "removes it on drop")] tempfile::TempDir);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = tempfile::Builder::new()
                .prefix(&format!("xdp-policy-ssh-{name}-"))
                .tempdir()
                .expect("scratch directory");
            Self(dir.path().to_path_buf(), dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            fs::create_dir_all(path.parent().expect("a parent")).expect("directories");
            fs::write(&path, text).expect("writing");
            path
        }
    }

    #[test]
    fn sshd_ports_come_from_its_configuration_and_includes() {
        let dir = Scratch::new("sshd");
        let config = dir.write(
            "sshd_config",
            "# Port 99\nInclude sshd_config.d/*.conf\nport=2222\nListenAddress 0.0.0.0\n\
             ListenAddress [::]:2223\nMatch User backup\n  Port 3333\n",
        );
        dir.write("sshd_config.d/10-extra.conf", "Port 2200\nListenAddress 192.0.2.1:2201\n");
        dir.write("sshd_config.d/other.txt", "Port 4444\n");
        assert_eq!(sshd_ports(&config), BTreeSet::from([2200, 2201, 2222, 2223]));
        let plain = dir.write("plain", "PermitRootLogin no\n");
        assert_eq!(sshd_ports(&plain), BTreeSet::from([22]), "sshd's default");
        assert_eq!(sshd_ports(&dir.0.join("missing")), BTreeSet::new());
    }

    #[test]
    fn a_socket_activated_sshd_is_found_in_its_socket_unit_and_drop_ins() {
        let dir = Scratch::new("socket");
        let (etc, lib) = (dir.0.join("etc"), dir.0.join("lib"));
        dir.write("lib/ssh.socket", "[Socket]\nListenStream=22\nAccept=yes\n");
        assert_eq!(socket_unit_ports(&[etc.clone(), lib.clone()]), BTreeSet::from([22]));
        dir.write(
            "etc/ssh.socket.d/port.conf",
            "[Socket]\nListenStream=\nListenStream=[::]:2222\n",
        );
        dir.write("lib/ssh.socket.d/zz.conf", "[Socket]\nListenStream=0.0.0.0:2223\n");
        assert_eq!(socket_unit_ports(&[etc, lib]), BTreeSet::from([2222, 2223]));
    }

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("*.conf", "10-x.conf"));
        assert!(!wildcard_match("*.conf", "x.conf.bak"));
        assert!(wildcard_match("a?c*", "abcdef"));
        assert!(!wildcard_match("a?c", "ac"));
    }
}
