//! What a feed must satisfy, beyond parsing, before it reaches the maps.
//!
//! Parsing ([`crate::feed`]) checks syntax. The gate checks sense: a prefix that would send
//! a large share of the internet (or the router's own networks) direct, a change that
//! replaces most of what is installed, a version older than the one applied. Each is what a
//! hostile or broken feed server would send to move traffic past the security gateway, and
//! none occurs in Microsoft's feed. A refused feed changes nothing; the operator can force
//! it after reading the dry run.

use std::{collections::HashSet, fmt};

use ipnet::IpNet;

use crate::{
    feed::{EndpointSet, Feed},
    settings::Share,
};

/// What to run when a refusal is a false alarm: the `sync` command of the refused source
/// (`xdp-breakout sync --source NAME`), with `--dry-run` to check and `--force` to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint(pub String);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sync = &self.0;
        write!(
            f,
            "check it with `{sync} --dry-run`, then apply it with `{sync} --force` if it is right"
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GateError {
    #[error(
        "endpoint set {set}: ips \"{prefix}\": shorter than /{min}, the shortest IPv{family} \
         prefix a feed may carry ({key})"
    )]
    TooShort {
        set: u32,
        prefix: IpNet,
        min: u8,
        family: u8,
        key: &'static str,
    },
    #[error(
        "endpoint set {set}: ips \"{prefix}\": overlaps {block}, {name} (IANA special-purpose \
         space is never breakout traffic)"
    )]
    Special {
        set: u32,
        prefix: IpNet,
        block: IpNet,
        name: &'static str,
    },
    #[error(
        "it would remove {removed} of the {installed} installed prefixes, more than the \
         {limit}% limit ({key}); {hint}"
    )]
    Shrink {
        removed: usize,
        installed: usize,
        limit: u8,
        key: &'static str,
        hint: Hint,
    },
    #[error(
        "it would add {added} and remove {removed} prefixes where {installed} are installed, \
         a churn of more than {limit}% ({key}); {hint}"
    )]
    Churn {
        added: usize,
        removed: usize,
        installed: usize,
        limit: u16,
        key: &'static str,
        hint: Hint,
    },
    #[error(
        "version {version} is older than the applied {applied} (a replayed or stale answer); \
         {hint}"
    )]
    Older {
        version: String,
        applied: String,
        hint: Hint,
    },
    #[error(
        "version {version}, the applied file's, with other content (a tampered or \
         half-updated mirror); {hint}"
    )]
    SameVersion { version: String, hint: Hint },
    #[error(
        "it would add {added} {family} addresses not in its installed prefixes, {percent:.4}% of \
         {space}, more than the {limit} limit ({key}); {hint}"
    )]
    Space {
        family: &'static str,
        added: u128,
        space: &'static str,
        percent: f64,
        limit: Share,
        key: &'static str,
        hint: Hint,
    },
    #[error(
        "the union of every source would hold {entries} {family} prefixes, more than the \
         {room} the {family} trie holds ({capacity} entries, {reserved} kept for learned \
         addresses); nothing was written"
    )]
    Capacity {
        family: &'static str,
        entries: usize,
        room: usize,
        capacity: usize,
        reserved: usize,
    },
}

/// Where a prefix is checked from: a feed's endpoint set, or the operator's configuration.
#[derive(Clone, Copy, Debug)]
pub struct PrefixLimits {
    pub min_len_v4: u8,
    pub min_len_v6: u8,
}

impl Default for PrefixLimits {
    fn default() -> Self {
        Self {
            min_len_v4: 8,
            min_len_v6: 16,
        }
    }
}

