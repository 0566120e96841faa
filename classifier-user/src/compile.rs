//! Endpoint sets compiled into trie entries.
//!
//! A packet belongs to an endpoint set when its destination lies in one of the set's prefixes
//! and its protocol and port are among the set's ports; it takes the highest category of the
//! sets it belongs to. The kernel looks up only the longest matching prefix, so each entry
//! carries the rules of every prefix that covers it (its own and its supernets'), resolved
//! into disjoint port ranges: the first rule that holds a packet is its answer.
//!
//! The output is deterministic: entries are ordered by key, rules by protocol and port, and
//! ties between sets of one category go to the lowest set id.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
};

use classifier_common::{LpmKeyV4, LpmKeyV6, MAX_RULES, PortRule, PrefixRules, proto};
use ipnet::IpNet;

use crate::feed::{Category, EndpointSet, Feed, PortRange};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "prefix {prefix} needs {rules} port rules after merging its endpoint sets; the data \
         plane holds {MAX_RULES}"
    )]
    TooManyRules { prefix: IpNet, rules: usize },
}

/// Trie entries, ready to be written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub v4: BTreeMap<LpmKeyV4, PrefixRules>,
    pub v6: BTreeMap<LpmKeyV6, PrefixRules>,
}

impl Compiled {
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of prefix `net`, in its family's table.
    #[must_use]
    pub fn get(&self, net: IpNet) -> Option<&PrefixRules> {
        match net {
            IpNet::V4(net) => self.v4.get(&key_v4(net)),
            IpNet::V6(net) => self.v6.get(&key_v6(net)),
        }
    }

    /// Sets the entry of prefix `net`.
    pub fn insert(&mut self, net: IpNet, value: PrefixRules) {
        match net {
            IpNet::V4(net) => self.v4.insert(key_v4(net), value),
            IpNet::V6(net) => self.v6.insert(key_v6(net), value),
        };
    }

    /// Takes the entry of prefix `net` out.
    pub fn remove(&mut self, net: IpNet) {
        match net {
            IpNet::V4(net) => self.v4.remove(&key_v4(net)),
            IpNet::V6(net) => self.v6.remove(&key_v6(net)),
        };
    }

    /// A fingerprint of every entry (FNV-1a, 64 bits): equal digests, equal tables. It ties a
    /// record of what was applied to what the maps hold now.
    #[must_use]
    pub fn digest(&self) -> String {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = Fnv1a::default();
        self.v4.len().hash(&mut hasher);
        for (key, value) in &self.v4 {
            key.hash(&mut hasher);
            value.hash(&mut hasher);
        }
        self.v6.len().hash(&mut hasher);
        for (key, value) in &self.v6 {
            key.hash(&mut hasher);
            value.hash(&mut hasher);
        }
        format!("{:016x}", hasher.finish())
    }
}

/// FNV-1a: std's `DefaultHasher` may change between Rust releases, and a digest is stored.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The key of `net` in its family's trie.
#[must_use]
pub fn key_v4(net: ipnet::Ipv4Net) -> LpmKeyV4 {
    LpmKeyV4 {
        prefix_len: u32::from(net.prefix_len()),
        addr: net.network().octets(),
    }
}

#[must_use]
pub fn key_v6(net: ipnet::Ipv6Net) -> LpmKeyV6 {
    LpmKeyV6 {
        prefix_len: u32::from(net.prefix_len()),
        addr: net.network().octets(),
    }
}

/// Compiles the endpoint sets of `feed`.
pub fn compile(feed: &Feed) -> Result<Compiled, CompileError> {
    compile_sets(&feed.sets)
}

/// What the operator's configuration does to the feed before it reaches the maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    /// Keep only sets of these service areas (case-insensitive); empty keeps all.
    pub service_areas: &'a [String],
    /// Leave IPv6 out.
    pub no_ipv6: bool,
    /// Extra prefixes, Optimize by address (counted under no endpoint set).
    pub include: &'a [IpNet],
    /// Prefixes that never match: an empty entry (category none) that shadows the feed.
    pub exclude: &'a [IpNet],
}

