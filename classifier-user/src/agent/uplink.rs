//! The direct uplinks: the health checks' reports, each uplink's grade against its SLA, and
//! the kernel settings they change. A dead uplink, a degradation or a recovery is one write
//! of the steering map ([`classifier_common::Uplinks`]); every uplink dead is also the
//! config map's `UPLINK_DOWN`, as with one uplink.

use std::time::Instant;

use classifier_common::{STEER_SLOTS, STEER_TUNNEL, category};
use tracing::{info, warn};

use super::Agent;
use crate::{
    datapath::DatapathError,
    health::State,
    state::SteerRow,
    time::Time,
    uplinks::{Grade, Grader, Standing},
};

/// A direct uplink as the agent runs it.
pub(super) struct Live {
    pub(super) config: crate::uplinks::Uplink,
    pub(super) record: crate::state::Uplink,
    grader: Grader,
}

impl Live {
    fn new(config: crate::uplinks::Uplink, steering: &crate::uplinks::SteeringConfig) -> Self {
        let record = crate::state::Uplink {
            name: config.name.clone(),
            interface: config.health.interface.clone(),
            mark: config.mark,
            table: config.table,
            state: if config.health.checks() {
                State::Up
            } else {
                State::Unchecked
            },
            since: None,
            reason: None,
            transitions: 0,
            failed_probes: 0,
            targets: Vec::new(),
            quality: None,
            grade: Grade::Good,
            grade_reason: None,
            grade_since: None,
            grade_changes: 0,
            sla: format!(
                "rtt {}, jitter {}, loss {}",
                crate::settings::format_duration(config.sla.rtt),
                crate::settings::format_duration(config.sla.jitter),
                config.sla.loss
            ),
            addresses: Vec::new(),
            nat_address: config.nat_address.clone(),
        };
        Self {
            config,
            record,
            grader: Grader::new(steering),
        }
    }

    fn standing(&self) -> Standing {
        Standing {
            down: self.record.state == State::Down,
            grade: self.record.grade,
            rtt_us: self.record.quality.and_then(|quality| quality.rtt_us),
            weight: self.config.weight,
        }
    }
}

/// The uplinks of `config`, each keeping the state and history of the uplink of its name in
/// `old` (a reload does not fail over, nor forget a degradation).
pub(super) fn lives(config: &crate::config::Config, old: Vec<Live>) -> Vec<Live> {
    let mut old = old;
    config
        .uplinks()
        .into_iter()
        .map(|uplink| {
            let mut live = Live::new(uplink, &config.steering);
            if let Some(at) = old
                .iter()
                .position(|previous| previous.record.name == live.config.name)
            {
                let previous = old.swap_remove(at);
                let fresh = live.record.clone();
                live.record = crate::state::Uplink {
                    interface: fresh.interface,
                    mark: fresh.mark,
                    table: fresh.table,
                    sla: fresh.sla,
                    nat_address: fresh.nat_address,
                    ..previous.record
                };
                if !live.config.health.checks() {
                    live.record.state = State::Unchecked;
                    live.record.quality = None;
                } else if live.record.state == State::Unchecked {
                    live.record.state = State::Up;
                }
                live.grader = previous.grader;
            }
            live
        })
        .collect()
}

impl Agent {
    /// Writes the policy, the kernel config (mark, strict ports, debug log, and whether every
    /// direct uplink is down) and the steering rows.
    pub fn apply_settings(&mut self) -> Result<(), DatapathError> {
        self.maps.set_policy(self.config.actions())?;
        let mut kernel = self.config.kernel_config();
        if self.uplink_down() {
            kernel.flags |= classifier_common::flags::UPLINK_DOWN;
        }
        for (i, live) in self.uplinks.iter().enumerate() {
            if live.record.state == State::Down {
                kernel.flags |=
                    classifier_common::flags::uplink_down(u8::try_from(i).unwrap_or(u8::MAX));
            }
        }
        self.maps.set_config(&kernel)?;
        self.steer().map(drop)
    }

