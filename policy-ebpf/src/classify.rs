//! Multi-field first-match classification (linear bit-vector search): each field lookup
//! yields a bitmap of the rules that admit the packet's value; the lowest bit set in all
//! of them is the first matching rule. The cost does not grow with the number of rules,
//! only with the number of bitmap words read (one per 64 rules, up to the first common
//! rule or the words in use; past 1,024 rules, only up to the last word the bitmaps'
//! summaries have in common).

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    maps::{Array, lpm_trie::Key},
    programs::XdpContext,
};
use policy_common::{
    Action, BITMAP_WORDS, FragmentAction, GENERATION_PREFIX_BITS, GENERATIONS, GenConfig, L4Class,
    MAX_PORT_CLASSES, MAX_SET_REFS, PORT_CLASS_WORDS, RuleBitmap, SET_EXPIRED_STEPS,
    SET_KEY_PREFIX_BITS, Verdict, active, field, field_bitmap, ipv4_key, ipv6_key,
    port_bitmap_index, port_table, rule_index, tcp_flags, v4_table, v6_table,
};

use crate::{
    limit::{LimitProbe, xdp_policy_limit},
    maps::{
        ACTIVE, CONFIG, DPORT_BITMAPS, DPORT_CLASSES, DST_V4, DST_V6, FIELD_BITMAPS, PORT_TABLE,
        RULES, SET_HITS, SET_SCRATCH, SETS, SPORT_BITMAPS, SPORT_CLASSES, SRC_V4, SRC_V6,
        TCP_FLAGS, V4_CLASSES, V4_L1, V4_L2, V4_L3, V6_BLOCKS, V6_CLASSES, V6_L1,
    },
    parse::{Family, Packet, Transport, address_bytes},
};

/// ICMPv6 router solicitation .. redirect: neighbour discovery, never dropped by the
/// default action.
const ND_FIRST_TYPE: u16 = 133;
const ND_LAST_TYPE: u16 = 137;

/// The decision: the verdict and, when a rule decided, its counter slot.
pub struct Decision {
    pub verdict: Verdict,
    pub counter_slot: Option<u32>,
}

impl Decision {
    pub const fn of(verdict: Verdict) -> Self {
        Self { verdict, counter_slot: None }
    }
}

/// The active generation's word (see `policy_common::active`), read once per packet:
/// everything that judges the packet uses this generation, so a concurrent flip of
/// ACTIVE gives it the old ruleset or the new one, never a mix.
#[inline(always)]
pub fn active() -> u32 {
    ACTIVE.get(0).copied().unwrap_or(0)
}

/// The decision of a generation whose rules look at nothing but protocol and
/// destination port: it has every (class, port) decided in one table, one lookup
/// instead of one per field. The generation names each class's row in the table (none:
/// no rule decides the class). `None` for another generation, and for a non-first
/// fragment (it has no ports): [`classify`] decides those.
#[inline(always)]
pub fn by_port_table(active: u32, l4: &Transport) -> Option<Decision> {
    if active & active::PORT_TABLE == 0 || l4.fragment {
        return None;
    }
    let entry = match active::row_of(active, l4.class as u32) {
        0 => 0,
        row => {
            let (word, shift) = port_table::word(port_table::index(row - 1, l4.dport));
            ((*PORT_TABLE.get(word)? >> shift) & 0xffff) as u32
        }
    };
    if entry == 0 {
        return Some(match CONFIG.get(active % GENERATIONS) {
            Some(config) => decide_default(config, l4),
            None => Decision::of(Verdict::PassDefault),
        });
    }
    let (code, slot) = port_table::decode(entry);
    // Anything but the pass and monitor codes is not written: drop.
    let verdict = match code {
        c if c == u32::from(port_table::PASS) => Verdict::PassRule,
        c if c == u32::from(port_table::MONITOR) => Verdict::MonitorRule,
        _ => Verdict::DropRule,
    };
    Some(Decision { verdict, counter_slot: Some(slot) })
}

