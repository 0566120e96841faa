//! Several direct uplinks: each one's configuration and SLA, whether it meets the SLA (with
//! hysteresis and a dwell time), and the steering rows the kernel reads to give a new flow
//! its uplink.
//!
//! The kernel never asks user space: [`classifier_common::Uplinks`] holds, per category, 64
//! slots of uplink indices, and a new direct flow takes the slot of its hash. The agent
//! rewrites the rows (one map write) when an uplink dies, degrades, recovers or becomes the
//! best. A flow keeps the uplink it took; only a dead uplink's flows move.
//!
//! A configuration without `[[uplinks]]` has one uplink, `direct`, made of `[health]`'s
//! interface and targets and `policy.mark`, as before there were several.

use std::{fmt, net::IpAddr, time::Duration};

use classifier_common::{MAX_UPLINKS, STEER_SLOTS, STEER_TUNNEL, Uplinks, category};
use serde::{Deserialize, Serialize};

use crate::{
    feed::{Category, CategoryName},
    health::{Figures, HealthConfig, Target},
    settings::{Invalid, Mark, Share, duration_text, within},
};

/// The name of the one uplink of a configuration without `[[uplinks]]`.
pub const SINGLE: &str = "direct";

/// Microsoft's targets for Teams media from the customer edge to Microsoft's edge.
pub const TEAMS_RTT: Duration = Duration::from_millis(60);
pub const TEAMS_JITTER: Duration = Duration::from_millis(15);
/// 0.1%, in parts per million.
pub const TEAMS_LOSS_PPM: u32 = 1000;

/// What an uplink must measure to carry quality-sensitive traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Sla {
    /// The mean RTT over the window, at most.
    #[serde(with = "duration_text")]
    pub rtt: Duration,
    /// RFC 3550 jitter, at most.
    #[serde(with = "duration_text")]
    pub jitter: Duration,
    /// The share of the window's probes lost, at most (`0.1%`).
    pub loss: Share,
}

impl Default for Sla {
    fn default() -> Self {
        Self {
            rtt: TEAMS_RTT,
            jitter: TEAMS_JITTER,
            loss: Share {
                ppm: TEAMS_LOSS_PPM,
            },
        }
    }
}

/// Why figures miss an SLA: the first figure over its bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// `rtt`, `jitter` or `loss`.
    pub figure: String,
    /// The measured value and the bound, as people read them (`74.2ms`, `60ms`; `2.0%`,
    /// `0.1%`).
    pub measured: String,
    pub bound: String,
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} > {}", self.figure, self.measured, self.bound)
    }
}

impl Sla {
    /// The first figure over its bound; `None` when the figures meet the SLA or nothing was
    /// measured yet (no answered probe: a dead path is the health checks' to call).
    #[must_use]
    pub fn miss(&self, figures: &Figures) -> Option<Miss> {
        if figures.probes == 0 {
            return None;
        }
        let ms = |us: u64| format!("{}.{}ms", us / 1000, us % 1000 / 100);
        let bound_ms = |d: Duration| crate::settings::format_duration(d);
        if let Some(rtt) = figures.rtt_us
            && rtt > whole_micros(self.rtt)
        {
            return Some(Miss {
                figure: "rtt".into(),
                measured: ms(rtt),
                bound: bound_ms(self.rtt),
            });
        }
        if figures.jitter_us > whole_micros(self.jitter) {
            return Some(Miss {
                figure: "jitter".into(),
                measured: ms(figures.jitter_us),
                bound: bound_ms(self.jitter),
            });
        }
        let lost_ppm = u64::from(figures.lost) * 1_000_000 / u64::from(figures.probes);
        if lost_ppm > u64::from(self.loss.ppm) {
            return Some(Miss {
                figure: "loss".into(),
                measured: format!(
                    "{}.{}% ({} of {} probes)",
                    lost_ppm / 10_000,
                    lost_ppm % 10_000 / 1000,
                    figures.lost,
                    figures.probes
                ),
                bound: self.loss.to_string(),
            });
        }
        None
    }
}

