//! The index maps, mapped into this process: a new table is built in the half nobody reads,
//! then made live with one atomic store of the control word. The half that was live is
//! written again only after an RCU grace period (`membarrier(MEMBARRIER_CMD_GLOBAL)` waits
//! for one, at the start of the next build if the period may not have passed): XDP and tc
//! programs run inside RCU read-side sections, so by then no packet is still walking it.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering, fence},
    time::{Duration, Instant},
};

use aya::maps::MapData;
use classifier_common::{
    index::{FIRST_FREE_SLOT, IndexCtl, LIVE_OFF, Slot, live_half, live_word},
    names,
};

use super::DatapathError;
use crate::{
    compile::Compiled,
    index::{IndexError, build_into},
};

/// A shared, writable mapping of an array map's values.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; access goes through `&self` or
// `&mut self` like a slice.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(name: &'static str, data: &MapData, len: usize) -> Result<Self, DatapathError> {
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of a BPF_F_MMAPABLE array of at least `len` bytes;
        // the kernel checks the size and the flag.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Mmap {
                name,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast()).ok_or(DatapathError::Mmap {
            name,
            source: io::Error::other("mmap returned null"),
        })?;
        Ok(Self { ptr, len })
    }

    /// The mapping as `T`s (`size_of::<T>()` divides the kernel's element size: arrays
    /// round elements up to 8 bytes, and every type here is a multiple of 8).
    fn as_slice<T>(&self) -> &[T] {
        // SAFETY: page-aligned, `len` bytes, and every bit pattern is a valid `T` (plain
        // integers).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len / size_of::<T>()) }
    }

    fn as_mut_slice<T>(&mut self) -> &mut [T] {
        // SAFETY: as above; `&mut self` keeps this process's writers apart, the pin lock
        // other processes'.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len / size_of::<T>())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, not used after this.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Below this many prefixes of a family the kernel keeps to the tries for it: a small trie
/// stays in the caches, and `cargo xtask bench` measures the index no faster there (the
/// crossover lies between its 100- and 1000-prefix rows; see the README's Performance).
pub const INDEX_FROM_PREFIXES: usize = 1000;

/// The index maps, mapped.
pub struct IndexMaps {
    slots: Mapping,
    ctl: Mapping,
    half_slots: u32,
    /// [`INDEX_FROM_PREFIXES`], unless a benchmark asks for the index at every size.
    from_prefixes: usize,
}

/// What [`IndexMaps::rebuild`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    /// Whether the kernel walks it for IPv4 and for IPv6 destinations (the family has
    /// [`INDEX_FROM_PREFIXES`] prefixes or more), or keeps to the tries.
    pub v4: bool,
    pub v6: bool,
    /// From the start of the build until the new half was live.
    pub switch: Duration,
    /// The wait, before the build, for readers of the half it overwrites (the grace period
    /// after the previous switch, if it has not passed yet; usually none).
    pub grace: Duration,
    /// Slots written, distinct rule sets and their copies (one per subtree using them).
    pub slots: usize,
    pub rule_sets: usize,
    pub rule_copies: usize,
}

impl IndexMaps {
    /// Maps the index maps ([`names::INDEX_SLOTS`], [`names::INDEX_CTL`]), populated at once
    /// so that no page fault lands in a later switch.
    pub fn new(slots: &MapData, ctl: &MapData) -> Result<Self, DatapathError> {
        let entries = slots
            .info()
            .map(|info| info.max_entries())
            .map_err(|source| DatapathError::Map {
                name: names::INDEX_SLOTS,
                source,
            })?;
        Ok(Self {
            slots: Mapping::new(
                names::INDEX_SLOTS,
                slots,
                entries as usize * size_of::<Slot>(),
            )?,
            ctl: Mapping::new(names::INDEX_CTL, ctl, size_of::<IndexCtl>())?,
            half_slots: entries / 2,
            from_prefixes: INDEX_FROM_PREFIXES,
        })
    }