/// Classifies `packet` against the generation `active` names, past what
/// [`by_port_table`] decides. `FULL` is the program that can judge every generation;
/// without it, the port program (`policy_ports`), which reads nothing but the protocol
/// and the destination port, and judges only generations with a port table: the daemon
/// puts it on the link only while such a generation is active and takes it off before
/// it flips to another. Should it ever meet another generation anyway, it drops: it
/// cannot see the fields that generation's rules look at.
#[inline(always)]
pub fn classify<const FULL: bool>(active: u32, packet: &Packet, ctx: &XdpContext) -> Decision {
    if !FULL && active & active::PORT_TABLE == 0 {
        return Decision::of(Verdict::DropUnparsable);
    }
    let l4 = &packet.l4;
    let generation = active % GENERATIONS;
    let Some(config) = CONFIG.get(generation) else {
        return Decision::of(Verdict::PassDefault);
    };
    if l4.fragment {
        match FragmentAction::try_from(config.fragments) {
            Ok(FragmentAction::Pass) => return Decision::of(Verdict::PassFragment),
            Ok(FragmentAction::Drop) => return Decision::of(Verdict::DropFragment),
            Ok(FragmentAction::Rules) | Err(_) => {}
        }
    }
    match first_match::<FULL>(generation, config, packet, l4) {
        Some(rule) => decide_rule::<FULL>(generation, rule, packet, ctx),
        None => decide_default(config, l4),
    }
}

/// The decision for an IP packet the parser could not read whole: the policy's
/// `unparsable` action. Without a readable configuration, drop: fail closed.
#[inline(always)]
pub fn unparsable() -> Decision {
    let active = active();
    let verdict = match CONFIG.get(active % GENERATIONS).map(|c| Action::try_from(c.unparsable)) {
        Some(Ok(Action::Pass)) => Verdict::PassUnparsable,
        // Limit is never written here: a rule action only.
        Some(Ok(Action::Drop | Action::Limit) | Err(_)) | None => Verdict::DropUnparsable,
    };
    Decision::of(verdict)
}

#[inline(always)]
fn decide_rule<const FULL: bool>(
    generation: u32,
    rule: u32,
    packet: &Packet,
    ctx: &XdpContext,
) -> Decision {
    let index = rule_index(generation, rule);
    let Some(info) = RULES.get(index) else {
        return Decision::of(Verdict::PassDefault);
    };
    let verdict = match Action::try_from(info.action) {
        Ok(Action::Drop) if info.monitor != 0 => Verdict::MonitorRule,
        Ok(Action::Drop) => Verdict::DropRule,
        // A generation with a port table has no limit rule.
        Ok(Action::Limit) if !FULL => Verdict::DropLimit,
        Ok(Action::Limit) => {
            let probe = LimitProbe {
                src: packet.src,
                index,
                slot: info.counter_slot,
                version: if packet.family == Family::V4 { 4 } else { 6 },
                bytes: (ctx.data_end() - ctx.data()) as u32,
            };
            match xdp_policy_limit(&probe) {
                0 => Verdict::PassLimit,
                _ if info.monitor != 0 => Verdict::MonitorLimit,
                _ => Verdict::DropLimit,
            }
        }
        Ok(Action::Pass) | Err(_) => Verdict::PassRule,
    };
    Decision { verdict, counter_slot: Some(info.counter_slot) }
}

#[inline(always)]
fn decide_default(config: &GenConfig, l4: &Transport) -> Decision {
    let verdict = match Action::try_from(config.default_action) {
        // Limit is never written here (a rule action only); treated as drop.
        Ok(Action::Drop | Action::Limit) => {
            let neighbour = l4.class == L4Class::Icmpv6
                && !l4.fragment
                && (ND_FIRST_TYPE..=ND_LAST_TYPE).contains(&l4.dport);
            if neighbour {
                Verdict::PassNeighbour
            } else if config.default_monitor != 0 {
                Verdict::MonitorDefault
            } else {
                Verdict::DropDefault
            }
        }
        Ok(Action::Pass) | Err(_) => Verdict::PassDefault,
    };
    Decision::of(verdict)
}

