//! Keeping the maps equal to Microsoft's feed, without a gap and without a bad feed.
//!
//! A feed goes through the same gate whatever its source (the service, the state directory,
//! the embedded snapshot, a file): parse and validate, compile with the operator's filter,
//! refuse a suspicious shrink, apply as a diff (new and changed entries first, stale ones
//! last), and only then record it as applied. A failure at any step leaves the maps as they
//! were. Each trie value is self-contained (no shared rule slots), so an update replaces one
//! prefix's rules in one atomic step and nothing can point at a stale slot.

use std::time::Duration;

use tracing::{info, warn};

use crate::{
    EMBEDDED_FEED, EMBEDDED_FEED_VERSION,
    client::{FeedClient, FetchError, Fetched},
    compile::{CompileError, Compiled, compile_excluding},
    config::Config,
    datapath::{ApplyReport, DatapathError, Maps, PinLock},
    feed::{Category, EndpointSet, Feed, FeedError},
    gate::{self, Change, GateError},
    sources::{
        Kind, Parsed, SourceConfig,
        fetch::{Got, Meta, SourceFetcher, sha256},
        source::filter_m365,
    },
    state::{
        Applied, CatalogSet, CatalogSource, SourceCatalog, SourceStatus, State, StateError, Status,
        now,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("refused feed {version} from {source_name}")]
    Invalid {
        version: String,
        source_name: String,
        #[source]
        source: FeedError,
    },
    #[error("refused feed {version} from {source_name}")]
    Compile {
        version: String,
        source_name: String,
        #[source]
        source: CompileError,
    },
    #[error("refused feed {version} from {source_name}: no prefix is left after the filter")]
    NothingLeft {
        version: String,
        source_name: String,
    },
    /// The feed parsed, but the gate refused what it says or how much it changes.
    #[error("refused feed {version} from {source_name}: {reason}")]
    Refused {
        version: String,
        source_name: String,
        reason: GateError,
    },
    #[error("updating the maps")]
    Maps(#[from] DatapathError),
    #[error("recording the applied feed")]
    State(#[from] StateError),
    /// A `[[sources]]` entry's fetch or file was refused; nothing of it was applied and no
    /// other source changed.
    #[error("source {name}: {message}")]
    Source {
        name: String,
        message: String,
        /// The wait a 429 asked for.
        retry_after: Option<Duration>,
    },
    #[error("no source is named {name:?} (configured: {known})")]
    NoSuchSource { name: String, known: String },
}

impl RefreshError {
    /// How long the service asked us to wait, for a 429.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Fetch(error) => error.retry_after(),
            Self::Source { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What a refresh did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The service has the version the maps hold.
    Unchanged { version: String },
    Applied {
        version: String,
        report: ApplyReport,
    },
}

/// Where the maps' content came from at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The state directory's last feed, recompiled with the current configuration.
    LastFeed {
        version: String,
        report: ApplyReport,
    },
    /// Pinned entries of unknown origin (an `attach` before), kept.
    Pinned { prefixes: usize },
    /// The snapshot built into the binary.
    Embedded { report: ApplyReport },
}

/// What a refresh of a `[[sources]]` entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRefreshed {
    /// Nothing new: a 304, the same content, or the same version.
    Unchanged {
        why: &'static str,
    },
    /// The new file is held; the maps change once `[feed]` is installed.
    Held,
    Applied {
        report: ApplyReport,
    },
}

/// A `[[sources]]` entry as the agent keeps it.
struct Source {
    config: SourceConfig,
    first: u32,
    /// Its last good file, compiled: what the maps hold of it.
    held: Option<(Parsed, Meta)>,
    status: SourceStatus,
    next_due: tokio::time::Instant,
}

impl Source {
    fn new(config: SourceConfig, first: u32) -> Self {
        let status = SourceStatus {
            name: config.name.clone(),
            kind: config.kind.to_string(),
            location: config.location(),
            policy: if config.kind == Kind::M365 {
                "by category".to_owned()
            } else {
                classifier_common::action::name(if config.category() == Category::Direct {
                    classifier_common::action::DIRECT
                } else {
                    classifier_common::action::TUNNEL
                })
                .to_owned()
            },
            first_set: first,
            ..SourceStatus::default()
        };
        Self {
            config,
            first,
            held: None,
            status,
            next_due: tokio::time::Instant::now(),
        }
    }

    fn hold(&mut self, parsed: Parsed, meta: Meta) {
        self.status.version = Some(
            meta.version
                .clone()
                .or_else(|| parsed.version.clone())
                .unwrap_or_else(|| format!("sha256:{}", &meta.sha256[..16])),
        );
        (self.status.prefixes_v4, self.status.prefixes_v6) = (parsed.v4, parsed.v6);
        self.held = Some((parsed, meta));
    }

    fn sets(&self) -> &[EndpointSet] {
        self.held.as_ref().map_or(&[], |(parsed, _)| &parsed.sets)
    }
}

pub struct Agent {
    config: Config,
    /// `[[sources]]`, in configuration order.
    sources: Vec<Source>,
    /// The filtered endpoint sets of the `[feed]` the maps hold, once one is installed.
    primary: Option<Vec<EndpointSet>>,
    client_id: String,
    /// What the metrics listener reads.
    shared: std::sync::Arc<crate::metrics::Shared>,
    /// DNS learning: the name patterns, the learned addresses, and whether some were written
    /// to the tries alone (not yet applied with the rest, nor recorded).
    patterns: crate::dns::Patterns,
    learned: crate::dns::Learned,
    learn_dirty: bool,
    /// The health checks found the direct uplink dead: direct verdicts go to the tunnel.
    uplink_down: bool,
    maps: Maps,
    /// The pin directory to lock while the maps change; `None` for private maps.
    lock_dir: Option<std::path::PathBuf>,
    client: FeedClient,
    state: State,
    status: Status,
}

impl Agent {
    pub fn new(config: Config, maps: Maps, state: State) -> anyhow::Result<Self> {
        let client_id = state.client_id()?;
        let client = FeedClient::new(&config.feed, &client_id)?;
        let status = Status {
            instance: config.feed.instance.clone(),
            feed_url: config.feed.url.clone(),
            interfaces: config.interfaces.clone(),
            mark: config.policy.mark.to_string(),
            applied: state.applied(),
            pid: std::process::id(),
            ..Status::default()
        };
        let uplink = Some(crate::state::Uplink {
            state: if config.health.checks() {
                crate::health::State::Up
            } else {
                crate::health::State::Unchecked
            },
            since: None,
            reason: None,
            transitions: 0,
            failed_probes: 0,
            targets: Vec::new(),
        });
        let status = Status { uplink, ..status };
        let mut agent = Self {
            sources: Vec::new(),
            primary: None,
            client_id,
            shared: std::sync::Arc::default(),
            patterns: crate::dns::Patterns::default(),
            learned: crate::dns::Learned::default(),
            learn_dirty: false,
            config,
            uplink_down: false,
            maps,
            lock_dir: None,
            client,
            state,
            status,
        };
        agent.load_sources();
        agent.adopt_recorded_feed();
        agent.feed_changed();
        agent.share_sets();
        Ok(agent)
    }

    /// Takes the state directory's last feed as what the maps hold of `[feed]` when its
    /// record's digest is the maps' (a `sync --source` beside a running agent): a source
    /// then applies over it at once.
    fn adopt_recorded_feed(&mut self) {
        let Some((body, applied)) = self.state.last_feed() else {
            return;
        };
        let Ok(installed) = self.maps.installed() else {
            return;
        };
        if applied.entries.as_deref() == Some(installed.digest().as_str()) {
            self.primary = self
                .primary_sets(&body, &applied.version, &applied.source)
                .ok();
        }
    }

    /// Builds the `[[sources]]` entries of the configuration, each with its last good file
    /// from the state directory (compiled with today's configuration), keeping what the
    /// previous ones knew of their fetches.
    fn load_sources(&mut self) {
        let firsts = crate::sources::first_set_ids(&self.config.sources).unwrap_or_default();
        let mut old = std::mem::take(&mut self.sources);
        for (config, first) in self.config.sources.iter().zip(firsts) {
            let mut source = Source::new(config.clone(), first);
            if let Some(at) = old.iter().position(|old| old.config.name == config.name) {
                let old = old.swap_remove(at);
                source.next_due = old.next_due;
                source.status.last_success = old.status.last_success;
                source.status.last_attempt = old.status.last_attempt;
                source.status.next_refresh = old.status.next_refresh;
                source.status.last_error = old.status.last_error;
                source.status.consecutive_failures = old.status.consecutive_failures;
            }
            if let Some((body, meta)) = self.state.source(&config.name) {
                match config.parse(first, &body, self.config.prefix_limits()) {
                    Ok(parsed) => source.hold(parsed, meta),
                    Err(error) => warn!(
                        "source {}: its last good file in {} is unusable now: {error}",
                        config.name,
                        self.state.dir().display()
                    ),
                }
            }
            self.sources.push(source);
        }
    }

    /// The `[feed]` sets `primary` with every source's held sets (`replace` stands in for
    /// source `i`'s) and the operator's `include`, compiled and shadowed by `exclude`.
    fn union(
        &self,
        primary: &[EndpointSet],
        replace: Option<(usize, &[EndpointSet])>,
    ) -> Result<Compiled, CompileError> {
        let mut sets = primary.to_vec();
        for (i, source) in self.sources.iter().enumerate() {
            match replace {
                Some((at, new)) if at == i => sets.extend_from_slice(new),
                _ => sets.extend_from_slice(source.sets()),
            }
        }
        sets.extend(self.learned.sets(&self.patterns));
        sets.extend(self.operator_set());
        compile_excluding(&sets, &self.config.policy.exclude)
    }

    /// The operator's `include` prefixes as set 0: Optimize by address.
    fn operator_set(&self) -> Option<EndpointSet> {
        let include = &self.config.policy.include;
        (!include.is_empty()).then(|| EndpointSet {
            id: 0,
            service_area: "operator".to_owned(),
            category: Category::Optimize,
            prefixes: include.clone(),
            tcp: Vec::new(),
            udp: Vec::new(),
            by_address: true,
        })
    }

    /// The names of `[feed]` and every source, for messages.
    fn source_names(&self) -> String {
        std::iter::once(crate::config::FEED_SOURCE_NAME)
            .chain(
                self.sources
                    .iter()
                    .map(|source| source.config.name.as_str()),
            )
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The index of source `name`.
    pub fn source_index(&self, name: &str) -> Result<usize, RefreshError> {
        self.sources
            .iter()
            .position(|source| source.config.name == name)
            .ok_or_else(|| RefreshError::NoSuchSource {
                name: name.to_owned(),
                known: self.source_names(),
            })
    }

    /// The source due first, and when.
    #[must_use]
    pub fn next_source(&self) -> Option<(usize, tokio::time::Instant)> {
        self.sources
            .iter()
            .enumerate()
            .map(|(i, source)| (i, source.next_due))
            .min_by_key(|(_, due)| *due)
    }

    /// The fetch of source `i`, apart from the agent (dropping it cancels it).
    pub fn source_fetcher(&self, i: usize, force: bool) -> Result<SourceFetcher, FetchError> {
        let source = &self.sources[i];
        SourceFetcher::new(
            &source.config,
            &self.config.feed,
            &self.client_id,
            source.held.as_ref().map(|(_, meta)| meta.clone()),
            force,
        )
    }

    /// Fetches source `name` now and applies what it finds (`sync --source`).
    pub async fn refresh_source(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<SourceRefreshed, RefreshError> {
        self.reconcile();
        let i = self.source_index(name)?;
        let got = match self.source_fetcher(i, force) {
            Ok(fetcher) => fetcher.run().await,
            Err(error) => Err(error),
        };
        let result = self.accept_source(i, got, force);
        self.save_status();
        result
    }

    /// Takes what a fetch of source `i` found: refused (and recorded) unless it parses, passes
    /// the gate, is not older and does not shrink the source beyond its limit; then the union
    /// of every source is applied. Another source's prefixes never change here.
    pub fn accept_source(
        &mut self,
        i: usize,
        got: Result<Got, FetchError>,
        force: bool,
    ) -> Result<SourceRefreshed, RefreshError> {
        let name = self.sources[i].config.name.clone();
        self.sources[i].status.last_attempt = Some(now());
        let result = self.take_source(i, got, force);
        let status = &mut self.sources[i].status;
        match &result {
            Ok(outcome) => {
                status.last_success = Some(now());
                status.last_error = None;
                status.consecutive_failures = 0;
                match outcome {
                    SourceRefreshed::Unchanged { why } => info!("source {name}: unchanged ({why})"),
                    SourceRefreshed::Held => {
                        info!("source {name}: new file held until [feed] is installed");
                    }
                    SourceRefreshed::Applied { .. } => {}
                }
            }
            Err(error) => {
                status.last_error = Some(error.to_string());
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            }
        }
        result
    }

    fn take_source(
        &mut self,
        i: usize,
        got: Result<Got, FetchError>,
        force: bool,
    ) -> Result<SourceRefreshed, RefreshError> {
        let source = &self.sources[i];
        let name = source.config.name.clone();
        let refused = |message: String| RefreshError::Source {
            name: name.clone(),
            message,
            retry_after: None,
        };
        let got = got.map_err(|error| RefreshError::Source {
            name: name.clone(),
            retry_after: error.retry_after(),
            message: format!("{:#}", anyhow::Error::from(error)),
        })?;
        let (body, from, etag, last_modified, service_version) = match got {
            Got::Unchanged { why } => return Ok(SourceRefreshed::Unchanged { why }),
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
            return Ok(SourceRefreshed::Unchanged {
                why: "the same content as held",
            });
        }
        let parsed = source
            .config
            .parse(source.first, &body, self.config.prefix_limits())
            .map_err(|error| refused(format!("{from}: {error}")))?;
        let version = service_version.or_else(|| parsed.version.clone());
        if !force {
            let limit = source
                .config
                .max_shrink_percent
                .unwrap_or(self.config.feed.max_shrink_percent);
            judge(held, &parsed, version.as_deref(), &from, limit)
                .map_err(|why| refused(format!("{why}; sync --source {name} --force takes it")))?;
        }
        let meta = Meta {
            version,
            sha256: digest,
            etag,
            last_modified,
            from,
            fetched_at: now(),
        };
        let Some(primary) = &self.primary else {
            self.state.save_source(&name, &body, &meta)?;
            self.sources[i].hold(parsed, meta);
            return Ok(SourceRefreshed::Held);
        };
        let compiled = self
            .union(primary, Some((i, &parsed.sets)))
            .map_err(|error| refused(error.to_string()))?;
        let _lock = self.lock_dir.as_deref().map(PinLock::acquire).transpose()?;
        let installed = self.maps.installed()?;
        let report = self.maps.apply_over(&installed, &compiled)?;
        self.shared
            .apply_seconds
            .observe(report.ready.as_secs_f64());
        self.state.save_source(&name, &body, &meta)?;
        self.sources[i].hold(parsed, meta);
        self.record_union(&compiled)?;
        if self.sources[i].config.kind == Kind::M365 {
            self.feed_changed();
        }
        info!(
            "source {name}: applied {} from {}: {}",
            self.sources[i].status.version.as_deref().unwrap_or("?"),
            self.sources[i]
                .held
                .as_ref()
                .map_or("?", |(_, meta)| meta.from.as_str()),
            report.describe(&compiled)
        );
        Ok(SourceRefreshed::Applied { report })
    }

    /// What the agent hands to its metrics listener, kept current.
    #[must_use]
    pub fn shared(&self) -> std::sync::Arc<crate::metrics::Shared> {
        std::sync::Arc::clone(&self.shared)
    }

    /// Hands the listener the names of the endpoint sets the maps hold.
    fn share_sets(&self) {
        use crate::metrics::SetLabels;
        let label = |set: &EndpointSet, source: &str| SetLabels {
            id: u16::try_from(set.id).unwrap_or(u16::MAX),
            service_area: set.service_area.clone(),
            category: classifier_common::category::name(set.category.code()).unwrap_or("unknown"),
            source: source.to_owned(),
        };
        let mut sets: Vec<SetLabels> = self
            .primary
            .iter()
            .flatten()
            .map(|set| label(set, crate::config::FEED_SOURCE_NAME))
            .collect();
        for source in &self.sources {
            sets.extend(
                source
                    .sets()
                    .iter()
                    .map(|set| label(set, &source.config.name)),
            );
        }
        sets.push(SetLabels {
            id: 0,
            service_area: "operator".to_owned(),
            category: "Optimize",
            source: "operator".to_owned(),
        });
        if let Ok(mut shared) = self.shared.sets.lock() {
            *shared = sets;
        }
    }

    /// Records that the maps hold `compiled`: the applied record's digest and the catalog of
    /// the sources' sets.
    fn record_union(&mut self, compiled: &Compiled) -> Result<(), StateError> {
        let digest = compiled.digest();
        if let Some(applied) = &mut self.status.applied {
            applied.entries = Some(digest.clone());
            self.state.save_applied_record(applied)?;
        }
        (self.status.prefixes_v4, self.status.prefixes_v6) = (compiled.v4.len(), compiled.v6.len());
        let catalog = SourceCatalog {
            entries: digest,
            sources: self
                .sources
                .iter()
                .map(|source| CatalogSource {
                    name: source.config.name.clone(),
                    kind: source.config.kind.to_string(),
                    first_set: source.first,
                    sets: source
                        .sets()
                        .iter()
                        .map(|set| CatalogSet {
                            id: set.id,
                            service_area: set.service_area.clone(),
                            category: set.category.code(),
                            prefixes: set.prefixes.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        self.state.save_catalog(&catalog)?;
        self.save_learned();
        self.share_sets();
        Ok(())
    }

    /// What follows a change of the Microsoft 365 feeds the maps hold (`[feed]`'s, an `m365`
    /// source's) or of the configuration: the name patterns of DNS learning and, with `[pac]
    /// serve`, the PAC file. Not on every apply: learned addresses change neither.
    fn feed_changed(&mut self) {
        self.rebuild_patterns();
        if self.config.pac.serve {
            let pac = crate::pac::build(&self.config, None, None, None);
            if let Err(error) = &pac {
                warn!("pac: {error}");
            }
            if let Ok(mut shared) = self.shared.pac.lock() {
                *shared = pac.ok();
            }
        }
    }

    /// The name patterns DNS answers are matched against: `[feed]`'s URLs, each `m365`
    /// source's, and the operator's `[[domains]]`.
    fn rebuild_patterns(&mut self) {
        use crate::dns::{Patterns, Target};
        if !self.config.dns.learn {
            return;
        }
        let mut patterns = Patterns::default();
        if self.primary.is_some()
            && let Some((body, _)) = self.state.last_feed()
            && let Err(error) = patterns.add_feed(&body, 0, crate::config::FEED_SOURCE_NAME)
        {
            warn!("dns: {error}");
        }
        for source in &self.sources {
            if source.config.kind == Kind::M365
                && source.held.is_some()
                && let Some((body, _)) = self.state.source(&source.config.name)
                && let Err(error) = patterns.add_feed(&body, source.first, &source.config.name)
            {
                warn!("dns: source {}: {error}", source.config.name);
            }
        }
        let base = crate::sources::source::domain_set_base(&self.config.sources);
        for (id, rule) in (base..).zip(&self.config.domains) {
            let all = rule.tcp.is_none() && rule.udp.is_none();
            let ports = |text: &Option<String>| {
                if all {
                    vec![crate::sources::source::ALL_PORTS]
                } else {
                    crate::feed::parse_ports(text.as_deref()).unwrap_or_default()
                }
            };
            patterns.add_rule(
                &rule.name,
                Target {
                    id,
                    service_area: rule.name.clone(),
                    category: match rule.policy {
                        crate::sources::SourcePolicy::Direct => Category::Direct,
                        crate::sources::SourcePolicy::Tunnel => Category::Tunnel,
                    },
                    tcp: ports(&rule.tcp),
                    udp: ports(&rule.udp),
                    by_address: all,
                    source: "domains".to_owned(),
                },
            );
        }
        self.patterns = patterns;
    }

    /// Learns from DNS answers (`[dns] learn`): `records` are `(capture time on
    /// CLOCK_MONOTONIC in ns, message)`. An address new to a set is written to the tries at
    /// once, folded with the prefixes that cover it; the whole table follows at the next
    /// [`Agent::settle`]. Returns, per record that taught something, the time from its capture
    /// until its addresses were in the maps.
    pub fn learn(&mut self, records: &[(u64, Vec<u8>)]) -> Vec<Duration> {
        if !self.config.dns.learn || self.patterns.is_empty() {
            return Vec::new();
        }
        let dns = &self.config.dns;
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let limits = crate::dns::Limits {
            min_ttl: seconds(dns.min_ttl),
            max_ttl: seconds(dns.max_ttl),
            grace: seconds(dns.grace),
            max_entries: usize::try_from(dns.max_learned).unwrap_or(usize::MAX),
            max_per_name: usize::try_from(dns.max_per_name).unwrap_or(usize::MAX),
        };
        let exclude = self.config.policy.exclude.clone();
        let mut latencies = Vec::new();
        for (captured, message) in records {
            let taken = self
                .learned
                .take(message, &self.patterns, limits, now(), |addr| {
                    exclude.iter().any(|net| net.contains(&addr))
                });
            if taken.new.is_empty() {
                continue;
            }
            for address in &taken.new {
                if let Err(error) = self.write_learned(*address) {
                    warn!("dns: writing {address}: {error:#}");
                }
            }
            self.learn_dirty = true;
            latencies.push(Duration::from_nanos(
                crate::datapath::monotonic_ns().saturating_sub(*captured),
            ));
        }
        for latency in &latencies {
            self.shared.dns_seconds.observe(latency.as_secs_f64());
        }
        if let Ok(mut counts) = self.shared.dns.lock() {
            counts.clone_from(&self.learned.counts);
        }
        latencies
    }

    /// Writes the entry of one learned address: what compiling the whole table would give
    /// it (its sets' rules folded with every prefix that covers it).
    fn write_learned(&mut self, address: std::net::IpAddr) -> anyhow::Result<()> {
        let Some(primary) = &self.primary else {
            return Ok(());
        };
        let host = ipnet::IpNet::from(address);
        let mut sets: Vec<EndpointSet> = Vec::new();
        let mut covering = |set: &EndpointSet| {
            let prefixes: Vec<ipnet::IpNet> = set
                .prefixes
                .iter()
                .filter(|net| net.contains(&address))
                .copied()
                .collect();
            if !prefixes.is_empty() {
                sets.push(EndpointSet {
                    prefixes,
                    ..set.clone_without_prefixes()
                });
            }
        };
        primary.iter().for_each(&mut covering);
        for source in &self.sources {
            source.sets().iter().for_each(&mut covering);
        }
        if let Some(operator) = self.operator_set() {
            covering(&operator);
        }
        // Learned entries are host prefixes: only the address's own can cover it.
        sets.extend(self.learned.sets_of(address, &self.patterns));
        let compiled = compile_excluding(&sets, &self.config.policy.exclude)?;
        let value = match host {
            ipnet::IpNet::V4(net) => compiled.v4.get(&crate::compile::key_v4(net)),
            ipnet::IpNet::V6(net) => compiled.v6.get(&crate::compile::key_v6(net)),
        };
        if let Some(value) = value {
            self.maps.insert_prefix(host, value)?;
        }
        Ok(())
    }

    /// What DNS answers did since the agent started.
    #[must_use]
    pub fn learned_counts(&self) -> crate::dns::Counts {
        self.learned.counts.clone()
    }

    /// Applies the whole table, learned addresses included, when some were written alone.
    pub fn settle(&mut self) {
        if !self.learn_dirty {
            return;
        }
        self.learn_dirty = false;
        if let Err(error) = self.apply_union() {
            warn!("dns: applying the learned addresses: {error:#}");
        }
    }

    /// Forgets learned addresses past their time (keeping those flows used within the grace
    /// period), and applies the table without them.
    pub fn expire_learned(&mut self) {
        let now = now();
        // The flow table is read only when something is due.
        if !self
            .learned
            .entries
            .values()
            .any(|entry| entry.expires <= now)
        {
            return;
        }
        let grace = u32::try_from(self.config.dns.grace.as_secs()).unwrap_or(u32::MAX);
        let recent = crate::datapath::monotonic_ns().saturating_sub(
            self.config
                .dns
                .grace
                .as_nanos()
                .try_into()
                .unwrap_or(u64::MAX),
        );
        let in_use: std::collections::HashSet<std::net::IpAddr> = self
            .maps
            .flows()
            .unwrap_or_default()
            .iter()
            .filter(|flow| flow.value.last_ns >= recent)
            .map(|flow| flow.key.dst_addr())
            .collect();
        if self
            .learned
            .expire(now, grace, |addr| in_use.contains(&addr))
        {
            self.learn_dirty = false;
            if let Err(error) = self.apply_union() {
                warn!("dns: removing expired addresses: {error:#}");
            }
        }
    }

    /// Compiles and applies the union of everything (`[feed]` installed), and records it.
    fn apply_union(&mut self) -> Result<ApplyReport, RefreshError> {
        let Some(primary) = &self.primary else {
            return Ok(ApplyReport::default());
        };
        let compiled = self
            .union(primary, None)
            .map_err(|error| RefreshError::Source {
                name: "dns".to_owned(),
                message: error.to_string(),
                retry_after: None,
            })?;
        let _lock = self.lock_dir.as_deref().map(PinLock::acquire).transpose()?;
        let installed = self.maps.installed()?;
        let report = self.maps.apply_over(&installed, &compiled)?;
        self.shared
            .apply_seconds
            .observe(report.ready.as_secs_f64());
        self.record_union(&compiled)?;
        Ok(report)
    }

    /// Writes `learned.json` for `learned` and `lookup`.
    fn save_learned(&self) {
        if !self.config.dns.learn {
            return;
        }
        let mut rows: Vec<crate::state::LearnedRow> = self
            .learned
            .entries
            .values()
            .flat_map(|entry| {
                entry.sets.iter().filter_map(|id| {
                    let target = self.patterns.target(*id)?;
                    Some(crate::state::LearnedRow {
                        address: entry.address,
                        name: entry.name.clone(),
                        matched: entry.matched.clone(),
                        set: *id,
                        service_area: target.service_area.clone(),
                        category: target.category.to_string(),
                        source: target.source.clone(),
                        expires: entry.expires,
                    })
                })
            })
            .collect();
        rows.sort_by_key(|row| (row.address, row.set));
        let learned = crate::state::LearnedFile {
            counts: self.learned.counts.clone(),
            rows,
        };
        if let Err(error) = self.state.save_learned(&learned) {
            warn!("{:#}", anyhow::Error::from(error));
        }
    }

    /// Records the end of a scheduled refresh of source `i`; returns the wait before its next.
    pub fn finish_source(
        &mut self,
        i: usize,
        result: &Result<SourceRefreshed, RefreshError>,
    ) -> Duration {
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
        source.status.next_refresh = Some(now().saturating_add(wait.as_secs()));
        self.save_status();
        wait
    }

    /// Locks `pin_dir` around every change of the maps (for pinned maps).
    #[must_use]
    pub fn locking(mut self, pin_dir: &std::path::Path) -> Self {
        self.lock_dir = Some(pin_dir.to_owned());
        self
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    #[must_use]
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Writes the policy and the kernel config (mark, strict ports, debug log, and whether
    /// the direct uplink is down).
    pub fn apply_settings(&mut self) -> Result<(), DatapathError> {
        self.maps.set_policy(self.config.actions())?;
        let mut kernel = self.config.kernel_config();
        if self.uplink_down {
            kernel.flags |= classifier_common::flags::UPLINK_DOWN;
        }
        self.maps.set_config(&kernel)
    }

    /// The direct uplink's state, for a reload that restarts the health checks.
    #[must_use]
    pub fn uplink_state(&self) -> crate::health::State {
        self.status
            .uplink
            .as_ref()
            .map_or(crate::health::State::Unchecked, |uplink| uplink.state)
    }

    /// Takes a report of the health checks: a transition fails direct verdicts over to the
    /// tunnel (or back) with one write of the config map.
    pub fn health(&mut self, report: crate::health::Report) -> Result<(), DatapathError> {
        use crate::health::State;
        let checks = self.config.health.checks();
        let uplink = self
            .status
            .uplink
            .get_or_insert_with(|| crate::state::Uplink {
                state: State::Unchecked,
                since: None,
                reason: None,
                transitions: 0,
                failed_probes: 0,
                targets: Vec::new(),
            });
        uplink.state = if checks {
            report.state
        } else {
            State::Unchecked
        };
        if let Some(results) = report.results {
            for failed in results.iter().filter(|result| !result.ok) {
                uplink.failed_probes = uplink.failed_probes.saturating_add(1);
                info!(
                    "health: probe {} failed: {}",
                    failed.target,
                    failed.error.as_deref().unwrap_or("no answer")
                );
            }
            uplink.targets = results;
        }
        let mut changed = false;
        if let Some(transition) = report.transition {
            uplink.transitions = uplink.transitions.saturating_add(1);
            uplink.since = Some(now());
            uplink.reason = Some(transition.reason.clone());
            let down = transition.to == State::Down && checks;
            let what = if down {
                "new direct verdicts go to the tunnel"
            } else {
                "direct verdicts go direct again"
            };
            warn!(
                "direct uplink {} -> {}: {}; {what}",
                transition.from, transition.to, transition.reason
            );
            changed = down != self.uplink_down;
            self.uplink_down = down;
        }
        if changed {
            self.apply_settings()?;
        }
        self.save_status();
        Ok(())
    }

    /// Fills the maps at start: the last applied feed, else what is pinned, else the
    /// embedded snapshot; so the router classifies from its first second, offline.
    pub fn start(&mut self) -> Result<Start, RefreshError> {
        if let Some((body, applied)) = self.state.last_feed() {
            match self.install(&body, &applied.version, &applied.source, true) {
                Ok(report) => {
                    return Ok(Start::LastFeed {
                        version: applied.version,
                        report,
                    });
                }
                Err(error) => warn!(
                    "the last applied feed in {} is unusable: {error:#}",
                    self.state.dir().display()
                ),
            }
        }
        let installed = self.maps.installed()?.len();
        if installed > 0 {
            return Ok(Start::Pinned {
                prefixes: installed,
            });
        }
        let source = format!("embedded snapshot {EMBEDDED_FEED_VERSION}");
        let report = self.install(EMBEDDED_FEED, EMBEDDED_FEED_VERSION, &source, true)?;
        Ok(Start::Embedded { report })
    }

    /// Asks the service for its version and applies a new feed when there is one.
    pub async fn refresh(&mut self, force: bool) -> Result<Refreshed, RefreshError> {
        self.reconcile();
        let fetched = self.fetcher(force).run().await?;
        self.accept(fetched, force)
    }

    /// The fetch half of a refresh, apart from the agent: the daemon drops it to cancel a
    /// request in flight when a signal comes.
    #[must_use]
    pub fn fetcher(&self, force: bool) -> Fetcher {
        Fetcher {
            client: self.client.clone(),
            applied: self.status.applied.as_ref().map(|a| a.version.clone()),
            force,
        }
    }

    /// The apply half of a refresh.
    pub fn accept(&mut self, fetch: Fetch, force: bool) -> Result<Refreshed, RefreshError> {
        match fetch {
            Fetch::Unchanged { version } => Ok(Refreshed::Unchanged { version }),
            Fetch::New {
                version,
                endpoints: Fetched { body, url },
            } => {
                let report = self.install(&body, &version, &url, force)?;
                Ok(Refreshed::Applied { version, report })
            }
        }
    }

    /// Takes in what another process changed since this agent last looked: a `sync` that
    /// recorded another feed in the state directory, or an `attach --feed-file` (or any other
    /// writer) that left the maps holding entries no record describes. The next poll then
    /// compares the service's version with what the maps hold, not with what this agent
    /// applied last, and returns the maps to the service's feed.
    pub fn reconcile(&mut self) {
        // Addresses learned since the last apply are ours, not another writer's.
        self.settle();
        let Ok(installed) = self.maps.installed() else {
            return;
        };
        let digest = installed.digest();
        let mut current = self.state.applied();
        if let Some(applied) = &current
            && applied
                .entries
                .as_ref()
                .is_some_and(|entries| *entries != digest)
        {
            current = None;
        }
        if current == self.status.applied {
            return;
        }
        if let Some(applied) = &current {
            warn!(
                "the maps were changed by another process: feed {} from {} (applied at {}); \
                 comparing the service's version with it",
                applied.version,
                applied.source,
                crate::explain::rfc3339(applied.applied_at)
            );
        } else {
            warn!(
                "the maps were changed by another process and hold no recorded feed; \
                 installing the service's feed again"
            );
        }
        (self.status.prefixes_v4, self.status.prefixes_v6) =
            (installed.v4.len(), installed.v6.len());
        // What the other process recorded: the feed it applied and each source's file.
        self.primary = current.as_ref().and_then(|_| {
            let (body, applied) = self.state.last_feed()?;
            self.primary_sets(&body, &applied.version, &applied.source)
                .ok()
        });
        self.load_sources();
        self.feed_changed();
        self.status.applied = current;
        self.save_status();
    }

    /// The service's latest version and its feed body, applying nothing.
    pub async fn fetch(&self) -> Result<(String, Fetched), RefreshError> {
        let version = self.client.version().await?;
        Ok((version, self.client.endpoints().await?))
    }

    /// Where feeds come from, for messages.
    #[must_use]
    pub fn endpoints_url(&self) -> String {
        format!(
            "{}/endpoints/{}",
            self.config.feed.url.trim_end_matches('/'),
            self.config.feed.instance
        )
    }

    /// The gate's verdict on replacing `installed` with `target`.
    pub fn check_change(
        &self,
        installed: &Compiled,
        target: &Compiled,
        version: &str,
        source: &str,
    ) -> Result<(), RefreshError> {
        Change::between(installed, target)
            .check(self.config.change_limits())
            .map_err(|error| RefreshError::Refused {
                version: version.to_owned(),
                source_name: source.to_owned(),
                reason: error,
            })
    }

    /// Validates, compiles and applies a feed body; records it once the maps hold it.
    pub fn install(
        &mut self,
        body: &[u8],
        version: &str,
        source: &str,
        force: bool,
    ) -> Result<ApplyReport, RefreshError> {
        let sets = self.primary_sets(body, version, source)?;
        let compiled = self.compile_with(&sets, version, source)?;
        let _lock = self.lock_dir.as_deref().map(PinLock::acquire).transpose()?;
        let installed = self.maps.installed()?;
        if !force {
            // With other sources in the maps, the feed is judged against its own last
            // prefixes: a shrink of the feed must not hide in a large union.
            match &self.primary {
                Some(old) if !self.sources.is_empty() => {
                    let own =
                        |sets: &[EndpointSet]| compile_excluding(sets, &[]).unwrap_or_default();
                    self.check_change(&own(old), &own(&sets), version, source)?;
                }
                _ => self.check_change(&installed, &compiled, version, source)?,
            }
        }
        let report = self.maps.apply_over(&installed, &compiled)?;
        self.shared
            .apply_seconds
            .observe(report.ready.as_secs_f64());
        let applied = Applied {
            version: version.to_owned(),
            source: source.to_owned(),
            applied_at: now(),
            entries: Some(compiled.digest()),
        };
        self.state.save_applied(body, &applied)?;
        self.status.applied = Some(applied);
        let own = Feed {
            sets,
            total_sets: 0,
        };
        (self.status.feed_prefixes_v4, self.status.feed_prefixes_v6) = own.prefix_counts();
        self.primary = Some(own.sets);
        self.record_union(&compiled)?;
        self.feed_changed();
        info!(
            "applied feed {version} from {source}: {}",
            report.describe(&compiled)
        );
        if let Some(error) = report.index_error {
            warn!("{error}");
        }
        Ok(report)
    }

    /// The entries `body` would install with every source's held file, without touching the
    /// maps.
    pub fn compile(
        &self,
        body: &[u8],
        version: &str,
        source: &str,
    ) -> Result<Compiled, RefreshError> {
        let sets = self.primary_sets(body, version, source)?;
        self.compile_with(&sets, version, source)
    }

    /// `[feed]`'s endpoint sets in `body`, checked by the gate and filtered.
    fn primary_sets(
        &self,
        body: &[u8],
        version: &str,
        source: &str,
    ) -> Result<Vec<EndpointSet>, RefreshError> {
        let feed = Feed::parse(body).map_err(|error| RefreshError::Invalid {
            version: version.to_owned(),
            source_name: source.to_owned(),
            source: error,
        })?;
        gate::check_feed(&feed, self.config.prefix_limits()).map_err(|error| {
            RefreshError::Refused {
                version: version.to_owned(),
                source_name: source.to_owned(),
                reason: error,
            }
        })?;
        Ok(filter_m365(
            feed.sets,
            &self.config.feed.service_areas,
            self.config.feed.no_ipv6,
        ))
    }

    fn compile_with(
        &self,
        sets: &[EndpointSet],
        version: &str,
        source: &str,
    ) -> Result<Compiled, RefreshError> {
        let compiled = self
            .union(sets, None)
            .map_err(|error| RefreshError::Compile {
                version: version.to_owned(),
                source_name: source.to_owned(),
                source: error,
            })?;
        if compiled.is_empty() {
            return Err(RefreshError::NothingLeft {
                version: version.to_owned(),
                source_name: source.to_owned(),
            });
        }
        Ok(compiled)
    }

    /// Takes a new configuration (SIGHUP): new settings, the last feed recompiled with it.
    pub fn reconfigure(&mut self, config: Config) -> anyhow::Result<()> {
        if config.feed != self.config.feed {
            self.client = FeedClient::new(&config.feed, &self.state.client_id()?)?;
        }
        self.config = config;
        self.load_sources();
        if !self.config.health.checks() {
            self.uplink_down = false;
            if let Some(uplink) = &mut self.status.uplink {
                uplink.state = crate::health::State::Unchecked;
            }
        } else if let Some(uplink) = &mut self.status.uplink
            && uplink.state == crate::health::State::Unchecked
        {
            uplink.state = crate::health::State::Up;
        }
        self.status.instance.clone_from(&self.config.feed.instance);
        self.status.feed_url.clone_from(&self.config.feed.url);
        self.status.mark = self.config.policy.mark.to_string();
        self.apply_settings()?;
        match self.state.last_feed() {
            // Installing calls `feed_changed`.
            Some((body, applied)) => {
                self.install(&body, &applied.version, &applied.source, true)?;
            }
            None => self.feed_changed(),
        }
        Ok(())
    }

    /// Records the outcome of a poll in the status file.
    pub fn record_poll(&mut self, error: Option<String>, next_poll: Duration) {
        let now = now();
        self.status.last_poll = Some(now);
        self.status.next_poll = Some(now.saturating_add(next_poll.as_secs()));
        if let Some(error) = error {
            self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
            self.status.last_error = Some(error);
        } else {
            self.status.consecutive_failures = 0;
            self.status.last_error = None;
        }
        self.save_status();
    }

    pub fn save_status(&mut self) {
        self.status.sources = self
            .sources
            .iter()
            .map(|source| source.status.clone())
            .collect();
        if let Ok(mut shared) = self.shared.status.lock() {
            shared.clone_from(&self.status);
        }
        if let Err(error) = self.state.save_status(&self.status) {
            warn!("{:#}", anyhow::Error::from(error));
        }
    }

    #[must_use]
    pub fn status(&self) -> &Status {
        &self.status
    }
}

/// Whether a new file of a source may replace the `held` one: not older than it, not its
/// version with other content, and not removing more than `limit` percent of its prefixes.
fn judge(
    held: Option<&(Parsed, Meta)>,
    parsed: &Parsed,
    version: Option<&str>,
    from: &str,
    limit: u8,
) -> Result<(), String> {
    let Some((held, meta)) = held else {
        return Ok(());
    };
    if let Some(new) = version
        && let Some(old) = meta.version.as_deref().or(held.version.as_deref())
    {
        match (old.parse::<u64>(), new.parse::<u64>()) {
            (Ok(old), Ok(new)) if new < old => {
                return Err(format!(
                    "version {new} from {from} is older than the held {old} (a rollback or a \
                     stale mirror)"
                ));
            }
            _ if old == new => {
                return Err(format!(
                    "the file from {from} states version {new}, the held file's, with other \
                     content (a tampered or half-updated mirror)"
                ));
            }
            _ => {}
        }
    }
    let old: std::collections::HashSet<_> = held
        .sets
        .iter()
        .flat_map(|set| set.prefixes.iter())
        .collect();
    let new: std::collections::HashSet<_> = parsed
        .sets
        .iter()
        .flat_map(|set| set.prefixes.iter())
        .collect();
    let removed = old.difference(&new).count();
    if removed.saturating_mul(100) > old.len().saturating_mul(usize::from(limit)) {
        return Err(format!(
            "the file from {from} removes {removed} of its {} prefixes, more than {limit}% (a \
             truncated or wrong file)",
            old.len()
        ));
    }
    Ok(())
}

/// The wait before the next poll after `failures` consecutive failures: 30 s doubling, at
/// most the poll interval.
#[must_use]
pub fn backoff(failures: u32, poll_interval: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(30)
        .saturating_mul(1 << exponent)
        .min(poll_interval)
}

/// The poll interval plus up to 10% random jitter, so that routers do not poll in step.
#[must_use]
pub fn jittered(poll_interval: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let tenth = poll_interval.as_millis() / 10;
    let jitter = if tenth == 0 {
        0
    } else {
        u128::from(random) % tenth
    };
    poll_interval.saturating_add(Duration::from_millis(u64::try_from(jitter).unwrap_or(0)))
}

/// The fetch half of a refresh: owns what it needs, so dropping it cancels the request.
pub struct Fetcher {
    client: FeedClient,
    applied: Option<String>,
    force: bool,
}

/// What a fetch found.
#[derive(Debug)]
pub enum Fetch {
    /// The service has the version the maps hold.
    Unchanged { version: String },
    /// A version to apply, and its endpoints.
    New { version: String, endpoints: Fetched },
}

impl Fetcher {
    /// `/version`, then `/endpoints` when the version is new and not older than the applied.
    pub async fn run(self) -> Result<Fetch, RefreshError> {
        let version = self.client.version().await?;
        if !self.force {
            if self.applied.as_deref() == Some(version.as_str()) {
                return Ok(Fetch::Unchanged { version });
            }
            gate::check_version(self.applied.as_deref(), &version).map_err(|error| {
                RefreshError::Refused {
                    version: version.clone(),
                    source_name: self.client.version_url(),
                    reason: error,
                }
            })?;
        }
        let endpoints = self.client.endpoints().await?;
        Ok(Fetch::New { version, endpoints })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_poll_interval() {
        let hour = Duration::from_hours(1);
        assert_eq!(backoff(1, hour), Duration::from_secs(30));
        assert_eq!(backoff(2, hour), Duration::from_mins(1));
        assert_eq!(backoff(5, hour), Duration::from_mins(8));
        assert_eq!(backoff(40, hour), hour);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let hour = Duration::from_hours(1);
        for _ in 0..100 {
            let wait = jittered(hour);
            assert!(
                wait >= hour && wait < hour + Duration::from_mins(6),
                "{wait:?}"
            );
        }
    }
}
