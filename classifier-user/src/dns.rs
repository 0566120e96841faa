//! Learning the addresses of URL-only endpoints from the DNS answers clients get.
//!
//! `breakout_dns` (tc egress on the LAN interface) copies each DNS answer leaving for a
//! client. Here an answer is parsed with `hickory-proto`, its CNAME chain followed from the
//! question within the message, and every name of the chain matched against the feed's URL
//! patterns and the operator's `[[domains]]` rules. Each A and AAAA address of a matching
//! name becomes a member of the matching endpoint sets until its TTL (raised to a floor,
//! capped, plus a grace period) runs out.
//!
//! Only answers to queries the router saw are taken: the kernel records each query a LAN
//! client sends and copies an answer only when it matches one (client address and port,
//! resolver, id, question, in time, once), and here the answer must come from a trusted
//! resolver (`[dns] resolvers`) and carry the question recorded. Nothing in an answer is
//! trusted beyond its checks: a message that does not parse, is no
//! answer, or whose chain loops is ignored and counted; an address in special-purpose space
//! (private, loopback, link-local, multicast, documentation, ...) is ignored and counted;
//! entries are capped in total and per name. A full cap evicts the least recently used
//! address no live flow holds, so that a flood of answers cannot lock real ones out; only
//! when a live flow holds every candidate is a new address refused.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, RecordType},
};
use serde::{Deserialize, Serialize};

use crate::{
    feed::{Category, EndpointSet, PortRange},
    settings::{Invalid, duration_text, within},
    sources::SourcePolicy,
};

/// Learning the addresses of URL-only endpoints from the DNS answers clients get.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct DnsConfig {
    /// Record the DNS queries LAN clients send, copy the answers to them at the LAN
    /// interfaces' tc egress, and learn from those. Takes effect at start.
    pub learn: bool,
    /// The resolvers whose answers are learned. Empty: the router's own addresses on its LAN
    /// interfaces, so that a resolver on the router works without configuration.
    pub resolvers: Vec<IpAddr>,
    /// A learned address is kept at least this long, whatever its TTL says...
    #[serde(with = "duration_text")]
    pub min_ttl: Duration,
    /// ... and at most this long, then for `grace` more (longer while flows still use it).
    #[serde(with = "duration_text")]
    pub max_ttl: Duration,
    #[serde(with = "duration_text")]
    pub grace: Duration,
    /// Learned addresses in all, and for one name.
    pub max_learned: u32,
    pub max_per_name: u32,
    /// The resolvers reached through the direct uplink (the ISP's, or a public one): the
    /// names that go direct are forwarded to them, so that Microsoft's DNS answers front
    /// doors near the branch, not near the head office (see [`crate::dnsconfig`]).
    pub local_resolvers: Vec<Resolver>,
    /// The forward-zone file the daemon keeps written; unset: it writes none (`xdp-breakout
    /// dns-config` prints it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_config: Option<PathBuf>,
    /// The resolver that reads it: dnsmasq or unbound.
    pub local_format: LocalFormat,
    /// A command (argv, no shell) run after the file changed, so that the resolver reads it.
    pub local_reload: Vec<String>,
    /// The routing table the resolver's own queries to `local-resolvers` are sent to; unset:
    /// the table of the `ip rule` that matches `[policy] mark`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_table: Option<u32>,
}

/// A resolver's address: `192.0.2.53`, `2001:db8::53`, `[2001:db8::53]:5353`,
/// `198.51.100.7:53`; the port is 53 unless given. Written back without the port when it is
/// 53, so that `config check` prints what the operator wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resolver(pub SocketAddr);

impl Resolver {
    #[must_use]
    pub fn ip(self) -> IpAddr {
        self.0.ip()
    }

    #[must_use]
    pub fn port(self) -> u16 {
        self.0.port()
    }
}

impl std::str::FromStr for Resolver {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self(SocketAddr::new(ip, 53)));
        }
        text.parse::<SocketAddr>().map(Self).map_err(|_| {
            format!(
                "{text:?} is not an address with an optional port (192.0.2.53, \
                 198.51.100.7:53, [2001:db8::53]:5353)"
            )
        })
    }
}

impl fmt::Display for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port() == 53 {
            write!(f, "{}", self.ip())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for Resolver {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Resolver {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The resolver that reads the forward-zone file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LocalFormat {
    /// `server=/zone/addr` lines: a dnsmasq `servers-file` (re-read on SIGHUP) or `conf-file`.
    #[default]
    Dnsmasq,
    /// `forward-zone:` clauses, `include:`d at the top level of `unbound.conf`.
    Unbound,
}

/// Local resolvers at most: each is a forward target of every zone, and a policy rule.
pub const MAX_LOCAL_RESOLVERS: usize = 8;

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            learn: true,
            resolvers: Vec::new(),
            min_ttl: Duration::from_mins(1),
            max_ttl: Duration::from_hours(24),
            grace: Duration::from_mins(5),
            max_learned: 16384,
            max_per_name: 32,
            local_resolvers: Vec::new(),
            local_config: None,
            local_format: LocalFormat::Dnsmasq,
            local_reload: Vec::new(),
            local_table: None,
        }
    }
}

/// An operator's name rule: addresses of matching names go `direct` or `tunnel`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DomainRule {
    /// An exact name or a `*` pattern (`*.zoom.us`).
    pub name: String,
    #[serde(default)]
    pub policy: SourcePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<String>,
}

impl DnsConfig {
    /// Refuses a TTL floor beyond a day, a cap below the floor or beyond a week, and table
    /// limits of 0 (nothing would be learned) or past their bounds.
    pub fn validate(&self) -> Result<(), Invalid> {
        within(
            "min-ttl",
            self.min_ttl,
            Duration::from_secs(1),
            Duration::from_hours(24),
        )?;
        within(
            "max-ttl",
            self.max_ttl,
            self.min_ttl,
            Duration::from_hours(7 * 24),
        )?;
        within(
            "grace",
            self.grace,
            Duration::ZERO,
            Duration::from_hours(24),
        )?;
        if !(1..=1 << 20).contains(&self.max_learned) {
            return Err(Invalid::new("max-learned", "must be 1..=1048576"));
        }
        if !(1..=4096).contains(&self.max_per_name) {
            return Err(Invalid::new("max-per-name", "must be 1..=4096"));
        }
        if self.resolvers.len() > MAX_RESOLVERS {
            return Err(Invalid::new(
                "resolvers",
                format!("at most {MAX_RESOLVERS} addresses"),
            ));
        }
        if let Some(bad) = self.resolvers.iter().find(|addr| {
            addr.is_unspecified()
                || addr.is_multicast()
                || *addr == &IpAddr::from([255, 255, 255, 255])
        }) {
            return Err(Invalid::new(
                "resolvers",
                format!("{bad} cannot be a resolver's address"),
            ));
        }
        self.validate_local()
    }