fn whole_micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// One `[[uplinks]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UplinkConfig {
    /// Shown by `status`, `flows`, `egress` and the metrics' `uplink` label.
    pub name: String,
    /// Its interface: carrier and operstate from netlink, and its source addresses.
    #[serde(default)]
    pub interface: Option<String>,
    /// The fwmark that policy routing sends to this uplink's table; the mask is
    /// `policy.mark`'s. The first uplink defaults to `policy.mark`.
    #[serde(default)]
    pub mark: Option<Mark>,
    /// The routing table its mark's `ip rule` looks up (informational: `status`, and the
    /// local resolvers' rule for the first uplink).
    #[serde(default)]
    pub table: Option<u32>,
    /// Probes through this uplink; empty: Optimize front doors from the installed feed.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Its share of `balance` (1..=64).
    #[serde(default = "one")]
    pub weight: u32,
    /// Its SLA; unset: `[steering] sla`, Microsoft's Teams targets by default.
    #[serde(default)]
    pub sla: Option<Sla>,
    /// Its public addresses after NAT, as Microsoft sees them, for `egress`.
    #[serde(default)]
    pub nat_address: Vec<IpAddr>,
}

const fn one() -> u32 {
    1
}

/// How a category's new flows pick among the direct uplinks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Among the uplinks that meet their SLA, the one with the lowest RTT (another must be
    /// 10% better to take over).
    Best,
    /// The first usable uplink in configuration order: primary, then backup.
    #[default]
    Ordered,
    /// Spread by the flow's hash, by weight.
    Balance,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Best => "best",
            Self::Ordered => "ordered",
            Self::Balance => "balance",
        })
    }
}

/// `[steering]`: which uplink a category's new flows take, and what quality needs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct SteeringConfig {
    /// The policy of each category: Microsoft's three and other providers' `direct`.
    pub optimize: Policy,
    pub allow: Policy,
    pub default: Policy,
    pub direct: Policy,
    /// Categories that avoid a degraded uplink for new flows.
    pub sensitive: Vec<CategoryName>,
    /// A sensitive category's new flows go to the tunnel when no uplink meets its SLA
    /// (otherwise they stay direct, with a warning).
    pub tunnel_fallback: bool,
    /// The SLA of every uplink that sets none.
    pub sla: Sla,
    /// Probe rounds in a row that miss the SLA to degrade an uplink, and that meet it to
    /// restore it.
    pub degrade_after: u32,
    pub restore_after: u32,
    /// The shortest time between two changes of an uplink's grade.
    #[serde(with = "duration_text")]
    pub dwell: Duration,
}

impl Default for SteeringConfig {
    fn default() -> Self {
        Self {
            optimize: Policy::Best,
            allow: Policy::Ordered,
            default: Policy::Ordered,
            direct: Policy::Ordered,
            sensitive: vec![CategoryName(Category::Optimize)],
            tunnel_fallback: false,
            sla: Sla::default(),
            degrade_after: 3,
            restore_after: 5,
            dwell: Duration::from_mins(1),
        }
    }
}

impl SteeringConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(1..=1000).contains(&self.degrade_after) {
            return Err(Invalid::new("degrade-after", "must be 1..=1000"));
        }
        if !(1..=1000).contains(&self.restore_after) {
            return Err(Invalid::new("restore-after", "must be 1..=1000"));
        }
        within(
            "dwell",
            self.dwell,
            Duration::ZERO,
            Duration::from_hours(24),
        )?;
        validate_sla("sla", &self.sla)
    }

    /// The policy of a kernel category code (`None`: no direct uplink choice to make).
    #[must_use]
    pub fn policy(&self, code: u8) -> Option<Policy> {
        match code {
            category::OPTIMIZE => Some(self.optimize),
            category::ALLOW => Some(self.allow),
            category::DEFAULT => Some(self.default),
            category::DIRECT => Some(self.direct),
            _ => None,
        }
    }

    #[must_use]
    pub fn is_sensitive(&self, code: u8) -> bool {
        self.sensitive.iter().any(|name| name.0.code() == code)
    }
}

