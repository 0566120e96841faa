//! What the agent hands to its readers: the status file (`status`, `sources`), the metrics
//! listener's [`crate::metrics::Shared`], and the PAC file. Each is built from what the
//! agent holds in memory, never read back from the state directory.

use std::sync::Arc;

use tracing::warn;

use super::Agent;
use crate::{feed::EndpointSet, sources::Kind, state::Status};

impl Agent {
    /// What the metrics listener reads, kept current.
    #[must_use]
    pub fn shared(&self) -> Arc<crate::metrics::Shared> {
        Arc::clone(&self.shared)
    }

    /// The status as `status` and `sources` read it.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            pid: std::process::id(),
            interfaces: self.config.interfaces.clone(),
            mark: self.config.policy.mark.to_string(),
            prefixes_v4: self.prefixes.0,
            prefixes_v6: self.prefixes.1,
            uplink: self.uplinks.first().map(|live| live.record.clone()),
            uplinks: self.uplink_records(),
            steering: self.steering_rows(),
            sources: self.source_statuses(),
            dns: self.config.dns.learn.then(|| crate::state::DnsStatus {
                resolvers: self.trusted.clone(),
                from_interfaces: self.config.dns.resolvers.is_empty(),
            }),
        }
    }

    /// From now on the status file is the daemon's: written now and whenever it changes.
    /// Before (while the maps are filled, before the programs are attached) it is not, so
    /// that a reader never sees a version the data plane does not classify with yet.
    pub fn serve(&mut self) {
        self.serving = true;
        self.save_status();
        self.install_resolver_rules();
        self.write_local_dns();
    }

    /// Writes the status file (once the daemon serves) and hands it to the listener.
    pub fn save_status(&self) {
        self.publish(&self.status());
    }

    fn publish(&self, status: &Status) {
        if let Ok(mut shared) = self.shared.status.lock() {
            shared.clone_from(status);
        }
        if !self.serving {
            return;
        }
        if let Err(error) = self.state.save_status(status) {
            warn!("{:#}", anyhow::Error::from(error));
        }
    }

    /// Hands the listener the names of the endpoint sets the maps hold.
    pub(super) fn share_sets(&self) {
        use crate::metrics::SetLabels;
        let label = |set: &EndpointSet, source: &str| SetLabels {
            id: u16::try_from(set.id).unwrap_or(u16::MAX),
            service_area: set.service_area.clone(),
            category: classifier_common::category::name(set.category.code()).unwrap_or("unknown"),
            source: source.to_owned(),
        };
        let mut sets: Vec<SetLabels> = self
            .sources
            .iter()
            .flat_map(|source| {
                source
                    .sets()
                    .iter()
                    .map(|set| label(set, &source.config.name))
            })
            .collect();
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

    /// What follows a change of the Microsoft 365 feeds held, or of the configuration: the
    /// name patterns of DNS learning, the local resolver's forward zones and, with `[pac]
    /// serve`, the PAC file. Not on every apply: learned addresses and other kinds' files
    /// change none of them.
    pub(super) fn sources_changed(&mut self) {
        self.rebuild_patterns();
        self.share_sets();
        self.write_local_dns();
        if self.config.pac.serve {
            let pac = crate::pac::build(&self.config, &self.pac_feeds(), None, None);
            if let Err(error) = &pac {
                warn!("pac: {error}");
            }
            if let Ok(mut shared) = self.shared.pac.lock() {
                *shared = pac.ok();
            }
        }
    }

    /// Each Microsoft 365 source's named sets, and how the PAC file names it.
    fn pac_feeds(&self) -> Vec<(String, &[crate::feed::NamedSet])> {
        self.sources
            .iter()
            .filter(|source| source.config.kind == Kind::M365)
            .filter_map(|source| {
                let (parsed, meta) = source.held.as_ref()?;
                Some((
                    pac_about(&source.config.name, meta),
                    parsed.named.as_slice(),
                ))
            })
            .collect()
    }
}

/// How the PAC file's header names a source's file.
#[must_use]
pub fn pac_about(name: &str, meta: &crate::sources::fetch::Meta) -> String {
    if name == crate::sources::M365 {
        format!(
            "feed {} from {}",
            meta.version.as_deref().unwrap_or("unknown"),
            meta.from
        )
    } else {
        format!(
            "source {name} {}",
            meta.version.as_deref().unwrap_or_default()
        )
    }
}