    /// The local-DNS keys: resolvers that can be resolvers (not unspecified, multicast or
    /// broadcast, no port 0), each once and at most [`MAX_LOCAL_RESOLVERS`]; an absolute
    /// file that has resolvers to name; a reload command with a program; a table that is
    /// neither `unspec` (0) nor `local` (255).
    pub fn validate_local(&self) -> Result<(), Invalid> {
        if self.local_resolvers.len() > MAX_LOCAL_RESOLVERS {
            return Err(Invalid::new(
                "local-resolvers",
                format!(
                    "{} resolvers; at most {MAX_LOCAL_RESOLVERS}",
                    self.local_resolvers.len()
                ),
            ));
        }
        for (i, resolver) in self.local_resolvers.iter().enumerate() {
            let ip = resolver.ip();
            let why = if ip.is_unspecified() {
                Some("is unspecified")
            } else if ip.is_multicast() {
                Some("is multicast")
            } else if ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
                Some("is broadcast")
            } else if resolver.port() == 0 {
                Some("has port 0")
            } else if self.local_resolvers[..i].contains(resolver) {
                Some("is given twice")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Invalid::new(
                    "local-resolvers",
                    format!("{resolver} {why}: no resolver answers there"),
                ));
            }
        }
        if let Some(path) = &self.local_config {
            if !path.is_absolute() {
                return Err(Invalid::new(
                    "local-config",
                    format!("{} is not an absolute path", path.display()),
                ));
            }
            if path.file_name().is_none() {
                return Err(Invalid::new(
                    "local-config",
                    format!("{} names no file", path.display()),
                ));
            }
            if self.local_resolvers.is_empty() {
                return Err(Invalid::new(
                    "local-config",
                    "needs local-resolvers: the resolvers the file forwards to",
                ));
            }
        }
        if self
            .local_reload
            .first()
            .is_some_and(|program| program.trim().is_empty())
        {
            return Err(Invalid::new(
                "local-reload",
                "the first word must be the program to run",
            ));
        }
        if let Some(table) = self.local_table
            && (table == 0 || table == 255)
        {
            return Err(Invalid::new(
                "local-table",
                format!(
                    "{table} is the kernel's {} table",
                    if table == 0 { "unspec" } else { "local" }
                ),
            ));
        }
        Ok(())
    }
}

impl DnsConfig {
    /// Learning with no trusted resolver in reach teaches nothing: `[dns] resolvers` is empty
    /// (the router's own LAN addresses) and nothing on this host listens on UDP port 53.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        if !self.learn || !self.resolvers.is_empty() {
            return None;
        }
        let listening = ["/proc/net/udp", "/proc/net/udp6"].iter().any(|path| {
            std::fs::read_to_string(path).is_ok_and(|table| udp_port_bound(&table, 53))
        });
        (!listening).then(|| {
            "dns.learn: dns.resolvers is empty, so only a resolver on this router is trusted, and \
             none listens on UDP port 53 here: no answer will be learned and URL-only endpoints \
             stay in the tunnel; run one for the LAN (dnsmasq, unbound) or list the LAN's \
             resolvers in dns.resolvers"
                .to_owned()
        })
    }
}

/// Whether a `/proc/net/udp` (or `udp6`) table has a socket bound to local `port`.
fn udp_port_bound(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(1)
            .and_then(|local| local.rsplit_once(':'))
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
            == Some(port)
    })
}

/// `[dns] resolvers` at most.
pub const MAX_RESOLVERS: usize = 64;

/// `[[domains]]` rules at most: each one is an endpoint set of its own.
pub const MAX_DOMAIN_RULES: usize = 1024;

/// Why the `[[domains]]` rules are refused; the configuration names the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainsError {
    #[error("{name:?} is not a name or a name pattern")]
    Name { name: String },
    #[error("{name:?}: {protocol}: {why}")]
    Ports {
        name: String,
        protocol: &'static str,
        why: String,
    },
    #[error("at most {MAX_DOMAIN_RULES} rules")]
    TooMany,
}

/// Every rule names something a DNS answer can carry, with ports that parse.
pub fn validate_domains(rules: &[DomainRule]) -> Result<(), DomainsError> {
    for rule in rules {
        if normalize(&rule.name).is_none_or(|name| name.chars().all(|c| c == '*' || c == '.')) {
            return Err(DomainsError::Name {
                name: rule.name.clone(),
            });
        }
        for (protocol, ports) in [("tcp", &rule.tcp), ("udp", &rule.udp)] {
            if let Err(why) = crate::feed::parse_ports(ports.as_deref()) {
                return Err(DomainsError::Ports {
                    name: rule.name.clone(),
                    protocol,
                    why,
                });
            }
        }
    }
    if rules.len() > MAX_DOMAIN_RULES {
        return Err(DomainsError::TooMany);
    }
    Ok(())
}

/// A DNS answer as `breakout_dns` copies it, once it matched a query recorded at the LAN's
/// ingress: when it crossed tc egress (CLOCK_MONOTONIC, ns), the resolver that sent it, the
/// recorded query's name hash and type, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub ts_ns: u64,
    pub resolver: IpAddr,
    pub name_hash: u32,
    pub qtype: u16,
    pub message: Vec<u8>,
}

