//! Each source's file, from its fetch to the union: fetch ([`SourceFetcher`], apart from the
//! agent so that dropping it cancels it), [`Agent::prepare`] (parse, check every prefix,
//! judge the change), [`Agent::take`] (the union applied, the file recorded). `sync`,
//! `sync --dry-run`, start-up and the daemon all go this way; a dry run stops after
//! `prepare`, so it reaches the verdict a real apply reaches.

use std::time::Duration;

use tracing::{info, warn};

use super::{
    Agent,
    outcome::{Reason, RefreshError, Refreshed, chain},
    source::{Source, backoff, jittered, version_of},
};
use crate::{
    compile::Compiled,
    datapath::ApplyReport,
    gate,
    sources::{
        Kind, M365, Parsed, SourceConfig,
        fetch::{Got, Meta, SourceFetcher, sha256},
    },
    state::SourceStatus,
    time::Time,
};

/// What [`Agent::prepare`] found.
pub enum Prepared {
    /// Nothing new: a 304, the same content, or the same version.
    Unchanged {
        version: Option<String>,
        why: &'static str,
    },
    /// A file that passed the gate.
    New(Box<Candidate>),
}

/// A file that passed the gate, ready to take.
pub struct Candidate {
    i: usize,
    body: Vec<u8>,
    parsed: Parsed,
    meta: Meta,
}

/// What a dry run found: the maps now, what they would hold, and the verdict.
pub struct Plan {
    pub installed: Compiled,
    pub target: Compiled,
    pub version: Option<String>,
    pub from: String,
    pub refused: Option<RefreshError>,
}

impl Agent {
    /// Builds every source of the configuration, each with its last good file from the state
    /// directory (compiled with today's configuration), keeping what the previous ones knew
    /// of their fetches.
    pub(super) fn load_sources(&mut self) {
        let configs = self.config.all_sources();
        let firsts = crate::sources::first_set_ids(&configs).unwrap_or_default();
        let mut old = std::mem::take(&mut self.sources);
        for (config, first) in configs.into_iter().zip(firsts) {
            let mut source = Source::new(config, first);
            if let Some(at) = old
                .iter()
                .position(|old| old.config.name == source.config.name)
            {
                let old = old.swap_remove(at);
                source.next_due = old.next_due;
                let SourceStatus {
                    applied_at,
                    last_success,
                    last_attempt,
                    next_refresh,
                    last_error,
                    consecutive_failures,
                    ..
                } = old.status;
                source.status = SourceStatus {
                    applied_at,
                    last_success,
                    last_attempt,
                    next_refresh,
                    last_error,
                    consecutive_failures,
                    ..source.status
                };
            }
            if let Some((body, meta)) = self.state.source(&source.config.name) {
                match source
                    .config
                    .parse(first, &body, self.config.prefix_limits())
                {
                    Ok(parsed) => source.hold(parsed, meta),
                    Err(error) => warn!(
                        "source {}: its last good file in {} is unusable now: {}",
                        source.config.name,
                        self.state.dir().display(),
                        chain(&error)
                    ),
                }
            }
            self.sources.push(source);
        }
        self.index_sets();
    }

    /// Forgets the `m365` source's file, so that its next fetch applies whatever version
    /// the service has.
    pub(super) fn forget_m365(&mut self) {
        if let Some(m365) = self.sources.first_mut() {
            m365.held = None;
        }
        self.index_sets();
    }

    /// Marks every held file as applied now (start-up, when the union of them was applied).
    pub(super) fn mark_applied_all(&mut self) {
        let now = Time::now();
        for source in &mut self.sources {
            if source.held.is_some() {
                source.status.applied_at.get_or_insert(now);
            }
        }
        self.save_status();
    }

