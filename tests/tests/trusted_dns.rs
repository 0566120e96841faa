//! Trusted DNS learning and local DNS on a real router (see `tests::router`): the client
//! asks the resolver on the router, which sends Microsoft 365 names to a resolver behind the
//! direct uplink and everything else through the tunnel; the agent learns only the answers to
//! the queries it saw, from the resolvers it trusts; forged and replayed answers are counted by
//! why and learned never.
//!
//! ```text
//!  client 10.0.1.2 --- lan0 [router: dnsmasq 10.0.1.1, servers.conf from the agent]
//!                          wan0 --- direct: 44.30.0.53  *.svc.ms -> 44.10.0.1 (EXTRA_A)
//!                          tunnel - tunnel: 44.20.0.1   *.svc.ms -> 44.20.0.1 (EXTRA_B),
//!                                                       intranet.corp.example, one name per
//!                                                       case of the forgery test
//!  neighbour 10.0.4.2 --- lan1
//! ```
//!
//! The contract these tests hold the agent to (the features' side):
//! - `[dns]` keys `learn`, `resolvers` (unset: the router's LAN addresses), `local-resolvers`,
//!   `local-config` (a dnsmasq servers file the agent writes: `server=/ZONE/ADDRESS` lines for
//!   the Microsoft zones), `local-format = "dnsmasq"`, `local-reload` (a command, run after
//!   each write); the agent makes `local-resolvers` reachable through the direct uplink, and
//!   while the uplink is down, the zones go to the default (tunnel-side) resolver again.
//! - `stats --json`: `counters.<NAME>.packets` for `dns_query`, `dns_unsolicited`,
//!   `dns_replay`, `dns_question_mismatch`, `dns_untrusted_resolver`.
//! - `learned --json`: `addresses[]` rows `{address, name, set}`, and
//!   `counts.refused.<REASON>` for `unsolicited`, `replay`, `question_mismatch`,
//!   `untrusted_resolver` (also `late`, not provoked here).
//! - `status --json`: `uplink.state` (`up`, `down`).

use std::{
    collections::BTreeSet,
    net::{SocketAddr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    FEED_2026043000,
    dns::{self, DnsSocket, Dnsmasq, Resolver, forge_udp},
    in_both_modes,
    router::{
        Arrivals, DIRECT_RESOLVER, EXTRA_A, EXTRA_B, LAN_RESOLVER, Mode, OTHER_V4, Options, Router,
        Side, TEAMS_V4, TUNNEL_RESOLVER, Upstream, arrived, dns::addresses, fast_health, serve,
        settle,
    },
    unavailable,
};

/// The Microsoft zone both upstream resolvers answer: set 39's `*.svc.ms` (Default, TCP 80
/// and 443; URL-only), a wildcard, so every test asks a fresh name that no cache holds.
const ZONE: &str = "svc.ms";
const SET: u64 = 39;
/// The direct side's answer for the zone, and the tunnel side's.
const DIRECT_ANSWER: &str = EXTRA_A;
const TUNNEL_ANSWER: &str = EXTRA_B;
/// A name only the tunnel side knows.
const INTRANET: (&str, &str) = ("intranet.corp.example", OTHER_V4);
/// Names of the zone with an address of their own at the tunnel side: the real answers of the
/// forgery test, one per case, so each is told from the others in `learned`.
const REAL: [(&str, &str); 5] = [
    ("replay.svc.ms", "44.20.1.4"),
    ("other-id.svc.ms", "44.20.1.5"),
    ("other-question.svc.ms", "44.20.1.6"),
    ("untrusted.svc.ms", "44.20.1.7"),
    ("afterwards.svc.ms", "44.20.1.8"),
];

/// How long an answer waits for its client.
const ANSWER: Duration = Duration::from_secs(3);

/// The three resolvers: on the router's LAN address, behind the direct uplink, at the
/// tunnel's far end.
struct Resolvers {
    lan: Resolver,
    direct: Resolver,
    tunnel: Resolver,
}

/// Starts the three resolvers; `None` (skip) when dnsmasq is missing outside CI. The LAN
/// resolver forwards to the tunnel side and reads `servers.conf` of the work directory (made
/// empty here; the agent writes it), again on SIGHUP.
fn start_resolvers(router: &Router) -> Option<Resolvers> {
    let servers = router.work_file("servers.conf");
    dns::write_file(&servers, "").expect("servers.conf");
    let mut tunnel = Dnsmasq::new(TUNNEL_RESOLVER)
        .local_ttl(1)
        .address(ZONE, TUNNEL_ANSWER)
        .host_record(INTRANET.0, INTRANET.1);
    for (name, addr) in REAL {
        tunnel = tunnel.host_record(name, addr);
    }
    let direct = Dnsmasq::new(DIRECT_RESOLVER)
        .local_ttl(1)
        .address(ZONE, DIRECT_ANSWER);
    let lan = Dnsmasq::new(LAN_RESOLVER)
        .server(TUNNEL_RESOLVER)
        .servers_file(&servers)
        .arg("--no-negcache");
    let start = |side, name, config: &Dnsmasq| match router.start_resolver(side, name, config) {
        Ok(resolver) => Some(resolver),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let _ = unavailable("dnsmasq (cargo xtask setup installs dnsmasq-base)", &error);
            None
        }
        Err(error) => panic!("dnsmasq {name}: {error}"),
    };
    Some(Resolvers {
        tunnel: start(Side::Tunnel, "tunnel-dns", &tunnel)?,
        direct: start(Side::Direct, "direct-dns", &direct)?,
        lan: start(Side::Router, "lan-dns", &lan)?,
    })
}

