//! A branch router in four network namespaces, for end-to-end tests and the demo.
//!
//! ```text
//!  client                router                              direct (uplink)
//!  client0 ---------- lan0   [xdp-breakout: XDP + tc]   wan0 ---- up0   answers Microsoft
//!  10.0.1.2           10.0.1.1                         10.0.2.1   10.0.2.2   and other
//!  fd00:1::2          fd00:1::1                        fd00:2::1  fd00:2::2  test addresses
//!                                                       tun0 ---- up0   tunnel (default)
//!                                                      10.0.3.1   10.0.3.2   the same
//!                                                      fd00:3::1  fd00:3::2  addresses
//! ```
//!
//! The router forwards; `ip rule fwmark 0x365/0xffff lookup 365` sends marked packets to
//! table 365 (default via `direct`), everything else takes the main default route (via
//! `tunnel`). Both upstreams own every test address, so where a packet arrives shows the
//! path it took. Neighbours are static, so no packet waits on ARP or neighbour discovery.
//! Everything is removed on drop, also when a test fails.

use std::{
    collections::HashMap,
    fs, io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    PinDir,
    http::FeedServer,
    netns::{Netns, run_checked},
    xdp_breakout,
};

/// Which upstream a packet reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Upstream {
    Direct,
    Tunnel,
}

/// Addresses both upstreams answer on: Microsoft 365 ones from the 2026043000 feed, and
/// others.
pub const TEAMS_V4: &str = "52.112.1.1";
pub const TEAMS_V6: &str = "2603:1063::1";
pub const EXCHANGE_V4: &str = "40.96.1.1";
pub const EXCHANGE_V6: &str = "2603:1006::1";
pub const OTHER_V4: &str = "198.51.100.1";
pub const OTHER_V6: &str = "2001:db8:5::1";
/// Addresses for feeds that add or remove prefixes: public unicast (the feed gate refuses
/// documentation and benchmarking space), not in Microsoft's feed.
pub const EXTRA_A: &str = "44.10.0.1";
pub const EXTRA_B: &str = "44.20.0.1";
pub const TEST_ADDRESSES: [&str; 8] = [
    TEAMS_V4,
    TEAMS_V6,
    EXCHANGE_V4,
    EXCHANGE_V6,
    OTHER_V4,
    OTHER_V6,
    EXTRA_A,
    EXTRA_B,
];

const MAC_CLIENT: &str = "02:00:00:00:01:02";
const MAC_LAN: &str = "02:00:00:00:01:01";
const MAC_WAN: &str = "02:00:00:00:02:01";
const MAC_DIRECT: &str = "02:00:00:00:02:02";
const MAC_TUN: &str = "02:00:00:00:03:01";
const MAC_TUNNEL: &str = "02:00:00:00:03:02";

/// How the router is built.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The LAN is VLAN 100, tagged in the frames (the tag is not offloaded).
    pub vlan: bool,
}

pub struct Router {
    pub client: Netns,
    pub router: Netns,
    pub direct: Netns,
    pub tunnel: Netns,
    pub pin_dir: PinDir,
    pub work: PathBuf,
    /// The feed server, listening on the router's loopback.
    pub server: FeedServer,
    /// The LAN interface xdp-breakout is attached to.
    pub lan: &'static str,
    daemon: Option<Child>,
    daemons: u32,
    listeners: Vec<Listener>,
    /// The VLAN tagging programs (client egress, router LAN ingress), while they run.
    vlan: Vec<aya::Ebpf>,
}

