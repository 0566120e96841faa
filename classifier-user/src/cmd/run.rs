//! `xdp-breakout run`: the agent.
//!
//! Loads and attaches the programs, or adopts those already pinned without interrupting
//! traffic; fills the maps (every source's last good file, pins, or the embedded snapshot);
//! then runs the daemon loop ([`crate::agent::daemon`]). SIGHUP reloads the configuration; SIGTERM and SIGINT exit and leave the data plane in
//! place unless `--detach-on-exit`.

use anyhow::Context as _;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::{
    EBPF_OBJECT,
    agent::{Agent, Start, daemon},
    cli::{GlobalArgs, RunArgs},
    config::Config,
    datapath::{self, Datapath, PinLock},
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
    let signals = daemon::Signals::install().context("installing the signal handlers")?;
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
    let ring = if config.dns.learn {
        Some(datapath.take_dns_ring()?)
    } else {
        None
    };
    agent.serve();
    drop(startup_lock);
    let mut agent = agent.locking(&config.pin_dir);
    let started = config.restart_only();

    daemon::run(
        &mut agent,
        || args.config.effective(global),
        &started,
        ring,
        signals,
    )
    .await?;
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