    /// Every direct uplink is down: direct verdicts go to the tunnel.
    #[must_use]
    pub fn uplink_down(&self) -> bool {
        !self.uplinks.is_empty()
            && self
                .uplinks
                .iter()
                .all(|live| live.record.state == State::Down)
    }

    /// Each uplink's state, for the health checks that a reload restarts.
    #[must_use]
    pub fn uplink_states(&self) -> Vec<State> {
        self.uplinks.iter().map(|live| live.record.state).collect()
    }

    /// The uplinks as the daemon probes them: each one's probe settings and mark. An uplink
    /// without targets probes Microsoft's Optimize front doors from the installed feed
    /// ([`crate::uplinks::front_doors`]), unless `failover = "none"`.
    #[must_use]
    pub fn probed_uplinks(&self) -> Vec<(crate::health::HealthConfig, u32)> {
        let doors = crate::uplinks::front_doors(
            self.sources.first().map_or(&[][..], |source| source.sets()),
        );
        self.uplinks
            .iter()
            .map(|live| {
                let mut health = live.config.health.clone();
                if health.targets.is_empty() && health.failover != crate::health::Failover::None {
                    health.targets.clone_from(&doors);
                }
                (health, live.config.mark)
            })
            .collect()
    }

    /// Follows a new configuration's uplinks: same names keep their state.
    pub(super) fn reconfigure_uplink(&mut self) {
        let old = std::mem::take(&mut self.uplinks);
        self.uplinks = lives(&self.config, old);
        self.refresh_addresses();
    }

    /// Reads each uplink's interface addresses (for `status` and `egress`).
    pub(super) fn refresh_addresses(&mut self) {
        for live in &mut self.uplinks {
            live.record.addresses = live
                .config
                .health
                .interface
                .as_ref()
                .and_then(|iface| crate::netlink::addresses(std::slice::from_ref(iface)).ok())
                .unwrap_or_default()
                .into_iter()
                // Link-local addresses never leave the link: no egress.
                .filter(|addr| !crate::netlink::link_local(*addr))
                .collect();
        }
    }

    /// Computes the steering rows from the uplinks' standings and writes them when they
    /// changed (true); a sensitive category with no uplink that meets its SLA is warned about.
    fn steer(&mut self) -> Result<bool, DatapathError> {
        let standings: Vec<Standing> = self.uplinks.iter().map(Live::standing).collect();
        let marks: Vec<u32> = self.uplinks.iter().map(|live| live.config.mark).collect();
        let rows = crate::uplinks::rows(&standings, &marks, &self.config.steering, &self.best);
        self.best = rows.best;
        if !rows.stuck.is_empty() && self.stuck != rows.stuck {
            warn!(
                "steering: no direct uplink meets its SLA for {}; new flows stay direct \
                 (steering.tunnel-fallback = true would send them to the tunnel)",
                rows.stuck.join(", ")
            );
        }
        self.stuck.clone_from(&rows.stuck);
        if self.written_rows.as_ref() == Some(&rows.uplinks) {
            return Ok(false);
        }
        self.maps.set_uplinks(&rows.uplinks)?;
        self.written_rows = Some(rows.uplinks);
        Ok(true)
    }

    /// Where each category's new flows go, as the written rows say.
    pub(super) fn steering_rows(&self) -> Vec<SteerRow> {
        let Some(rows) = &self.written_rows else {
            return Vec::new();
        };
        let steering = &self.config.steering;
        [
            category::OPTIMIZE,
            category::ALLOW,
            category::DEFAULT,
            category::DIRECT,
        ]
        .into_iter()
        .filter(|&code| {
            self.config.actions()[usize::from(code)] == classifier_common::action::DIRECT
        })
        .filter_map(|code| {
            let policy = steering.policy(code)?;
            let row = rows.steer[usize::from(code)];
            let mut to: Vec<(String, u32)> = Vec::new();
            for slot in row {
                let name = if slot == STEER_TUNNEL {
                    "tunnel".to_owned()
                } else {
                    self.uplinks
                        .get(usize::from(slot))
                        .map_or_else(|| format!("#{slot}"), |live| live.config.name.clone())
                };
                match to.iter_mut().find(|(seen, _)| *seen == name) {
                    Some((_, count)) => *count += 1,
                    None => to.push((name, 1)),
                }
            }
            for (_, share) in &mut to {
                *share = *share * 100 / u32::try_from(STEER_SLOTS).unwrap_or(64);
            }
            Some(SteerRow {
                category: category::name(code).unwrap_or("?").to_owned(),
                policy: policy.to_string(),
                sensitive: steering.is_sensitive(code),
                to,
            })
        })
        .collect()
    }

