//! Other providers' published address ranges, each kind parsed by its own module into
//! [`Ranges`]: AWS `ip-ranges.json`, Azure Service Tags, Google's `goog.json`/`cloud.json`,
//! and plain CIDR lists (Zoom, Cloudflare, an operator's own file). Microsoft 365 is
//! [`crate::feed`].
//!
//! Parsing only: what a file says, checked for meaning (a prefix with host bits, an empty
//! result after filtering, a file of another shape) with errors that say which source kind,
//! where and what. Fetching, refreshing and compiling into the data plane build on this.
//! Adding a kind touches one module and [`Kind`].

pub mod aws;
pub mod azure;
pub mod cidr_list;
pub mod fetch;
pub mod google;
pub mod source;

pub use source::{EntryError, Parsed, SourceConfig, SourcePolicy, first_set_ids, is_source_name};

use std::{fmt, str::FromStr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The name of the Microsoft 365 source that `[feed]` configures.
pub const M365: &str = "m365";

/// Prefixes a source may hold: far above any provider's file (Azure's has 90,493 entries).
pub const MAX_PREFIXES: usize = 1_000_000;

/// The kinds of source, by their configuration spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The Microsoft 365 endpoints web service ([`crate::feed`]).
    M365,
    Aws,
    AzureServiceTags,
    Google,
    CidrList,
}

impl Kind {
    pub const ALL: [Self; 5] = [
        Self::M365,
        Self::Aws,
        Self::AzureServiceTags,
        Self::Google,
        Self::CidrList,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::M365 => "m365",
            Self::Aws => "aws",
            Self::AzureServiceTags => "azure-service-tags",
            Self::Google => "google",
            Self::CidrList => "cidr-list",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown source kind {text:?}; known: {}", known.join(", "))
            })
    }
}

/// What a source's file says: its prefixes, sorted and without repeats, and its version when
/// the file has one (AWS and Google `syncToken`, Azure `changeNumber`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
    pub version: Option<String>,
}