fn sock(addr: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr.parse().expect("IPv4 literal"), port)
}

fn at53(addr: &str) -> SocketAddr {
    SocketAddr::V4(sock(addr, 53))
}

/// The harness alone, no agent: each resolver answers what it should where it should, the
/// direct one only through the direct uplink, the LAN one re-reads its servers file on SIGHUP,
/// and forged datagrams from the tunnel side, the LAN neighbour and the router reach the
/// client with the source they claim.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one check per harness piece, in order"
)]
fn the_harness_resolvers_and_forgers_work() {
    let Some(mut router) = Router::for_test("hdns", Options::default()) else {
        return;
    };
    router.add_lan_neighbour().expect("a LAN neighbour");
    let Some(resolvers) = start_resolvers(&router) else {
        return;
    };

    // The LAN resolver forwards through the tunnel (from the router's tunnel address).
    assert_eq!(
        addresses(&router.dig(LAN_RESOLVER, INTRANET.0)),
        [tests::ip(INTRANET.1)]
    );
    assert!(
        resolvers.tunnel.asked(INTRANET.0, Some("10.9.0.1")),
        "{}",
        resolvers.tunnel.log()
    );
    assert_eq!(
        addresses(&router.dig(LAN_RESOLVER, "h1.svc.ms")),
        [tests::ip(TUNNEL_ANSWER)],
        "no servers file yet: the zone through the tunnel"
    );
    // A host record wins over the zone's address.
    assert_eq!(
        addresses(&router.dig(TUNNEL_RESOLVER, REAL[0].0)),
        [tests::ip(REAL[0].1)]
    );

    // The direct resolver: not through the main table (the tunnel), only by table 365.
    let on_router = DnsSocket::bind(&router.router, "0.0.0.0").expect("socket on the router");
    let unreachable = on_router.ask(
        at53(DIRECT_RESOLVER),
        1,
        "h2.svc.ms",
        Duration::from_secs(1),
    );
    assert!(unreachable.is_err(), "{unreachable:?}");
    let rule = [
        "rule",
        "add",
        "to",
        DIRECT_RESOLVER,
        "lookup",
        "365",
        "priority",
        "999",
    ];
    router.router.ip(&rule).expect("ip rule");
    let answer = on_router
        .ask(at53(DIRECT_RESOLVER), 2, "h3.svc.ms", ANSWER)
        .expect("the direct resolver by table 365");
    assert_eq!(
        dns::read(&answer).unwrap().addresses,
        [tests::ip(DIRECT_ANSWER)]
    );
    assert!(
        resolvers.direct.asked("h3.svc.ms", Some("10.0.2.1")),
        "{}",
        resolvers.direct.log()
    );
    // The servers file, re-read on SIGHUP, sends the zone to the direct resolver.
    dns::write_file(
        &router.work_file("servers.conf"),
        &format!("server=/{ZONE}/{DIRECT_RESOLVER}\n"),
    )
    .unwrap();
    resolvers.lan.signal(libc::SIGHUP);
    tests::daemon::wait_for(
        "the LAN resolver sending the zone to the direct side",
        || addresses(&router.dig(LAN_RESOLVER, "h4.svc.ms")) == [tests::ip(DIRECT_ANSWER)],
        || resolvers.lan.log(),
    );
    router
        .router
        .ip(&{
            let mut delete = rule;
            delete[1] = "del";
            delete
        })
        .expect("ip rule del");
    // Back as the agent would find it: an empty servers file, the zone through the tunnel.
    dns::write_file(&router.work_file("servers.conf"), "").unwrap();
    resolvers.lan.signal(libc::SIGHUP);
    tests::daemon::wait_for(
        "the LAN resolver sending the zone to the tunnel side again",
        || addresses(&router.dig(LAN_RESOLVER, "h5.svc.ms")) == [tests::ip(TUNNEL_ANSWER)],
        || resolvers.lan.log(),
    );

    // Forgeries reach the client, claiming their source, from each place.
    let client = DnsSocket::bind(&router.client, "10.0.1.2").unwrap();
    let to_client = sock("10.0.1.2", client.port());
    for (from, netns, src) in [
        ("the tunnel side", &router.tunnel, sock(TUNNEL_RESOLVER, 53)),
        (
            "the LAN neighbour",
            router.neighbour(),
            sock(TUNNEL_RESOLVER, 53),
        ),
        ("the router", &router.router, sock(LAN_RESOLVER, 53)),
    ] {
        let forged = dns::answer(77, "forged.svc.ms", &["44.10.0.99"], 300);
        forge_udp(netns, src, to_client, &forged).expect("forge");
        let (got, source) = client
            .recv(ANSWER)
            .unwrap_or_else(|error| panic!("nothing from {from}: {error}"));
        assert_eq!((got, source), (forged, SocketAddr::V4(src)), "from {from}");
    }

    // A replay: the same bytes, ports and id as a real answer.
    let real = client
        .ask(at53(LAN_RESOLVER), 4242, REAL[0].0, ANSWER)
        .expect("a real answer");
    forge_udp(&router.router, sock(LAN_RESOLVER, 53), to_client, &real).unwrap();
    assert_eq!(client.recv(ANSWER).unwrap(), (real, at53(LAN_RESOLVER)));

    // A paused resolver answers only when continued: a forgery comes first.
    let paused = resolvers.lan.pause();
    client
        .send(at53(LAN_RESOLVER), &dns::query(4343, REAL[1].0))
        .unwrap();
    assert!(client.recv(Duration::from_millis(300)).is_err(), "paused");
    let forged = dns::answer(4344, REAL[1].0, &["44.10.0.98"], 300);
    forge_udp(&router.router, sock(LAN_RESOLVER, 53), to_client, &forged).unwrap();
    assert_eq!(client.recv(ANSWER).unwrap().0, forged);
    drop(paused);
    let (real, _) = client.recv(ANSWER).expect("the real answer once continued");
    let real = dns::read(&real).unwrap();
    assert_eq!(
        (real.id, real.addresses),
        (4343, vec![tests::ip(REAL[1].1)])
    );
}

