//! The maps: policy, config, the tries (read whole, written as a diff) and the counters.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use classifier_common::{
    Config, Counter, FlowKey, FlowValue, LpmKeyV4, LpmKeyV6, MAX_SET_ID, MAX_UPLINKS, Policy,
    PrefixRules, STATS_LEN, Uplinks, category, names, stat,
};

use super::{
    DatapathError, IndexMaps, Installed, batch,
    check::{ElemSizes, memlock},
    pins::{check_pin_dir, check_pins, open_pin},
};
use crate::{compile::Compiled, index::IndexError};

/// Handles on the six maps, from a loaded object or from pins.
pub struct Maps {
    prefix_v4: LpmTrie<MapData, [u8; 4], PrefixRules>,
    prefix_v6: LpmTrie<MapData, [u8; 16], PrefixRules>,
    policy: Array<MapData, Policy>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, Counter>,
    set_stats: PerCpuArray<MapData, Counter>,
    /// Absent in pins of a version before flows (until the agent restarts).
    flows: Option<HashMap<MapData, FlowKey, FlowValue>>,
    /// Absent in pins of a version before the index (until the agent restarts).
    index: Option<IndexMaps>,
    /// The uplinks' steering and their counters; absent in pins of a version with one
    /// uplink (until the agent restarts).
    uplinks: Option<(Array<MapData, Uplinks>, PerCpuArray<MapData, Counter>)>,
    /// Each trie's entry size in `memlock`, learned by a full read, for [`Maps::check`].
    elem_sizes: ElemSizes,
}

/// Entries of [`names::UPLINK_STATS`].
#[expect(clippy::cast_possible_truncation, reason = "MAX_UPLINKS is 8")]
const UPLINK_STATS_LEN: u32 = MAX_UPLINKS as u32;

/// A flow of the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    pub value: FlowValue,
}

/// What [`Maps::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// The index made live before the tries were written, if one was.
    pub index: Option<Installed>,
    /// Why no index is live (the tries decide), if the table does not fit it.
    pub index_error: Option<IndexError>,
    /// From the start of the apply until the data plane classified by the new table: the
    /// index switch, or with no index the end of the tries' diff.
    pub ready: std::time::Duration,
}

impl ApplyReport {
    /// `34 IPv4 and 59 IPv6 prefixes (93 added, 0 changed, 0 removed); index live after
    /// 0.31 ms (21911 slots, 61 rule sets)`, for logs and output.
    #[must_use]
    pub fn describe(&self, target: &Compiled) -> String {
        let index = match (self.index, self.index_error) {
            (Some(index), _) => format!(
                "; index live after {:.2} ms ({} slots, {} rule sets; walked for {})",
                self.ready.as_secs_f64() * 1e3,
                index.slots,
                index.rule_sets,
                match (index.v4, index.v6) {
                    (true, true) => "IPv4 and IPv6",
                    (true, false) => "IPv4, the tries decide IPv6",
                    (false, true) => "IPv6, the tries decide IPv4",
                    (false, false) => "neither: the tries are as fast at this size",
                }
            ),
            (None, Some(error)) => format!("; no index: {error}"),
            (None, None) => String::new(),
        };
        format!(
            "{} IPv4 and {} IPv6 prefixes ({} added, {} changed, {} removed){index}",
            target.v4.len(),
            target.v6.len(),
            self.added,
            self.changed,
            self.removed
        )
    }
}

