//! One configured source (`[[sources]]`): where its file comes from, what it takes from it,
//! and the endpoint sets its file turns into, numbered in the source's own range of set ids.

use std::{path::PathBuf, time::Duration};

use classifier_common::{M365_SET_IDS, MAX_M365_INSTANCES, MAX_SET_ID, SOURCE_SET_BASE};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Kind, Ranges, SourceError, aws, azure, cidr_list, google};
use crate::{
    client::{DEFAULT_FEED_URL, FeedConfig, INSTANCES},
    feed::{Category, EndpointSet, Feed, NamedSet, PortRange, parse_ports},
    gate::{self, PrefixLimits},
    settings::format_duration,
};

/// What a source's prefixes do: go out of the direct uplink, or stay in the tunnel (a
/// narrower exception inside a wider direct range, from a list).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourcePolicy {
    #[default]
    Direct,
    Tunnel,
}

/// One `[[sources]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceConfig {
    /// How the source is named in logs, `sources`, `lookup` and `--source`.
    pub name: String,
    pub kind: Kind,
    /// Where the file is fetched from (`https://`; `http://` with `allow-http`); for `m365`,
    /// the web service's base URL (default `https://endpoints.office.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A local file instead of a URL (Azure's weekly file has no stable URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// How often the file is checked; up to 10% jitter is added.
    #[serde(default = "default_refresh", with = "crate::settings::duration_text")]
    pub refresh: Duration,
    /// `direct` (default) or `tunnel`; `m365` takes `[policy] direct` per category instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SourcePolicy>,
    /// TCP ports (`"80,443"`, `"1024-65535"`); with neither `tcp` nor `udp`, every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<String>,
    /// `aws`: `service` names; `google`: `service` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// `aws`: `region` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// `azure-service-tags`: tag names (`AzureFrontDoor.Frontend`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `google`: `scope` names (`us-central1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// `m365`: Worldwide, China, USGovDoD or USGovGCCHigh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `m365`: only these service areas. Naming `MEM` (Intune) asks the service for it,
    /// which it leaves out otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_areas: Vec<String>,
    /// `m365`: the tenant, for tenant-specific URLs (no effect on addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_name: Option<String>,
    /// Leave the source's IPv6 prefixes out.
    #[serde(default)]
    pub no_ipv6: bool,
    /// Accept a plain `http://` URL.
    #[serde(default)]
    pub allow_http: bool,
    /// A file that would remove more than this share (percent) of the source's prefixes is
    /// refused unless forced; default `feed.max-shrink-percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shrink_percent: Option<u8>,
    /// A file whose added and removed prefixes together exceed this share (percent) of the
    /// source's installed prefixes is refused unless forced; default `feed.max-churn-percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_churn_percent: Option<u16>,
    /// A file that would add more than this share of IPv4 (of global unicast IPv6) to what
    /// the source's installed prefixes cover is refused unless forced; default
    /// `feed.max-added-v4` (`feed.max-added-v6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_added_v4: Option<crate::settings::Share>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_added_v6: Option<crate::settings::Share>,
}

fn default_refresh() -> Duration {
    Duration::from_hours(1)
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a source's file compiles to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Its endpoint sets, numbered from the source's first set id.
    pub sets: Vec<EndpointSet>,
    /// A Microsoft 365 feed's sets that name hosts (every service area), numbered the same:
    /// what the PAC file and DNS learning read.
    pub named: Vec<NamedSet>,
    /// The version the file states (AWS and Google `syncToken`, Azure `changeNumber`).
    pub version: Option<String>,
    /// Distinct prefixes, IPv4 and IPv6.
    pub v4: usize,
    pub v6: usize,
}

/// The configured instance of an `m365` source.
#[must_use]
pub fn m365_instance(config: &SourceConfig) -> &str {
    config.instance.as_deref().unwrap_or("Worldwide")
}

// Here, not in `client` beside the type: the sources' fetcher uses the feed client, so the
// sources know the feed and not the reverse.
impl FeedConfig {
    /// `[feed]` is shorthand for the `m365` source: this one.
    #[must_use]
    pub fn source(&self) -> SourceConfig {
        SourceConfig {
            name: super::M365.to_owned(),
            kind: Kind::M365,
            url: Some(self.url.clone()),
            path: None,
            refresh: self.poll_interval,
            policy: None,
            tcp: None,
            udp: None,
            services: Vec::new(),
            regions: Vec::new(),
            tags: Vec::new(),
            scopes: Vec::new(),
            instance: Some(self.instance.clone()),
            service_areas: self.service_areas.clone(),
            tenant_name: self.tenant_name.clone(),
            no_ipv6: self.no_ipv6,
            allow_http: self.allow_http,
            max_shrink_percent: Some(self.max_shrink_percent),
            max_churn_percent: Some(self.max_churn_percent),
            max_added_v4: Some(self.max_added_v4),
            max_added_v6: Some(self.max_added_v6),
        }
    }
}