/// Compiles `feed` as `filter` says.
pub fn compile_filtered(feed: &Feed, filter: &Filter<'_>) -> Result<Compiled, CompileError> {
    let mut sets: Vec<EndpointSet> = feed
        .sets
        .iter()
        .filter(|set| {
            filter.service_areas.is_empty()
                || filter
                    .service_areas
                    .iter()
                    .any(|area| area.eq_ignore_ascii_case(&set.service_area))
        })
        .cloned()
        .collect();
    if filter.no_ipv6 {
        for set in &mut sets {
            set.prefixes.retain(|net| matches!(net, IpNet::V4(_)));
        }
    }
    if !filter.include.is_empty() {
        sets.push(EndpointSet {
            id: 0,
            service_area: "operator".to_owned(),
            category: Category::Optimize,
            prefixes: filter.include.to_vec(),
            tcp: Vec::new(),
            udp: Vec::new(),
            by_address: true,
        });
    }
    compile_excluding(&sets, filter.exclude)
}

/// Compiles `sets` (every source's, already filtered and numbered) and shadows `exclude`.
pub fn compile_excluding(
    sets: &[EndpointSet],
    exclude: &[IpNet],
) -> Result<Compiled, CompileError> {
    let mut compiled = compile_sets(sets)?;
    for excluded in exclude {
        let mut shadow = PrefixRules::EMPTY;
        shadow.prefix_len = excluded.prefix_len();
        match excluded {
            IpNet::V4(net) => {
                compiled
                    .v4
                    .retain(|key, _| !contains(IpNet::V4(*net), key_net_v4(key)));
                compiled.v4.insert(key_v4(*net), shadow);
            }
            IpNet::V6(net) => {
                compiled
                    .v6
                    .retain(|key, _| !contains(IpNet::V6(*net), key_net_v6(key)));
                compiled.v6.insert(key_v6(*net), shadow);
            }
        }
    }
    Ok(compiled)
}

fn contains(outer: IpNet, inner: IpNet) -> bool {
    outer.contains(&inner)
}

/// The prefix of a trie key.
#[must_use]
pub fn key_net_v4(key: &LpmKeyV4) -> IpNet {
    IpNet::V4(
        ipnet::Ipv4Net::new(key.addr.into(), u8::try_from(key.prefix_len).unwrap_or(32))
            .unwrap_or_default(),
    )
}

#[must_use]
pub fn key_net_v6(key: &LpmKeyV6) -> IpNet {
    IpNet::V6(
        ipnet::Ipv6Net::new(key.addr.into(), u8::try_from(key.prefix_len).unwrap_or(128))
            .unwrap_or_default(),
    )
}

pub fn compile_sets(sets: &[EndpointSet]) -> Result<Compiled, CompileError> {
    let mut owners: HashMap<IpNet, Vec<&EndpointSet>> = HashMap::new();
    for set in sets {
        for prefix in &set.prefixes {
            owners.entry(*prefix).or_default().push(set);
        }
    }
    let mut compiled = Compiled::default();
    for prefix in owners.keys() {
        let mut members: Vec<&EndpointSet> = (0..=prefix.prefix_len())
            .filter_map(|len| {
                let supernet = IpNet::new(prefix.addr(), len).ok()?.trunc();
                owners.get(&supernet)
            })
            .flatten()
            .copied()
            .collect();
        members.sort_by_key(|set| set.id);
        members.dedup_by_key(|set| set.id);
        let value = prefix_rules(*prefix, &members)?;
        match prefix {
            IpNet::V4(net) => {
                compiled.v4.insert(key_v4(*net), value);
            }
            IpNet::V6(net) => {
                compiled.v6.insert(key_v6(*net), value);
            }
        }
    }
    Ok(compiled)
}

/// Rank of a set's claim: higher category first, then the lower id.
fn rank(set: &EndpointSet) -> (Category, Reverse<u32>) {
    (set.category, Reverse(set.id))
}

fn prefix_rules(prefix: IpNet, members: &[&EndpointSet]) -> Result<PrefixRules, CompileError> {
    let mut rules = Vec::new();
    for (proto, ports) in [
        (
            proto::TCP,
            (|set: &EndpointSet| set.tcp.clone()) as fn(&EndpointSet) -> Vec<PortRange>,
        ),
        (proto::UDP, |set: &EndpointSet| set.udp.clone()),
    ] {
        let claims: Vec<(PortRange, &EndpointSet)> = members
            .iter()
            .flat_map(|set| ports(set).into_iter().map(move |range| (range, *set)))
            .collect();
        rules.extend(resolve(proto, &claims));
    }
    if rules.len() > MAX_RULES {
        return Err(CompileError::TooManyRules {
            prefix,
            rules: rules.len(),
        });
    }
    // A source whose ports are given claims no other port: its address claim is the lowest,
    // a tunnel that any other covering set outranks.
    let best = members
        .iter()
        .max_by_key(|set| {
            if set.by_address {
                rank(set)
            } else {
                (Category::Tunnel, Reverse(u32::MAX))
            }
        })
        .expect("a prefix has at least its own set");
    let address_category = if best.by_address {
        best.category
    } else {
        Category::Tunnel
    };
    let mut value = PrefixRules::EMPTY;
    value.n_rules = u8::try_from(rules.len()).expect("at most MAX_RULES");
    value.rules[..rules.len()].copy_from_slice(&rules);
    value.addr_category = address_category.code();
    value.addr_set = set_id(best);
    value.prefix_len = prefix.prefix_len();
    Ok(value)
}

