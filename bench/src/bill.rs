//! The agent's steady-state bill: what the real `xdp-breakout run` costs a router while it
//! waits, while it learns, and per scrape of `/metrics` with a full flow table.
//!
//! The agent runs in a namespace of its own, attached to `lan0` of a veth pair, with the
//! union of AWS, Azure and Microsoft 365 installed (Microsoft 365 from the embedded snapshot:
//! the feed server on its loopback answers 404, so the agent keeps it), health checks off
//! and metrics on its loopback. Its CPU is `utime + stime` of `/proc/PID/stat` (every thread's, user and
//! kernel time of its system calls; not the BPF programs, which run in the packets' softirq
//! and are measured per packet elsewhere), its memory `VmRSS`.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::maps::{HashMap, Map, MapData};
use classifier_common::{FlowKey, FlowValue, action, names, proto};
use classifier_user::datapath::Maps;
use tests::{
    PinDir,
    daemon::{Daemon, Setup},
    http::FeedServer,
    netns::Netns,
};

use crate::{
    dns::UNION,
    report::{Figure, Section},
    status_kib,
};

/// The agent's side of the veth pair, and its address: the resolver it trusts by default.
const LAN: &str = "lan0";
const AGENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The client's side, in the client's namespace.
const CLIENT_IFACE: &str = "lan1";
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// DNS answers a second while learning.
const ANSWERS_PER_SEC: u32 = 100;
/// Names of set 12 of the Microsoft 365 feed (`*.teams.microsoft.com`, Allow).
const ZONE: &str = "teams.microsoft.com";
/// Entries put in the flow table before the scrapes (the table holds 65,536).
const FLOWS: u32 = 65_000;
const SCRAPES: usize = 10;
/// How long the agent gets to start and apply the union.
const PATIENCE: Duration = Duration::from_mins(1);

/// A private directory for the agent's state, configuration and provider files, removed on
/// drop. The agent wants its files root's and writable by no one else.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("xdp-breakout-bench-bill-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { path })
    }

    fn write(&self, name: &str, body: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `target/release/xdp-breakout`, beside this binary, built first so that the bill is of
/// this tree's agent (a no-op when it is up to date).
fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let bin = exe.with_file_name("xdp-breakout");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "classifier-user",
            "--bins",
        ])
        .current_dir(workspace)
        .status();
    match built {
        Ok(status) if status.success() => {}
        // Root's PATH often lacks cargo: a binary built before will do, with a warning.
        _ if bin.exists() => println!(
            "(could not run cargo build -p classifier-user; measuring the existing {})",
            bin.display()
        ),
        _ => bail!(
            "{} is missing: build it with `cargo build --release -p classifier-user --bins`",
            bin.display()
        ),
    }
    Ok(bin)
}

/// The agent's namespace (`lan0`, 10.99.0.1/24) and the client's (`lan1`, 10.99.0.2/24), a
/// veth pair between them, IPv6 off so that neighbour discovery adds nothing.
fn namespaces() -> anyhow::Result<(Netns, Netns)> {
    let agent = Netns::new("xbbill")?;
    let client = Netns::new("xbbillc")?;
    for netns in [&agent, &client] {
        netns.sysctl("net.ipv6.conf.all.disable_ipv6=1")?;
        netns.sysctl("net.ipv6.conf.default.disable_ipv6=1")?;
    }
    agent.ip(&[
        "link",
        "add",
        LAN,
        "type",
        "veth",
        "peer",
        "name",
        CLIENT_IFACE,
        "netns",
        &client.name,
    ])?;
    agent.ip(&["addr", "add", &format!("{AGENT_ADDR}/24"), "dev", LAN])?;
    client.ip(&[
        "addr",
        "add",
        &format!("{CLIENT_ADDR}/24"),
        "dev",
        CLIENT_IFACE,
    ])?;
    agent.ip(&["link", "set", LAN, "up"])?;
    client.ip(&["link", "set", CLIENT_IFACE, "up"])?;
    Ok((agent, client))
}

/// CPU seconds (user + system, every thread) of `pid` so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat: has the agent exited?"))?;
    // The name, field 2, is in parentheses and may hold spaces: count from the last ')'.
    // Then state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index)
            .context("a short /proc stat line")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf reads a constant.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(per_sec > 0, "sysconf(_SC_CLK_TCK)");
    #[expect(clippy::cast_precision_loss, reason = "100 ticks a second")]
    Ok((ticks(11)? + ticks(12)?) / per_sec as f64)
}

