//! Fetching a source's file: from a URL with a conditional GET (`If-None-Match`,
//! `If-Modified-Since`), from the Microsoft 365 web service by its `/version`, or from a local
//! file that only root may change. Whether a new body says anything new (its content hash,
//! its version) is the agent's to judge with the last good copy.

use std::{io::Read as _, path::Path};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{Kind, SourceConfig, source::m365_instance};
use crate::{
    client::{self, FeedClient, FeedConfig, FetchError},
    secure::{self, FileError},
};

/// What the last good file of a source was: what the next request sends back, and what a new
/// body is compared with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The version the file or the service states (`syncToken`, `changeNumber`, m365's
    /// `/version`), if it has one.
    pub version: Option<String>,
    /// SHA-256 of the body, hex.
    pub sha256: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Where it came from (after redirects).
    pub from: String,
    pub fetched_at: crate::time::Time,
}

/// SHA-256 of `body`, hex.
#[must_use]
pub fn sha256(body: &[u8]) -> String {
    use std::fmt::Write as _;
    sha2::Sha256::digest(body)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// What a fetch found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Got {
    /// The server said so (304), or the service's version is the one held.
    Unchanged { why: &'static str },
    Body {
        body: Vec<u8>,
        from: String,
        etag: Option<String>,
        last_modified: Option<String>,
        /// m365's `/version`; the other kinds' versions are inside the body.
        version: Option<String>,
    },
}

/// The fetch of one source, apart from the agent: it owns what it needs, so that dropping it
/// cancels a request in flight.
#[derive(Clone)]
pub struct SourceFetcher {
    config: SourceConfig,
    http: reqwest::Client,
    feed: Option<FeedClient>,
    max_body: u64,
    held: Option<Meta>,
    force: bool,
}

impl SourceFetcher {
    /// A fetcher of `config`'s file; `feed` gives the timeouts and the body limit, `held`
    /// the last good file's record (none, or `force`: fetch unconditionally).
    pub fn new(
        config: &SourceConfig,
        feed: &FeedConfig,
        client_id: &str,
        held: Option<Meta>,
        force: bool,
    ) -> Result<Self, FetchError> {
        let http = client::http_client(feed.connect_timeout, feed.request_timeout)?;
        let service = (config.kind == Kind::M365)
            .then(|| {
                let service = FeedConfig {
                    url: config
                        .url
                        .clone()
                        .unwrap_or_else(|| client::DEFAULT_FEED_URL.to_owned()),
                    instance: m365_instance(config).to_owned(),
                    service_areas: config.service_areas.clone(),
                    tenant_name: config.tenant_name.clone(),
                    ..feed.clone()
                };
                FeedClient::new(&service, client_id)
            })
            .transpose()?;
        Ok(Self {
            config: config.clone(),
            http,
            feed: service,
            max_body: feed.max_body_bytes,
            held,
            force,
        })
    }

    pub async fn run(self) -> Result<Got, FetchError> {
        let held = self.held.as_ref().filter(|_| !self.force);
        if let Some(service) = &self.feed {
            let version = service.version().await?;
            if held.and_then(|held| held.version.as_deref()) == Some(version.as_str()) {
                return Ok(Got::Unchanged {
                    why: "the service's version is the one held",
                });
            }
            let fetched = service.endpoints().await?;
            return Ok(Got::Body {
                body: fetched.body,
                from: fetched.url,
                etag: None,
                last_modified: None,
                version: Some(version),
            });
        }
        if let Some(url) = &self.config.url {
            let mut headers = Vec::new();
            if let Some(held) = held {
                if let Some(etag) = &held.etag {
                    headers.push((reqwest::header::IF_NONE_MATCH, etag.clone()));
                }
                if let Some(date) = &held.last_modified {
                    headers.push((reqwest::header::IF_MODIFIED_SINCE, date.clone()));
                }
            }
            let answer = client::get(&self.http, url, &[], &headers, self.max_body).await?;
            if answer.not_modified {
                return Ok(Got::Unchanged {
                    why: "the server answered 304 Not Modified",
                });
            }
            return Ok(Got::Body {
                body: answer.body,
                from: answer.url,
                etag: answer.etag,
                last_modified: answer.last_modified,
                version: None,
            });
        }
        let path = self.config.path.clone().unwrap_or_default();
        let max_body = self.max_body;
        let body = tokio::task::spawn_blocking(move || {
            read_trusted(&path, max_body).map(|body| (body, path))
        })
        .await
        .map_err(|error| FetchError::File {
            path: self.config.path.clone().unwrap_or_default(),
            source: std::io::Error::other(error),
        })??;
        Ok(Got::Body {
            from: body.1.display().to_string(),
            body: body.0,
            etag: None,
            last_modified: None,
            version: None,
        })
    }
}

/// What names a `path` source's file in messages.
const SOURCE_FILE: &str = "source file";

impl SourceConfig {
    /// Opens a `path` source's file as its fetch does, so that `config check` refuses what
    /// the fetch would refuse; nothing for the other sources.
    pub fn check_file(&self) -> Result<(), FileError> {
        self.path.as_deref().map_or(Ok(()), |path| {
            secure::open_trusted(path, SOURCE_FILE).map(drop)
        })
    }
}

/// A regular file of at most `max_body` bytes that only root (or this user) may change: a
/// file others may write is anyone's list of prefixes ([`secure::open_trusted`]).
pub fn read_trusted(path: &Path, max_body: u64) -> Result<Vec<u8>, FetchError> {
    let io = |source| FetchError::File {
        path: path.to_owned(),
        source,
    };
    let too_large = |why: String| FetchError::FileTooLarge {
        path: path.to_owned(),
        why,
    };
    let (file, meta) = secure::open_trusted(path, SOURCE_FILE)?;
    if meta.len() > max_body {
        return Err(too_large(format!(
            "is {} bytes, more than feed.max-body-bytes ({max_body})",
            meta.len()
        )));
    }
    let mut body = Vec::new();
    file.take(max_body + 1).read_to_end(&mut body).map_err(io)?;
    if body.len() as u64 > max_body {
        return Err(too_large(format!(
            "grew past feed.max-body-bytes ({max_body}) while read"
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn files_others_may_write_are_refused() {
        let path = std::env::temp_dir().join(format!("xb-source-{}.txt", std::process::id()));
        std::fs::write(&path, b"192.0.2.0/24\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_trusted(&path, 1024).unwrap(), b"192.0.2.0/24\n");
        let error = read_trusted(&path, 4).unwrap_err().to_string();
        assert!(error.contains("is 13 bytes, more than"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = read_trusted(&path, 1024).unwrap_err().to_string();
        assert!(error.contains("source file"), "{error}");
        assert!(error.contains("with mode 0666"), "{error}");
        std::fs::remove_file(&path).unwrap();
        let error = read_trusted(Path::new("/"), 1024).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