fn set_id(set: &EndpointSet) -> u16 {
    u16::try_from(set.id).expect("feed validation keeps ids below MAX_SET_ID")
}

/// Turns overlapping `(range, set)` claims into disjoint ranges, each held by its best claim,
/// with neighbours of the same holder merged.
fn resolve(proto: u8, claims: &[(PortRange, &EndpointSet)]) -> Vec<PortRule> {
    let mut bounds: Vec<u32> = claims
        .iter()
        .flat_map(|(range, _)| [u32::from(range.lo), u32::from(range.hi) + 1])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut rules: Vec<PortRule> = Vec::new();
    for pair in bounds.windows(2) {
        let (lo, hi) = (pair[0], pair[1] - 1);
        let holder = claims
            .iter()
            .filter(|(range, _)| u32::from(range.lo) <= lo && hi <= u32::from(range.hi))
            .map(|(_, set)| *set)
            .max_by_key(|set| rank(set));
        let Some(holder) = holder else { continue };
        let (lo, hi) = (
            u16::try_from(lo).expect("bounds are ports"),
            u16::try_from(hi).expect("bounds are ports"),
        );
        let (category, set_id) = (holder.category.code(), set_id(holder));
        match rules.last_mut() {
            Some(last)
                if u32::from(last.port_hi) + 1 == u32::from(lo)
                    && (last.category, last.set_id) == (category, set_id) =>
            {
                last.port_hi = hi;
            }
            _ => rules.push(PortRule {
                port_lo: lo,
                port_hi: hi,
                proto,
                category,
                set_id,
            }),
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use classifier_common::category;

    use super::*;

    const FEED_2026043000: &[u8] =
        include_bytes!("../../tests/fixtures/m365-worldwide-endpoints-2026043000.json");

    fn set(
        id: u32,
        category: Category,
        prefixes: &[&str],
        tcp: &[(u16, u16)],
        udp: &[(u16, u16)],
    ) -> EndpointSet {
        let ranges =
            |list: &[(u16, u16)]| list.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect();
        EndpointSet {
            id,
            service_area: "Test".into(),
            category,
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            tcp: ranges(tcp),
            udp: ranges(udp),
            by_address: true,
        }
    }

    fn rules_of(value: &PrefixRules) -> Vec<(u8, u16, u16, u8, u16)> {
        value.rules[..usize::from(value.n_rules)]
            .iter()
            .map(|r| (r.proto, r.port_lo, r.port_hi, r.category, r.set_id))
            .collect()
    }

    fn v4(compiled: &Compiled, prefix: &str) -> PrefixRules {
        let IpNet::V4(net) = prefix.parse().unwrap() else {
            panic!()
        };
        compiled.v4[&key_v4(net)]
    }

    #[test]
    fn exchange_is_optimize_on_443_and_allow_on_587() {
        let feed = Feed::parse(FEED_2026043000).unwrap();
        let compiled = compile(&feed).unwrap();
        assert_eq!((compiled.v4.len(), compiled.v6.len()), (34, 59));
        let exchange = v4(&compiled, "40.96.0.0/13");
        assert_eq!(
            rules_of(&exchange),
            [
                (proto::TCP, 80, 80, category::OPTIMIZE, 1),
                (proto::TCP, 143, 143, category::ALLOW, 2),
                (proto::TCP, 443, 443, category::OPTIMIZE, 1),
                (proto::TCP, 587, 587, category::ALLOW, 2),
                (proto::TCP, 993, 993, category::ALLOW, 2),
                (proto::TCP, 995, 995, category::ALLOW, 2),
                (proto::UDP, 443, 443, category::OPTIMIZE, 1),
            ]
        );
        assert_eq!(
            (
                exchange.addr_category,
                exchange.addr_set,
                exchange.prefix_len
            ),
            (category::OPTIMIZE, 1, 13)
        );
        let teams = v4(&compiled, "52.112.0.0/14");
        // Teams media (set 11) shares its prefixes with Skype signalling (set 12, Allow).
        assert_eq!(
            rules_of(&teams),
            [
                (proto::TCP, 80, 80, category::ALLOW, 12),
                (proto::TCP, 443, 443, category::ALLOW, 12),
                (proto::UDP, 443, 443, category::ALLOW, 12),
                (proto::UDP, 3478, 3481, category::OPTIMIZE, 11),
            ]
        );
        assert_eq!(
            (teams.addr_category, teams.addr_set),
            (category::OPTIMIZE, 11)
        );
    }

    #[test]
    fn covering_prefixes_fold_into_the_more_specific_one() {
        let sets = [
            set(10, Category::Allow, &["10.0.0.0/8"], &[(443, 443)], &[]),
            set(
                20,
                Category::Optimize,
                &["10.1.0.0/16"],
                &[],
                &[(3478, 3481)],
            ),
        ];
        let compiled = compile_sets(&sets).unwrap();
        let inner = v4(&compiled, "10.1.0.0/16");
        assert_eq!(
            rules_of(&inner),
            [
                (proto::TCP, 443, 443, category::ALLOW, 10),
                (proto::UDP, 3478, 3481, category::OPTIMIZE, 20)
            ]
        );
        assert_eq!(
            (inner.addr_category, inner.addr_set),
            (category::OPTIMIZE, 20)
        );
        let outer = v4(&compiled, "10.0.0.0/8");
        assert_eq!(
            rules_of(&outer),
            [(proto::TCP, 443, 443, category::ALLOW, 10)]
        );
        assert_eq!((outer.addr_category, outer.addr_set), (category::ALLOW, 10));
    }

    #[test]
    fn overlapping_ranges_split_by_the_highest_category() {
        let sets = [
            set(1, Category::Default, &["192.0.2.0/24"], &[(1, 1000)], &[]),
            set(2, Category::Optimize, &["192.0.2.0/24"], &[(443, 443)], &[]),
            set(3, Category::Optimize, &["192.0.2.0/24"], &[(443, 500)], &[]),
        ];
        let compiled = compile_sets(&sets).unwrap();
        assert_eq!(
            rules_of(&v4(&compiled, "192.0.2.0/24")),
            [
                (proto::TCP, 1, 442, category::DEFAULT, 1),
                (proto::TCP, 443, 443, category::OPTIMIZE, 2),
                (proto::TCP, 444, 500, category::OPTIMIZE, 3),
                (proto::TCP, 501, 1000, category::DEFAULT, 1),
            ]
        );
    }

    #[test]
    fn filters_select_areas_add_and_shadow_prefixes() {
        let feed = Feed::parse(FEED_2026043000).unwrap();
        let areas = ["skype".to_owned()];
        let include: [IpNet; 1] = ["203.0.113.0/24".parse().unwrap()];
        let exclude: [IpNet; 1] = ["52.112.0.0/16".parse().unwrap()];
        let compiled = compile_filtered(
            &feed,
            &Filter {
                service_areas: &areas,
                no_ipv6: true,
                include: &include,
                exclude: &exclude,
            },
        )
        .unwrap();
        assert!(compiled.v6.is_empty());
        assert!(
            !compiled.v4.contains_key(&LpmKeyV4 {
                prefix_len: 13,
                addr: [40, 96, 0, 0]
            }),
            "Exchange filtered out"
        );
        let operator = v4(&compiled, "203.0.113.0/24");
        assert_eq!(
            (operator.n_rules, operator.addr_category, operator.addr_set),
            (0, category::OPTIMIZE, 0)
        );
        let shadow = v4(&compiled, "52.112.0.0/16");
        assert_eq!(
            (shadow.n_rules, shadow.addr_category, shadow.prefix_len),
            (0, category::NONE, 16)
        );
        assert_eq!(
            v4(&compiled, "52.112.0.0/14").addr_category,
            category::OPTIMIZE,
            "the rest of the /14 stays"
        );
    }

    #[test]
    fn compiling_is_deterministic() {
        let feed = Feed::parse(FEED_2026043000).unwrap();
        assert_eq!(compile(&feed).unwrap(), compile(&feed).unwrap());
    }

    #[test]
    fn too_many_rules_is_an_error_naming_the_prefix() {
        let ports: Vec<(u16, u16)> = (1..=17).map(|p| (p * 2, p * 2)).collect();
        let sets = [set(1, Category::Allow, &["198.51.100.0/24"], &ports, &[])];
        let error = compile_sets(&sets).unwrap_err().to_string();
        assert!(
            error.contains("198.51.100.0/24 needs 17 port rules"),
            "{error}"
        );
    }
}
