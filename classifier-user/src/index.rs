//! Compiled trie entries → the index the kernel walks beside the tries (the layout is
//! `classifier_common::index`'s): leaf-pushed, so every position of a node holds the answer
//! of the longest prefix that covers it, and popcount-compressed, so a node costs 24 bytes
//! plus one entry per run of equal leaves.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use classifier_common::{
    PrefixRules,
    index::{
        DIR_BITS, DIR_ENTRIES, DIR_V4, DIR_V6, ENTRIES_PER_SLOT, FIRST_FREE_SLOT, NO_VALUE, NODE,
        STRIDE, Slot, rules_len, rules_word,
    },
};

use crate::compile::Compiled;

#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error(
        "the index needs more than {capacity} slots for these prefixes (a half of `[index] \
         memory-mib`); the tries alone classify until it is raised"
    )]
    Slots { capacity: u32 },
}

/// One half of the index, ready to be copied from the half's first slot: direct tables,
/// then nodes, leaves and rules.
#[derive(Debug, Default)]
pub struct Built {
    pub slots: Vec<Slot>,
    /// Distinct rule sets, and the copies laid out (each subtree has its own).
    pub rule_sets: usize,
    pub rule_copies: usize,
}

/// Builds the index of `compiled` for a half of `half_slots` slots.
///
/// The index answers with the rules of the longest prefix, like the tries, except for
/// `prefix_len`, which it leaves 0: the kernel never reads it.
pub fn build(compiled: &Compiled, half_slots: u32) -> Result<Built, IndexError> {
    if !(FIRST_FREE_SLOT..NODE).contains(&half_slots) {
        return Err(IndexError::Slots {
            capacity: half_slots,
        });
    }
    // Rule sets by id (0: none), so that leaves compare as integers while they are laid out.
    let mut values = vec![PrefixRules::EMPTY];
    let mut ids: HashMap<PrefixRules, u32, BuildHasherDefault<Fx>> = HashMap::default();
    let mut value_id = |rules: &PrefixRules| {
        let mut rules = *rules;
        rules.prefix_len = 0;
        *ids.entry(rules).or_insert_with(|| {
            values.push(rules);
            u32::try_from(values.len() - 1).expect("fewer values than prefixes")
        })
    };
    let v4: Vec<Prefix> = compiled
        .v4
        .iter()
        .map(|(key, rules)| Prefix {
            addr: u128::from(u32::from_be_bytes(key.addr)) << 96,
            len: key.prefix_len,
            value: value_id(rules),
        })
        .collect();
    let v6: Vec<Prefix> = compiled
        .v6
        .iter()
        .map(|(key, rules)| Prefix {
            addr: u128::from_be_bytes(key.addr),
            len: key.prefix_len,
            value: value_id(rules),
        })
        .collect();
    let mut builder = Builder {
        arena: Vec::new(),
        lanes: 0,
        capacity: half_slots,
        placed: vec![(0, 0); values.len()],
        subtree: 0,
        copies: 0,
        values,
    };
    let mut direct = vec![NO_VALUE; (FIRST_FREE_SLOT * ENTRIES_PER_SLOT) as usize];
    for (prefixes, base) in [(v4, DIR_V4), (v6, DIR_V6)] {
        let mut prefixes = prefixes;
        prefixes.sort_unstable_by_key(|prefix| (prefix.addr, prefix.len));
        let table = builder.direct(&prefixes)?;
        direct[base as usize..(base + DIR_ENTRIES) as usize].copy_from_slice(&table);
    }
    // The direct tables' own leaves share one copy of their rules, after every subtree.
    builder.subtree += 1;
    for entry in &mut direct {
        if *entry & NODE == 0 {
            *entry = builder.place(*entry)?;
        }
    }
    Ok(builder.finish(&direct))
}

/// FxHash (rustc's): rule sets are hashed once per prefix, a million times for a full
/// table, and SipHash's defence against chosen keys buys nothing for entries we compiled.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7cc1_b727_220a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[derive(Clone, Copy, Debug)]
struct Prefix {
    /// Left-aligned in 128 bits (IPv4 in the top 32).
    addr: u128,
    len: u32,
    value: u32,
}

