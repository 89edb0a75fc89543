//! Compiling a policy to the exact contents of the kernel maps for one generation:
//! plain data, no aya.
//!
//! The classifier is a linear bit-vector search: each field maps a packet's value to a
//! bitmap of the rules that admit it, the bitmaps are ANDed, and the lowest set bit is the
//! first matching rule. Port fields go through equivalence classes (port → class →
//! bitmap) because N rules cut the port space into at most 2N + 1 classes; address fields
//! are longest-prefix tries whose entries carry the rules of every covering prefix.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use policy_common::{
    self as common, BITMAP_WORDS, FragmentAction, L4Class, MAX_SET_REFS, RuleBitmap, field,
    field_bitmap,
};

use super::{
    Action, Fragments, Mode, Policy, PortRange, Rule, SetDef, V4Table, V6Table,
    reference::{IpPacket, L4},
};

/// The networks of one address field and family, each with the rules it admits (an
/// address gets those of the longest network holding it), in prefix order. Each distinct
/// bitmap is held once: a block list of 100,000 networks has a handful, and its networks
/// then take 12 bytes each rather than 136.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefixes<N> {
    nets: Vec<(N, u32)>,
    bitmaps: Vec<RuleBitmap>,
}

impl<N> Prefixes<N> {
    fn new(entries: Vec<(N, RuleBitmap)>) -> Self {
        let mut pool = BitmapPool::default();
        let nets = entries.into_iter().map(|(net, bitmap)| (net, pool.intern(&bitmap))).collect();
        Self { nets, bitmaps: pool.into_bitmaps() }
    }

    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Each network with its bitmap, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (&N, &RuleBitmap)> + Clone + '_ {
        self.nets.iter().map(|(net, id)| (net, &self.bitmaps[*id as usize]))
    }
}

/// Distinct bitmaps, each held once and named by its index: what [`Prefixes`] and the
/// apply's record of the tries hold instead of a bitmap per network.
#[derive(Clone, Debug, Default)]
pub(crate) struct BitmapPool {
    bitmaps: Vec<RuleBitmap>,
    ids: std::collections::HashMap<RuleBitmap, u32>,
}

impl BitmapPool {
    /// The index of `bitmap`, added if it is new.
    pub(crate) fn intern(&mut self, bitmap: &RuleBitmap) -> u32 {
        self.intern_within(bitmap, u32::MAX).expect("fewer than u32::MAX bitmaps")
    }

    /// [`Self::intern`], `None` when `bitmap` is new and `limit` bitmaps are held (the
    /// address tables' classes).
    pub(crate) fn intern_within(&mut self, bitmap: &RuleBitmap, limit: u32) -> Option<u32> {
        if let Some(&id) = self.ids.get(bitmap) {
            return Some(id);
        }
        let id = self.bitmaps.len() as u32;
        if id >= limit {
            return None;
        }
        self.bitmaps.push(*bitmap);
        self.ids.insert(*bitmap, id);
        Some(id)
    }

