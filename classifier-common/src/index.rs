//! The compiled index beside the tries: a poptrie (Asai and Ohara, SIGCOMM 2015) that user
//! space builds from the same entries and the kernel walks in a few memory reads, whatever
//! the number of prefixes.
//!
//! Layout. [`names::INDEX_SLOTS`](crate::names::INDEX_SLOTS) is an array of 24-byte
//! [`Slot`]s in two halves: the live table and the one being built. A half holds, in order:
//! the IPv4 direct table (65536 entries, one per `/16`), the IPv6 direct table (one per
//! `/16`), then nodes, leaves and rules. An *entry* is a `u32`: [`NODE`] plus the slot of a
//! node, or the slot of the rules of the longest prefix (0: no prefix). Entries are packed
//! six to a slot and addressed in `u32` units from the start of the half.
//!
//! A node splits the next [`STRIDE`] bits of the address into 64 positions. Bit `p` of
//! `vector` says position `p` is a child node, the `popcount(vector & below(p))`-th after
//! `base_node`. Every other position is a leaf; `leafvec` marks where a run of equal leaves
//! begins, and the leaf of `p` is the `popcount(leafvec & upto(p))`-th from `base_leaf`.
//! A subtree that holds a single longer prefix is a *tail* instead (see [`tail_slot`]): one
//! comparison replaces the chain of nodes down to it. A direct table entry says so with
//! [`TAIL`]; a node with its `leafvec` bit at the child's position (a bit leaves never use
//! there).
//!
//! Rules are [`PrefixRules`] packed into whole slots (see [`rules_word`] and [`Packed`]) next
//! to the leaves that use them, so that a lookup reads its node, leaf and rules from the same
//! page or two.
//!
//! [`names::INDEX_CTL`](crate::names::INDEX_CTL) says which half is live in one 64-bit word,
//! so a new table is written beside the live one and switched with one store.
#![allow(
    clippy::inline_always,
    reason = "the kernel programs must inline every step of the walk"
)]
#![allow(
    clippy::cast_possible_truncation,
    reason = "fields are packed into and out of 32-bit words on purpose"
)]

use crate::{MAX_RULES, PortRule, PrefixRules, Rules};

/// Bits of the address the direct tables index.
pub const DIR_BITS: u32 = 16;
/// Bits a node consumes.
pub const STRIDE: u32 = 6;
/// Entries of a direct table.
pub const DIR_ENTRIES: u32 = 1 << DIR_BITS;
/// Entries packed in a slot.
pub const ENTRIES_PER_SLOT: u32 = 6;
/// Slots of one direct table.
pub const DIR_SLOTS: u32 = DIR_ENTRIES.div_ceil(ENTRIES_PER_SLOT);
/// Where the IPv4 and IPv6 direct tables start, in entries from the start of a half.
pub const DIR_V4: u32 = 0;
pub const DIR_V6: u32 = DIR_SLOTS * ENTRIES_PER_SLOT;
/// The first slot after the direct tables: nodes and leaves start here.
pub const FIRST_FREE_SLOT: u32 = 2 * DIR_SLOTS;
/// Node levels below a direct table: `16 + 6 * 3 >= 32`, `16 + 6 * 19 >= 128`.
pub const LEVELS_V4: u32 = (32 - DIR_BITS).div_ceil(STRIDE);
pub const LEVELS_V6: u32 = (128 - DIR_BITS).div_ceil(STRIDE);
/// The high bit of an entry marks a node reference.
pub const NODE: u32 = 1 << 31;
/// With [`NODE`], the node is a tail (one slot, [`tail_slot`]).
pub const TAIL: u32 = 1 << 30;
/// The slot of a node reference; a half has fewer slots.
pub const SLOT_MASK: u32 = TAIL - 1;
/// The longest prefix a tail holds; a longer one gets nodes down to it.
pub const TAIL_MAX_LEN: u32 = 96;
/// The leaf of "no prefix holds the address" (slot 0 belongs to a direct table, never to
/// rules).
pub const NO_VALUE: u32 = 0;
/// [`IndexCtl::live`] while no index is live (a new, zeroed map too): the kernel reads the
/// tries.
pub const LIVE_OFF: u64 = 0;
/// Set in [`IndexCtl::live`] while a half is live.
pub const LIVE_ON: u64 = 1 << 63;
/// Set in [`IndexCtl::live`] when the kernel walks the index for IPv4 (IPv6) destinations;
/// clear, the tries decide that family (a table below the size where the index pays).
pub const LIVE_V4: u64 = 1 << 62;
pub const LIVE_V6: u64 = 1 << 61;