/// The first set id of each source of [`crate::config::Config::all_sources`], in order:
/// `m365` sources [`M365_SET_IDS`] each from 0 (`[feed]`'s sets keep Microsoft's ids); the
/// others one each from [`SOURCE_SET_BASE`].
pub fn first_set_ids(sources: &[SourceConfig]) -> Result<Vec<u32>, String> {
    let (mut m365, mut other) = (0, SOURCE_SET_BASE);
    let mut ids = Vec::with_capacity(sources.len());
    for source in sources {
        if source.kind == Kind::M365 {
            if m365 >= MAX_M365_INSTANCES {
                return Err(format!(
                    "source {:?}: at most {} Microsoft 365 instances ([feed] and {} sources)",
                    source.name,
                    MAX_M365_INSTANCES,
                    MAX_M365_INSTANCES - 1
                ));
            }
            ids.push(m365 * M365_SET_IDS);
            m365 += 1;
        } else {
            if other >= MAX_SET_ID {
                return Err(format!(
                    "source {:?}: at most {} sources of other kinds",
                    source.name,
                    MAX_SET_ID - SOURCE_SET_BASE
                ));
            }
            ids.push(other);
            other += 1;
        }
    }
    Ok(ids)
}

/// The set id of the first `[[domains]]` rule: after the other sources'.
#[must_use]
pub fn domain_set_base(sources: &[SourceConfig]) -> u32 {
    SOURCE_SET_BASE
        + u32::try_from(
            sources
                .iter()
                .filter(|source| source.kind != Kind::M365)
                .count(),
        )
        .unwrap_or(u32::MAX)
}

/// Every port of a protocol: what a source without `tcp` and `udp` claims.
pub const ALL_PORTS: PortRange = PortRange {
    lo: 0,
    hi: u16::MAX,
};

/// `[a-z0-9][a-z0-9._-]{0,31}`: safe in a file name, a log line and a label.
#[must_use]
pub fn is_source_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && name.len() <= 32
        && bytes.all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'_' | b'-')
        })
}

/// Why one `[[sources]]` entry is refused; the configuration names the section.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("name {name:?}: 1 to 32 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    Name { name: String },
    #[error("source {name:?}: {why}")]
    Key { name: String, why: String },
}