fn validate_sla(key: &'static str, sla: &Sla) -> Result<(), Invalid> {
    if sla.rtt.is_zero() || sla.jitter.is_zero() {
        return Err(Invalid::new(key, "rtt and jitter must be above 0"));
    }
    if sla.loss.ppm > 1_000_000 {
        return Err(Invalid::new(key, "loss is a share, 0%..=100%"));
    }
    Ok(())
}

/// An uplink as the agent runs it: `[[uplinks]]` entries, or the one made of `[health]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    /// The probes' settings, with this uplink's interface and targets.
    pub health: HealthConfig,
    /// Its mark's value (the mask is `policy.mark`'s).
    pub mark: u32,
    pub table: Option<u32>,
    pub weight: u32,
    pub sla: Sla,
    pub nat_address: Vec<IpAddr>,
}

/// The uplinks of a configuration, checked: names unique and well formed, marks distinct
/// and inside `mark`'s mask, at most [`MAX_UPLINKS`], and `[health]` holds no interface or
/// targets beside `[[uplinks]]` (which of them would they be?).
pub fn resolve(
    entries: &[UplinkConfig],
    health: &HealthConfig,
    mark: Mark,
    steering: &SteeringConfig,
) -> Result<Vec<Uplink>, Invalid> {
    if entries.is_empty() {
        return Ok(vec![Uplink {
            name: SINGLE.to_owned(),
            health: health.clone(),
            mark: mark.value,
            table: None,
            weight: 1,
            sla: steering.sla,
            nat_address: Vec::new(),
        }]);
    }
    if health.interface.is_some() || !health.targets.is_empty() {
        return Err(Invalid::new(
            "uplinks",
            "health.interface and health.targets describe the one uplink of a configuration \
             without [[uplinks]]: move them into an [[uplinks]] entry",
        ));
    }
    if entries.len() > MAX_UPLINKS {
        return Err(Invalid::new(
            "uplinks",
            format!("{} entries; at most {MAX_UPLINKS}", entries.len()),
        ));
    }
    let mut uplinks: Vec<Uplink> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let bad = |message: String| Invalid::new("uplinks", format!("{:?}: {message}", entry.name));
        let name = &entry.name;
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "a name is 1 to 32 letters, digits, '-' or '_'".to_owned()
            ));
        }
        if uplinks.iter().any(|uplink| &uplink.name == name) {
            return Err(bad("named twice".to_owned()));
        }
        let value = match (entry.mark, i) {
            (Some(own), _) => {
                if own.value & !mark.mask != 0 || own.value == 0 {
                    return Err(bad(format!(
                        "mark {own}: the value must be non-zero and inside policy.mark's mask \
                         {:#x}",
                        mark.mask
                    )));
                }
                own.value
            }
            (None, 0) => mark.value,
            (None, _) => {
                return Err(bad(
                    "needs a mark of its own (only the first takes policy.mark)".to_owned(),
                ));
            }
        };
        if let Some(other) = uplinks.iter().find(|uplink| uplink.mark == value) {
            return Err(bad(format!("mark {value:#x} is {:?}'s too", other.name)));
        }
        if !(1..=64).contains(&entry.weight) {
            return Err(bad("weight must be 1..=64".to_owned()));
        }
        let sla = entry.sla.unwrap_or(steering.sla);
        validate_sla("uplinks", &sla).map_err(|error| bad(format!("sla: {}", error.message)))?;
        let health = HealthConfig {
            interface: entry.interface.clone(),
            targets: entry.targets.clone(),
            ..health.clone()
        };
        health
            .validate()
            .map_err(|error| bad(format!("{}: {}", error.key, error.message)))?;
        uplinks.push(Uplink {
            name: name.clone(),
            health,
            mark: value,
            table: entry.table,
            weight: entry.weight,
            sla,
            nat_address: entry.nat_address.clone(),
        });
    }
    Ok(uplinks)
}

/// Front doors per family that an uplink without targets probes.
pub const FRONT_DOORS: usize = 2;

