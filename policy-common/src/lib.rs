//! What the kernel program and the daemon must agree on: map and program names, the byte
//! layout of every map key and value, and the size limits.
//!
//! Every map value here is `#[repr(C)]` with explicit padding and a size assertion, holds
//! no `bool` or Rust enum, and states the byte order of each field. Changing a layout is a
//! change of the kernel ABI between the daemon and a loaded program.
#![no_std]

use core::mem::size_of;

/// Name of the XDP program in the eBPF object. Kernel object names keep 15 bytes, so
/// every name here is at most 15 bytes long.
pub const PROGRAM_NAME: &str = "policy_xdp";

/// `Array<PortEntry>` indexed by TCP destination port (host byte order).
pub const TCP_DST_PORTS_MAP: &str = "TCP_DST_PORTS";
/// `Array<PortEntry>` indexed by UDP destination port (host byte order).
pub const UDP_DST_PORTS_MAP: &str = "UDP_DST_PORTS";
/// `PerCpuArray<Counter>` indexed by [`Verdict`].
pub const VERDICT_COUNTERS_MAP: &str = "VERDICTS";

/// Every map the program declares, for checks that the built object carries them all.
pub const MAP_NAMES: [&str; 3] = [TCP_DST_PORTS_MAP, UDP_DST_PORTS_MAP, VERDICT_COUNTERS_MAP];

/// Entries in each port map: one per possible port, so a lookup is a single array index
/// and a port range costs nothing more than a single port.
pub const PORT_MAP_ENTRIES: u32 = 1 << 16;

/// IPv6 extension headers the parser walks before it gives up on finding the transport
/// header; a packet with more is counted as [`Verdict::PassMalformed`] and passed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// XDP return codes (`enum xdp_action` of the kernel UAPI), for userspace that reads
/// them back from BPF_PROG_TEST_RUN. The kernel program uses aya's bindings and asserts
/// they are equal.
pub mod xdp_action {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
}

/// What a port map entry says about packets to that port.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortAction {
    /// No rule names this port: the default action applies.
    NoRule = 0,
    /// The first rule that names this port passes the packet.
    Pass = 1,
    /// The first rule that names this port drops the packet.
    Drop = 2,
}

impl TryFrom<u8> for PortAction {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(Self::NoRule),
            1 => Ok(Self::Pass),
            2 => Ok(Self::Drop),
            other => Err(other),
        }
    }
}

/// Value of the port maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// A [`PortAction`] as `u8`.
    pub action: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<PortEntry>() == 4);

impl PortEntry {
    pub const NO_RULE: Self = Self::new(PortAction::NoRule);

    pub const fn new(action: PortAction) -> Self {
        Self { action: action as u8, _pad: [0; 3] }
    }
}

/// Why the program passed or dropped a packet: the index into the verdict counters.
///
/// Every packet is counted under exactly one verdict.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// TCP or UDP packet whose destination port no rule names.
    PassNoMatch = 0,
    /// Matched a rule whose action is `pass`.
    PassRule = 1,
    /// Matched a rule whose action is `drop`.
    DropRule = 2,
    /// Not IPv4 or IPv6 (ARP, LLDP, …), or more than two VLAN tags.
    PassNotIp = 3,
    /// IP, but not TCP or UDP (ICMP, ICMPv6, ESP, …).
    PassOtherProto = 4,
    /// A non-first IP fragment: it carries no ports, so no port rule can match it.
    PassFragment = 5,
    /// Truncated or malformed headers (or too many IPv6 extension headers): never
    /// matched against a rule, passed for the kernel stack to judge.
    PassMalformed = 6,
}

impl Verdict {
    /// Number of verdicts, the size of the verdict counter map.
    pub const COUNT: u32 = 7;

    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::PassNoMatch,
        Self::PassRule,
        Self::DropRule,
        Self::PassNotIp,
        Self::PassOtherProto,
        Self::PassFragment,
        Self::PassMalformed,
    ];

    /// Stable name used in logs and output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNoMatch => "pass_no_match",
            Self::PassRule => "pass_rule",
            Self::DropRule => "drop_rule",
            Self::PassNotIp => "pass_not_ip",
            Self::PassOtherProto => "pass_other_proto",
            Self::PassFragment => "pass_fragment",
            Self::PassMalformed => "pass_malformed",
        }
    }

    /// Whether the program drops packets with this verdict.
    pub const fn drops(self) -> bool {
        matches!(self, Self::DropRule)
    }
}

impl TryFrom<u32> for Verdict {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        Self::ALL.get(value as usize).copied().ok_or(value)
    }
}

/// Value of the verdict counters (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets, native byte order.
    pub packets: u64,
    /// Bytes of those packets as the program saw them (from the Ethernet header on).
    pub bytes: u64,
}

const _: () = assert!(size_of::<Counter>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::PortEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_all_is_indexed_by_discriminant() {
        for (i, verdict) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*verdict as usize, i);
            assert_eq!(Verdict::try_from(i as u32), Ok(*verdict));
        }
        assert_eq!(Verdict::try_from(Verdict::COUNT), Err(Verdict::COUNT));
        assert_eq!(Verdict::ALL.iter().filter(|v| v.drops()).count(), 1);
    }

    #[test]
    fn port_action_round_trips_through_u8() {
        for action in [PortAction::NoRule, PortAction::Pass, PortAction::Drop] {
            assert_eq!(PortAction::try_from(PortEntry::new(action).action), Ok(action));
        }
        assert_eq!(PortAction::try_from(3), Err(3));
        assert_eq!(PortEntry::NO_RULE.action, 0, "zeroed map memory must mean `no rule`");
    }

    #[test]
    fn names_fit_the_kernel_object_name_limit() {
        for name in MAP_NAMES.iter().chain([&PROGRAM_NAME]) {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }
}