impl Ranges {
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{kind}: not the file of a {kind} source: {why}")]
    Shape { kind: Kind, why: String },
    #[error("{kind}: {at}: {text:?} {why}")]
    Prefix {
        kind: Kind,
        at: String,
        text: String,
        why: String,
    },
    #[error("{kind}: no prefix matched the filter ({filter}) among {entries} entries")]
    Empty {
        kind: Kind,
        entries: usize,
        filter: String,
    },
    #[error("{kind}: more than {MAX_PREFIXES} prefixes")]
    TooMany { kind: Kind },
    /// A Microsoft 365 feed that is not one.
    #[error(transparent)]
    Feed(#[from] crate::feed::FeedError),
    /// The file parsed, but what it says is refused (a special-purpose prefix, ports that
    /// do not parse).
    #[error("{kind}: refused: {why}")]
    Refused { kind: Kind, why: String },
}

/// Collects prefixes, each with where it was found, into [`Ranges`]: refuses host bits and
/// more than [`MAX_PREFIXES`], drops repeats.
pub(crate) struct Collect {
    kind: Kind,
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Collect {
    pub(crate) fn new(kind: Kind) -> Self {
        Self {
            kind,
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }

    /// Checks the prefix `text`, found at `at` (called only when it is needed, for an
    /// error), and adds it when the filter `takes` it. Every prefix is checked, taken or
    /// not: a file that carries one bad prefix is not trusted with the others.
    pub(crate) fn add(
        &mut self,
        takes: bool,
        text: &str,
        at: impl FnOnce() -> String,
    ) -> Result<(), SourceError> {
        let net = parse_prefix(self.kind, text, at)?;
        if !takes {
            return Ok(());
        }
        if self.v4.len() + self.v6.len() >= MAX_PREFIXES {
            return Err(SourceError::TooMany { kind: self.kind });
        }
        match net {
            IpNet::V4(net) => self.v4.push(net),
            IpNet::V6(net) => self.v6.push(net),
        }
        Ok(())
    }

    /// The ranges; an error when there are none (`entries` looked at, `filter` what chose).
    pub(crate) fn finish(
        mut self,
        version: Option<String>,
        entries: usize,
        filter: impl FnOnce() -> String,
    ) -> Result<Ranges, SourceError> {
        self.v4.sort_unstable();
        self.v4.dedup();
        self.v6.sort_unstable();
        self.v6.dedup();
        if self.v4.is_empty() && self.v6.is_empty() {
            return Err(SourceError::Empty {
                kind: self.kind,
                entries,
                filter: filter(),
            });
        }
        Ok(Ranges {
            v4: self.v4,
            v6: self.v6,
            version,
        })
    }
}

/// A CIDR prefix whose host bits are clear. A bare address is refused here; `cidr-list`
/// accepts it as a host route before it calls this.
fn parse_prefix(kind: Kind, text: &str, at: impl FnOnce() -> String) -> Result<IpNet, SourceError> {
    let why = match text.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => return Ok(net),
        Ok(net) => format!("has host bits set (the prefix is {})", net.trunc()),
        Err(_) => "is not a CIDR prefix".to_owned(),
    };
    Err(SourceError::Prefix {
        kind,
        at: at(),
        text: shorten(text),
        why,
    })
}

/// A JSON document of `kind`, with an error that says what came instead.
pub(crate) fn json<'a, T: serde::Deserialize<'a>>(
    kind: Kind,
    body: &'a [u8],
) -> Result<T, SourceError> {
    let start = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if start == Some(&b'<') {
        return Err(SourceError::Shape {
            kind,
            why: "an HTML or XML page, not JSON".to_owned(),
        });
    }
    serde_json::from_slice(body).map_err(|error| SourceError::Shape {
        kind,
        why: error.to_string(),
    })
}

/// At most 100 characters of `text`, for an error message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// `a, b` or `any` for a filter list in an error.
pub(crate) fn describe(name: &str, values: &[String]) -> String {
    if values.is_empty() {
        format!("{name}: any")
    } else {
        format!("{name}: {}", values.join(", "))
    }
}

/// Whether `value` passes a filter list (empty: everything passes).
pub(crate) fn passes(filter: &[String], value: &str) -> bool {
    filter.is_empty() || filter.iter().any(|wanted| wanted == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_their_configuration_spelling() {
        for kind in Kind::ALL {
            assert_eq!(kind.name().parse::<Kind>(), Ok(kind));
        }
        let error = "zoom".parse::<Kind>().unwrap_err();
        assert!(error.contains("cidr-list"), "{error}");
    }

    #[test]
    fn host_bits_and_garbage_are_refused_with_where() {
        let at = || "line 3".to_owned();
        let error = parse_prefix(Kind::CidrList, "10.0.0.1/8", at).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cidr-list: line 3: \"10.0.0.1/8\" has host bits set (the prefix is 10.0.0.0/8)"
        );
        let error = parse_prefix(Kind::Aws, "banana", || "prefixes[7]".to_owned()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "aws: prefixes[7]: \"banana\" is not a CIDR prefix"
        );
        let long = "x".repeat(300);
        let error = parse_prefix(Kind::Google, &long, String::new).unwrap_err();
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn collect_sorts_drops_repeats_and_refuses_nothing() {
        let mut collect = Collect::new(Kind::Aws);
        for text in ["10.1.0.0/16", "2001:db8::/32", "10.0.0.0/16", "10.1.0.0/16"] {
            collect.add(true, text, String::new).unwrap();
        }
        let ranges = collect.finish(Some("7".into()), 4, String::new).unwrap();
        assert_eq!(ranges.v4.len(), 2);
        assert_eq!(ranges.v4[0].to_string(), "10.0.0.0/16");
        assert_eq!(ranges.v6.len(), 1);
        let error = Collect::new(Kind::Google)
            .finish(None, 782, || "scope: mars-1".to_owned())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "google: no prefix matched the filter (scope: mars-1) among 782 entries"
        );
    }

    #[test]
    fn html_is_named_as_such() {
        let error = json::<serde_json::Value>(Kind::Aws, b"  <html>502</html>").unwrap_err();
        assert_eq!(
            error.to_string(),
            "aws: not the file of a aws source: an HTML or XML page, not JSON"
        );
    }
}
