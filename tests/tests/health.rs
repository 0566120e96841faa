//! The health probes for real, on loopback: a TCP handshake, an ICMP and ICMPv6 echo and an
//! HTTP GET from marked sockets, each answered and each refused, within its timeout.

use std::{
    net::{TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use classifier_user::health::{Figures, HealthConfig, State, Target, probe, watch};
use tests::{
    http::{FeedServer, Reply},
    runtime, unavailable,
};

const MARK: u32 = 0x365;
const TIMEOUT: Duration = Duration::from_secs(2);

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop((socket, listener));
    port
}

#[test]
fn probes_answer_and_fail_as_the_network_does() {
    let rt = runtime();
    // Raw sockets and SO_MARK need CAP_NET_RAW and CAP_NET_ADMIN.
    if let Err(error) = rt.block_on(probe(&"icmp://127.0.0.1".parse().unwrap(), MARK, TIMEOUT))
        && (error.contains("Operation not permitted") || error.contains("permission"))
    {
        let _ = unavailable("raw sockets and SO_MARK", &error);
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let open = listener.local_addr().expect("address");
    let server = FeedServer::start();
    server.set("/health", Reply::json(b"{}"));
    let cases: Vec<(String, Result<(), &str>)> = vec![
        (format!("tcp://{open}"), Ok(())),
        (
            format!("tcp://127.0.0.1:{}", closed_port()),
            Err("Connection refused"),
        ),
        ("icmp://127.0.0.1".to_owned(), Ok(())),
        ("icmp://::1".to_owned(), Ok(())),
        (format!("{}/health", server.url()), Ok(())),
        (format!("{}/missing", server.url()), Err("HTTP 404")),
        (
            format!("http://127.0.0.1:{}/", closed_port()),
            Err("Connection refused"),
        ),
    ];
    for (text, expected) in cases {
        let target: Target = text.parse().expect("a target");
        let start = Instant::now();
        let outcome = rt.block_on(probe(&target, MARK, TIMEOUT));
        assert!(start.elapsed() < TIMEOUT + Duration::from_secs(1), "{text}");
        match (expected, outcome) {
            (Ok(()), Ok(rtt)) => assert!(rtt < TIMEOUT, "{text}: {rtt:?}"),
            (Err(needle), Err(error)) => assert!(error.contains(needle), "{text}: {error}"),
            (expected, outcome) => panic!("{text}: expected {expected:?}, got {outcome:?}"),
        }
    }
    // A target that never answers fails at its timeout, not later.
    let silent = FeedServer::start();
    silent.set("/slow", Reply::json(b"{}").delayed(Duration::from_secs(10)));
    let target: Target = format!("{}/slow", silent.url()).parse().unwrap();
    let start = Instant::now();
    let error = rt
        .block_on(probe(&target, MARK, Duration::from_millis(300)))
        .unwrap_err();
    assert!(error.contains("no answer within 300ms"), "{error}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// The uplink's quality, measured by the probes themselves: an HTTP target that delays its
/// answer by 60 ms shows a mean RTT of at least that, a drop of the delay shows as RFC 3550
/// jitter, and answers that fail count as loss over the window.
#[test]
fn the_probes_measure_rtt_jitter_and_loss() {
    const DELAY: Duration = Duration::from_millis(60);
    let rt = runtime();
    let server = FeedServer::start();
    server.set("/quality", Reply::json(b"{}").delayed(DELAY));
    let target: Target = format!("{}/quality", server.url()).parse().unwrap();
    if let Err(error) = rt.block_on(probe(&target, MARK, TIMEOUT))
        && error.contains("Operation not permitted")
    {
        let _ = unavailable("SO_MARK", &error);
        return;
    }
    let config = HealthConfig {
        targets: vec![target],
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(250),
        ..HealthConfig::default()
    };
    let (reports, mut receive) = tokio::sync::mpsc::channel(16);
    let watcher = rt.spawn(watch(0, config, MARK, State::Up, reports));
    // The figures after the next probe round.
    let mut next_round = || -> Figures {
        rt.block_on(async {
            loop {
                let report = tokio::time::timeout(Duration::from_secs(5), receive.recv())
                    .await
                    .expect("a probe round within 5 s")
                    .expect("the watcher runs");
                if let Some(quality) = report.quality {
                    return quality;
                }
            }
        })
    };
    let delay_us = u64::try_from(DELAY.as_micros()).unwrap();
    let mut figures = Figures::default();
    for _ in 0..3 {
        figures = next_round();
    }
    let rtt = figures.rtt_us.expect("answers");
    // Generous above: the machine is shared, and the timeout bounds it anyway.
    assert!((delay_us..delay_us + 190_000).contains(&rtt), "{figures:?}");
    assert!(figures.last_rtt_us.unwrap() >= delay_us, "{figures:?}");
    assert_eq!((figures.probes, figures.lost), (3, 0), "{figures:?}");

    // The delay goes: one difference of about 60 ms, a sixteenth of it in J.
    server.set("/quality", Reply::json(b"{}"));
    let figures = next_round();
    // A drop of 16 ms or more, so J grows by at least 1 ms (J ≥ J × 15/16 + |D|/16).
    assert!(
        figures.last_rtt_us.unwrap() + 16_000 <= delay_us,
        "{figures:?}"
    );
    assert!(figures.jitter_us >= 1_000, "{figures:?}");

    // Failed answers are lost probes: 2 of 6.
    server.set("/quality", Reply::status(503, "down"));
    next_round();
    let figures = next_round();
    assert_eq!((figures.probes, figures.lost), (6, 2), "{figures:?}");
    assert!((figures.loss_ratio() - 1.0 / 3.0).abs() < f64::EPSILON);
    assert_eq!(figures.last_rtt_us, None, "{figures:?}");
    watcher.abort();
}