/// A ring buffer entry of `breakout_dns` (a `classifier_common::DnsRecord`); `None` for an
/// entry of another shape.
#[must_use]
pub fn record(entry: &[u8]) -> Option<Captured> {
    let bytes = |at: usize, len: usize| entry.get(at..at + len);
    let ts_ns = u64::from_ne_bytes(bytes(0, 8)?.try_into().ok()?);
    let address: [u8; 16] = bytes(8, 16)?.try_into().ok()?;
    let name_hash = u32::from_ne_bytes(bytes(24, 4)?.try_into().ok()?);
    let len = usize::from(u16::from_ne_bytes(bytes(28, 2)?.try_into().ok()?));
    let qtype = u16::from_ne_bytes(bytes(30, 2)?.try_into().ok()?);
    let resolver = match *entry.get(32)? {
        4 => IpAddr::from([address[0], address[1], address[2], address[3]]),
        6 => IpAddr::from(address),
        _ => return None,
    };
    if len > classifier_common::DNS_MAX_MESSAGE {
        return None;
    }
    Some(Captured {
        ts_ns,
        resolver,
        name_hash,
        qtype,
        message: bytes(40, len)?.to_vec(),
    })
}

/// Why the agent refused an answer the kernel copied (the kernel's own refusals are its
/// `dns_*` counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refused {
    /// From a resolver not in `[dns] resolvers` (by default, the router's LAN addresses).
    UntrustedResolver,
    /// Its question, parsed here, is not the one the kernel recorded for the query.
    QuestionMismatch,
}

/// Checks an answer before anything is read from it: it comes from a trusted resolver, and
/// its question is, byte for byte, the one its client asked (the kernel matched a hash of it
/// in a bounded walk; here the whole message is at hand).
pub fn check(captured: &Captured, trusted: &[IpAddr]) -> Result<(), Refused> {
    if !trusted.contains(&captured.resolver) {
        return Err(Refused::UntrustedResolver);
    }
    let question = captured.message.get(12..).unwrap_or_default();
    let same = classifier_common::dns_name_hash(question).is_some_and(|(hash, len)| {
        let qtype = question
            .get(len..len + 2)
            .map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]));
        hash == captured.name_hash && qtype == Some(captured.qtype)
    });
    if same {
        Ok(())
    } else {
        Err(Refused::QuestionMismatch)
    }
}

/// Names followed through CNAMEs at most.
pub const MAX_CHAIN: usize = 16;

/// A name pattern as Microsoft writes them: an exact name, or `*` standing for any run of
/// characters (`*.contoso.com` is every name under `contoso.com`, not `contoso.com` itself;
/// `autodiscover.*.onmicrosoft.com`; `*cdn.onenote.net`). Lowercase ASCII, no trailing dot.
#[must_use]
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (1..=rest.len()).any(|skip| rest.is_char_boundary(skip) && matches(tail, &rest[skip..]))
                || (tail.is_empty() && !rest.is_empty())
        }
    }
}

/// A name as patterns and answers are compared: lowercase, without the root's trailing dot,
/// internationalized names in their ASCII (punycode) form; `None` for no name.
#[must_use]
pub fn normalize(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let ascii = if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        // Each label on its own: a `*` is no IDN character.
        name.split('.')
            .map(|label| {
                if label.is_ascii() {
                    Some(label.to_ascii_lowercase())
                } else {
                    idna::domain_to_ascii(label).ok()
                }
            })
            .collect::<Option<Vec<_>>>()?
            .join(".")
    };
    ascii
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b".-_*".contains(&byte))
        .then_some(ascii)
}

/// What an address of a matching name joins: an endpoint set, without its prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: u32,
    pub service_area: String,
    pub category: Category,
    pub tcp: Vec<PortRange>,
    pub udp: Vec<PortRange>,
    /// Whether the set's category holds for ports outside its lists (false for a rule whose
    /// ports are given).
    pub by_address: bool,
    /// `m365`, a `[[sources]]` name, or `domains` for the operator's rules.
    pub source: String,
}

/// Name patterns and the sets their addresses join.
#[derive(Clone, Debug, Default)]
pub struct Patterns {
    patterns: Vec<(String, u32)>,
    targets: BTreeMap<u32, Target>,
}

impl Patterns {
    /// Adds the named sets of a Microsoft 365 source (already renumbered into its set ids).
    pub fn add_sets(&mut self, sets: &[crate::feed::NamedSet], source: &str) {
        for set in sets {
            self.targets.insert(
                set.id,
                Target {
                    id: set.id,
                    service_area: set.service_area.clone(),
                    category: set.category,
                    tcp: set.tcp.clone(),
                    udp: set.udp.clone(),
                    by_address: true,
                    source: source.to_owned(),
                },
            );
            for url in &set.urls {
                if let Some(pattern) = normalize(url) {
                    self.patterns.push((pattern, set.id));
                }
            }
        }
    }

    /// Adds an operator's rule.
    pub fn add_rule(&mut self, pattern: &str, target: Target) {
        if let Some(pattern) = normalize(pattern) {
            self.patterns.push((pattern, target.id));
            self.targets.insert(target.id, target);
        }
    }

