//! Which prefixes of a table cover an address, found by LPM descent instead of a scan: one
//! hash lookup per prefix length the table holds (at most 33 for IPv4, 129 for IPv6), so
//! that folding a learned address with its covering prefixes ([`crate::agent`]'s DNS
//! learning) takes the same time with the real feed alone as with a million prefixes.
//!
//! The index is built once per change of the tables it covers, and names each prefix by
//! position (table, set, prefix) instead of holding a copy: the tables stay the one truth,
//! and the index costs a few words a prefix.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    ops::{BitAnd, Shl},
};

use ipnet::IpNet;

use crate::feed::EndpointSet;

/// One prefix by position: `tables[table][set].prefixes[prefix]`. Ordered as a scan meets
/// them: table, then set, then prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hit {
    pub table: u32,
    pub set: u32,
    pub prefix: u32,
}

/// The hits of one masked network: `hits[start..start + len]`.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    len: u32,
}

/// The networks of one prefix length, each to its hits.
#[derive(Debug, Default)]
struct Level<A> {
    prefix_len: u8,
    networks: HashMap<A, Span>,
}

/// An address family's side: one level per prefix length present, shortest first.
#[derive(Debug)]
struct Family<A> {
    levels: Vec<Level<A>>,
}

impl<A> Default for Family<A> {
    fn default() -> Self {
        Self { levels: Vec::new() }
    }
}

/// An address as an integer, and its network at a prefix length.
trait Bits: Copy + Eq + Hash + Ord + Shl<u32, Output = Self> + BitAnd<Output = Self> {
    const WIDTH: u32;
    const ONES: Self;
    const ZERO: Self;

    /// `self` with every bit past `prefix_len` cleared.
    fn network(self, prefix_len: u8) -> Self {
        // A shift by the whole width (prefix length 0) is out of range: its mask is 0.
        match Self::WIDTH.checked_sub(u32::from(prefix_len)) {
            Some(host) if host < Self::WIDTH => self & (Self::ONES << host),
            Some(_) => Self::ZERO,
            None => self,
        }
    }
}

impl Bits for u32 {
    const WIDTH: u32 = 32;
    const ONES: Self = Self::MAX;
    const ZERO: Self = 0;
}

impl Bits for u128 {
    const WIDTH: u32 = 128;
    const ONES: Self = Self::MAX;
    const ZERO: Self = 0;
}

/// The covering index of some tables of endpoint sets.
#[derive(Debug, Default)]
pub struct Cover {
    v4: Family<u32>,
    v6: Family<u128>,
    /// Every prefix's position, grouped by (family, length, network), each group in scan
    /// order.
    hits: Vec<Hit>,
}

impl Cover {
    /// The index of `tables`, each a list of sets (a source's file, the operator's
    /// `include`); a [`Hit`]'s `table` is the position in this order.
    ///
    /// # Panics
    ///
    /// With more than `u32::MAX` tables, sets in a table, prefixes in a set or prefixes in
    /// all (a source holds at most [`crate::sources::MAX_PREFIXES`]).
    #[must_use]
    pub fn build<'a>(tables: impl IntoIterator<Item = &'a [EndpointSet]>) -> Self {
        let position = |i: usize| u32::try_from(i).expect("fewer than 2^32 tables, sets, prefixes");
        let mut v4: Vec<(u8, u32, Hit)> = Vec::new();
        let mut v6: Vec<(u8, u128, Hit)> = Vec::new();
        for (table, sets) in tables.into_iter().enumerate() {
            for (set, endpoint) in sets.iter().enumerate() {
                for (prefix, net) in endpoint.prefixes.iter().enumerate() {
                    let hit = Hit {
                        table: position(table),
                        set: position(set),
                        prefix: position(prefix),
                    };
                    // Masked here as `IpNet::contains` masks: host bits never matter.
                    match net {
                        IpNet::V4(net) => {
                            let len = net.prefix_len();
                            v4.push((len, u32::from(net.addr()).network(len), hit));
                        }
                        IpNet::V6(net) => {
                            let len = net.prefix_len();
                            v6.push((len, u128::from(net.addr()).network(len), hit));
                        }
                    }
                }
            }
        }
        let mut hits = Vec::with_capacity(v4.len() + v6.len());
        let v4 = Family::group(v4, &mut hits);
        let v6 = Family::group(v6, &mut hits);
        Self { v4, v6, hits }
    }

    /// The prefixes that cover `address`, in scan order (table, set, prefix): what
    /// filtering every prefix with `net.contains(&address)` finds.
    #[must_use]
    pub fn covering(&self, address: IpAddr) -> Vec<Hit> {
        let mut found = match address {
            IpAddr::V4(addr) => self.v4.covering(u32::from(addr), &self.hits),
            IpAddr::V6(addr) => self.v6.covering(u128::from(addr), &self.hits),
        };
        found.sort_unstable();
        found
    }

    /// The prefixes indexed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hits.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty()
    }

    /// The prefix lengths present, IPv4 and IPv6: the lookups an address of each family
    /// takes.
    #[must_use]
    pub fn lengths(&self) -> (usize, usize) {
        (self.v4.levels.len(), self.v6.levels.len())
    }

    /// The heap the index holds, bytes: its hits and its tables' buckets as allocated (a
    /// hashbrown bucket is its entry and one control byte).
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.hits.capacity() * size_of::<Hit>() + self.v4.heap_bytes() + self.v6.heap_bytes()
    }
}

