//! The Microsoft 365 endpoint feed (`GET /endpoints/{instance}`), parsed and validated.
//!
//! Microsoft adds fields at will, so unknown fields are ignored; ports may be absent, `null`
//! or contain spaces (`"143, 587, 993, 995"`). Everything that would make a wrong map entry
//! (a prefix with host bits set, a port out of range, an unknown category) is an error that
//! names the endpoint set and the value.

use std::{fmt, net::IpAddr, str::FromStr};

use classifier_common::category;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A feed that could not be used. Nothing is applied from it.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("feed is not valid JSON of the endpoints form")]
    Json(#[source] serde_json::Error),
    #[error("feed has no endpoint sets")]
    Empty,
    #[error("feed has no IP prefixes in any endpoint set")]
    NoPrefixes,
    #[error("endpoint set {set}: {field} {value:?}: {reason}")]
    Invalid {
        set: u32,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("endpoint set {set} appears twice")]
    DuplicateSet { set: u32 },
}

/// Microsoft's endpoint categories, lowest first, between the two of other providers'
/// sources: a `tunnel` source yields to every Microsoft category, a `direct` one wins over
/// them all. `FromStr` reads only Microsoft's three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Category {
    Tunnel,
    Default,
    Allow,
    Optimize,
    Direct,
}

impl Category {
    /// The kernel's `classifier_common::category` value.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Default => category::DEFAULT,
            Self::Allow => category::ALLOW,
            Self::Optimize => category::OPTIMIZE,
            Self::Tunnel => category::TUNNEL,
            Self::Direct => category::DIRECT,
        }
    }

    /// The category of a kernel code (`None` for `category::NONE` and unknown codes).
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            category::TUNNEL => Some(Self::Tunnel),
            category::DEFAULT => Some(Self::Default),
            category::ALLOW => Some(Self::Allow),
            category::OPTIMIZE => Some(Self::Optimize),
            category::DIRECT => Some(Self::Direct),
            _ => None,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(category::name(self.code()).unwrap_or("?"))
    }
}

impl FromStr for Category {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "optimize" => Ok(Self::Optimize),
            "allow" => Ok(Self::Allow),
            "default" => Ok(Self::Default),
            _ => Err(format!(
                "unknown category {s:?} (Optimize, Allow or Default)"
            )),
        }
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// One endpoint set with addresses, as the compiler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSet {
    pub id: u32,
    pub service_area: String,
    pub category: Category,
    pub prefixes: Vec<IpNet>,
    pub tcp: Vec<PortRange>,
    pub udp: Vec<PortRange>,
    /// A packet to one of its prefixes whose port is in no rule takes the set's category
    /// (Microsoft's sets); a source whose ports are given claims only those ports.
    pub by_address: bool,
}

/// A validated feed: its endpoint sets that carry addresses, in id order. URL-only sets are
/// dropped (they say nothing to a packet classifier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    pub sets: Vec<EndpointSet>,
    /// Sets in the feed, with or without addresses.
    pub total_sets: usize,
    /// The sets that name hosts (`urls`), with or without addresses: what the PAC file and
    /// DNS learning read.
    pub named: Vec<NamedSet>,
}

/// An endpoint set's host names and wildcards, as the service writes them (unchecked: the PAC
/// file and DNS learning each check what they take).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSet {
    pub id: u32,
    pub service_area: String,
    pub category: Category,
    pub urls: Vec<String>,
    pub tcp: Vec<PortRange>,
    pub udp: Vec<PortRange>,
}

/// An endpoint set as the service writes it, unchecked: what [`Feed::parse`] validates, and
/// where the PAC file and DNS learning read the URLs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawSet {
    pub id: u32,
    #[serde(default)]
    pub service_area: Option<String>,
    pub category: String,
    #[serde(default)]
    pub ips: Option<Vec<String>>,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub tcp_ports: Option<String>,
    #[serde(default)]
    pub udp_ports: Option<String>,
}

/// The sets of an endpoints body, unchecked.
pub(crate) fn raw_sets(body: &[u8]) -> Result<Vec<RawSet>, serde_json::Error> {
    // The 2020 service output starts with a UTF-8 byte order mark in some captures.
    serde_json::from_slice(body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body))
}

/// The sets of an endpoints body that name hosts, each checked as [`Feed::parse`] checks
/// them; for a body that need not carry addresses (a test, a PAC file from a URL list).
pub fn named_sets(body: &[u8]) -> Result<Vec<NamedSet>, FeedError> {
    raw_sets(body)
        .map_err(FeedError::Json)?
        .iter()
        .filter_map(|set| {
            let urls = set.urls.as_ref().filter(|urls| !urls.is_empty())?;
            Some(NamedSet::from_raw(set, urls.clone()))
        })
        .collect()
}

