//! The Microsoft 365 IP Address and URL web service, over HTTPS (rustls, system roots).
//!
//! `GET /version/{instance}` is cheap and polled; `GET /endpoints/{instance}` only when the
//! version changed. Every request carries the machine's `clientrequestid`. Both answer HTTP 429
//! when a client asks too often: the error carries the wait (`Retry-After`, else an hour).

use std::time::Duration;

use serde::Deserialize;

use crate::config::FeedConfig;

/// How long to wait after a 429 without `Retry-After` (Microsoft's guidance: hourly).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_hours(1);

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
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
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
    latest: String,
}

/// A client for one instance of the service.
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
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("xdp-breakout/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(FetchError::Client)?;
        let mut query = Vec::new();
        if !config.service_areas.is_empty() {
            query.push(("ServiceAreas".to_owned(), config.service_areas.join(",")));
        }
        if let Some(tenant) = &config.tenant_name {
            query.push(("TenantName".to_owned(), tenant.clone()));
        }
        if config.no_ipv6 {
            query.push(("NoIPv6".to_owned(), "true".to_owned()));
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
        let body = self.get(&url, &[]).await?;
        let invalid = |reason: String| FetchError::Version {
            url: url.clone(),
            reason,
        };
        let version: VersionBody =
            serde_json::from_slice(&body).map_err(|error| invalid(error.to_string()))?;
        if version.latest.len() != 10 || !version.latest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "version {:?} is not YYYYMMDDNN",
                version.latest
            )));
        }
        Ok(version.latest)
    }

    /// The body of `GET /endpoints/{instance}`, unparsed.
    pub async fn endpoints(&self) -> Result<Vec<u8>, FetchError> {
        let url = format!("{}/endpoints/{}", self.base, self.instance);
        self.get(&url, &self.query).await
    }

    async fn get(&self, url: &str, query: &[(String, String)]) -> Result<Vec<u8>, FetchError> {
        let transport = |what| {
            let url = url.to_owned();
            move |source| FetchError::Transport { url, what, source }
        };
        let mut response = self
            .http
            .get(url)
            .query(&[("clientrequestid", self.client_id.as_str())])
            .query(query)
            .send()
            .await
            .map_err(transport("request failed"))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
            return Err(FetchError::RateLimited {
                url: url.to_owned(),
                retry_after,
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
            limit: self.max_body_bytes,
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.max_body_bytes)
        {
            return Err(too_large());
        }
        // Counted as it arrives: a server may send more than it announced, or nothing.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(transport("reading the body"))?
        {
            if (body.len() + chunk.len()) as u64 > self.max_body_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