    /// The index of source `name`.
    pub fn source_index(&self, name: &str) -> Result<usize, RefreshError> {
        self.sources
            .iter()
            .position(|source| source.config.name == name)
            .ok_or_else(|| RefreshError::NoSuchSource {
                name: name.to_owned(),
                known: self
                    .sources
                    .iter()
                    .map(|source| source.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The source due first, and when.
    #[must_use]
    pub fn next_due(&self) -> Option<(usize, tokio::time::Instant)> {
        self.sources
            .iter()
            .enumerate()
            .map(|(i, source)| (i, source.next_due))
            .min_by_key(|(_, due)| *due)
    }

    fn fetcher(&self, i: usize, force: bool) -> Result<SourceFetcher, RefreshError> {
        let source = &self.sources[i];
        SourceFetcher::new(
            &source.config,
            &self.config.feed,
            &self.client_id,
            source.held.as_ref().map(|(_, meta)| meta.clone()),
            force,
        )
        .map_err(|error| RefreshError::Fetch {
            name: source.config.name.clone(),
            error,
        })
    }

    /// The fetch of source `i`, apart from the agent: the future owns what it needs, so
    /// dropping it cancels the request. `force` fetches unconditionally (a dry run).
    pub fn fetch(
        &self,
        i: usize,
        force: bool,
    ) -> impl Future<Output = Result<Got, RefreshError>> + 'static {
        let name = self.sources[i].config.name.clone();
        let fetcher = self.fetcher(i, force);
        async move {
            fetcher?
                .run()
                .await
                .map_err(|error| RefreshError::Fetch { name, error })
        }
    }

    /// Fetches source `name` now and applies what it finds (`sync`, `sync --source`).
    pub async fn refresh(&mut self, name: &str, force: bool) -> Result<Refreshed, RefreshError> {
        self.reconcile();
        let i = self.source_index(name)?;
        let got = self.fetch(i, force).await;
        let result = self.accept(i, got, force);
        self.save_status();
        result
    }

    /// Takes what a fetch of source `i` found, recording the outcome in its status.
    pub fn accept(
        &mut self,
        i: usize,
        got: Result<Got, RefreshError>,
        force: bool,
    ) -> Result<Refreshed, RefreshError> {
        self.sources[i].status.last_attempt = Some(Time::now());
        let result = got
            .and_then(|got| self.prepare(i, got, force))
            .and_then(|prepared| match prepared {
                Prepared::New(candidate) => self.take(candidate),
                Prepared::Unchanged { version, why } => Ok(Refreshed::Unchanged { version, why }),
            });
        let name = self.sources[i].config.name.clone();
        if let Ok(Refreshed::Unchanged {
            version: Some(version),
            ..
        }) = &result
        {
            self.renew(i, version);
        }
        let status = &mut self.sources[i].status;
        match &result {
            Ok(outcome) => {
                status.last_success = Some(Time::now());
                status.last_error = None;
                status.consecutive_failures = 0;
                match outcome {
                    Refreshed::Unchanged { why, .. } => info!("source {name}: unchanged ({why})"),
                    Refreshed::Held { .. } => info!(
                        "source {name}: new file held until the m365 source replaces the \
                         pinned entries of unknown origin"
                    ),
                    Refreshed::Applied { .. } => {}
                }
            }
            Err(error) => {
                status.last_error = Some(chain(error));
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            }
        }
        result
    }

    /// Records that source `i`'s held file is now known by `version` (the service stated a
    /// new version of the same content).
    fn renew(&mut self, i: usize, version: &str) {
        let source = &mut self.sources[i];
        let Some((_, meta)) = &mut source.held else {
            return;
        };
        if meta.version.as_deref() == Some(version) {
            return;
        }
        meta.version = Some(version.to_owned());
        source.status.version = Some(version.to_owned());
        if let Err(error) = self.state.save_meta(&source.config.name, meta) {
            warn!("{:#}", anyhow::Error::from(error));
        }
    }

    /// Installs `body` as source `name`'s file, as if fetched from `from` (`sync
    /// --feed-file`, the embedded snapshot).
    pub fn install_file(
        &mut self,
        name: &str,
        body: &[u8],
        version: Option<&str>,
        from: &str,
        force: bool,
    ) -> Result<Refreshed, RefreshError> {
        let i = self.source_index(name)?;
        let got = Ok(file(body, version, from));
        let result = self.accept(i, got, force);
        self.save_status();
        result
    }

    /// Parses and judges what a fetch of source `i` found.
    pub fn prepare(&self, i: usize, got: Got, force: bool) -> Result<Prepared, RefreshError> {
        let source = &self.sources[i];
        let held_version = source.status.version.clone();
        let (body, from, etag, last_modified, service_version) = match got {
            Got::Unchanged { why } => {
                return Ok(Prepared::Unchanged {
                    version: held_version,
                    why,
                });
            }
            Got::Body {
                body,
                from,
                etag,
                last_modified,
                version,
            } => (body, from, etag, last_modified, version),
        };
        let digest = sha256(&body);
        let held = source.held.as_ref();
        if !force && held.is_some_and(|(_, meta)| meta.sha256 == digest) {
            // The service may give the same content a new version: the file is known by it.
            return Ok(Prepared::Unchanged {
                version: service_version.or(held_version),
                why: "the same content as held",
            });
        }
        let refused = |version: Option<&str>, reason| RefreshError::Refused {
            name: source.config.name.clone(),
            what: what(&source.config, version),
            from: from.clone(),
            reason,
        };
        let parsed = source
            .config
            .parse(source.first, &body, self.config.prefix_limits())
            .map_err(|error| refused(service_version.as_deref(), Box::new(Reason::Parse(error))))?;
        let version = service_version.or_else(|| parsed.version.clone());
        if !force {
            let new = gate::File {
                version: version.as_deref(),
                sha256: &digest,
                sets: &parsed.sets,
            };
            let old = held.map(|(parsed, meta)| gate::File {
                version: meta.version.as_deref().or(parsed.version.as_deref()),
                sha256: &meta.sha256,
                sets: &parsed.sets,
            });
            gate::judge(
                &gate::Hint(sync_command(&source.config.name)),
                old,
                new,
                source.limits(&self.config.feed),
            )
            .map_err(|error| refused(version.as_deref(), Box::new(Reason::Gate(error))))?;
        }
        let meta = Meta {
            version,
            sha256: digest,
            etag,
            last_modified,
            from,
            fetched_at: Time::now(),
        };
        Ok(Prepared::New(Box::new(Candidate {
            i,
            body,
            parsed,
            meta,
        })))
    }

    /// Applies the union with a candidate file in its source's place, then records the file
    /// as the source's last good one. Another source's prefixes never change here.
    pub fn take(&mut self, candidate: Box<Candidate>) -> Result<Refreshed, RefreshError> {
        let Candidate {
            i,
            body,
            parsed,
            meta,
        } = *candidate;
        let name = self.sources[i].config.name.clone();
        let version = Some(version_of(&parsed, &meta));
        if self.unknown_pins && name != M365 {
            self.state.save_source(&name, &body, &meta)?;
            self.sources[i].hold(parsed, meta);
            self.index_sets();
            return Ok(Refreshed::Held { version });
        }
        let what = what(&self.sources[i].config, version.as_deref());
        let compiled = self.compile_union(Some((i, &parsed.sets, &meta.from)), &name, &what)?;
        let report = self.apply_with(i, &compiled, &body, parsed, meta)?;
        info!(
            "source {name}: applied {} from {}: {}",
            version.as_deref().unwrap_or("?"),
            self.sources[i].status.from.as_deref().unwrap_or("?"),
            report.describe(&compiled)
        );
        Ok(Refreshed::Applied { version, report })
    }

    /// Writes `compiled`, then keeps source `i`'s new file: held, recorded, on disk, and
    /// (for a Microsoft 365 feed) in the patterns and the PAC file. A failed write leaves the
    /// source's previous file held and the maps rolled back to it.
    fn apply_with(
        &mut self,
        i: usize,
        compiled: &Compiled,
        body: &[u8],
        parsed: Parsed,
        meta: Meta,
    ) -> Result<ApplyReport, RefreshError> {
        let report = self.write(compiled)?;
        let source = &mut self.sources[i];
        source.hold(parsed, meta);
        source.status.applied_at = Some(Time::now());
        self.index_sets();
        let source = &self.sources[i];
        if let Some((_, meta)) = &source.held {
            self.state.save_source(&source.config.name, body, meta)?;
        }
        self.record(compiled)?;
        if self.sources[i].config.kind == Kind::M365 {
            self.sources_changed();
        }
        Ok(report)
    }

    /// A dry run of what `got` would do to source `name`: the same [`Agent::prepare`] and
    /// union as a real refresh, applying nothing. A refused file's target is what it would
    /// install if forced.
    pub fn plan(&self, name: &str, got: Got, force: bool) -> Result<Plan, RefreshError> {
        let i = self.source_index(name)?;
        let installed = self.maps.installed()?;
        let (version, from) = match &got {
            Got::Body { version, from, .. } => (version.clone(), from.clone()),
            Got::Unchanged { .. } => (self.sources[i].status.version.clone(), String::new()),
        };
        let (prepared, refused) = match self.prepare(i, got.clone(), force) {
            Ok(prepared) => (Some(prepared), None),
            // What it would install were it forced, when it parses at all.
            Err(error @ RefreshError::Refused { .. }) => {
                (self.prepare(i, got, true).ok(), Some(error))
            }
            Err(error) => return Err(error),
        };
        let (target, refused) = match prepared {
            Some(Prepared::New(candidate)) => {
                let what = what(&self.sources[i].config, candidate.meta.version.as_deref());
                let replace = (
                    i,
                    candidate.parsed.sets.as_slice(),
                    candidate.meta.from.as_str(),
                );
                match self.compile_union(Some(replace), name, &what) {
                    Ok(target) => (target, refused),
                    Err(error) => (installed.clone(), refused.or(Some(error))),
                }
            }
            Some(Prepared::Unchanged { .. }) | None => (installed.clone(), refused),
        };
        let version = version.or_else(|| self.sources[i].status.version.clone());
        Ok(Plan {
            installed,
            target,
            version,
            from,
            refused,
        })
    }

    /// Records the end of a scheduled refresh of source `i`; returns the wait before its
    /// next: its refresh interval with jitter, or a backoff (a 429's `Retry-After`).
    pub fn finish(&mut self, i: usize, result: &Result<Refreshed, RefreshError>) -> Duration {
        let source = &mut self.sources[i];
        let refresh = source.config.refresh;
        let wait = match result {
            Ok(_) => jittered(refresh),
            Err(error) => {
                let wait = error
                    .retry_after()
                    .unwrap_or_else(|| backoff(source.status.consecutive_failures, refresh));
                warn!(
                    "{error}; keeping its installed prefixes, next try in {}s",
                    wait.as_secs()
                );
                wait
            }
        };
        source.next_due = tokio::time::Instant::now() + wait;
        source.status.next_refresh = Some(Time::now().after(wait.as_secs()));
        self.save_status();
        wait
    }

    /// The status of every source.
    #[must_use]
    pub fn source_statuses(&self) -> Vec<SourceStatus> {
        self.sources
            .iter()
            .map(|source| source.status.clone())
            .collect()
    }
}

/// The command that refreshes source `name` by hand: `sync` is `sync --source m365`.
fn sync_command(name: &str) -> String {
    if name == M365 {
        "xdp-breakout sync".to_owned()
    } else {
        format!("xdp-breakout sync --source {name}")
    }
}

/// How a refusal names a file: `feed VERSION` (a Microsoft 365 feed) or `file VERSION`.
fn what(config: &SourceConfig, version: Option<&str>) -> String {
    let noun = if config.kind == Kind::M365 {
        "feed"
    } else {
        "file"
    };
    match version {
        Some(version) => format!("{noun} {version}"),
        None => noun.to_owned(),
    }
}

/// A file given by hand (or built in), as a fetch would bring it.
fn file(body: &[u8], version: Option<&str>, from: &str) -> Got {
    Got::Body {
        body: body.to_vec(),
        from: from.to_owned(),
        etag: None,
        last_modified: None,
        version: version.map(str::to_owned),
    }
}
