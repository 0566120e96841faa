//! Compiled trie entries → the index the kernel walks beside the tries (the layout is
//! `classifier_common::index`'s): leaf-pushed, so every position of a node holds the answer
//! of the longest prefix that covers it, and popcount-compressed, so a node costs 24 bytes
//! plus one entry per run of equal leaves.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    ops::Range,
};

use classifier_common::{
    MAX_RULES, PrefixRules,
    index::{
        DIR_BITS, DIR_ENTRIES, DIR_V4, DIR_V6, ENTRIES_PER_SLOT, FIRST_FREE_SLOT, NO_VALUE, NODE,
        SLOT_MASK, STRIDE, Slot, TAIL, TAIL_MAX_LEN, rules_len, rules_word, tail_slot,
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

/// Builds the index of `compiled` for a half of `half_slots` slots, in memory of its own
/// (tests, benchmarks; the data plane's is built in place with [`build_into`]).
pub fn build(compiled: &Compiled, half_slots: u32) -> Result<Built, IndexError> {
    if !(FIRST_FREE_SLOT..=SLOT_MASK).contains(&half_slots) {
        return Err(IndexError::Slots {
            capacity: half_slots,
        });
    }
    // Zeroed pages that are never touched cost nothing.
    let mut slots = vec![Slot::default(); half_slots as usize];
    let stats = build_into(compiled, &mut slots)?;
    slots.truncate(stats.slots);
    Ok(Built {
        slots,
        rule_sets: stats.rule_sets,
        rule_copies: stats.rule_copies,
    })
}

/// What [`build_into`] laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Slots used from the start of the half.
    pub slots: usize,
    /// Distinct rule sets, and the copies laid out (each subtree has its own).
    pub rule_sets: usize,
    pub rule_copies: usize,
}

/// Builds the index of `compiled` into `half` (a half of the index map, not live): direct
/// tables, then nodes, leaves and rules. Slots past the returned count keep what they held.
///
/// The index answers with the rules of the longest prefix, like the tries, except for
/// `prefix_len`, which it leaves 0: the kernel never reads it.
///
/// # Panics
///
/// Only on a table of 2^32 distinct rule sets or more, which no map holds.
pub fn build_into(compiled: &Compiled, half: &mut [Slot]) -> Result<Stats, IndexError> {
    let capacity = u32::try_from(half.len()).unwrap_or(u32::MAX);
    if !(FIRST_FREE_SLOT..=SLOT_MASK).contains(&capacity) {
        return Err(IndexError::Slots { capacity });
    }
    // Rule sets by id (0: none), so that leaves compare as integers while they are laid out.
    let mut values = vec![PrefixRules::EMPTY];
    let mut ids: HashMap<RulesKey, u32, BuildHasherDefault<Fx>> = HashMap::default();
    let mut value_id = |rules: &PrefixRules| {
        let mut rules = *rules;
        rules.prefix_len = 0;
        *ids.entry(RulesKey(rules)).or_insert_with(|| {
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
        arena: half,
        used: FIRST_FREE_SLOT as usize,
        lanes: 0,
        capacity,
        placed: vec![(0, 0); values.len()],
        subtree: 0,
        copies: 0,
        values,
        scratch: Vec::new(),
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

/// Rule sets as hash keys: hashed by what the kernel reads (header and the rules in use), not
/// by all sixteen rule slots.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RulesKey(PrefixRules);

impl std::hash::Hash for RulesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let rules = &self.0;
        let n = usize::from(rules.n_rules).min(rules.rules.len());
        state.write_u64(
            u64::from(rules.n_rules)
                | u64::from(rules.addr_category) << 8
                | u64::from(rules.addr_set) << 16,
        );
        for rule in &rules.rules[..n] {
            state.write_u64(
                u64::from(rule.port_lo)
                    | u64::from(rule.port_hi) << 16
                    | u64::from(rule.proto) << 32
                    | u64::from(rule.category) << 40
                    | u64::from(rule.set_id) << 48,
            );
        }
    }
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
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
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
struct Builder<'a> {
    /// The half from its first slot; the direct tables' slots are written last.
    arena: &'a mut [Slot],
    /// Slots laid out.
    used: usize,
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
    /// Buffers by depth.
    scratch: Vec<Scratch>,
}

/// A node of a block about to be written.
struct PendingNode {
    /// Its place in the block.
    at: usize,
    vector: u64,
    leafvec: u64,
    leaves: [u32; 64],
    n_leaves: usize,
    /// Its children in the block's `children`: `first .. first + count`.
    first_child: usize,
    n_children: usize,
}

/// A node to lay out: the leaf it inherits, its range of prefixes, and its one longer prefix
/// when it is a tail.
type Child = (u32, Range<usize>, Option<usize>);

/// Buffers of one depth, reused from block to block.
#[derive(Default)]
struct Scratch {
    pending: Vec<PendingNode>,
    /// Per child: the leaf it inherits, its range of prefixes, and its one longer prefix
    /// when it is a tail.
    children: Vec<Child>,
}

/// Paints the `2^width` positions at `offset` of a region holding `prefixes` (sorted by
/// address, then length; those no longer than `offset` cover the whole region and are
/// already in `inherited`), and calls `child` for each position that holds a longer prefix,
/// with its painted entry, the range of `prefixes` inside it, and the index of the longer
/// prefix when it is the only one.
fn level(
    prefixes: &[Prefix],
    offset: u32,
    width: u32,
    entries: &mut [u32],
    mut child: impl FnMut(usize, u32, Range<usize>, Option<usize>),
) {
    let end = offset + width;
    // Leaf pushing: in address-then-length order a prefix comes before every prefix it holds,
    // so painting in order leaves the longest one on each position.
    for prefix in prefixes {
        if prefix.len > offset && prefix.len <= end {
            let first = prefix.bits(offset, width);
            let count = 1usize << (end - prefix.len);
            entries[first..first + count].fill(prefix.value);
        }
    }
    let mut start = 0;
    while start < prefixes.len() {
        let position = prefixes[start].bits(offset, width);
        let mut stop = start;
        let (mut longer, mut last) = (0, 0);
        while stop < prefixes.len() && prefixes[stop].bits(offset, width) == position {
            if prefixes[stop].len > end {
                longer += 1;
                last = stop;
            }
            stop += 1;
        }
        if longer > 0 {
            child(
                position,
                entries[position],
                start..stop,
                (longer == 1).then_some(last),
            );
        }
        start = stop;
    }
}

/// The value of a `/0` in `prefixes`, which covers what no longer prefix does.
fn default_route(prefixes: &[Prefix]) -> u32 {
    prefixes
        .iter()
        .find(|prefix| prefix.len == 0)
        .map_or(NO_VALUE, |prefix| prefix.value)
}

impl Builder<'_> {
    /// The direct table of one family; each of its nodes heads a contiguous subtree.
    fn direct(&mut self, prefixes: &[Prefix]) -> Result<Vec<u32>, IndexError> {
        let mut entries = vec![default_route(prefixes); DIR_ENTRIES as usize];
        let mut children = Vec::new();
        level(
            prefixes,
            0,
            DIR_BITS,
            &mut entries,
            |position, inherited, range, single| {
                let single = single.filter(|&at| prefixes[at].len <= TAIL_MAX_LEN);
                children.push((position, (inherited, range, single)));
            },
        );
        for (position, child) in children {
            self.subtree += 1;
            let slot = self.alloc_nodes(1)?;
            entries[position] = NODE | if child.2.is_some() { TAIL } else { 0 } | slot;
            self.block(slot, &[child], prefixes, DIR_BITS, 0)?;
        }
        Ok(entries)
    }

    /// Writes the nodes of a block that starts at `base` (one per `(inherited, range of
    /// prefixes)`, for the [`STRIDE`] bits at `offset`), the rules and leaves they need right
    /// behind it, then each node's children block and subtree in turn.
    fn block(
        &mut self,
        base: u32,
        nodes: &[Child],
        prefixes: &[Prefix],
        offset: u32,
        depth: usize,
    ) -> Result<(), IndexError> {
        // Tails first, and the rules they name right behind the block.
        for (i, (inherited, _, single)) in nodes.iter().enumerate() {
            if let Some(at) = *single {
                let prefix = prefixes[at];
                let inside = self.place(prefix.value)?;
                let outside = self.place(*inherited)?;
                self.arena[base as usize + i] = tail_slot(
                    (prefix.addr >> 64) as u64,
                    u64::try_from(prefix.addr & u128::from(u64::MAX)).expect("masked to 64 bits"),
                    prefix.len,
                    inside,
                    outside,
                );
            }
        }
        if self.scratch.len() <= depth {
            self.scratch.resize_with(depth + 1, Scratch::default);
        }
        let mut scratch = std::mem::take(&mut self.scratch[depth]);
        scratch.pending.clear();
        scratch.children.clear();
        // The nodes that are no tails, in block order (`at`: the place in the block).
        for (i, (inherited, range, single)) in nodes.iter().enumerate() {
            if single.is_some() {
                continue;
            }
            let mut entries = [*inherited; 64];
            let first_child = scratch.children.len();
            let mut vector = 0u64;
            let mut tails = 0u64;
            level(
                &prefixes[range.clone()],
                offset,
                STRIDE,
                &mut entries,
                |position, inherited, sub, single| {
                    let single = single
                        .map(|at| range.start + at)
                        .filter(|&at| prefixes[at].len <= TAIL_MAX_LEN);
                    vector |= 1 << position;
                    if single.is_some() {
                        tails |= 1 << position;
                    }
                    scratch.children.push((
                        inherited,
                        range.start + sub.start..range.start + sub.end,
                        single,
                    ));
                },
            );
            let mut node = PendingNode {
                at: i,
                vector,
                // A tail child is marked by its bit in `leafvec`.
                leafvec: tails,
                leaves: [0; 64],
                n_leaves: 0,
                first_child,
                n_children: scratch.children.len() - first_child,
            };
            let mut last = None;
            for (position, &entry) in entries.iter().enumerate() {
                if vector & (1 << position) == 0 && last != Some(entry) {
                    node.leafvec |= 1 << position;
                    node.leaves[node.n_leaves] = entry;
                    node.n_leaves += 1;
                    last = Some(entry);
                }
            }
            scratch.pending.push(node);
        }
        // The rules these leaves name, once per subtree, right behind the block; then the
        // leaves, naming them by slot.
        for node in &mut scratch.pending {
            for leaf in &mut node.leaves[..node.n_leaves] {
                *leaf = self.place(*leaf)?;
            }
        }
        for node in &scratch.pending {
            let base_leaf = self.alloc_leaves(&node.leaves[..node.n_leaves])?;
            let slot = base + u32::try_from(node.at).expect("at most 64");
            self.arena[slot as usize] = Slot::node(node.vector, node.leafvec, 0, base_leaf);
        }
        for node in &scratch.pending {
            if node.n_children == 0 {
                continue;
            }
            let children = self.alloc_nodes(node.n_children)?;
            let slot = base + u32::try_from(node.at).expect("at most 64");
            self.arena[slot as usize].words[4] = children;
            let range = node.first_child..node.first_child + node.n_children;
            self.block(
                children,
                &scratch.children[range],
                prefixes,
                offset + STRIDE,
                depth + 1,
            )?;
        }
        self.scratch[depth] = scratch;
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
        let n_rules = usize::from(self.values[id as usize].n_rules).min(MAX_RULES);
        let len = rules_len(n_rules);
        let first = self.alloc_nodes(len.div_ceil(ENTRIES_PER_SLOT as usize))?;
        let rules = &self.values[id as usize];
        for word in 0..len {
            self.arena[first as usize + word / 6].words[word % 6] = rules_word(rules, word);
        }
        self.placed[id as usize] = (self.subtree, first);
        self.copies += 1;
        Ok(first)
    }

    /// `count` consecutive node slots after what is laid out, zeroed; returns the first.
    fn alloc_nodes(&mut self, count: usize) -> Result<u32, IndexError> {
        self.lanes = 0;
        let first = self.used;
        let Some(slots) = self.arena.get_mut(first..first + count) else {
            return Err(IndexError::Slots {
                capacity: self.capacity,
            });
        };
        slots.fill(Slot::default());
        self.used += count;
        Ok(u32::try_from(first).expect("the half has fewer than 2^31 slots"))
    }

    /// Packs `leaves` after what is laid out; returns the entry index of the first.
    fn alloc_leaves(&mut self, leaves: &[u32]) -> Result<u32, IndexError> {
        let mut first = None;
        for &leaf in leaves {
            if self.lanes == 0 || self.lanes == ENTRIES_PER_SLOT {
                self.alloc_nodes(1)?;
            }
            let slot = u32::try_from(self.used - 1).expect("fits");
            first.get_or_insert(slot * ENTRIES_PER_SLOT + self.lanes);
            self.arena[self.used - 1].words[self.lanes as usize] = leaf;
            self.lanes += 1;
        }
        Ok(first.unwrap_or(0))
    }

    /// The direct tables written over the half's first slots.
    fn finish(self, direct: &[u32]) -> Stats {
        for (slot, entries) in self.arena.iter_mut().zip(direct.chunks(6)) {
            *slot = pack(entries);
        }
        Stats {
            slots: self.used,
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
#[allow(clippy::cast_possible_truncation, reason = "random bits cut to size")]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use classifier_common::{
        LpmKeyV4, LpmKeyV6,
        index::{Packed, find_v4, find_v6},
    };
    use harness_common::Rng;

    use super::*;

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
        let mut rng = Rng::new(seed);
        let mut compiled = Compiled::default();
        for i in 0..count {
            let len = u32::try_from(rng.next_mod(33)).unwrap();
            // Few distinct high bits, so prefixes nest and share nodes.
            let addr = (rng.next_u64() as u32 & 0xff0f_ffff) | 0x0a00_0000;
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
            let len6 = u32::try_from(rng.next_mod(129)).unwrap();
            let addr6 = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()))
                & !(0xffu128 << 100);
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
            let key = keys4[rng.next_mod(keys4.len() as u64) as usize];
            let base = u32::from_be_bytes(key.addr);
            let host = (rng.next_u64() as u32)
                .checked_shr(key.prefix_len)
                .unwrap_or(0);
            for addr in [base | host, base.wrapping_sub(1), rng.next_u64() as u32] {
                let found = answer(&built, find_v4(built.slots.as_slice(), addr.to_be_bytes()));
                assert_eq!(
                    found,
                    without_len(longest_v4(&compiled, addr)),
                    "{}",
                    Ipv4Addr::from(addr)
                );
            }
            let key = keys6[rng.next_mod(keys6.len() as u64) as usize];
            let base = u128::from_be_bytes(key.addr);
            let host = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()))
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
