//! The agent: keeps the maps equal to the union of its sources, without a gap and without a
//! bad file.
//!
//! Every source, the Microsoft 365 feed (`[feed]`, the `m365` source) among them, goes
//! through the same path ([`refresh`]): fetch, parse and check each prefix, judge the change
//! ([`crate::gate::judge`]), compile the union of every source's last good file with the
//! operator's `include`/`exclude` and the learned addresses, and [`Agent::apply`] it as a
//! diff (new and changed entries first, stale ones last). Only then is the file recorded as
//! the source's last good one. A failure at any step leaves the maps as they were. Each trie
//! value is self-contained (no shared rule slots), so an update replaces one prefix's rules
//! in one atomic step and nothing can point at a stale slot.
//!
//! - [`refresh`]: each source's file, from its fetch to the union (`source`: a source as the
//!   agent keeps it, its limits and its clock; `outcome`: what a refresh ends in);
//! - [`learn`]: DNS answers into learned addresses;
//! - `reconcile`: what another writer changed, found each poll by a check without a
//!   read-back;
//! - [`uplink`]: the direct uplink's health and the kernel settings it changes;
//! - [`view`]: what the agent hands to `status`, `/metrics` and the PAC file;
//! - [`dnsconfig`]: the local resolver's forward zones and the policy rules of its queries;
//! - [`daemon`]: the one event loop of `xdp-breakout run`.

pub mod daemon;
mod dnsconfig;
mod learn;
mod outcome;
mod reconcile;
pub mod refresh;
mod source;
mod uplink;
mod view;

use std::sync::Arc;

use tracing::{info, warn};

use self::source::Source;
pub use self::{
    outcome::{Reason, RefreshError, Refreshed, Start},
    source::{backoff, jittered},
    view::pac_about,
};
use crate::{
    compile::{CompileError, Compiled, compile_excluding},
    config::Config,
    datapath::{ApplyReport, Maps, PinLock},
    feed::{Category, EndpointSet},
    state::{CatalogSet, State, Union, UnionSource},
    time::Time,
};

pub struct Agent {
    config: Config,
    /// Every source, `m365` first, in configuration order.
    sources: Vec<Source>,
    /// Which of the sources' prefixes (and the operator's `include`) cover an address, for
    /// DNS learning: rebuilt by [`Agent::index_sets`] wherever a held file changes.
    cover: crate::cover::Cover,
    client_id: String,
    /// The maps hold entries that no record describes (pins an `attach` filled): a source's
    /// file is held, not applied, until the `m365` source has one, so that nothing is
    /// replaced by a partial union.
    unknown_pins: bool,
    /// What this agent last wrote to the tries, or found there and adopted: the record each
    /// poll's check compares them with (`reconcile`); `None` while they hold a table no
    /// record describes.
    written: Option<reconcile::Written>,
    /// Where that check's walk of each trie resumes.
    walk: crate::datapath::Walk,
    /// Entries of the tries, IPv4 and IPv6, as last written or found.
    prefixes: (usize, usize),
    /// DNS learning: the name patterns, the learned addresses, and whether some were written
    /// to the tries alone or evicted from `learned` while the tries still hold them (not yet
    /// applied with the rest, nor recorded).
    patterns: crate::dns::Patterns,
    learned: crate::dns::Learned,
    learn_dirty: bool,
    /// Learned addresses written to the tries alone since the last apply: the union's record
    /// does not hold them yet, and `learned.json` names them so that `lookup` can tell the
    /// maps apart from that record by exactly these entries.
    pending: std::collections::BTreeSet<std::net::IpAddr>,
    /// The union without learned addresses, compiled once after each change of a source or
    /// the configuration, and each learned address's entry as [`Agent::write_learned`]
    /// computed it: an apply of learned addresses is that table plus those entries, not a
    /// compile of every set ([`Agent::union_of_learned`]).
    base: Option<Compiled>,
    learned_values: std::collections::HashMap<std::net::IpAddr, classifier_common::PrefixRules>,
    /// When `learned.json` was last written.
    learned_saved: Option<std::time::Instant>,
    /// The resolvers whose answers are learned ([`Agent::refresh_trust`]).
    trusted: Vec<std::net::IpAddr>,
    /// Whether this agent is the daemon and attached: only then does it write the status
    /// file ([`Agent::serve`]).
    serving: bool,
    /// The direct uplinks, in configuration order (the kernel's uplink indices).
    uplinks: Vec<uplink::Live>,
    /// The uplink `best` chose for each category, kept while it stays good enough.
    best: [Option<u8>; classifier_common::category::COUNT as usize],
    /// The steering rows last written, and the sensitive categories they keep on degraded
    /// uplinks (warned about once per change).
    written_rows: Option<classifier_common::Uplinks>,
    stuck: Vec<&'static str>,
    maps: Maps,
    /// The pin directory to lock while the maps change; `None` for private maps.
    lock_dir: Option<std::path::PathBuf>,
    state: State,
    /// What the metrics listener reads.
    shared: Arc<crate::metrics::Shared>,
}

