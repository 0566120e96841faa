//! The harness's quality responder and second direct uplink, checked on their own: marked
//! probes from the router reach the upstream their mark selects, and are answered with the
//! delay and loss that upstream's responder is set to.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tests::{
    quality::{Emulation, PROBE_V4, PROBE_V6, Responder, http_get, ping},
    router::{
        Arrivals, DIRECT_MARK, DIRECT2_MARK, OTHER_V4, OTHER_V6, Options, Router, Upstream,
        arrived, settle,
    },
};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 3479;

fn with_second_direct(what: &str) -> Option<Router> {
    Router::for_test(
        what,
        Options {
            second_direct: true,
            ..Options::default()
        },
    )
}

/// Echoes by the direct uplink take the 40 ms they are set to, over IPv4 and IPv6; HTTP GETs by
/// the second one lose about the 30% set; each responder counts what it answered and dropped;
/// and a new setting applies to the next request.
#[test]
fn responders_answer_with_the_quality_they_are_set_to() {
    let Some(router) = with_second_direct("resp") else {
        return;
    };
    let (v4, v6): (IpAddr, IpAddr) = (PROBE_V4.parse().unwrap(), PROBE_V6.parse().unwrap());
    let direct2 = router.direct2.as_ref().expect("a second direct upstream");
    let direct = Responder::start(&router.direct, v4, HTTP_PORT).expect("responder in direct");
    let direct_v6 =
        Responder::start(&router.direct, v6, HTTP_PORT).expect("IPv6 responder in direct");
    let second = Responder::start(direct2, v4, HTTP_PORT).expect("responder in direct2");
    let slow = Emulation {
        delay: Duration::from_millis(40),
        spread: Duration::ZERO,
        loss: 0.0,
    };
    direct.set(slow);
    direct_v6.set(slow);
    second.set(Emulation {
        delay: Duration::from_millis(5),
        spread: Duration::from_millis(20),
        loss: 0.3,
    });

    let pings = |dst: IpAddr, count: u16, timeout: Duration| {
        router.router.run(move || {
            (0..count)
                .map(|seq| ping(dst, DIRECT_MARK, seq, timeout).expect("ping"))
                .collect::<Vec<_>>()
        })
    };
    for (dst, count) in [(v4, 10), (v6, 3)] {
        let rtts = pings(dst, count, Duration::from_millis(500));
        assert_eq!(rtts.len(), usize::from(count));
        assert!(
            rtts.iter().all(|rtt| rtt.is_some_and(|rtt| {
                (Duration::from_millis(40)..Duration::from_millis(190)).contains(&rtt)
            })),
            "{dst}: every echo answered in 40 to 190 ms: {rtts:?}"
        );
    }
    assert_eq!((direct.answered(), direct.dropped()), (10, 0));
    assert_eq!((direct_v6.answered(), direct_v6.dropped()), (3, 0));

    let target = SocketAddr::new(v4, HTTP_PORT);
    let answers = router.router.run(move || {
        (0..60)
            .map(|_| http_get(target, DIRECT2_MARK, Duration::from_millis(300)).expect("GET"))
            .collect::<Vec<_>>()
    });
    assert_eq!(answers.len(), 60);
    let answered = answers.iter().filter(|answered| **answered).count() as u64;
    let lost = 60 - answered;
    assert!(
        (6..=30).contains(&lost),
        "{lost} of 60 GETs lost by direct2, 30% set"
    );
    // Answers are counted when written, drops when drawn: both before the client's 300 ms.
    assert_eq!((second.answered(), second.dropped()), (answered, lost));
    assert_eq!(
        (direct.answered(), direct.dropped()),
        (10, 0),
        "mark 0x366 reaches direct2 only"
    );

    direct.set(Emulation { loss: 1.0, ..slow });
    let rtts = pings(v4, 3, Duration::from_millis(300));
    assert_eq!(rtts, [None; 3], "loss 1.0 answers nothing");
    assert_eq!((direct.answered(), direct.dropped()), (10, 3));
}

/// UDP marked 0x366 from the router arrives in the second direct upstream, 0x365 in the
/// first, over IPv4 and IPv6, and nothing in the tunnel.
#[test]
fn marks_choose_the_direct_uplink() {
    let Some(mut router) = with_second_direct("resu") else {
        return;
    };
    let arrivals = Arrivals::default();
    router.listen_udp(UDP_PORT, &arrivals);
    let sends = [
        (OTHER_V4, DIRECT2_MARK, 5),
        (OTHER_V6, DIRECT2_MARK, 4),
        (OTHER_V4, DIRECT_MARK, 3),
        (OTHER_V6, DIRECT_MARK, 2),
    ];
    for (dst, mark, count) in sends {
        let dst = SocketAddr::new(dst.parse().unwrap(), UDP_PORT);
        router.router.run(move || {
            let socket = Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP))
                .expect("socket");
            socket.set_mark(mark).expect("SO_MARK");
            for _ in 0..count {
                socket.send_to(b"breakout test", &dst.into()).expect("send");
            }
        });
    }
    settle(&arrivals, 14);
    let seen = |path, dst| arrived(&arrivals, path, dst, UDP_PORT);
    for (dst, by_second, by_first) in [(OTHER_V4, 5, 3), (OTHER_V6, 4, 2)] {
        assert_eq!(
            [
                seen(Upstream::Direct2, dst),
                seen(Upstream::Direct, dst),
                seen(Upstream::Tunnel, dst),
            ],
            [by_second, by_first, 0],
            "{dst}: arrivals in direct2, direct, tunnel"
        );
    }
}
