//! A branch router in four network namespaces, for end-to-end tests and the demo.
//!
//! ```text
//!  client                router                              direct (uplink)
//!  client0 ---------- lan0   [xdp-breakout: XDP + tc]   wan0 ---- up0   answers Microsoft
//!  10.0.1.2           10.0.1.1          masquerade --> 10.0.2.1   10.0.2.2   and other
//!  fd00:1::2          fd00:1::1                        fd00:2::1  fd00:2::2  test addresses
//!                                          WireGuard    xwg..r ==== xwg..t   tunnel (default)
//!                                          over         10.9.0.1   10.9.0.2   the same
//!                                                       wgu0 ---- up0        addresses
//!                                                      10.0.3.1   10.0.3.2
//! ```
//!
//! The router forwards; `ip rule fwmark 0x365/0xffff lookup 365` sends marked packets to
//! table 365 (default via `direct`, source-NATed to the router's address), everything else
//! takes the main default route through the WireGuard tunnel. With
//! [`Options::second_direct`], `wan1` (10.0.5.1) leads to a second direct upstream (10.0.5.2,
//! namespace `xb<what>-e`) that `fwmark 0x366/0xffff lookup 366` selects. Every upstream owns
//! every test address, so where a packet arrives shows the path it took. Everything is removed
//! on drop, also when a test fails.
//!
//! [`topology`] wires the namespaces, [`traffic`] sends and counts packets, and the agent on
//! the router is run with the harness's daemon control ([`crate::daemon`]).

pub mod dns;
pub mod topology;
pub mod traffic;

use std::{
    fs, io,
    net::TcpListener,
    path::{Path, PathBuf},
    process::ExitStatus,
    thread,
    time::{Duration, Instant},
};

pub use self::{
    dns::{DIRECT_RESOLVER, LAN_RESOLVER, NEIGHBOUR, Side, TUNNEL_RESOLVER},
    topology::{
        DIRECT_MARK, DIRECT_TABLE, DIRECT2_GATEWAY_V4, DIRECT2_GATEWAY_V6, DIRECT2_MARK,
        DIRECT2_TABLE, EXCHANGE_V4, EXCHANGE_V6, EXTRA_A, EXTRA_B, Mode, OTHER_V4, OTHER_V6,
        Options, TEAMS_V4, TEAMS_V6, TEST_ADDRESSES, WAN2, WAN2_V4, WAN2_V6,
    },
    traffic::{Arrivals, Call, Streams, Upstream, arrived},
};
use crate::{
    PinDir,
    daemon::{self, Daemon, Setup},
    http::{FeedServer, Reply},
    netns::Netns,
    unavailable, xdp_breakout,
};

pub struct Router {
    pub client: Netns,
    pub router: Netns,
    pub direct: Netns,
    pub tunnel: Netns,
    /// The second direct upstream, with [`Options::second_direct`].
    pub direct2: Option<Netns>,
    pub pin_dir: PinDir,
    pub work: PathBuf,
    /// The feed server, listening on the router's loopback.
    pub server: FeedServer,
    /// The LAN interface xdp-breakout is attached to.
    pub lan: &'static str,
    daemon: Option<Daemon>,
    /// Daemons started so far; the last one's log is `daemon-<daemons>.log`.
    daemons: u32,
    listeners: Vec<traffic::Listener>,
    /// The VLAN tagging programs (client egress, router LAN ingress), while they run.
    vlan: Vec<aya::Ebpf>,
    /// The router's and the far end's WireGuard interfaces: unique names, since
    /// `wireguard-go`'s control sockets share `/var/run/wireguard/` across namespaces.
    pub tun: String,
    pub tunnel_tun: String,
    /// The two `wireguard-go` processes.
    wireguard: Vec<std::process::Child>,
    /// The attach mode of every daemon ([`Options::mode`]).
    mode: Mode,
    /// What the namespaces are named for.
    what: String,
    /// A LAN neighbour on `lan1`, when added ([`Router::add_lan_neighbour`]).
    neighbour: Option<Netns>,
}