impl SourceConfig {
    /// Where the file comes from, for messages.
    #[must_use]
    pub fn location(&self) -> String {
        match (&self.url, &self.path) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => DEFAULT_FEED_URL.to_owned(),
        }
    }

    /// The category of its sets (`m365` keeps Microsoft's).
    #[must_use]
    pub fn category(&self) -> Category {
        match self.policy.unwrap_or_default() {
            SourcePolicy::Direct => Category::Direct,
            SourcePolicy::Tunnel => Category::Tunnel,
        }
    }

    /// Its ports: every port of both protocols when neither is given.
    pub fn ports(&self) -> Result<(Vec<PortRange>, Vec<PortRange>), String> {
        if self.tcp.is_none() && self.udp.is_none() {
            return Ok((vec![ALL_PORTS], vec![ALL_PORTS]));
        }
        let tcp = parse_ports(self.tcp.as_deref()).map_err(|why| format!("tcp: {why}"))?;
        let udp = parse_ports(self.udp.as_deref()).map_err(|why| format!("udp: {why}"))?;
        Ok((tcp, udp))
    }

    /// A well-formed name, one place to fetch from, only the keys its kind takes, ports that
    /// parse, and nothing that trusts a plain `http://` without `allow-http`.
    pub fn validate(&self) -> Result<(), EntryError> {
        let name = &self.name;
        if !is_source_name(name) {
            return Err(EntryError::Name { name: name.clone() });
        }
        let at = |why: String| {
            Err(EntryError::Key {
                name: name.clone(),
                why,
            })
        };
        match (self.kind, &self.url, &self.path) {
            (_, Some(_), Some(_)) => return at("give url or path, not both".to_owned()),
            (Kind::M365, _, Some(_)) => {
                return at(
                    "an m365 source is fetched from its web service: url, not path".to_owned(),
                );
            }
            (Kind::M365, _, None) => {}
            (_, None, None) => return at("give url or path".to_owned()),
            _ => {}
        }
        if let Some(url) = &self.url {
            if url.starts_with("http://") {
                if !self.allow_http {
                    return at(format!(
                        "url {url:?} is plain HTTP: anyone on the path can answer for the \
                         source; use https://, or allow-http = true on a trusted network"
                    ));
                }
            } else if !url.starts_with("https://") {
                return at(format!("url {url:?} is not an https:// URL"));
            }
        }
        if let Some(path) = &self.path
            && !path.is_absolute()
        {
            return at(format!("path {} is not absolute", path.display()));
        }
        if self.refresh < Duration::from_secs(1) || self.refresh > Duration::from_hours(7 * 24) {
            return at(format!(
                "refresh {} is outside 1s..=7d",
                format_duration(self.refresh)
            ));
        }
        if self.kind == Kind::M365 && self.policy.is_some() {
            return at("an m365 source goes by category ([policy] direct), not policy".to_owned());
        }
        if self.kind == Kind::M365 && (self.tcp.is_some() || self.udp.is_some()) {
            return at("an m365 source takes its ports from the feed".to_owned());
        }
        if let Err(why) = self.ports() {
            return at(why);
        }
        if let Some(instance) = &self.instance
            && !INSTANCES.contains(&instance.as_str())
        {
            return at(format!(
                "instance {instance:?} is not one of {}",
                INSTANCES.join(", ")
            ));
        }
        if self.max_shrink_percent.is_some_and(|percent| percent > 100) {
            return at("max-shrink-percent must be 0..=100".to_owned());
        }
        if let Some(key) = self.foreign_filter() {
            return at(format!("a {} source has no {key} filter", self.kind));
        }
        Ok(())
    }

    /// A filter key this source sets that its kind has not got.
    fn foreign_filter(&self) -> Option<&'static str> {
        let takes: &[&str] = match self.kind {
            Kind::M365 => &["instance", "service-areas"],
            Kind::Aws => &["services", "regions"],
            Kind::AzureServiceTags => &["tags"],
            Kind::Google => &["services", "scopes"],
            Kind::CidrList => &[],
        };
        [
            ("instance", self.instance.is_some()),
            ("service-areas", !self.service_areas.is_empty()),
            ("services", !self.services.is_empty()),
            ("regions", !self.regions.is_empty()),
            ("tags", !self.tags.is_empty()),
            ("scopes", !self.scopes.is_empty()),
        ]
        .into_iter()
        .find(|(key, given)| *given && !takes.contains(key))
        .map(|(key, _)| key)
    }

    /// Compiles a file of this source into endpoint sets from set id `first`, checking every
    /// prefix with the gate's `limits` (too short, special-purpose space).
    pub fn parse(
        &self,
        first: u32,
        body: &[u8],
        limits: PrefixLimits,
    ) -> Result<Parsed, SourceError> {
        let ranges = match self.kind {
            Kind::M365 => return self.parse_m365(first, body, limits),
            Kind::Aws => aws::parse(
                body,
                &aws::Filter {
                    services: self.services.clone(),
                    regions: self.regions.clone(),
                },
            )?,
            Kind::AzureServiceTags => azure::parse(
                body,
                &azure::Filter {
                    tags: self.tags.clone(),
                },
            )?,
            Kind::Google => google::parse(
                body,
                &google::Filter {
                    scopes: self.scopes.clone(),
                    services: self.services.clone(),
                },
            )?,
            Kind::CidrList => cidr_list::parse(body)?,
        };
        let Ranges {
            v4,
            mut v6,
            version,
        } = ranges;
        if self.no_ipv6 {
            v6.clear();
        }
        let prefixes: Vec<IpNet> = v4
            .iter()
            .copied()
            .map(IpNet::V4)
            .chain(v6.iter().copied().map(IpNet::V6))
            .collect();
        for net in &prefixes {
            gate::check_prefix(first, *net, limits).map_err(|error| SourceError::Refused {
                kind: self.kind,
                why: error.to_string(),
            })?;
        }
        let (tcp, udp) = self.ports().map_err(|why| SourceError::Refused {
            kind: self.kind,
            why,
        })?;
        let by_address = self.tcp.is_none() && self.udp.is_none();
        Ok(Parsed {
            v4: v4.len(),
            v6: v6.len(),
            version,
            named: Vec::new(),
            sets: vec![EndpointSet {
                id: first,
                service_area: self.name.clone(),
                category: self.category(),
                prefixes,
                tcp,
                udp,
                by_address,
            }],
        })
    }

    fn parse_m365(
        &self,
        first: u32,
        body: &[u8],
        limits: PrefixLimits,
    ) -> Result<Parsed, SourceError> {
        let refused = |why: String| SourceError::Refused {
            kind: Kind::M365,
            why,
        };
        let feed = Feed::parse(body)?;
        gate::check_feed(&feed, limits).map_err(|error| refused(error.to_string()))?;
        let mut sets = filter_m365(feed.sets, &self.service_areas, self.no_ipv6);
        for set in &mut sets {
            set.id += first;
        }
        let mut named = feed.named;
        for set in &mut named {
            set.id += first;
        }
        let mut all: Vec<IpNet> = sets.iter().flat_map(|set| set.prefixes.clone()).collect();
        all.sort_unstable();
        all.dedup();
        if all.is_empty() {
            return Err(SourceError::Empty {
                kind: Kind::M365,
                entries: feed.total_sets,
                filter: super::describe("service areas", &self.service_areas),
            });
        }
        let v4 = all.iter().filter(|net| matches!(net, IpNet::V4(_))).count();
        Ok(Parsed {
            v4,
            v6: all.len() - v4,
            version: None,
            sets,
            named,
        })
    }
}