/// Nanoseconds on a CPU of `pid`'s live threads (`/proc/PID/task/*/schedstat`, first field):
/// finer than `/proc/PID/stat`'s 10 ms ticks, but blind to threads that exited.
fn on_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(schedstat) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .with_context(|| format!("a schedstat line in {}", path.display()))?;
    }
    Ok(total)
}

/// `VmRSS` of `pid`, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status_kib(&status, "VmRSS:").context("no VmRSS")
}

/// What the agent spent over a window.
struct Window {
    cpu: f64,
    /// The same by schedstat, in seconds.
    on_cpu: f64,
    seconds: f64,
    rss_kib: f64,
}

impl Window {
    fn per_hour(&self) -> f64 {
        self.cpu / self.seconds * 3600.0
    }

    /// Per hour by schedstat.
    fn on_cpu_per_hour(&self) -> f64 {
        self.on_cpu / self.seconds * 3600.0
    }

    fn note(&self) -> String {
        format!(
            "{:.3}% of one core; {:.2} CPU s over {:.0} s; by schedstat {:.2} s an hour",
            self.cpu / self.seconds * 100.0,
            self.cpu,
            self.seconds,
            self.on_cpu_per_hour()
        )
    }
}

fn window(pid: u32, length: Duration) -> anyhow::Result<Window> {
    let (cpu0, ns0, start) = (cpu_seconds(pid)?, on_cpu_ns(pid)?, Instant::now());
    thread::sleep(length);
    let (cpu1, ns1, seconds) = (
        cpu_seconds(pid)?,
        on_cpu_ns(pid)?,
        start.elapsed().as_secs_f64(),
    );
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds of a minute")]
    let on_cpu = ns1.saturating_sub(ns0) as f64 / 1e9;
    Ok(Window {
        cpu: cpu1 - cpu0,
        on_cpu,
        seconds,
        rss_kib: rss_kib(pid)?,
    })
}

/// The agent of the bill, and what it needs to stay up; dropped in the order of the fields:
/// the agent is killed, its pins and files removed, then the namespaces.
struct Agent {
    daemon: Daemon,
    _feed: FeedServer,
    pins: PinDir,
    work: WorkDir,
    bin: PathBuf,
    metrics: SocketAddr,
    client: Netns,
    netns: Netns,
}

