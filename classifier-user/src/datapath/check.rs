//! The periodic check that the tries still hold what the agent wrote, without reading them
//! back: a full read of a million-entry trie takes over a second of CPU, and the agent looks
//! for other writers before every poll.
//!
//! Two cheap signals, which together find any difference:
//! - **the number of entries of each trie**, which the kernel gives in O(1) since Linux 6.4:
//!   `memlock` in the map's fdinfo is the map's `map_mem_usage`, for an LPM trie
//!   `trie_mem_usage() = elem_size * n_entries` (kernel/bpf/lpm_trie.c, "bpf: lpm_trie
//!   memory usage", 6.4; intermediate nodes are not counted). Another writer's insert or
//!   delete changes it at once. `elem_size` (the kernel's node, key and value) is not part of
//!   the ABI: it is learned from a full read ([`Maps::installed`]), as memlock / entries.
//! - **a window of [`WINDOW`] entries of each trie**, read in the kernel's walk order with one
//!   `BPF_MAP_LOOKUP_BATCH` and compared with the record by key and value; each check reads
//!   on from where the last one stopped. A trie of `n` entries is read whole every
//!   `ceil(n / WINDOW)` checks, so an in-place change by another writer (same key, another
//!   value: the count stays) is found within that many checks, [`Record::bound`]. With equal
//!   counts, every entry of a whole walk recorded with its value means equal tables. (A walk
//!   whose last key was removed starts again from the first entry; a removal by another
//!   writer changes the count, which the same check sees first.)
//!
//! A record keeps each entry's key and a 64-bit hash of its value, not the value (136 bytes):
//! 16 bytes an IPv4 entry and 28 an IPv6 one, 44 MB for a million of each.

use std::{fmt, os::fd::BorrowedFd, sync::OnceLock};

use classifier_common::{LpmKeyV4, LpmKeyV6, PrefixRules, names};

use super::{DatapathError, Maps, batch};
use crate::compile::Compiled;

/// Entries of each trie read by one check: two batch reads of 2048, about 4 ms at a million
/// entries a family on a 2-core VM (`bench`, map refresh), within the 10 ms a check may take.
pub const WINDOW: usize = 2048;

/// What the agent wrote to the tries (or found in them and adopted), to check them against.
#[derive(Clone, Debug)]
pub struct Record {
    digest: String,
    v4: Entries<LpmKeyV4>,
    v6: Entries<LpmKeyV6>,
}

/// A trie's entries: keys in order, each with the hash of its value.
#[derive(Clone, Debug)]
struct Entries<K> {
    keys: Vec<K>,
    values: Vec<u64>,
}

impl<K: Ord + Copy> Entries<K> {
    fn of<'a>(table: impl ExactSizeIterator<Item = (&'a K, &'a PrefixRules)>) -> Self
    where
        K: 'a,
    {
        let mut keys = Vec::with_capacity(table.len());
        let mut values = Vec::with_capacity(table.len());
        for (key, value) in table {
            keys.push(*key);
            values.push(value_hash(value));
        }
        Self { keys, values }
    }

    /// Whether the record holds `key` with `value`.
    fn holds(&self, key: &K, value: &PrefixRules) -> bool {
        self.keys
            .binary_search(key)
            .is_ok_and(|at| self.values.get(at) == Some(&value_hash(value)))
    }
}

impl Record {
    /// The record of `table`, whose [`Compiled::digest`] the caller has computed (it takes a
    /// pass over every entry).
    #[must_use]
    pub fn of(table: &Compiled, digest: String) -> Self {
        Self {
            digest,
            v4: Entries::of(table.v4.iter()),
            v6: Entries::of(table.v6.iter()),
        }
    }

    /// The digest of the table recorded ([`Compiled::digest`]).
    #[must_use]
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Entries recorded, IPv4 and IPv6.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.v4.keys.len(), self.v6.keys.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// The checks within which an in-place change of a trie that holds this record is found:
    /// its larger family's `ceil(entries / WINDOW)`, at least 1.
    #[must_use]
    pub fn bound(&self) -> usize {
        let (v4, v6) = self.len();
        v4.max(v6).div_ceil(WINDOW).max(1)
    }
}