impl Feed {
    /// Parses the body of `GET /endpoints/{instance}`.
    pub fn parse(body: &[u8]) -> Result<Self, FeedError> {
        let raw = raw_sets(body).map_err(FeedError::Json)?;
        if raw.is_empty() {
            return Err(FeedError::Empty);
        }
        let total_sets = raw.len();
        let mut sets = Vec::new();
        let mut named = Vec::new();
        for set in raw {
            if let Some(urls) = set.urls.as_ref().filter(|urls| !urls.is_empty()) {
                named.push(NamedSet::from_raw(&set, urls.clone())?);
            }
            if let Some(set) = EndpointSet::from_raw(set)? {
                sets.push(set);
            }
        }
        sets.sort_by_key(|set| set.id);
        if let Some(pair) = sets.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(FeedError::DuplicateSet { set: pair[0].id });
        }
        if sets.is_empty() {
            return Err(FeedError::NoPrefixes);
        }
        Ok(Self {
            sets,
            total_sets,
            named,
        })
    }

    /// Unique prefixes, IPv4 and IPv6.
    #[must_use]
    pub fn prefix_counts(&self) -> (usize, usize) {
        let mut all: Vec<IpNet> = self
            .sets
            .iter()
            .flat_map(|set| set.prefixes.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        let v4 = all.iter().filter(|net| matches!(net, IpNet::V4(_))).count();
        (v4, all.len() - v4)
    }
}

impl NamedSet {
    fn from_raw(raw: &RawSet, urls: Vec<String>) -> Result<Self, FeedError> {
        let invalid = |field, value: &str, reason: String| FeedError::Invalid {
            set: raw.id,
            field,
            value: value.to_owned(),
            reason,
        };
        let category = raw
            .category
            .parse()
            .map_err(|reason| invalid("category", &raw.category, reason))?;
        check_id(raw.id).map_err(|reason| invalid("id", &raw.id.to_string(), reason))?;
        // Ports are checked with the set's addresses; a URL-only set's ports only narrow
        // what a learned address claims, and one that does not parse claims none.
        let ports = |text: Option<&str>| parse_ports(text).unwrap_or_default();
        Ok(Self {
            id: raw.id,
            service_area: raw.service_area.clone().unwrap_or_default(),
            category,
            urls,
            tcp: ports(raw.tcp_ports.as_deref()),
            udp: ports(raw.udp_ports.as_deref()),
        })
    }
}

/// Microsoft's set ids fit the first instance's range of the kernel's set ids.
fn check_id(id: u32) -> Result<(), String> {
    if id == 0 || id >= classifier_common::M365_SET_IDS {
        return Err(format!(
            "endpoint set ids must be 1..{}",
            classifier_common::M365_SET_IDS
        ));
    }
    Ok(())
}

impl EndpointSet {
    /// The set without its prefixes (to give it others).
    #[must_use]
    pub fn clone_without_prefixes(&self) -> Self {
        Self {
            id: self.id,
            service_area: self.service_area.clone(),
            category: self.category,
            prefixes: Vec::new(),
            tcp: self.tcp.clone(),
            udp: self.udp.clone(),
            by_address: self.by_address,
        }
    }

    fn from_raw(raw: RawSet) -> Result<Option<Self>, FeedError> {
        let RawSet {
            id,
            service_area,
            category,
            ips,
            urls: _,
            tcp_ports,
            udp_ports,
        } = raw;
        let invalid = |field, value: &str, reason: String| FeedError::Invalid {
            set: id,
            field,
            value: value.to_owned(),
            reason,
        };
        let Some(ips) = ips.filter(|ips| !ips.is_empty()) else {
            return Ok(None);
        };
        let category = category
            .parse()
            .map_err(|reason| invalid("category", &category, reason))?;
        check_id(id).map_err(|reason| invalid("id", &id.to_string(), reason))?;
        let prefixes = ips
            .iter()
            .map(|ip| parse_prefix(ip).map_err(|reason| invalid("ips", ip, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let tcp = parse_ports(tcp_ports.as_deref()).map_err(|reason| {
            invalid("tcpPorts", tcp_ports.as_deref().unwrap_or_default(), reason)
        })?;
        let udp = parse_ports(udp_ports.as_deref()).map_err(|reason| {
            invalid("udpPorts", udp_ports.as_deref().unwrap_or_default(), reason)
        })?;
        Ok(Some(Self {
            id,
            service_area: service_area.unwrap_or_default(),
            category,
            prefixes,
            tcp,
            udp,
            by_address: true,
        }))
    }
}

/// A CIDR prefix in canonical form: host bits clear. A bare address is a host prefix.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err("not an IP prefix".to_owned()),
        },
    };
    if net.trunc() != net {
        return Err(format!("host bits are set (the prefix is {})", net.trunc()));
    }
    Ok(net)
}

