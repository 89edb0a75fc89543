//! IPv4 address tables: the longest-prefix match of an address field compiled to three
//! levels of arrays (16, 8 and 8 bits of the address) ending in an address class, which
//! the program reads with two to four array loads instead of walking an LPM trie. Only
//! for prefix sets that fit (`policy_common::v4_table`'s block and class limits); larger
//! ones stay in the tries.

use ipnet::Ipv4Net;
use policy_common::{
    RuleBitmap,
    v4_table::{
        BLOCK, BLOCKS, CLASSES, HOST, HOST_CLASSES, L1_ENTRIES, host as host_pack, host_class,
    },
};

use super::BitmapPool;

/// One address field's tables for one generation, as the kernel maps hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V4Table {
    /// By the top 16 bits: a class, or `BLOCK | block` of `l2`.
    pub l1: Vec<u32>,
    /// 256 entries per block, by the third byte: a class, or `BLOCK | block` of `l3`.
    pub l2: Vec<u32>,
    /// 256 entries per block, by the last byte: a class.
    pub l3: Vec<u32>,
    /// Class → the rules the address's longest matching prefix admits.
    pub classes: Vec<RuleBitmap>,
}

impl V4Table {
    /// The tables of a field whose only IPv4 prefix is the `/0`: its class alone (class
    /// 0), which the program reads without a walk (`field::SRC_V4_DEFAULT_ONLY`).
    pub fn default_only(bitmap: RuleBitmap) -> Self {
        Self { l1: Vec::new(), l2: Vec::new(), l3: Vec::new(), classes: vec![bitmap] }
    }

    /// Whether the program walks these tables (else it reads class 0 only).
    pub fn walked(&self) -> bool {
        !self.l1.is_empty()
    }

    /// The tables of a field's trie entries (as `compile` makes them: every bitmap
    /// already holds the rules of its covering prefixes, the `/0` first, a prefix after
    /// every prefix containing it). `None` when they do not fit.
    pub fn build(entries: &[(Ipv4Net, RuleBitmap)]) -> Option<Self> {
        let (default_route, rest) = entries.split_first()?;
        debug_assert_eq!(default_route.0.prefix_len(), 0);
        let mut table =
            Self { l1: Vec::new(), l2: Vec::new(), l3: Vec::new(), classes: Vec::new() };
        let mut classes = BitmapPool::default();
        let default_class = classes.intern_within(&default_route.1, CLASSES)?;
        table.l1 = vec![default_class; L1_ENTRIES as usize];
        // Containers come first, so painting in order leaves each address with the class
        // of its longest prefix.
        for (net, bitmap) in rest {
            let class = classes.intern_within(bitmap, CLASSES)?;
            let start = u32::from(net.network());
            let len = u32::from(net.prefix_len());
            let top = (start >> 16) as usize;
            if len <= 16 {
                table.l1[top..top + (1 << (16 - len))].fill(class);
                continue;
            }
            let block2 = block(&mut table.l1[top], &mut table.l2, BLOCK, BLOCKS)?;
            let third = block2 * 256 + ((start >> 8) & 0xff) as usize;
            if len <= 24 {
                table.l2[third..third + (1 << (24 - len))].fill(class);
                continue;
            }
            let block3 = block(&mut table.l2[third], &mut table.l3, BLOCK, BLOCKS)?;
            let last = block3 * 256 + (start & 0xff) as usize;
            table.l3[last..last + (1 << (32 - len))].fill(class);
        }
        table.fold_host_blocks();
        table.classes = classes.into_bitmaps();
        Some(table)
    }

    /// Replaces every third-level block that is one class but for a single address (a
    /// host route in an otherwise uniform /24) by a `HOST` entry in the second level,
    /// and renumbers the blocks that stay: far fewer entries to write.
    fn fold_host_blocks(&mut self) {
        let mut kept = Vec::with_capacity(self.l3.len());
        let mut renumbered = vec![None; self.l3.len() / 256];
        for (old, block) in self.l3.chunks(256).enumerate() {
            if let Some(entry) = host_entry(block) {
                renumbered[old] = Some(Err(entry));
            } else {
                renumbered[old] = Some(Ok((kept.len() / 256) as u32));
                kept.extend_from_slice(block);
            }
        }
        for entry in &mut self.l2 {
            if *entry & BLOCK != 0 {
                *entry = match renumbered[(*entry & !BLOCK) as usize] {
                    Some(Ok(block)) => BLOCK | block,
                    Some(Err(host)) => host,
                    None => unreachable!("every block was classified"),
                };
            }
        }
        self.l3 = kept;
    }