/// Where each trie's walk resumes: the last key the previous check read (`None`: the first).
/// It outlives records, so that applies more frequent than a whole walk do not restart it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    v4: Option<LpmKeyV4>,
    v6: Option<LpmKeyV6>,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The counts are the record's and the entries read are recorded with their values.
    Unchanged,
    /// Another writer changed a trie.
    Changed(Difference),
    /// The kernel gives no count (before Linux 6.4, or the entry size is not learned yet):
    /// only a full read tells.
    Unknown,
}

/// The first difference a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// A trie holds `found` entries, the record `recorded`.
    Count {
        map: &'static str,
        found: u64,
        recorded: usize,
    },
    /// A trie holds an entry the record has not, or has with another value.
    Entry { map: &'static str, prefix: String },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count {
                map,
                found,
                recorded,
            } => write!(f, "{map} holds {found} entries, {recorded} were written"),
            Self::Entry { map, prefix } => {
                write!(f, "{map} holds {prefix} with a value that was not written")
            }
        }
    }
}

/// Each trie's `elem_size` (the kernel's node, key and value), as learned from a full read.
#[derive(Debug, Default)]
pub(super) struct ElemSizes([OnceLock<u64>; 2]);

impl ElemSizes {
    /// Learns `elem_size` from a full read of `entries` between two equal readings of
    /// `memlock` (no writer in between): memlock / entries, when it divides exactly.
    pub(super) fn learn(&self, family: usize, memlock: [Option<u64>; 2], entries: usize) {
        let ([Some(before), Some(after)], Ok(entries), Some(cell)) =
            (memlock, u64::try_from(entries), self.0.get(family))
        else {
            return;
        };
        if before == after && entries > 0 && before % entries == 0 && counts_entries() {
            let _ = cell.set(before / entries);
        }
    }

    fn get(&self, family: usize) -> Option<u64> {
        self.0.get(family).and_then(|cell| cell.get().copied())
    }
}

/// Whether `memlock` counts an LPM trie's entries: Linux 6.4 and later (before, it is the
/// footprint of `max_entries`, a constant).
fn counts_entries() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 4, 0))
}

/// The map's `memlock` as its fdinfo gives it.
pub(super) fn memlock(fd: BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
}

/// A hash of a trie value's bytes (a multiply-rotate over its 17 words: a million values
/// hash in about 20 ms; what it guards against is another writer, not an adversary of the
/// hash).
fn value_hash(value: &PrefixRules) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    // Whole words: no byte is left out.
    const _: () = assert!(size_of::<PrefixRules>().is_multiple_of(8));
    // SAFETY: `PrefixRules` is `repr(C)` of integers with explicit padding fields (its size
    // is asserted in classifier-common), so all of its bytes are initialised.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(value).cast::<u8>(),
            size_of::<PrefixRules>(),
        )
    };
    bytes.chunks_exact(8).fold(0, |hash, word| {
        let word = u64::from_ne_bytes(word.try_into().unwrap_or_default());
        (hash.rotate_left(5) ^ word).wrapping_mul(K)
    })
}

impl Maps {
    /// One periodic check of the tries against `record`, reading the next window of each
    /// (module docs): about 4 ms at a million entries a family, instead of a full read. A
    /// [`Verdict::Changed`] or [`Verdict::Unknown`] calls for the full read.
    pub fn check(&self, record: &Record, walk: &mut Walk) -> Result<Verdict, DatapathError> {
        let [v4_fd, v6_fd] = self.trie_fds();
        let (v4, v6) = record.len();
        for (family, (fd, map, recorded)) in
            [(v4_fd, names::PREFIX_V4, v4), (v6_fd, names::PREFIX_V6, v6)]
                .into_iter()
                .enumerate()
        {
            let found = match (memlock(fd), self.elem_sizes().get(family)) {
                // An empty trie uses nothing, whatever its entry size (which a trie never
                // read back with entries has not taught).
                (Some(0), _) if counts_entries() => 0,
                (Some(memlock), Some(elem_size)) if memlock % elem_size == 0 => memlock / elem_size,
                _ => return Ok(Verdict::Unknown),
            };
            if u64::try_from(recorded) != Ok(found) {
                return Ok(Verdict::Changed(Difference::Count {
                    map,
                    found,
                    recorded,
                }));
            }
        }
        let zero_v4 = LpmKeyV4 {
            prefix_len: 0,
            addr: [0; 4],
        };
        let zero_v6 = LpmKeyV6 {
            prefix_len: 0,
            addr: [0; 16],
        };
        let v4 = read_on(v4_fd, names::PREFIX_V4, &mut walk.v4, zero_v4, &record.v4)?;
        if v4 != Verdict::Unchanged {
            return Ok(v4);
        }
        read_on(v6_fd, names::PREFIX_V6, &mut walk.v6, zero_v6, &record.v6)
    }
}

