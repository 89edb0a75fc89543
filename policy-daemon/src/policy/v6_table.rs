//! IPv6 address tables: the longest-prefix match of an address field compiled to a
//! first level of arrays by the top 16 bits and blocks of 256 entries by each further
//! byte, ending in an address class (see `policy_common::v6_table`). The program reads
//! them with one array load per level instead of walking an LPM trie. Only for prefix
//! sets that fit the block and class limits; larger ones stay in the tries.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use policy_common::{
    RuleBitmap,
    v6_table::{BLOCK, BLOCKS, CLASSES, L1_ENTRIES},
};

use super::{BitmapPool, v4_table::block};

/// The longest prefix a field may have for its IPv6 prefixes to go to the tables: each
/// byte past the first four is one more load in a loop (about 7 ns each here), so that a
/// /128 took +126 ns over the floor in the tables against about +64 in the trie, a /48
/// +48 against +66 (`cargo xtask bench`).
pub const DEEPEST: u8 = 64;

/// One address field's tables for one generation, as the kernel maps hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V6Table {
    /// By the top 16 bits: a class, or `BLOCK | block` of `blocks`.
    pub l1: Vec<u32>,
    /// 256 entries per block, by the byte after the bits the levels above took: a
    /// class, or `BLOCK | block`.
    pub blocks: Vec<u32>,
    /// Class → the rules the address's longest matching prefix admits.
    pub classes: Vec<RuleBitmap>,
}

impl V6Table {
    /// The tables of a field whose only prefix is the `/0`: its class alone (class 0),
    /// which the program reads without a walk (`field::SRC_V6_DEFAULT_ONLY`).
    pub fn default_only(bitmap: RuleBitmap) -> Self {
        Self { l1: Vec::new(), blocks: Vec::new(), classes: vec![bitmap] }
    }

    /// Whether the program walks these tables (else it reads class 0 only).
    pub fn walked(&self) -> bool {
        !self.l1.is_empty()
    }

    /// The tables of a field's trie entries (as `compile` makes them: every bitmap
    /// already holds the rules of its covering prefixes, the `/0` first, a prefix after
    /// every prefix containing it). `None` when they do not fit.
    pub fn build(entries: &[(Ipv6Net, RuleBitmap)]) -> Option<Self> {
        let (default_route, rest) = entries.split_first()?;
        debug_assert_eq!(default_route.0.prefix_len(), 0);
        let mut table = Self { l1: Vec::new(), blocks: Vec::new(), classes: Vec::new() };
        let mut classes = BitmapPool::default();
        let default_class = classes.intern_within(&default_route.1, CLASSES)?;
        table.l1 = vec![default_class; L1_ENTRIES as usize];
        // Containers come first, so painting in order leaves each address with the class
        // of its longest prefix.
        for (net, bitmap) in rest {
            let class = classes.intern_within(bitmap, CLASSES)?;
            let bytes = net.network().octets();
            let len = usize::from(net.prefix_len());
            let top = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            if len <= 16 {
                table.l1[top..top + (1 << (16 - len))].fill(class);
                continue;
            }
            let mut current = block(&mut table.l1[top], &mut table.blocks, BLOCK, BLOCKS)?;
            // Bits of the address the levels down to the current block's have taken.
            for (byte, taken) in bytes.iter().skip(2).zip((24..=128).step_by(8)) {
                let at = current * 256 + usize::from(*byte);
                if len <= taken {
                    table.blocks[at..at + (1 << (taken - len))].fill(class);
                    break;
                }
                let mut entry = table.blocks[at];
                current = block(&mut entry, &mut table.blocks, BLOCK, BLOCKS)?;
                table.blocks[at] = entry;
            }
        }
        table.classes = classes.into_bitmaps();
        Some(table)
    }

    /// [`Self::build`] for a field whose prefixes are all at most [`DEEPEST`] bits long;
    /// `None` (the tries) otherwise.
    pub fn build_for_lookups(entries: &[(Ipv6Net, RuleBitmap)]) -> Option<Self> {
        if entries.iter().any(|(net, _)| net.prefix_len() > DEEPEST) {
            return None;
        }
        Self::build(entries)
    }

