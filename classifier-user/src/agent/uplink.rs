//! The direct uplink: the health checks' reports, and the kernel settings they change (a
//! dead uplink sends direct verdicts to the tunnel with one write of the config map).

use tracing::{info, warn};

use super::Agent;
use crate::{datapath::DatapathError, health::State, time::Time};

impl Agent {
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
    pub fn uplink_state(&self) -> State {
        self.uplink.state
    }

    /// Follows a new configuration's checks: none means unchecked (and not failing over).
    pub(super) fn reconfigure_uplink(&mut self) {
        if !self.config.health.checks() {
            self.uplink_down = false;
            self.uplink.state = State::Unchecked;
            self.uplink.quality = None;
        } else if self.uplink.state == State::Unchecked {
            self.uplink.state = State::Up;
        }
    }

    /// Takes a report of the health checks: a transition fails direct verdicts over to the
    /// tunnel (or back) with one write of the config map.
    pub fn health(&mut self, report: crate::health::Report) -> Result<(), DatapathError> {
        let checks = self.config.health.checks();
        let uplink = &mut self.uplink;
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
        if let Some(quality) = report.quality {
            uplink.quality = Some(quality);
        }
        let mut changed = false;
        if let Some(transition) = report.transition {
            uplink.transitions = uplink.transitions.saturating_add(1);
            uplink.since = Some(Time::now());
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
        // The status first: once traffic moves, a reader finds the transition that moved it
        // (its `failing_over` is read from the kernel, so it is never ahead of the maps).
        self.save_status();
        if changed {
            self.apply_settings()?;
            // DNS follows the traffic: the names resolve where their packets now go.
            self.write_local_dns();
        }
        Ok(())
    }
}
