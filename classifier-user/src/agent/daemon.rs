//! The daemon: one [`Event`] enum and one loop. Each source is fetched when it is due, one
//! fetch at a time, apart from the agent (a signal drops it mid-request: a slow or stalled
//! server never delays a reload or an exit); health reports and DNS answers are taken while
//! a fetch is in flight (a failover never waits for one).

use std::{pin::Pin, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tracing::{info, warn};

use super::{Agent, RefreshError};
use crate::{
    config::{Config, RestartOnly},
    health,
    sources::fetch::Got,
};

/// The signals the daemon answers. Installed before the programs load and attach, so that a
/// SIGHUP while the daemon starts (a `systemctl reload` just after a start) is taken by the
/// loop once it runs, instead of ending the process by its default action.
pub struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}

/// DNS answers as the ring buffer gives them, matched to their queries by the kernel.
pub type Answers = Vec<crate::dns::Captured>;

/// Everything the daemon reacts to.
pub enum Event {
    /// Source `i` is due for a fetch.
    Due(usize),
    /// Source `i`'s fetch ended.
    Fetched(usize, Result<Got, RefreshError>),
    /// DNS answers from the capture.
    Answers(Answers),
    /// Learned addresses, already in the tries, are applied with the rest of the table.
    Settle,
    /// Time to look for learned addresses past their time.
    Expire,
    Health(health::Report),
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

/// How long learned addresses (already in the tries) wait to be applied with the rest of
/// the table: a burst of answers costs one full apply.
const SETTLE_AFTER: Duration = Duration::from_millis(200);

/// The shortest time between two applies of the learned addresses: under a steady stream of
/// answers, one apply of the whole table (recompiled, diffed, the index rebuilt) every
/// 200 ms cost 61% of a core at 100 answers a second with the union installed, against 12%
/// every 5 s. Each address is in the tries from its answer on, and `learned.json` names the
/// ones written alone, so `lookup` explains them before the apply folds them into the
/// index and the union's record.
const SETTLE_EVERY: Duration = Duration::from_secs(5);

/// When learned addresses are settled next, and when they were last applied.
#[derive(Default)]
struct Settle {
    at: Option<Instant>,
    last: Option<Instant>,
}

impl Settle {
    /// Learned addresses wait: `SETTLE_AFTER` from now, unless a settle is pending.
    fn arm(&mut self) {
        if self.at.is_none() {
            self.at = Some(Instant::now() + SETTLE_AFTER);
        }
    }

    /// Applies the learned addresses with the whole table when `SETTLE_EVERY` has passed;
    /// else records them (`learned` and `lookup` see them at once) and applies later.
    fn settle(&mut self, agent: &mut Agent) {
        if self.fire() {
            agent.settle();
        } else {
            agent.save_learned();
        }
        agent.save_status();
    }

    /// The settle is due: whether to apply the whole table now (`SETTLE_EVERY` since the
    /// last apply), or only record the addresses (`learned.json`) and apply later.
    fn fire(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(last) if now < last + SETTLE_EVERY => {
                self.at = Some(last + SETTLE_EVERY);
                false
            }
            _ => {
                self.at = None;
                self.last = Some(now);
                true
            }
        }
    }
}

type Fetch = Pin<Box<dyn Future<Output = (usize, Result<Got, RefreshError>)>>>;

