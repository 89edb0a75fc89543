//! The policies the benchmarks load, generated deterministically.
//!
//! Every policy decides the bench's probe packets the same way: a *hit* (source
//! 198.18.0.1 or fd00::1, destination port 9) is dropped by the policy's last rule, a
//! *miss* (source 198.18.0.3 or fd00::3, destination port 8080) matches no rule and
//! passes with the default action. The other rules match neither, so a hit is decided
//! only after the whole rule list, the worst case for a first-match classifier.
//! Addresses in rules come from 198.18.0.0/15 and fd00::/8 (the probe's own /16 is
//! kept for the deciding rule), ports from 10000–59999.

use std::fmt::Write as _;

pub const HIT_V4: &str = "198.18.0.1";
pub const MISS_V4: &str = "198.18.0.3";
pub const HIT_V6: &str = "fd00::1";
pub const MISS_V6: &str = "fd00::3";
pub const HIT_PORT: u16 = 9;
pub const MISS_PORT: u16 = 8080;

/// A small deterministic generator (64-bit LCG, high bits), so every run benchmarks
/// the same policies.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }

    pub fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

fn port(rng: &mut Lcg) -> u16 {
    10_000 + rng.below(50_000) as u16
}

/// Port-only: `rules` rules dropping TCP or UDP destination ports, the last one port 9.
pub fn port_only(rules: usize) -> String {
    let mut rng = Lcg::new(1);
    let mut text = String::new();
    for i in 0..rules.saturating_sub(1) {
        let protocol = if i % 2 == 0 { "udp" } else { "tcp" };
        let _ = write!(
            text,
            "[[rule]]\nname = \"port-{i}\"\naction = \"drop\"\nprotocol = \"{protocol}\"\n\
             dst_ports = [{}]\n\n",
            port(&mut rng)
        );
    }
    let _ = write!(
        text,
        "[[rule]]\nname = \"hit\"\naction = \"drop\"\nprotocol = \"any\"\ndst_ports = [{HIT_PORT}]\n"
    );
    text
}

/// `rules` mixed rules: ports, port ranges, source and destination networks of both
/// families, ICMP types, drop and pass; the last drops port 9 from the probes' /16s.
pub fn mixed(rules: usize) -> String {
    mixed_seeded(rules, 2)
}

/// [`mixed`] with other rules (same kinds and sizes) for another `seed`.
pub fn mixed_seeded(rules: usize, seed: u64) -> String {
    let mut rng = Lcg::new(seed);
    let mut text = String::new();
    for i in 0..rules.saturating_sub(1) {
        let action = if i % 3 == 2 { "pass" } else { "drop" };
        let _ = write!(text, "[[rule]]\nname = \"mixed-{i}\"\naction = \"{action}\"\n");
        // Networks inside 198.19.0.0/16 and fd00:1::/32: never a probe's source.
        let v4_24 = format!("198.19.{}.0/24", rng.below(256));
        let v4_32 = format!("198.19.{}.{}", rng.below(256), rng.below(256));
        let v6_48 = format!("fd00:1:{:x}::/48", rng.below(0x10000));
        let _ = match i % 6 {
            0 => writeln!(text, "protocol = \"udp\"\ndst_ports = [{}]", port(&mut rng)),
            1 => {
                let low = port(&mut rng);
                writeln!(text, "protocol = \"tcp\"\ndst_ports = [\"{low}-{}\"]", low + 10)
            }
            2 => writeln!(text, "src = [\"{v4_24}\", \"{v6_48}\"]"),
            3 => writeln!(
                text,
                "protocol = \"tcp\"\ndst = [\"{v4_32}\"]\ndst_ports = [{}]",
                port(&mut rng)
            ),
            4 => writeln!(
                text,
                "protocol = \"udp\"\nsrc = [\"{v4_24}\", \"{v6_48}\"]\nsrc_ports = [{}]",
                port(&mut rng)
            ),
            _ => writeln!(text, "protocol = \"icmp\"\nsrc = [\"{v4_32}\"]\nicmp_types = [8]"),
        };
        text.push('\n');
    }
    let _ = write!(
        text,
        "[[rule]]\nname = \"hit\"\naction = \"drop\"\nprotocol = \"any\"\n\
         src = [\"198.18.0.0/16\", \"fd00::/16\"]\ndst_ports = [{HIT_PORT}]\n"
    );
    text
}

/// `count` distinct IPv4 networks (/16 to /32, most /24) outside 198.18.0.0/15, for a
/// block list; deterministic.
pub fn v4_networks(count: usize, seed: u64) -> Vec<String> {
    let mut rng = Lcg::new(seed);
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut networks = Vec::with_capacity(count);
    while networks.len() < count {
        let len = match rng.below(10) {
            0 => 16 + rng.below(8),
            1..=6 => 24,
            _ => 25 + rng.below(8),
        };
        let addr = rng.next() & (u32::MAX << (32 - len));
        if addr >> 17 == u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) >> 17 {
            continue;
        }
        if seen.insert((addr, len)) {
            networks.push(format!("{}/{len}", std::net::Ipv4Addr::from(addr)));
        }
    }
    networks
}

/// A block list: one rule dropping everything from `count` IPv4 networks (one of them
/// the probes' hit address 198.18.0.1) and fd00::1.
pub fn prefixes(count: usize) -> String {
    prefixes_seeded(count, 3)
}

/// [`prefixes`] with other networks for another `seed`.
pub fn prefixes_seeded(count: usize, seed: u64) -> String {
    let mut text = String::from("[[rule]]\nname = \"block-list\"\naction = \"drop\"\nsrc = [\n");
    for network in v4_networks(count.saturating_sub(1), seed) {
        let _ = writeln!(text, "  \"{network}\",");
    }
    let _ = write!(text, "  \"{HIT_V4}\",\n  \"{HIT_V6}\",\n]\n");
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use policy_daemon::policy;

    use super::*;

    fn rules_of(text: &str) -> usize {
        let policy = policy::parse([(Path::new("bench.toml"), text)])
            .unwrap_or_else(|e| panic!("generated policy rejected: {e}\n{text}"));
        policy.rules.len()
    }

    #[test]
    fn generated_policies_are_valid_and_sized() {
        assert_eq!(rules_of(&port_only(10)), 10);
        assert_eq!(rules_of(&mixed(1)), 1);
        assert_eq!(rules_of(&mixed(1000)), 1000);
        assert_eq!(rules_of(&prefixes(1000)), 1);
        let networks = v4_networks(5000, 9);
        let unique: std::collections::HashSet<_> = networks.iter().collect();
        assert_eq!(unique.len(), 5000);
        assert_eq!(networks, v4_networks(5000, 9), "deterministic");
    }
}
