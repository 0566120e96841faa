//! The Microsoft 365 IP Address and URL web service, over HTTPS (rustls, system roots).
//!
//! `GET /version/{instance}` is cheap and polled; `GET /endpoints/{instance}` only when the
//! version changed. Every request carries the machine's `clientrequestid`. Both answer HTTP 429
//! when a client asks too often: the error carries the wait (`Retry-After`, else an hour).
//!
//! Nothing in an answer is trusted beyond its checks: a redirect may not leave HTTPS, a
//! `Retry-After` is capped, a version answer must name the instance asked for, and a body
//! is counted as it arrives.

use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::settings::{Invalid, Share, duration_text, within};

/// How long to wait after a 429 without a `Retry-After` in seconds (Microsoft's guidance:
/// hourly). An HTTP-date `Retry-After` also waits this long.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_hours(1);
/// The longest wait a `Retry-After` can impose: a server cannot stop polling for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_hours(24);
/// Intune's service area, which `/endpoints` returns only when asked for by name.
pub const MEM: &str = "MEM";
/// Every service area the service returns by default, and Intune's.
const ALL_AREAS_AND_MEM: &str = "Common,Exchange,SharePoint,Skype,MEM";
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;

/// The web service's address, unless `feed.url` says otherwise.
/// The address space one file may add by default: above what Amazon's (2.2% of IPv4) and
/// Azure's (1.1%) whole files cover, far below a range of /8s; for IPv6, a /16's worth of
/// global unicast is refused, every provider's whole file (0.000003%) passes.
pub const DEFAULT_MAX_ADDED_V4: Share = Share { ppm: 40_000 };
pub const DEFAULT_MAX_ADDED_V6: Share = Share { ppm: 100 };
pub const DEFAULT_FEED_URL: &str = "https://endpoints.office.com";
/// Bounds of `feed.max-body-bytes`: Microsoft's answer is about 100 KiB.
pub const MIN_BODY_BYTES: u64 = 1 << 10;
pub const MAX_BODY_BYTES: u64 = 1 << 30;
/// The instances the web service publishes.
pub const INSTANCES: [&str; 4] = ["Worldwide", "China", "USGovDoD", "USGovGCCHigh"];

/// `[feed]`: where and how often the web service is asked, and what an answer may change.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct FeedConfig {
    /// Base URL of the web service (a mirror, or a local server for tests).
    pub url: String,
    /// Worldwide, China, USGovDoD or USGovGCCHigh.
    pub instance: String,
    /// Only these service areas (Exchange, SharePoint, Skype, Common); empty: all.
    pub service_areas: Vec<String>,
    /// Adds tenant-specific URLs to the feed (no effect on addresses).
    pub tenant_name: Option<String>,
    /// Leave IPv6 prefixes out.
    pub no_ipv6: bool,
    /// How often `/version` is checked (Microsoft: at most hourly); up to 10% jitter is added.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Limit on a whole request, body included.
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Responses larger than this are refused.
    pub max_body_bytes: u64,
    /// A feed that would remove more than this share (percent) of the installed prefixes is
    /// refused unless forced.
    pub max_shrink_percent: u8,
    /// A feed whose added and removed prefixes together exceed this share (percent) of the
    /// installed ones is refused unless forced.
    pub max_churn_percent: u16,
    /// A file may add at most this share of IPv4, and of global unicast IPv6 (`2000::/3`),
    /// to what its source's installed prefixes cover (a first file: all it covers); every
    /// source's default. Amazon's whole file covers 2.2% of IPv4.
    pub max_added_v4: Share,
    pub max_added_v6: Share,
    /// IPv4 prefixes shorter than this are refused (a feed never needs a /0 or a /4).
    pub min_prefix_len_v4: u8,
    /// IPv6 prefixes shorter than this are refused.
    pub min_prefix_len_v6: u8,
    /// Accept a plain `http://` URL (a test server, a mirror on a trusted network): anyone on
    /// the path could then answer for the feed.
    pub allow_http: bool,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_FEED_URL.to_owned(),
            instance: "Worldwide".to_owned(),
            service_areas: Vec::new(),
            tenant_name: None,
            no_ipv6: false,
            poll_interval: Duration::from_hours(1),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_mins(1),
            max_body_bytes: 16 << 20,
            max_shrink_percent: 50,
            max_churn_percent: 100,
            max_added_v4: DEFAULT_MAX_ADDED_V4,
            max_added_v6: DEFAULT_MAX_ADDED_V6,
            min_prefix_len_v4: 8,
            min_prefix_len_v6: 16,
            allow_http: false,
        }
    }
}