#[inline(always)]
fn field_bitmap(generation: u32, index: u32) -> Option<&'static RuleBitmap> {
    FIELD_BITMAPS.get(field_bitmap::index(generation, index))
}

#[inline(always)]
fn port_bitmap(
    classes: &'static Array<u64>,
    bitmaps: &'static Array<RuleBitmap>,
    generation: u32,
    port: u16,
) -> Option<&'static RuleBitmap> {
    let word = classes.get(generation * PORT_CLASS_WORDS + u32::from(port / 4))?;
    let class = ((*word >> (16 * u32::from(port % 4))) & 0xffff) as u32;
    if class >= MAX_PORT_CLASSES {
        return None;
    }
    bitmaps.get(port_bitmap_index(generation, class))
}

/// The rules the longest prefix matching `addr` (network byte order, as in the packet)
/// admits, through the IPv4 address tables of `field` (0 source, 1 destination).
#[inline(always)]
fn v4_table_lookup(generation: u32, field: u32, addr: u32) -> Option<&'static RuleBitmap> {
    let addr = u32::from_be(addr);
    let (word, shift) = v4_table::l1_word(v4_table::l1_index(generation, field, addr >> 16));
    let mut entry = v4_table::l1_entry((*V4_L1.get(word)? >> shift) as u32 & 0xffff);
    if entry & v4_table::BLOCK != 0 {
        let block = entry & !v4_table::BLOCK;
        let byte = (addr >> 8) & 0xff;
        entry = *V4_L2.get(v4_table::block_index(generation, field, block, byte))?;
        if entry & v4_table::BLOCK != 0 {
            let block = entry & !v4_table::BLOCK;
            entry = *V4_L3.get(v4_table::block_index(generation, field, block, addr & 0xff))?;
        } else if entry & v4_table::HOST != 0 {
            entry = v4_table::host_class(entry, addr & 0xff);
        }
    }
    V4_CLASSES.get(v4_table::class_index(generation, field, entry))
}

/// What [`xdp_policy_v6_class`] looks up.
#[repr(C)]
pub struct V6Probe {
    /// The address, as in `Packet::src`.
    pub addr: [u32; 4],
    pub generation: u32,
    /// 0 source, 1 destination.
    pub field: u32,
    /// The entry the first 32 bits of the address led to: a block.
    pub entry: u32,
}

/// The rules the longest prefix matching `addr` (words in network byte order, as in
/// the packet) admits, through the IPv6 address tables of `field` (0 source, 1
/// destination).
///
/// The first three levels (the first 32 bits) are read here; a walk further down, for an
/// address inside a prefix longer than /32, is a call.
#[inline(always)]
fn v6_table_lookup(generation: u32, field: u32, addr: &[u32; 4]) -> Option<&'static RuleBitmap> {
    let first = u32::from_be(addr[0]);
    let (word, shift) = v4_table::l1_word(v6_table::l1_index(generation, field, first >> 16));
    let mut class = v4_table::l1_entry((*V6_L1.get(word)? >> shift) as u32 & 0xffff);
    for shift in [8, 0] {
        if class & v6_table::BLOCK != 0 {
            let (block, byte) = (class & !v6_table::BLOCK, (first >> shift) & 0xff);
            class = *V6_BLOCKS.get(v6_table::block_index(generation, field, block, byte))?;
        }
    }
    if class & v6_table::BLOCK != 0 {
        let probe = V6Probe { addr: *addr, generation, field, entry: class };
        class = u32::try_from(xdp_policy_v6_class(&probe)).ok()?;
    }
    V6_CLASSES.get(v6_table::class_index(generation, field, class))
}

