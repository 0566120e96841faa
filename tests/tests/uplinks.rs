//! Two direct uplinks and the tunnel, end to end: the agent grades each uplink against its SLA
//! from probes that responders in the upstreams delay and drop, and the kernel steers new
//! flows by the rows the agent writes. In both attach modes.
//!
//! The quality is emulated in user space (this kernel has no netem): each upstream's
//! responder answers the probe address's ICMP echoes and HTTP GETs late, or not at all, as
//! the test sets it. Only the probes see the emulation; the test traffic itself is not
//! slowed, so that what moves is the steering and nothing else.

use std::{
    net::{SocketAddr, UdpSocket},
    ops::Range,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    quality::{Emulation, PROBE_V4, Responder},
    router::{
        Arrivals, EXCHANGE_V4, Mode, Options, Router, TEAMS_V4, Upstream, arrived, serve, settle,
    },
};

const FEED_2026043000: &[u8] =
    include_bytes!("../fixtures/m365-worldwide-endpoints-2026043000.json");
const HTTP_PORT: u16 = 8080;
/// Teams' media ports in the feed: Optimize, UDP.
const MEDIA: u16 = 3478;
const CALL: u16 = 3479;
/// Exchange Online: Optimize, TCP.
const MAIL: u16 = 443;
/// How long a change of quality may take to show in the steering, with the slack of a shared
/// machine (the configured path: a lost probe, 3 rounds of 250 ms, a 1 s dwell).
const WINDOW: Duration = Duration::from_mins(1);

fn perfect() -> Emulation {
    Emulation::default()
}

fn delayed(ms: u64) -> Emulation {
    Emulation {
        delay: Duration::from_millis(ms),
        ..Emulation::default()
    }
}

/// A router with a second direct uplink and a responder on the probe address in each direct
/// upstream; `None` (skip) without namespaces outside CI.
///
/// The tests of this file take turns (the guard lives as long as the router): a probe that
/// misses its 200 ms timeout on a machine busy with five routers at once is a lost probe,
/// which degrades an uplink against a 0.1% SLA.
fn router(
    what: &str,
    mode: Mode,
) -> Option<(Router, Responder, Responder, MutexGuard<'static, ()>)> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let router = Router::for_test(
        what,
        Options {
            mode,
            second_direct: true,
            ..Options::default()
        },
    )?;
    let probe = PROBE_V4.parse().unwrap();
    let first = Responder::start(&router.direct, probe, HTTP_PORT).expect("responder");
    let second = Responder::start(router.direct2.as_ref().expect("direct2"), probe, HTTP_PORT)
        .expect("responder");
    Some((router, first, second, turn))
}