impl Agent {
    pub fn new(config: Config, maps: Maps, state: State) -> anyhow::Result<Self> {
        let client_id = state.client_id()?;
        let uplinks = uplink::lives(&config, Vec::new());
        let mut agent = Self {
            config,
            sources: Vec::new(),
            cover: crate::cover::Cover::default(),
            client_id,
            unknown_pins: false,
            written: None,
            walk: crate::datapath::Walk::default(),
            prefixes: (0, 0),
            patterns: crate::dns::Patterns::default(),
            learned: crate::dns::Learned::default(),
            learn_dirty: false,
            pending: std::collections::BTreeSet::new(),
            base: None,
            learned_values: std::collections::HashMap::new(),
            learned_saved: None,
            trusted: Vec::new(),
            serving: false,
            uplinks,
            best: [None; classifier_common::category::COUNT as usize],
            written_rows: None,
            stuck: Vec::new(),
            maps,
            lock_dir: None,
            state,
            shared: Arc::default(),
        };
        agent.refresh_trust();
        agent.refresh_addresses();
        agent.load_sources();
        agent.adopt_record();
        agent.sources_changed();
        Ok(agent)
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

    /// The sets of every source's last good file (source `replace.0`'s replaced by
    /// `replace.1`), the learned addresses and the operator's `include`, compiled and
    /// shadowed by `exclude`.
    fn union(&self, replace: Option<(usize, &[EndpointSet])>) -> Result<Compiled, CompileError> {
        self.compile_sets(replace, true)
    }

    /// [`Agent::union`], with or without the learned addresses.
    fn compile_sets(
        &self,
        replace: Option<(usize, &[EndpointSet])>,
        learned: bool,
    ) -> Result<Compiled, CompileError> {
        let mut sets = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            match replace {
                Some((at, new)) if at == i => sets.extend_from_slice(new),
                _ => sets.extend_from_slice(source.sets()),
            }
        }
        if learned {
            sets.extend(self.learned.sets(&self.patterns));
        }
        sets.extend(self.operator_set());
        compile_excluding(&sets, &self.config.policy.exclude)
    }

