//! The SSH lock-out check: a policy that would drop SSH to this host from everywhere
//! (a default `drop`, or a drop rule covering the SSH port) is refused before it is
//! applied, unless it allows SSH from somewhere or says it means it with
//! `i_know_this_blocks_ssh = true` in `[defaults]`.
//!
//! "From everywhere" is decided with the reference classifier: a TCP SYN to each port
//! sshd listens on, from a set of probe sources (documentation addresses, and the
//! networks the policy's own SSH pass rules name). If every probe is dropped, the policy
//! would lock the operator out.

use std::{collections::BTreeSet, fs, net::IpAddr};

use crate::policy::{
    Policy,
    reference::{self, IpPacket, L4, Parsed},
};

/// The port SSH uses when nothing better is known.
const DEFAULT_SSH_PORT: u16 = 22;

/// Sources a policy is tried from: the documentation ranges stand for "anywhere".
const PROBE_SOURCES: [&str; 4] = ["192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1"];

/// Refuses `policy` if it drops SSH from every probe source; returns why.
pub fn check(policy: &Policy) -> Result<(), String> {
    if policy.defaults.i_know_this_blocks_ssh {
        return Ok(());
    }
    for port in ssh_ports() {
        if let Some(why) = blocks(policy, port) {
            return Err(format!(
                "this policy would drop SSH (tcp/{port}) from everywhere ({why}), locking you \
                 out: add a pass rule for tcp/{port} from your admin networks before it, or set \
                 i_know_this_blocks_ssh = true in [defaults]"
            ));
        }
    }
    Ok(())
}

/// Why every probe to `port` is dropped, or `None` if some source gets through.
fn blocks(policy: &Policy, port: u16) -> Option<String> {
    let mut sources: Vec<IpAddr> = PROBE_SOURCES.iter().filter_map(|s| s.parse().ok()).collect();
    // The networks that rules passing SSH name: an admin network must count as "somewhere".
    for rule in &policy.rules {
        for net in rule.src.iter().flatten() {
            sources.push(net.network());
        }
    }
    let mut why = BTreeSet::new();
    for src in sources {
        let dst = match src {
            IpAddr::V4(_) => "192.0.2.100".parse().ok()?,
            IpAddr::V6(_) => "2001:db8::100".parse().ok()?,
        };
        let packet =
            Parsed::Ip(IpPacket { src, dst, l4: L4::Tcp { src_port: 40_000, dst_port: port } });
        let outcome = reference::classify(policy, &packet);
        if !outcome.verdict.drops() {
            return None;
        }
        why.insert(match outcome.rule {
            Some(i) => format!("rule \"{}\"", policy.rules[i].name),
            None => "the default action".to_string(),
        });
    }
    Some(why.into_iter().collect::<Vec<_>>().join(", "))
}

/// The TCP ports an sshd on this host listens on, from /proc; port 22 when none is
/// found (no sshd, or not allowed to look).
fn ssh_ports() -> BTreeSet<u16> {
    let mut ports = listening_ports_of("sshd");
    if ports.is_empty() {
        ports.insert(DEFAULT_SSH_PORT);
    }
    ports
}

/// Listening TCP ports of processes named `name`: their socket inodes matched against
/// /proc/net/tcp and tcp6.
fn listening_ports_of(name: &str) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    let Ok(procs) = fs::read_dir("/proc") else { return BTreeSet::new() };
    for entry in procs.flatten() {
        let path = entry.path();
        let comm = fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let Ok(fds) = fs::read_dir(path.join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if let Some(inode) =
                    target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex; state 0A is LISTEN; inode is field 9.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (true, Some(port)) = (*state == "0A" && inodes.contains(*inode), port) {
                ports.insert(port);
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy;

    fn policy(text: &str) -> Policy {
        policy::parse([(Path::new("p.toml"), text)]).expect("valid")
    }

    #[test]
    fn a_deny_list_is_fine() {
        assert_eq!(
            blocks(&policy("[[rule]]\nname = \"x\"\naction = \"drop\"\ndst_ports = 23\n"), 22),
            None
        );
    }

    #[test]
    fn a_default_drop_without_ssh_is_refused() {
        let p = policy(
            "[defaults]\naction = \"drop\"\n[[rule]]\nname = \"web\"\naction = \"pass\"\ndst_ports = 443\n",
        );
        assert_eq!(blocks(&p, 22), Some("the default action".into()));
    }

    #[test]
    fn ssh_from_an_admin_network_is_enough() {
        let p = policy(
            "[defaults]\naction = \"drop\"\n[[rule]]\nname = \"ssh\"\naction = \"pass\"\n\
             protocol = \"tcp\"\nsrc = \"10.1.2.0/24\"\ndst_ports = 22\n",
        );
        assert_eq!(blocks(&p, 22), None);
        assert_eq!(
            blocks(&p, 2222),
            Some("the default action".into()),
            "another sshd port is not allowed"
        );
    }

    #[test]
    fn a_rule_dropping_ssh_everywhere_is_refused_and_named() {
        let p = policy(
            "[[rule]]\nname = \"no-ssh\"\naction = \"drop\"\nprotocol = \"tcp\"\ndst_ports = 22\n",
        );
        assert_eq!(blocks(&p, 22), Some("rule \"no-ssh\"".into()));
        let monitor = policy(
            "[[rule]]\nname = \"no-ssh\"\naction = \"drop\"\nmode = \"monitor\"\nprotocol = \"tcp\"\ndst_ports = 22\n",
        );
        assert_eq!(blocks(&monitor, 22), None, "monitor mode drops nothing");
    }

    #[test]
    fn the_policy_can_say_it_means_it() {
        let p = policy("[defaults]\naction = \"drop\"\ni_know_this_blocks_ssh = true\n");
        assert_eq!(check(&p), Ok(()));
        let refused = policy("[defaults]\naction = \"drop\"\n");
        let err = check(&refused).expect_err("refused");
        assert!(err.starts_with("this policy would drop SSH (tcp/"), "{err}");
        assert!(err.contains("i_know_this_blocks_ssh = true"), "{err}");
    }
}