    /// The rules of the longest prefix holding `addr`, read the way the program reads
    /// the tables.
    pub fn lookup(&self, addr: std::net::Ipv4Addr) -> &RuleBitmap {
        if !self.walked() {
            return &self.classes[0];
        }
        let addr = u32::from(addr);
        let mut entry = self.l1[(addr >> 16) as usize];
        if entry & BLOCK != 0 {
            entry = self.l2[(entry & !BLOCK) as usize * 256 + ((addr >> 8) & 0xff) as usize];
            if entry & BLOCK != 0 {
                entry = self.l3[(entry & !BLOCK) as usize * 256 + (addr & 0xff) as usize];
            } else if entry & HOST != 0 {
                entry = host_class(entry, addr & 0xff);
            }
        }
        &self.classes[entry as usize]
    }
}

/// The block of 256 entries `entry` refers to (`flag` | its index in `blocks`), making
/// one (filled with the class `entry` held) if it holds a class; `None` past `limit`
/// blocks.
pub(super) fn block(
    entry: &mut u32,
    blocks: &mut Vec<u32>,
    flag: u32,
    limit: u32,
) -> Option<usize> {
    if *entry & flag != 0 {
        return Some((*entry & !flag) as usize);
    }
    let block = blocks.len() / 256;
    if block as u32 >= limit {
        return None;
    }
    blocks.extend(std::iter::repeat_n(*entry, 256));
    *entry = flag | block as u32;
    Some(block)
}

/// What the IPv4 and the IPv6 tables' tests share.
#[cfg(test)]
pub(super) mod testing {
    use ipnet::IpNet;
    use policy_common::RuleBitmap;

    /// A bitmap of `rules`.
    pub fn bitmap(rules: &[usize]) -> RuleBitmap {
        let mut b = RuleBitmap::EMPTY;
        for r in rules {
            b.set(*r);
        }
        b
    }

    /// Each of `nets` (sorted, distinct) its own rule, its bitmap holding the rules of
    /// every net covering it, as `compile` builds them.
    pub fn with_covering_rules<N: Copy + Into<IpNet>>(nets: &[N]) -> Vec<(N, RuleBitmap)> {
        nets.iter()
            .map(|net| {
                let covering: Vec<usize> = nets
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| (**c).into().contains(&(*net).into()))
                    .map(|(i, _)| i % 1000)
                    .collect();
                (*net, bitmap(&covering))
            })
            .collect()
    }

    /// The bitmap of the longest of `entries` holding `addr`: a linear longest-prefix
    /// match, the tables' oracle.
    pub fn longest_match<N: Copy + Into<IpNet>>(
        entries: &[(N, RuleBitmap)],
        addr: std::net::IpAddr,
    ) -> RuleBitmap {
        entries
            .iter()
            .map(|(n, b)| ((*n).into(), b))
            .filter(|(n, _): &(IpNet, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, b)| *b)
            .expect("the /0")
    }
}