/// The IPv4 blocks of the IANA IPv4 Special-Purpose Address Registry (RFC 6890 and its
/// updates), plus multicast and the reserved class E: none is reachable through an ISP.
pub const SPECIAL_V4: [(&str, &str); 18] = [
    ("0.0.0.0/8", "this network (RFC 791)"),
    ("10.0.0.0/8", "private-use (RFC 1918)"),
    ("100.64.0.0/10", "shared address space, CGN (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "private-use (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation, TEST-NET-1 (RFC 5737)"),
    ("192.31.196.0/24", "AS112-v4 (RFC 7535)"),
    ("192.52.193.0/24", "AMT (RFC 7450)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private-use (RFC 1918)"),
    (
        "192.175.48.0/24",
        "direct delegation AS112 service (RFC 7534)",
    ),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation, TEST-NET-2 (RFC 5737)"),
    ("203.0.113.0/24", "documentation, TEST-NET-3 (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    (
        "240.0.0.0/4",
        "reserved, and limited broadcast (RFC 1112, RFC 919)",
    ),
];

/// The IPv6 blocks of the IANA IPv6 Special-Purpose Address Registry, plus multicast and
/// every address outside global unicast (`2000::/3`, RFC 4291), which no ISP routes.
pub const SPECIAL_V6: [(&str, &str); 18] = [
    (
        "::/3",
        "outside global unicast: unspecified, loopback, IPv4-mapped, NAT64, discard (RFC 4291)",
    ),
    ("4000::/2", "outside global unicast (RFC 4291)"),
    (
        "8000::/1",
        "outside global unicast: ULA, link-local, multicast (RFC 4291)",
    ),
    (
        "2001::/23",
        "IETF protocol assignments: TEREDO, benchmarking, ORCHID (RFC 2928)",
    ),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("2002::/16", "6to4 (RFC 3056)"),
    (
        "2620:4f:8000::/48",
        "direct delegation AS112 service (RFC 7534)",
    ),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "segment routing SIDs (RFC 9602)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local unicast (RFC 4291)"),
    ("ff00::/8", "multicast (RFC 4291)"),
    ("::1/128", "loopback (RFC 4291)"),
    ("::/128", "unspecified (RFC 4291)"),
    ("::ffff:0:0/96", "IPv4-mapped (RFC 4291)"),
    ("64:ff9b::/96", "IPv4-IPv6 translation (RFC 6052)"),
    ("64:ff9b:1::/48", "local IPv4-IPv6 translation (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
];

/// The special-purpose block `net` overlaps (holds, or lies in), if any; the most specific
/// one, whose name says the most.
#[must_use]
pub fn special_block(net: IpNet) -> Option<(IpNet, &'static str)> {
    let table: &[(&str, &str)] = match net {
        IpNet::V4(_) => &SPECIAL_V4,
        IpNet::V6(_) => &SPECIAL_V6,
    };
    // Every entry parses: `the_special_purpose_tables_parse` checks.
    table
        .iter()
        .filter_map(|&(block, name)| {
            let block: IpNet = block.parse().ok()?;
            (block.contains(&net) || net.contains(&block)).then_some((block, name))
        })
        .max_by_key(|(block, _)| block.prefix_len())
}

/// Checks one prefix of endpoint set `set` (0: the operator's configuration).
pub fn check_prefix(set: u32, net: IpNet, limits: PrefixLimits) -> Result<(), GateError> {
    let (min, family, key) = match net {
        IpNet::V4(_) => (limits.min_len_v4, 4, "feed.min-prefix-len-v4"),
        IpNet::V6(_) => (limits.min_len_v6, 6, "feed.min-prefix-len-v6"),
    };
    if net.prefix_len() < min {
        return Err(GateError::TooShort {
            set,
            prefix: net,
            min,
            family,
            key,
        });
    }
    if let Some((block, name)) = special_block(net) {
        return Err(GateError::Special {
            set,
            prefix: net,
            block,
            name,
        });
    }
    Ok(())
}

/// Checks every prefix of every endpoint set, filtered out or not: a feed that carries one
/// such prefix is not trusted with the others.
pub fn check_feed(feed: &Feed, limits: PrefixLimits) -> Result<(), GateError> {
    feed.sets.iter().try_for_each(|set| {
        set.prefixes
            .iter()
            .try_for_each(|net| check_prefix(set.id, *net, limits))
    })
}

/// How much one refresh of a source may change its prefixes.
#[derive(Clone, Copy, Debug)]
pub struct ChangeLimits {
    /// Percent of its installed prefixes a file may remove, and the key that sets it.
    pub max_shrink_percent: u8,
    pub shrink_key: &'static str,
    /// Percent of its installed prefixes a file may add and remove together; `None`: no
    /// limit.
    pub max_churn_percent: Option<u16>,
    pub churn_key: &'static str,
    /// The share of IPv4, and of IPv6's global unicast space (`2000::/3`), that one file
    /// may add to what its installed prefixes cover (a first file: all it covers).
    pub max_added_v4: Share,
    pub max_added_v6: Share,
    pub added_key: &'static str,
}

/// A source's file: its version (as the service or the file states it), its content hash,
/// and its endpoint sets after the source's filters.
#[derive(Clone, Copy, Debug)]
pub struct File<'a> {
    pub version: Option<&'a str>,
    pub sha256: &'a str,
    pub sets: &'a [EndpointSet],
}

/// Added and removed prefixes between a source's installed file and a new one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub installed: usize,
    pub added: usize,
    pub removed: usize,
}