/// The next window of a trie's walk, compared with the record.
fn read_on<K: Copy + Ord + Prefix>(
    fd: BorrowedFd<'_>,
    map: &'static str,
    after: &mut Option<K>,
    zero: K,
    record: &Entries<K>,
) -> Result<Verdict, DatapathError> {
    let mut keys = vec![zero; WINDOW];
    let mut values = vec![PrefixRules::EMPTY; WINDOW];
    let read = batch::lookup_after(fd, *after, &mut keys, &mut values);
    let (filled, next) = match read {
        Ok(read) => read,
        Err(error) if batch::unsupported(&error) => return Ok(Verdict::Unknown),
        Err(error) => {
            return Err(DatapathError::Map {
                name: map,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: error,
                }),
            });
        }
    };
    *after = next;
    for (key, value) in keys.iter().zip(&values).take(filled) {
        if !record.holds(key, value) {
            return Ok(Verdict::Changed(Difference::Entry {
                map,
                prefix: key.prefix(),
            }));
        }
    }
    Ok(Verdict::Unchanged)
}

/// A trie key as a prefix, for a log line.
trait Prefix {
    fn prefix(&self) -> String;
}

impl Prefix for LpmKeyV4 {
    fn prefix(&self) -> String {
        format!(
            "{}/{}",
            std::net::Ipv4Addr::from(self.addr),
            self.prefix_len
        )
    }
}

impl Prefix for LpmKeyV6 {
    fn prefix(&self) -> String {
        format!(
            "{}/{}",
            std::net::Ipv6Addr::from(self.addr),
            self.prefix_len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(u8, u8)]) -> Compiled {
        let mut table = Compiled::default();
        for &(octet, category) in entries {
            table.v4.insert(
                LpmKeyV4 {
                    prefix_len: 24,
                    addr: [10, octet, 0, 0],
                },
                PrefixRules {
                    addr_category: category,
                    ..PrefixRules::EMPTY
                },
            );
        }
        table
    }

    #[test]
    fn a_record_holds_its_entries_with_their_values_only() {
        let compiled = table(&[(1, 2), (2, 3)]);
        let record = Record::of(&compiled, compiled.digest());
        let (key, value) = compiled.v4.iter().next().unwrap();
        assert!(record.v4.holds(key, value));
        let other = PrefixRules {
            addr_category: 7,
            ..*value
        };
        assert!(!record.v4.holds(key, &other), "another value");
        let unknown = LpmKeyV4 {
            prefix_len: 16,
            ..*key
        };
        assert!(!record.v4.holds(&unknown, value), "another key");
        assert_eq!(record.len(), (2, 0));
        assert_eq!(record.digest(), compiled.digest());
    }

    #[test]
    fn the_bound_is_whole_walks_of_the_larger_family() {
        let record = |n: usize| Record {
            digest: String::new(),
            v4: Entries {
                keys: vec![
                    LpmKeyV4 {
                        prefix_len: 0,
                        addr: [0; 4]
                    };
                    n
                ],
                values: vec![0; n],
            },
            v6: Entries {
                keys: Vec::new(),
                values: Vec::new(),
            },
        };
        assert_eq!(record(0).bound(), 1);
        assert_eq!(record(WINDOW).bound(), 1);
        assert_eq!(record(WINDOW + 1).bound(), 2);
        assert_eq!(record(1_000_000).bound(), 489);
    }

    #[test]
    fn a_value_hash_sees_every_byte() {
        let base = PrefixRules::EMPTY;
        let mut last = base;
        last.rules[classifier_common::MAX_RULES - 1].set_id = 1;
        assert_ne!(value_hash(&base), value_hash(&last));
        assert_eq!(value_hash(&base), value_hash(&PrefixRules::EMPTY));
    }
}