    /// The bitmap of index `id` (one [`Self::intern`] returned).
    pub(crate) fn get(&self, id: u32) -> &RuleBitmap {
        &self.bitmaps[id as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.bitmaps.len()
    }

    /// The bitmaps by index, without the lookup of new ones.
    pub(crate) fn into_bitmaps(self) -> Vec<RuleBitmap> {
        self.bitmaps
    }
}

/// What a generation of the kernel maps holds for one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// `CONFIG` (without the generation).
    pub config: common::GenConfig,
    pub rules: Vec<CompiledRule>,
    /// `FIELD_BITMAPS` of one generation: the L4 classes, then the `field_bitmap` entries.
    pub field_bitmaps: Vec<RuleBitmap>,
    pub dport: PortField,
    pub sport: PortField,
    pub src_v4: Prefixes<Ipv4Net>,
    pub dst_v4: Prefixes<Ipv4Net>,
    pub src_v6: Prefixes<Ipv6Net>,
    pub dst_v6: Prefixes<Ipv6Net>,
    /// `PORT_TABLE` of one generation, when the rules constrain nothing but the protocol
    /// and the destination port (or ICMP type): for each (transport class, port), at
    /// index `class * 65,536 + port`, the first matching rule + 1, or 0 for none. The
    /// program then decides a non-fragment with this one lookup (see
    /// `policy_common::port_table`).
    pub port_table: Option<Vec<u16>>,
    /// The IPv4 address tables of the source and the destination field, for a field
    /// whose prefixes fit (`config.fields` then has `SRC_V4_TABLE` / `DST_V4_TABLE`):
    /// the program reads them instead of the field's IPv4 trie. For a field with no
    /// IPv4 prefix but the `/0` (`SRC_V4_DEFAULT_ONLY` / `DST_V4_DEFAULT_ONLY`), its one
    /// class, which the program reads without a walk.
    pub v4_tables: [Option<V4Table>; 2],
    /// The IPv6 address tables of the source and the destination field, for a field
    /// whose IPv6 prefixes fit (`config.fields` then has `SRC_V6_TABLE` /
    /// `DST_V6_TABLE`): the program reads them instead of the field's IPv6 trie. For a
    /// field with no IPv6 prefix but the `/0` (`SRC_V6_DEFAULT_ONLY` /
    /// `DST_V6_DEFAULT_ONLY`), its one class, which the program reads without a walk.
    pub v6_tables: [Option<V6Table>; 2],
    /// The policy's sets with the entries of their files. The rules naming them are in
    /// `config.set_ids` and the `field_bitmap::set_rules` bitmaps.
    pub sets: Vec<SetDef>,
    /// `TCP_FLAGS` of one generation: the rules a TCP segment with each flags byte
    /// admits by its class and flags, then those a TCP fragment admits, then each
    /// transport class's (see `policy_common::tcp_flags`). The program's one lookup for
    /// the class and the flags fields.
    pub tcp_flags: Vec<RuleBitmap>,
}

/// The rows of a port table ([`Ruleset::port_rows`]).
#[derive(Debug)]
pub struct PortRows<'a> {
    /// Distinct rows: for each port, the first matching rule + 1, or 0.
    pub rows: Vec<&'a [u16]>,
    /// Each transport class's row in `rows`; `None`: no rule decides the class.
    pub class_rows: [Option<u32>; L4Class::COUNT as usize],
}

impl Ruleset {
    /// The same rules with every address field read from its tries, not from address
    /// tables (for tests of the tries, which otherwise hold only sets too large for the
    /// tables). An IPv6 field without prefixes keeps its one class: it has no trie walk.
    pub fn without_address_tables(mut self) -> Self {
        self.v4_tables = self.v4_tables.map(|table| table.filter(|t| !t.walked()));
        self.v6_tables = self.v6_tables.map(|table| table.filter(|t| !t.walked()));
        self.config.fields &= !(field::SRC_V4_TABLE
            | field::DST_V4_TABLE
            | field::SRC_V6_TABLE
            | field::DST_V6_TABLE);
        self
    }

    /// [`Self::port_table`] read the way the kernel reads it: the rule that decides a
    /// non-fragment of `class` to `port`, `Some(None)` when none does, `None` when this
    /// ruleset has no port table.
    pub fn port_table_rule(&self, class: L4Class, port: u16) -> Option<Option<usize>> {
        let table = self.port_table.as_ref()?;
        let entry = table[class as usize * common::port_table::PORTS as usize + usize::from(port)];
        Some(entry.checked_sub(1).map(usize::from))
    }

