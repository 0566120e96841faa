//! The compiled index beside the tries: a poptrie (Asai and Ohara, SIGCOMM 2015) that user
//! space builds from the same entries and the kernel walks in a few memory reads, whatever
//! the number of prefixes.
//!
//! Layout. [`names::INDEX_SLOTS`](crate::names::INDEX_SLOTS) is an array of 24-byte
//! [`Slot`]s in two halves: the live table and the one being built. A half holds, in order:
//! the IPv4 direct table (65536 entries, one per `/16`), the IPv6 direct table (one per
//! `/16`), then nodes and leaves. An *entry* is a `u32`: [`NODE`] plus the slot of a node,
//! or a value id (0: no prefix). Entries are packed six to a slot and addressed in `u32`
//! units from the start of the half.
//!
//! A node splits the next [`STRIDE`] bits of the address into 64 positions. Bit `p` of
//! `vector` says position `p` is a child node, the `popcount(vector & below(p))`-th after
//! `base_node`. Every other position is a leaf; `leafvec` marks where a run of equal leaves
//! begins, and the leaf of `p` is the `popcount(leafvec & upto(p))`-th from `base_leaf`. A
//! value id indexes [`names::INDEX_VALUES`](crate::names::INDEX_VALUES), the half's
//! deduplicated [`PrefixRules`](crate::PrefixRules).
//!
//! [`names::INDEX_CTL`](crate::names::INDEX_CTL) says which half is live in one 64-bit word,
//! so a new table is written beside the live one and switched with one store.

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
/// Value id of "no prefix holds the address".
pub const NO_VALUE: u32 = 0;
/// [`IndexCtl::live`] while no index is live (a new, zeroed map too): the kernel reads the
/// tries.
pub const LIVE_OFF: u64 = 0;
/// Set in [`IndexCtl::live`] while a half is live.
pub const LIVE_ON: u64 = 1 << 63;

/// The [`IndexCtl::live`] word of a half starting at `slot_base` and `value_base`.
#[must_use]
pub const fn live_word(slot_base: u32, value_base: u32) -> u64 {
    LIVE_ON | ((slot_base as u64) << 32) | value_base as u64
}

/// The first slot and the first value of the live half, `None` when none is live.
#[inline(always)]
#[must_use]
pub const fn live_half(live: u64) -> Option<(u32, u32)> {
    if live & LIVE_ON == 0 {
        return None;
    }
    Some((((live >> 32) as u32) & !(1 << 31), live as u32))
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
    /// The live half ([`live_word`]): [`LIVE_ON`], its first slot in bits 32..63, its first
    /// value in the low 32 bits; [`LIVE_OFF`] when none is live. Written with one atomic
    /// store.
    pub live: u64,
    /// Switches so far.
    pub seq: u64,
    /// The `seq` after which a grace period has passed: the other half has no reader left.
    pub released: u64,
    /// Slots and values the live half uses (for `status`; the kernel never reads them).
    pub used_slots: u32,
    pub used_values: u32,
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
    let node = slots.slot(node & !NODE)?;
    let bit = 1u64 << (chunk & 63);
    let vector = node.vector();
    if vector & bit != 0 {
        let rank = (vector & (bit - 1)).count_ones();
        return Some(NODE | node.words[4].wrapping_add(rank));
    }
    let rank = (node.leafvec() & (bit << 1).wrapping_sub(1)).count_ones();
    entry(slots, node.words[5].wrapping_add(rank).wrapping_sub(1))
}

/// The value id of the longest prefix holding an IPv4 address (network order), or
/// [`NO_VALUE`]; `None` when the half is inconsistent (a reference past its end, a walk
/// deeper than an address): the caller falls back to the trie.
#[inline(always)]
pub fn find_v4<S: Slots + ?Sized>(slots: &S, addr: [u8; 4]) -> Option<u32> {
    let key = u64::from(u32::from_be_bytes(addr)) << 32;
    let mut found = entry(slots, DIR_V4 + (key >> 48) as u32)?;
    let mut offset = DIR_BITS;
    for _ in 0..LEVELS_V4 {
        if found & NODE == 0 {
            return Some(found);
        }
        found = step(slots, found, ((key >> (58 - offset)) & 63) as u32)?;
        offset += STRIDE;
    }
    if found & NODE == 0 { Some(found) } else { None }
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
    if found & NODE == 0 { Some(found) } else { None }
}
