//! `xdp-breakout run`: the agent.
//!
//! Loads and attaches the programs, or adopts those already pinned without interrupting
//! traffic; fills the maps (last applied feed, pins, or the embedded snapshot); then polls the
//! feed. SIGHUP reloads the configuration; SIGTERM and SIGINT exit and leave the data plane in
//! place unless `--detach-on-exit`.

use std::time::Duration;

use anyhow::Context as _;
use aya_log::EbpfLogger;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tracing::{info, warn};

use crate::{
    EBPF_OBJECT,
    agent::{Agent, Fetch, RefreshError, Refreshed, Start, backoff, jittered},
    cli::{GlobalArgs, RunArgs},
    config::{Config, HealthConfig, RestartOnly},
    datapath::{self, Datapath, PinLock},
    health,
    state::State,
};

pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<()> {
    let config = args.config.effective(global)?;
    anyhow::ensure!(
        !config.interfaces.is_empty(),
        "no interface to attach to: give --iface IFACE or `interfaces` in the config file"
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(daemon(global, args, config))
}

async fn daemon(global: &GlobalArgs, args: &RunArgs, config: Config) -> anyhow::Result<()> {
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let state = State::open(&config.state_dir)?;
    // Held while the programs load and attach; then only around each change of the maps.
    let startup_lock = PinLock::acquire(&config.pin_dir)?;
    let mut datapath = Datapath::load_pinned(EBPF_OBJECT, &config.pin_dir, &config.map_sizes())
        .with_context(|| {
            format!(
                "loading the programs with pins in {}",
                config.pin_dir.display()
            )
        })?;
    let logs = match EbpfLogger::init(datapath.ebpf()) {
        Ok(logger) => Some(tokio::spawn(forward_kernel_logs(logger))),
        Err(error) => {
            warn!("kernel logs will not be forwarded: {error}");
            None
        }
    };
    let mut agent = Agent::new(config.clone(), datapath.maps()?, state)?;
    let metrics = if config.metrics.listen.is_empty() {
        None
    } else {
        let listen: std::net::SocketAddr =
            config.metrics.listen.parse().context("metrics.listen")?;
        let listener = crate::metrics::bind(listen)
            .await
            .with_context(|| format!("listening on {listen} (metrics.listen)"))?;
        info!(
            "serving metrics on http://{listen}/metrics{}",
            if config.pac.serve {
                format!(" and the PAC file on http://{listen}/proxy.pac")
            } else {
                String::new()
            }
        );
        Some(tokio::spawn(crate::metrics::serve(
            listener,
            config.pin_dir.clone(),
            agent.shared(),
        )))
    };
    agent.apply_settings()?;
    match agent.start()? {
        Start::LastFeed { version, .. } => {
            info!("classifying with the last applied feed {version}");
        }
        Start::Pinned { prefixes } => info!("adopted {prefixes} pinned prefixes"),
        Start::Embedded { .. } => {
            info!("classifying with the embedded snapshot until the feed answers");
        }
    }
    for iface in &config.interfaces {
        datapath
            .attach(iface, config.mode.into())
            .with_context(|| format!("attaching to {iface}"))?;
        datapath
            .attach_dns(iface, config.dns.learn)
            .with_context(|| format!("the DNS capture on {iface}"))?;
        info!("attached to {iface} (mark {})", config.policy.mark);
    }
    let mut dns = Dns::start(&mut datapath, config.dns.learn)?;
    agent.save_status();
    drop(startup_lock);
    let mut agent = agent.locking(&config.pin_dir);
    let started = config.restart_only();

    serve(global, args, &mut agent, &started, &mut dns).await?;
    drop(dns);
    if let Some(logs) = logs {
        logs.abort();
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if agent.config().detach_on_exit {
        // What was attached at start, whatever a reload's file says now.
        let _lock = PinLock::acquire(&started.pin_dir)?;
        for iface in &started.interfaces {
            datapath::detach(&started.pin_dir, iface)
                .with_context(|| format!("detaching from {iface}"))?;
            info!("detached from {iface}");
        }
    } else {
        info!("exiting; the data plane stays attached and keeps classifying");
    }
    Ok(())
}

/// Polls the feed and takes health reports until SIGTERM or SIGINT; SIGHUP reloads.
async fn serve(
    global: &GlobalArgs,
    args: &RunArgs,
    agent: &mut Agent,
    started: &RestartOnly,
    dns: &mut Dns,
) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut health = Health::spawn(agent);
    let mut next_poll = Instant::now();
    'daemon: loop {
        // The next refresh due: `[feed]`'s poll or a source's, each on its own clock.
        let (job, at) = match agent.next_source() {
            Some((i, due)) if due < next_poll => (Job::Source(i), due),
            _ => (Job::Feed, next_poll),
        };
        tokio::select! {
            () = sleep_until(at) => {}
            Some(report) = health.next() => {
                take_report(agent, report);
                continue;
            }
            event = dns.next() => {
                dns.take(agent, event);
                continue;
            }
            _ = hangup.recv() => {
                reload(global, args, agent, started);
                health.follow(agent);
                continue;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
        // The fetch owns what it needs, so a signal drops it mid-request: a slow or stalled
        // server never delays a reload or an exit. Health reports are taken meanwhile: a
        // failover never waits for a fetch.
        agent.reconcile();
        let fetch: std::pin::Pin<Box<dyn Future<Output = Done>>> = match job {
            Job::Feed => {
                let fetcher = agent.fetcher(false);
                Box::pin(async move { Done::Feed(fetcher.run().await) })
            }
            Job::Source(i) => match agent.source_fetcher(i, false) {
                Ok(fetcher) => Box::pin(async move { Done::Source(i, fetcher.run().await) }),
                Err(error) => Box::pin(async move { Done::Source(i, Err(error)) }),
            },
        };
        let mut fetch = fetch;
        let outcome = loop {
            tokio::select! {
                outcome = &mut fetch => break outcome,
                Some(report) = health.next() => take_report(agent, report),
                event = dns.next() => dns.take(agent, event),
                _ = hangup.recv() => {
                    info!("SIGHUP: cancelled the feed request in flight");
                    reload(global, args, agent, started);
                    health.follow(agent);
                    next_poll = Instant::now();
                    continue 'daemon;
                }
                _ = terminate.recv() => {
                    info!("cancelled the feed request in flight");
                    break 'daemon;
                }
                _ = interrupt.recv() => {
                    info!("cancelled the feed request in flight");
                    break 'daemon;
                }
            }
        };
        match outcome {
            Done::Feed(fetched) => {
                let wait = finish_poll(agent, fetched);
                next_poll = Instant::now() + wait;
            }
            Done::Source(i, got) => {
                let result = agent.accept_source(i, got, false);
                agent.finish_source(i, &result);
            }
        }
    }
    drop(health);
    Ok(())
}

/// DNS learning in the daemon: the ring buffer's reader (a task of its own, which hands
/// batches of answers over), when to apply what was learned, and when to look for expired
/// addresses.
/// DNS answers as the ring buffer gives them: capture time (CLOCK_MONOTONIC, ns), message.
type Answers = Vec<(u64, Vec<u8>)>;

struct Dns {
    answers: Option<mpsc::Receiver<Answers>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    settle_at: Option<Instant>,
    expiry: tokio::time::Interval,
}

/// What [`Dns::next`] found.
enum DnsEvent {
    Answers(Answers),
    Settle,
    Expire,
}

/// How long learned addresses (already in the tries) wait to be applied with the rest of
/// the table: a burst of answers costs one full apply.
const SETTLE_AFTER: Duration = Duration::from_millis(200);

impl Dns {
    fn start(datapath: &mut Datapath, learn: bool) -> anyhow::Result<Self> {
        let (answers, reader) = if learn {
            let ring = datapath.take_dns_ring()?;
            let (sender, answers) = mpsc::channel(256);
            (Some(answers), Some(tokio::spawn(read_dns(ring, sender))))
        } else {
            (None, None)
        };
        let mut expiry = tokio::time::interval(Duration::from_secs(5));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            answers,
            reader,
            settle_at: None,
            expiry,
        })
    }

    async fn next(&mut self) -> DnsEvent {
        let Some(answers) = &mut self.answers else {
            return std::future::pending().await;
        };
        let settle_at = self.settle_at;
        tokio::select! {
            Some(batch) = answers.recv() => DnsEvent::Answers(batch),
            () = async { sleep_until(settle_at.unwrap_or_else(Instant::now)).await }, if settle_at.is_some() => DnsEvent::Settle,
            _ = self.expiry.tick() => DnsEvent::Expire,
        }
    }

    fn take(&mut self, agent: &mut Agent, event: DnsEvent) {
        match event {
            DnsEvent::Answers(batch) => {
                if !agent.learn(&batch).is_empty() && self.settle_at.is_none() {
                    self.settle_at = Some(Instant::now() + SETTLE_AFTER);
                }
            }
            DnsEvent::Settle => {
                self.settle_at = None;
                agent.settle();
                agent.save_status();
            }
            DnsEvent::Expire => agent.expire_learned(),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
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

/// What the daemon fetches next.
enum Job {
    Feed,
    Source(usize),
}

/// What a fetch brought back.
enum Done {
    Feed(Result<Fetch, RefreshError>),
    Source(
        usize,
        Result<crate::sources::fetch::Got, crate::client::FetchError>,
    ),
}

/// The health checks of the direct uplink, run as a task of their own that reports to the
/// daemon loop; restarted when a reload changes them.
struct Health {
    config: HealthConfig,
    mark: u32,
    task: Option<tokio::task::JoinHandle<()>>,
    reports: Option<mpsc::Receiver<health::Report>>,
}

impl Health {
    fn spawn(agent: &Agent) -> Self {
        let config = agent.config().health.clone();
        let mark = agent.config().policy.mark.value;
        let (task, reports) = if config.checks() {
            let (sender, reports) = mpsc::channel(16);
            let task = tokio::spawn(health::watch(
                config.clone(),
                mark,
                agent.uplink_state(),
                sender,
            ));
            (Some(task), Some(reports))
        } else {
            (None, None)
        };
        Self {
            config,
            mark,
            task,
            reports,
        }
    }

    /// Restarts the checks when the agent's configuration of them changed.
    fn follow(&mut self, agent: &Agent) {
        if agent.config().health != self.config || agent.config().policy.mark.value != self.mark {
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

impl Drop for Health {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn take_report(agent: &mut Agent, report: health::Report) {
    if let Err(error) = agent.health(report) {
        warn!("health: {:#}", anyhow::Error::from(error));
    }
}

/// Applies what a poll fetched and records the outcome; returns the wait before the next.
fn finish_poll(agent: &mut Agent, fetched: Result<Fetch, RefreshError>) -> Duration {
    let interval = agent.config().feed.poll_interval;
    let result = fetched.and_then(|fetch| agent.accept(fetch, false));
    let (wait, error) = match result {
        Ok(Refreshed::Unchanged { version }) => {
            info!("feed version {version} is already applied");
            (jittered(interval), None)
        }
        Ok(Refreshed::Applied { .. }) => (jittered(interval), None),
        Err(error) => {
            let failures = agent.status().consecutive_failures.saturating_add(1);
            let wait = error
                .retry_after()
                .unwrap_or_else(|| backoff(failures, interval));
            let message = format!("{:#}", anyhow::Error::from(error));
            warn!(
                "{message}; keeping the installed prefixes, next try in {}s",
                wait.as_secs()
            );
            (wait, Some(message))
        }
    };
    agent.record_poll(error, wait);
    wait
}

fn reload(global: &GlobalArgs, args: &RunArgs, agent: &mut Agent, started: &RestartOnly) {
    let config = match args.config.effective(global) {
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
        Err(error) => warn!("SIGHUP: {error:#}"),
    }
}

/// Forwards aya-log records from the kernel programs into our log.
async fn forward_kernel_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd, which stays open and unchanged for as
    // long as the logger lives, and the logger lives inside the AsyncFd.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            warn!("kernel logs will not be forwarded: {error}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