/// `"80,443"`, `"143, 587"`, `"1024-65535"`; absent or empty means no ports.
pub fn parse_ports(text: Option<&str>) -> Result<Vec<PortRange>, String> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let mut ranges = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        // Port 0 is reserved (RFC 6335) and no destination: it would only widen a range.
        let port = |s: &str| match s.trim().parse::<u16>() {
            Ok(0) => Err("port 0 is not a destination port".to_owned()),
            Ok(port) => Ok(port),
            Err(_) => Err(format!("{s:?} is not a port number")),
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        if lo > hi {
            return Err(format!("range {item:?} runs backwards"));
        }
        ranges.push(PortRange { lo, hi });
    }
    ranges.sort_unstable();
    ranges.dedup();
    Ok(ranges)
}

/// A category spelled as Microsoft does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CategoryName(pub Category);

impl Serialize for CategoryName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CategoryName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map(CategoryName)
            .map_err(serde::de::Error::custom)
    }
}

impl FromStr for CategoryName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(CategoryName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEED_2026043000: &[u8] =
        include_bytes!("../../tests/fixtures/m365-worldwide-endpoints-2026043000.json");
    const FEED_2020: &[u8] =
        include_bytes!("../../tests/fixtures/m365-worldwide-endpoints-2020-05-31.json");

    #[test]
    fn parses_the_real_feed() {
        let feed = Feed::parse(FEED_2026043000).unwrap();
        assert_eq!(feed.total_sets, 63);
        assert_eq!(feed.sets.len(), 10);
        assert_eq!(feed.prefix_counts(), (34, 59));
        let teams = feed.sets.iter().find(|set| set.id == 11).unwrap();
        assert_eq!(teams.category, Category::Optimize);
        assert_eq!(
            teams.udp,
            [
                PortRange { lo: 3478, hi: 3478 },
                PortRange { lo: 3479, hi: 3479 },
                PortRange { lo: 3480, hi: 3480 },
                PortRange { lo: 3481, hi: 3481 }
            ]
        );
        assert!(teams.tcp.is_empty());
        let exchange_allow = feed.sets.iter().find(|set| set.id == 2).unwrap();
        assert_eq!(exchange_allow.tcp.len(), 4, "ports with spaces");
    }

    #[test]
    fn parses_the_2020_service_output_with_crlf() {
        let feed = Feed::parse(FEED_2020).unwrap();
        assert_eq!(feed.total_sets, 115);
        assert_eq!(feed.prefix_counts(), (50, 105));
    }

    #[test]
    fn ignores_unknown_fields_and_null_ports() {
        let feed = Feed::parse(br#"[{"id":5,"serviceArea":"X","category":"Allow","ips":["10.0.0.0/8"],"udpPorts":null,"newField":{"a":1}}]"#).unwrap();
        assert_eq!(feed.sets[0].tcp, []);
        assert_eq!(feed.sets[0].udp, []);
    }

    #[test]
    fn rejects_what_would_make_a_wrong_entry() {
        let cases: [(&[u8], &str); 10] = [
            (b"[]", "feed has no endpoint sets"),
            (b"<html>502</html>", "not valid JSON"),
            (br#"[{"id":1,"category":"Allow","urls":["a"]}]"#, "no IP prefixes"),
            (br#"[{"id":1,"category":"Allow","ips":["10.0.0.1/8"]}]"#, r#"endpoint set 1: ips "10.0.0.1/8": host bits are set (the prefix is 10.0.0.0/8)"#),
            (br#"[{"id":1,"category":"Allow","ips":["10.0.0.0/33"]}]"#, "not an IP prefix"),
            (br#"[{"id":1,"category":"Fast","ips":["10.0.0.0/8"]}]"#, "unknown category"),
            (br#"[{"id":1,"category":"Allow","ips":["10.0.0.0/8"],"tcpPorts":"80,99999"}]"#, r#"tcpPorts "80,99999": "99999" is not a port number"#),
            (br#"[{"id":1,"category":"Allow","ips":["10.0.0.0/8"],"udpPorts":"0"}]"#, r#"udpPorts "0": port 0 is not a destination port"#),
            (br#"[{"id":1,"category":"Allow","ips":["10.0.0.0/8"],"tcpPorts":"0-443"}]"#, r#"tcpPorts "0-443": port 0"#),
            (br#"[{"id":1,"category":"Allow","ips":["10.0.0.0/8"]},{"id":1,"category":"Allow","ips":["10.0.0.0/8"]}]"#, "appears twice"),
        ];
        for (body, expected) in cases {
            let error = Feed::parse(body).unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn port_lists_take_spaces_and_ranges() {
        assert_eq!(
            parse_ports(Some(" 143, 587 ,1024-1030,")).unwrap(),
            [
                PortRange { lo: 143, hi: 143 },
                PortRange { lo: 587, hi: 587 },
                PortRange { lo: 1024, hi: 1030 }
            ]
        );
        assert!(parse_ports(Some("9-1")).is_err());
        assert_eq!(parse_ports(None).unwrap(), []);
    }
}