    /// The rows of [`Self::port_table`] the kernel holds (`None` without a port table):
    /// one per transport class that some rule decides, shared by classes decided alike.
    pub fn port_rows(&self) -> Option<PortRows<'_>> {
        let table = self.port_table.as_ref()?;
        let mut rows = PortRows { rows: Vec::new(), class_rows: [None; L4Class::COUNT as usize] };
        for (class, row) in table.chunks(common::port_table::PORTS as usize).enumerate() {
            if row.iter().all(|&entry| entry == 0) {
                continue;
            }
            let index = match rows.rows.iter().position(|held| *held == row) {
                Some(index) => index,
                None => {
                    rows.rows.push(row);
                    rows.rows.len() - 1
                }
            };
            rows.class_rows[class] = Some(index as u32);
        }
        Some(rows)
    }

    /// The rule the XDP program's bitmap search picks for `packet`, read from these map
    /// contents the way the kernel reads them: the L4 class bitmap, port → class →
    /// bitmap, longest-prefix match → bitmap for each address, skipping the fields
    /// `config.fields` leaves out, then AND over `config.words` words and the lowest set
    /// bit. `None` when no rule decides: the default applies, or a non-first fragment is
    /// passed or dropped by `fragments` before the rules are looked at.
    ///
    /// It must always agree with `reference::classify(..).rule`; the differential tests
    /// and the `policy` fuzz target check that.
    ///
    /// Panics if an address trie lacks its `/0` entry, which [`compile`] always adds.
    pub fn first_match(&self, packet: &IpPacket) -> Option<usize> {
        let fb = |i: u32| self.field_bitmaps[i as usize];
        let all = fb(field_bitmap::ALL_RULES);
        let fields = self.config.fields;
        let fragment = matches!(packet.l4, L4::Fragment { .. });
        if fragment && self.config.fragments != FragmentAction::Rules as u8 {
            return None;
        }
        let (dport, sport) = match packet.l4 {
            L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => {
                (dst_port, src_port)
            }
            L4::Icmp { icmp_type } | L4::Icmpv6 { icmp_type } => (u16::from(icmp_type), 0),
            L4::Other { .. } | L4::Fragment { .. } => (0, 0),
        };
        let class_and_flags = match packet.l4 {
            _ if fields & field::TCP_FLAGS == 0 => common::tcp_flags::other(packet.l4.class()),
            L4::Tcp { flags, .. } => common::tcp_flags::byte(flags),
            L4::Fragment { class: L4Class::Tcp } => common::tcp_flags::UNKNOWN,
            other => common::tcp_flags::other(other.class()),
        };
        let l4 = self.tcp_flags[class_and_flags as usize];
        let dp = match (fields & field::DPORT != 0, fragment) {
            (false, _) => all,
            (true, true) => fb(field_bitmap::DPORT_UNCONSTRAINED),
            (true, false) => *self.dport.lookup(dport),
        };
        let sp = match (fields & field::SPORT != 0, fragment) {
            (false, _) => all,
            (true, true) => fb(field_bitmap::SPORT_UNCONSTRAINED),
            (true, false) => *self.sport.lookup(sport),
        };
        let address =
            |addr: IpAddr, field: usize, [v4_bits, v6_bits, used_bit]: [u32; 3]| match addr {
                _ if fields & used_bit == 0 => all,
                // The tables, or the one class of a field without IPv4 prefixes.
                IpAddr::V4(a) if fields & v4_bits != 0 => {
                    *self.v4_tables[field].as_ref().expect("a table for its bits").lookup(a)
                }
                // The tables, or the one class of a field without IPv6 prefixes.
                IpAddr::V6(a) if fields & v6_bits != 0 => {
                    *self.v6_tables[field].as_ref().expect("a table for its bits").lookup(a)
                }
                _ => self.lpm(addr, field == 0),
            };
        let v6_bits = [
            field::SRC_V6_DEFAULT_ONLY | field::SRC_V6_TABLE,
            field::DST_V6_DEFAULT_ONLY | field::DST_V6_TABLE,
        ];
        let v4_bits = [
            field::SRC_V4_DEFAULT_ONLY | field::SRC_V4_TABLE,
            field::DST_V4_DEFAULT_ONLY | field::DST_V4_TABLE,
        ];
        let src = address(packet.src, 0, [v4_bits[0], v6_bits[0], field::SRC]);
        let dst = address(packet.dst, 1, [v4_bits[1], v6_bits[1], field::DST]);
        let src = self.with_sets(src, 0, packet.src, usize::from(self.config.src_sets));
        let dst = self.with_sets(dst, 1, packet.dst, usize::from(self.config.dst_sets));
        (0..self.config.words as usize).find_map(|w| {
            let x = l4.words[w] & dp.words[w] & sp.words[w] & src.words[w] & dst.words[w];
            (x != 0).then(|| w * 64 + x.trailing_zeros() as usize)
        })
    }

    /// `base` plus the rules naming each of the field's sets (`field` 0 source, 1
    /// destination) whose file entries hold `addr`.
    fn with_sets(&self, base: RuleBitmap, field: usize, addr: IpAddr, count: usize) -> RuleBitmap {
        let mut merged = base;
        for i in 0..count {
            let slot = field * MAX_SET_REFS + i;
            let id = self.config.set_ids[slot];
            let holds = self
                .sets
                .iter()
                .any(|s| s.id == id && s.entries.iter().any(|net| net.contains(&addr)));
            if holds {
                let one = field_bitmap::set_rules(field as u32, 1 << i) as usize;
                merged.union(&self.field_bitmaps[one]);
            }
        }
        merged
    }

    /// The bitmap of the longest prefix of the source (or destination) trie holding `addr`.
    fn lpm(&self, addr: IpAddr, src: bool) -> RuleBitmap {
        let best = match (addr, src) {
            (IpAddr::V4(a), true) => longest(&self.src_v4, |n| n.contains(&a), Ipv4Net::prefix_len),
            (IpAddr::V4(a), false) => {
                longest(&self.dst_v4, |n| n.contains(&a), Ipv4Net::prefix_len)
            }
            (IpAddr::V6(a), true) => longest(&self.src_v6, |n| n.contains(&a), Ipv6Net::prefix_len),
            (IpAddr::V6(a), false) => {
                longest(&self.dst_v6, |n| n.contains(&a), Ipv6Net::prefix_len)
            }
        };
        best.expect("compile adds a /0 entry to every trie")
    }
}