    /// The union of every set, learned addresses included, compiled from scratch: what an
    /// apply of the learned addresses, built from the kept table and entries, must equal.
    pub fn union_compiled(&self) -> Result<Compiled, CompileError> {
        self.union(None)
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

    /// The one way the maps change: `target` applied as a diff under the pin lock, then
    /// recorded as what they hold. A write that fails anyway (the kernel's ENOSPC or ENOMEM,
    /// another writer) is rolled back to the last good table, the union of the files held.
    pub fn apply(&mut self, target: &Compiled) -> Result<ApplyReport, RefreshError> {
        let report = self.write(target)?;
        self.record(target)?;
        Ok(report)
    }

    /// The maps made to hold `target`, or back to the last good table: the union of the files
    /// held (a candidate file is held only once its union is written).
    fn write(&mut self, target: &Compiled) -> Result<ApplyReport, RefreshError> {
        let written = {
            let _lock = self.lock_dir.as_deref().map(PinLock::acquire).transpose()?;
            let installed = self.maps.installed()?;
            self.maps.apply_over(&installed, target)
        };
        let error = match written {
            Ok(report) => {
                self.shared
                    .apply_seconds
                    .observe(report.ready.as_secs_f64());
                if let Some(error) = &report.index_error {
                    warn!("{error}");
                }
                return Ok(report);
            }
            Err(error) => error,
        };
        let rolled_back = self
            .union(None)
            .map_err(|error| error.to_string())
            .and_then(|good| {
                let _lock = self
                    .lock_dir
                    .as_deref()
                    .map(PinLock::acquire)
                    .transpose()
                    .map_err(|error| error.to_string())?;
                let now = self.maps.installed().map_err(|error| error.to_string())?;
                self.maps
                    .apply_over(&now, &good)
                    .map_err(|error| format!("{:#}", anyhow::Error::from(error)))?;
                Ok(good)
            });
        match rolled_back {
            Ok(good) => {
                self.remember(&good, good.digest());
                self.prefixes = (good.v4.len(), good.v6.len());
                Err(RefreshError::Write {
                    rolled_back: "rolled back to the last good table".to_owned(),
                    cause: Box::new(error),
                })
            }
            Err(again) => Err(RefreshError::Write {
                rolled_back: format!("rolling back to the last good table failed too: {again}"),
                cause: Box::new(error),
            }),
        }
    }

    /// Records that the maps hold `compiled`: the union's digest and every source's sets.
    fn record(&mut self, compiled: &Compiled) -> Result<(), RefreshError> {
        let digest = compiled.digest();
        let union = Union {
            entries: digest.clone(),
            applied_at: Time::now(),
            sources: self
                .sources
                .iter()
                .filter(|source| source.held.is_some())
                .map(|source| UnionSource {
                    name: source.config.name.clone(),
                    kind: source.config.kind.to_string(),
                    first_set: source.first,
                    version: source.status.version.clone(),
                    sets: source.sets().iter().map(CatalogSet::of).collect(),
                })
                .collect(),
        };
        self.state.save_union(&union)?;
        self.remember(compiled, digest);
        self.unknown_pins = false;
        self.pending.clear();
        self.save_learned();
        self.share_sets();
        self.prefixes = (compiled.v4.len(), compiled.v6.len());
        self.save_status();
        Ok(())
    }

    /// Takes a new configuration (SIGHUP): new settings, every source's last good file
    /// recompiled with them.
    pub fn reconfigure(&mut self, config: Config) -> Result<(), RefreshError> {
        self.config = config;
        self.refresh_trust();
        self.load_sources();
        self.reconfigure_uplink();
        self.apply_settings()?;
        self.install_resolver_rules();
        self.sources_changed();
        if self.sources.iter().any(|source| source.held.is_some()) && !self.unknown_pins {
            let compiled = self.compile_union(None, crate::sources::M365, "the configuration")?;
            self.apply(&compiled)?;
        }
        Ok(())
    }

    /// The union, refused when it cannot compile or is empty.
    fn compile_union(
        &self,
        replace: Option<(usize, &[EndpointSet], &str)>,
        name: &str,
        what: &str,
    ) -> Result<Compiled, RefreshError> {
        let refused = |reason| RefreshError::Refused {
            name: name.to_owned(),
            what: what.to_owned(),
            from: replace.map_or_else(
                || "the union of the sources".to_owned(),
                |(_, _, from)| from.to_owned(),
            ),
            reason,
        };
        let compiled = self
            .union(replace.map(|(i, sets, _)| (i, sets)))
            .map_err(|error| refused(Box::new(Reason::Compile(error))))?;
        self.gate(compiled, refused)
    }

    /// A compiled union that may replace the maps: not empty, and within their capacity with
    /// room kept for what learning may still add.
    fn gate(
        &self,
        compiled: Compiled,
        refused: impl Fn(Box<Reason>) -> RefreshError,
    ) -> Result<Compiled, RefreshError> {
        if compiled.is_empty() {
            return Err(refused(Box::new(Reason::NothingLeft)));
        }
        // What learning may still add is kept free: a full trie refuses learned addresses.
        let reserved = if self.config.dns.learn {
            usize::try_from(self.config.dns.max_learned)
                .unwrap_or(usize::MAX)
                .saturating_sub(self.learned.len())
        } else {
            0
        };
        crate::gate::check_capacity(
            (compiled.v4.len(), compiled.v6.len()),
            self.maps.capacity(),
            reserved,
        )
        .map_err(|error| refused(Box::new(Reason::Gate(error))))?;
        Ok(compiled)
    }

    /// Fills the maps at start: every source's last good file (the `m365` source's among
    /// them), else what is pinned, else the embedded snapshot as the `m365` source's file;
    /// so the router classifies from its first second, offline.
    pub fn start(&mut self) -> Result<Start, RefreshError> {
        if let Some(m365) = self.sources.first()
            && m365.held.is_some()
        {
            let version = m365.status.version.clone().unwrap_or_default();
            match self.compile_union(None, crate::sources::M365, "the last good files") {
                Ok(compiled) => {
                    let report = self.apply(&compiled)?;
                    self.mark_applied_all();
                    info!(
                        "applied the last good file of every source: {}",
                        report.describe(&compiled)
                    );
                    return Ok(Start::LastFeed { version, report });
                }
                Err(error) => warn!(
                    "the last good files in {} are unusable: {error:#}",
                    self.state.dir().display()
                ),
            }
        }
        let installed = self.maps.installed()?.len();
        if installed > 0 {
            self.unknown_pins = true;
            return Ok(Start::Pinned {
                prefixes: installed,
            });
        }
        let from = format!("embedded snapshot {}", crate::EMBEDDED_FEED_VERSION);
        let refreshed = self.install_file(
            crate::sources::M365,
            crate::EMBEDDED_FEED,
            Some(crate::EMBEDDED_FEED_VERSION),
            &from,
            true,
        )?;
        match refreshed {
            Refreshed::Applied { report, .. } => Ok(Start::Embedded { report }),
            _ => Ok(Start::Pinned { prefixes: 0 }),
        }
    }
}
