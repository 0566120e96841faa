//! Is the direct uplink alive? Probes that leave through it, the link state the kernel
//! reports, and hysteresis between them.
//!
//! Probe sockets carry the direct mark (`SO_MARK`), so the router's own policy routing sends
//! them exactly where it sends marked LAN traffic: a probe tests the path Microsoft 365
//! packets take (rule, table, route, NAT), whatever the main table says. Binding them to the
//! interface instead (`SO_BINDTODEVICE`) would skip the policy rule, so a broken rule or
//! table would go unnoticed, and it needs a route through the interface in the main table,
//! which a branch whose default route is the tunnel does not have.

use std::{
    collections::VecDeque,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::settings::{Invalid, duration_text, within};

/// What a probe asks of the direct uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `tcp://ADDRESS:PORT`: a TCP handshake.
    Tcp(SocketAddr),
    /// `icmp://ADDRESS`: an ICMP or ICMPv6 echo.
    Icmp(IpAddr),
    /// `http://...` or `https://...`: a GET answered with a status below 400.
    Http(reqwest::Url),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let bad = |why: &str| format!("health target {text:?}: {why}");
        if let Some(rest) = text.strip_prefix("tcp://") {
            return rest.parse().map(Self::Tcp).map_err(|_| {
                bad("not ADDRESS:PORT (an IP address, IPv6 in brackets, and a port)")
            });
        }
        if let Some(rest) = text.strip_prefix("icmp://") {
            return rest
                .trim_matches(['[', ']'])
                .parse()
                .map(Self::Icmp)
                .map_err(|_| bad("not an IP address"));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            let url: reqwest::Url = text.parse().map_err(|e| bad(&format!("{e}")))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(bad("no host"));
            }
            return Ok(Self::Http(url));
        }
        Err(bad(
            "expected tcp://ADDRESS:PORT, icmp://ADDRESS, http://URL or https://URL",
        ))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Icmp(addr) => write!(f, "icmp://{addr}"),
            Self::Http(url) => write!(f, "{url}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How many targets must answer for a round to count as a success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Require {
    #[default]
    Any,
    All,
}

/// What a dead direct uplink does to direct verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Failover {
    /// Check the uplink; while it is down, new direct verdicts go to the tunnel.
    #[default]
    Tunnel,
    /// Check nothing: direct verdicts stay direct whatever happens to the uplink.
    None,
}

/// How the agent checks the direct uplink, and what it does when the uplink is dead.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct HealthConfig {
    /// `tunnel`: while the uplink is down, new direct verdicts go to the tunnel; `none`:
    /// check nothing.
    pub failover: Failover,
    /// The direct uplink's interface: its carrier and operstate, from netlink; a link that
    /// goes down fails over at once.
    pub interface: Option<String>,
    /// Probes through the direct uplink: `tcp://ADDRESS:PORT`, `icmp://ADDRESS`,
    /// `http://URL`, `https://URL`.
    pub targets: Vec<Target>,
    /// `any` target answering makes a good round, or `all` of them.
    pub require: Require,
    /// Time between probe rounds.
    #[serde(with = "duration_text")]
    pub interval: Duration,
    /// Limit on one probe.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Failed rounds in a row that take the uplink down.
    pub fail_after: u32,
    /// Good rounds in a row that bring it back.
    pub recover_after: u32,
    /// Probe rounds the quality figures (RTT, jitter, loss) are computed over.
    pub window: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            failover: Failover::Tunnel,
            interface: None,
            targets: Vec::new(),
            require: Require::Any,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fail_after: 3,
            recover_after: 5,
            window: QUALITY_WINDOW,
        }
    }
}

impl HealthConfig {
    /// Whether anything is checked.
    #[must_use]
    pub fn checks(&self) -> bool {
        self.failover != Failover::None && (self.interface.is_some() || !self.targets.is_empty())
    }