impl Router {
    /// Builds the four namespaces (five with [`Options::second_direct`]).
    pub fn new(what: &str, options: Options) -> io::Result<Self> {
        let client = Netns::new(&format!("xb{what}-c"))?;
        let router = Netns::new(&format!("xb{what}-r"))?;
        let direct = Netns::new(&format!("xb{what}-d"))?;
        let tunnel = Netns::new(&format!("xb{what}-t"))?;
        let direct2 = if options.second_direct {
            Some(Netns::new(&format!("xb{what}-e"))?)
        } else {
            None
        };
        let work = std::env::temp_dir().join(format!("xdp-breakout-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        let server = FeedServer::serve(router.run(|| TcpListener::bind("127.0.0.1:0"))?);
        let id = tunnel_id();
        let mut this = Self {
            client,
            router,
            direct,
            tunnel,
            direct2,
            pin_dir: PinDir::new(what),
            work,
            server,
            // XDP sits on the physical LAN interface, below any VLAN interface.
            lan: "lan0",
            daemon: None,
            daemons: 0,
            listeners: Vec::new(),
            vlan: Vec::new(),
            tun: format!("xwg{id}r"),
            tunnel_tun: format!("xwg{id}t"),
            wireguard: Vec::new(),
            mode: options.mode,
            what: what.to_owned(),
            neighbour: None,
        };
        this.wire()?;
        this.wireguard()?;
        if options.vlan {
            this.tag_lan()?;
        }
        Ok(this)
    }

    /// A router for a test (its namespaces' names end in `t` in `--mode tc`); `None` (skip)
    /// when namespaces are unavailable outside CI.
    ///
    /// # Panics
    ///
    /// When they are unavailable under `CI=true`.
    #[must_use]
    pub fn for_test(what: &str, options: Options) -> Option<Self> {
        let what = match options.mode {
            Mode::Xdp => what.to_owned(),
            Mode::Tc => format!("{what}t"),
        };
        match Self::new(&what, options) {
            Ok(router) => Some(router),
            Err(error) => {
                let _ = unavailable("a router of four network namespaces", &error);
                None
            }
        }
    }

    /// The pin and state directories, for CLI calls.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.work.join("state")
    }

    fn daemon_log_path(&self) -> PathBuf {
        self.work.join(format!("daemon-{}.log", self.daemons))
    }

    /// Starts `xdp-breakout run` on the router (the feed from the router's own server).
    ///
    /// # Panics
    ///
    /// When the binary cannot be started.
    pub fn start_daemon(&mut self, args: &[&str]) {
        self.daemons += 1;
        let state_dir = self.state_dir();
        let setup = Setup {
            netns: &self.router,
            pin_dir: &self.pin_dir.path,
            state_dir: &state_dir,
            iface: self.lan,
            feed_url: &self.server.url(),
        };
        self.daemon = Some(Daemon::start(
            &setup,
            self.mode.args().iter().chain(args),
            self.daemon_log_path(),
        ));
    }

    /// The log of the running (or last) daemon.
    #[must_use]
    pub fn daemon_log(&self) -> String {
        daemon::read_log(&self.daemon_log_path())
    }

    /// Sends `signal` to the daemon; waits for it to exit unless it is SIGHUP.
    ///
    /// # Panics
    ///
    /// When no daemon runs.
    pub fn signal_daemon(&mut self, signal: i32) -> Option<ExitStatus> {
        let daemon = self.daemon.as_mut().expect("a daemon");
        daemon.signal(signal);
        if signal == libc::SIGHUP {
            return None;
        }
        let status = daemon.wait();
        self.daemon = None;
        Some(status)
    }

    /// Waits until the log of the running (or last) daemon contains `needle`.
    ///
    /// # Panics
    ///
    /// After 30 s.
    pub fn wait_log(&self, needle: &str) {
        daemon::wait_log(&self.daemon_log_path(), needle);
    }

    /// The version the agent's status says it applied.
    #[must_use]
    pub fn applied_version(&self) -> Option<String> {
        daemon::applied_version(&self.state_dir())
    }

    /// Waits until the agent's status says it applied `version`.
    ///
    /// # Panics
    ///
    /// After 30 s.
    pub fn wait_version(&self, version: &str) {
        daemon::wait_for(
            &format!("version {version}"),
            || self.applied_version().as_deref() == Some(version),
            || self.daemon_log(),
        );
    }

    /// Runs the CLI on the router with this router's pin and state directories.
    ///
    /// # Panics
    ///
    /// When the binary cannot be started.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.router
            .command(xdp_breakout().to_str().expect("UTF-8 path"))
            .arg("--pin-dir")
            .arg(&self.pin_dir.path)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .output()
            .expect("xdp-breakout")
    }

    /// The CLI's `--json` output of `args` (`["status"]`, `["learned"]`, ...); `Null` when
    /// it printed no JSON (the command failed: its stderr is in the daemon's reach, not here).
    #[must_use]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend(args);
        serde_json::from_slice(&self.cli(&all).stdout).unwrap_or(serde_json::Value::Null)
    }

    #[must_use]
    pub fn work_file(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    #[must_use]
    pub fn pins(&self) -> &Path {
        &self.pin_dir.path
    }
}

/// Flags for the agent's health checks of the direct uplink, fast enough for a test: a TCP
/// probe of `target` every 200 ms (150 ms timeout), down after 3 failed rounds, up after 3
/// good ones.
#[must_use]
pub fn fast_health(target: &str) -> Vec<String> {
    [
        "--health-target",
        target,
        "--health-interval",
        "200ms",
        "--health-timeout",
        "150ms",
        "--health-fail-after",
        "3",
        "--health-recover-after",
        "3",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Serves `body` as the feed's `version` from the router's feed server.
pub fn serve(router: &Router, version: &str, body: &[u8]) {
    router
        .server
        .set("/version/Worldwide", Reply::version(version));
    router.server.set("/endpoints/Worldwide", Reply::json(body));
}

/// Waits until the listeners have seen `total` arrivals in all (they run on their own
/// threads), 5 s at most.
///
/// # Panics
///
/// When a listener panicked holding the counts.
pub fn settle(arrivals: &Arrivals, total: u64) {
    let start = Instant::now();
    while arrivals.lock().expect("arrivals").values().sum::<u64>() < total
        && start.elapsed() < Duration::from_secs(5)
    {
        thread::sleep(Duration::from_millis(20));
    }
}

/// A number no other router of this machine uses now: the process id and a counter, short
/// enough for a 15-byte interface name.
fn tunnel_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}{n}", std::process::id() % 100_000)
}

impl Drop for Router {
    fn drop(&mut self) {
        self.listeners.clear();
        self.daemon = None;
        self.neighbour = None;
        for mut child in self.wireguard.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}