struct Listener {
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Datagrams and connections counted per upstream, destination address and port.
pub type Arrivals = Arc<Mutex<HashMap<(Upstream, IpAddr, u16), u64>>>;

impl Router {
    /// Builds the four namespaces.
    pub fn new(what: &str, options: Options) -> io::Result<Self> {
        let client = Netns::new(&format!("xb{what}-c"))?;
        let router = Netns::new(&format!("xb{what}-r"))?;
        let direct = Netns::new(&format!("xb{what}-d"))?;
        let tunnel = Netns::new(&format!("xb{what}-t"))?;
        let work = std::env::temp_dir().join(format!("xdp-breakout-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        let server = FeedServer::serve(router.run(|| TcpListener::bind("127.0.0.1:0"))?);
        let mut this = Self {
            client,
            router,
            direct,
            tunnel,
            pin_dir: PinDir::new(what),
            work,
            server,
            // XDP sits on the physical LAN interface, below any VLAN interface.
            lan: "lan0",
            daemon: None,
            daemons: 0,
            listeners: Vec::new(),
            vlan: Vec::new(),
        };
        this.wire()?;
        if options.vlan {
            this.tag_lan()?;
        }
        Ok(this)
    }

    #[expect(clippy::too_many_lines, reason = "the topology, link by link")]
    fn wire(&self) -> io::Result<()> {
        let (client, router, direct, tunnel) =
            (&self.client, &self.router, &self.direct, &self.tunnel);
        for netns in [client, router, direct, tunnel] {
            netns.sysctl("net.ipv6.conf.all.accept_dad=0")?;
            netns.sysctl("net.ipv6.conf.default.accept_dad=0")?;
        }
        router.sysctl("net.ipv4.ip_forward=1")?;
        router.sysctl("net.ipv6.conf.all.forwarding=1")?;
        let pair = |a: &Netns, a_name: &str, a_mac: &str, b: &Netns, b_name: &str, b_mac: &str| {
            a.ip(&[
                "link", "add", a_name, "address", a_mac, "type", "veth", "peer", "name", b_name,
                "address", b_mac, "netns", &b.name,
            ])
        };
        pair(client, "client0", MAC_CLIENT, router, "lan0", MAC_LAN)?;
        pair(router, "wan0", MAC_WAN, direct, "up0", MAC_DIRECT)?;
        pair(router, "tun0", MAC_TUN, tunnel, "up0", MAC_TUNNEL)?;
        let (client_if, lan_if) = ("client0", "lan0");
        let up = |netns: &Netns, dev: &str, v4: &str, v6: &str| -> io::Result<()> {
            netns.ip(&["addr", "add", v4, "dev", dev])?;
            netns.ip(&["addr", "add", v6, "dev", dev, "nodad"])?;
            netns.ip(&["link", "set", dev, "up"]).map(drop)
        };
        up(client, client_if, "10.0.1.2/24", "fd00:1::2/64")?;
        up(router, lan_if, "10.0.1.1/24", "fd00:1::1/64")?;
        up(router, "wan0", "10.0.2.1/24", "fd00:2::1/64")?;
        up(direct, "up0", "10.0.2.2/24", "fd00:2::2/64")?;
        up(router, "tun0", "10.0.3.1/24", "fd00:3::1/64")?;
        up(tunnel, "up0", "10.0.3.2/24", "fd00:3::2/64")?;
        let neigh = |netns: &Netns, addr: &str, mac: &str, dev: &str| {
            netns
                .ip(&[
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])
                .map(drop)
        };
        neigh(client, "10.0.1.1", MAC_LAN, client_if)?;
        neigh(client, "fd00:1::1", MAC_LAN, client_if)?;
        neigh(router, "10.0.1.2", MAC_CLIENT, lan_if)?;
        neigh(router, "fd00:1::2", MAC_CLIENT, lan_if)?;
        neigh(router, "10.0.2.2", MAC_DIRECT, "wan0")?;
        neigh(router, "fd00:2::2", MAC_DIRECT, "wan0")?;
        neigh(router, "10.0.3.2", MAC_TUNNEL, "tun0")?;
        neigh(router, "fd00:3::2", MAC_TUNNEL, "tun0")?;
        neigh(direct, "10.0.2.1", MAC_WAN, "up0")?;
        neigh(direct, "fd00:2::1", MAC_WAN, "up0")?;
        neigh(tunnel, "10.0.3.1", MAC_TUN, "up0")?;
        neigh(tunnel, "fd00:3::1", MAC_TUN, "up0")?;
        client.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        client.ip(&["-6", "route", "add", "default", "via", "fd00:1::1"])?;
        // The tunnel is the default; table 365 is the direct uplink, for marked packets.
        router.ip(&["route", "add", "default", "via", "10.0.3.2"])?;
        router.ip(&["-6", "route", "add", "default", "via", "fd00:3::2"])?;
        router.ip(&["route", "add", "default", "via", "10.0.2.2", "table", "365"])?;
        router.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:2::2",
            "table",
            "365",
        ])?;
        router.ip(&[
            "rule",
            "add",
            "fwmark",
            "0x365/0xffff",
            "lookup",
            "365",
            "priority",
            "1000",
        ])?;
        router.ip(&[
            "-6",
            "rule",
            "add",
            "fwmark",
            "0x365/0xffff",
            "lookup",
            "365",
            "priority",
            "1000",
        ])?;
        for (upstream, gw4, gw6) in [
            (direct, "10.0.2.1", "fd00:2::1"),
            (tunnel, "10.0.3.1", "fd00:3::1"),
        ] {
            upstream.ip(&["route", "add", "10.0.1.0/24", "via", gw4])?;
            upstream.ip(&["-6", "route", "add", "fd00:1::/64", "via", gw6])?;
            for addr in TEST_ADDRESSES {
                let prefix = if addr.contains(':') { "128" } else { "32" };
                let mut args = vec!["addr", "add"];
                let with_len = format!("{addr}/{prefix}");
                args.extend([with_len.as_str(), "dev", "lo"]);
                if addr.contains(':') {
                    args.push("nodad");
                }
                upstream.ip(&args)?;
            }
        }
        Ok(())
    }