/// What an uplink without targets probes: Microsoft's own front doors, as its connectivity
/// test does. They are the host routes (`/31`, `/32`, `/127`, `/128`) of the feed's Optimize
/// sets that take TCP 443 (Exchange Online's `outlook.office365.com` front doors in the
/// feed of today), a TCP handshake each: at most [`FRONT_DOORS`] per family, IPv4 first, in
/// feed order. Empty when the feed has none.
#[must_use]
pub fn front_doors(sets: &[crate::feed::EndpointSet]) -> Vec<Target> {
    let mut doors = Vec::new();
    for v4 in [true, false] {
        let found = sets
            .iter()
            .filter(|set| set.category == Category::Optimize)
            .filter(|set| {
                set.tcp
                    .iter()
                    .any(|range| (range.lo..=range.hi).contains(&443))
            })
            .flat_map(|set| &set.prefixes)
            .filter(|net| {
                net.addr().is_ipv4() == v4 && net.max_prefix_len() - net.prefix_len() <= 1
            })
            .map(|net| Target::Tcp(std::net::SocketAddr::new(net.addr(), 443)));
        for door in found {
            if !doors.contains(&door)
                && doors.iter().filter(|d| is_v4(d) == v4).count() < FRONT_DOORS
            {
                doors.push(door);
            }
        }
    }
    doors
}

fn is_v4(target: &Target) -> bool {
    matches!(target, Target::Tcp(addr) if addr.is_ipv4())
}

/// Whether an uplink meets its SLA, as new quality-sensitive flows see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grade {
    #[default]
    Good,
    Degraded,
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Good => "good",
            Self::Degraded => "degraded",
        })
    }
}

/// Hysteresis and dwell between `good` and `degraded`: `degrade_after` rounds in a row that
/// miss the SLA degrade the uplink, `restore_after` rounds that meet it restore it, and no
/// change comes sooner than `dwell` after the last one. So over a time `T` an uplink changes
/// grade at most `T / dwell + 1` times, whatever its quality does.
#[derive(Clone, Debug)]
pub struct Grader {
    grade: Grade,
    misses: u32,
    meets: u32,
    degrade_after: u32,
    restore_after: u32,
    dwell: Duration,
    /// When the grade last changed (`None`: never, so no dwell to wait).
    changed: Option<std::time::Instant>,
    /// The miss that degraded it, while it is degraded.
    reason: Option<Miss>,
}

impl Grader {
    #[must_use]
    pub fn new(steering: &SteeringConfig) -> Self {
        Self {
            grade: Grade::Good,
            misses: 0,
            meets: 0,
            degrade_after: steering.degrade_after.max(1),
            restore_after: steering.restore_after.max(1),
            dwell: steering.dwell,
            changed: None,
            reason: None,
        }
    }

    #[must_use]
    pub const fn grade(&self) -> Grade {
        self.grade
    }

    /// Why it is degraded: the figure and its bound.
    #[must_use]
    pub const fn reason(&self) -> Option<&Miss> {
        self.reason.as_ref()
    }

    /// One probe round's verdict against the SLA at `now`; the new grade when it changed.
    pub fn round(&mut self, miss: Option<Miss>, now: std::time::Instant) -> Option<Grade> {
        let dwelt = self
            .changed
            .is_none_or(|at| now.saturating_duration_since(at) >= self.dwell);
        #[expect(
            clippy::single_match_else,
            reason = "the two arms are the two halves of the hysteresis"
        )]
        match miss {
            Some(miss) => {
                self.meets = 0;
                self.misses = self.misses.saturating_add(1);
                if self.grade == Grade::Degraded {
                    // The reason follows the figure that misses now.
                    self.reason = Some(miss);
                } else if self.misses >= self.degrade_after && dwelt {
                    self.grade = Grade::Degraded;
                    self.reason = Some(miss);
                    self.changed = Some(now);
                    return Some(Grade::Degraded);
                }
            }
            None => {
                self.misses = 0;
                self.meets = self.meets.saturating_add(1);
                if self.grade == Grade::Degraded && self.meets >= self.restore_after && dwelt {
                    self.grade = Grade::Good;
                    self.reason = None;
                    self.changed = Some(now);
                    return Some(Grade::Good);
                }
            }
        }
        None
    }
}

