//! What a feed must satisfy, beyond parsing, before it reaches the maps.
//!
//! Parsing ([`crate::feed`]) checks syntax. The gate checks sense: a prefix that would send
//! a large share of the internet (or the router's own networks) direct, a change that
//! replaces most of what is installed, a version older than the one applied. Each is what a
//! hostile or broken feed server would send to move traffic past the security gateway, and
//! none occurs in Microsoft's feed. A refused feed changes nothing; the operator can force
//! it after reading the dry run.

use ipnet::IpNet;

use crate::{compile::Compiled, feed::Feed};

/// What to run when a refusal is a false alarm.
pub const FORCE_HINT: &str = "check it with `xdp-breakout sync --dry-run`, then apply it with \
                              `xdp-breakout sync --force` if it is right";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
         {limit}% limit (feed.max-shrink-percent); {FORCE_HINT}"
    )]
    Shrink {
        removed: usize,
        installed: usize,
        limit: u8,
    },
    #[error(
        "it would add {added} and remove {removed} prefixes where {installed} are installed, \
         a churn of more than {limit}% (feed.max-churn-percent); {FORCE_HINT}"
    )]
    Churn {
        added: usize,
        removed: usize,
        installed: usize,
        limit: u16,
    },
    #[error(
        "version {version} is older than the applied {applied} (a replayed or stale answer); \
         {FORCE_HINT}"
    )]
    Older { version: String, applied: String },
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

/// How much one feed may change what is installed.
#[derive(Clone, Copy, Debug)]
pub struct ChangeLimits {
    /// Percent of the installed prefixes a feed may remove.
    pub max_shrink_percent: u8,
    /// Percent of the installed prefixes a feed may add and remove together.
    pub max_churn_percent: u16,
}

/// Added and removed prefixes between what is installed and a target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub installed: usize,
    pub added: usize,
    pub removed: usize,
}

impl Change {
    #[must_use]
    pub fn between(installed: &Compiled, target: &Compiled) -> Self {
        let added = target
            .v4
            .keys()
            .filter(|k| !installed.v4.contains_key(k))
            .count()
            + target
                .v6
                .keys()
                .filter(|k| !installed.v6.contains_key(k))
                .count();
        let removed = installed
            .v4
            .keys()
            .filter(|k| !target.v4.contains_key(k))
            .count()
            + installed
                .v6
                .keys()
                .filter(|k| !target.v6.contains_key(k))
                .count();
        Self {
            installed: installed.len(),
            added,
            removed,
        }
    }

    /// Refuses a change beyond `limits`. Nothing installed (a first start) takes anything:
    /// there is nothing to protect yet, and the feed has passed the prefix checks.
    pub fn check(self, limits: ChangeLimits) -> Result<(), GateError> {
        let Self {
            installed,
            added,
            removed,
        } = self;
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
            });
        }
        if added.saturating_add(removed).saturating_mul(100)
            > installed.saturating_mul(usize::from(limits.max_churn_percent))
        {
            return Err(GateError::Churn {
                added,
                removed,
                installed,
                limit: limits.max_churn_percent,
            });
        }
        Ok(())
    }
}

/// Microsoft's versions are `YYYYMMDDNN`: ten digits, so text order is time order.
#[must_use]
pub fn is_version(text: &str) -> bool {
    text.len() == 10 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Refuses a version older than the applied one. An applied record that is not a version
/// (a feed file, recorded as `unknown`) compares with nothing.
pub fn check_version(applied: Option<&str>, version: &str) -> Result<(), GateError> {
    match applied {
        Some(applied) if is_version(applied) && is_version(version) && version < applied => {
            Err(GateError::Older {
                version: version.to_owned(),
                applied: applied.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compile::compile,
        feed::{Category, EndpointSet},
    };

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

    fn compiled(body: &[u8]) -> Compiled {
        compile(&Feed::parse(body).unwrap()).unwrap()
    }

    const LIMITS: ChangeLimits = ChangeLimits {
        max_shrink_percent: 50,
        max_churn_percent: 100,
    };

    #[test]
    fn the_shrink_limit_counts_removals_not_entries() {
        let installed = compiled(FEED_2026043000);
        // The whole table replaced by as many other prefixes (more, even): nothing shrinks
        // by count, every installed prefix is removed.
        let mut replaced = Compiled::default();
        for (n, value) in (0u8..).zip(installed.v4.values().chain(installed.v6.values())) {
            let key = classifier_common::LpmKeyV4 {
                prefix_len: 32,
                addr: [11, 0, n, 1],
            };
            replaced.v4.insert(key, *value);
        }
        let change = Change::between(&installed, &replaced);
        assert_eq!(
            change,
            Change {
                installed: 93,
                added: 93,
                removed: 93
            }
        );
        assert_eq!(
            change.check(LIMITS),
            Err(GateError::Shrink {
                removed: 93,
                installed: 93,
                limit: 50
            })
        );
        // Growth alone is churn: 93 installed, 100 more.
        let mut grown = installed.clone();
        for n in 0..100u8 {
            let key = classifier_common::LpmKeyV4 {
                prefix_len: 32,
                addr: [11, 1, n, 1],
            };
            grown
                .v4
                .insert(key, installed.v4.values().next().copied().unwrap());
        }
        let error = Change::between(&installed, &grown)
            .check(LIMITS)
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
        assert!(error.to_string().contains("sync --force"), "{error}");
        // Microsoft's own change from 2020 to 2026 (75 removed of 155) is within the limits
        // both ways.
        let old = compiled(FEED_2020);
        Change::between(&old, &installed).check(LIMITS).unwrap();
        Change::between(&installed, &old).check(LIMITS).unwrap();
        // From nothing, anything.
        Change::between(&Compiled::default(), &grown)
            .check(LIMITS)
            .unwrap();
    }

    #[test]
    fn versions_may_not_go_backwards() {
        assert!(check_version(Some("2026043000"), "2026043000").is_ok());
        assert!(check_version(Some("2026043000"), "2026050100").is_ok());
        assert!(check_version(None, "2020053100").is_ok());
        assert!(check_version(Some("unknown"), "2020053100").is_ok());
        let error = check_version(Some("2026043000"), "2026033100").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("version 2026033100 is older than the applied 2026043000"),
            "{error}"
        );
    }
}