    /// Tags the LAN with VLAN 100: the client's frames carry the tag on the wire, so the
    /// router's XDP program parses it, and the router untags them after classification. This
    /// machine's kernel has no 802.1Q devices (`CONFIG_VLAN_8021Q` unset), so two tc programs
    /// of the harness (bench-ebpf) do what `client0.100` and `lan0.100` would.
    fn tag_lan(&mut self) -> io::Result<()> {
        run_checked(
            self.client
                .command("ethtool")
                .args(["-K", "client0", "txvlan", "off"]),
        )?;
        let attach = |program: &'static str, iface: &'static str, direction| {
            move || -> Result<aya::Ebpf, Box<dyn std::error::Error + Send + Sync>> {
                let mut ebpf = aya::Ebpf::load(crate::HARNESS_OBJECT)?;
                let classifier: &mut aya::programs::SchedClassifier = ebpf
                    .program_mut(program)
                    .ok_or("program missing")?
                    .try_into()?;
                classifier.load()?;
                classifier.attach(iface, direction)?;
                Ok(ebpf)
            }
        };
        let push = self.client.run(attach(
            "harness_vlan_push",
            "client0",
            aya::programs::TcAttachType::Egress,
        ));
        let pop = self.router.run(attach(
            "harness_vlan_pop",
            "lan0",
            aya::programs::TcAttachType::Ingress,
        ));
        self.vlan.push(push.map_err(io::Error::other)?);
        self.vlan.push(pop.map_err(io::Error::other)?);
        Ok(())
    }

    /// Frames the router untagged (VLAN mode), summed over CPUs.
    ///
    /// # Panics
    ///
    /// Outside VLAN mode.
    #[must_use]
    pub fn untagged(&self) -> u64 {
        let map = self.vlan[1].map("BENCH_COUNT").expect("harness counters");
        let counters = aya::maps::PerCpuArray::<_, classifier_common::Counter>::try_from(map)
            .expect("per-CPU array");
        // Index 6: VLAN_POPPED in bench-ebpf.
        counters
            .get(&6, 0)
            .expect("counter")
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// The pin and state directories, for CLI calls.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.work.join("state")
    }

    /// Starts `xdp-breakout run` on the router (the feed from the router's own server).
    ///
    /// # Panics
    ///
    /// When the binary cannot be started.
    pub fn start_daemon(&mut self, args: &[&str]) {
        self.daemons += 1;
        let log = self.work.join(format!("daemon-{}.log", self.daemons));
        let child = self
            .router
            .command(xdp_breakout().to_str().expect("UTF-8 path"))
            .arg("--pin-dir")
            .arg(&self.pin_dir.path)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args([
                "-v",
                "run",
                "--iface",
                self.lan,
                "--feed-url",
                &self.server.url(),
                "--allow-http",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("xdp-breakout run");
        self.daemon = Some(child);
    }

    /// The log of the running (or last) daemon.
    #[must_use]
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.work.join(format!("daemon-{}.log", self.daemons)))
            .unwrap_or_default()
    }