fn longest<N>(
    entries: &Prefixes<N>,
    contains: impl Fn(&N) -> bool,
    len: fn(&N) -> u8,
) -> Option<RuleBitmap> {
    entries.iter().filter(|(n, _)| contains(n)).max_by_key(|(n, _)| len(n)).map(|(_, b)| *b)
}

/// What the kernel needs to know about a rule once it has won, plus its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub name: String,
    /// Stable while the rule is unchanged: its counters are kept across reloads.
    pub identity: String,
    pub action: common::Action,
    pub monitor: bool,
    /// The bucket parameters of a limit rule (`LIMITS`), keyed by the rule's identity.
    pub limit: Option<common::LimitConfig>,
}

/// A port field: port → class, class → rules.
#[derive(Clone, PartialEq, Eq)]
pub struct PortField {
    /// Class of every port, 65,536 entries.
    pub classes: Vec<u16>,
    /// Rules admitted by each class.
    pub bitmaps: Vec<RuleBitmap>,
}

impl std::fmt::Debug for PortField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortField {{ {} classes }}", self.bitmaps.len())
    }
}

impl PortField {
    /// The rules a port admits.
    pub fn lookup(&self, port: u16) -> &RuleBitmap {
        &self.bitmaps[usize::from(self.classes[usize::from(port)])]
    }

    /// The class map as the kernel holds it: four 16-bit classes per `u64`, port `p` in
    /// bits `16 * (p % 4)` of word `p / 4`.
    pub fn class_words(&self) -> Vec<u64> {
        self.classes
            .chunks(4)
            .map(|c| {
                c.iter().enumerate().fold(0u64, |w, (i, class)| w | (u64::from(*class) << (16 * i)))
            })
            .collect()
    }
}