/// A feed's sets that `service_areas` takes (case-insensitive; empty takes all), without
/// IPv6 when `no_ipv6`.
#[must_use]
pub fn filter_m365(
    sets: Vec<EndpointSet>,
    service_areas: &[String],
    no_ipv6: bool,
) -> Vec<EndpointSet> {
    let mut sets: Vec<EndpointSet> = sets
        .into_iter()
        .filter(|set| {
            service_areas.is_empty()
                || service_areas
                    .iter()
                    .any(|area| area.eq_ignore_ascii_case(&set.service_area))
        })
        .collect();
    if no_ipv6 {
        for set in &mut sets {
            set.prefixes.retain(|net| matches!(net, IpNet::V4(_)));
        }
        sets.retain(|set| !set.prefixes.is_empty());
    }
    sets
}

/// Whether a set id belongs to the source whose first id is `first`.
#[must_use]
pub fn owns(kind: Kind, first: u32, id: u32) -> bool {
    match kind {
        Kind::M365 => (first..first + M365_SET_IDS).contains(&id),
        _ => id == first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> SourceConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn ids_are_laid_out_by_kind() {
        let sources = [
            FeedConfig::default().source(),
            source("name = \"zoom\"\nkind = \"cidr-list\"\npath = \"/x\""),
            source("name = \"gcc\"\nkind = \"m365\"\ninstance = \"USGovGCCHigh\""),
            source("name = \"aws\"\nkind = \"aws\"\nurl = \"https://x\""),
        ];
        assert_eq!(
            first_set_ids(&sources).unwrap(),
            [0, SOURCE_SET_BASE, M365_SET_IDS, SOURCE_SET_BASE + 1]
        );
        let many: Vec<SourceConfig> = (0..5)
            .map(|i| source(&format!("name = \"m{i}\"\nkind = \"m365\"")))
            .collect();
        let error = first_set_ids(&many).unwrap_err();
        assert!(error.contains("\"m4\": at most 4"), "{error}");
    }

    #[test]
    fn a_list_becomes_one_set_with_its_ports() {
        let zoom = source(
            "name = \"zoom\"\nkind = \"cidr-list\"\npath = \"/x\"\nudp = \"3478-3479, 8801-8810\"",
        );
        let parsed = zoom
            .parse(
                SOURCE_SET_BASE,
                include_bytes!("../../../tests/fixtures/providers/zoom-ipranges-20220109.txt"),
                PrefixLimits::default(),
            )
            .unwrap();
        assert_eq!((parsed.v4, parsed.v6, parsed.sets.len()), (122, 0, 1));
        let set = &parsed.sets[0];
        assert_eq!(
            (
                set.id,
                set.category,
                set.by_address,
                set.tcp.len(),
                set.udp.len()
            ),
            (SOURCE_SET_BASE, Category::Direct, false, 0, 2)
        );
        let every =
            source("name = \"cf\"\nkind = \"cidr-list\"\npath = \"/x\"\npolicy = \"tunnel\"");
        let parsed = every
            .parse(
                SOURCE_SET_BASE + 1,
                b"104.16.0.0/13\n",
                PrefixLimits::default(),
            )
            .unwrap();
        let set = &parsed.sets[0];
        assert_eq!(
            (set.category, set.by_address, set.tcp.as_slice()),
            (Category::Tunnel, true, [ALL_PORTS].as_slice())
        );
    }

    #[test]
    fn special_and_short_prefixes_are_refused_with_the_kind() {
        let list = source("name = \"mine\"\nkind = \"cidr-list\"\npath = \"/x\"");
        let error = list
            .parse(
                SOURCE_SET_BASE,
                b"192.0.2.0/24\n10.0.0.0/8\n",
                PrefixLimits::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("cidr-list: refused: "), "{error}");
        assert!(error.contains("10.0.0.0/8"), "{error}");
    }

    #[test]
    fn an_m365_instance_is_renumbered_into_its_range() {
        let gcc = source("name = \"gcc\"\nkind = \"m365\"\nservice-areas = [\"Skype\"]");
        let parsed = gcc
            .parse(
                M365_SET_IDS,
                include_bytes!("../../../tests/fixtures/m365-worldwide-endpoints-2026043000.json"),
                PrefixLimits::default(),
            )
            .unwrap();
        assert!(!parsed.sets.is_empty());
        assert!(
            parsed
                .sets
                .iter()
                .all(|set| owns(Kind::M365, M365_SET_IDS, set.id) && set.service_area == "Skype"),
            "{:?}",
            parsed.sets.iter().map(|set| set.id).collect::<Vec<_>>()
        );
    }

    fn feed_sets(body: &[u8]) -> Vec<EndpointSet> {
        Feed::parse(body).unwrap().sets
    }

    fn file<'a>(version: Option<&'a str>, sets: &'a [EndpointSet]) -> gate::File<'a> {
        gate::File {
            version,
            sha256: "same",
            sets,
        }
    }

    /// The providers' real whole files (no filter) pass every gate at the defaults: as a
    /// first file, and over themselves.
    #[test]
    fn the_real_files_pass_every_gate_at_the_defaults() {
        let feed = FeedConfig::default();
        let limits = gate::ChangeLimits {
            max_shrink_percent: feed.max_shrink_percent,
            shrink_key: "",
            max_churn_percent: Some(feed.max_churn_percent),
            churn_key: "",
            max_added_v4: feed.max_added_v4,
            max_added_v6: feed.max_added_v6,
            added_key: "",
        };
        let files: [(&str, &[u8]); 6] = [
            (
                "aws",
                include_bytes!("../../../tests/fixtures/providers/aws-ip-ranges-1753388594.json"),
            ),
            (
                "azure-service-tags",
                include_bytes!(
                    "../../../tests/fixtures/providers/azure-service-tags-public-363.json"
                ),
            ),
            (
                "google",
                include_bytes!("../../../tests/fixtures/providers/google-cloud-1753409788780.json"),
            ),
            (
                "cidr-list",
                include_bytes!("../../../tests/fixtures/providers/zoom-ipranges-20220109.txt"),
            ),
            (
                "cidr-list",
                include_bytes!("../../../tests/fixtures/providers/cloudflare-ips-v4.txt"),
            ),
            (
                "cidr-list",
                include_bytes!("../../../tests/fixtures/providers/cloudflare-ips-v6.txt"),
            ),
        ];
        for (kind, body) in files {
            let config: SourceConfig =
                toml::from_str(&format!("name = \"x\"\nkind = \"{kind}\"\npath = \"/x\"")).unwrap();
            let parsed = config.parse(4096, body, PrefixLimits::default()).unwrap();
            let file = file(parsed.version.as_deref(), &parsed.sets);
            let hint = gate::Hint(String::new());
            gate::judge(&hint, None, file, limits)
                .unwrap_or_else(|error| panic!("{kind}: {error}"));
            gate::judge(&hint, Some(file), file, limits)
                .unwrap_or_else(|error| panic!("{kind}: {error}"));
        }
        // Microsoft's own feeds, first and from one version to the next.
        let old = feed_sets(include_bytes!(
            "../../../tests/fixtures/m365-worldwide-endpoints-2026033100.json"
        ));
        let new = feed_sets(include_bytes!(
            "../../../tests/fixtures/m365-worldwide-endpoints-2026043000.json"
        ));
        gate::judge(
            &gate::Hint(String::new()),
            None,
            file(Some("2026033100"), &old),
            limits,
        )
        .unwrap();
        gate::judge(
            &gate::Hint(String::new()),
            Some(file(Some("2026033100"), &old)),
            file(Some("2026043000"), &new),
            limits,
        )
        .unwrap();
    }
}
