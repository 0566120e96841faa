//! The health probes for real, on loopback: a TCP handshake, an ICMP and ICMPv6 echo and an
//! HTTP GET from marked sockets, each answered and each refused, within its timeout.

use std::{
    net::{TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use classifier_user::health::{Target, probe};
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