/// The address class of `probe`'s address in the IPv6 address tables: from the block
/// `probe.entry` names, a block by each further byte from the fifth for as long as the
/// entry names one. -1 when an entry cannot be read.
///
/// A global function (exported by the linker, see xtask's build): the verifier checks
/// its walk once on its own, not on every path of the classifier that reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_policy_v6_class(probe: *const V6Probe) -> i32 {
    // SAFETY: null or a `V6Probe` of the caller's (the verifier checks the size).
    let Some(probe) = (unsafe { probe.as_ref() }) else { return -1 };
    let (generation, field, addr) = (probe.generation, probe.field, &probe.addr);
    let mut entry = probe.entry;
    for byte in 4..16 {
        if entry & v6_table::BLOCK == 0 {
            break;
        }
        let word = u32::from_be(addr[byte / 4]);
        let value = (word >> (24 - 8 * (byte % 4))) & 0xff;
        let block = entry & !v6_table::BLOCK;
        match V6_BLOCKS.get(v6_table::block_index(generation, field, block, value)) {
            Some(&next) => entry = next,
            None => return -1,
        }
    }
    if entry & v6_table::BLOCK != 0 { -1 } else { entry as i32 }
}

/// The lowest rule every field admits, if any.
/// Without `FULL`, only the transport class and the destination port are looked at
/// (all a generation with a port table constrains).
#[inline(always)]
fn first_match<const FULL: bool>(
    generation: u32,
    config: &GenConfig,
    packet: &Packet,
    l4: &Transport,
) -> Option<u32> {
    let fields = config.fields;
    // The transport class, and for TCP its flags, in one lookup: for a policy without
    // flags the TCP entries all hold the TCP class's rules, and for a policy that does
    // not constrain the class every class entry holds every rule. Never skipped: a field
    // no rule constrains gets no lookup, and this bitmap takes its place in the AND
    // (x & x == x). The parser chose the index, so the classifier has no branch here: a
    // generation without a flags rule has the class entries only, and the entry is
    // chosen by arithmetic (a branch doubled the verifier's paths).
    let flags_used = (fields / field::TCP_FLAGS) & 1;
    let class = l4.class as u32;
    let entry = class + (l4.flag_index - class) * flags_used;
    let l4_rules = TCP_FLAGS.get(tcp_flags::index(generation, entry))?;
    let dport_rules = if fields & field::DPORT == 0 {
        None
    } else if l4.fragment {
        Some(field_bitmap(generation, field_bitmap::DPORT_UNCONSTRAINED)?)
    } else {
        Some(port_bitmap(&DPORT_CLASSES, &DPORT_BITMAPS, generation, l4.dport)?)
    };
    let sport_rules = if !FULL || fields & field::SPORT == 0 {
        None
    } else if l4.fragment {
        Some(field_bitmap(generation, field_bitmap::SPORT_UNCONSTRAINED)?)
    } else {
        Some(port_bitmap(&SPORT_CLASSES, &SPORT_BITMAPS, generation, l4.sport)?)
    };
    let prefix_v4 = GENERATION_PREFIX_BITS + 32;
    let prefix_v6 = GENERATION_PREFIX_BITS + 128;
    let gen_byte = generation as u8;
    let v4 = |a: &[u32; 4]| ipv4_key(gen_byte, a[0].to_ne_bytes());
    let (src_rules, dst_rules) = if !FULL {
        (None, None)
    } else if packet.family == Family::V4 {
        (
            // A field without IPv4 prefixes: the /0's class, as for IPv6 below.
            if fields & field::SRC_V4_DEFAULT_ONLY != 0 {
                Some(V4_CLASSES.get(v4_table::class_index(generation, 0, 0))?)
            } else if fields & field::SRC_V4_TABLE != 0 {
                Some(v4_table_lookup(generation, 0, packet.src[0])?)
            } else if fields & field::SRC != 0 {
                Some(SRC_V4.get(Key::new(prefix_v4, v4(&packet.src)))?)
            } else {
                None
            },
            if fields & field::DST_V4_DEFAULT_ONLY != 0 {
                Some(V4_CLASSES.get(v4_table::class_index(generation, 1, 0))?)
            } else if fields & field::DST_V4_TABLE != 0 {
                Some(v4_table_lookup(generation, 1, packet.dst[0])?)
            } else if fields & field::DST != 0 {
                Some(DST_V4.get(Key::new(prefix_v4, v4(&packet.dst)))?)
            } else {
                None
            },
        )
    } else {
        (
            // A field without IPv6 prefixes: the /0's class. From the same map as the
            // tables' classes: a bitmap from one more map doubled the paths the verifier
            // walks after it.
            if fields & field::SRC_V6_DEFAULT_ONLY != 0 {
                Some(V6_CLASSES.get(v6_table::class_index(generation, 0, 0))?)
            } else if fields & field::SRC_V6_TABLE != 0 {
                Some(v6_table_lookup(generation, 0, &packet.src)?)
            } else if fields & field::SRC != 0 {
                Some(
                    SRC_V6
                        .get(Key::new(prefix_v6, ipv6_key(gen_byte, address_bytes(packet.src))))?,
                )
            } else {
                None
            },
            if fields & field::DST_V6_DEFAULT_ONLY != 0 {
                Some(V6_CLASSES.get(v6_table::class_index(generation, 1, 0))?)
            } else if fields & field::DST_V6_TABLE != 0 {
                Some(v6_table_lookup(generation, 1, &packet.dst)?)
            } else if fields & field::DST != 0 {
                Some(
                    DST_V6
                        .get(Key::new(prefix_v6, ipv6_key(gen_byte, address_bytes(packet.dst))))?,
                )
            } else {
                None
            },
        )
    };
    let any = l4_rules;
    let (mut src_rules, mut dst_rules) = (src_rules.unwrap_or(any), dst_rules.unwrap_or(any));
    // Named sets: an address in a set a field names admits the rules naming the set, on
    // top of what its address class admits. Both merged in this CPU's scratch entries,
    // which then stand for the address fields; without sets nothing of them is read.
    if FULL && config.src_sets | config.dst_sets != 0 {
        let probe = SetProbe {
            ids: config.set_ids,
            src: packet.src,
            dst: packet.dst,
            generation,
            src_count: u32::from(config.src_sets).min(MAX_SET_REFS as u32),
            dst_count: u32::from(config.dst_sets).min(MAX_SET_REFS as u32),
            version: if packet.family == Family::V4 { 4 } else { 6 },
            words: config.words,
        };
        let merged = xdp_policy_sets(&probe, src_rules, dst_rules);
        if merged < 0 {
            return None;
        }
        // SAFETY: per-CPU entries, valid for this CPU; `xdp_policy_sets` just wrote those
        // it names, on this CPU, for this packet.
        unsafe {
            if merged & 1 != 0 {
                src_rules = &*SET_SCRATCH.get_ptr(0)?;
            }
            if merged & 2 != 0 {
                dst_rules = &*SET_SCRATCH.get_ptr(1)?;
            }
        }
    }
    lowest_common(
        config.words,
        [l4_rules, dport_rules.unwrap_or(any), sport_rules.unwrap_or(any), src_rules, dst_rules],
    )
}