/// Compiles a validated policy.
pub fn compile(policy: &Policy) -> Ruleset {
    let rules = &policy.rules;
    let mut all = RuleBitmap::EMPTY;
    for i in 0..rules.len() {
        all.set(i);
    }
    let bitmap_of = |pred: &dyn Fn(&Rule) -> bool| {
        let mut b = RuleBitmap::EMPTY;
        for (i, r) in rules.iter().enumerate() {
            if pred(r) {
                b.set(i);
            }
        }
        b
    };

    let mut field_bitmaps: Vec<RuleBitmap> =
        L4Class::ALL.iter().map(|class| bitmap_of(&|r: &Rule| r.admits(*class))).collect();
    field_bitmaps.push(all);
    field_bitmaps.push(bitmap_of(&|r: &Rule| r.dport_values().is_none()));
    field_bitmaps.push(bitmap_of(&|r: &Rule| r.src_ports.is_none()));

    let mut fields = 0;
    if L4Class::ALL.iter().any(|c| field_bitmaps[*c as usize] != all) {
        fields |= field::L4;
    }
    let dport_values: Vec<_> = rules.iter().map(Rule::dport_values).collect();
    let sport_values: Vec<_> = rules.iter().map(|r| r.src_ports.clone()).collect();
    if dport_values.iter().any(Option::is_some) {
        fields |= field::DPORT;
    }
    if sport_values.iter().any(Option::is_some) {
        fields |= field::SPORT;
    }
    if rules.iter().any(|r| r.src.is_some()) {
        fields |= field::SRC;
    }
    if rules.iter().any(|r| r.dst.is_some()) {
        fields |= field::DST;
    }
    if rules.iter().any(|r| r.tcp_flags.is_some()) {
        fields |= field::TCP_FLAGS;
    }
    if rules.iter().any(|r| r.limit.is_some()) {
        fields |= field::LIMIT;
    }
    // The class-and-flags bitmaps: each class's rules (TCP's: those matching no flags),
    // then, with a flags rule, a TCP fragment's (the TCP rules matching no flags) and a
    // TCP segment's for each flags byte.
    let tcp = |r: &Rule| r.admits(L4Class::Tcp);
    let mut tcp_flags = Vec::new();
    for class in L4Class::ALL {
        debug_assert_eq!(tcp_flags.len() as u32, common::tcp_flags::other(class));
        tcp_flags.push(bitmap_of(&|r: &Rule| {
            r.admits(class) && (class != L4Class::Tcp || r.tcp_flags.is_none())
        }));
    }
    if fields & field::TCP_FLAGS != 0 {
        tcp_flags.push(bitmap_of(&|r: &Rule| tcp(r) && r.tcp_flags.is_none()));
        tcp_flags.extend(
            (0..=u8::MAX)
                .map(|v| bitmap_of(&|r: &Rule| tcp(r) && r.tcp_flags.is_none_or(|f| f.admits(v)))),
        );
        debug_assert_eq!(tcp_flags.len(), common::tcp_flags::PER_GENERATION as usize);
    }

    // The sets each address field names, in the order rules name them: the program looks
    // the address up in each and adds the rules naming it.
    let mut set_ids = [0u32; 2 * MAX_SET_REFS];
    let mut set_counts = [0usize; 2];
    let mut set_rules = vec![RuleBitmap::EMPTY; 2 * MAX_SET_REFS];
    for (i, rule) in rules.iter().enumerate() {
        for (field, names) in [&rule.src_sets, &rule.dst_sets].into_iter().enumerate() {
            for name in names {
                let id = policy.sets.iter().find(|s| &s.name == name).map_or(0, |s| s.id);
                let refs = &set_ids[field * MAX_SET_REFS..field * MAX_SET_REFS + set_counts[field]];
                let slot = match refs.iter().position(|r| *r == id) {
                    Some(k) => field * MAX_SET_REFS + k,
                    None => {
                        // `parse` refuses a policy naming more sets than that.
                        assert!(set_counts[field] < MAX_SET_REFS, "too many sets in a field");
                        let slot = field * MAX_SET_REFS + set_counts[field];
                        set_ids[slot] = id;
                        set_counts[field] += 1;
                        slot
                    }
                };
                set_rules[slot].set(i);
            }
        }
    }
    let d = &policy.defaults;
    let mut config = common::GenConfig {
        words: rules.len().div_ceil(64).min(BITMAP_WORDS) as u32,
        fields,
        default_action: kernel_action(d.action) as u8,
        default_monitor: u8::from(d.mode == Mode::Monitor),
        fragments: match d.fragments {
            Fragments::Rules => FragmentAction::Rules,
            Fragments::Pass => FragmentAction::Pass,
            Fragments::Drop => FragmentAction::Drop,
        } as u8,
        unparsable: kernel_action(d.unparsable) as u8,
        src_sets: set_counts[0] as u8,
        dst_sets: set_counts[1] as u8,
        _pad2: 0,
        set_ids,
    };

    let src: Vec<_> = rules.iter().map(|r| r.src.as_deref()).collect();
    let dst: Vec<_> = rules.iter().map(|r| r.dst.as_deref()).collect();
    let (src_v4, dst_v4) = (prefixes(&src, v4), prefixes(&dst, v4));
    let (src_v6, dst_v6) = (prefixes(&src, v6), prefixes(&dst, v6));
    let v4_tables = address_tables(
        &mut config.fields,
        [&src_v4, &dst_v4],
        [
            [field::SRC, field::SRC_V4_DEFAULT_ONLY, field::SRC_V4_TABLE],
            [field::DST, field::DST_V4_DEFAULT_ONLY, field::DST_V4_TABLE],
        ],
        V4Table::default_only,
        V4Table::build,
    );
    let v6_tables = address_tables(
        &mut config.fields,
        [&src_v6, &dst_v6],
        [
            [field::SRC, field::SRC_V6_DEFAULT_ONLY, field::SRC_V6_TABLE],
            [field::DST, field::DST_V6_DEFAULT_ONLY, field::DST_V6_TABLE],
        ],
        V6Table::default_only,
        V6Table::build_for_lookups,
    );
    // Each combination of a field's sets: the union of their rules. None without sets;
    // with any, both fields' (the entries' layout has them all).
    let set_fields = if set_counts == [0, 0] { 0 } else { 2 };
    for field in 0..set_fields {
        for sets in 0..field_bitmap::SET_COMBINATIONS as usize {
            let mut union = RuleBitmap::EMPTY;
            for (k, rules) in
                set_rules[field * MAX_SET_REFS..(field + 1) * MAX_SET_REFS].iter().enumerate()
            {
                if sets & (1 << k) != 0 {
                    union.union(rules);
                }
            }
            field_bitmaps.push(union);
        }
    }
    debug_assert!(
        [field_bitmap::SET_RULES, field_bitmap::PER_GENERATION]
            .contains(&(field_bitmaps.len() as u32))
    );
    let mut ruleset = Ruleset {
        config,
        rules: rules
            .iter()
            .map(|r| {
                let identity = r.identity();
                CompiledRule {
                    name: r.name.clone(),
                    action: kernel_action(r.action),
                    monitor: r.mode == Mode::Monitor,
                    limit: r.limit.as_ref().map(|l| l.kernel(limit_id(&identity))),
                    identity,
                }
            })
            .collect(),
        field_bitmaps,
        dport: port_field(&dport_values),
        sport: port_field(&sport_values),
        src_v4: Prefixes::new(src_v4),
        dst_v4: Prefixes::new(dst_v4),
        src_v6: Prefixes::new(src_v6),
        dst_v6: Prefixes::new(dst_v6),
        port_table: None,
        v4_tables,
        v6_tables,
        sets: policy.sets.clone(),
        tcp_flags,
    };
    ruleset.port_table = port_table(&ruleset);
    ruleset
}