/// The second-level entry a third-level block folds into: a `HOST` entry when it is all
/// one class but one address (both classes small enough to pack), the class itself when
/// it is all one class; `None` otherwise.
fn host_entry(block: &[u32]) -> Option<u32> {
    let rest = if block[0] == block[1] { block[0] } else { block[2] };
    let mut odd = block.iter().enumerate().filter(|(_, class)| **class != rest);
    let Some((byte, host)) = odd.next() else {
        // One class throughout: the entry is that class.
        return Some(rest);
    };
    if odd.next().is_some() || *host >= HOST_CLASSES || rest >= HOST_CLASSES {
        return None;
    }
    Some(host_pack(byte as u32, *host, rest))
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn every_address_gets_its_longest_prefix() {
        let net = |s: &str| s.parse::<Ipv4Net>().expect("test net");
        let entries = vec![
            (net("0.0.0.0/0"), bitmap(&[9])),
            (net("10.0.0.0/8"), bitmap(&[1, 9])),
            (net("10.1.0.0/16"), bitmap(&[1, 2, 9])),
            (net("10.1.2.0/23"), bitmap(&[1, 2, 3, 9])),
            (net("10.1.2.128/25"), bitmap(&[1, 2, 3, 4, 9])),
            (net("10.1.2.200/32"), bitmap(&[1, 2, 3, 4, 5, 9])),
            (net("192.0.2.7/32"), bitmap(&[6, 9])),
        ];
        let table = V4Table::build(&entries).expect("fits");
        let at = |a: &str| *table.lookup(a.parse().expect("test address"));
        assert_eq!(at("9.255.255.255"), bitmap(&[9]));
        assert_eq!(at("10.0.0.1"), bitmap(&[1, 9]));
        assert_eq!(at("10.1.0.1"), bitmap(&[1, 2, 9]));
        assert_eq!(at("10.1.3.255"), bitmap(&[1, 2, 3, 9]));
        assert_eq!(at("10.1.2.127"), bitmap(&[1, 2, 3, 9]));
        assert_eq!(at("10.1.2.128"), bitmap(&[1, 2, 3, 4, 9]));
        assert_eq!(at("10.1.2.200"), bitmap(&[1, 2, 3, 4, 5, 9]));
        assert_eq!(at("10.1.2.201"), bitmap(&[1, 2, 3, 4, 9]));
        assert_eq!(at("10.1.4.0"), bitmap(&[1, 2, 9]));
        assert_eq!(at("192.0.2.7"), bitmap(&[6, 9]));
        assert_eq!(at("192.0.2.8"), bitmap(&[9]));
        // 10.1.2.0/24 holds /25 and /32 (a block of its own); 192.0.2.7 alone in its /24
        // folds into a HOST entry.
        assert_eq!((table.l2.len() / 256, table.l3.len() / 256), (2, 1));
    }

    #[test]
    fn too_many_blocks_do_not_fit() {
        let mut entries = vec![("0.0.0.0/0".parse().expect("net"), RuleBitmap::EMPTY)];
        for i in 0..=BLOCKS {
            let net = Ipv4Net::new(std::net::Ipv4Addr::from(i << 16), 24).expect("net");
            entries.push((net, bitmap(&[0])));
        }
        assert!(V4Table::build(&entries).is_none());
        entries.pop();
        assert!(V4Table::build(&entries).is_some());
    }

    #[test]
    fn host_routes_fold_and_agree_with_a_longest_prefix_match() {
        // Host routes alone in their /24, two in one /24, and inside /24 and /28 rules.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        };
        let mut nets: Vec<Ipv4Net> = vec!["0.0.0.0/0".parse().expect("net")];
        for i in 0..600 {
            let base = 0x0a00_0000 | (next() & 0x00ff_ffff); // 10.0.0.0/8
            let len = [32, 32, 32, 24, 28, 16][i % 6];
            nets.push(Ipv4Net::new(std::net::Ipv4Addr::from(base), len).expect("net").trunc());
            if i % 50 == 0 {
                // A second host in the same /24.
                nets.push(Ipv4Net::new(std::net::Ipv4Addr::from(base ^ 1), 32).expect("net"));
            }
        }
        nets.sort();
        nets.dedup();
        let entries = with_covering_rules(&nets);
        let table = V4Table::build(&entries).expect("fits");
        assert!(table.l2.iter().any(|e| e & HOST != 0), "some host routes fold");
        let mut probes: Vec<u32> = nets.iter().map(|n| u32::from(n.network())).collect();
        probes.extend(nets.iter().map(|n| u32::from(n.network()) ^ 1));
        probes.extend((0..20_000).map(|_| 0x0a00_0000 | (next() & 0x00ff_ffff)));
        for addr in probes {
            let addr = std::net::Ipv4Addr::from(addr);
            assert_eq!(*table.lookup(addr), longest_match(&entries, addr.into()), "{addr}");
        }
    }
}