/// What the set lookups of one packet need.
#[repr(C)]
pub struct SetProbe {
    /// `GenConfig::set_ids` of the generation: source sets, then destination sets.
    ids: [u32; 2 * MAX_SET_REFS],
    src: [u32; 4],
    dst: [u32; 4],
    generation: u32,
    src_count: u32,
    dst_count: u32,
    version: u32,
    /// `GenConfig::words`: the bitmap words in use, the only ones copied (the summary
    /// names no other).
    words: u32,
}

/// Looks the packet's source up in the sets the source field names, and its
/// destination in the destination's; for a field with a set that holds its address,
/// writes this CPU's scratch bitmap of the field: the rules the address's class admits
/// (`src` or `dst`) and those naming one of the sets that hold it. Returns which fields
/// it wrote (bit 0 the source, bit 1 the destination; the others' bitmaps stand as they
/// are), or -1 when a map the program always has could not be read.
///
/// A global function (exported by the linker, see xtask's build): the verifier checks it
/// once, on its own, rather than on every path through the classifier that calls it,
/// which would take the program past the verifier's limit.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_policy_sets(
    probe: *const SetProbe,
    src: *const RuleBitmap,
    dst: *const RuleBitmap,
) -> i32 {
    // SAFETY: null or a `SetProbe` and bitmaps of the caller's (the verifier checks the
    // sizes).
    let (Some(probe), Some(src), Some(dst)) =
        (unsafe { (probe.as_ref(), src.as_ref(), dst.as_ref()) })
    else {
        return -1;
    };
    let words = probe.words as usize;
    // The clock is read once, and only for an entry that expires: on a VM the helper
    // cost more than the lookup itself, and most entries (files, permanent bans) and
    // every miss need no time.
    let mut now = 0;
    let mut written = 0;
    for field in 0..2u32 {
        let (count, addr, class) = if field == 0 {
            (probe.src_count, &probe.src, src)
        } else {
            (probe.dst_count, &probe.dst, dst)
        };
        // The sets that hold the address: bit `i` for the field's `i`th set.
        let mut holding = 0;
        for i in 0..MAX_SET_REFS as u32 {
            if i >= count {
                break;
            }
            let slot = field * MAX_SET_REFS as u32 + i;
            let id = probe.ids[(slot as usize) & (2 * MAX_SET_REFS - 1)];
            if in_set(id, probe.version as u8, addr, &mut now) {
                count_hit(probe.generation * 2 * MAX_SET_REFS as u32 + slot);
                holding |= 1 << i;
            }
        }
        if holding == 0 {
            continue;
        }
        // One bitmap for the sets that hold it, whichever they are: one merge.
        let index = field_bitmap::set_rules(field, holding);
        let Some(rules) = field_bitmap(probe.generation, index) else { return -1 };
        let Some(merged) = SET_SCRATCH.get_ptr_mut(field) else { return -1 };
        // SAFETY: this CPU's scratch entry, which nothing else uses while the program
        // runs on this CPU.
        let merged = unsafe { &mut *merged };
        // Word by word, volatile, only the words in use (the summary names no other):
        // written as one copy, LLVM calls a memcpy that bpf-linker exports as a byte
        // loop, which cost more than the lookups.
        for w in 0..BITMAP_WORDS {
            if w >= words {
                break;
            }
            let word = class.words[w] | rules.words[w];
            // SAFETY: a word of the entry.
            unsafe { core::ptr::write_volatile(&raw mut merged.words[w], word) };
        }
        merged.summary = class.summary | rules.summary;
        written |= 1 << field;
    }
    written
}

