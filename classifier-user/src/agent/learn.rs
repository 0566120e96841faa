//! DNS learning (`[dns] learn`): an answer for a name of a Microsoft 365 feed or an operator's
//! `[[domains]]` rule teaches the agent its addresses. Each new address is written to the
//! tries at once, folded with the prefixes that cover it (found in [`crate::cover`]'s index,
//! rebuilt whenever a source's file changes, in time independent of the table's size); the
//! whole table follows at the next [`Agent::settle`], and past their time (with a grace while
//! flows use them) addresses are forgotten. A full cap evicts the least recently used
//! address no live flow holds; the next [`Agent::settle`] takes it out of the maps.

use std::{
    collections::HashSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::warn;

use super::Agent;
use crate::{
    compile::{Compiled, compile_excluding},
    cover::Cover,
    datapath::Maps,
    feed::{Category, EndpointSet},
    sources::Kind,
};

/// The destinations of live flows: those the flow table shows used within `grace`. A
/// learned address one of them holds is neither forgotten at its expiry nor evicted by a
/// full cap, so the connection it carries keeps its uplink.
fn live_destinations(maps: &Maps, grace: Duration) -> HashSet<IpAddr> {
    let recent = crate::datapath::monotonic_ns()
        .saturating_sub(grace.as_nanos().try_into().unwrap_or(u64::MAX));
    maps.flows()
        .unwrap_or_default()
        .iter()
        .filter(|flow| flow.value.last_ns >= recent)
        .map(|flow| flow.key.dst_addr())
        .collect()
}

impl Agent {
    /// The name patterns DNS answers are matched against: each Microsoft 365 source's named
    /// sets (from the files held in memory) and the operator's `[[domains]]`.
    pub(super) fn rebuild_patterns(&mut self) {
        use crate::dns::{Patterns, Target};
        if !self.config.dns.learn {
            return;
        }
        let mut patterns = Patterns::default();
        for source in &self.sources {
            if source.config.kind == Kind::M365
                && let Some((parsed, _)) = &source.held
            {
                patterns.add_sets(&parsed.named, &source.config.name);
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

    /// The resolvers whose answers are learned: `[dns] resolvers`, or else the addresses of
    /// the interfaces the agent serves, read again (they may change while it runs).
    pub fn refresh_trust(&mut self) {
        let trusted = if self.config.dns.resolvers.is_empty() {
            match crate::netlink::addresses(&self.config.interfaces) {
                Ok(addresses) => addresses,
                Err(error) => {
                    warn!("dns: the LAN interfaces' addresses: {error}");
                    return;
                }
            }
        } else {
            self.config.dns.resolvers.clone()
        };
        if trusted != self.trusted {
            self.trusted = trusted;
            if self.config.dns.learn {
                tracing::info!("dns: learning the answers of {}", list(&self.trusted));
            }
            self.save_status();
        }
    }

    /// The resolvers trusted now.
    #[must_use]
    pub fn trusted(&self) -> &[IpAddr] {
        &self.trusted
    }

    /// Learns from DNS answers the kernel matched to their queries. Returns, per answer that
    /// taught something, the time from its capture until its addresses were in the maps.
    pub fn learn(&mut self, records: &[crate::dns::Captured]) -> Vec<Duration> {
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
        let grace = dns.grace;
        // Read from the flow table when a full cap first asks, at most once a batch: most
        // batches evict nothing.
        let mut live: Option<HashSet<IpAddr>> = None;
        let mut latencies = Vec::new();
        let mut refused = false;
        for captured in records {
            if let Err(why) = crate::dns::check(captured, &self.trusted) {
                tracing::debug!("dns: an answer from {} refused: {why:?}", captured.resolver);
                if let Err(error) = self.maps.add_stat(why.stat(), 1) {
                    warn!("dns: counting a refused answer: {error}");
                }
                refused = true;
                continue;
            }
            let message = &captured.message;
            let maps = &self.maps;
            let taken = self.learned.take(
                message,
                &self.patterns,
                limits,
                crate::time::Time::now().secs(),
                |addr| exclude.iter().any(|net| net.contains(&addr)),
                |addr| {
                    live.get_or_insert_with(|| live_destinations(maps, grace))
                        .contains(&addr)
                },
            );
            // Evicted addresses stay in the maps until the whole table is applied.
            if taken.evicted > 0 {
                self.learn_dirty = true;
            }
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
                crate::datapath::monotonic_ns().saturating_sub(captured.ts_ns),
            ));
        }
        if refused {
            self.count_refusals();
        }
        for latency in &latencies {
            self.shared.dns_seconds.observe(latency.as_secs_f64());
        }
        for warning in self.learned.warnings(Instant::now()) {
            warn!("dns: {warning}");
        }
        if let Ok(mut counts) = self.shared.dns.lock() {
            counts.clone_from(&self.learned.counts);
        }
        // `learned` reads the file: keep its counts within a second of `/metrics`'.
        if self
            .learned_saved
            .is_none_or(|saved| saved.elapsed() >= Duration::from_secs(1))
        {
            self.save_learned();
        }
        latencies
    }

    /// Rebuilds the covering index from every source's held sets and the operator's
    /// `include` (the last table): run wherever a held file or the configuration changes,
    /// so that [`Agent::write_learned`] never meets a stale position. Empty while learning
    /// is off.
    pub(super) fn index_sets(&mut self) {
        // The kept table and entries were compiled from what changed.
        self.base = None;
        self.learned_values.clear();
        if !self.config.dns.learn {
            self.cover = Cover::default();
            return;
        }
        let operator = self.operator_set();
        let tables = self
            .sources
            .iter()
            .map(super::source::Source::sets)
            .chain(operator.as_ref().map(std::slice::from_ref));
        self.cover = Cover::build(tables);
    }

    /// Writes the entry of one learned address: what compiling the whole table would give
    /// it (its sets' rules folded with every prefix that covers it). The covering prefixes
    /// come from the index, in the order a scan of every set would meet them, so the
    /// compiled value is the scan's.
    fn write_learned(&mut self, address: IpAddr) -> anyhow::Result<()> {
        if self.unknown_pins {
            return Ok(());
        }
        let host = ipnet::IpNet::from(address);
        let hits = self.cover.covering(address);
        // The operator's set (the last table) is built only when it covers the address.
        let operator = hits
            .iter()
            .any(|hit| hit.table as usize == self.sources.len())
            .then(|| self.operator_set())
            .flatten();
        let tables: Vec<&[EndpointSet]> = self
            .sources
            .iter()
            .map(super::source::Source::sets)
            .chain(operator.as_ref().map(std::slice::from_ref))
            .collect();
        let mut sets = crate::cover::covering_sets(&hits, &tables, address)?;
        // Learned entries are host prefixes: only the address's own can cover it.
        sets.extend(self.learned.sets_of(address, &self.patterns));
        let compiled = compile_excluding(&sets, &self.config.policy.exclude)?;
        if let Some(value) = compiled.get(host) {
            self.maps.insert_prefix(host, value)?;
            self.pending.insert(address);
            self.learned_values.insert(address, *value);
        } else {
            self.learned_values.remove(&address);
        }
        Ok(())
    }

    /// Reads the refusals of DNS answers from the kernel's counters (where the agent adds its
    /// own) into the counts `learned` and `/metrics` show; writes `learned.json` when they
    /// changed. Run by the expiry sweep: answers the kernel refuses never reach the agent.
    pub fn count_refusals(&mut self) {
        let Ok(stats) = self.maps.stats() else {
            return;
        };
        let refused: std::collections::BTreeMap<String, u64> =
            classifier_common::stat::DNS_REFUSALS
                .iter()
                .map(|(index, name)| {
                    let count = stats.get(*index as usize).map_or(0, |c| c.packets);
                    ((*name).to_owned(), count)
                })
                .collect();
        if refused == self.learned.counts.refused {
            return;
        }
        self.learned.counts.refused = refused;
        if let Ok(mut counts) = self.shared.dns.lock() {
            counts.clone_from(&self.learned.counts);
        }
        self.save_learned();
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
        let now = crate::time::Time::now().secs();
        // The flow table is read only when something is due.
        if !self.learned.entries().any(|entry| entry.expires <= now) {
            return;
        }
        let grace = u32::try_from(self.config.dns.grace.as_secs()).unwrap_or(u32::MAX);
        let in_use = live_destinations(&self.maps, self.config.dns.grace);
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

    /// Applies the union of everything as it is (no file changes): the kept table of the
    /// sources plus each learned address's entry, or, after a source or the configuration
    /// changed, the union compiled from scratch (and the table and entries kept from it).
    fn apply_union(&mut self) -> Result<(), super::RefreshError> {
        if self.unknown_pins {
            return Ok(());
        }
        let compiled = if let Some(compiled) = self.union_of_learned() {
            self.gate(compiled, |reason| super::RefreshError::Refused {
                name: "dns".to_owned(),
                what: "the learned addresses".to_owned(),
                from: "the union of the sources".to_owned(),
                reason,
            })?
        } else {
            let compiled = self.compile_union(None, "dns", "the learned addresses")?;
            self.keep_base(&compiled);
            compiled
        };
        self.apply(&compiled)?;
        Ok(())
    }

    /// The kept table of the sources with every learned address's entry: equal to the union
    /// compiled from scratch, since a learned host prefix covers no other entry and its own
    /// entry is what [`Agent::write_learned`] folded. `None` when the table is not kept, or
    /// an address has no entry kept.
    fn union_of_learned(&mut self) -> Option<Compiled> {
        let base = self.base.as_ref()?;
        let mut target = base.clone();
        let mut held = HashSet::with_capacity(self.learned.len());
        for entry in self.learned.entries() {
            let value = *self.learned_values.get(&entry.address)?;
            target.insert(entry.address.into(), value);
            held.insert(entry.address);
        }
        // Forgotten and evicted addresses leave the kept entries with the table.
        self.learned_values
            .retain(|address, _| held.contains(address));
        Some(target)
    }

    /// Keeps the table of the sources alone and each learned address's entry of `union`
    /// (compiled from scratch), for the next applies of learned addresses.
    fn keep_base(&mut self, union: &Compiled) {
        self.base = self.compile_sets(None, false).ok();
        self.learned_values.clear();
        for entry in self.learned.entries() {
            if let Some(value) = union.get(entry.address.into()) {
                self.learned_values.insert(entry.address, *value);
            }
        }
    }

    /// Writes `learned.json` for `learned` and `lookup`.
    pub(super) fn save_learned(&mut self) {
        if !self.config.dns.learn {
            return;
        }
        let mut rows: Vec<crate::state::LearnedRow> = self
            .learned
            .entries()
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
                        expires: crate::time::Time(entry.expires),
                    })
                })
            })
            .collect();
        rows.sort_by_key(|row| (row.address, row.set));
        let learned = crate::state::LearnedFile {
            counts: self.learned.counts.clone(),
            counted_at: crate::time::Time::now(),
            rows,
            pending: self.pending.iter().copied().collect(),
        };
        self.learned_saved = Some(Instant::now());
        if let Err(error) = self.state.save_learned(&learned) {
            warn!("{:#}", anyhow::Error::from(error));
        }
    }
}

/// Addresses as a list for a log line.
fn list(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        return "no resolver (the LAN interfaces have no address)".to_owned();
    }
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