/// What `learned --json` lists: the addresses.
fn learned_addresses(learned: &Value) -> BTreeSet<String> {
    learned["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row["address"].as_str().map(str::to_owned))
        .collect()
}

/// The learned row of `address`, if any.
fn learned_row(router: &Router, address: &str) -> Option<Value> {
    router.json(&["learned"])["addresses"]
        .as_array()?
        .iter()
        .find(|row| row["address"] == address)
        .cloned()
}

/// Waits until `address` is learned; returns its row.
fn wait_learned(router: &Router, address: &str, why: &str) -> Value {
    tests::daemon::wait_for(
        &format!("{address} learned ({why})"),
        || learned_row(router, address).is_some(),
        || format!("{}\n{}", router.json(&["learned"]), router.daemon_log()),
    );
    learned_row(router, address).expect("just seen")
}

/// `stats --json` `counters.NAME.packets`.
fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name]["packets"].as_u64().unwrap_or(0)
}

/// `learned --json` `counts.refused.REASON`.
fn refused(learned: &Value, reason: &str) -> u64 {
    learned["counts"]["refused"][reason].as_u64().unwrap_or(0)
}

/// The counters and what was learned, before a case.
struct Before {
    stats: Value,
    learned: Value,
}

impl Before {
    fn take(router: &Router) -> Self {
        Self {
            stats: router.json(&["stats"]),
            learned: router.json(&["learned"]),
        }
    }