/// Counts a hit of the set in slot `index` (generation and slot) on this CPU.
#[inline(always)]
fn count_hit(index: u32) {
    if let Some(hits) = SET_HITS.get_ptr_mut(index) {
        // SAFETY: this CPU's value, which nothing else on this CPU writes meanwhile.
        unsafe { *hits += 1 };
    }
}

/// Whether set `id` holds `addr` at `now` (the clock, read here once when an entry that
/// expires is found): its longest prefix holding the address, or, past entries that have
/// expired and not yet been removed, the longest prefix above them.
#[inline(always)]
fn in_set(id: u32, version: u8, addr: &[u32; 4], now: &mut u64) -> bool {
    let bits = if version == 4 { 32 } else { 128 };
    // The bytes of `policy_common::set_key`, as words (see `Packet::src`).
    let data =
        [id.to_be(), u32::from_ne_bytes([version, 0, 0, 0]), addr[0], addr[1], addr[2], addr[3]];
    let mut key = Key::new(SET_KEY_PREFIX_BITS + bits, data);
    for _ in 0..SET_EXPIRED_STEPS {
        let Some(entry) = SETS.get(&key) else { return false };
        if entry.expires_ns == 0 {
            return true;
        }
        if *now == 0 {
            // SAFETY: a helper without arguments.
            *now = unsafe { bpf_ktime_get_boot_ns() };
        }
        if *now < entry.expires_ns {
            return true;
        }
        if entry.prefix_len <= SET_KEY_PREFIX_BITS {
            return false;
        }
        key.prefix_len = entry.prefix_len - 1;
    }
    false
}