/// The [`IndexCtl::live`] word of a half starting at `slot_base`, walked for the families
/// asked.
#[must_use]
pub const fn live_word(slot_base: u32, v4: bool, v6: bool) -> u64 {
    LIVE_ON | if v4 { LIVE_V4 } else { 0 } | if v6 { LIVE_V6 } else { 0 } | slot_base as u64
}

/// The first slot of the live half, `None` when none is live.
#[inline(always)]
#[must_use]
pub const fn live_half(live: u64) -> Option<u32> {
    if live & LIVE_ON == 0 {
        return None;
    }
    Some(live as u32)
}

/// The first slot of the live half if the kernel walks it for IPv4 destinations.
#[inline(always)]
#[must_use]
pub const fn live_v4(live: u64) -> Option<u32> {
    if live & LIVE_V4 == 0 {
        return None;
    }
    live_half(live)
}

/// The same for IPv6.
#[inline(always)]
#[must_use]
pub const fn live_v6(live: u64) -> Option<u32> {
    if live & LIVE_V6 == 0 {
        return None;
    }
    live_half(live)
}

/// Entries that [`PrefixRules`] with `n_rules` rules take: a header and two per rule.
#[must_use]
pub const fn rules_len(n_rules: usize) -> usize {
    1 + 2 * n_rules
}

/// Entry `word` of the packed form of `rules`: the header (`n_rules`, `addr_category`,
/// `addr_set`), then per rule `port_lo | port_hi << 16` and `proto | category << 8 | set_id
/// << 16`. `prefix_len` is not kept: the kernel never reads it.
#[must_use]
pub fn rules_word(rules: &PrefixRules, word: usize) -> u32 {
    if word == 0 {
        return u32::from(rules.n_rules)
            | u32::from(rules.addr_category) << 8
            | u32::from(rules.addr_set) << 16;
    }
    let Some(rule) = rules.rules.get((word - 1) / 2) else {
        return 0;
    };
    if word % 2 == 1 {
        u32::from(rule.port_lo) | u32::from(rule.port_hi) << 16
    } else {
        u32::from(rule.proto) | u32::from(rule.category) << 8 | u32::from(rule.set_id) << 16
    }
}

/// The rules packed at slot `at` (a leaf), read in place.
pub struct Packed<'a, S: ?Sized> {
    slots: &'a S,
    /// Entry index of the header.
    first: u32,
    header: u32,
}

impl<'a, S: Slots + ?Sized> Packed<'a, S> {
    /// The rules a leaf names: `Some(None)` for [`NO_VALUE`], `None` when the header cannot
    /// be read.
    #[inline(always)]
    pub fn at(slots: &'a S, leaf: u32) -> Option<Option<Self>> {
        if leaf == NO_VALUE {
            return Some(None);
        }
        let first = leaf.wrapping_mul(ENTRIES_PER_SLOT);
        let header = entry(slots, first)?;
        Some(Some(Self {
            slots,
            first,
            header,
        }))
    }

    /// Unpacked (`prefix_len` 0); `None` when a rule cannot be read.
    #[must_use]
    pub fn unpack(&self) -> Option<PrefixRules> {
        let (n_rules, addr_category, addr_set) = self.header();
        let mut rules = PrefixRules::EMPTY;
        (rules.n_rules, rules.addr_category, rules.addr_set) = (n_rules, addr_category, addr_set);
        for i in 0..usize::from(n_rules).min(MAX_RULES) {
            rules.rules[i] = self.rule(i)?;
        }
        Some(rules)
    }
}