    /// The sets whose patterns match `name` (normalized), lowest id first.
    #[must_use]
    pub fn sets_of(&self, name: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .patterns
            .iter()
            .filter(|(pattern, _)| matches(pattern, name))
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    #[must_use]
    pub fn target(&self, id: u32) -> Option<&Target> {
        self.targets.get(&id)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Why an answer taught nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignored {
    /// Not a DNS message (truncated, bad counts, a compression loop, ...).
    Malformed,
    /// A query, another opcode, or not exactly one question.
    NotAnswer,
    /// An error answer (NXDOMAIN, SERVFAIL, ...).
    Error,
    /// A CNAME chain that loops or is longer than [`MAX_CHAIN`].
    Chain,
    /// No name of the chain matches a pattern.
    NoMatch,
    /// Matching names, but no A or AAAA record for them.
    NoAddress,
}

/// The names and addresses of an answer: the question, the CNAMEs followed from it, and the
/// A/AAAA records of any of those names, each with its TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub chain: Vec<String>,
    pub addresses: Vec<(IpAddr, u32)>,
}

/// Reads a DNS answer.
pub fn read_answer(message: &[u8]) -> Result<Answer, Ignored> {
    let message = Message::from_vec(message).map_err(|_| Ignored::Malformed)?;
    if message.message_type() != MessageType::Response
        || message.op_code() != OpCode::Query
        || message.queries().len() != 1
    {
        return Err(Ignored::NotAnswer);
    }
    if message.response_code() != ResponseCode::NoError {
        return Err(Ignored::Error);
    }
    let name = |name: &hickory_proto::rr::Name| normalize(&name.to_ascii());
    let Some(question) = name(message.queries()[0].name()) else {
        return Err(Ignored::Malformed);
    };
    let mut chain = vec![question];
    loop {
        let last = chain.last().cloned().unwrap_or_default();
        let next = message
            .answers()
            .iter()
            .find_map(|record| match record.data() {
                RData::CNAME(target) if name(record.name()).as_deref() == Some(last.as_str()) => {
                    name(&target.0)
                }
                _ => None,
            });
        let Some(next) = next else { break };
        if chain.contains(&next) || chain.len() >= MAX_CHAIN {
            return Err(Ignored::Chain);
        }
        chain.push(next);
    }
    let addresses = message
        .answers()
        .iter()
        .filter(|record| {
            matches!(record.record_type(), RecordType::A | RecordType::AAAA)
                && name(record.name()).is_some_and(|owner| chain.contains(&owner))
        })
        .filter_map(|record| {
            let addr = match record.data() {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => return None,
            };
            Some((addr, record.ttl()))
        })
        .collect();
    Ok(Answer { chain, addresses })
}

/// An address learned from an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub address: IpAddr,
    /// The question that brought it (the name a client asked for).
    pub name: String,
    /// The name of the chain whose pattern matched.
    pub matched: String,
    pub sets: Vec<u32>,
    /// Seconds since the epoch when it is forgotten (TTL, floor, cap and grace applied).
    pub expires: u64,
    /// When an answer last taught or refreshed it, on [`Learned`]'s own clock (a sequence
    /// number, not a time): a full cap evicts the least recently used first.
    #[serde(default)]
    pub used: u64,
}

/// Limits of what is learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub grace: u32,
    pub max_entries: usize,
    pub max_per_name: usize,
}

/// A cap on learned addresses (`[dns]`'s keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// `max-learned`: addresses in all.
    MaxLearned,
    /// `max-per-name`: addresses of one question.
    MaxPerName,
}

/// Counts of what answers did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub answers: u64,
    pub learned: u64,
    pub refreshed: u64,
    pub ignored: BTreeMap<String, u64>,
    /// Addresses in special-purpose space, ignored.
    pub special: u64,
    /// Addresses over a full cap whose every candidate for eviction a live flow holds,
    /// refused.
    pub capped: u64,
    /// Addresses inside an `exclude` prefix, ignored.
    pub excluded: u64,
    /// Learned addresses evicted to make room for a new one (absent in files of a version
    /// before eviction).
    #[serde(default)]
    pub evicted: u64,
    /// New addresses that found a cap full, by cap.
    #[serde(default)]
    pub cap_hits: CapHits,
    /// Answers refused as untrusted, by why (`classifier_common::stat::DNS_REFUSALS`): the
    /// kernel's counters, where the agent adds its own refusals too.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

/// New addresses that found each cap full.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapHits {
    pub max_learned: u64,
    pub max_per_name: u64,
}

impl Refused {
    /// The `classifier_common::stat` counter of this refusal.
    #[must_use]
    pub const fn stat(self) -> u32 {
        match self {
            Self::UntrustedResolver => classifier_common::stat::DNS_UNTRUSTED_RESOLVER,
            Self::QuestionMismatch => classifier_common::stat::DNS_PARSED_MISMATCH,
        }
    }
}

impl Counts {
    fn ignore(&mut self, why: Ignored) {
        *self.ignored.entry(label(why)).or_default() += 1;
    }
}

/// A reason's snake_case name, as counted.
fn label(why: Ignored) -> String {
    serde_json::to_value(why)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The learned addresses.
///
/// Each entry is in three places: `entries` by address, `lru` and `by_name[entry.name]` under
/// `(entry.used, address)`. Only [`Learned::insert`] and [`Learned::remove`] write them, so
/// they agree; an entry's `expires` and `sets`, indexed nowhere, may change in place.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    entries: HashMap<IpAddr, Entry>,
    /// Every address, least recently used first: `max-learned`'s eviction order.
    lru: BTreeSet<(u64, IpAddr)>,
    /// Each question's addresses, least recently used first: `max-per-name`'s count and
    /// eviction order. A question without addresses has no key.
    by_name: HashMap<String, BTreeSet<(u64, IpAddr)>>,
    /// The last `used` handed out.
    clock: u64,
    /// What each cap saw since its last warning.
    max_learned_warning: Pending,
    max_per_name_warning: Pending,
    pub counts: Counts,
}

/// What taking an answer changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Addresses new to a set: the data plane needs them now.
    pub new: Vec<IpAddr>,
    /// Learned addresses evicted to make room: the maps hold them until the next full apply.
    pub evicted: usize,
}

/// A cap's hits since its last warning.
#[derive(Clone, Debug, Default)]
struct Pending {
    /// When the last warning was said; `None` before the first.
    said: Option<Instant>,
    hits: u64,
    evicted: u64,
    refused: u64,
    /// The cap's value at the latest hit.
    limit: usize,
    /// The latest question that found `max-per-name` full.
    name: String,
}

/// A warning that a cap is full: [`Learned::warnings`] gives at most one a minute per cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapWarning {
    pub cap: Cap,
    pub limit: usize,
    /// For `max-per-name`, the latest question that found it full.
    pub name: Option<String>,
    /// New addresses that found it full, addresses evicted for them, and addresses refused
    /// (a live flow held every candidate), since the last warning.
    pub hits: u64,
    pub evicted: u64,
    pub refused: u64,
}

impl fmt::Display for CapWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            cap,
            limit,
            name,
            hits,
            evicted,
            refused,
        } = self;
        let key = match cap {
            Cap::MaxLearned => "max-learned",
            Cap::MaxPerName => "max-per-name",
        };
        write!(f, "{key} {limit} reached")?;
        if let Some(name) = name {
            write!(f, " for {name}")?;
        }
        write!(
            f,
            ": {hits} new addresses found it full, {evicted} least recently used addresses \
             evicted, {refused} refused (live flows held every candidate) since the last \
             warning; raise [dns] {key} if these names are real"
        )
    }
}

/// One warning a minute per cap: a flood must not flood the log too.
const WARN_EVERY: Duration = Duration::from_mins(1);