/// A position the index names is missing from the tables, or no longer covers the address:
/// the index was built from other tables.
#[derive(Debug, thiserror::Error)]
#[error(
    "the covering index is stale: table {table}, set {set}, prefix {prefix} does not cover {address}"
)]
pub struct StaleError {
    pub address: IpAddr,
    pub table: u32,
    pub set: u32,
    pub prefix: u32,
}

/// The sets that hold prefixes covering `address` (`hits`, from [`Cover::covering`] over
/// `tables`), each with only those prefixes, in scan order: the sets a learned host entry is
/// folded with.
pub fn covering_sets(
    hits: &[Hit],
    tables: &[&[EndpointSet]],
    address: IpAddr,
) -> Result<Vec<EndpointSet>, StaleError> {
    let mut sets = Vec::new();
    for group in hits.chunk_by(|a, b| (a.table, a.set) == (b.table, b.set)) {
        let set = group
            .first()
            .and_then(|first| tables.get(first.table as usize)?.get(first.set as usize));
        let prefixes = group
            .iter()
            .map(|hit| {
                set.and_then(|set| set.prefixes.get(hit.prefix as usize))
                    .filter(|net| net.contains(&address))
                    .copied()
                    .ok_or(StaleError {
                        address,
                        table: hit.table,
                        set: hit.set,
                        prefix: hit.prefix,
                    })
            })
            .collect::<Result<Vec<IpNet>, StaleError>>()?;
        if let Some(set) = set {
            sets.push(EndpointSet {
                prefixes,
                ..set.clone_without_prefixes()
            });
        }
    }
    Ok(sets)
}

impl<A: Bits> Family<A> {
    /// Levels from `(length, network, hit)` triples, their hits appended to `hits` grouped
    /// by network.
    fn group(mut entries: Vec<(u8, A, Hit)>, hits: &mut Vec<Hit>) -> Self {
        entries.sort_unstable();
        let mut levels: Vec<Level<A>> = Vec::new();
        let mut rest = entries.as_slice();
        while let Some(&(prefix_len, _, _)) = rest.first() {
            let at = rest.partition_point(|&(len, _, _)| len == prefix_len);
            let (level, after) = rest.split_at(at);
            rest = after;
            let distinct = 1 + level.windows(2).filter(|w| w[0].1 != w[1].1).count();
            let mut networks = HashMap::with_capacity(distinct);
            for group in level.chunk_by(|a, b| a.1 == b.1) {
                let span = Span {
                    start: u32::try_from(hits.len()).expect("fewer than 2^32 prefixes"),
                    len: u32::try_from(group.len()).expect("fewer than 2^32 prefixes"),
                };
                hits.extend(group.iter().map(|&(_, _, hit)| hit));
                networks.insert(group[0].1, span);
            }
            levels.push(Level {
                prefix_len,
                networks,
            });
        }
        Self { levels }
    }

    fn covering(&self, address: A, hits: &[Hit]) -> Vec<Hit> {
        let mut found = Vec::new();
        for level in &self.levels {
            if let Some(span) = level.networks.get(&address.network(level.prefix_len)) {
                let start = span.start as usize;
                found.extend_from_slice(&hits[start..start + span.len as usize]);
            }
        }
        found
    }