impl<S: Slots + ?Sized> Rules for Packed<'_, S> {
    #[inline(always)]
    fn header(&self) -> (u8, u8, u16) {
        (
            self.header as u8,
            (self.header >> 8) as u8,
            (self.header >> 16) as u16,
        )
    }

    #[inline(always)]
    fn rule(&self, i: usize) -> Option<PortRule> {
        let word = self.first.wrapping_add(1 + 2 * i as u32);
        let ports = entry(self.slots, word)?;
        let kind = entry(self.slots, word.wrapping_add(1))?;
        Some(PortRule {
            port_lo: ports as u16,
            port_hi: (ports >> 16) as u16,
            proto: kind as u8,
            category: (kind >> 8) as u8,
            set_id: (kind >> 16) as u16,
        })
    }
}

/// One element of the index array: a node, or six entries (leaves, or direct table entries).
/// Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// As a node: `vector` (low, high), `leafvec` (low, high), `base_node`, `base_leaf`.
    pub words: [u32; 6],
}
const _: () = assert!(size_of::<Slot>() == 24);

impl Slot {
    #[must_use]
    pub const fn node(vector: u64, leafvec: u64, base_node: u32, base_leaf: u32) -> Self {
        Self {
            words: [
                vector as u32,
                (vector >> 32) as u32,
                leafvec as u32,
                (leafvec >> 32) as u32,
                base_node,
                base_leaf,
            ],
        }
    }

    #[inline(always)]
    fn vector(&self) -> u64 {
        u64::from(self.words[0]) | (u64::from(self.words[1]) << 32)
    }

    #[inline(always)]
    fn leafvec(&self) -> u64 {
        u64::from(self.words[2]) | (u64::from(self.words[3]) << 32)
    }
}

/// Value of [`names::INDEX_CTL`](crate::names::INDEX_CTL) (index 0), written by user space
/// through a shared mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexCtl {
    /// The live half ([`live_word`]): [`LIVE_ON`], [`LIVE_V4`] and [`LIVE_V6`] for the
    /// families walked, and its first slot in the low 32 bits; [`LIVE_OFF`] when none is
    /// live. Written with one atomic store.
    pub live: u64,
    /// Switches so far.
    pub seq: u64,
    /// The `seq` after which a grace period has passed: the other half has no reader left.
    pub released: u64,
    /// Slots the live half uses and rule sets it packs (for `status`; the kernel never reads
    /// them).
    pub used_slots: u32,
    pub used_rules: u32,
}
const _: () = assert!(size_of::<IndexCtl>() == 32);

/// Read access to one half of the index: the kernel reads its array map, user space a
/// mapping of it or a built table.
pub trait Slots {
    /// The slot at `index` from the start of the half, `None` past the end.
    fn slot(&self, index: u32) -> Option<&Slot>;
}

impl Slots for [Slot] {
    #[inline(always)]
    fn slot(&self, index: u32) -> Option<&Slot> {
        self.get(index as usize)
    }
}

/// The entry at `index` (in entries from the start of the half).
#[inline(always)]
fn entry<S: Slots + ?Sized>(slots: &S, index: u32) -> Option<u32> {
    let slot = slots.slot(index / ENTRIES_PER_SLOT)?;
    let lane = (index % ENTRIES_PER_SLOT) as usize;
    // The verifier does not follow `%`, so it needs an explicit bound, which LLVM would drop
    // as redundant unless the value passes through memory it cannot see into.
    // SAFETY: a read of a local.
    let lane = unsafe { core::ptr::read_volatile(&raw const lane) };
    slot.words.get(lane).copied()
}

/// From a node entry to the entry of position `chunk` (0..64) of that node.
#[inline(always)]
fn step<S: Slots + ?Sized>(slots: &S, node: u32, chunk: u32) -> Option<u32> {
    let node = slots.slot(node & SLOT_MASK)?;
    let vector = node.vector();
    let leafvec = node.leafvec();
    let bit = 1u64 << (chunk & 63);
    if vector & bit != 0 {
        let child = node.words[4].wrapping_add((vector & (bit - 1)).count_ones()) & SLOT_MASK;
        // At a child's position `leafvec` marks a tail.
        return Some(NODE | if leafvec & bit != 0 { TAIL } else { 0 } | child);
    }
    let rank = (leafvec & !vector & (bit << 1).wrapping_sub(1)).count_ones();
    entry(slots, node.words[5].wrapping_add(rank).wrapping_sub(1))
}