impl Agent {
    fn start() -> anyhow::Result<Self> {
        let bin = agent_binary()?;
        let (netns, client) = namespaces()?;
        let work = WorkDir::new()?;
        let pins = PinDir::new("bill");
        let state_dir = work.path.join("state");
        // A feed server that answers 404: the agent keeps the embedded snapshot.
        let feed = FeedServer::serve(netns.run(|| TcpListener::bind("127.0.0.1:0"))?);
        let metrics = netns.run(|| TcpListener::bind("127.0.0.1:0")?.local_addr())?;
        let mut config = format!("[metrics]\nlisten = \"{metrics}\"\n");
        for (name, kind, body) in UNION {
            let path = work.write(&format!("{name}.json"), body)?;
            let _ = write!(
                config,
                "\n[[sources]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{}\"\n",
                path.display()
            );
        }
        let config = work.write("config.toml", config.as_bytes())?;
        let daemon = Daemon::start(
            &Setup {
                netns: &netns,
                pin_dir: &pins.path,
                state_dir: &state_dir,
                iface: LAN,
                feed_url: &feed.url(),
            },
            [std::ffi::OsStr::new("--config"), config.as_os_str()],
            work.path.join("agent.log"),
        );
        let agent = Self {
            daemon,
            _feed: feed,
            pins,
            work,
            bin,
            metrics,
            client,
            netns,
        };
        agent.wait_applied()?;
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Waits until every source of the union is in the maps and the agent is attached.
    fn wait_applied(&self) -> anyhow::Result<()> {
        let state_dir = self.work.path.join("state");
        let start = Instant::now();
        loop {
            let applied = classifier_user::state::read_status(&state_dir)
                .ok()
                .flatten()
                .is_some_and(|status| {
                    status.sources.len() == 1 + UNION.len()
                        && status
                            .sources
                            .iter()
                            .all(|source| source.applied_at.is_some())
                });
            if applied && self.daemon.log().contains(&format!("attached to {LAN}")) {
                return Ok(());
            }
            ensure!(
                std::fs::metadata(format!("/proc/{}", self.pid())).is_ok(),
                "the agent exited: {}",
                self.daemon.log()
            );
            ensure!(
                start.elapsed() < PATIENCE,
                "the agent did not apply the union within {PATIENCE:?}: {}",
                self.daemon.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `xdp-breakout --json ARGS` against this agent's pins and state.
    fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let output = self
            .netns
            .command(self.bin.to_str().context("a UTF-8 path")?)
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .arg("--state-dir")
            .arg(self.work.path.join("state"))
            .arg("--json")
            .args(args)
            .output()?;
        ensure!(
            output.status.success(),
            "xdp-breakout {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// The distinct addresses `learned` lists (it has a row per address and endpoint set).
    fn learned(&self) -> anyhow::Result<usize> {
        let learned: Learned = serde_json::from_value(self.json(&["learned"])?)?;
        Ok(learned
            .addresses
            .iter()
            .map(|row| row.address)
            .collect::<std::collections::BTreeSet<_>>()
            .len())
    }

    /// One `GET /metrics` from the agent's namespace: its time, and the body's length.
    fn scrape(&self) -> anyhow::Result<(Duration, usize)> {
        let metrics = self.metrics;
        self.netns.run(move || {
            let start = Instant::now();
            let mut stream = TcpStream::connect(metrics)?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            let elapsed = start.elapsed();
            ensure!(
                answer.starts_with(b"HTTP/1.1 200"),
                "GET /metrics: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            );
            Ok((elapsed, answer.len()))
        })
    }
}

/// What the bill reads of `learned --json`.
#[derive(serde::Deserialize)]
struct Learned {
    addresses: Vec<LearnedRow>,
}

#[derive(serde::Deserialize)]
struct LearnedRow {
    address: std::net::IpAddr,
}

/// `count` addresses of 44.0.0.0/8 that no prefix of the installed union covers, spread
/// over the block (a stride prime to 2^24 visits each address once).
fn fresh_addresses(maps: &Maps, count: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut addresses = Vec::with_capacity(count);
    for n in 0..1u32 << 24 {
        if addresses.len() == count {
            return Ok(addresses);
        }
        let address = Ipv4Addr::from(0x2c00_0000 | (n.wrapping_mul(2503) & 0x00ff_ffff));
        if maps.lookup(address.into())?.is_none() {
            addresses.push(address);
        }
    }
    bail!("44.0.0.0/8 has fewer than {count} addresses outside the union")
}

/// The query number of `nNNNN.teams.microsoft.com`.
fn number(name: &str) -> Option<usize> {
    name.strip_prefix('n')?
        .strip_suffix(ZONE)?
        .strip_suffix('.')?
        .parse()
        .ok()
}

/// A resolver on the agent's LAN address: answers query `n` with `addresses[n]`, until
/// `stop`; counts its answers.
fn responder(
    socket: &UdpSocket,
    addresses: &[Ipv4Addr],
    stop: &AtomicBool,
    answered: &AtomicU64,
) -> anyhow::Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buffer = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        let Ok(query) = tests::dns::read(&buffer[..len]) else {
            continue;
        };
        let Some(name) = query.questions.first() else {
            continue;
        };
        let Some(address) = number(name).and_then(|n| addresses.get(n)) else {
            continue;
        };
        let answer = tests::dns::answer(query.id, name, &[&address.to_string()], 300);
        socket.send_to(&answer, from)?;
        answered.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// A client that sends `ANSWERS_PER_SEC` queries a second, query `n` at `n` hundredths of
/// a second, each for a name of its own, until `stop` or `count` queries; reads the answers.
fn client(
    socket: &UdpSocket,
    count: usize,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> anyhow::Result<()> {
    let reader = socket.try_clone()?;
    reader.set_read_timeout(Some(Duration::from_millis(100)))?;
    thread::scope(|scope| {
        scope.spawn(|| {
            let mut buffer = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if reader.recv_from(&mut buffer).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let resolver = SocketAddr::from((AGENT_ADDR, 53));
        let start = Instant::now();
        let every = Duration::from_secs(1) / ANSWERS_PER_SEC;
        let sent = (0..count)
            .take_while(|_| !stop.load(Ordering::Relaxed))
            .try_for_each(|n| {
                let due = every * u32::try_from(n)?;
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
                let id = u16::try_from(n & 0xffff)?;
                socket.send_to(&tests::dns::query(id, &format!("n{n}.{ZONE}")), resolver)?;
                anyhow::Ok(())
            });
        // Stops the reader also when sending failed or ran out of names.
        stop.store(true, Ordering::Relaxed);
        sent
    })
}

/// What learning cost: the window, and answers sent, answered and learned.
struct Learning {
    window: Window,
    answered: u64,
    received: u64,
    learned: usize,
}

fn learn(agent: &Agent, warm_up: Duration, length: Duration) -> anyhow::Result<Learning> {
    let count = usize::try_from(
        u64::from(ANSWERS_PER_SEC) * (warm_up + length + Duration::from_secs(5)).as_secs(),
    )?;
    let maps = Maps::from_pins(&agent.pins.path)?;
    let addresses = fresh_addresses(&maps, count)?;
    drop(maps);
    let learned_before = agent.learned()?;
    let stop = AtomicBool::new(false);
    let (answered, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let resolver = agent
        .netns
        .run(|| UdpSocket::bind(SocketAddr::from((AGENT_ADDR, 53))))
        .context("binding the resolver on the agent's LAN address")?;
    let asker = agent
        .client
        .run(|| UdpSocket::bind(SocketAddr::from((CLIENT_ADDR, 0))))?;
    let measured = thread::scope(|scope| {
        let answering = scope.spawn(|| responder(&resolver, &addresses, &stop, &answered));
        let asking = scope.spawn(|| client(&asker, count, &stop, &received));
        thread::sleep(warm_up);
        let measured = window(agent.pid(), length);
        stop.store(true, Ordering::Relaxed);
        asking
            .join()
            .map_err(|_| anyhow::anyhow!("the client panicked"))??;
        answering
            .join()
            .map_err(|_| anyhow::anyhow!("the resolver panicked"))??;
        measured
    })?;
    // The last answers' way to the map: the agent writes what it learned at most once a
    // second; wait until a count holds for two seconds (at most ten).
    let mut learned = agent.learned()?;
    for _ in 0..5 {
        thread::sleep(Duration::from_secs(2));
        let now = agent.learned()?;
        if now == learned {
            break;
        }
        learned = now;
    }
    let learned = learned.saturating_sub(learned_before);
    let (answered, received) = (
        answered.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    ensure!(
        learned > 0,
        "{answered} answers and none learned: {}",
        agent.daemon.log()
    );
    Ok(Learning {
        window: measured,
        answered,
        received,
        learned,
    })
}

/// CLOCK_MONOTONIC in ns, `bpf_ktime_get_ns`'s clock: the flows look fresh to the agent.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

fn open_flows(pins: &Path) -> anyhow::Result<HashMap<MapData, FlowKey, FlowValue>> {
    let path = pins.join(names::FLOWS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    HashMap::try_from(Map::LruHashMap(data)).context(names::FLOWS)
}

/// Entries in the pinned flow table.
fn flow_count(pins: &Path) -> anyhow::Result<usize> {
    Ok(open_flows(pins)?.keys().filter_map(Result::ok).count())
}

/// Fills the pinned flow table with `FLOWS` TCP flows from LAN clients to distinct
/// destinations; returns the entries it holds then (an LRU hash may evict a few early: its
/// free list is per CPU).
fn fill_flows(pins: &Path) -> anyhow::Result<usize> {
    let mut flows = open_flows(pins)?;
    let now = monotonic_ns();
    for n in 0..FLOWS {
        let mut key = FlowKey {
            sport: u16::try_from(1024 + n % 60_000)?,
            dport: 443,
            proto: proto::TCP,
            family: 4,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&[10, 99, 0, 2 + u8::try_from(n % 200)?]);
        key.dst[..4].copy_from_slice(&(0x3400_0000 | n).to_be_bytes());
        let value = FlowValue {
            first_ns: now,
            last_ns: now,
            packets: 1,
            bytes: 60,
            action: action::TUNNEL,
            ..FlowValue::default()
        };
        flows.insert(key, value, 0)?;
    }
    Ok(flows.keys().filter_map(Result::ok).count())
}

/// Median time of `SCRAPES` scrapes, the agent's CPU per scrape, and the body's size.
fn scrapes(agent: &Agent) -> anyhow::Result<(f64, f64, usize)> {
    agent.scrape()?; // warm up
    let cpu0 = cpu_seconds(agent.pid())?;
    let mut times = Vec::with_capacity(SCRAPES);
    let mut size = 0;
    for _ in 0..SCRAPES {
        let (time, bytes) = agent.scrape()?;
        times.push(time.as_secs_f64() * 1e3);
        size = bytes;
    }
    let cpu = cpu_seconds(agent.pid())? - cpu0;
    times.sort_by(f64::total_cmp);
    #[expect(clippy::cast_precision_loss, reason = "ten scrapes")]
    Ok((times[SCRAPES / 2], cpu * 1e3 / SCRAPES as f64, size))
}

pub fn run(quick: bool) -> anyhow::Result<Section> {
    let length = Duration::from_secs(if quick { 15 } else { 60 });
    let mut section = Section::new(
        "The agent's steady-state bill",
        &format!(
            "the real xdp-breakout run on one side of a veth pair in a namespace of its own, the \
             AWS + Azure + Microsoft 365 union installed, health checks off, metrics on \
             loopback; utime + stime of /proc/PID/stat over {} s after it applied (every \
             thread; the BPF programs run in softirq and are not in it), VmRSS at the end; \
             learning: a client on the other side asks the agent side's resolver {ANSWERS_PER_SEC} \
             names of *.{ZONE} a second, each answered with an address of 44.0.0.0/8 outside \
             the union; /metrics: GET on loopback, median of {SCRAPES}, CPU per scrape from \
             /proc",
            length.as_secs()
        ),
    );
    let agent = Agent::start()?;
    // The first seconds after applying still settle (the index, the first status write).
    thread::sleep(Duration::from_secs(2));
    let idle = window(agent.pid(), length)?;
    let idle_figure =
        section.push(Figure::new("CPU per hour, idle", idle.per_hour(), "s").note(idle.note()));
    let idle_rss = section.push(Figure::new("RSS, idle", idle.rss_kib / 1024.0, "MiB"));

    let learning = learn(&agent, Duration::from_secs(3), length)?;
    section.push(
        Figure::new(
            format!("CPU per hour, learning {ANSWERS_PER_SEC} answers a second"),
            learning.window.per_hour(),
            "s",
        )
        .vs(&idle_figure)
        .note(format!(
            "{}, {}; {} answered, {} received by the client, {} addresses learned",
            learning.window.note(),
            // Idle may spend no time at all on a CPU in a window: no ratio then.
            if idle.on_cpu > 0.0 {
                format!(
                    "{:.0}x idle's",
                    learning.window.on_cpu_per_hour() / idle.on_cpu_per_hour()
                )
            } else {
                "idle's none".to_owned()
            },
            learning.answered,
            learning.received,
            learning.learned
        )),
    );
    section.push(
        Figure::new(
            "RSS, after learning",
            learning.window.rss_kib / 1024.0,
            "MiB",
        )
        .vs(&idle_rss),
    );

    let before = flow_count(&agent.pins.path)?;
    let (empty_ms, empty_cpu_ms, empty_bytes) = scrapes(&agent)?;
    let empty = section.push(
        Figure::new(
            "GET /metrics, before filling the flow table",
            empty_ms,
            "ms",
        )
        .note(format!(
            "agent CPU {empty_cpu_ms:.1} ms a scrape; flow table: {before} entries; \
             {empty_bytes} bytes"
        )),
    );
    let held = fill_flows(&agent.pins.path)?;
    let (full_ms, full_cpu_ms, full_bytes) = scrapes(&agent)?;
    section.push(
        Figure::new(
            format!("GET /metrics, {} flows", FLOWS / 1000 * 1000),
            full_ms,
            "ms",
        )
        .vs(&empty)
        .note(format!(
            "agent CPU {full_cpu_ms:.1} ms a scrape; flow table: {held} entries; {full_bytes} \
             bytes"
        )),
    );
    ensure!(
        std::fs::metadata(format!("/proc/{}", agent.pid())).is_ok(),
        "the agent exited during the bill: {}",
        agent.daemon.log()
    );
    Ok(section)
}