impl Prefix {
    /// The `width` bits of the address at `offset`.
    fn bits(&self, offset: u32, width: u32) -> usize {
        ((self.addr << offset) >> (128 - width)) as usize
    }
}

/// Lays nodes and leaves out in one arena after the direct tables, subtree by subtree: a
/// node's children as one block (as `base_node + rank` wants), their leaves right behind it,
/// then each child's own subtree. A lookup's path thus stays within a page or two, which is
/// what a cold lookup pays for (each new page a TLB miss).
struct Builder {
    /// Slots from [`FIRST_FREE_SLOT`] on.
    arena: Vec<Slot>,
    /// Entries used in the last slot of `arena` when it holds leaves (0: a fresh slot next).
    lanes: u32,
    capacity: u32,
    /// Rule sets by id.
    values: Vec<PrefixRules>,
    /// Per id: the subtree that last laid it out, and where.
    placed: Vec<(u32, u32)>,
    /// The subtree being laid out (1 and up).
    subtree: u32,
    copies: usize,
}

/// A node about to be written: its position data, and its children's ranges.
struct Pending {
    vector: u64,
    leafvec: u64,
    leaves: Vec<u32>,
    entries: Vec<u32>,
    children: Vec<(usize, std::ops::Range<usize>)>,
}

/// What a region's positions hold before its nodes are built.
struct Level {
    /// Per position: the value of the longest prefix covering it.
    entries: Vec<u32>,
    /// Positions that hold a longer prefix, with the range of `prefixes` inside them.
    children: Vec<(usize, std::ops::Range<usize>)>,
}

/// The `2^width` positions at `offset` of a region holding `prefixes` (sorted by address,
/// then length; those no longer than `offset` cover the whole region and are already in
/// `inherited`).
fn level(prefixes: &[Prefix], offset: u32, width: u32, inherited: u32) -> Level {
    let end = offset + width;
    // Leaf pushing: in address-then-length order a prefix comes before every prefix it holds,
    // so painting in order leaves the longest one on each position.
    let mut entries = vec![inherited; 1 << width];
    for prefix in prefixes {
        if prefix.len > offset && prefix.len <= end {
            let first = prefix.bits(offset, width);
            let count = 1usize << (end - prefix.len);
            entries[first..first + count].fill(prefix.value);
        }
    }
    let mut children = Vec::new();
    let mut start = 0;
    while start < prefixes.len() {
        let position = prefixes[start].bits(offset, width);
        let run = prefixes[start..]
            .iter()
            .take_while(|prefix| prefix.bits(offset, width) == position)
            .count();
        if prefixes[start..start + run]
            .iter()
            .any(|prefix| prefix.len > end)
        {
            children.push((position, start..start + run));
        }
        start += run;
    }
    Level { entries, children }
}

/// The value of a `/0` in `prefixes`, which covers what no longer prefix does.
fn default_route(prefixes: &[Prefix]) -> u32 {
    prefixes
        .iter()
        .find(|prefix| prefix.len == 0)
        .map_or(NO_VALUE, |prefix| prefix.value)
}

impl Builder {
    /// The direct table of one family; each of its nodes heads a contiguous subtree.
    fn direct(&mut self, prefixes: &[Prefix]) -> Result<Vec<u32>, IndexError> {
        let Level {
            mut entries,
            children,
        } = level(prefixes, 0, DIR_BITS, default_route(prefixes));
        for (position, range) in children {
            self.subtree += 1;
            let slot = self.alloc_nodes(1)?;
            let inherited = entries[position];
            entries[position] = NODE | slot;
            self.block(slot, &[(inherited, &prefixes[range])], DIR_BITS)?;
        }
        Ok(entries)
    }