    /// Sends `signal` to the daemon; waits for it to exit unless it is SIGHUP.
    ///
    /// # Panics
    ///
    /// When no daemon runs.
    pub fn signal_daemon(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let child = self.daemon.as_mut().expect("a daemon");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), signal) };
        if signal == libc::SIGHUP {
            return None;
        }
        let status = child.wait().ok();
        self.daemon = None;
        status
    }

    /// Waits until the daemon's log contains `needle`.
    ///
    /// # Panics
    ///
    /// After 30 s.
    pub fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.daemon_log().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "waited 30 s for {needle:?} in:\n{}",
                self.daemon_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The version the agent's status says it applied.
    #[must_use]
    pub fn applied_version(&self) -> Option<String> {
        crate::read_applied_version(&self.state_dir())
    }

    /// Counts UDP datagrams to every test address on `port`, in both upstreams.
    ///
    /// # Panics
    ///
    /// When a socket cannot be bound.
    pub fn listen_udp(&mut self, port: u16, arrivals: &Arrivals) {
        self.listen(port, arrivals, |addr| {
            let socket = UdpSocket::bind(addr)?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            let mut buffer = [0u8; 2048];
            Ok(move || socket.recv_from(&mut buffer).is_ok())
        });
    }

    /// Accepts TCP connections to every test address on `port`, in both upstreams.
    ///
    /// # Panics
    ///
    /// When a socket cannot be bound.
    pub fn listen_tcp(&mut self, port: u16, arrivals: &Arrivals) {
        self.listen(port, arrivals, |addr| {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(move || {
                let accepted = listener.accept().is_ok();
                if !accepted {
                    thread::sleep(Duration::from_millis(5));
                }
                accepted
            })
        });
    }

    /// Binds `bind(address)` in both upstreams for every test address, and counts each time
    /// the returned poll (which waits briefly) says something arrived, until dropped.
    fn listen<P>(
        &mut self,
        port: u16,
        arrivals: &Arrivals,
        bind: impl Fn(SocketAddr) -> io::Result<P> + Copy + Send,
    ) where
        P: FnMut() -> bool + Send + 'static,
    {
        for (path, netns) in [
            (Upstream::Direct, &self.direct),
            (Upstream::Tunnel, &self.tunnel),
        ] {
            for addr in TEST_ADDRESSES {
                let addr: IpAddr = addr.parse().expect("literal");
                let mut poll = netns
                    .run(move || bind(SocketAddr::new(addr, port)))
                    .expect("bind");
                let stop = Arc::new(AtomicBool::new(false));
                let (stop_flag, arrivals) = (Arc::clone(&stop), Arc::clone(arrivals));
                thread::spawn(move || {
                    while !stop_flag.load(Ordering::Relaxed) {
                        if poll() {
                            *arrivals
                                .lock()
                                .expect("arrivals")
                                .entry((path, addr, port))
                                .or_default() += 1;
                        }
                    }
                });
                self.listeners.push(Listener { stop });
            }
        }
    }

    /// Sends `count` UDP datagrams from the client to `dst:port`, one every `gap`.
    ///
    /// # Panics
    ///
    /// When the client cannot send.
    pub fn send_udp(&self, dst: &str, port: u16, count: u32, gap: Duration) {
        let dst: IpAddr = dst.parse().expect("literal");
        self.client.run(move || send_udp(dst, port, count, gap));
    }

    /// As [`Router::send_udp`], on a thread of its own: a stream that goes on while the test
    /// kills, restarts or feeds the agent.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    #[must_use]
    pub fn stream_udp(
        &self,
        dst: &str,
        port: u16,
        count: u32,
        gap: Duration,
    ) -> thread::JoinHandle<()> {
        let dst: IpAddr = dst.parse().expect("literal");
        self.client.spawn(move || send_udp(dst, port, count, gap))
    }

    /// Opens a TCP connection from the client to `dst:port`; true when it was accepted.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    #[must_use]
    pub fn connect_tcp(&self, dst: &str, port: u16) -> bool {
        let dst: IpAddr = dst.parse().expect("literal");
        self.client.run(move || {
            TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(2)).is_ok()
        })
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

    #[must_use]
    pub fn work_file(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    #[must_use]
    pub fn pins(&self) -> &Path {
        &self.pin_dir.path
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.listeners.clear();
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}

/// Sends from the calling thread's namespace.
fn send_udp(dst: IpAddr, port: u16, count: u32, gap: Duration) {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    let socket = UdpSocket::bind(bind).expect("bind");
    for _ in 0..count {
        socket
            .send_to(b"breakout test", SocketAddr::new(dst, port))
            .expect("send");
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
}

/// Arrivals of `(path, address, port)`.
///
/// # Panics
///
/// On a typo in the address.
#[must_use]
pub fn arrived(arrivals: &Arrivals, path: Upstream, addr: &str, port: u16) -> u64 {
    let addr: IpAddr = addr.parse().expect("literal");
    arrivals
        .lock()
        .expect("arrivals")
        .get(&(path, addr, port))
        .copied()
        .unwrap_or(0)
}