/// The port table of a ruleset whose rules constrain only the protocol and the
/// destination port (see [`Ruleset::port_table`]); `None` for any other ruleset or an
/// empty one. Each (class, port class) is decided once, from the same bitmaps the
/// general path ANDs, then spread over the ports of that port class.
fn port_table(ruleset: &Ruleset) -> Option<Vec<u16>> {
    let fields = ruleset.config.fields;
    if ruleset.rules.is_empty() || fields & !(field::L4 | field::DPORT) != 0 {
        return None;
    }
    let all = ruleset.field_bitmaps[field_bitmap::ALL_RULES as usize];
    let ports = common::port_table::PORTS as usize;
    let mut table = vec![0u16; L4Class::COUNT as usize * ports];
    for class in 0..L4Class::COUNT as usize {
        let l4 = if fields & field::L4 != 0 { ruleset.field_bitmaps[class] } else { all };
        let first: Vec<u16> = if fields & field::DPORT != 0 {
            ruleset.dport.bitmaps.iter().map(|b| first_plus_one(&l4, b)).collect()
        } else {
            vec![first_plus_one(&l4, &all)]
        };
        for (port, entry) in table[class * ports..(class + 1) * ports].iter_mut().enumerate() {
            let port_class = if fields & field::DPORT != 0 {
                usize::from(ruleset.dport.classes[port])
            } else {
                0
            };
            *entry = first[port_class];
        }
    }
    Some(table)
}