impl Learned {
    /// Takes one DNS message at `now` (seconds since the epoch); `excluded` says whether an
    /// address lies in an operator's `exclude`, `held` whether a live flow holds a learned
    /// address (asked only when a cap is full: the caller may compute it lazily).
    pub fn take(
        &mut self,
        message: &[u8],
        patterns: &Patterns,
        limits: Limits,
        now: u64,
        excluded: impl Fn(IpAddr) -> bool,
        mut held: impl FnMut(IpAddr) -> bool,
    ) -> Taken {
        self.counts.answers += 1;
        let answer = match read_answer(message) {
            Ok(answer) => answer,
            Err(why) => {
                self.counts.ignore(why);
                return Taken::default();
            }
        };
        let matched = answer.chain.iter().find_map(|name| {
            let sets = patterns.sets_of(name);
            (!sets.is_empty()).then(|| (name.clone(), sets))
        });
        let Some((matched, sets)) = matched else {
            self.counts.ignore(Ignored::NoMatch);
            return Taken::default();
        };
        if answer.addresses.is_empty() {
            self.counts.ignore(Ignored::NoAddress);
            return Taken::default();
        }
        let question = answer.chain[0].clone();
        let mut taken = Taken::default();
        for (address, ttl) in answer.addresses {
            if crate::gate::special_block(ipnet::IpNet::from(address)).is_some() {
                self.counts.special += 1;
                continue;
            }
            if excluded(address) {
                self.counts.excluded += 1;
                continue;
            }
            let ttl = ttl.clamp(limits.min_ttl, limits.max_ttl.max(limits.min_ttl));
            let expires = now + u64::from(ttl) + u64::from(limits.grace);
            if let Some(mut entry) = self.remove(address) {
                entry.expires = entry.expires.max(expires);
                let before = entry.sets.len();
                entry.sets.extend(&sets);
                entry.sets.sort_unstable();
                entry.sets.dedup();
                if entry.sets.len() == before {
                    self.counts.refreshed += 1;
                } else {
                    taken.new.push(address);
                    self.counts.learned += 1;
                }
                self.insert(entry);
                continue;
            }
            if !self.make_room(&question, limits, &mut held, &mut taken) {
                self.counts.capped += 1;
                continue;
            }
            self.insert(Entry {
                address,
                name: question.clone(),
                matched: matched.clone(),
                sets: sets.clone(),
                expires,
                used: 0,
            });
            taken.new.push(address);
            self.counts.learned += 1;
        }
        taken
    }

    /// Makes room for a new address of `question` under both caps: while one is full, evicts
    /// the least recently used address no live flow holds (of `question`'s own for
    /// `max-per-name`, of all for `max-learned`). Returns false when every candidate is
    /// held; the search then walks the whole cap, which only a cap too small for the live
    /// flows makes happen.
    fn make_room(
        &mut self,
        question: &str,
        limits: Limits,
        held: &mut impl FnMut(IpAddr) -> bool,
        taken: &mut Taken,
    ) -> bool {
        for (cap, limit) in [
            (Cap::MaxPerName, limits.max_per_name),
            (Cap::MaxLearned, limits.max_entries),
        ] {
            let full = |learned: &Self| match cap {
                Cap::MaxLearned => learned.entries.len() >= limit,
                Cap::MaxPerName => learned
                    .by_name
                    .get(question)
                    .is_some_and(|order| order.len() >= limit),
            };
            if !full(self) {
                continue;
            }
            match cap {
                Cap::MaxLearned => self.counts.cap_hits.max_learned += 1,
                Cap::MaxPerName => self.counts.cap_hits.max_per_name += 1,
            }
            let pending = self.pending(cap);
            pending.hits += 1;
            pending.limit = limit;
            if cap == Cap::MaxPerName {
                question.clone_into(&mut pending.name);
            }
            // A loop, not one eviction: a cap lowered by a reload is over, not just at, its
            // value.
            while full(self) {
                let order = match cap {
                    Cap::MaxLearned => Some(&self.lru),
                    Cap::MaxPerName => self.by_name.get(question),
                };
                let victim = order
                    .into_iter()
                    .flatten()
                    .map(|&(_, address)| address)
                    .find(|&address| !held(address));
                let Some(victim) = victim else {
                    self.pending(cap).refused += 1;
                    return false;
                };
                self.remove(victim);
                // Learned earlier in this answer: never written, nothing to write now.
                taken.new.retain(|&address| address != victim);
                taken.evicted += 1;
                self.counts.evicted += 1;
                self.pending(cap).evicted += 1;
            }
        }
        true
    }

    fn pending(&mut self, cap: Cap) -> &mut Pending {
        match cap {
            Cap::MaxLearned => &mut self.max_learned_warning,
            Cap::MaxPerName => &mut self.max_per_name_warning,
        }
    }

    /// Adds `entry` to every index, as used now.
    fn insert(&mut self, mut entry: Entry) {
        self.clock += 1;
        entry.used = self.clock;
        let key = (entry.used, entry.address);
        self.lru.insert(key);
        self.by_name
            .entry(entry.name.clone())
            .or_default()
            .insert(key);
        let old = self.entries.insert(entry.address, entry);
        debug_assert!(old.is_none(), "an address inserted twice");
    }

    /// Removes `address` from every index.
    fn remove(&mut self, address: IpAddr) -> Option<Entry> {
        let entry = self.entries.remove(&address)?;
        let key = (entry.used, address);
        self.lru.remove(&key);
        if let Some(order) = self.by_name.get_mut(&entry.name) {
            order.remove(&key);
            if order.is_empty() {
                self.by_name.remove(&entry.name);
            }
        }
        Some(entry)
    }

    /// The warnings due at `now`: one per cap that was hit since its last warning, if that
    /// was a minute ago or more.
    pub fn warnings(&mut self, now: Instant) -> Vec<CapWarning> {
        let mut due = Vec::new();
        for cap in [Cap::MaxLearned, Cap::MaxPerName] {
            let pending = self.pending(cap);
            if pending.hits == 0
                || pending
                    .said
                    .is_some_and(|said| now.saturating_duration_since(said) < WARN_EVERY)
            {
                continue;
            }
            let Pending {
                said: _,
                hits,
                evicted,
                refused,
                limit,
                name,
            } = std::mem::take(pending);
            pending.said = Some(now);
            due.push(CapWarning {
                cap,
                limit,
                name: (cap == Cap::MaxPerName).then_some(name),
                hits,
                evicted,
                refused,
            });
        }
        due
    }