    fn heap_bytes(&self) -> usize {
        self.levels.capacity() * size_of::<Level<A>>()
            + self
                .levels
                .iter()
                .map(|level| level.networks.capacity() * (size_of::<(A, Span)>() + 1))
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Category;

    fn set(id: u32, prefixes: &[&str]) -> EndpointSet {
        EndpointSet {
            id,
            service_area: format!("set {id}"),
            category: Category::Allow,
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            tcp: Vec::new(),
            udp: Vec::new(),
            by_address: true,
        }
    }

    /// What the scan finds: every prefix that contains `address`, in table, set and prefix
    /// order.
    fn scan(tables: &[&[EndpointSet]], address: IpAddr) -> Vec<Hit> {
        let mut found = Vec::new();
        for (table, sets) in tables.iter().enumerate() {
            for (s, endpoint) in sets.iter().enumerate() {
                for (prefix, net) in endpoint.prefixes.iter().enumerate() {
                    if net.contains(&address) {
                        found.push(Hit {
                            table: u32::try_from(table).unwrap(),
                            set: u32::try_from(s).unwrap(),
                            prefix: u32::try_from(prefix).unwrap(),
                        });
                    }
                }
            }
        }
        found
    }

    /// What learning folded a host entry with before the index: every set's prefixes
    /// filtered with `contains`, the sets that keep some, in table order.
    fn scan_sets(tables: &[&[EndpointSet]], address: IpAddr) -> Vec<EndpointSet> {
        let mut sets = Vec::new();
        for set in tables.iter().flat_map(|sets| sets.iter()) {
            let prefixes: Vec<IpNet> = set
                .prefixes
                .iter()
                .filter(|net| net.contains(&address))
                .copied()
                .collect();
            if !prefixes.is_empty() {
                sets.push(EndpointSet {
                    prefixes,
                    ..set.clone_without_prefixes()
                });
            }
        }
        sets
    }

    /// The index and the scan agree on `address`: first in how many prefixes cover it, then
    /// in which; then in the sets folded and the host entry compiled from them.
    fn agree(cover: &Cover, tables: &[&[EndpointSet]], address: IpAddr) -> usize {
        let want = scan(tables, address);
        let got = cover.covering(address);
        assert_eq!(got.len(), want.len(), "how many prefixes cover {address}");
        assert_eq!(got, want, "which prefixes cover {address}");
        let folded = covering_sets(&got, tables, address).unwrap();
        let scanned = scan_sets(tables, address);
        assert_eq!(folded.len(), scanned.len(), "how many sets cover {address}");
        assert_eq!(folded, scanned, "which sets cover {address}");
        let host = |sets: &[EndpointSet]| {
            let compiled = crate::compile::compile_excluding(sets, &[]).unwrap();
            match IpNet::from(address) {
                IpNet::V4(net) => compiled
                    .v4
                    .get(&crate::compile::key_v4(net))
                    .map(|value| format!("{value:?}")),
                IpNet::V6(net) => compiled
                    .v6
                    .get(&crate::compile::key_v6(net))
                    .map(|value| format!("{value:?}")),
            }
        };
        assert_eq!(host(&folded), host(&scanned), "the host entry of {address}");
        got.len()
    }

    #[test]
    fn a_stale_index_is_refused() {
        let before = vec![set(1, &["10.0.0.0/8", "10.1.0.0/16"])];
        let after = vec![set(1, &["10.0.0.0/8"])];
        let cover = Cover::build([before.as_slice()]);
        let address = "10.1.0.1".parse().unwrap();
        let hits = cover.covering(address);
        assert_eq!(hits.len(), 2);
        let error = covering_sets(&hits, &[after.as_slice()], address).unwrap_err();
        assert_eq!((error.table, error.set, error.prefix), (0, 0, 1));
    }

    /// Addresses in and around `net`: its first and last, one past each end, and its
    /// middle.
    fn around(net: IpNet) -> Vec<IpAddr> {
        // Both families as integers, wrapping at the family's width.
        let (first, last, max): (u128, u128, u128) = match net {
            IpNet::V4(net) => (
                u32::from(net.network()).into(),
                u32::from(net.broadcast()).into(),
                u32::MAX.into(),
            ),
            IpNet::V6(net) => (net.network().into(), net.broadcast().into(), u128::MAX),
        };
        [
            first,
            last,
            first.wrapping_sub(1) & max,
            last.wrapping_add(1) & max,
            first + (last - first) / 2,
        ]
        .into_iter()
        .map(|a| match net {
            IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from(
                u32::try_from(a).expect("within the IPv4 width"),
            )),
            IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(a)),
        })
        .collect()
    }

    /// Addresses to ask about: around every prefix of `tables`, random ones (anywhere, and
    /// in Microsoft's IPv4 /8s and IPv6 /16 where the feed's prefixes nest), and the ends of
    /// both families.
    fn addresses(tables: &[&[EndpointSet]]) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = tables
            .iter()
            .flat_map(|sets| sets.iter())
            .flat_map(|set| set.prefixes.iter())
            .flat_map(|net| around(*net))
            .collect();
        // Random addresses: anywhere, and in Microsoft's IPv4 /8s and IPv6 /16 where the
        // feed's prefixes nest.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..500 {
            let r = random();
            let v4 = (r >> 32) as u32;
            addresses.push(IpAddr::from(std::net::Ipv4Addr::from(v4)));
            addresses.push(IpAddr::from(std::net::Ipv4Addr::from(
                [0x0d00_0000, 0x1400_0000, 0x2800_0000, 0x3400_0000][(r & 3) as usize] | (v4 >> 8),
            )));
            let v6 = (u128::from(random()) << 64) | u128::from(random());
            addresses.push(IpAddr::from(std::net::Ipv6Addr::from(v6)));
            addresses.push(IpAddr::from(std::net::Ipv6Addr::from(
                (0x2603_u128 << 112) | (v6 >> 16),
            )));
        }
        addresses.extend(
            [
                "0.0.0.0",
                "255.255.255.255",
                "192.0.2.1",
                "::",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "2001:db8::1",
                "::ffff:10.1.2.3",
            ]
            .map(|a| a.parse::<IpAddr>().unwrap()),
        );
        addresses
    }

    #[test]
    fn the_real_feed_and_a_synthetic_table_cover_as_the_scan_does() {
        let feed = crate::feed::Feed::parse(include_bytes!(
            "../../tests/fixtures/m365-worldwide-endpoints-2026043000.json"
        ))
        .unwrap();
        // Nested and repeated prefixes, both families, a default route, host routes, a
        // prefix with host bits (as an operator may write one), and the same network in two
        // tables.
        let synthetic = vec![
            set(
                1,
                &["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24"],
            ),
            set(
                2,
                &["10.1.2.3/32", "10.1.2.0/24", "10.1.2.0/24", "10.1.2.4/31"],
            ),
            set(3, &["52.96.0.0/14", "52.97.0.0/16", "52.97.128.0/17"]),
            set(
                4,
                &[
                    "::/0",
                    "2603:1000::/24",
                    "2603:1006::/40",
                    "2603:1006:1:2::/64",
                ],
            ),
            set(5, &["2603:1006:1:2::7/128", "2603:1006:1:2:ffff::/80"]),
            set(6, &["10.1.2.77/24", "20.190.128.0/18"]),
        ];
        let operator = vec![set(0, &["13.107.6.152/31", "2603:1006::/40"])];
        let tables: [&[EndpointSet]; 3] = [&feed.sets, &synthetic, &operator];
        let cover = Cover::build(tables);
        let total: usize = tables
            .iter()
            .flat_map(|sets| sets.iter())
            .map(|set| set.prefixes.len())
            .sum();
        assert_eq!(cover.len(), total);
        let addresses = addresses(&tables);
        let (mut inside, mut outside) = (0, 0);
        for address in &addresses {
            if agree(&cover, &tables, *address) > 0 {
                inside += 1;
            } else {
                outside += 1;
            }
        }
        // The nested prefixes of 10.1.2.3: the default route, /8, /16, the /24 three times
        // (once with host bits) and the host route, in scan order.
        let nested = cover.covering("10.1.2.3".parse().unwrap());
        assert_eq!(
            nested
                .iter()
                .filter(|hit| hit.table == 1)
                .map(|hit| (hit.set, hit.prefix))
                .collect::<Vec<_>>(),
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (1, 0),
                (1, 1),
                (1, 2),
                (5, 0)
            ]
        );
        // Without the default routes every address outside the tables is covered by none.
        let without_defaults: Vec<EndpointSet> = synthetic
            .iter()
            .map(|s| EndpointSet {
                prefixes: s
                    .prefixes
                    .iter()
                    .filter(|net| net.prefix_len() > 0)
                    .copied()
                    .collect(),
                ..s.clone()
            })
            .collect();
        let tables: [&[EndpointSet]; 3] = [&feed.sets, &without_defaults, &operator];
        let cover = Cover::build(tables);
        for address in &addresses {
            if agree(&cover, &tables, *address) == 0 {
                outside += 1;
            }
        }
        assert!(addresses.len() > 2000, "{} addresses", addresses.len());
        assert!(
            inside > 500 && outside > 500,
            "{inside} inside, {outside} outside"
        );
    }

    #[test]
    fn an_empty_table_covers_nothing() {
        let cover = Cover::build([]);
        assert!(cover.is_empty());
        assert_eq!(cover.lengths(), (0, 0));
        assert!(cover.covering("10.0.0.1".parse().unwrap()).is_empty());
        assert!(cover.covering("2603::1".parse().unwrap()).is_empty());
    }

    #[test]
    fn one_lookup_per_length_present() {
        let sets = vec![set(
            1,
            &["10.0.0.0/8", "11.0.0.0/8", "10.1.0.0/16", "2603::/16"],
        )];
        let cover = Cover::build([sets.as_slice()]);
        assert_eq!(cover.lengths(), (2, 1));
    }
}
