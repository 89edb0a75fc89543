//! Warnings for rules that can never match because an earlier rule matches everything
//! they do (first match wins, so the later rule is dead).

use ipnet::IpNet;
use policy_common::L4Class;

use super::{Diagnostic, PortRange, Rule, TcpFlags};

/// Above this many network comparisons for one pair of rules the check gives up on that
/// pair (no warning): a warning is not worth seconds of CPU on a 100,000-prefix policy.
const MAX_NET_COMPARISONS: usize = 1 << 20;

/// A warning for every rule covered by an earlier one, naming both.
pub fn shadowed(rules: &[Rule]) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    for (j, later) in rules.iter().enumerate() {
        if let Some(earlier) = rules[..j].iter().find(|earlier| covers(earlier, later)) {
            warnings.push(Diagnostic {
                location: later.location.clone(),
                message: format!(
                    "rule \"{}\" is shadowed by rule \"{}\" at {} and can never match",
                    later.name, earlier.name, earlier.location
                ),
                snippet: String::new(),
            });
        }
    }
    warnings
}

/// Whether every packet `later` matches is matched by `earlier`.
pub fn covers(earlier: &Rule, later: &Rule) -> bool {
    L4Class::ALL.iter().all(|c| !later.admits(*c) || earlier.admits(*c))
        && ports_cover(&earlier.dport_values(), &later.dport_values())
        && ports_cover(&earlier.src_ports, &later.src_ports)
        && flags_cover(earlier.tcp_flags, later.tcp_flags)
        && nets_cover(&earlier.src, &later.src)
        && nets_cover(&earlier.dst, &later.dst)
        && sets_cover(&earlier.src, &earlier.src_sets, &later.src_sets)
        && sets_cover(&earlier.dst, &earlier.dst_sets, &later.dst_sets)
}

/// A set's contents change at run time: an earlier rule covers what a later one's sets
/// hold only if it does not constrain the field or names every one of them too.
fn sets_cover(earlier_nets: &Option<Vec<IpNet>>, earlier: &[String], later: &[String]) -> bool {
    earlier_nets.is_none() || later.iter().all(|name| earlier.contains(name))
}

/// Every flags byte `later` admits, `earlier` admits too.
fn flags_cover(earlier: Option<TcpFlags>, later: Option<TcpFlags>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => (0..=u8::MAX).all(|v| !l.admits(v) || e.admits(v)),
    }
}

fn ports_cover(earlier: &Option<Vec<PortRange>>, later: &Option<Vec<PortRange>>) -> bool {
    let (earlier, later) = match (earlier, later) {
        (None, _) => return true,
        (Some(_), None) => return false,
        (Some(e), Some(l)) => (e, l),
    };
    later.iter().all(|range| {
        let mut next = u32::from(range.low);
        while next <= u32::from(range.high) {
            match earlier.iter().find(|e| u32::from(e.low) <= next && next <= u32::from(e.high)) {
                Some(e) => next = u32::from(e.high) + 1,
                None => return false,
            }
        }
        true
    })
}

fn nets_cover(earlier: &Option<Vec<IpNet>>, later: &Option<Vec<IpNet>>) -> bool {
    let (earlier, later) = match (earlier, later) {
        (None, _) => return true,
        (Some(_), None) => return false,
        (Some(e), Some(l)) => (e, l),
    };
    if earlier.len().saturating_mul(later.len()) > MAX_NET_COMPARISONS {
        return false;
    }
    later.iter().all(|l| earlier.iter().any(|e| e.contains(l)))
}