    /// Writes the nodes of a block that starts at `base` (one per `(inherited, prefixes)`,
    /// for the [`STRIDE`] bits at `offset`), their leaves right behind the block, then each
    /// node's children block and subtree in turn.
    fn block(
        &mut self,
        base: u32,
        nodes: &[(u32, &[Prefix])],
        offset: u32,
    ) -> Result<(), IndexError> {
        let mut pending = Vec::with_capacity(nodes.len());
        for &(inherited, prefixes) in nodes {
            let Level { entries, children } = level(prefixes, offset, STRIDE, inherited);
            let mut vector = 0u64;
            for (position, _) in &children {
                vector |= 1 << position;
            }
            let mut leafvec = 0u64;
            let mut leaves = Vec::new();
            for (position, &entry) in entries.iter().enumerate() {
                if vector & (1 << position) == 0 && leaves.last() != Some(&entry) {
                    leafvec |= 1 << position;
                    leaves.push(entry);
                }
            }
            pending.push(Pending {
                vector,
                leafvec,
                leaves,
                entries,
                children,
            });
        }
        // The rules these leaves name, once per subtree, right behind the block; then the
        // leaves, naming them by slot.
        for node in &mut pending {
            for leaf in &mut node.leaves {
                *leaf = self.place(*leaf)?;
            }
        }
        for (i, node) in pending.iter().enumerate() {
            let base_leaf = self.alloc_leaves(&node.leaves)?;
            let slot = base + u32::try_from(i).expect("at most 64");
            self.arena[(slot - FIRST_FREE_SLOT) as usize] =
                Slot::node(node.vector, node.leafvec, 0, base_leaf);
        }
        for ((i, node), &(_, prefixes)) in pending.iter().enumerate().zip(nodes) {
            if node.children.is_empty() {
                continue;
            }
            let children = self.alloc_nodes(node.children.len())?;
            let slot = base + u32::try_from(i).expect("at most 64");
            self.arena[(slot - FIRST_FREE_SLOT) as usize].words[4] = children;
            let next: Vec<(u32, &[Prefix])> = node
                .children
                .iter()
                .map(|(position, range)| (node.entries[*position], &prefixes[range.clone()]))
                .collect();
            self.block(children, &next, offset + STRIDE)?;
        }
        Ok(())
    }

    /// The leaf for rule set `id`: its rules' slot, laid out now unless this subtree already
    /// has them.
    fn place(&mut self, id: u32) -> Result<u32, IndexError> {
        if id == NO_VALUE {
            return Ok(NO_VALUE);
        }
        let (subtree, slot) = self.placed[id as usize];
        if subtree == self.subtree {
            return Ok(slot);
        }
        let rules = self.values[id as usize];
        let len = rules_len(usize::from(rules.n_rules));
        let first = self.alloc_nodes(len.div_ceil(ENTRIES_PER_SLOT as usize))?;
        for word in 0..len {
            let at = (first - FIRST_FREE_SLOT) as usize + word / 6;
            self.arena[at].words[word % 6] = rules_word(&rules, word);
        }
        self.placed[id as usize] = (self.subtree, first);
        self.copies += 1;
        Ok(first)
    }

    /// `count` consecutive node slots after what is laid out; returns the first.
    fn alloc_nodes(&mut self, count: usize) -> Result<u32, IndexError> {
        self.lanes = 0;
        let first = FIRST_FREE_SLOT + u32::try_from(self.arena.len()).expect("slots fit u32");
        let end = u64::from(first) + count as u64;
        if end > u64::from(self.capacity) {
            return Err(IndexError::Slots {
                capacity: self.capacity,
            });
        }
        self.arena.resize(self.arena.len() + count, Slot::default());
        Ok(first)
    }

    /// Packs `leaves` after what is laid out; returns the entry index of the first.
    fn alloc_leaves(&mut self, leaves: &[u32]) -> Result<u32, IndexError> {
        let mut first = None;
        for &leaf in leaves {
            if self.lanes == 0 || self.lanes == ENTRIES_PER_SLOT {
                self.alloc_nodes(1)?;
            }
            let slot = FIRST_FREE_SLOT + u32::try_from(self.arena.len() - 1).expect("fits");
            let index = slot * ENTRIES_PER_SLOT + self.lanes;
            first.get_or_insert(index);
            self.arena.last_mut().expect("just allocated").words[self.lanes as usize] = leaf;
            self.lanes += 1;
        }
        Ok(first.unwrap_or(0))
    }