    /// Refuses what cannot work: probes that time out after the next round starts, counts
    /// that never trip, a name the kernel would not give an interface.
    pub fn validate(&self) -> Result<(), Invalid> {
        within(
            "interval",
            self.interval,
            Duration::from_millis(100),
            Duration::from_hours(1),
        )?;
        within(
            "timeout",
            self.timeout,
            Duration::from_millis(10),
            self.interval,
        )?;
        if !(1..=1000).contains(&self.fail_after) {
            return Err(Invalid::new("fail-after", "must be 1..=1000"));
        }
        if !(1..=1000).contains(&self.recover_after) {
            return Err(Invalid::new("recover-after", "must be 1..=1000"));
        }
        if !(1..=1000).contains(&self.window) {
            return Err(Invalid::new("window", "must be 1..=1000 rounds"));
        }
        if self.targets.len() > 64 {
            return Err(Invalid::new("targets", "at most 64 targets"));
        }
        if let Some(iface) = &self.interface
            && (iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']))
        {
            return Err(Invalid::new(
                "interface",
                format!("{iface:?} is not an interface name"),
            ));
        }
        Ok(())
    }

    /// Probes nobody chose: allowed, but the operator should know.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        (self.failover != Failover::None && self.targets.is_empty()).then(|| {
            "health: no targets: the direct uplink probes the Optimize front doors of the \
             installed feed (TCP 443, as Microsoft's connectivity test); set health.targets \
             to choose, or health.failover = \"none\" to check nothing"
                .to_owned()
        })
    }
}

/// The uplink as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Up,
    Down,
    Unchecked,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Unchecked => "unchecked",
        })
    }
}

/// A change of [`State`], and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// Hysteresis: `fail_after` failed rounds in a row take the uplink down, `recover_after`
/// good rounds in a row bring it back; a link that goes down takes it down at once, and a
/// link that comes back still needs the good rounds (a flapping carrier is not trusted).
#[derive(Clone, Debug)]
pub struct Tracker {
    state: State,
    fail_after: u32,
    recover_after: u32,
    failures: u32,
    successes: u32,
    link_up: bool,
    /// Probes configured: without them the link alone decides.
    probing: bool,
}

impl Tracker {
    /// Starts up: the uplink worked until now as far as anyone knows, and starting down
    /// would move every direct flow at each restart of the agent.
    #[must_use]
    pub fn new(fail_after: u32, recover_after: u32, probing: bool) -> Self {
        Self {
            state: State::Up,
            fail_after: fail_after.max(1),
            recover_after: recover_after.max(1),
            failures: 0,
            successes: 0,
            link_up: true,
            probing,
        }
    }

    /// Starts in `state` instead (a reload keeps what the uplink was).
    #[must_use]
    pub const fn starting(mut self, state: State) -> Self {
        self.state = state;
        self
    }

    #[must_use]
    pub const fn state(&self) -> State {
        self.state
    }

    fn go(&mut self, to: State, reason: String) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let from = std::mem::replace(&mut self.state, to);
        (self.failures, self.successes) = (0, 0);
        Some(Transition { from, to, reason })
    }

    /// The outcome of one probe round.
    pub fn round(&mut self, ok: bool, detail: &str) -> Option<Transition> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.state == State::Down && self.link_up && self.successes >= self.recover_after {
                let n = self.recover_after;
                return self.go(State::Up, format!("{n} good probe rounds in a row"));
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.state == State::Up && self.failures >= self.fail_after {
                let n = self.fail_after;
                return self.go(
                    State::Down,
                    format!("{n} failed probe rounds in a row ({detail})"),
                );
            }
        }
        None
    }

    /// The link state the kernel reported for the direct interface.
    pub fn link(&mut self, up: bool, iface: &str) -> Option<Transition> {
        let was = std::mem::replace(&mut self.link_up, up);
        if !up {
            return self.go(State::Down, format!("{iface}: link down"));
        }
        if !was && !self.probing {
            return self.go(State::Up, format!("{iface}: link up"));
        }
        None
    }
}