    /// The uplinks' records, as the status shows them.
    pub(super) fn uplink_records(&self) -> Vec<crate::state::Uplink> {
        self.uplinks
            .iter()
            .map(|live| live.record.clone())
            .collect()
    }

    /// Takes a report of uplink `report.uplink`'s health checks: a change of state or grade
    /// rewrites the steering rows, and every uplink down fails direct verdicts over to the
    /// tunnel (or back) with one write of the config map.
    pub fn health(&mut self, report: crate::health::Report) -> Result<(), DatapathError> {
        let was_down = self.uplink_down();
        let Some(live) = self.uplinks.get_mut(report.uplink) else {
            return Ok(());
        };
        let name = live.config.name.clone();
        // A report comes only from checks that run (its own targets, its interface, or the
        // feed's front doors).
        let uplink = &mut live.record;
        uplink.state = report.state;
        if let Some(results) = report.results {
            for failed in results.iter().filter(|result| !result.ok) {
                uplink.failed_probes = uplink.failed_probes.saturating_add(1);
                info!(
                    "health: {name}: probe {} failed: {}",
                    failed.target,
                    failed.error.as_deref().unwrap_or("no answer")
                );
            }
            uplink.targets = results;
            // A probe round: graded against the SLA.
            if let Some(quality) = report.quality {
                let miss = live.config.sla.miss(&quality);
                if let Some(grade) = live.grader.round(miss, Instant::now()) {
                    let uplink = &mut live.record;
                    uplink.grade = grade;
                    uplink.grade_since = Some(Time::now());
                    uplink.grade_changes = uplink.grade_changes.saturating_add(1);
                    if let Some(why) = live.grader.reason() {
                        warn!(
                            "uplink {name} degraded: {why}; new quality-sensitive flows go \
                             elsewhere, its flows stay"
                        );
                    } else {
                        warn!("uplink {name} meets its SLA again");
                    }
                }
                live.record.grade_reason = live.grader.reason().cloned();
            }
        }
        let uplink = &mut live.record;
        if let Some(quality) = report.quality {
            uplink.quality = Some(quality);
        }
        let transition = report.transition;
        let transitioned = transition.is_some();
        if let Some(transition) = &transition {
            uplink.transitions = uplink.transitions.saturating_add(1);
            uplink.since = Some(Time::now());
            uplink.reason = Some(transition.reason.clone());
        }
        let down = self.uplink_down();
        // The status first: once traffic moves, a reader finds the transition that moved it
        // (its `failing_over` is read from the kernel, so it is never ahead of the maps).
        self.save_status();
        let moved = if transitioned {
            // An uplink died or came back: the config's flags say which, and the rows.
            self.apply_settings()?;
            true
        } else {
            // A new grade or best uplink: one write of the rows, when they changed.
            self.steer()?
        };
        // Logged once the maps say so: a reader of the log finds new flows already moved.
        if let Some(transition) = transition {
            let label = if name == crate::uplinks::SINGLE {
                "direct uplink".to_owned()
            } else {
                format!("uplink {name}")
            };
            let what = match (down, was_down, transition.to) {
                (true, false, _) => "new direct verdicts go to the tunnel",
                (false, true, _) => "direct verdicts go direct again",
                (_, _, State::Down) => "its flows move to the other uplinks",
                _ => "it takes new flows again",
            };
            warn!(
                "{label} {} -> {}: {}; {what}",
                transition.from, transition.to, transition.reason
            );
        }
        if moved {
            // And the rows the kernel now reads (`steering`), once they are written.
            self.save_status();
        }
        if down != was_down {
            // DNS follows the traffic: the names resolve where their packets now go.
            self.write_local_dns();
        }
        Ok(())
    }
}