/// The configuration file: two uplinks probing the responders, `steering` appended.
fn config(router: &Router, steering: &str) -> PathBuf {
    let targets = format!("[\"icmp://{PROBE_V4}\", \"http://{PROBE_V4}:{HTTP_PORT}/\"]");
    let text = format!(
        "[[uplinks]]\nname = \"isp-a\"\ninterface = \"wan0\"\ntable = 365\ntargets = {targets}\n\
         nat-address = [\"192.0.2.10\"]\n\n\
         [[uplinks]]\nname = \"isp-b\"\ninterface = \"wan1\"\nmark = \"0x366\"\ntable = 366\n\
         targets = {targets}\n\n\
         [steering]\ndegrade-after = 3\nrestore-after = 3\ndwell = \"1s\"\n{steering}\n"
    );
    let path = router.work_file("uplinks.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the agent with `config` and fast probes (250 ms rounds over `window` rounds), and
/// waits until both uplinks were measured.
fn start(router: &mut Router, config: &Path, window: u32) {
    serve(router, "2026043000", FEED_2026043000);
    router.start_daemon(&[
        "--config",
        config.to_str().unwrap(),
        "--health-interval",
        "250ms",
        "--health-timeout",
        "200ms",
        "--health-fail-after",
        "3",
        "--health-recover-after",
        "3",
        "--health-window",
        &window.to_string(),
    ]);
    router.wait_version("2026043000");
    wait(
        router,
        "both uplinks measured",
        Duration::from_secs(30),
        |uplinks| {
            // Two targets a round: a window's worth of probes, or 10.
            let probes = u64::from(window.min(5)) * 2;
            uplinks.len() == 2
                && uplinks
                    .iter()
                    .all(|u| u["quality"]["window"].as_u64() >= Some(probes))
        },
    );
}

/// Waits until `status` says the kernel's Optimize row sends new flows `to` (names and
/// shares in percent): the status is saved again once the rows are written.
fn wait_steering(router: &Router, to: &[(&str, u32)]) {
    let want = serde_json::json!(to);
    let start = Instant::now();
    loop {
        let steering = router.json(&["status"])["steering"].clone();
        let optimize = steering
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["category"] == "Optimize"))
            .map(|row| row["to"].clone());
        if optimize.as_ref() == Some(&want) {
            return;
        }
        assert!(
            start.elapsed() < WINDOW,
            "waited for Optimize -> {want}: {steering}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `status --json`'s uplinks.
fn uplinks(router: &Router) -> Vec<Value> {
    router.json(&["status"])["uplinks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn uplink<'a>(uplinks: &'a [Value], name: &str) -> &'a Value {
    uplinks
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no uplink {name} in {uplinks:?}"))
}

/// Waits until `done` holds for the status's uplinks; the time it took.
fn wait(router: &Router, what: &str, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let now = uplinks(router);
        if done(&now) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "waited {limit:?} for {what}: {now:#?}\n{}",
            router.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn grade_is(name: &'static str, grade: &'static str) -> impl Fn(&[Value]) -> bool {
    move |uplinks| {
        uplinks
            .iter()
            .any(|u| u["name"] == name && u["grade"] == grade)
    }
}

/// One datagram from each client port of `ports` to `dst:port`: as many new flows, 50 at a
/// time, so that the listener's socket (one per address) drains between bursts on a busy
/// machine instead of overflowing.
fn new_flows(router: &Router, dst: &str, port: u16, ports: Range<u16>) {
    let dst = SocketAddr::new(dst.parse().unwrap(), port);
    router.client.run(move || {
        for (n, source) in ports.enumerate() {
            let socket = UdpSocket::bind(("10.0.1.2", source)).expect("bind");
            socket.send_to(b"new flow", dst).expect("send");
            if n % 50 == 49 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
}

/// Datagrams that arrived on each path at `TEAMS_V4:MEDIA`.
fn media(arrivals: &Arrivals) -> [u64; 3] {
    [Upstream::Direct, Upstream::Direct2, Upstream::Tunnel]
        .map(|path| arrived(arrivals, path, TEAMS_V4, MEDIA))
}

/// Sends `count` new flows and waits until they all arrived; where they went.
fn spread(router: &Router, arrivals: &Arrivals, first_port: u16, count: u16) -> [u64; 3] {
    let before = media(arrivals);
    let total: u64 = arrivals.lock().unwrap().values().sum();
    new_flows(router, TEAMS_V4, MEDIA, first_port..first_port + count);
    settle(arrivals, total + u64::from(count));
    let after = media(arrivals);
    let went = [0, 1, 2].map(|i| after[i] - before[i]);
    assert_eq!(
        went.iter().sum::<u64>(),
        u64::from(count),
        "every new flow arrived once: {went:?}"
    );
    went
}

/// The value of the sample `name{uplink="NAME"}` on `/metrics`.
fn gauge(body: &str, name: &str, uplink: &str) -> Option<f64> {
    let prefix = format!("{name}{{uplink=\"{uplink}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}

fn metrics(router: &Router) -> String {
    use std::io::{Read as _, Write as _};
    router.router.run(|| {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:9365").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
}

/// The uplink `flows` shows for the media flow from client port `sport`.
fn flow_uplink(router: &Router, sport: u16) -> Option<Value> {
    router
        .json(&["flows"])
        .as_array()?
        .iter()
        .find(|f| f["sport"] == sport && f["dport"] == MEDIA)
        .map(|f| f["uplink"].clone())
}

/// With both uplinks over the 60 ms bound and no tunnel fallback, new Optimize flows stay
/// direct (ordered: the first uplink), and the agent says so.
fn both_degraded_without_fallback(
    router: &Router,
    (first, second): (&Responder, &Responder),
    arrivals: &Arrivals,
    emulated: Emulation,
) {
    first.set(delayed(90));
    second.set(delayed(90));
    wait(router, "both degraded", WINDOW, |uplinks| {
        uplinks.len() == 2 && uplinks.iter().all(|u| u["grade"] == "degraded")
    });
    let log = router.daemon_log();
    assert!(
        log.contains("no direct uplink meets its SLA for Optimize; new flows stay direct"),
        "{log}"
    );
    wait_steering(router, &[("isp-a", 100)]);
    assert_eq!(
        spread(router, arrivals, 30_300, 20),
        [20, 0, 0],
        "still direct, on isp-a"
    );
    first.set(perfect());
    second.set(emulated);
    wait(router, "both good again", WINDOW, |uplinks| {
        uplinks.len() == 2 && uplinks.iter().all(|u| u["grade"] == "good")
    });
}

/// The metrics: isp-b's emulated delay and jitter, isp-a's loss, and which is degraded.
fn check_metrics(router: &Router, emulated: Emulation) {
    let body = metrics(router);
    let rtt = gauge(&body, "xdp_breakout_uplink_rtt_seconds", "isp-b").expect("isp-b rtt");
    assert!(
        (0.020..0.020 + 0.006 + 0.040).contains(&rtt),
        "isp-b rtt {rtt}"
    );
    let jitter = gauge(&body, "xdp_breakout_uplink_jitter_seconds", "isp-b").expect("jitter");
    let expected = emulated.expected_jitter().as_secs_f64();
    assert!(
        (expected * 0.25..expected * 2.5 + 0.002).contains(&jitter),
        "isp-b jitter {jitter}, emulated {expected}"
    );
    let loss = gauge(&body, "xdp_breakout_uplink_loss_ratio", "isp-a").expect("isp-a loss");
    assert!(loss > 0.0 && loss < 0.5, "isp-a loss {loss}");
    assert_eq!(
        gauge(&body, "xdp_breakout_uplink_degraded", "isp-a"),
        Some(1.0)
    );
    assert_eq!(
        gauge(&body, "xdp_breakout_uplink_degraded", "isp-b"),
        Some(0.0)
    );
}

/// The primary loses 3% of its probes: it is degraded within the window, and says why; new
/// Optimize flows take the second uplink while the TCP streams and the UDP call already on
/// the primary stay there; `/metrics` shows each uplink's emulated figures; when the loss
/// ends, the primary is restored after the hysteresis and takes new flows again.
fn loss_on_the_primary(mode: Mode) {
    let Some((mut router, first, second, _turn)) = router("upl", mode) else {
        return;
    };
    // The second uplink: 20 ms plus up to 6 ms, an RFC 3550 jitter of about 2 ms.
    let emulated = Emulation {
        delay: Duration::from_millis(20),
        spread: Duration::from_millis(6),
        loss: 0.0,
    };
    second.set(emulated);
    let file = config(&router, "optimize = \"ordered\"");
    let arrivals = Arrivals::default();
    router.listen_udp(MEDIA, &arrivals);
    router.serve_udp_echo(CALL, &arrivals);
    router.serve_tcp_echo(MAIL, &arrivals);
    // 40 rounds (10 s): a lost probe keeps the primary degraded while the test looks.
    start(&mut router, &file, 40);

    assert_eq!(
        spread(&router, &arrivals, 30_000, 20),
        [20, 0, 0],
        "ordered: isp-a"
    );
    let streams = router.open_streams(EXCHANGE_V4, MAIL, 3);
    let call = router.start_call(TEAMS_V4, CALL);
    assert!(
        streams.progress(5, Duration::from_secs(10)),
        "{:?}",
        streams.errors()
    );
    let call_on = |path| arrived(&arrivals, path, TEAMS_V4, CALL);
    assert!(call_on(Upstream::Direct) > 0);

    first.set(Emulation {
        loss: 0.03,
        ..perfect()
    });
    let detected = wait(
        &router,
        "isp-a degraded",
        WINDOW,
        grade_is("isp-a", "degraded"),
    );
    println!("3% loss on isp-a: degraded after {detected:?}");
    let now = uplinks(&router);
    let why = now[0]["degraded_because"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.starts_with("loss ") && why.ends_with("> 0.1%"), "{why}");
    assert_eq!(uplink(&now, "isp-b")["grade"], "good");
    wait_steering(&router, &[("isp-b", 100)]);
    assert_eq!(
        spread(&router, &arrivals, 30_100, 20),
        [0, 20, 0],
        "new flows: isp-b"
    );

    // What was on the primary stays there.
    let (call_direct, call_second) = (call_on(Upstream::Direct), call_on(Upstream::Direct2));
    assert!(
        streams.progress(5, Duration::from_secs(10)),
        "{:?}",
        streams.errors()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        call_on(Upstream::Direct) > call_direct,
        "the call goes on by isp-a"
    );
    assert_eq!(
        call_on(Upstream::Direct2),
        call_second,
        "and never by isp-b"
    );
    assert_eq!(arrived(&arrivals, Upstream::Direct2, EXCHANGE_V4, MAIL), 0);
    assert!(streams.errors().is_empty(), "{:?}", streams.errors());
    assert_eq!(flow_uplink(&router, 30_000), Some(Value::from("isp-a")));
    assert_eq!(flow_uplink(&router, 30_100), Some(Value::from("isp-b")));

    check_metrics(&router, emulated);

    // Recovery: the window forgets the losses, then 3 good rounds and the dwell.
    first.set(perfect());
    let restored = wait(&router, "isp-a restored", WINDOW, grade_is("isp-a", "good"));
    println!("isp-a restored {restored:?} after its loss ended");
    wait_steering(&router, &[("isp-a", 100)]);
    assert_eq!(
        spread(&router, &arrivals, 30_200, 20),
        [20, 0, 0],
        "isp-a again"
    );
    both_degraded_without_fallback(&router, (&first, &second), &arrivals, emulated);
    let (sent, received) = call.finish();
    assert!(
        received * 10 >= sent * 9,
        "the call kept its echoes: {received} of {sent}"
    );
    drop(streams);
}

#[test]
fn loss_on_the_primary_moves_new_flows_only() {
    loss_on_the_primary(Mode::Xdp);
}

#[test]
fn loss_on_the_primary_moves_new_flows_only_tc() {
    loss_on_the_primary(Mode::Tc);
}

/// `balance` splits 1,000 new flows by weight (1:1, within ±10%); with both uplinks degraded
/// new Optimize flows go to the tunnel (the operator allows it), and come back when they
/// recover; an uplink that loses carrier moves its flows and only its flows.
fn balance_fallback_and_carrier(mode: Mode) {
    let Some((mut router, first, second, _turn)) = router("upb", mode) else {
        return;
    };
    let file = config(&router, "optimize = \"balance\"\ntunnel-fallback = true");
    let arrivals = Arrivals::default();
    router.listen_udp(MEDIA, &arrivals);
    start(&mut router, &file, 10);

    let went = spread(&router, &arrivals, 31_000, 1000);
    println!("balance 1:1 over 1,000 new flows: {went:?}");
    assert!(
        (450..=550).contains(&went[0]) && (450..=550).contains(&went[1]) && went[2] == 0,
        "{went:?}"
    );

    // Both miss the 60 ms RTT bound: degraded, and new Optimize flows take the tunnel.
    first.set(delayed(90));
    second.set(delayed(90));
    wait(&router, "both degraded", WINDOW, |uplinks| {
        uplinks.len() == 2 && uplinks.iter().all(|u| u["grade"] == "degraded")
    });
    let why = uplinks(&router)[1]["degraded_because"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.starts_with("rtt ") && why.ends_with("> 60ms"), "{why}");
    wait_steering(&router, &[("tunnel", 100)]);
    assert_eq!(
        spread(&router, &arrivals, 32_100, 20),
        [0, 0, 20],
        "the tunnel"
    );
    first.set(perfect());
    second.set(perfect());
    wait(&router, "both good", WINDOW, |uplinks| {
        uplinks.len() == 2 && uplinks.iter().all(|u| u["grade"] == "good")
    });

    // isp-b loses carrier: down at once; its flows move to isp-a, isp-a's stay.
    let before = media(&arrivals);
    let lost = Instant::now();
    router.router.ip(&["link", "set", "wan1", "down"]).unwrap();
    wait(&router, "isp-b down", Duration::from_secs(10), |uplinks| {
        uplinks.len() == 2 && uplinks[1]["state"] == "down"
    });
    assert_eq!(uplinks(&router)[0]["state"], "up");
    wait_steering(&router, &[("isp-a", 100)]);
    println!(
        "carrier loss on isp-b: down and the rows rewritten within {:?}",
        lost.elapsed()
    );
    let total: u64 = arrivals.lock().unwrap().values().sum();
    new_flows(&router, TEAMS_V4, MEDIA, 31_000..32_000);
    settle(&arrivals, total + 1000);
    let after = media(&arrivals);
    let went = [0, 1, 2].map(|i| after[i] - before[i]);
    // None by isp-b or the tunnel; by isp-a all that the listener's one socket took in (a
    // busy machine may overflow it: `flows` below is the exact check).
    assert!(
        went[1] == 0 && went[2] == 0 && went[0] >= 980,
        "the same 1,000 flows: isp-b's moved to isp-a: {went:?}"
    );
    let flows = router.json(&["flows"]);
    let rows = flows.as_array().unwrap();
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|f| (31_000..32_000).contains(&f["sport"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(ours.len(), 1000);
    assert!(
        ours.iter().all(|f| f["uplink"] == "isp-a"),
        "every one on isp-a now"
    );
    router.router.ip(&["link", "set", "wan1", "up"]).unwrap();
}

#[test]
fn balance_tunnel_fallback_and_carrier_loss() {
    balance_fallback_and_carrier(Mode::Xdp);
}

#[test]
fn balance_tunnel_fallback_and_carrier_loss_tc() {
    balance_fallback_and_carrier(Mode::Tc);
}

/// Quality that flips between good and bad every round (a window of one round, degrade and
/// restore after one round each) changes the grade at most once per dwell time (2 s), plus
/// the first change.
#[test]
fn flapping_quality_is_bounded_by_the_dwell_time() {
    let Some((mut router, first, _second, _turn)) = router("upf", Mode::Xdp) else {
        return;
    };
    let file = config(
        &router,
        "optimize = \"ordered\"\ndegrade-after = 1\nrestore-after = 1\ndwell = \"2s\"\n\
         [steering.sla]\nrtt = \"60ms\"\njitter = \"10s\"\nloss = \"100%\"",
    );
    // The file's own degrade-after, restore-after and dwell: drop the defaults above them.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("degrade-after = 3\nrestore-after = 3\ndwell = \"1s\"\n", "");
    std::fs::write(&file, text).unwrap();
    start(&mut router, &file, 1);
    let start_changes = uplink(&uplinks(&router), "isp-a")["grade_changes"]
        .as_u64()
        .unwrap();
    let began = Instant::now();
    let mut bad = false;
    while began.elapsed() < Duration::from_secs(10) {
        bad = !bad;
        first.set(if bad { delayed(90) } else { perfect() });
        std::thread::sleep(Duration::from_millis(250));
    }
    first.set(perfect());
    let elapsed = began.elapsed();
    let changes = uplink(&uplinks(&router), "isp-a")["grade_changes"]
        .as_u64()
        .unwrap()
        - start_changes;
    let bound = elapsed.as_secs() / 2 + 1;
    println!("flapping for {elapsed:?}: {changes} grade changes (bound {bound})");
    assert!(changes >= 1, "the quality did flap");
    assert!(
        changes <= bound,
        "{changes} changes in {elapsed:?} at a 2 s dwell"
    );
}