/// One probe's last answer, as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub target: String,
    pub ok: bool,
    /// Round-trip time in microseconds, when it answered.
    pub rtt_us: Option<u64>,
    pub error: Option<String>,
}

/// Probe rounds the quality window holds by default (`window`): 50, about four minutes at the
/// default 5 s interval,
/// long enough to resolve Microsoft's 1% loss threshold with a few rounds' answers and short
/// enough to follow a path that degrades.
pub const QUALITY_WINDOW: u32 = 50;

/// RTT, jitter and loss of one target's probes, over the last `window` of them.
///
/// Loss and the mean RTT are the window's; jitter is RFC 3550's interarrival estimate applied
/// to RTTs (section 6.4.1): for consecutive answered probes, `D` is the difference of their
/// RTTs and `J += (|D| - J) / 16`, a smoothing that already forgets all but the last few dozen
/// answers. A probe without an answer is skipped by the jitter (the next answer is compared
/// with the last one), as RFC 3550 skips lost packets.
#[derive(Clone, Debug)]
pub struct Quality {
    window: usize,
    /// Oldest first; `None` for a probe that got no answer.
    probes: VecDeque<Option<Duration>>,
    /// The last answered probe's RTT, which the next answer is compared with.
    previous: Option<Duration>,
    /// `J`, in microseconds: sixteenths of whole microseconds stay exact in an `f64`.
    jitter_us: f64,
    /// Whether two probes answered, so that `J` says something.
    jittered: bool,
}

impl Quality {
    /// An empty window of `window` probes (at least one).
    #[must_use]
    pub fn new(window: usize) -> Self {
        let window = window.max(1);
        Self {
            window,
            probes: VecDeque::with_capacity(window),
            previous: None,
            jitter_us: 0.0,
            jittered: false,
        }
    }

    /// One probe: its RTT, or `None` when it got no answer.
    pub fn record(&mut self, rtt: Option<Duration>) {
        if self.probes.len() == self.window {
            self.probes.pop_front();
        }
        self.probes.push_back(rtt);
        let Some(rtt) = rtt else { return };
        if let Some(previous) = self.previous.replace(rtt) {
            let d = micros(rtt.abs_diff(previous));
            self.jitter_us += (d - self.jitter_us) / 16.0;
            self.jittered = true;
        }
    }

    /// Probes in the window, answered or not.
    #[must_use]
    pub fn probes(&self) -> usize {
        self.probes.len()
    }

    /// Probes in the window that got no answer.
    #[must_use]
    pub fn lost(&self) -> usize {
        self.probes.iter().filter(|rtt| rtt.is_none()).count()
    }

    /// The mean RTT of the window's answers; `None` when none answered.
    #[must_use]
    pub fn mean_rtt(&self) -> Option<Duration> {
        let answered: Vec<Duration> = self.probes.iter().flatten().copied().collect();
        let count = u32::try_from(answered.len()).ok().filter(|n| *n > 0)?;
        Some(answered.iter().sum::<Duration>() / count)
    }

    /// The last probe's RTT; `None` when it got no answer or nothing was probed.
    #[must_use]
    pub fn last_rtt(&self) -> Option<Duration> {
        self.probes.back().copied().flatten()
    }

    /// RFC 3550's `J`; zero until two probes answered.
    #[must_use]
    pub fn jitter(&self) -> Duration {
        Duration::from_nanos(nanos_of_micros(self.jitter_us))
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "an RTT in microseconds is far below 2^52"
)]
fn micros(duration: Duration) -> f64 {
    duration.as_micros() as f64
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a jitter is a non-negative RTT difference, far below u64::MAX ns"
)]
fn nanos_of_micros(us: f64) -> u64 {
    (us * 1000.0).round() as u64
}