    /// The answer of a case was refused: the stats counter `counter` and `learned`'s
    /// `counts.refused.reason` grew (the agent writes its counts within seconds), and nothing
    /// was learned since, least of all `forged` (the address the refused answer carries, when
    /// it is not one learned before: a replay's is).
    fn refused(
        &self,
        router: &Router,
        case: &str,
        counter_name: &str,
        reason: &str,
        forged: Option<&str>,
    ) {
        let was = counter(&self.stats, counter_name);
        tests::daemon::wait_for(
            &format!("{case}: stats counter {counter_name} above {was}"),
            || counter(&router.json(&["stats"]), counter_name) > was,
            || format!("{}\n{}", router.json(&["stats"]), router.daemon_log()),
        );
        let was = refused(&self.learned, reason);
        tests::daemon::wait_for(
            &format!("{case}: learned counts.refused.{reason} above {was}"),
            || refused(&router.json(&["learned"]), reason) > was,
            || format!("{}\n{}", router.json(&["learned"]), router.daemon_log()),
        );
        let now = router.json(&["learned"]);
        let (before, after) = (learned_addresses(&self.learned), learned_addresses(&now));
        if let Some(forged) = forged {
            assert!(
                !after.contains(forged),
                "{case}: {forged} was learned: {now}"
            );
        }
        assert!(
            after.is_subset(&before),
            "{case}: learned something new: {:?}; {now}",
            after.difference(&before).collect::<Vec<_>>()
        );
    }
}

/// The daemon's configuration in the work directory, with `dns` the `[dns]` table's lines.
fn config(router: &Router, dns: &str) -> String {
    let path = router.work_file("config.toml");
    std::fs::write(
        &path,
        format!("[policy]\ndirect = [\"Optimize\", \"Allow\", \"Default\"]\n[dns]\n{dns}"),
    )
    .unwrap();
    path.to_str().expect("UTF-8 path").to_owned()
}

