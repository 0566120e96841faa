//! Local DNS (`[dns] local-*`): the daemon keeps the resolver's forward-zone file equal to
//! the names that go direct (no zones while the direct uplink is down), and the policy
//! rules that send the resolver's own queries through the direct uplink. See
//! [`crate::dnsconfig`] for what the file holds and why.

use tracing::{info, warn};

use super::Agent;
use crate::{dnsconfig, sources::Kind};

impl Agent {
    /// The forward-zone file in `format` as the agent would write it now (zones only while
    /// the direct uplink is up); `None` without `local-resolvers`.
    #[must_use]
    pub fn local_dns(&self, format: crate::dns::LocalFormat) -> Option<String> {
        let dns = &self.config.dns;
        if dns.local_resolvers.is_empty() {
            return None;
        }
        let held: Vec<(String, &[crate::feed::NamedSet])> = self
            .sources
            .iter()
            .filter(|source| source.config.kind == Kind::M365)
            .filter_map(|source| {
                let (parsed, meta) = source.held.as_ref()?;
                Some((
                    super::pac_about(&source.config.name, meta),
                    parsed.named.as_slice(),
                ))
            })
            .collect();
        let sets: Vec<&[crate::feed::NamedSet]> = held.iter().map(|(_, sets)| *sets).collect();
        let direct: Vec<crate::feed::Category> = self
            .config
            .policy
            .direct
            .iter()
            .map(|name| name.0)
            .collect();
        let names = dnsconfig::names(&sets, &self.config.domains, &direct);
        let zones = dnsconfig::zones(&names);
        let mut about = dnsconfig::About {
            inputs: held.into_iter().map(|(about, _)| about).collect(),
            uplink_down: None,
        };
        about
            .inputs
            .extend(dnsconfig::domains_about(&self.config.domains));
        if self.uplink_down() {
            about.uplink_down = Some(
                self.uplinks
                    .iter()
                    .filter_map(|live| live.record.reason.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
            .filter(|reason| !reason.is_empty())
            .or_else(|| Some("the health checks failed".to_owned()));
        }
        Some(dnsconfig::render(
            format,
            &zones,
            &dns.local_resolvers,
            &about,
        ))
    }

    /// Writes `local-config` when its content changed (never the same bytes again), then
    /// runs `local-reload` on a thread of its own: a slow resolver never holds up the loop,
    /// and a failure is logged, never fatal. Only once the daemon serves (`sync` writes
    /// nothing).
    pub(super) fn write_local_dns(&self) {
        let dns = &self.config.dns;
        let Some(path) = &dns.local_config else {
            return;
        };
        if !self.serving {
            return;
        }
        let Some(content) = self.local_dns(dns.local_format) else {
            return;
        };
        match dnsconfig::write_if_changed(path, content.as_bytes()) {
            Ok(false) => {}
            Ok(true) => {
                info!("local dns: wrote {}", path.display());
                let words = dns.local_reload.clone();
                if !words.is_empty() {
                    std::thread::spawn(move || {
                        if let Err(error) = dnsconfig::reload(&words) {
                            warn!("local dns: {:#}", anyhow::Error::from(error));
                        }
                    });
                }
            }
            Err(error) => warn!("local dns: {:#}", anyhow::Error::from(error)),
        }
    }

    /// Makes the policy rules of the local resolvers what the configuration says (stale
    /// ones removed); logged, never fatal. Only once the daemon serves.
    pub(super) fn install_resolver_rules(&self) {
        if !self.serving {
            return;
        }
        let mark = self.config.policy.mark;
        match dnsconfig::apply_rules(&self.config.dns, (mark.value, mark.mask)) {
            Ok(report) => {
                for family in &report.no_table {
                    warn!(
                        "local dns: no {family} `ip rule` matches the mark {mark} and \
                         [dns] local-table is unset: the resolver's queries to \
                         local-resolvers follow the main table"
                    );
                }
                if report.added + report.removed > 0 {
                    info!(
                        "local dns: policy rules: {} added, {} removed",
                        report.added, report.removed
                    );
                }
            }
            Err(error) => warn!("local dns: {:#}", anyhow::Error::from(error)),
        }
    }
}