/// An uplink's quality as `status` and `/metrics` show it: its targets' [`Quality`] merged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// The mean RTT of every answered probe in the window, in microseconds; null when none
    /// answered.
    pub rtt_us: Option<u64>,
    /// The last round's mean RTT, in microseconds; null when no target answered it.
    pub last_rtt_us: Option<u64>,
    /// The mean of the targets' RFC 3550 jitters, in microseconds.
    pub jitter_us: u64,
    /// Probes in the window (every target's), and how many got no answer.
    pub probes: u32,
    pub lost: u32,
}

impl Figures {
    /// The share of the window's probes that got no answer; 0 before any probe.
    #[must_use]
    pub fn loss_ratio(&self) -> f64 {
        if self.probes == 0 {
            0.0
        } else {
            f64::from(self.lost) / f64::from(self.probes)
        }
    }
}

/// The quality of one uplink: a [`Quality`] per target, fed by every probe round.
#[derive(Clone, Debug)]
pub struct Meter {
    targets: Vec<Quality>,
}

impl Meter {
    /// `targets` windows of `window` probes each.
    #[must_use]
    pub fn new(targets: usize, window: usize) -> Self {
        Self {
            targets: vec![Quality::new(window); targets],
        }
    }

    /// One round's results, in target order.
    pub fn record(&mut self, results: &[ProbeResult]) {
        for (quality, result) in self.targets.iter_mut().zip(results) {
            quality.record(
                result
                    .rtt_us
                    .filter(|_| result.ok)
                    .map(Duration::from_micros),
            );
        }
    }

    /// The figures over every target's window.
    #[must_use]
    pub fn figures(&self) -> Figures {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mean = |durations: &[Duration]| {
            u32::try_from(durations.len())
                .ok()
                .filter(|n| *n > 0)
                .map(|n| whole_micros(durations.iter().sum::<Duration>() / n))
        };
        let answered: Vec<Duration> = self
            .targets
            .iter()
            .flat_map(|quality| quality.probes.iter().flatten().copied())
            .collect();
        let last: Vec<Duration> = self.targets.iter().filter_map(Quality::last_rtt).collect();
        let jitters: Vec<Duration> = self
            .targets
            .iter()
            .filter(|quality| quality.jittered)
            .map(Quality::jitter)
            .collect();
        Figures {
            rtt_us: mean(&answered),
            last_rtt_us: mean(&last),
            jitter_us: mean(&jitters).unwrap_or(0),
            probes: count(self.targets.iter().map(Quality::probes).sum()),
            lost: count(self.targets.iter().map(Quality::lost).sum()),
        }
    }
}

fn whole_micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// What the watcher tells the agent after each probe round or link change.
#[derive(Clone, Debug)]
pub struct Report {
    /// The uplink's index in the agent's uplinks.
    pub uplink: usize,
    pub state: State,
    pub transition: Option<Transition>,
    /// The round's results, when this report is a probe round.
    pub results: Option<Vec<ProbeResult>>,
    /// The quality over the window, after this round; `None` when this report is a link
    /// change. The window starts empty when the watcher starts (and so at each reload).
    pub quality: Option<Figures>,
}