impl Change {
    #[must_use]
    pub fn between(installed: &[EndpointSet], target: &[EndpointSet]) -> Self {
        let prefixes = |sets: &[EndpointSet]| -> HashSet<IpNet> {
            sets.iter()
                .flat_map(|set| set.prefixes.iter().copied())
                .collect()
        };
        let (installed, target) = (prefixes(installed), prefixes(target));
        Self {
            installed: installed.len(),
            added: target.difference(&installed).count(),
            removed: installed.difference(&target).count(),
        }
    }
}

/// The one verdict on a source's new file, against the file the maps hold of it (`held`):
/// not older, not the held version with other content, and within the shrink and churn
/// limits. Nothing held (a first start) takes anything: there is nothing to protect yet,
/// and the file has passed the prefix checks. `sync --force` skips this, nothing else.
pub fn judge(
    hint: &Hint,
    held: Option<File<'_>>,
    new: File<'_>,
    limits: ChangeLimits,
) -> Result<(), GateError> {
    let hint = || hint.clone();
    let (v4, v6) = added_space(held.map_or(&[], |held| held.sets), new.sets);
    for (family, added, whole, space, limit) in [
        ("IPv4", v4, 1u128 << 32, "IPv4", limits.max_added_v4),
        (
            "IPv6",
            v6,
            1u128 << 125,
            "global unicast IPv6 (2000::/3)",
            limits.max_added_v6,
        ),
    ] {
        if limit.exceeded_by(added, whole) {
            return Err(GateError::Space {
                family,
                added,
                space,
                percent: Share::percent_of(added, whole),
                limit,
                key: limits.added_key,
                hint: hint(),
            });
        }
    }
    let Some(held) = held else {
        return Ok(());
    };
    if let (Some(applied), Some(version)) = (held.version, new.version) {
        match (applied.parse::<u64>(), version.parse::<u64>()) {
            (Ok(old), Ok(new)) if new < old => {
                return Err(GateError::Older {
                    version: version.to_owned(),
                    applied: applied.to_owned(),
                    hint: hint(),
                });
            }
            _ if applied == version && held.sha256 != new.sha256 => {
                return Err(GateError::SameVersion {
                    version: version.to_owned(),
                    hint: hint(),
                });
            }
            _ => {}
        }
    }
    let Change {
        installed,
        added,
        removed,
    } = Change::between(held.sets, new.sets);
    if installed == 0 {
        return Ok(());
    }
    // Integers only: `removed / installed > limit / 100`, without rounding.
    if removed.saturating_mul(100)
        > installed.saturating_mul(usize::from(limits.max_shrink_percent))
    {
        return Err(GateError::Shrink {
            removed,
            installed,
            limit: limits.max_shrink_percent,
            key: limits.shrink_key,
            hint: hint(),
        });
    }
    if let Some(limit) = limits.max_churn_percent
        && added.saturating_add(removed).saturating_mul(100)
            > installed.saturating_mul(usize::from(limit))
    {
        return Err(GateError::Churn {
            added,
            removed,
            installed,
            limit,
            key: limits.churn_key,
            hint: hint(),
        });
    }
    Ok(())
}