/// An uplink's standing when the rows are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Dead: it takes no flow, and its flows move.
    pub down: bool,
    pub grade: Grade,
    /// Its mean RTT, for `best` (`None`: unmeasured).
    pub rtt_us: Option<u64>,
    pub weight: u32,
}

/// The rows the agent writes, and what a person should know about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rows {
    pub uplinks: Uplinks,
    /// Per category code, the uplink `best` chose (to keep it while it stays good enough).
    pub best: [Option<u8>; category::COUNT as usize],
    /// Sensitive categories with no uplink that meets its SLA, kept direct (no tunnel
    /// fallback): their names.
    pub stuck: Vec<&'static str>,
}

/// The steering rows for `standings` (in uplink order, with their marks), the previous
/// `best` choices kept unless another uplink is 10% faster.
#[must_use]
pub fn rows(
    standings: &[Standing],
    marks: &[u32],
    steering: &SteeringConfig,
    previous_best: &[Option<u8>; category::COUNT as usize],
) -> Rows {
    let mut uplinks = Uplinks::ONE;
    let count = standings.len().min(MAX_UPLINKS);
    uplinks.count = u32::try_from(count).unwrap_or(0);
    for (i, mark) in marks.iter().take(count).enumerate() {
        uplinks.marks[i] = *mark;
    }
    for (i, standing) in standings.iter().take(count).enumerate() {
        if standing.down {
            uplinks.down |= 1 << i;
        }
    }
    let mut best = [None; category::COUNT as usize];
    let mut stuck = Vec::new();
    for code in 0..u8::try_from(category::COUNT).unwrap_or(0) {
        let row = &mut uplinks.steer[usize::from(code)];
        let Some(policy) = steering.policy(code) else {
            // No direct uplink choice: the first, which a direct verdict never needs.
            row.fill(0);
            continue;
        };
        let alive: Vec<u8> = (0..count)
            .filter(|&i| !standings[i].down)
            .filter_map(|i| u8::try_from(i).ok())
            .collect();
        let mut usable = alive.clone();
        if steering.is_sensitive(code) {
            let good: Vec<u8> = alive
                .iter()
                .copied()
                .filter(|&i| standings[usize::from(i)].grade == Grade::Good)
                .collect();
            if good.is_empty() && !alive.is_empty() {
                if steering.tunnel_fallback {
                    row.fill(STEER_TUNNEL);
                    continue;
                }
                stuck.extend(category::name(code));
            } else {
                usable = good;
            }
        }
        if usable.is_empty() {
            row.fill(STEER_TUNNEL);
            continue;
        }
        match policy {
            Policy::Ordered => row.fill(usable[0]),
            Policy::Best => {
                let rtt = |i: u8| standings[usize::from(i)].rtt_us.unwrap_or(u64::MAX);
                let fastest = usable
                    .iter()
                    .copied()
                    .min_by_key(|&i| (rtt(i), i))
                    .unwrap_or(usable[0]);
                let kept = previous_best[usize::from(code)]
                    .filter(|previous| usable.contains(previous))
                    .filter(|&previous| {
                        u128::from(rtt(previous)) * 10 <= u128::from(rtt(fastest)) * 11
                    });
                let choice = kept.unwrap_or(fastest);
                best[usize::from(code)] = Some(choice);
                row.fill(choice);
            }
            Policy::Balance => fill_weighted(row, &usable, standings),
        }
    }
    Rows {
        uplinks,
        best,
        stuck,
    }
}