/// Runs the agent until SIGTERM or SIGINT. `load` reads the configuration again on SIGHUP;
/// `started` holds the settings a reload cannot change; `ring` is the DNS capture's ring
/// buffer, when learning.
pub async fn run(
    agent: &mut Agent,
    load: impl Fn() -> anyhow::Result<Config>,
    started: &RestartOnly,
    ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals {
        mut hangup,
        mut terminate,
        mut interrupt,
    } = signals;
    let mut health = Health::spawn(agent);
    let (mut answers, reader) = match ring {
        Some(ring) => {
            let (sender, answers) = mpsc::channel(256);
            (
                Some(answers),
                Some(Task(tokio::spawn(read_dns(ring, sender)))),
            )
        }
        None => (None, None),
    };
    let mut expiry = tokio::time::interval(Duration::from_secs(5));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut settle = Settle::default();
    let mut fetch: Option<Fetch> = None;
    loop {
        let due = agent.next_due();
        let event = tokio::select! {
            (i, got) = async {
                match fetch.as_mut() {
                    Some(fetch) => fetch.await,
                    None => std::future::pending().await,
                }
            } => Event::Fetched(i, got),
            () = async { sleep_until(due.map_or_else(Instant::now, |(_, at)| at)).await },
                if fetch.is_none() && due.is_some() => {
                Event::Due(due.map_or(0, |(i, _)| i))
            }
            Some(report) = health.next() => Event::Health(report),
            Some(batch) = async {
                match answers.as_mut() {
                    Some(answers) => answers.recv().await,
                    None => std::future::pending().await,
                }
            } => Event::Answers(batch),
            () = async { sleep_until(settle.at.unwrap_or_else(Instant::now)).await },
                if settle.at.is_some() => Event::Settle,
            _ = expiry.tick(), if answers.is_some() => Event::Expire,
            _ = hangup.recv() => Event::Reload,
            _ = terminate.recv() => Event::Stop,
            _ = interrupt.recv() => Event::Stop,
        };
        match event {
            Event::Due(i) => {
                // What another process changed is taken in before the fetch is judged.
                agent.reconcile();
                let got = agent.fetch(i, false);
                fetch = Some(Box::pin(async move { (i, got.await) }));
            }
            Event::Fetched(i, got) => {
                fetch = None;
                let result = agent.accept(i, got, false);
                agent.finish(i, &result);
                // Uplinks without targets probe the installed feed's front doors.
                health.follow(agent);
            }
            Event::Answers(batch) => {
                agent.learn(&batch);
                // Addresses written alone, or evicted by a full cap (which may teach nothing
                // new), wait for the whole table.
                if agent.learn_dirty {
                    settle.arm();
                }
            }
            Event::Settle => settle.settle(agent),
            Event::Expire => {
                agent.expire_learned();
                agent.refresh_trust();
                agent.count_refusals();
            }
            Event::Health(report) => {
                if let Err(error) = agent.health(report) {
                    warn!("health: {:#}", anyhow::Error::from(error));
                }
            }
            Event::Reload => {
                if fetch.take().is_some() {
                    info!("SIGHUP: cancelled the feed request in flight");
                }
                reload(agent, &load, started);
                health.follow(agent);
            }
            Event::Stop => {
                if fetch.take().is_some() {
                    info!("cancelled the feed request in flight");
                }
                break;
            }
        }
    }
    drop(reader);
    Ok(())
}

fn reload(agent: &mut Agent, load: &impl Fn() -> anyhow::Result<Config>, started: &RestartOnly) {
    let config = match load() {
        Ok(config) => config,
        Err(error) => {
            warn!("SIGHUP: keeping the running configuration: {error:#}");
            return;
        }
    };
    let (config, ignored) = config.reloadable_over(started);
    if !ignored.is_empty() {
        warn!(
            "SIGHUP: {} change only on restart; keeping the running values",
            ignored.join(", ")
        );
    }
    for warning in config.warnings() {
        warn!("SIGHUP: {warning}");
    }
    match agent.reconfigure(config) {
        Ok(()) => info!("SIGHUP: configuration reloaded"),
        Err(error) => warn!("SIGHUP: {:#}", anyhow::Error::from(error)),
    }
}

/// A task aborted when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the DNS ring buffer as it fills and hands batches of `(capture time, message)` to
/// the daemon loop; a batch the loop cannot take now is dropped and counted.
async fn read_dns(ring: aya::maps::RingBuf<aya::maps::MapData>, answers: mpsc::Sender<Answers>) {
    // SAFETY: the ring buffer owns its map's fd, which stays open and unchanged for as long
    // as the ring buffer lives, and it lives inside the AsyncFd.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            warn!("dns: the ring buffer cannot be polled: {error}");
            return;
        }
    };
    let mut dropped = 0u64;
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        let mut batch = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            batch.extend(crate::dns::record(&item));
            if batch.len() >= 256 {
                break;
            }
        }
        if batch.len() < 256 {
            guard.clear_ready();
        }
        if !batch.is_empty() && answers.try_send(batch).is_err() {
            dropped += 1;
            warn!("dns: the agent is behind; dropped a batch of answers ({dropped} so far)");
        }
    }
}

/// The health checks of the direct uplinks, one task each, reporting to the daemon loop on
/// one channel; restarted when a reload changes them.
struct Health {
    probed: Vec<(health::HealthConfig, u32)>,
    _tasks: Vec<Task>,
    reports: Option<mpsc::Receiver<health::Report>>,
}

impl Health {
    fn spawn(agent: &Agent) -> Self {
        let probed = agent.probed_uplinks();
        let states = agent.uplink_states();
        let (sender, reports) = mpsc::channel(16 * probed.len().max(1));
        let mut tasks = Vec::new();
        for (i, (config, mark)) in probed.iter().enumerate() {
            if config.checks() {
                tasks.push(Task(tokio::spawn(health::watch(
                    i,
                    config.clone(),
                    *mark,
                    match states.get(i) {
                        Some(health::State::Down) => health::State::Down,
                        _ => health::State::Up,
                    },
                    sender.clone(),
                ))));
            }
        }
        Self {
            probed,
            reports: (!tasks.is_empty()).then_some(reports),
            _tasks: tasks,
        }
    }

    /// Restarts the checks when the agent's configuration of them changed.
    fn follow(&mut self, agent: &Agent) {
        if agent.probed_uplinks() != self.probed {
            *self = Self::spawn(agent);
        }
    }

    async fn next(&mut self) -> Option<health::Report> {
        match &mut self.reports {
            Some(reports) => reports.recv().await,
            None => std::future::pending().await,
        }
    }
}