impl FeedConfig {
    /// Refuses every setting that would make each request fail, or trust what it should
    /// not: plain HTTP needs `allow-http`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !INSTANCES.contains(&self.instance.as_str()) {
            return Err(Invalid::new(
                "instance",
                format!("{:?} is not one of {}", self.instance, INSTANCES.join(", ")),
            ));
        }
        if self.url.starts_with("http://") {
            if !self.allow_http {
                return Err(Invalid::new(
                    "url",
                    format!(
                        "{:?} is plain HTTP: anyone on the path can answer for the feed; use \
                         https://, or set feed.allow-http = true (--allow-http) for a server \
                         on a trusted network",
                        self.url
                    ),
                ));
            }
        } else if !self.url.starts_with("https://") {
            return Err(Invalid::new(
                "url",
                format!("{:?} is not an https:// URL", self.url),
            ));
        }
        within(
            "poll-interval",
            self.poll_interval,
            Duration::from_secs(1),
            Duration::from_hours(7 * 24),
        )?;
        within(
            "connect-timeout",
            self.connect_timeout,
            Duration::from_millis(100),
            Duration::from_mins(10),
        )?;
        within(
            "request-timeout",
            self.request_timeout,
            Duration::from_millis(100),
            Duration::from_hours(1),
        )?;
        if !(MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err(Invalid::new(
                "max-body-bytes",
                format!(
                    "{} is outside {MIN_BODY_BYTES}..={MAX_BODY_BYTES}",
                    self.max_body_bytes
                ),
            ));
        }
        if self.max_shrink_percent > 100 {
            return Err(Invalid::new("max-shrink-percent", "must be 0..=100"));
        }
        if !(1..=32).contains(&self.min_prefix_len_v4) {
            return Err(Invalid::new("min-prefix-len-v4", "must be 1..=32"));
        }
        if !(1..=128).contains(&self.min_prefix_len_v6) {
            return Err(Invalid::new("min-prefix-len-v6", "must be 1..=128"));
        }
        Ok(())
    }

    /// Plain HTTP, allowed by `allow-http`, still weakens what the feed can be trusted with.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        self.url.starts_with("http://").then(|| {
            format!(
                "feed.url {:?} is plain HTTP (allowed by feed.allow-http): anyone on the path \
                 can answer for the feed",
                self.url
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: HTTP 429 too many requests; retrying in {}s", retry_after.as_secs())]
    RateLimited { url: String, retry_after: Duration },
    #[error("GET {url}: the response is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("GET {url}: {what}")]
    Transport {
        url: String,
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: not a version response ({reason})")]
    Version { url: String, reason: String },
    #[error("GET {url}: the answer is for instance {found:?}, not the configured {expected:?}")]
    Instance {
        url: String,
        found: String,
        expected: String,
    },
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("reading {path}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `path` source's file that cannot be opened, or that another user could change.
    #[error(transparent)]
    Untrusted(#[from] crate::secure::FileError),
    #[error("{path}: {why}")]
    FileTooLarge {
        path: std::path::PathBuf,
        why: String,
    },
}

impl FetchError {
    /// How long the service asked us to wait, for a 429.
    #[must_use]
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct VersionBody {
    instance: String,
    latest: String,
}

/// A body and the URL it finally came from (after redirects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub url: String,
}

/// Whether a redirect from a request that started at `first` may go on to `next` after
/// `hops` redirects: never from HTTPS to anything else, never to a non-HTTP scheme, and at
/// most [`MAX_REDIRECTS`].
pub fn redirect_verdict(first: &Url, next: &Url, hops: usize) -> Result<(), String> {
    if hops >= MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects"));
    }
    match (first.scheme(), next.scheme()) {
        ("https", "https") | ("http", "http" | "https") => Ok(()),
        ("https", scheme) => Err(format!(
            "a redirect from HTTPS to {scheme}: {next} (a downgrade is never followed)"
        )),
        (_, scheme) => Err(format!("a redirect to a {scheme} URL: {next}")),
    }
}

/// The wait a 429's `Retry-After` asks for, capped at [`MAX_RETRY_AFTER`].
#[must_use]
pub fn retry_after(value: Option<&str>) -> Duration {
    value
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, |secs| {
            Duration::from_secs(secs).min(MAX_RETRY_AFTER)
        })
}

/// A client for one instance of the service. Cheap to clone (the connection pool is shared),
/// so a fetch can run apart from the agent and be dropped to cancel it.
#[derive(Clone)]
pub struct FeedClient {
    http: reqwest::Client,
    base: String,
    instance: String,
    query: Vec<(String, String)>,
    client_id: String,
    max_body_bytes: u64,
}

impl FeedClient {
    pub fn new(config: &FeedConfig, client_id: &str) -> Result<Self, FetchError> {
        let http = http_client(config.connect_timeout, config.request_timeout)?;
        // The whole feed, always: `ServiceAreas` and `NoIPv6` are applied when compiling, so
        // the saved feed can be recompiled with a wider filter after a reload or a restart.
        let mut query = Vec::new();
        // Except Intune (`MEM`), which the service leaves out unless a request names it: a
        // filter that names it asks for every area and it, and still filters when compiling.
        if config
            .service_areas
            .iter()
            .any(|area| area.eq_ignore_ascii_case(MEM))
        {
            query.push(("ServiceAreas".to_owned(), ALL_AREAS_AND_MEM.to_owned()));
        }
        if let Some(tenant) = &config.tenant_name {
            query.push(("TenantName".to_owned(), tenant.clone()));
        }
        Ok(Self {
            http,
            base: config.url.trim_end_matches('/').to_owned(),
            instance: config.instance.clone(),
            query,
            client_id: client_id.to_owned(),
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The latest version (`YYYYMMDDNN`) of the instance's feed.
    pub async fn version(&self) -> Result<String, FetchError> {
        let url = format!("{}/version/{}", self.base, self.instance);
        let Fetched { body, url: from } = self.get(&url, &[]).await?;
        let invalid = |reason: String| FetchError::Version {
            url: from.clone(),
            reason,
        };
        let version: VersionBody =
            serde_json::from_slice(&body).map_err(|error| invalid(error.to_string()))?;
        if !crate::gate::is_version(&version.latest) {
            return Err(invalid(format!(
                "version {:?} is not YYYYMMDDNN",
                version.latest
            )));
        }
        if !version.instance.eq_ignore_ascii_case(&self.instance) {
            return Err(FetchError::Instance {
                url: from,
                found: version.instance,
                expected: self.instance.clone(),
            });
        }
        Ok(version.latest)
    }

    /// `GET /version/{instance}`'s URL, for messages.
    #[must_use]
    pub fn version_url(&self) -> String {
        format!("{}/version/{}", self.base, self.instance)
    }

    /// The body of `GET /endpoints/{instance}`, unparsed, and where it came from.
    pub async fn endpoints(&self) -> Result<Fetched, FetchError> {
        let url = format!("{}/endpoints/{}", self.base, self.instance);
        self.get(&url, &self.query).await
    }

    async fn get(&self, url: &str, query: &[(String, String)]) -> Result<Fetched, FetchError> {
        let mut query = query.to_vec();
        query.insert(0, ("clientrequestid".to_owned(), self.client_id.clone()));
        let answer = get(&self.http, url, &query, &[], self.max_body_bytes).await?;
        Ok(Fetched {
            body: answer.body,
            url: answer.url,
        })
    }
}

/// An HTTP client that never follows a redirect off HTTPS ([`redirect_verdict`]).
pub fn http_client(
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .user_agent(concat!("xdp-breakout/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let verdict = redirect_verdict(
                attempt.previous().first().unwrap_or(attempt.url()),
                attempt.url(),
                attempt.previous().len().saturating_sub(1),
            );
            match verdict {
                Ok(()) => attempt.follow(),
                Err(reason) => attempt.error(reason),
            }
        }))
        .build()
        .map_err(FetchError::Client)
}

/// What a GET answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Empty for `304 Not Modified`.
    pub body: Vec<u8>,
    /// Where it finally came from (after redirects), without the query string.
    pub url: String,
    /// `304 Not Modified` to a conditional request.
    pub not_modified: bool,
    /// The validators to send next time: `ETag` and `Last-Modified`, when the server sent
    /// ones that can be sent back ([`validator`]).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The longest `ETag` or `Last-Modified` kept: a server's header is not stored unbounded.
pub const MAX_VALIDATOR: usize = 256;

/// A header value worth sending back: visible ASCII, at most [`MAX_VALIDATOR`] bytes.
#[must_use]
pub fn validator(value: Option<&reqwest::header::HeaderValue>) -> Option<String> {
    let text = value?.to_str().ok()?.trim();
    (!text.is_empty()
        && text.len() <= MAX_VALIDATOR
        && text.bytes().all(|byte| (0x20..0x7f).contains(&byte)))
    .then(|| text.to_owned())
}

/// `GET url?query` with `headers`, a body of at most `max_body` bytes counted as it arrives;
/// a 429 carries its capped `Retry-After`, any other status but 2xx and 304 is an error.
pub async fn get(
    http: &reqwest::Client,
    url: &str,
    query: &[(String, String)],
    headers: &[(reqwest::header::HeaderName, String)],
    max_body: u64,
) -> Result<Answer, FetchError> {
    let transport = |what| {
        let url = url.to_owned();
        move |source| FetchError::Transport { url, what, source }
    };
    let mut request = http.get(url).query(query);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let mut response = request.send().await.map_err(|source| {
        let what = if source.is_redirect() {
            "refused a redirect"
        } else {
            "request failed"
        };
        transport(what)(source)
    })?;
    // Where the answer came from, without our query string (the client id).
    let mut from = response.url().clone();
    from.set_query(None);
    let from = from.to_string();
    if from.trim_end_matches('/') != url.trim_end_matches('/') {
        info!("GET {url}: redirected to {from}");
    }
    let url = from.as_str();
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let header = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok());
        return Err(FetchError::RateLimited {
            url: url.to_owned(),
            retry_after: retry_after(header),
        });
    }
    let etag = validator(response.headers().get(reqwest::header::ETAG));
    let last_modified = validator(response.headers().get(reqwest::header::LAST_MODIFIED));
    if status == reqwest::StatusCode::NOT_MODIFIED && !headers.is_empty() {
        return Ok(Answer {
            url: from.clone(),
            not_modified: true,
            etag,
            last_modified,
            ..Answer::default()
        });
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let too_large = || FetchError::TooLarge {
        url: url.to_owned(),
        limit: max_body,
    };
    if response.content_length().is_some_and(|len| len > max_body) {
        return Err(too_large());
    }
    // Counted as it arrives: a server may send more than it announced, or nothing.
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(transport("reading the body"))?
    {
        if (body.len() + chunk.len()) as u64 > max_body {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        body,
        url: from.clone(),
        not_modified: false,
        etag,
        last_modified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        text.parse().unwrap()
    }

    #[test]
    fn redirects_never_leave_https() {
        let https = url("https://endpoints.office.com/endpoints/Worldwide");
        assert_eq!(
            redirect_verdict(
                &https,
                &url("https://mirror.example/endpoints/Worldwide"),
                0
            ),
            Ok(())
        );
        let error = redirect_verdict(&https, &url("http://endpoints.office.com/x"), 0).unwrap_err();
        assert!(error.contains("from HTTPS to http"), "{error}");
        // A chain that went through HTTPS and back is judged from its start.
        assert!(redirect_verdict(&https, &url("ftp://x/"), 1).is_err());
        let http = url("http://127.0.0.1/version/Worldwide");
        assert_eq!(
            redirect_verdict(&http, &url("http://127.0.0.1/v2"), 0),
            Ok(())
        );
        assert_eq!(
            redirect_verdict(&http, &url("https://127.0.0.1/v2"), 0),
            Ok(())
        );
        assert!(
            redirect_verdict(&http, &url("http://127.0.0.1/v2"), MAX_REDIRECTS)
                .unwrap_err()
                .contains("more than 5 redirects")
        );
    }

    #[test]
    fn retry_after_is_capped() {
        assert_eq!(retry_after(Some("120")), Duration::from_mins(2));
        assert_eq!(retry_after(Some(" 7 ")), Duration::from_secs(7));
        assert_eq!(retry_after(Some("18446744073709551615")), MAX_RETRY_AFTER);
        assert_eq!(retry_after(Some("315360000")), MAX_RETRY_AFTER, "ten years");
        assert_eq!(retry_after(Some("-1")), DEFAULT_RETRY_AFTER);
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(retry_after(None), DEFAULT_RETRY_AFTER);
    }
}