/// The addresses `new`'s prefixes cover that `held`'s do not, IPv4 and IPv6.
#[must_use]
pub fn added_space(held: &[EndpointSet], new: &[EndpointSet]) -> (u128, u128) {
    let ranges = |sets: &[EndpointSet], v4: bool| -> Vec<(u128, u128)> {
        let mut ranges: Vec<(u128, u128)> = sets
            .iter()
            .flat_map(|set| set.prefixes.iter())
            .filter_map(|net| match net {
                IpNet::V4(net) if v4 => Some((
                    u128::from(u32::from(net.network())),
                    u128::from(u32::from(net.broadcast())),
                )),
                IpNet::V6(net) if !v4 => {
                    Some((u128::from(net.network()), u128::from(net.broadcast())))
                }
                _ => None,
            })
            .collect();
        ranges.sort_unstable();
        // Merged: sorted, disjoint, inclusive.
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    };
    // Both lists sorted and disjoint: one pass, each held range visited once per new range
    // that reaches it.
    let outside = |new: &[(u128, u128)], held: &[(u128, u128)]| -> u128 {
        let mut total = 0u128;
        let mut first = 0;
        for &(lo, hi) in new {
            while held.get(first).is_some_and(|&(_, h_hi)| h_hi < lo) {
                first += 1;
            }
            // `from` is the first address of `lo..=hi` not yet counted or covered.
            let mut from = lo;
            let mut covered_to_end = false;
            for &(h_lo, h_hi) in held[first..].iter().take_while(|&&(h_lo, _)| h_lo <= hi) {
                if h_lo > from {
                    total = total.saturating_add(h_lo - from);
                }
                if h_hi >= hi {
                    covered_to_end = true;
                    break;
                }
                from = from.max(h_hi + 1);
            }
            if !covered_to_end {
                total = total.saturating_add(hi - from).saturating_add(1);
            }
        }
        total
    };
    (
        outside(&ranges(new, true), &ranges(held, true)),
        outside(&ranges(new, false), &ranges(held, false)),
    )
}

/// Refuses a union of `entries` (IPv4, IPv6) where the tries hold `capacity` and learning
/// may still add `reserved` to each family: found before anything is written, so the maps
/// never hold part of a table.
pub fn check_capacity(
    entries: (usize, usize),
    capacity: (usize, usize),
    reserved: usize,
) -> Result<(), GateError> {
    for (family, entries, capacity) in [
        ("IPv4", entries.0, capacity.0),
        ("IPv6", entries.1, capacity.1),
    ] {
        let room = capacity.saturating_sub(reserved);
        if entries > room {
            return Err(GateError::Capacity {
                family,
                entries,
                room,
                capacity,
                reserved,
            });
        }
    }
    Ok(())
}