/// A tail: what a subtree holding one longer prefix (of at most [`TAIL_MAX_LEN`] bits)
/// compresses to, instead of a chain of nodes, in one slot ([`tail_slot`]): the prefix's
/// address (its first 96 bits, left-aligned), its length, and the leaves for an address
/// inside and outside it.
#[inline(always)]
fn tail<S: Slots + ?Sized>(slots: &S, at: u32, high: u64, low: u64) -> Option<u32> {
    let tail = slots.slot(at & SLOT_MASK)?;
    let key_high = u64::from(tail.words[0]) | (u64::from(tail.words[1]) << 32);
    let len = tail.words[3];
    let inside = if len == 0 {
        true
    } else if len <= 64 {
        (high ^ key_high) >> ((64 - len) & 63) == 0
    } else if len <= TAIL_MAX_LEN {
        high == key_high && (((low >> 32) as u32) ^ tail.words[2]) >> ((96 - len) & 31) == 0
    } else {
        return None;
    };
    Some(if inside { tail.words[4] } else { tail.words[5] })
}

/// The slot of a tail for a prefix of `len` bits (at most [`TAIL_MAX_LEN`]) at `high`, `low`
/// (left-aligned), with the leaves inside and outside it.
#[must_use]
pub fn tail_slot(high: u64, low: u64, len: u32, inside: u32, outside: u32) -> Slot {
    Slot {
        words: [
            high as u32,
            (high >> 32) as u32,
            (low >> 32) as u32,
            len,
            inside,
            outside,
        ],
    }
}

/// The leaf of the longest prefix holding an IPv4 address (network order): the slot of its
/// rules ([`Packed`]), or [`NO_VALUE`]; `None` when the half is inconsistent (a reference
/// past its end, a walk deeper than an address): the caller falls back to the trie.
#[inline(always)]
pub fn find_v4<S: Slots + ?Sized>(slots: &S, addr: [u8; 4]) -> Option<u32> {
    let key = u64::from(u32::from_be_bytes(addr)) << 32;
    let mut found = entry(slots, DIR_V4 + (key >> 48) as u32)?;
    let mut offset = DIR_BITS;
    for _ in 0..LEVELS_V4 {
        if found & NODE == 0 {
            return Some(found);
        }
        if found & TAIL != 0 {
            return tail(slots, found, key, 0);
        }
        found = step(slots, found, ((key >> (58 - offset)) & 63) as u32)?;
        offset += STRIDE;
    }
    if found & NODE == 0 {
        return Some(found);
    }
    if found & TAIL != 0 {
        return tail(slots, found, key, 0);
    }
    None
}

/// [`find_v4`] for an IPv6 address (network order).
#[inline(always)]
pub fn find_v6<S: Slots + ?Sized>(slots: &S, addr: [u8; 16]) -> Option<u32> {
    let mut high = [0u8; 8];
    let mut low = [0u8; 8];
    high.copy_from_slice(&addr[..8]);
    low.copy_from_slice(&addr[8..]);
    let (high, low) = (u64::from_be_bytes(high), u64::from_be_bytes(low));
    let mut found = entry(slots, DIR_V6 + (high >> 48) as u32)?;
    let mut offset = DIR_BITS;
    for _ in 0..LEVELS_V6 {
        if found & NODE == 0 {
            return Some(found);
        }
        if found & TAIL != 0 {
            return tail(slots, found, high, low);
        }
        // Six bits at `offset`: never across the two words (16 + 6k hits 64 exactly); the
        // last chunk (124..130) pads with zeros.
        let chunk = if offset < 64 {
            high >> (58 - offset)
        } else if offset <= 122 {
            low >> (122 - offset)
        } else {
            low << (offset - 122)
        };
        found = step(slots, found, (chunk & 63) as u32)?;
        offset += STRIDE;
    }
    if found & NODE == 0 {
        return Some(found);
    }
    if found & TAIL != 0 {
        return tail(slots, found, high, low);
    }
    None
}