/// Watches direct uplink `uplink` as `config` says, its probes carrying `mark`, starting in
/// `initial`, and sends a report for every probe round and link change until `reports` is
/// closed.
pub async fn watch(
    uplink: usize,
    config: HealthConfig,
    mark: u32,
    initial: State,
    reports: tokio::sync::mpsc::Sender<Report>,
) {
    let HealthConfig {
        failover: _,
        interface,
        targets,
        require,
        interval,
        timeout,
        fail_after,
        recover_after,
        window,
    } = config;
    let mut tracker =
        Tracker::new(fail_after, recover_after, !targets.is_empty()).starting(initial);
    let mut meter = Meter::new(targets.len(), window as usize);
    let send = |tracker: &Tracker, transition, results, quality| Report {
        uplink,
        state: tracker.state(),
        transition,
        results,
        quality,
    };
    let mut monitor = None;
    if let Some(iface) = &interface {
        let link = crate::netlink::index(iface).and_then(|index| crate::netlink::link(index).ok());
        let transition = match link {
            Some(link) => tracker.link(link.up, iface),
            None => tracker.link(false, &format!("{iface} (no such interface)")),
        };
        if reports
            .send(send(&tracker, transition, None, None))
            .await
            .is_err()
        {
            return;
        }
        match crate::netlink::LinkMonitor::new() {
            Ok(watcher) => monitor = Some(watcher),
            Err(error) => tracing::warn!("health: cannot watch {iface}'s link: {error}"),
        }
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick(), if !targets.is_empty() => {
                let results = round(&targets, mark, timeout).await;
                let ok = match require {
                    Require::Any => results.iter().any(|result| result.ok),
                    Require::All => results.iter().all(|result| result.ok),
                };
                let detail = results
                    .iter()
                    .find(|result| !result.ok)
                    .map(|result| {
                        format!("{}: {}", result.target, result.error.as_deref().unwrap_or("failed"))
                    })
                    .unwrap_or_default();
                let transition = tracker.round(ok, &detail);
                meter.record(&results);
                let quality = Some(meter.figures());
                if reports.send(send(&tracker, transition, Some(results), quality)).await.is_err() {
                    return;
                }
            }
            links = next_links(monitor.as_mut()) => {
                let Some(iface) = &interface else { continue };
                let index = crate::netlink::index(iface);
                let changed: Vec<bool> = match links {
                    Ok(links) => links
                        .iter()
                        .filter(|link| Some(link.index) == index || index.is_none())
                        .map(|link| link.up && index.is_some())
                        .collect(),
                    Err(error) => {
                        tracing::warn!("health: reading link changes: {error}");
                        monitor = None;
                        continue;
                    }
                };
                for up in changed {
                    let transition = tracker.link(up, iface);
                    if transition.is_some()
                        && reports.send(send(&tracker, transition, None, None)).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// The next link messages, or never when nothing is watched.
async fn next_links(
    monitor: Option<&mut crate::netlink::LinkMonitor>,
) -> std::io::Result<Vec<crate::netlink::Link>> {
    match monitor {
        Some(monitor) => monitor.next().await,
        None => std::future::pending().await,
    }
}

/// Every target probed at once.
async fn round(targets: &[Target], mark: u32, timeout: Duration) -> Vec<ProbeResult> {
    let mut set = tokio::task::JoinSet::new();
    for (n, target) in targets.iter().cloned().enumerate() {
        set.spawn(async move { (n, probe(&target, mark, timeout).await, target) });
    }
    let mut results: Vec<(usize, ProbeResult)> = Vec::with_capacity(targets.len());
    while let Some(joined) = set.join_next().await {
        let Ok((n, outcome, target)) = joined else {
            continue;
        };
        let (ok, rtt_us, error) = match outcome {
            Ok(rtt) => (
                true,
                Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
                None,
            ),
            Err(error) => (false, None, Some(error)),
        };
        results.push((
            n,
            ProbeResult {
                target: target.to_string(),
                ok,
                rtt_us,
                error,
            },
        ));
    }
    results.sort_by_key(|(n, _)| *n);
    results.into_iter().map(|(_, result)| result).collect()
}

/// One probe's answer: how long it took, or why it failed.
pub type Outcome = Result<Duration, String>;

/// Sends one probe through the direct uplink (sockets marked `mark`), bounded by `timeout`.
pub async fn probe(target: &Target, mark: u32, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, async {
        match target {
            Target::Tcp(addr) => connect(*addr, mark).await.map(drop),
            Target::Icmp(addr) => {
                let addr = *addr;
                tokio::task::spawn_blocking(move || echo(addr, mark, timeout))
                    .await
                    .map_err(|e| e.to_string())?
            }
            Target::Http(url) => get(url, mark).await,
        }
    })
    .await;
    match result {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

/// A TCP connection from a socket that carries the direct mark.
async fn connect(addr: SocketAddr, mark: u32) -> Result<tokio::net::TcpStream, String> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .and_then(|socket| {
            socket.set_mark(mark)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .map_err(|e| format!("socket: {e}"))?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    socket.connect(addr).await.map_err(|e| e.to_string())
}

/// An ICMP(v6) echo from a raw socket that carries the direct mark.
fn echo(addr: IpAddr, mark: u32, timeout: Duration) -> Result<(), String> {
    let (domain, protocol, request_type, reply_type) = match addr {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    let socket =
        Socket::new(domain, Type::RAW, Some(protocol)).map_err(|e| format!("socket: {e}"))?;
    socket.set_mark(mark).map_err(|e| format!("SO_MARK: {e}"))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let target = SocketAddr::new(addr, 0).into();
    // Only the target's answers reach this socket.
    socket.connect(&target).map_err(|e| e.to_string())?;
    let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0);
    let sequence: u16 = rand_u16();
    let mut request = [request_type, 0, 0, 0, 0, 0, 0, 0, b'x', b'b', b'r', b'k'];
    request[4..6].copy_from_slice(&id.to_be_bytes());
    request[6..8].copy_from_slice(&sequence.to_be_bytes());
    if addr.is_ipv4() {
        // ICMPv6 checksums are the kernel's (RFC 3542); ICMPv4 ones are ours.
        let checksum = internet_checksum(&request);
        request[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    socket.send(&request).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    while Instant::now() < deadline {
        let got = socket.recv(&mut buffer).map_err(|e| e.to_string())?;
        // SAFETY: recv initialised the first `got` bytes.
        let bytes: Vec<u8> = buffer[..got]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
        let icmp = if addr.is_ipv4() {
            let ihl = usize::from(bytes.first().copied().unwrap_or(0) & 0x0f) * 4;
            bytes.get(ihl..).unwrap_or(&[])
        } else {
            &bytes[..]
        };
        if icmp.len() >= 8
            && icmp[0] == reply_type
            && icmp[6..8] == sequence.to_be_bytes()
            && (addr.is_ipv6() || icmp[4..6] == id.to_be_bytes())
        {
            return Ok(());
        }
    }
    Err("no echo reply".to_owned())
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

fn rand_u16() -> u16 {
    let mut bytes = [0u8; 2];
    // SAFETY: getrandom writes at most two bytes into the buffer.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 2, 0) };
    u16::from_ne_bytes(bytes)
}

/// A GET over a marked connection (TLS for `https`), answered below 400. The host name is
/// resolved by the system resolver, whose own packets follow the main table.
async fn get(url: &reqwest::Url, mark: u32) -> Result<(), String> {
    let host = url.host_str().ok_or("no host")?.to_owned();
    let port = url.port_or_known_default().ok_or("no port")?;
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let stream = connect(addr, mark).await?;
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xdp-breakout-health\r\nConnection: close\r\n\r\n"
    );
    let head = if url.scheme() == "https" {
        let connector = tokio_rustls::TlsConnector::from(tls_config());
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
            host.trim_matches(['[', ']']).to_owned(),
        )
        .map_err(|e| format!("{host}: {e}"))?;
        let mut tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(&mut tls, &request).await?
    } else {
        let mut stream = stream;
        exchange(&mut stream, &request).await?
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                head.chars().take(40).collect::<String>()
            )
        })?;
    if status >= 400 {
        return Err(format!("HTTP {status}"));
    }
    Ok(())
}

/// Writes `request`, reads at most the first 1 KiB of the answer.
async fn exchange<S>(stream: &mut S, request: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 1024];
    let got = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    head.truncate(got);
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn tls_config() -> Arc<tokio_rustls::rustls::ClientConfig> {
    use std::sync::OnceLock;
    static CONFIG: OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        Arc::new(
            tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_which_and_why() {
        assert_eq!(
            "tcp://52.112.0.1:443".parse(),
            Ok(Target::Tcp("52.112.0.1:443".parse().unwrap()))
        );
        assert_eq!(
            "tcp://[2603:1063::1]:443".parse(),
            Ok(Target::Tcp("[2603:1063::1]:443".parse().unwrap()))
        );
        assert_eq!(
            "icmp://2606:4700::1111".parse(),
            Ok(Target::Icmp("2606:4700::1111".parse().unwrap()))
        );
        assert!(matches!(
            "https://www.office.com/".parse(),
            Ok(Target::Http(_))
        ));
        for (text, why) in [
            ("tcp://office.com:443", "not ADDRESS:PORT"),
            ("tcp://1.2.3.4", "not ADDRESS:PORT"),
            ("icmp://one.one.one.one", "not an IP address"),
            ("ftp://x", "expected tcp://"),
            ("https://", "health target \"https://\""),
        ] {
            let error = text.parse::<Target>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
            assert!(
                error.starts_with(&format!("health target {text:?}")),
                "{error}"
            );
        }
        for text in [
            "tcp://52.112.0.1:443",
            "icmp://1.1.1.1",
            "https://www.office.com/",
        ] {
            assert_eq!(text.parse::<Target>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn hysteresis_needs_runs_of_failures_and_successes() {
        let mut tracker = Tracker::new(3, 5, true);
        assert_eq!(tracker.round(false, "x"), None);
        assert_eq!(tracker.round(false, "x"), None);
        assert_eq!(
            tracker.round(true, ""),
            None,
            "a success resets the failures"
        );
        assert_eq!(tracker.round(false, "x"), None);
        assert_eq!(tracker.round(false, "x"), None);
        let down = tracker.round(false, "tcp://1.2.3.4:443: refused").unwrap();
        assert_eq!((down.from, down.to), (State::Up, State::Down));
        assert!(
            down.reason
                .contains("3 failed probe rounds in a row (tcp://1.2.3.4:443")
        );
        for _ in 0..4 {
            assert_eq!(tracker.round(true, ""), None);
        }
        assert_eq!(
            tracker.round(false, "x"),
            None,
            "a failure resets the successes"
        );
        for _ in 0..4 {
            assert_eq!(tracker.round(true, ""), None);
        }
        let up = tracker.round(true, "").unwrap();
        assert_eq!((up.from, up.to), (State::Down, State::Up));
    }

    #[test]
    fn a_link_going_down_fails_over_at_once_and_up_needs_probes() {
        let mut tracker = Tracker::new(3, 2, true);
        let down = tracker.link(false, "wan0").unwrap();
        assert_eq!(
            (down.to, down.reason.as_str()),
            (State::Down, "wan0: link down")
        );
        assert_eq!(
            tracker.link(true, "wan0"),
            None,
            "the probes decide the way back"
        );
        assert_eq!(tracker.round(true, ""), None);
        assert_eq!(tracker.round(true, "").unwrap().to, State::Up);
        // Without probes the link decides alone.
        let mut tracker = Tracker::new(3, 2, false);
        assert_eq!(tracker.link(false, "wan0").unwrap().to, State::Down);
        assert_eq!(tracker.link(true, "wan0").unwrap().to, State::Up);
        // Probes that succeed while the link is down do not bring it up.
        let mut tracker = Tracker::new(1, 1, true);
        tracker.link(false, "wan0");
        assert_eq!(tracker.round(true, ""), None);
    }

    #[test]
    fn quality_is_rfc_3550_jitter_and_loss_over_a_sliding_window() {
        let ms = Duration::from_millis;
        let ns = Duration::from_nanos;
        let mut quality = Quality::new(4);
        assert_eq!(
            (quality.probes(), quality.mean_rtt(), quality.jitter()),
            (0, None, Duration::ZERO)
        );
        // Rows: the probe, then (probes, lost, mean RTT, last RTT, jitter) after it.
        let rows = [
            (
                "a first answer: no difference yet",
                Some(ms(10)),
                1,
                0,
                Some(ms(10)),
                Some(ms(10)),
                Duration::ZERO,
            ),
            (
                "D = 16 ms: J = 0 + (16 - 0)/16",
                Some(ms(26)),
                2,
                0,
                Some(ms(18)),
                Some(ms(26)),
                ms(1),
            ),
            (
                "no answer: lost, and J holds",
                None,
                3,
                1,
                Some(ms(18)),
                None,
                ms(1),
            ),
            (
                "compared with 26, the last answer: J = 1 + (16 - 1)/16",
                Some(ms(10)),
                4,
                1,
                Some(ns(15_333_333)),
                Some(ms(10)),
                ns(1_937_500),
            ),
            (
                "the window slides off the 10: J = 1.9375 + (4 - 1.9375)/16",
                Some(ms(14)),
                4,
                1,
                Some(ns(16_666_666)),
                Some(ms(14)),
                ns(2_066_406),
            ),
            (
                "it slides off the 26",
                Some(ms(18)),
                4,
                1,
                Some(ns(14_000_000)),
                Some(ms(18)),
                ns(2_187_256),
            ),
            (
                "and off the loss: J = 2.187255859375 + (2 - 2.187255859375)/16",
                Some(ms(20)),
                4,
                0,
                Some(ms(15) + ns(500_000)),
                Some(ms(20)),
                ns(2_175_552),
            ),
        ];
        for (what, rtt, probes, lost, mean, last, jitter) in rows {
            quality.record(rtt);
            assert_eq!(
                (
                    quality.probes(),
                    quality.lost(),
                    quality.mean_rtt(),
                    quality.last_rtt(),
                    quality.jitter()
                ),
                (probes, lost, mean, last, jitter),
                "{what}"
            );
        }
    }

    #[test]
    fn an_uplinks_figures_merge_its_targets() {
        let result = |rtt_us: Option<u64>| ProbeResult {
            target: "tcp://192.0.2.1:443".into(),
            ok: rtt_us.is_some(),
            rtt_us,
            error: rtt_us.is_none().then(|| "refused".into()),
        };
        let mut meter = Meter::new(2, 3);
        assert_eq!(meter.figures(), Figures::default());
        assert!(meter.figures().loss_ratio().abs() < f64::EPSILON);
        meter.record(&[result(Some(10_000)), result(Some(30_000))]);
        meter.record(&[result(Some(26_000)), result(None)]);
        meter.record(&[result(Some(10_000)), result(None)]);
        let figures = meter.figures();
        assert_eq!(
            figures,
            Figures {
                // (10 + 30 + 26 + 10) / 4 ms.
                rtt_us: Some(19_000),
                last_rtt_us: Some(10_000),
                // The first target's J (1 ms, then 1.9375 ms); the second has one answer.
                jitter_us: 1_937,
                probes: 6,
                lost: 2,
            }
        );
        assert!((figures.loss_ratio() - 2.0 / 6.0).abs() < f64::EPSILON);
        // A round without a single answer: no last RTT; the window (3) drops the first round.
        meter.record(&[result(None), result(None)]);
        let figures = meter.figures();
        assert_eq!(
            (
                figures.rtt_us,
                figures.last_rtt_us,
                figures.probes,
                figures.lost
            ),
            (Some(18_000), None, 6, 4)
        );
    }

    #[test]
    fn the_icmp_checksum_is_the_internet_checksum() {
        // RFC 1071's example: 0x0001 0xf203 0xf4f5 0xf6f7 sums to 0xddf2, complement 0x220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }
}