impl Maps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self, DatapathError> {
        check_pin_dir(pin_dir)?;
        check_pins(pin_dir, &super::MapSizes::default())?;
        let first = pin_dir.join(names::PREFIX_V4);
        if !first.exists() {
            return Err(DatapathError::NoPins {
                path: pin_dir.to_owned(),
            });
        }
        let open = |name: &'static str| open_pin(&pin_dir.join(name));
        let flows = pin_dir
            .join(names::FLOWS)
            .exists()
            .then(|| open(names::FLOWS))
            .transpose()?;
        let index = if pin_dir.join(names::INDEX_CTL).exists() {
            Some(IndexMaps::new(
                &open(names::INDEX_SLOTS)?,
                &open(names::INDEX_CTL)?,
            )?)
        } else {
            None
        };
        let uplinks = if pin_dir.join(names::UPLINK_STATS).exists() {
            Some([open(names::UPLINKS)?, open(names::UPLINK_STATS)?])
        } else {
            None
        };
        Self::from_data(
            [
                open(names::PREFIX_V4)?,
                open(names::PREFIX_V6)?,
                open(names::POLICY)?,
                open(names::CONFIG)?,
                open(names::STATS)?,
                open(names::SET_STATS)?,
            ],
            flows,
            index,
        )?
        .with_uplinks(uplinks)
    }

    /// Adds the uplink maps ([`names::UPLINKS`], [`names::UPLINK_STATS`]).
    pub(super) fn with_uplinks(
        mut self,
        maps: Option<[MapData; 2]>,
    ) -> Result<Self, DatapathError> {
        let map_error = |name| move |source| DatapathError::Map { name, source };
        if let Some([uplinks, stats]) = maps {
            self.uplinks = Some((
                Array::try_from(Map::Array(uplinks)).map_err(map_error(names::UPLINKS))?,
                PerCpuArray::try_from(Map::PerCpuArray(stats))
                    .map_err(map_error(names::UPLINK_STATS))?,
            ));
        }
        Ok(self)
    }

    /// Writes the uplinks' steering: one write, which every new flow sees at once. Nothing
    /// without the maps (pins of an older version).
    pub fn set_uplinks(&mut self, uplinks: &Uplinks) -> Result<(), DatapathError> {
        let Some((map, _)) = &mut self.uplinks else {
            return Ok(());
        };
        map.set(0, uplinks, 0).map_err(|source| DatapathError::Map {
            name: names::UPLINKS,
            source,
        })
    }

    /// The uplinks' steering as the kernel reads it; `None` without the maps.
    pub fn uplinks(&self) -> Result<Option<Uplinks>, DatapathError> {
        let Some((map, _)) = &self.uplinks else {
            return Ok(None);
        };
        map.get(&0, 0)
            .map(Some)
            .map_err(|source| DatapathError::Map {
                name: names::UPLINKS,
                source,
            })
    }

    /// Packets and bytes marked for each uplink, summed over CPUs (empty without the maps).
    pub fn uplink_stats(&self) -> Result<Vec<Counter>, DatapathError> {
        match &self.uplinks {
            Some((_, stats)) => sum_per_cpu(stats, UPLINK_STATS_LEN, names::UPLINK_STATS),
            None => Ok(Vec::new()),
        }
    }

    pub(super) fn from_data(
        data: [MapData; 6],
        flows: Option<MapData>,
        index: Option<IndexMaps>,
    ) -> Result<Self, DatapathError> {
        let [prefix_v4, prefix_v6, policy, config, stats, set_stats] = data;
        let map_error = |name| move |source| DatapathError::Map { name, source };
        Ok(Self {
            prefix_v4: LpmTrie::try_from(Map::LpmTrie(prefix_v4))
                .map_err(map_error(names::PREFIX_V4))?,
            prefix_v6: LpmTrie::try_from(Map::LpmTrie(prefix_v6))
                .map_err(map_error(names::PREFIX_V6))?,
            policy: Array::try_from(Map::Array(policy)).map_err(map_error(names::POLICY))?,
            config: Array::try_from(Map::Array(config)).map_err(map_error(names::CONFIG))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(stats))
                .map_err(map_error(names::STATS))?,
            set_stats: PerCpuArray::try_from(Map::PerCpuArray(set_stats))
                .map_err(map_error(names::SET_STATS))?,
            flows: flows
                .map(|data| HashMap::try_from(Map::LruHashMap(data)))
                .transpose()
                .map_err(map_error(names::FLOWS))?,
            index,
            uplinks: None,
            elem_sizes: ElemSizes::default(),
        })
    }

    /// The index maps, when the pins have them.
    #[must_use]
    pub fn index(&self) -> Option<&IndexMaps> {
        self.index.as_ref()
    }

    /// The index maps, to switch the index off (benchmarks compare it with the tries).
    pub fn index_mut(&mut self) -> Option<&mut IndexMaps> {
        self.index.as_mut()
    }

    /// Forgets every flow: their next packets are classified afresh (tests, and a fresh
    /// start of a test run).
    pub fn clear_flows(&mut self) -> Result<(), DatapathError> {
        let Some(flows) = &mut self.flows else {
            return Ok(());
        };
        let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            match flows.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DatapathError::Map {
                        name: names::FLOWS,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The entries the IPv4 and IPv6 tries hold at most (their `max_entries`).
    #[must_use]
    pub fn capacity(&self) -> (usize, usize) {
        use aya::maps::IterableMap as _;
        let entries = |map: &MapData| {
            map.info()
                .map_or(0, |info| info.max_entries())
                .try_into()
                .unwrap_or(usize::MAX)
        };
        (entries(self.prefix_v4.map()), entries(self.prefix_v6.map()))
    }

    /// Flows in the flow table, and the table's size (0, 0 without one).
    #[must_use]
    pub fn flow_occupancy(&self) -> (usize, u32) {
        use aya::maps::IterableMap as _;
        self.flows.as_ref().map_or((0, 0), |flows| {
            (
                self.flows().map_or(0, |all| all.len()),
                flows.map().info().map_or(0, |info| info.max_entries()),
            )
        })
    }

    /// Every flow of the flow table (none without one): read in batches of 4096 (65,536
    /// flows in 16 syscalls, not 131,072), else entry by entry on a kernel without them.
    pub fn flows(&self) -> Result<Vec<Flow>, DatapathError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        let Some(flows) = &self.flows else {
            return Ok(Vec::new());
        };
        let error = |source| DatapathError::Map {
            name: names::FLOWS,
            source,
        };
        match batch::lookup(
            flows.map().fd().as_fd(),
            FlowKey::default(),
            FlowValue::default(),
        ) {
            Ok(entries) => {
                return Ok(entries
                    .into_iter()
                    .map(|(key, value)| Flow { key, value })
                    .collect());
            }
            Err(batch_error) if !batch::unsupported(&batch_error) => {
                return Err(error(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: batch_error,
                })));
            }
            Err(_) => {}
        }
        flows
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(error)?;
                Ok(Flow { key, value })
            })
            .collect()
    }

    pub fn config(&self) -> Result<Config, DatapathError> {
        self.config.get(&0, 0).map_err(|source| DatapathError::Map {
            name: names::CONFIG,
            source,
        })
    }

    pub fn set_config(&mut self, config: &Config) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| DatapathError::Map {
                name: names::CONFIG,
                source,
            })
    }

    /// The action of each category, indexed by category code.
    pub fn policy(&self) -> Result<[u8; category::COUNT as usize], DatapathError> {
        let mut actions = [0; category::COUNT as usize];
        for (index, action) in (0..).zip(actions.iter_mut()) {
            *action = self
                .policy
                .get(&index, 0)
                .map_err(|source| DatapathError::Map {
                    name: names::POLICY,
                    source,
                })?
                .action;
        }
        Ok(actions)
    }

    pub fn set_policy(
        &mut self,
        actions: [u8; category::COUNT as usize],
    ) -> Result<(), DatapathError> {
        for (index, action) in (0..).zip(actions) {
            self.policy
                .set(
                    index,
                    Policy {
                        action,
                        _pad: [0; 3],
                    },
                    0,
                )
                .map_err(|source| DatapathError::Map {
                    name: names::POLICY,
                    source,
                })?;
        }
        Ok(())
    }

    /// The installed entries. Learns each trie's entry size in `memlock` on the way, for
    /// [`Maps::check`].
    pub fn installed(&self) -> Result<Compiled, DatapathError> {
        let [v4_fd, v6_fd] = self.trie_fds();
        let before = [memlock(v4_fd), memlock(v6_fd)];
        let installed = Compiled {
            v4: dump(
                &self.prefix_v4,
                names::PREFIX_V4,
                LpmKeyV4 {
                    prefix_len: 0,
                    addr: [0; 4],
                },
            )?,
            v6: dump(
                &self.prefix_v6,
                names::PREFIX_V6,
                LpmKeyV6 {
                    prefix_len: 0,
                    addr: [0; 16],
                },
            )?,
        };
        let after = [memlock(v4_fd), memlock(v6_fd)];
        self.elem_sizes
            .learn(0, [before[0], after[0]], installed.v4.len());
        self.elem_sizes
            .learn(1, [before[1], after[1]], installed.v6.len());
        Ok(installed)
    }

    /// The IPv4 and IPv6 tries' descriptors.
    pub(super) fn trie_fds(&self) -> [std::os::fd::BorrowedFd<'_>; 2] {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        [
            self.prefix_v4.map().fd().as_fd(),
            self.prefix_v6.map().fd().as_fd(),
        ]
    }

    pub(super) fn elem_sizes(&self) -> &ElemSizes {
        &self.elem_sizes
    }

    /// Makes the tries hold exactly `target`: new and changed entries first, stale ones last,
    /// so a prefix present before and after is never missing. Each update replaces one
    /// prefix's whole value atomically.
    pub fn apply(&mut self, target: &Compiled) -> Result<ApplyReport, DatapathError> {
        let installed = self.installed()?;
        self.apply_over(&installed, target)
    }

    /// [`Maps::apply`] when the caller has just read the installed entries (a dump of a
    /// million-entry trie takes a second; callers that need it too should not pay twice).
    pub fn apply_over(
        &mut self,
        installed: &Compiled,
        target: &Compiled,
    ) -> Result<ApplyReport, DatapathError> {
        let start = std::time::Instant::now();
        let mut report = ApplyReport::default();
        // The index first: one switch moves the data plane to the whole new table at once; the
        // tries, the record that `lookup` and `bpftool` read, follow as a diff.
        if let Some(index) = &mut self.index {
            if index.enabled() {
                match index.rebuild(target)? {
                    Ok(installed) => {
                        // A wait for the previous switch's readers (back-to-back applies) is reported
                        // apart, in `installed.grace`.
                        report.ready = start.elapsed().saturating_sub(installed.grace);
                        report.index = Some(installed);
                    }
                    Err(error) => {
                        // Off before the tries change: they then move as a diff, with no gap.
                        index.disable()?;
                        report.index_error = Some(error);
                    }
                }
            } else {
                index.disable()?;
            }
        }
        // New and changed entries of both families, then stale ones: a prefix present before
        // and after is never missing. Each write replaces one prefix's whole value.
        let (v4_keys, v4_values) = changes(&installed.v4, &target.v4, &mut report);
        let (v6_keys, v6_values) = changes(&installed.v6, &target.v6, &mut report);
        write(&mut self.prefix_v4, names::PREFIX_V4, &v4_keys, &v4_values)?;
        write(&mut self.prefix_v6, names::PREFIX_V6, &v6_keys, &v6_values)?;
        let v4_stale = stale(&installed.v4, &target.v4);
        let v6_stale = stale(&installed.v6, &target.v6);
        report.removed = v4_stale.len() + v6_stale.len();
        remove(&mut self.prefix_v4, names::PREFIX_V4, &v4_stale)?;
        remove(&mut self.prefix_v6, names::PREFIX_V6, &v6_stale)?;
        if report.index.is_none() {
            report.ready = start.elapsed();
        }
        Ok(report)
    }

    /// Writes one prefix's entry (a learned address: one syscall, seen by the next packet
    /// that reaches the tries). The next [`Maps::apply`] takes it in like any other entry.
    pub fn insert_prefix(
        &mut self,
        net: ipnet::IpNet,
        value: &PrefixRules,
    ) -> Result<(), DatapathError> {
        match net {
            ipnet::IpNet::V4(net) => write(
                &mut self.prefix_v4,
                names::PREFIX_V4,
                &[crate::compile::key_v4(net)],
                std::slice::from_ref(value),
            ),
            ipnet::IpNet::V6(net) => write(
                &mut self.prefix_v6,
                names::PREFIX_V6,
                &[crate::compile::key_v6(net)],
                std::slice::from_ref(value),
            ),
        }
    }

    /// The longest installed prefix that holds `addr`, as the kernel finds it.
    pub fn lookup(&self, addr: IpAddr) -> Result<Option<PrefixRules>, DatapathError> {
        let found = match addr {
            IpAddr::V4(addr) => self.prefix_v4.get(&Key::new(32, addr.octets()), 0),
            IpAddr::V6(addr) => self.prefix_v6.get(&Key::new(128, addr.octets()), 0),
        };
        match found {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                name: if addr.is_ipv4() {
                    names::PREFIX_V4
                } else {
                    names::PREFIX_V6
                },
                source,
            }),
        }
    }

    /// [`classifier_common::stat`] counters, summed over CPUs, by index; `FLOW_EVICTED`
    /// computed from the flow counters and the flows in the table.
    pub fn stats(&self) -> Result<Vec<Counter>, DatapathError> {
        let mut counters = sum_per_cpu(&self.stats, STATS_LEN, names::STATS)?;
        let live = self.flows()?.len();
        let slot = |index: u32| counters.get(index as usize).map_or(0, |c| c.packets);
        let evicted = slot(stat::FLOW_NEW)
            .saturating_sub(slot(stat::FLOW_CLOSED))
            .saturating_sub(u64::try_from(live).unwrap_or(u64::MAX));
        if let Some(counter) = counters.get_mut(stat::FLOW_EVICTED as usize) {
            *counter = Counter {
                packets: evicted,
                bytes: 0,
            };
        }
        Ok(counters)
    }

    /// Adds `packets` to a counter only user space writes ([`stat::DNS_UNTRUSTED_RESOLVER`]),
    /// in CPU 0's slot: the kernel never touches it, so nothing is lost to a race.
    pub fn add_stat(&mut self, index: u32, packets: u64) -> Result<(), DatapathError> {
        let name = names::STATS;
        let error = |source| DatapathError::Map { name, source };
        let mut values: Vec<Counter> = self
            .stats
            .get(&index, 0)
            .map_err(error)?
            .iter()
            .copied()
            .collect();
        if let Some(first) = values.first_mut() {
            first.packets = first.packets.wrapping_add(packets);
        }
        let values =
            aya::maps::PerCpuValues::try_from(values).map_err(|source| DatapathError::Map {
                name,
                source: MapError::IoError(source),
            })?;
        self.stats.set(index, values, 0).map_err(error)
    }

    /// Per endpoint set counters, summed over CPUs; sets with no packets are left out.
    pub fn set_stats(&self) -> Result<Vec<(u16, Counter)>, DatapathError> {
        let all = sum_per_cpu(&self.set_stats, MAX_SET_ID, names::SET_STATS)?;
        Ok((0..)
            .zip(all)
            .filter(|(_, counter)| counter.packets != 0)
            .collect())
    }
}