/// The lowest rule set in all five bitmaps (the three fields', and the two addresses'
/// with their sets' rules merged in), looking at the first `words` words. The first
/// [`INLINE_WORDS`] words (1,024 rules) are written out word by word with constant
/// indices: a loop over the words lost its bound in the verifier and cost orders of
/// magnitude more verified instructions, and a word costs well under a nanosecond so.
/// Past them, [`xdp_policy_scan`], a call, so that the verifier walks those words once,
/// not on every path through the classifier (each field's bitmap may come from one of
/// several maps).
#[inline(always)]
fn lowest_common(words: u32, bitmaps: [&RuleBitmap; 5]) -> Option<u32> {
    let [a, b, c, d, e] = bitmaps;
    macro_rules! word {
        ($w:literal) => {
            if $w >= words {
                return None;
            }
            let x = a.words[$w] & b.words[$w] & c.words[$w] & d.words[$w] & e.words[$w];
            if x != 0 {
                return Some($w * 64 + lowest_bit(x));
            }
        };
    }
    word!(0);
    word!(1);
    word!(2);
    word!(3);
    word!(4);
    word!(5);
    word!(6);
    word!(7);
    word!(8);
    word!(9);
    word!(10);
    word!(11);
    word!(12);
    word!(13);
    word!(14);
    word!(15);
    if words <= INLINE_WORDS as u32 {
        return None;
    }
    u32::try_from(xdp_policy_scan(a, b, c, d, e)).ok()
}

/// Bitmap words [`lowest_common`] reads inline.
const INLINE_WORDS: usize = 16;

/// The lowest rule set in all five bitmaps from word [`INLINE_WORDS`] on, -1 if none (or
/// a null pointer): word by word up to the highest word their summaries have in common.
///
/// A global function (exported by the linker, see xtask's build): the verifier checks its
/// words once, on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdp_policy_scan(
    a: *const RuleBitmap,
    b: *const RuleBitmap,
    c: *const RuleBitmap,
    d: *const RuleBitmap,
    e: *const RuleBitmap,
) -> i32 {
    // SAFETY: null or bitmaps of the caller's (the verifier checks the sizes).
    let (Some(a), Some(b), Some(c), Some(d), Some(e)) =
        (unsafe { (a.as_ref(), b.as_ref(), c.as_ref(), d.as_ref(), e.as_ref()) })
    else {
        return -1;
    };
    let summary = a.summary & b.summary & c.summary & d.summary & e.summary;
    if summary >> INLINE_WORDS == 0 {
        return -1;
    }
    // Written out with constant indices, as in `lowest_common`, and bounded by the
    // summaries' highest common word (past it some bitmap's words are all 0).
    let last = 63 - summary.leading_zeros();
    macro_rules! word {
        ($w:literal) => {
            if $w > last {
                return -1;
            }
            let x = a.words[$w] & b.words[$w] & c.words[$w] & d.words[$w] & e.words[$w];
            if x != 0 {
                return ($w * 64 + lowest_bit(x)) as i32;
            }
        };
    }
    word!(16);
    word!(17);
    word!(18);
    word!(19);
    word!(20);
    word!(21);
    word!(22);
    word!(23);
    word!(24);
    word!(25);
    word!(26);
    word!(27);
    word!(28);
    word!(29);
    word!(30);
    word!(31);
    word!(32);
    word!(33);
    word!(34);
    word!(35);
    word!(36);
    word!(37);
    word!(38);
    word!(39);
    word!(40);
    word!(41);
    word!(42);
    word!(43);
    word!(44);
    word!(45);
    word!(46);
    word!(47);
    word!(48);
    word!(49);
    word!(50);
    word!(51);
    word!(52);
    word!(53);
    word!(54);
    word!(55);
    word!(56);
    word!(57);
    word!(58);
    word!(59);
    word!(60);
    word!(61);
    word!(62);
    word!(63);
    -1
}

const _: () = assert!(BITMAP_WORDS == 64, "xdp_policy_scan writes out words 16 to 63");

/// Index of the lowest set bit of a non-zero word: LLVM's expansion (a multiply and a
/// 64-byte table in `.rodata`), no branch.
#[inline(always)]
fn lowest_bit(x: u64) -> u32 {
    x.trailing_zeros()
}