/// Deals the slots out by weight, largest remainder first, interleaved so that no uplink
/// holds a long run of slots.
fn fill_weighted(row: &mut [u8; STEER_SLOTS], usable: &[u8], standings: &[Standing]) {
    let weights: Vec<u64> = usable
        .iter()
        .map(|&i| u64::from(standings[usize::from(i)].weight.max(1)))
        .collect();
    let total: u64 = weights.iter().sum();
    let slots = STEER_SLOTS as u64;
    let mut counts: Vec<u64> = weights.iter().map(|w| w * slots / total).collect();
    let mut left = slots - counts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..usable.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse((weights[k] * slots) % total));
    for &k in &order {
        if left == 0 {
            break;
        }
        counts[k] += 1;
        left -= 1;
    }
    // Smooth weighted round robin over the counts.
    let mut credit = vec![0i64; usable.len()];
    let total = i64::try_from(slots).unwrap_or(64);
    for slot in row.iter_mut() {
        for (k, count) in counts.iter().enumerate() {
            credit[k] += i64::try_from(*count).unwrap_or(0);
        }
        let pick = (0..usable.len()).max_by_key(|&k| (credit[k], std::cmp::Reverse(k)));
        if let Some(k) = pick {
            credit[k] -= total;
            *slot = usable[k];
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn figures(rtt_ms: u64, jitter_ms: u64, lost: u32, probes: u32) -> Figures {
        Figures {
            rtt_us: Some(rtt_ms * 1000),
            last_rtt_us: Some(rtt_ms * 1000),
            jitter_us: jitter_ms * 1000,
            probes,
            lost,
        }
    }

    #[test]
    fn the_sla_names_the_figure_and_its_bound() {
        let sla = Sla::default();
        assert_eq!(sla.miss(&figures(20, 2, 0, 50)), None);
        assert_eq!(sla.miss(&Figures::default()), None, "nothing measured yet");
        assert_eq!(
            sla.miss(&figures(74, 2, 0, 50)).unwrap().to_string(),
            "rtt 74.0ms > 60ms"
        );
        assert_eq!(
            sla.miss(&figures(20, 16, 0, 50)).unwrap().to_string(),
            "jitter 16.0ms > 15ms"
        );
        assert_eq!(
            sla.miss(&figures(20, 2, 1, 50)).unwrap().to_string(),
            "loss 2.0% (1 of 50 probes) > 0.1%"
        );
        assert_eq!(
            sla.miss(&figures(60, 15, 0, 50)),
            None,
            "the bounds themselves meet it"
        );
    }

    fn steering(degrade_after: u32, restore_after: u32, dwell: Duration) -> SteeringConfig {
        SteeringConfig {
            degrade_after,
            restore_after,
            dwell,
            ..SteeringConfig::default()
        }
    }

    fn miss() -> Miss {
        Miss {
            figure: "loss".into(),
            measured: "3%".into(),
            bound: "0.1%".into(),
        }
    }

    #[test]
    fn grades_change_after_runs_of_rounds() {
        let start = Instant::now();
        let mut grader = Grader::new(&steering(3, 2, Duration::ZERO));
        assert_eq!(grader.round(Some(miss()), start), None);
        assert_eq!(grader.round(None, start), None, "a good round resets");
        assert_eq!(grader.round(Some(miss()), start), None);
        assert_eq!(grader.round(Some(miss()), start), None);
        assert_eq!(grader.round(Some(miss()), start), Some(Grade::Degraded));
        assert_eq!(grader.reason().unwrap().figure, "loss");
        assert_eq!(grader.round(None, start), None);
        assert_eq!(grader.round(None, start), Some(Grade::Good));
        assert_eq!(grader.reason(), None);
    }

    /// Quality that flips every round never degrades with runs of 2 or more, and with runs of
    /// one the dwell time bounds the changes: at most `T / dwell + 1`.
    #[test]
    fn flapping_quality_is_bounded_by_the_dwell_time() {
        let start = Instant::now();
        let round = Duration::from_millis(100);
        let mut grader = Grader::new(&steering(2, 2, Duration::from_secs(1)));
        let changes = (0..600u32)
            .filter(|n| {
                let bad = n % 2 == 0;
                grader.round(bad.then(miss), start + round * *n).is_some()
            })
            .count();
        assert_eq!(changes, 0, "runs of one never reach two");
        let mut grader = Grader::new(&steering(1, 1, Duration::from_secs(1)));
        let changes = (0..600u32)
            .filter(|n| {
                let bad = n % 2 == 0;
                grader.round(bad.then(miss), start + round * *n).is_some()
            })
            .count();
        // 60 s of rounds at a 1 s dwell: at most 61 changes, and it does change.
        assert!((2..=61).contains(&changes), "{changes}");
    }

    fn standing(down: bool, grade: Grade, rtt_ms: u64, weight: u32) -> Standing {
        Standing {
            down,
            grade,
            rtt_us: Some(rtt_ms * 1000),
            weight,
        }
    }

    fn row_of(rows: &Rows, code: u8) -> Vec<u8> {
        let mut seen: Vec<u8> = rows.uplinks.steer[usize::from(code)].to_vec();
        seen.dedup();
        seen
    }

    #[test]
    fn policies_pick_among_the_usable_uplinks() {
        let config = SteeringConfig {
            allow: Policy::Ordered,
            default: Policy::Balance,
            ..SteeringConfig::default()
        };
        let good = [
            standing(false, Grade::Good, 30, 1),
            standing(false, Grade::Good, 10, 3),
        ];
        let none = [None; category::COUNT as usize];
        let rows = rows(&good, &[0x365, 0x366], &config, &none);
        assert_eq!(rows.uplinks.count, 2);
        assert_eq!(rows.uplinks.marks[..2], [0x365, 0x366]);
        assert_eq!(row_of(&rows, category::OPTIMIZE), [1], "best: the fastest");
        assert_eq!(row_of(&rows, category::ALLOW), [0], "ordered: the first");
        let balance = rows.uplinks.steer[usize::from(category::DEFAULT)];
        assert_eq!(balance.len(), STEER_SLOTS);
        let second: usize = balance.iter().map(|&u| usize::from(u == 1)).sum();
        assert_eq!(second, 48, "3 of 4");
        assert!(
            balance.windows(4).all(|w| w.contains(&1)),
            "interleaved: {balance:?}"
        );
        // Best keeps its choice unless another is 10% faster.
        let close = [
            standing(false, Grade::Good, 10, 1),
            standing(false, Grade::Good, 11, 1),
        ];
        let mut previous = none;
        previous[usize::from(category::OPTIMIZE)] = Some(1);
        let kept = super::rows(&close, &[1, 2], &config, &previous);
        assert_eq!(row_of(&kept, category::OPTIMIZE), [1]);
    }

    #[test]
    fn degraded_and_dead_uplinks_and_the_tunnel_fallback() {
        let none = [None; category::COUNT as usize];
        let marks = [0x365, 0x366];
        let config = SteeringConfig::default();
        // The primary degrades: Optimize (sensitive) leaves it, Allow stays.
        let standings = [
            standing(false, Grade::Degraded, 10, 1),
            standing(false, Grade::Good, 30, 1),
        ];
        let rows = rows(&standings, &marks, &config, &none);
        assert_eq!(row_of(&rows, category::OPTIMIZE), [1]);
        assert_eq!(row_of(&rows, category::ALLOW), [0]);
        assert_eq!(rows.uplinks.down, 0, "degraded is not dead");
        // Both degraded: stuck direct, or the tunnel when allowed.
        let both = [
            standing(false, Grade::Degraded, 10, 1),
            standing(false, Grade::Degraded, 30, 1),
        ];
        let stuck = super::rows(&both, &marks, &config, &none);
        assert_eq!(stuck.stuck, ["Optimize"]);
        assert_eq!(row_of(&stuck, category::OPTIMIZE), [0]);
        let fallback = SteeringConfig {
            tunnel_fallback: true,
            ..SteeringConfig::default()
        };
        let tunnel = super::rows(&both, &marks, &fallback, &none);
        assert_eq!(row_of(&tunnel, category::OPTIMIZE), [STEER_TUNNEL]);
        assert_eq!(row_of(&tunnel, category::ALLOW), [0]);
        // The primary dies: its bit, and every row leaves it; both dead: the tunnel.
        let dead = [
            standing(true, Grade::Good, 10, 1),
            standing(false, Grade::Good, 30, 1),
        ];
        let rows = super::rows(&dead, &marks, &config, &none);
        assert_eq!(rows.uplinks.down, 1);
        assert_eq!(row_of(&rows, category::ALLOW), [1]);
        let all_dead = [
            standing(true, Grade::Good, 10, 1),
            standing(true, Grade::Good, 30, 1),
        ];
        let rows = super::rows(&all_dead, &marks, &config, &none);
        assert_eq!(rows.uplinks.down, 3);
        assert_eq!(row_of(&rows, category::OPTIMIZE), [STEER_TUNNEL]);
        assert_eq!(row_of(&rows, category::ALLOW), [STEER_TUNNEL]);
    }

    #[test]
    fn uplinks_without_targets_probe_the_feeds_optimize_front_doors() {
        let feed = crate::feed::Feed::parse(include_bytes!(
            "../../tests/fixtures/m365-worldwide-endpoints-2026043000.json"
        ))
        .unwrap();
        let doors: Vec<String> = front_doors(&feed.sets)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(doors.len(), 2 * FRONT_DOORS, "{doors:?}");
        for door in &doors {
            let target: Target = door.parse().unwrap();
            let Target::Tcp(addr) = target else {
                panic!("{door}")
            };
            assert_eq!(addr.port(), 443);
            let set = feed
                .sets
                .iter()
                .find(|set| set.prefixes.iter().any(|net| net.contains(&addr.ip())))
                .unwrap();
            assert_eq!(set.category, Category::Optimize, "{door}");
        }
        assert!(
            doors[0].starts_with("tcp://") && !doors[0].contains('['),
            "IPv4 first: {doors:?}"
        );
        assert!(front_doors(&[]).is_empty());
    }

    #[test]
    fn uplinks_resolve_from_health_alone_or_entries_checked() {
        let health = HealthConfig::default();
        let mark: Mark = "0x365/0xffff".parse().unwrap();
        let steering = SteeringConfig::default();
        let single = resolve(&[], &health, mark, &steering).unwrap();
        assert_eq!(single.len(), 1);
        assert_eq!((single[0].name.as_str(), single[0].mark), (SINGLE, 0x365));
        let entry = |name: &str, mark: Option<&str>| UplinkConfig {
            name: name.to_owned(),
            interface: Some("wan0".into()),
            mark: mark.map(|m| m.parse().unwrap()),
            table: None,
            targets: Vec::new(),
            weight: 1,
            sla: None,
            nat_address: Vec::new(),
        };
        let two = resolve(
            &[entry("isp-a", None), entry("isp-b", Some("0x366"))],
            &health,
            mark,
            &steering,
        )
        .unwrap();
        assert_eq!(
            two.iter().map(|u| u.mark).collect::<Vec<_>>(),
            [0x365, 0x366]
        );
        for (entries, why) in [
            (
                vec![entry("isp-a", None), entry("isp-b", None)],
                "needs a mark of its own",
            ),
            (
                vec![entry("isp-a", None), entry("isp-a", Some("0x366"))],
                "named twice",
            ),
            (
                vec![entry("isp-a", None), entry("isp-b", Some("0x365"))],
                "is \"isp-a\"'s too",
            ),
            (
                vec![entry("isp-a", None), entry("isp-b", Some("0x10000"))],
                "inside policy.mark's mask",
            ),
            (vec![entry("isp a", None)], "a name is"),
        ] {
            let error = resolve(&entries, &health, mark, &steering).unwrap_err();
            assert_eq!(error.key, "uplinks");
            assert!(error.message.contains(why), "{why}: {}", error.message);
        }
        let with_targets = HealthConfig {
            targets: vec!["tcp://192.0.2.1:443".parse().unwrap()],
            ..HealthConfig::default()
        };
        let error = resolve(&[entry("isp-a", None)], &with_targets, mark, &steering).unwrap_err();
        assert!(
            error.message.contains("move them into"),
            "{}",
            error.message
        );
    }
}