/// A trie key: the kernel's `struct bpf_lpm_trie_key_u8` layout, which `LpmKeyV4` and
/// `LpmKeyV6` have.
trait TrieKey: Copy + Ord {
    type Data: aya::Pod;
    fn aya_key(&self) -> Key<Self::Data>;
    fn from_aya(key: &Key<Self::Data>) -> Self;
}

impl TrieKey for LpmKeyV4 {
    type Data = [u8; 4];
    fn aya_key(&self) -> Key<[u8; 4]> {
        Key::new(self.prefix_len, self.addr)
    }
    fn from_aya(key: &Key<[u8; 4]>) -> Self {
        Self {
            prefix_len: key.prefix_len(),
            addr: key.data(),
        }
    }
}

impl TrieKey for LpmKeyV6 {
    type Data = [u8; 16];
    fn aya_key(&self) -> Key<[u8; 16]> {
        Key::new(self.prefix_len, self.addr)
    }
    fn from_aya(key: &Key<[u8; 16]>) -> Self {
        Self {
            prefix_len: key.prefix_len(),
            addr: key.data(),
        }
    }
}

/// Every entry of a trie: batch reads of 4096 entries, or one entry a syscall where the
/// kernel has no batch operations.
fn dump<K: TrieKey>(
    trie: &LpmTrie<MapData, K::Data, PrefixRules>,
    name: &'static str,
    zero: K,
) -> Result<BTreeMap<K, PrefixRules>, DatapathError> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    match batch::lookup(trie.map().fd().as_fd(), zero, PrefixRules::EMPTY) {
        Ok(entries) => return Ok(entries.into_iter().collect()),
        Err(error) if !batch::unsupported(&error) => {
            return Err(DatapathError::Map {
                name,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: error,
                }),
            });
        }
        Err(_) => {}
    }
    let mut entries = BTreeMap::new();
    for item in trie {
        let (key, value) = item.map_err(|source| DatapathError::Map { name, source })?;
        entries.insert(K::from_aya(&key), value);
    }
    Ok(entries)
}