    /// Forgets entries expired at `now`, except those `in_use` says flows still use (they
    /// get another `grace`). Returns whether anything was forgotten.
    pub fn expire(&mut self, now: u64, grace: u32, in_use: impl Fn(IpAddr) -> bool) -> bool {
        let due: Vec<IpAddr> = self
            .entries
            .values()
            .filter(|entry| entry.expires <= now)
            .map(|entry| entry.address)
            .collect();
        let mut forgot = false;
        for address in due {
            if in_use(address) {
                if let Some(entry) = self.entries.get_mut(&address) {
                    entry.expires = now + u64::from(grace.max(1));
                }
            } else {
                forgot |= self.remove(address).is_some();
            }
        }
        forgot
    }

    /// The learned entries, in no order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    #[must_use]
    pub fn get(&self, address: IpAddr) -> Option<&Entry> {
        self.entries.get(&address)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Panics unless the indexes agree with `entries` (see [`Learned`]).
    #[cfg(test)]
    fn check(&self) {
        let lru: BTreeSet<(u64, IpAddr)> = self
            .entries
            .values()
            .map(|entry| (entry.used, entry.address))
            .collect();
        assert_eq!(self.lru, lru, "lru");
        let mut by_name: HashMap<String, BTreeSet<(u64, IpAddr)>> = HashMap::new();
        for entry in self.entries.values() {
            by_name
                .entry(entry.name.clone())
                .or_default()
                .insert((entry.used, entry.address));
        }
        assert_eq!(self.by_name, by_name, "by_name");
        assert!(self.entries.values().all(|entry| entry.used <= self.clock));
    }

    /// The sets `address` was learned into, each holding just it.
    #[must_use]
    pub fn sets_of(&self, address: IpAddr, patterns: &Patterns) -> Vec<EndpointSet> {
        let Some(entry) = self.entries.get(&address) else {
            return Vec::new();
        };
        entry
            .sets
            .iter()
            .filter_map(|id| {
                let target = patterns.target(*id)?;
                Some(EndpointSet {
                    id: *id,
                    service_area: target.service_area.clone(),
                    category: target.category,
                    prefixes: vec![ipnet::IpNet::from(address)],
                    tcp: target.tcp.clone(),
                    udp: target.udp.clone(),
                    by_address: target.by_address,
                })
            })
            .collect()
    }

    /// The learned addresses as endpoint sets, one per set that has any.
    #[must_use]
    pub fn sets(&self, patterns: &Patterns) -> Vec<EndpointSet> {
        let mut by_set: BTreeMap<u32, Vec<ipnet::IpNet>> = BTreeMap::new();
        for entry in self.entries.values() {
            for id in &entry.sets {
                by_set
                    .entry(*id)
                    .or_default()
                    .push(ipnet::IpNet::from(entry.address));
            }
        }
        by_set
            .into_iter()
            .filter_map(|(id, mut prefixes)| {
                let target = patterns.target(id)?;
                prefixes.sort_unstable();
                Some(EndpointSet {
                    id,
                    service_area: target.service_area.clone(),
                    category: target.category,
                    prefixes,
                    tcp: target.tcp.clone(),
                    udp: target.udp.clone(),
                    by_address: target.by_address,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message, MessageType, Query},
        rr::{Name, RData, Record, rdata},
    };

    use super::*;

    #[test]
    fn a_resolver_on_the_router_is_found_in_the_socket_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                     \x20 1: 0100010A:0035 00000000:0000 07 00000000:00000000\n\
                     \x20 2: 00000000:14E9 00000000:0000 07 00000000:00000000\n";
        assert!(udp_port_bound(table, 53));
        assert!(udp_port_bound(table, 5353));
        assert!(!udp_port_bound(table, 54));
        assert!(
            !udp_port_bound("  sl  local_address\n", 53),
            "the header alone"
        );
    }

    /// A pattern table: exact, wildcard, the apex of a wildcard, case, trailing dot, IDN.
    #[test]
    fn patterns_match_as_microsoft_means_them() {
        let cases = [
            ("outlook.office365.com", "outlook.office365.com", true),
            ("outlook.office365.com", "x.outlook.office365.com", false),
            ("*.teams.microsoft.com", "a.teams.microsoft.com", true),
            ("*.teams.microsoft.com", "a.b.teams.microsoft.com", true),
            ("*.teams.microsoft.com", "teams.microsoft.com", false),
            ("*.teams.microsoft.com", "evilteams.microsoft.com", false),
            (
                "*.teams.microsoft.com",
                "teams.microsoft.com.evil.example",
                false,
            ),
            (
                "autodiscover.*.onmicrosoft.com",
                "autodiscover.contoso.onmicrosoft.com",
                true,
            ),
            (
                "autodiscover.*.onmicrosoft.com",
                "autodiscover.onmicrosoft.com",
                false,
            ),
            ("*cdn.onenote.net", "appcdn.onenote.net", true),
            ("*cdn.onenote.net", "cdn.onenote.net", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(matches(pattern, name), expected, "{pattern} ~ {name}");
        }
        for (raw, normal) in [
            ("Outlook.Office365.COM.", Some("outlook.office365.com")),
            ("*.Teams.Microsoft.com", Some("*.teams.microsoft.com")),
            ("bücher.example", Some("xn--bcher-kva.example")),
            ("*.bücher.example", Some("*.xn--bcher-kva.example")),
            ("", None),
            (".", None),
            ("a b.example", None),
        ] {
            assert_eq!(normalize(raw).as_deref(), normal, "{raw}");
        }
    }

    fn answer(question: &str, records: Vec<Record>) -> Vec<u8> {
        let mut message = Message::new();
        message.set_message_type(MessageType::Response);
        message.add_query(Query::query(
            Name::from_ascii(question).unwrap(),
            RecordType::A,
        ));
        message.add_answers(records);
        message.to_vec().unwrap()
    }

    fn cname(name: &str, target: &str) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            300,
            RData::CNAME(rdata::CNAME(Name::from_ascii(target).unwrap())),
        )
    }

    fn a(name: &str, addr: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(rdata::A(addr.parse().unwrap())),
        )
    }

    #[test]
    fn chains_are_followed_within_the_message_and_loops_refused() {
        let message = answer(
            "teams.example.",
            vec![
                cname("teams.example.", "edge.cdn.example."),
                cname("edge.cdn.example.", "node7.cdn.example."),
                a("node7.cdn.example.", "192.0.2.7", 30),
                a("unrelated.example.", "192.0.2.8", 30),
            ],
        );
        let answer = read_answer(&message).unwrap();
        assert_eq!(
            answer.chain,
            ["teams.example", "edge.cdn.example", "node7.cdn.example"]
        );
        assert_eq!(answer.addresses, [("192.0.2.7".parse().unwrap(), 30)]);
        let looped = answer_loop();
        assert_eq!(read_answer(&looped), Err(Ignored::Chain));
        assert_eq!(read_answer(&message[..20]), Err(Ignored::Malformed));
        assert_eq!(read_answer(b""), Err(Ignored::Malformed));
    }

    fn answer_loop() -> Vec<u8> {
        answer(
            "a.example.",
            vec![
                cname("a.example.", "b.example."),
                cname("b.example.", "a.example."),
            ],
        )
    }

    /// The operator's rule `*.zoom.us`, direct, as set 4100.
    fn zoom() -> Patterns {
        let mut patterns = Patterns::default();
        patterns.add_rule(
            "*.zoom.us",
            Target {
                id: 4100,
                service_area: "zoom".into(),
                category: Category::Direct,
                tcp: Vec::new(),
                udp: Vec::new(),
                by_address: true,
                source: "domains".into(),
            },
        );
        patterns
    }

    #[test]
    fn learning_respects_ttls_caps_special_space_and_excludes() {
        let patterns = zoom();
        let limits = Limits {
            min_ttl: 60,
            max_ttl: 3600,
            grace: 30,
            max_entries: 3,
            max_per_name: 2,
        };
        let mut learned = Learned::default();
        let message = answer(
            "us04web.zoom.us.",
            vec![
                a("us04web.zoom.us.", "203.0.113.4", 5),
                a("us04web.zoom.us.", "198.51.100.4", 5),
                a("us04web.zoom.us.", "10.1.2.3", 5),
            ],
        );
        // 203.0.113.0/24 and 198.51.100.0/24 are documentation space: ignored.
        let taken = learned.take(&message, &patterns, limits, 1000, |_| false, |_| true);
        assert_eq!(taken.new, Vec::<IpAddr>::new());
        assert_eq!(learned.counts.special, 3);
        let message = answer(
            "us04web.zoom.us.",
            vec![
                a("us04web.zoom.us.", "170.114.10.1", 5),
                a("us04web.zoom.us.", "170.114.10.2", 5000),
                a("us04web.zoom.us.", "170.114.10.3", 5),
                a("us04web.zoom.us.", "170.114.10.4", 5),
            ],
        );
        let taken = learned.take(
            &message,
            &patterns,
            limits,
            1000,
            |addr| addr == "170.114.10.4".parse::<IpAddr>().unwrap(),
            |_| true,
        );
        assert_eq!(taken.new.len(), 2, "two per name");
        assert_eq!((learned.counts.capped, learned.counts.excluded), (1, 1));
        let entry = &learned.entries[&"170.114.10.1".parse().unwrap()];
        assert_eq!(entry.expires, 1000 + 60 + 30, "the TTL floor and the grace");
        let entry = &learned.entries[&"170.114.10.2".parse().unwrap()];
        assert_eq!(entry.expires, 1000 + 3600 + 30, "the TTL cap");
        let sets = learned.sets(&patterns);
        assert_eq!(sets.len(), 1);
        assert_eq!((sets[0].id, sets[0].prefixes.len()), (4100, 2));
        assert!(!learned.expire(1089, 30, |_| false));
        assert!(learned.expire(1091, 30, |_| false));
        assert_eq!(learned.entries.len(), 1);
        // In use: kept for another grace period.
        assert!(!learned.expire(5000, 30, |_| true));
        assert_eq!(learned.entries.len(), 1);
        assert!(learned.expire(5031, 30, |_| false));
        let none = learned.take(&answer_loop(), &patterns, limits, 1000, |_| false, |_| true);
        assert!(none.new.is_empty());
        assert_eq!(learned.counts.ignored["chain"], 1);
    }

    fn caps(max_entries: usize, max_per_name: usize) -> Limits {
        Limits {
            min_ttl: 60,
            max_ttl: 3600,
            grace: 30,
            max_entries,
            max_per_name,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Takes an answer for `name` (under `zoom.us`) with the given addresses at time 1000.
    fn take(
        learned: &mut Learned,
        limits: Limits,
        name: &str,
        addresses: &[&str],
        held: impl FnMut(IpAddr) -> bool,
    ) -> Taken {
        let owner = format!("{name}.zoom.us.");
        let records = addresses.iter().map(|addr| a(&owner, addr, 300)).collect();
        let message = answer(&owner, records);
        let taken = learned.take(&message, &zoom(), limits, 1000, |_| false, held);
        learned.check();
        taken
    }

    /// A flood of distinct names fills `max-learned`; a real answer still gets in, and the
    /// address it evicts is the least recently used: a refreshed one counts as used.
    #[test]
    fn a_full_table_evicts_the_least_recently_used_address() {
        let limits = caps(4, 32);
        let mut learned = Learned::default();
        for n in 1..=4 {
            let taken = take(
                &mut learned,
                limits,
                &format!("flood{n}"),
                &[&format!("170.114.0.{n}")],
                |_| false,
            );
            assert_eq!(taken.evicted, 0);
        }
        assert_eq!(learned.len(), 4);
        // flood1 answered again: now the most recently used.
        let taken = take(&mut learned, limits, "flood1", &["170.114.0.1"], |_| false);
        assert_eq!((taken.new.len(), learned.counts.refreshed), (0, 1));
        let taken = take(&mut learned, limits, "us04web", &["170.114.10.1"], |_| {
            false
        });
        assert_eq!(taken.new, [ip("170.114.10.1")]);
        assert_eq!(taken.evicted, 1);
        assert!(
            learned.get(ip("170.114.0.2")).is_none(),
            "flood2 was the least recent"
        );
        for kept in ["170.114.0.1", "170.114.0.3", "170.114.0.4", "170.114.10.1"] {
            assert!(learned.get(ip(kept)).is_some(), "{kept}");
        }
        let Counts {
            evicted,
            capped,
            cap_hits,
            ..
        } = &learned.counts;
        assert_eq!((*evicted, *capped), (1, 0));
        assert_eq!(
            cap_hits,
            &CapHits {
                max_learned: 1,
                max_per_name: 0
            }
        );
    }

    /// A live flow's address is never evicted; when flows hold every candidate the new
    /// address is refused, and nothing is evicted for it.
    #[test]
    fn held_addresses_are_never_evicted() {
        let limits = caps(3, 32);
        let mut learned = Learned::default();
        for n in 1..=3 {
            take(
                &mut learned,
                limits,
                &format!("n{n}"),
                &[&format!("170.114.0.{n}")],
                |_| false,
            );
        }
        let mut asked = Vec::new();
        let taken = take(&mut learned, limits, "new", &["170.114.1.1"], |addr| {
            asked.push(addr);
            addr == ip("170.114.0.1")
        });
        assert_eq!((taken.new.len(), taken.evicted), (1, 1));
        assert_eq!(
            asked,
            [ip("170.114.0.1"), ip("170.114.0.2")],
            "oldest first"
        );
        assert!(
            learned.get(ip("170.114.0.1")).is_some(),
            "held, though the oldest"
        );
        assert!(learned.get(ip("170.114.0.2")).is_none());
        let taken = take(&mut learned, limits, "later", &["170.114.1.2"], |_| true);
        assert_eq!(taken, Taken::default());
        assert_eq!(learned.len(), 3);
        assert!(learned.get(ip("170.114.1.2")).is_none());
        assert_eq!((learned.counts.evicted, learned.counts.capped), (1, 1));
        assert_eq!(learned.counts.cap_hits.max_learned, 2);
    }

    /// `max-per-name` evicts the name's own least recently used address, not an older
    /// address of another name; `held` is not asked while no cap is full.
    #[test]
    fn a_full_name_evicts_its_own_least_recently_used_address() {
        let limits = caps(10, 2);
        let mut learned = Learned::default();
        take(
            &mut learned,
            limits,
            "other",
            &["170.114.0.9"],
            |_| unreachable!(),
        );
        take(
            &mut learned,
            limits,
            "busy",
            &["170.114.0.1", "170.114.0.2"],
            |_| unreachable!(),
        );
        let taken = take(&mut learned, limits, "busy", &["170.114.0.3"], |_| false);
        assert_eq!((taken.new.len(), taken.evicted), (1, 1));
        assert!(learned.get(ip("170.114.0.1")).is_none());
        for kept in ["170.114.0.9", "170.114.0.2", "170.114.0.3"] {
            assert!(learned.get(ip(kept)).is_some(), "{kept}");
        }
        assert_eq!(
            learned.counts.cap_hits,
            CapHits {
                max_learned: 0,
                max_per_name: 1
            }
        );
        // More addresses in one answer than the cap: the last ones stay, none written twice.
        let taken = take(
            &mut learned,
            limits,
            "wide",
            &["170.114.2.1", "170.114.2.2", "170.114.2.3"],
            |_| false,
        );
        assert_eq!(taken.new, [ip("170.114.2.2"), ip("170.114.2.3")]);
        assert_eq!(taken.evicted, 1);
    }

    /// Expiry keeps the indexes whole: forgotten addresses leave the name's count and the
    /// eviction order, so the caps make room again.
    #[test]
    fn indexes_stay_consistent_through_expiry() {
        let limits = caps(4, 2);
        let mut learned = Learned::default();
        take(
            &mut learned,
            limits,
            "a",
            &["170.114.0.1", "170.114.0.2"],
            |_| false,
        );
        take(&mut learned, limits, "b", &["170.114.0.3"], |_| false);
        let kept = ip("170.114.0.2");
        assert!(learned.expire(1000 + 300 + 30, 30, |addr| addr == kept));
        learned.check();
        assert_eq!(learned.len(), 1);
        assert!(
            !learned.by_name.contains_key("b"),
            "no key for a name without addresses"
        );
        let taken = take(&mut learned, limits, "a", &["170.114.0.4"], |_| false);
        assert_eq!((taken.new.len(), taken.evicted), (1, 0), "room again");
        assert_eq!(learned.counts.cap_hits, CapHits::default());
    }

    /// One warning per cap at once, then none for a minute; it says the cap, the name and
    /// the counts since the last one.
    #[test]
    fn a_full_cap_warns_at_most_once_a_minute() {
        let limits = caps(2, 1);
        let mut learned = Learned::default();
        let start = Instant::now();
        assert!(learned.warnings(start).is_empty());
        take(&mut learned, limits, "a", &["170.114.0.1"], |_| false);
        take(&mut learned, limits, "a", &["170.114.0.2"], |_| false);
        let warnings = learned.warnings(start);
        assert_eq!(
            warnings,
            [CapWarning {
                cap: Cap::MaxPerName,
                limit: 1,
                name: Some("a.zoom.us".into()),
                hits: 1,
                evicted: 1,
                refused: 0,
            }]
        );
        assert!(
            warnings[0]
                .to_string()
                .starts_with("max-per-name 1 reached for a.zoom.us: 1 new addresses"),
            "{}",
            warnings[0]
        );
        take(&mut learned, limits, "b", &["170.114.0.3"], |_| false);
        // a's one place is held: refused. Then c finds the table full and evicts a's.
        take(&mut learned, limits, "a", &["170.114.0.4"], |_| true);
        take(&mut learned, limits, "c", &["170.114.0.5"], |_| false);
        let warnings = learned.warnings(start + Duration::from_secs(10));
        assert_eq!(warnings.len(), 1, "max-per-name waits: {warnings:?}");
        assert_eq!(warnings[0].cap, Cap::MaxLearned);
        assert!(learned.warnings(start + Duration::from_secs(59)).is_empty());
        let warnings = learned.warnings(start + WARN_EVERY);
        assert_eq!(
            warnings,
            [CapWarning {
                cap: Cap::MaxPerName,
                limit: 1,
                name: Some("a.zoom.us".into()),
                hits: 1,
                evicted: 0,
                refused: 1,
            }]
        );
    }
}
