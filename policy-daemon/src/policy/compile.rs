//! Compiling a policy to the exact contents of the kernel maps: plain data, no aya.

use policy_common::{PORT_MAP_ENTRIES, PortAction};

use super::{Action, Policy};

/// What a port map holds: the action of the first rule naming each port.
#[derive(Clone, PartialEq, Eq)]
pub struct PortTable(Box<[PortAction]>);

impl PortTable {
    fn new() -> Self {
        Self(vec![PortAction::NoRule; PORT_MAP_ENTRIES as usize].into_boxed_slice())
    }

    /// The action for packets to `port`.
    pub fn get(&self, port: u16) -> PortAction {
        self.0[usize::from(port)]
    }

    /// The ports some rule names, with their action, in port order.
    pub fn entries(&self) -> impl Iterator<Item = (u16, PortAction)> + '_ {
        (0..=u16::MAX).map(|port| (port, self.get(port))).filter(|(_, a)| *a != PortAction::NoRule)
    }

    /// First match wins: a port keeps the action of the first rule that names it.
    fn claim(&mut self, low: u16, high: u16, action: PortAction) {
        for slot in &mut self.0[usize::from(low)..=usize::from(high)] {
            if *slot == PortAction::NoRule {
                *slot = action;
            }
        }
    }
}

impl std::fmt::Debug for PortTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

/// The map contents a policy compiles to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub tcp_dst: PortTable,
    pub udp_dst: PortTable,
}

/// Compiles a validated policy. Rules are applied in order; a port already claimed by an
/// earlier rule keeps that rule's action.
pub fn compile(policy: &Policy) -> Ruleset {
    let mut ruleset = Ruleset { tcp_dst: PortTable::new(), udp_dst: PortTable::new() };
    for rule in &policy.rules {
        let action = match rule.action {
            Action::Pass => PortAction::Pass,
            Action::Drop => PortAction::Drop,
        };
        let all_ports = [super::PortRange { low: 0, high: u16::MAX }];
        let ranges = rule.dst_ports.as_deref().unwrap_or(&all_ports);
        for range in ranges {
            if rule.protocol.matches_tcp() {
                ruleset.tcp_dst.claim(range.low, range.high, action);
            }
            if rule.protocol.matches_udp() {
                ruleset.udp_dst.claim(range.low, range.high, action);
            }
        }
    }
    ruleset
}