    /// The rules of the longest prefix holding `addr`, read the way the program reads
    /// the tables.
    pub fn lookup(&self, addr: Ipv6Addr) -> &RuleBitmap {
        let bytes = addr.octets();
        if !self.walked() {
            return &self.classes[0];
        }
        let mut entry = self.l1[usize::from(u16::from_be_bytes([bytes[0], bytes[1]]))];
        for byte in &bytes[2..] {
            if entry & BLOCK == 0 {
                break;
            }
            entry = self.blocks[(entry & !BLOCK) as usize * 256 + usize::from(*byte)];
        }
        &self.classes[entry as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::v4_table::testing::{bitmap, longest_match, with_covering_rules};

    fn net(s: &str) -> Ipv6Net {
        s.parse().expect("test net")
    }

    #[test]
    fn every_address_gets_its_longest_prefix() {
        let entries = vec![
            (net("::/0"), bitmap(&[9])),
            (net("2001:db8::/32"), bitmap(&[1, 9])),
            (net("2001:db8:1::/48"), bitmap(&[1, 2, 9])),
            (net("2001:db8:1:2::/63"), bitmap(&[1, 2, 3, 9])),
            (net("2001:db8:1:2::80/121"), bitmap(&[1, 2, 3, 4, 9])),
            (net("2001:db8:1:2::c8/128"), bitmap(&[1, 2, 3, 4, 5, 9])),
            (net("fd00::/8"), bitmap(&[6, 9])),
            (net("fd00:1::/20"), bitmap(&[6, 7, 9])),
        ];
        let table = V6Table::build(&entries).expect("fits");
        let at = |a: &str| *table.lookup(a.parse().expect("test address"));
        assert_eq!(at("2001:db7::1"), bitmap(&[9]));
        assert_eq!(at("2001:db8::1"), bitmap(&[1, 9]));
        assert_eq!(at("2001:db8:1::1"), bitmap(&[1, 2, 9]));
        assert_eq!(at("2001:db8:1:3:ffff::1"), bitmap(&[1, 2, 3, 9]));
        assert_eq!(at("2001:db8:1:4::"), bitmap(&[1, 2, 9]));
        assert_eq!(at("2001:db8:1:2::7f"), bitmap(&[1, 2, 3, 9]));
        assert_eq!(at("2001:db8:1:2::80"), bitmap(&[1, 2, 3, 4, 9]));
        assert_eq!(at("2001:db8:1:2::c8"), bitmap(&[1, 2, 3, 4, 5, 9]));
        assert_eq!(at("2001:db8:1:2::c9"), bitmap(&[1, 2, 3, 4, 9]));
        assert_eq!(at("fd00:ffff::1"), bitmap(&[6, 9]));
        assert_eq!(at("fd00:0fff::1"), bitmap(&[6, 7, 9]));
        assert_eq!(at("fd00:1000::1"), bitmap(&[6, 9]));
        assert_eq!(at("fe80::1"), bitmap(&[9]));
        // /32: 2 blocks; /48: 2 more; /63: 2 more; /121 and /128: 8 more (bytes 8-15);
        // /20: 1.
        assert_eq!(table.blocks.len() / 256, 15);
    }

    #[test]
    fn too_many_blocks_do_not_fit() {
        let mut entries = vec![(net("::/0"), RuleBitmap::EMPTY)];
        // Each /24 in its own /16: one block each.
        for i in 0..=BLOCKS {
            let addr = Ipv6Addr::from(u128::from(i) << 112);
            entries.push((Ipv6Net::new(addr, 24).expect("net"), bitmap(&[0])));
        }
        assert!(V6Table::build(&entries).is_none());
        entries.pop();
        assert!(V6Table::build(&entries).is_some());
    }

    #[test]
    fn random_prefixes_agree_with_a_longest_prefix_match() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Prefixes of every length under two /16s, so that they nest and share blocks.
        let mut nets: Vec<Ipv6Net> = vec![net("::/0")];
        for i in 0..120u32 {
            let high = if i % 2 == 0 { 0x2001_0db8u128 } else { 0xfd00_0000 };
            let addr = high << 96 | u128::from(next()) << 32 | u128::from(next() as u32);
            let len = [17, 24, 32, 40, 48, 56, 64, 72, 96, 127, 128, 12][i as usize % 12];
            nets.push(Ipv6Net::new(Ipv6Addr::from(addr), len).expect("net").trunc());
        }
        nets.sort();
        nets.dedup();
        let entries = with_covering_rules(&nets);
        let table = V6Table::build(&entries).expect("fits");
        let mut probes: Vec<u128> = nets.iter().map(|n| u128::from(n.network())).collect();
        probes.extend(nets.iter().map(|n| u128::from(n.network()) ^ 1));
        probes.extend(nets.iter().map(|n| u128::from(n.broadcast())));
        probes.extend(nets.iter().map(|n| u128::from(n.broadcast()).wrapping_add(1)));
        for _ in 0..5_000 {
            let high = if next() % 2 == 0 { 0x2001_0db8u128 } else { 0xfd00_0000 };
            probes.push(high << 96 | u128::from(next() % 4) << 64 | u128::from(next()));
        }
        for addr in probes {
            let addr = Ipv6Addr::from(addr);
            assert_eq!(*table.lookup(addr), longest_match(&entries, addr.into()), "{addr}");
        }
    }
}