fn first_plus_one(a: &RuleBitmap, b: &RuleBitmap) -> u16 {
    a.first_common(b).map_or(0, |rule| rule as u16 + 1)
}

fn kernel_action(action: Action) -> common::Action {
    match action {
        Action::Pass => common::Action::Pass,
        Action::Drop => common::Action::Drop,
        Action::Limit => common::Action::Limit,
    }
}

/// The bucket id of a limit rule: from its identity, so a rule keeps its buckets across
/// reloads and restarts while it is unchanged, and a changed one starts afresh.
fn limit_id(identity: &str) -> u32 {
    u32::from_str_radix(&identity[..8.min(identity.len())], 16).unwrap_or(1).max(1)
}

fn v4(net: &IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

fn v6(net: &IpNet) -> Option<Ipv6Net> {
    match net {
        IpNet::V6(n) => Some(*n),
        IpNet::V4(_) => None,
    }
}

/// Where the classes of a port field change: every range start and every range end + 1.
fn boundaries(values: &[Option<Vec<PortRange>>]) -> BTreeSet<u32> {
    let mut cuts = BTreeSet::from([0u32]);
    for range in values.iter().flatten().flatten() {
        cuts.insert(u32::from(range.low));
        cuts.insert(u32::from(range.high) + 1);
    }
    cuts.remove(&(1 << 16));
    cuts
}

/// The classes a port field needs (segments with equal rule sets share a class).
pub fn count_port_classes(values: &[Option<Vec<PortRange>>]) -> usize {
    // Cheap upper bound first: most policies are far below the limit.
    let cuts = boundaries(values);
    if cuts.len() <= common::MAX_PORT_CLASSES as usize {
        return cuts.len();
    }
    port_field(values).bitmaps.len()
}

/// One sweep over the ports: at each cut, the rules whose ranges start or end there
/// change, so each segment's bitmap follows from the previous one.
fn port_field(values: &[Option<Vec<PortRange>>]) -> PortField {
    let cuts: Vec<u32> = boundaries(values).into_iter().collect();
    // (port, rule, +1 where a range starts, -1 just past where it ends).
    let mut events: Vec<(u32, usize, i32)> = Vec::new();
    let mut bitmap = RuleBitmap::EMPTY;
    for (rule, ranges) in values.iter().enumerate() {
        match ranges {
            None => bitmap.set(rule),
            Some(ranges) => {
                for r in ranges {
                    events.push((u32::from(r.low), rule, 1));
                    events.push((u32::from(r.high) + 1, rule, -1));
                }
            }
        }
    }
    events.sort_unstable();
    // How many of its ranges cover the current segment, per rule.
    let mut covering = vec![0i32; values.len()];
    let mut events = events.into_iter().peekable();
    let mut classes = vec![0u16; 1 << 16];
    let mut bitmaps = Vec::new();
    let mut class_of: HashMap<RuleBitmap, u16> = HashMap::new();
    for (i, start) in cuts.iter().enumerate() {
        while let Some((_, rule, delta)) = events.next_if(|(port, ..)| port <= start) {
            covering[rule] += delta;
            if covering[rule] > 0 {
                bitmap.set(rule);
            } else {
                bitmap.clear(rule);
            }
        }
        let end = cuts.get(i + 1).copied().unwrap_or(1 << 16);
        let class = *class_of.entry(bitmap).or_insert_with(|| {
            bitmaps.push(bitmap);
            (bitmaps.len() - 1) as u16
        });
        classes[*start as usize..end as usize].fill(class);
    }
    PortField { classes, bitmaps }
}

/// The address tables of one family for the source and the destination field (`[used,
/// default only, table]` bits of each in `bits`), setting their bits in `fields`: for a
/// field a rule constrains, its one class when its only prefix is the `/0` (every
/// address the same rules: the program skips the walk), the tables when its prefixes fit
/// them, else none (the trie).
fn address_tables<N, T>(
    fields: &mut u32,
    entries: [&[(N, RuleBitmap)]; 2],
    bits: [[u32; 3]; 2],
    default_only: fn(RuleBitmap) -> T,
    build: fn(&[(N, RuleBitmap)]) -> Option<T>,
) -> [Option<T>; 2] {
    let mut tables = [None, None];
    for ((entries, [used, only, table_bit]), table) in
        entries.into_iter().zip(bits).zip(&mut tables)
    {
        if *fields & used == 0 {
            continue;
        }
        if entries.len() == 1 {
            *fields |= only;
            *table = Some(default_only(entries[0].1));
        } else if let Some(built) = build(entries) {
            *fields |= table_bit;
            *table = Some(built);
        }
    }
    tables
}

/// The trie entries of one address field and IP version: every prefix any rule names,
/// plus the /0 that catches everything else. An entry's bitmap holds the rules without
/// this field and the rules naming the entry's prefix or a shorter one that contains it,
/// so the longest-prefix match alone gives the answer.
///
/// Sorted by network then length, a prefix comes after every prefix containing it, so
/// one pass with a stack of the prefixes containing the current one computes every
/// bitmap from its nearest container's.
fn prefixes<N>(field: &[Option<&[IpNet]>], family: fn(&IpNet) -> Option<N>) -> Vec<(N, RuleBitmap)>
where
    N: Copy + Ord + Prefix,
{
    let mut unconstrained = RuleBitmap::EMPTY;
    // Every (prefix, rule naming it), and the /0 (named by no rule: `None`).
    let mut named: Vec<(N, Option<u32>)> = vec![(N::default_route(), None)];
    for (rule, nets) in field.iter().enumerate() {
        match nets {
            None => unconstrained.set(rule),
            Some(nets) => {
                named.extend(nets.iter().filter_map(family).map(|n| (n, Some(rule as u32))))
            }
        }
    }
    named.sort_unstable();
    let mut entries: Vec<(N, RuleBitmap)> = Vec::with_capacity(named.len());
    // Indices into `entries` of the prefixes containing the current one, innermost last.
    let mut containers: Vec<usize> = Vec::new();
    for (net, rule) in named {
        let same = entries.last().is_some_and(|(last, _)| *last == net);
        if !same {
            while let Some(&i) = containers.last() {
                if entries[i].0.covers(&net) {
                    break;
                }
                containers.pop();
            }
            let inherited = containers.last().map_or(unconstrained, |&i| entries[i].1);
            containers.push(entries.len());
            entries.push((net, inherited));
        }
        if let Some(rule) = rule {
            let last = entries.len() - 1;
            entries[last].1.set(rule as usize);
        }
    }
    entries
}

/// What [`prefixes`] needs of a network type.
pub trait Prefix: Sized {
    fn default_route() -> Self;
    /// Whether `other` lies within this prefix (or is it).
    fn covers(&self, other: &Self) -> bool;
}

impl Prefix for Ipv4Net {
    fn default_route() -> Self {
        Ipv4Net::default()
    }

    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
}

impl Prefix for Ipv6Net {
    fn default_route() -> Self {
        Ipv6Net::default()
    }

    fn covers(&self, other: &Self) -> bool {
        self.contains(other)
    }
}