    /// The half: direct tables, then the arena.
    fn finish(self, direct: &[u32]) -> Built {
        let mut slots = Vec::with_capacity(direct.len().div_ceil(6) + self.arena.len());
        slots.extend(direct.chunks(6).map(pack));
        slots.extend(self.arena);
        Built {
            slots,
            rule_sets: self.values.len() - 1,
            rule_copies: self.copies,
        }
    }
}

fn pack(entries: &[u32]) -> Slot {
    let mut slot = Slot::default();
    slot.words[..entries.len()].copy_from_slice(entries);
    slot
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use classifier_common::{
        LpmKeyV4, LpmKeyV6,
        index::{Packed, find_v4, find_v6},
    };

    use super::*;

    /// splitmix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Rules with 0 to 3 port rules (`set % 4`), so that packing them is checked too.
    fn rules(set: u16, len: u32) -> PrefixRules {
        let mut rules = PrefixRules::EMPTY;
        rules.addr_category = 3;
        rules.addr_set = set;
        rules.prefix_len = u8::try_from(len).unwrap();
        for i in 0..usize::from(set % 4) {
            let port = 1000 * u16::try_from(i).unwrap() + set;
            rules.rules[i] = classifier_common::PortRule {
                port_lo: port,
                port_hi: port + 7,
                proto: if i % 2 == 0 { 6 } else { 17 },
                category: u8::try_from(1 + i % 3).unwrap(),
                set_id: set ^ 0x5a5,
            };
        }
        rules.n_rules = u8::try_from(set % 4).unwrap();
        rules
    }

    /// The longest prefix by brute force, as the trie answers.
    fn longest_v4(compiled: &Compiled, addr: u32) -> Option<PrefixRules> {
        (0..=32u32)
            .rev()
            .find_map(|len| {
                let masked = addr
                    .checked_shr(32 - len)
                    .unwrap_or(0)
                    .checked_shl(32 - len);
                compiled.v4.get(&LpmKeyV4 {
                    prefix_len: len,
                    addr: masked.unwrap_or(0).to_be_bytes(),
                })
            })
            .copied()
    }

    fn longest_v6(compiled: &Compiled, addr: u128) -> Option<PrefixRules> {
        (0..=128u32)
            .rev()
            .find_map(|len| {
                let masked = addr
                    .checked_shr(128 - len)
                    .unwrap_or(0)
                    .checked_shl(128 - len);
                compiled.v6.get(&LpmKeyV6 {
                    prefix_len: len,
                    addr: masked.unwrap_or(0).to_be_bytes(),
                })
            })
            .copied()
    }

    fn answer(built: &Built, found: Option<u32>) -> Option<PrefixRules> {
        let at = found.expect("a consistent index");
        Packed::at(built.slots.as_slice(), at)
            .expect("a readable header")
            .map(|packed| packed.unpack().expect("whole rules"))
    }

    fn without_len(rules: Option<PrefixRules>) -> Option<PrefixRules> {
        rules.map(|mut rules| {
            rules.prefix_len = 0;
            rules
        })
    }

    /// Random prefixes of every length, nested and overlapping, and addresses in and next to
    /// them.
    fn check_random(seed: u64, count: usize) {
        let mut rng = Rng(seed);
        let mut compiled = Compiled::default();
        for i in 0..count {
            let len = u32::try_from(rng.next() % 33).unwrap();
            // Few distinct high bits, so prefixes nest and share nodes.
            let addr = (rng.next() as u32 & 0xff0f_ffff) | 0x0a00_0000;
            let masked = addr
                .checked_shr(32 - len)
                .unwrap_or(0)
                .checked_shl(32 - len)
                .unwrap_or(0);
            let set = u16::try_from(i % 500).unwrap();
            compiled.v4.insert(
                LpmKeyV4 {
                    prefix_len: len,
                    addr: masked.to_be_bytes(),
                },
                rules(set, len),
            );
            let len6 = u32::try_from(rng.next() % 129).unwrap();
            let addr6 =
                (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !(0xffu128 << 100);
            let masked6 = addr6
                .checked_shr(128 - len6)
                .unwrap_or(0)
                .checked_shl(128 - len6)
                .unwrap_or(0);
            compiled.v6.insert(
                LpmKeyV6 {
                    prefix_len: len6,
                    addr: masked6.to_be_bytes(),
                },
                rules(set, len6),
            );
        }
        let built = build(&compiled, 1 << 22).unwrap();
        let keys4: Vec<LpmKeyV4> = compiled.v4.keys().copied().collect();
        let keys6: Vec<LpmKeyV6> = compiled.v6.keys().copied().collect();
        for _ in 0..20_000 {
            let key = keys4[(rng.next() % keys4.len() as u64) as usize];
            let base = u32::from_be_bytes(key.addr);
            let host = (rng.next() as u32).checked_shr(key.prefix_len).unwrap_or(0);
            for addr in [base | host, base.wrapping_sub(1), rng.next() as u32] {
                let found = answer(&built, find_v4(built.slots.as_slice(), addr.to_be_bytes()));
                assert_eq!(
                    found,
                    without_len(longest_v4(&compiled, addr)),
                    "{}",
                    Ipv4Addr::from(addr)
                );
            }
            let key = keys6[(rng.next() % keys6.len() as u64) as usize];
            let base = u128::from_be_bytes(key.addr);
            let host = (u128::from(rng.next()) << 64 | u128::from(rng.next()))
                .checked_shr(key.prefix_len)
                .unwrap_or(0);
            for addr in [base | host, base.wrapping_sub(1)] {
                let found = answer(&built, find_v6(built.slots.as_slice(), addr.to_be_bytes()));
                assert_eq!(
                    found,
                    without_len(longest_v6(&compiled, addr)),
                    "{}",
                    Ipv6Addr::from(addr)
                );
            }
        }
    }

    #[test]
    fn answers_as_the_longest_prefix_over_random_tables() {
        for seed in 1..=4 {
            check_random(seed, 3000);
        }
    }

    #[test]
    fn empty_table_answers_no_prefix() {
        let built = build(&Compiled::default(), FIRST_FREE_SLOT).unwrap();
        assert_eq!(built.slots.len(), FIRST_FREE_SLOT as usize);
        assert_eq!(
            find_v4(built.slots.as_slice(), [1, 2, 3, 4]),
            Some(NO_VALUE)
        );
        assert_eq!(find_v6(built.slots.as_slice(), [0x20; 16]), Some(NO_VALUE));
    }

    #[test]
    fn default_route_and_host_routes() {
        let mut compiled = Compiled::default();
        compiled.v4.insert(
            LpmKeyV4 {
                prefix_len: 0,
                addr: [0; 4],
            },
            rules(1, 0),
        );
        compiled.v4.insert(
            LpmKeyV4 {
                prefix_len: 32,
                addr: [192, 0, 2, 1],
            },
            rules(2, 32),
        );
        compiled.v6.insert(
            LpmKeyV6 {
                prefix_len: 128,
                addr: [0xff; 16],
            },
            rules(3, 128),
        );
        let built = build(&compiled, 1 << 16).unwrap();
        let set = |found| answer(&built, found).map(|rules| rules.addr_set);
        assert_eq!(
            set(find_v4(built.slots.as_slice(), [192, 0, 2, 1])),
            Some(2)
        );
        assert_eq!(
            set(find_v4(built.slots.as_slice(), [192, 0, 2, 0])),
            Some(1)
        );
        assert_eq!(
            set(find_v4(built.slots.as_slice(), [192, 0, 2, 2])),
            Some(1)
        );
        assert_eq!(set(find_v6(built.slots.as_slice(), [0xff; 16])), Some(3));
        let mut next = [0xff; 16];
        next[15] = 0xfe;
        assert_eq!(set(find_v6(built.slots.as_slice(), next)), None);
    }

    #[test]
    fn a_half_too_small_is_an_error_not_a_partial_index() {
        let mut compiled = Compiled::default();
        for i in 0..1000u32 {
            compiled.v4.insert(
                LpmKeyV4 {
                    prefix_len: 32,
                    addr: (i << 12).to_be_bytes(),
                },
                rules(1, 32),
            );
        }
        let capacity = FIRST_FREE_SLOT + 100;
        assert_eq!(
            build(&compiled, capacity).unwrap_err(),
            IndexError::Slots { capacity }
        );
    }
}