/// Microsoft's versions are `YYYYMMDDNN`: ten digits, so text order is time order.
#[must_use]
pub fn is_version(text: &str) -> bool {
    text.len() == 10 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Category;

    const FEED_2026043000: &[u8] =
        include_bytes!("../../tests/fixtures/m365-worldwide-endpoints-2026043000.json");
    const FEED_2020: &[u8] =
        include_bytes!("../../tests/fixtures/m365-worldwide-endpoints-2020-05-31.json");

    fn feed_with(prefix: &str) -> Feed {
        let mut feed = Feed::parse(FEED_2026043000).unwrap();
        feed.sets.push(EndpointSet {
            id: 500,
            service_area: "Common".into(),
            category: Category::Optimize,
            prefixes: vec![prefix.parse().unwrap()],
            tcp: Vec::new(),
            udp: Vec::new(),
            by_address: true,
        });
        feed
    }

    #[test]
    fn the_special_purpose_tables_parse() {
        for (block, name) in SPECIAL_V4.iter().chain(&SPECIAL_V6) {
            let net: IpNet = block.parse().unwrap_or_else(|_| panic!("{block}"));
            assert_eq!(net.trunc(), net, "{block}");
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn microsofts_feeds_pass() {
        for body in [FEED_2026043000, FEED_2020] {
            check_feed(&Feed::parse(body).unwrap(), PrefixLimits::default()).unwrap();
        }
    }

    #[test]
    fn default_routes_and_special_purpose_space_are_refused_naming_set_and_prefix() {
        let cases = [
            (
                "0.0.0.0/0",
                "endpoint set 500: ips \"0.0.0.0/0\": shorter than /8",
            ),
            ("::/0", "endpoint set 500: ips \"::/0\": shorter than /16"),
            (
                "4.0.0.0/7",
                "shorter than /8, the shortest IPv4 prefix a feed may carry (feed.min-prefix-len-v4)",
            ),
            ("10.0.0.0/8", "overlaps 10.0.0.0/8, private-use (RFC 1918)"),
            ("10.20.0.0/16", "overlaps 10.0.0.0/8"),
            ("192.168.0.0/16", "overlaps 192.168.0.0/16"),
            ("100.64.0.0/10", "CGN"),
            ("127.0.0.1/32", "loopback"),
            ("169.254.1.0/24", "link-local"),
            ("192.0.2.0/24", "documentation"),
            ("224.0.0.0/8", "multicast"),
            ("255.255.255.255/32", "reserved"),
            ("fd00::/16", "unique local"),
            ("fe80::/16", "link-local unicast"),
            ("fe00::/16", "outside global unicast"),
            ("2001:db8::/32", "documentation"),
            ("3fff::/20", "documentation"),
            ("ff02::/16", "multicast"),
            ("2002::/16", "6to4"),
        ];
        for (prefix, expected) in cases {
            let error = check_feed(&feed_with(prefix), PrefixLimits::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected),
                "{prefix}: {error:?} lacks {expected:?}"
            );
            assert!(error.starts_with("endpoint set 500: ips"), "{error}");
        }
        // Public space next to special blocks passes.
        for prefix in [
            "11.0.0.0/8",
            "100.128.0.0/10",
            "192.0.3.0/24",
            "2603:1063::/38",
        ] {
            check_feed(&feed_with(prefix), PrefixLimits::default())
                .unwrap_or_else(|error| panic!("{prefix}: {error}"));
        }
    }

    #[test]
    fn the_minimum_length_is_configurable() {
        let limits = PrefixLimits {
            min_len_v4: 12,
            min_len_v6: 32,
        };
        let feed = Feed::parse(FEED_2026043000).unwrap();
        // The real feed has a /13 IPv4 and /35 IPv6 at its shortest.
        check_feed(&feed, limits).unwrap();
        let limits = PrefixLimits {
            min_len_v4: 14,
            min_len_v6: 16,
        };
        let error = check_feed(&feed, limits).unwrap_err().to_string();
        assert!(error.contains("shorter than /14"), "{error}");
    }

    fn sets(body: &[u8]) -> Vec<EndpointSet> {
        Feed::parse(body).unwrap().sets
    }

    const LIMITS: ChangeLimits = ChangeLimits {
        max_shrink_percent: 50,
        shrink_key: "feed.max-shrink-percent",
        max_churn_percent: Some(100),
        churn_key: "feed.max-churn-percent",
        max_added_v4: Share { ppm: 40_000 },
        max_added_v6: Share { ppm: 100 },
        added_key: "feed.max-added-v4/v6",
    };

    fn file<'a>(version: &'a str, sets: &'a [EndpointSet]) -> File<'a> {
        File {
            version: Some(version),
            sha256: version,
            sets,
        }
    }

    fn with_prefixes(
        sets: &[EndpointSet],
        prefixes: impl Iterator<Item = IpNet>,
    ) -> Vec<EndpointSet> {
        vec![EndpointSet {
            prefixes: prefixes.collect(),
            ..sets[0].clone_without_prefixes()
        }]
    }

    #[test]
    fn the_shrink_limit_counts_removals_not_entries() {
        let installed = sets(FEED_2026043000);
        let held = file("2026043000", &installed);
        // The whole table replaced by as many other prefixes: nothing shrinks by count,
        // every installed prefix is removed.
        let replaced = with_prefixes(
            &installed,
            (0..93u8).map(|n| format!("11.0.{n}.1/32").parse().unwrap()),
        );
        assert_eq!(
            Change::between(&installed, &replaced),
            Change {
                installed: 93,
                added: 93,
                removed: 93
            }
        );
        let error = judge(
            &Hint("xdp-breakout sync".into()),
            Some(held),
            file("2026050100", &replaced),
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(
            error,
            GateError::Shrink {
                removed: 93,
                installed: 93,
                limit: 50,
                key: "feed.max-shrink-percent",
                hint: Hint("xdp-breakout sync".into()),
            }
        );
        assert!(
            error.to_string().contains("`xdp-breakout sync --force`"),
            "{error}"
        );
        // Growth alone is churn: 93 installed, 100 more.
        let mut grown = installed.clone();
        grown.extend(with_prefixes(
            &installed,
            (0..100u8).map(|n| format!("11.1.{n}.1/32").parse().unwrap()),
        ));
        let error = judge(
            &Hint("xdp-breakout sync --source zoom".into()),
            Some(held),
            file("2026050100", &grown),
            LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                GateError::Churn {
                    added: 100,
                    removed: 0,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("`xdp-breakout sync --source zoom --force`"),
            "{error}"
        );
        // Without a churn limit, growth passes.
        let no_churn = ChangeLimits {
            max_churn_percent: None,
            ..LIMITS
        };
        judge(
            &Hint("xdp-breakout sync --source zoom".into()),
            Some(held),
            file("2026050100", &grown),
            no_churn,
        )
        .unwrap();
        // Microsoft's own change from 2020 to 2026 (75 removed of 155) is within the limits
        // both ways.
        let old = sets(FEED_2020);
        judge(
            &Hint("xdp-breakout sync".into()),
            Some(file("2020053100", &old)),
            held,
            LIMITS,
        )
        .unwrap();
        judge(
            &Hint("xdp-breakout sync".into()),
            Some(held),
            file("2026050100", &old),
            LIMITS,
        )
        .unwrap();
        // From nothing, anything.
        judge(
            &Hint("xdp-breakout sync".into()),
            None,
            file("2026050100", &grown),
            LIMITS,
        )
        .unwrap();
    }

    fn list(prefixes: &[&str]) -> Vec<EndpointSet> {
        with_prefixes(
            &sets(FEED_2026043000),
            prefixes.iter().map(|text| text.parse().unwrap()),
        )
    }

    #[test]
    fn added_space_counts_addresses_not_prefixes() {
        let held = list(&["11.0.0.0/16", "11.2.0.0/16", "2603:1000::/32"]);
        // Inside, overlapping, outside, and the same space twice.
        let new = list(&[
            "11.0.0.0/17",
            "11.1.255.0/24",
            "11.2.0.0/15",
            "12.0.0.0/24",
            "12.0.0.0/25",
            "2603:1000::/31",
        ]);
        let (v4, v6) = added_space(&held, &new);
        assert_eq!(
            v4,
            256 + (1 << 16) + 256,
            "11.1.255.0/24, 11.3.0.0/16, 12.0.0.0/24"
        );
        assert_eq!(v6, 1 << 96, "2603:1001::/32");
        assert_eq!(added_space(&new, &held), (1 << 15, 0), "11.0.128.0/17");
        assert_eq!(added_space(&[], &held).0, 2 << 16);
    }

    #[test]
    fn a_file_may_not_add_much_of_the_address_space() {
        let installed = sets(FEED_2026043000);
        let held = file("2026043000", &installed);
        // Most of public IPv4 in /8s, as a probe did: refused, even as a first file.
        let eights: Vec<String> = (11..216).map(|n| format!("{n}.0.0.0/8")).collect();
        let eights: Vec<&str> = eights.iter().map(String::as_str).collect();
        let grabbed = list(&eights);
        for held in [Some(held), None] {
            let error = judge(
                &Hint("xdp-breakout sync --source list".into()),
                held,
                file("2", &grabbed),
                LIMITS,
            )
            .unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("IPv4 addresses not in its installed prefixes, 80.0")
                    && error.to_string().contains("more than the 4% limit"),
                "{error}"
            );
        }
        // A /16 of IPv6 is too; a /20 is not.
        let error = judge(
            &Hint("s".into()),
            None,
            file("2", &list(&["2a00::/16"])),
            LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(error, GateError::Space { family: "IPv6", .. }),
            "{error}"
        );
        judge(
            &Hint("s".into()),
            None,
            file("2", &list(&["2a00::/20"])),
            LIMITS,
        )
        .unwrap();
    }

    #[test]
    fn capacity_is_counted_before_anything_is_written() {
        check_capacity((1000, 10), (1 << 20, 1 << 20), 16384).unwrap();
        let error = check_capacity((1_100_000, 10), (1 << 20, 1 << 20), 16384).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the union of every source would hold 1100000 IPv4 prefixes, more than the 1032192 \
             the IPv4 trie holds (1048576 entries, 16384 kept for learned addresses); nothing \
             was written"
        );
        assert!(matches!(
            check_capacity((10, 1_040_000), (1 << 20, 1 << 20), 16384),
            Err(GateError::Capacity { family: "IPv6", .. })
        ));
    }

    #[test]
    fn versions_may_not_go_backwards_nor_change_content() {
        let installed = sets(FEED_2026043000);
        let held = file("2026043000", &installed);
        judge(
            &Hint("xdp-breakout sync".into()),
            Some(held),
            file("2026050100", &installed),
            LIMITS,
        )
        .unwrap();
        let error = judge(
            &Hint("xdp-breakout sync".into()),
            Some(held),
            file("2026033100", &installed),
            LIMITS,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("version 2026033100 is older than the applied 2026043000"),
            "{error}"
        );
        let tampered = File {
            sha256: "other",
            ..held
        };
        let error = judge(
            &Hint("xdp-breakout sync --source aws".into()),
            Some(held),
            tampered,
            LIMITS,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("version 2026043000, the applied file's, with other content"),
            "{error}"
        );
        // The same version with the same content, and a held version that is none
        // (`unknown`, a hand-given feed file), pass.
        let hint = Hint("xdp-breakout sync".into());
        judge(&hint, Some(held), held, LIMITS).unwrap();
        let unknown = File {
            version: Some("unknown"),
            ..held
        };
        judge(&hint, Some(unknown), file("2020053100", &installed), LIMITS).unwrap();
        // A file without a version compares by content only.
        let unversioned = File {
            version: None,
            ..tampered
        };
        judge(
            &Hint("xdp-breakout sync --source aws".into()),
            Some(held),
            unversioned,
            LIMITS,
        )
        .unwrap();
    }
}