/// Local resolution and trust together. The agent writes the LAN resolver's servers file so
/// that Microsoft 365 names are asked of the direct side's resolver, through the direct
/// uplink, and everything else of the tunnel side's; the client's answer from the router's
/// resolver (trusted by default) is learned and its next connection leaves direct. When the
/// direct uplink dies, the zone is asked through the tunnel again, and learning follows.
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn local_resolution_and_trust_work_together(mode: Mode) {
    let Some(mut router) = Router::for_test(
        "ldns",
        Options {
            mode,
            ..Options::default()
        },
    ) else {
        return;
    };
    serve(&router, "2026043000", FEED_2026043000);
    let Some(resolvers) = start_resolvers(&router) else {
        return;
    };
    let arrivals = Arrivals::default();
    // The health probe's target, and the connections' (both upstreams own every address).
    router.listen_tcp(443, &arrivals);
    let servers = router.work_file("servers.conf");
    let lan_pid = resolvers.lan.pid().expect("the LAN resolver's pid");
    let config = config(
        &router,
        &format!(
            "learn = true\n\
             local-resolvers = [\"{DIRECT_RESOLVER}\"]\n\
             local-config = \"{}\"\n\
             local-format = \"dnsmasq\"\n\
             local-reload = [\"kill\", \"-HUP\", \"{lan_pid}\"]\n",
            servers.display()
        ),
    );
    let health = fast_health(&format!("tcp://{TEAMS_V4}:443"));
    let mut args = vec!["--config", &config, "--health-interface", "wan0"];
    args.extend(health.iter().map(String::as_str));
    router.start_daemon(&args);
    router.wait_version("2026043000");

    // 1. The agent wrote the servers file: the zone to the direct side's resolver.
    tests::daemon::wait_for(
        &format!("servers.conf sending {ZONE} to {DIRECT_RESOLVER}"),
        || {
            std::fs::read_to_string(&servers).is_ok_and(|text| {
                text.lines().any(|line| {
                    line.starts_with("server=/")
                        && line.contains(&format!("/{ZONE}/"))
                        && line.contains(DIRECT_RESOLVER)
                })
            })
        },
        || {
            format!(
                "servers.conf: {:?}\n{}",
                std::fs::read_to_string(&servers),
                router.daemon_log()
            )
        },
    );

    // 2. The client asks the router: Microsoft from the direct side, the intranet from the
    //    tunnel side. Retried a little: the agent's reload of the resolver may still be on
    //    its way when the file is there.
    let first = "first.svc.ms";
    let mut answer = String::new();
    let start = Instant::now();
    while addresses(&answer) != [tests::ip(DIRECT_ANSWER)]
        && start.elapsed() < Duration::from_secs(10)
    {
        answer = router.dig(LAN_RESOLVER, first);
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        addresses(&answer),
        [tests::ip(DIRECT_ANSWER)],
        "{first} from the direct side's resolver; direct log:\n{}\ntunnel log:\n{}\nLAN log:\n{}",
        resolvers.direct.log(),
        resolvers.tunnel.log(),
        resolvers.lan.log()
    );
    assert!(
        resolvers.direct.asked(first, Some("10.0.2.1")),
        "the direct side was asked {first}, from the router's wan0 address: {}",
        resolvers.direct.log()
    );
    assert_eq!(
        addresses(&router.dig(LAN_RESOLVER, INTRANET.0)),
        [tests::ip(INTRANET.1)],
        "the intranet from the tunnel side: {}",
        resolvers.tunnel.log()
    );
    assert!(
        !resolvers.direct.asked(INTRANET.0, None),
        "{}",
        resolvers.direct.log()
    );

    // 3. The answer the router's resolver gave is learned, and the next connection to it
    //    leaves direct (set 39 is Default, direct by this policy).
    let row = wait_learned(&router, DIRECT_ANSWER, "the direct side's answer");
    assert_eq!(
        (&row["name"], &row["set"]),
        (&Value::from(first), &Value::from(SET)),
        "{row}"
    );
    let before = arrived(&arrivals, Upstream::Direct, DIRECT_ANSWER, 443);
    assert!(router.connect_tcp(DIRECT_ANSWER, 443));
    // The total first: a guard taken in `settle`'s arguments would live through the call.
    let total = arrivals.lock().unwrap().values().sum::<u64>() + 1;
    settle(&arrivals, total);
    assert_eq!(
        arrived(&arrivals, Upstream::Direct, DIRECT_ANSWER, 443),
        before + 1,
        "{:?}",
        arrivals.lock().unwrap()
    );

    // 4. The direct uplink dies (a black hole: its link stays up, nothing comes back).
    let nft = |script: &str| {
        let output = router
            .direct
            .command("nft")
            .arg(script)
            .output()
            .expect("nft");
        assert!(
            output.status.success(),
            "nft {script}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    nft("add table inet blackhole");
    nft("add chain inet blackhole input { type filter hook input priority 0; policy drop; }");
    tests::daemon::wait_for(
        "the agent reporting the direct uplink down",
        || router.json(&["status"])["uplink"]["state"] == "down",
        || format!("{}\n{}", router.json(&["status"]), router.daemon_log()),
    );

    // 5. The zone resolves through the tunnel side again: a fresh name each try (no cache
    //    holds it), until the agent's rewrite and reload have reached the resolver.
    let mut n = 0;
    let mut name = String::new();
    tests::daemon::wait_for(
        &format!("a name of {ZONE} answered by the tunnel side"),
        || {
            n += 1;
            name = format!("failover-{n}.{ZONE}");
            addresses(&router.dig(LAN_RESOLVER, &name)) == [tests::ip(TUNNEL_ANSWER)]
        },
        || {
            format!(
                "servers.conf: {:?}\nLAN log:\n{}\n{}",
                std::fs::read_to_string(&servers),
                resolvers.lan.log(),
                router.daemon_log()
            )
        },
    );
    assert!(
        resolvers.tunnel.asked(&name, None),
        "{}",
        resolvers.tunnel.log()
    );

    // 6. Learning follows: the tunnel side's answer is learned, under its name.
    let row = wait_learned(&router, TUNNEL_ANSWER, "the tunnel side's answer");
    assert_eq!(
        (&row["name"], &row["set"]),
        (&Value::from(name.as_str()), &Value::from(SET)),
        "{row}"
    );
    let before = arrived(&arrivals, Upstream::Tunnel, TUNNEL_ANSWER, 443);
    assert!(router.connect_tcp(TUNNEL_ANSWER, 443));
    // The total first: a guard taken in `settle`'s arguments would live through the call.
    let total = arrivals.lock().unwrap().values().sum::<u64>() + 1;
    settle(&arrivals, total);
    assert_eq!(
        arrived(&arrivals, Upstream::Tunnel, TUNNEL_ANSWER, 443),
        before + 1,
        "the uplink is down: direct verdicts take the tunnel; {:?}",
        arrivals.lock().unwrap()
    );
}
in_both_modes!(local_resolution_and_trust_work_together);

/// Forged answers are not learned, and each is counted by why. Every forged answer names a
/// Microsoft 365 name (the zone) with an address of its own, which must never be learned:
/// (a) from the tunnel side, (b) from a LAN neighbour, (c) from the router's resolver address
/// with no query, (d) a replay of a real answer, (e) another DNS id before the real answer,
/// (f) another question with the real id, (g) a real answer from a resolver not trusted (the
/// tunnel side's, asked directly). The real answers of (e) and (f) that follow their forgeries
/// are still learned, and so is one asked afterwards.
#[expect(
    clippy::too_many_lines,
    reason = "one case after another, read top to bottom"
)]
fn forged_answers_are_not_learned_and_each_is_counted(mode: Mode) {
    let Some(mut router) = Router::for_test(
        "fdns",
        Options {
            mode,
            ..Options::default()
        },
    ) else {
        return;
    };
    serve(&router, "2026043000", FEED_2026043000);
    router.add_lan_neighbour().expect("a LAN neighbour");
    let Some(resolvers) = start_resolvers(&router) else {
        return;
    };
    // `resolvers` unset: the router's LAN address, its own resolver, is trusted.
    let config = config(&router, "learn = true\n");
    router.start_daemon(&["--config", &config]);
    router.wait_version("2026043000");
    let queries_at_start = counter(&router.json(&["stats"]), "dns_query");

    let client = || DnsSocket::bind(&router.client, "10.0.1.2").expect("a client socket");
    let to = |socket: &DnsSocket| sock("10.0.1.2", socket.port());
    // A forged datagram reaches the client: the router forwards it unchanged (the capture
    // never drops); if not, the forger or the topology is at fault, not the feature.
    let arrives = |socket: &DnsSocket, case: &str, bytes: &[u8]| {
        let (got, _) = socket.recv(ANSWER).unwrap_or_else(|error| {
            panic!("{case}: the forged answer never reached the client: {error}")
        });
        assert_eq!(got, bytes, "{case}: another datagram reached the client");
    };

    // (a) From the tunnel side, with the tunnel resolver's address: no query was sent.
    let case = "(a) from the tunnel side";
    let socket = client();
    let before = Before::take(&router);
    let forged = dns::answer(0x1111, "forged-a.svc.ms", &["44.10.0.11"], 300);
    forge_udp(
        &router.tunnel,
        sock(TUNNEL_RESOLVER, 53),
        to(&socket),
        &forged,
    )
    .unwrap();
    arrives(&socket, case, &forged);
    before.refused(
        &router,
        case,
        "dns_unsolicited",
        "unsolicited",
        Some("44.10.0.11"),
    );

    // (b) From a LAN neighbour, forwarded out of lan0 (the router drops a source of its own,
    //     so it claims the tunnel resolver's).
    let case = "(b) from a LAN neighbour";
    let socket = client();
    let before = Before::take(&router);
    let forged = dns::answer(0x2222, "forged-b.svc.ms", &["44.10.0.12"], 300);
    forge_udp(
        router.neighbour(),
        sock(TUNNEL_RESOLVER, 53),
        to(&socket),
        &forged,
    )
    .unwrap();
    arrives(&socket, case, &forged);
    before.refused(
        &router,
        case,
        "dns_unsolicited",
        "unsolicited",
        Some("44.10.0.12"),
    );

    // (c) From the trusted resolver's own address, sent by the router, with no query.
    let case = "(c) from the resolver's address, no query";
    let socket = client();
    let before = Before::take(&router);
    let forged = dns::answer(0x3333, "forged-c.svc.ms", &["44.10.0.13"], 300);
    forge_udp(&router.router, sock(LAN_RESOLVER, 53), to(&socket), &forged).unwrap();
    arrives(&socket, case, &forged);
    before.refused(
        &router,
        case,
        "dns_unsolicited",
        "unsolicited",
        Some("44.10.0.13"),
    );

    // (d) A replay: a real answer (learned), then its very bytes again, same ports and id.
    let case = "(d) a replay";
    let (name, real) = REAL[0];
    let socket = client();
    let answer = socket
        .ask(at53(LAN_RESOLVER), 0x4444, name, ANSWER)
        .expect("the real answer");
    assert_eq!(dns::read(&answer).unwrap().addresses, [tests::ip(real)]);
    wait_learned(&router, real, "the real answer before its replay");
    let before = Before::take(&router);
    forge_udp(&router.router, sock(LAN_RESOLVER, 53), to(&socket), &answer).unwrap();
    arrives(&socket, case, &answer);
    before.refused(&router, case, "dns_replay", "replay", None);

    // (e) Another id: the client asked (the resolver paused, so the forgery comes first);
    //     an answer with the same ports and another id arrives. The kernel's key is client
    //     address and port, resolver and id: no such query, unsolicited.
    let case = "(e) another id";
    let (name, real) = REAL[1];
    let socket = client();
    let before = Before::take(&router);
    let paused = resolvers.lan.pause();
    socket
        .send(at53(LAN_RESOLVER), &dns::query(0x5555, name))
        .unwrap();
    let was = counter(&before.stats, "dns_query");
    tests::daemon::wait_for(
        &format!("{case}: the query recorded (dns_query above {was})"),
        || counter(&router.json(&["stats"]), "dns_query") > was,
        || router.json(&["stats"]).to_string(),
    );
    let forged = dns::answer(0x5556, name, &["44.10.0.15"], 300);
    forge_udp(&router.router, sock(LAN_RESOLVER, 53), to(&socket), &forged).unwrap();
    arrives(&socket, case, &forged);
    before.refused(
        &router,
        case,
        "dns_unsolicited",
        "unsolicited",
        Some("44.10.0.15"),
    );
    drop(paused);
    let (answer, _) = socket.recv(ANSWER).expect("the real answer once continued");
    assert_eq!(dns::read(&answer).unwrap().id, 0x5555);
    wait_learned(&router, real, "(e)'s real answer, after the forgery");

    // (f) Another question: same ports and id, another name of the zone.
    let case = "(f) another question";
    let (name, real) = REAL[2];
    let socket = client();
    let before = Before::take(&router);
    let paused = resolvers.lan.pause();
    socket
        .send(at53(LAN_RESOLVER), &dns::query(0x6666, name))
        .unwrap();
    let was = counter(&before.stats, "dns_query");
    tests::daemon::wait_for(
        &format!("{case}: the query recorded (dns_query above {was})"),
        || counter(&router.json(&["stats"]), "dns_query") > was,
        || router.json(&["stats"]).to_string(),
    );
    let forged = dns::answer(0x6666, "forged-f.svc.ms", &["44.10.0.16"], 300);
    forge_udp(&router.router, sock(LAN_RESOLVER, 53), to(&socket), &forged).unwrap();
    arrives(&socket, case, &forged);
    before.refused(
        &router,
        case,
        "dns_question_mismatch",
        "question_mismatch",
        Some("44.10.0.16"),
    );
    drop(paused);
    let (answer, _) = socket.recv(ANSWER).expect("the real answer once continued");
    assert_eq!(dns::read(&answer).unwrap().id, 0x6666);
    wait_learned(
        &router,
        real,
        "(f)'s real answer: a forged question does not use up the query",
    );

    // (g) A real answer from a resolver not trusted: the client asks the tunnel side directly.
    let case = "(g) an untrusted resolver";
    let (name, real) = REAL[3];
    let socket = client();
    let before = Before::take(&router);
    let answer = socket
        .ask(at53(TUNNEL_RESOLVER), 0x7777, name, ANSWER)
        .expect("the tunnel side's answer");
    assert_eq!(dns::read(&answer).unwrap().addresses, [tests::ip(real)]);
    before.refused(
        &router,
        case,
        "dns_untrusted_resolver",
        "untrusted_resolver",
        Some(real),
    );

    // Afterwards a real answer is learned still: no forgery locked learning.
    let (name, real) = REAL[4];
    assert_eq!(
        addresses(&router.dig(LAN_RESOLVER, name)),
        [tests::ip(real)]
    );
    let row = wait_learned(&router, real, "a real answer after every forgery");
    assert_eq!(
        (&row["name"], &row["set"]),
        (&Value::from(name), &Value::from(SET)),
        "{row}"
    );
    // Each query the client sent was recorded: (d), (e), (f), (g) and the last (dig may retry).
    let queries = counter(&router.json(&["stats"]), "dns_query") - queries_at_start;
    assert!(queries >= 5, "dns_query grew by {queries}");
    let learned = learned_addresses(&router.json(&["learned"]));
    for forged in [
        "44.10.0.11",
        "44.10.0.12",
        "44.10.0.13",
        "44.10.0.15",
        "44.10.0.16",
        REAL[3].1,
    ] {
        assert!(!learned.contains(forged), "{forged} learned: {learned:?}");
    }
}
in_both_modes!(forged_answers_are_not_learned_and_each_is_counted);