    /// False when `[index] memory-mib = 0` made the map too small for any table.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.half_slots >= FIRST_FREE_SLOT
    }

    /// Walk the index for a family from `prefixes` prefixes on (benchmarks: 0, every size).
    pub fn walk_from(&mut self, prefixes: usize) {
        self.from_prefixes = prefixes;
    }

    /// Slots of one half: what a table may use.
    #[must_use]
    pub fn half_slots(&self) -> u32 {
        self.half_slots
    }

    /// Bytes of kernel memory the index takes (both halves).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.slots.len
    }

    fn word(&self, field: usize) -> &AtomicU64 {
        let words: &[u64] = self.ctl.as_slice();
        // SAFETY: an aligned u64 of the shared mapping; every access to it is atomic.
        unsafe { AtomicU64::from_ptr(std::ptr::from_ref(&words[field]).cast_mut()) }
    }

    fn live(&self) -> &AtomicU64 {
        self.word(0)
    }

    fn seq(&self) -> &AtomicU64 {
        self.word(1)
    }

    fn released(&self) -> &AtomicU64 {
        self.word(2)
    }

    /// `used_slots` and `used_rules` of the control, as one word.
    fn usage(&self) -> &AtomicU64 {
        self.word(3)
    }

    /// What the live index uses: `(slots, rule sets)`, `None` when the tries decide.
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        reason = "two u32 fields of one word"
    )]
    pub fn used(&self) -> Option<(u32, u32)> {
        live_half(self.live().load(Ordering::Acquire))?;
        let usage = self.usage().load(Ordering::Acquire);
        // `used_slots` comes first in the struct: the low half on a little-endian host.
        let (first, second) = (usage as u32, (usage >> 32) as u32);
        Some(if cfg!(target_endian = "little") {
            (first, second)
        } else {
            (second, first)
        })
    }

    /// Whether the kernel walks the live half for IPv4 and for IPv6 destinations.
    #[must_use]
    pub fn walks(&self) -> (bool, bool) {
        let live = self.live().load(Ordering::Acquire);
        (
            classifier_common::index::live_v4(live).is_some(),
            classifier_common::index::live_v6(live).is_some(),
        )
    }

    /// The live half as the kernel reads it; `None` when the tries decide.
    #[must_use]
    pub fn live_half(&self) -> Option<&[Slot]> {
        let base = live_half(self.live().load(Ordering::Acquire))?;
        let slots: &[Slot] = self.slots.as_slice();
        slots.get(base as usize..(base + self.half_slots) as usize)
    }

    /// Builds the index of `compiled` in the half nobody reads, then makes it live with one
    /// store. A table that does not fit is an `Err` inside, and the live half stays live.
    pub fn rebuild(
        &mut self,
        compiled: &Compiled,
    ) -> Result<Result<Installed, IndexError>, DatapathError> {
        let grace = self.wait_released()?;
        let start = Instant::now();
        let base = match live_half(self.live().load(Ordering::Acquire)) {
            Some(0) => self.half_slots,
            _ => 0,
        };
        let half_slots = self.half_slots as usize;
        let slots: &mut [Slot] = self.slots.as_mut_slice();
        let stats = match build_into(compiled, &mut slots[base as usize..][..half_slots]) {
            Ok(stats) => stats,
            Err(error) => return Ok(Err(error)),
        };
        let (v4, v6) = (
            compiled.v4.len() >= self.from_prefixes,
            compiled.v6.len() >= self.from_prefixes,
        );
        fence(Ordering::Release);
        self.live()
            .store(live_word(base, v4, v6), Ordering::Release);
        self.seq().fetch_add(1, Ordering::AcqRel);
        let switch = start.elapsed();
        let used = |n: usize| u64::try_from(n).unwrap_or(u64::MAX) & u64::from(u32::MAX);
        let (used_slots, used_rules) = (used(stats.slots), used(stats.rule_sets));
        self.usage().store(
            if cfg!(target_endian = "little") {
                used_slots | (used_rules << 32)
            } else {
                used_rules | (used_slots << 32)
            },
            Ordering::Release,
        );
        // No wait here: the next rebuild waits for this switch's grace period, if it comes
        // before the period has passed (`wait_released`).
        Ok(Ok(Installed {
            v4,
            v6,
            switch,
            grace,
            slots: stats.slots,
            rule_sets: stats.rule_sets,
            rule_copies: stats.rule_copies,
        }))
    }

    /// No index: the tries decide every packet.
    pub fn disable(&mut self) -> Result<(), DatapathError> {
        if self.live().load(Ordering::Acquire) != LIVE_OFF {
            self.live().store(LIVE_OFF, Ordering::Release);
            self.seq().fetch_add(1, Ordering::AcqRel);
        }
        self.wait_released().map(drop)
    }

    /// Waits, when a switch may still have readers of the other half, until none has.
    fn wait_released(&self) -> Result<Duration, DatapathError> {
        let start = Instant::now();
        let seq = self.seq().load(Ordering::Acquire);
        if self.released().load(Ordering::Acquire) != seq {
            synchronize_rcu()?;
            self.released().store(seq, Ordering::Release);
        }
        Ok(start.elapsed())
    }
}

/// Waits for an RCU grace period: `membarrier(MEMBARRIER_CMD_GLOBAL)` calls
/// `synchronize_rcu()` (on more than one CPU; on one, no reader can run meanwhile).
fn synchronize_rcu() -> Result<(), DatapathError> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: a syscall without pointers.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret != 0 {
        return Err(DatapathError::Grace(io::Error::last_os_error()));
    }
    Ok(())
}