/// The entries of `target` that `installed` lacks or holds with another value, counted in
/// `report`.
fn changes<K: TrieKey>(
    installed: &BTreeMap<K, PrefixRules>,
    target: &BTreeMap<K, PrefixRules>,
    report: &mut ApplyReport,
) -> (Vec<K>, Vec<PrefixRules>) {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for (key, value) in target {
        match installed.get(key) {
            Some(old) if old == value => report.unchanged += 1,
            old => {
                if old.is_some() {
                    report.changed += 1;
                } else {
                    report.added += 1;
                }
                keys.push(*key);
                values.push(*value);
            }
        }
    }
    (keys, values)
}

/// The keys of `installed` that `target` lacks.
fn stale<K: TrieKey>(
    installed: &BTreeMap<K, PrefixRules>,
    target: &BTreeMap<K, PrefixRules>,
) -> Vec<K> {
    installed
        .keys()
        .filter(|key| !target.contains_key(key))
        .copied()
        .collect()
}

/// Writes `keys -> values` into a trie: one batch syscall per 65536 entries, or one per entry
/// where the kernel has no batch operations.
fn write<K: TrieKey>(
    trie: &mut LpmTrie<MapData, K::Data, PrefixRules>,
    name: &'static str,
    keys: &[K],
    values: &[PrefixRules],
) -> Result<(), DatapathError> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    if keys.is_empty() {
        return Ok(());
    }
    match batch::update(trie.map().fd().as_fd(), keys, values) {
        Ok(()) => return Ok(()),
        Err(error) if !batch::unsupported(&error) => {
            return Err(DatapathError::Map {
                name,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error: error,
                }),
            });
        }
        Err(_) => {}
    }
    for (key, value) in keys.iter().zip(values) {
        trie.insert(&key.aya_key(), value, 0)
            .map_err(|source| DatapathError::Map { name, source })?;
    }
    Ok(())
}

/// Removes `keys` from a trie, as [`write`] writes.
fn remove<K: TrieKey>(
    trie: &mut LpmTrie<MapData, K::Data, PrefixRules>,
    name: &'static str,
    keys: &[K],
) -> Result<(), DatapathError> {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    if keys.is_empty() {
        return Ok(());
    }
    match batch::delete(trie.map().fd().as_fd(), keys) {
        Ok(()) => return Ok(()),
        Err(error) if !batch::unsupported(&error) => {
            return Err(DatapathError::Map {
                name,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_delete_batch",
                    io_error: error,
                }),
            });
        }
        Err(_) => {}
    }
    for key in keys {
        trie.remove(&key.aya_key())
            .map_err(|source| DatapathError::Map { name, source })?;
    }
    Ok(())
}

fn sum_per_cpu(
    map: &PerCpuArray<MapData, Counter>,
    len: u32,
    name: &'static str,
) -> Result<Vec<Counter>, DatapathError> {
    (0..len)
        .map(|index| {
            let values = map
                .get(&index, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
            Ok(values.iter().sum())
        })
        .collect()
}
