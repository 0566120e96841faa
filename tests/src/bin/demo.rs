//! `cargo xtask demo`: a branch router in five throwaway network namespaces (see
//! `tests::router`), xdp-breakout on its LAN side with the embedded feed and two direct
//! uplinks, a little Teams, Exchange and other traffic from a client, where each packet came
//! out, a Microsoft name resolved through the direct uplink and learned, the first uplink
//! degrading and where new calls then go, and what an operator sees. Everything is removed at
//! the end, also on failure; no host interface is touched.

use std::{process::ExitCode, thread, time::Duration};

use tests::{
    dns::{Dnsmasq, Resolver},
    quality::{Emulation, PROBE_V4, Responder},
    router::{
        Arrivals, EXCHANGE_V4, EXCHANGE_V6, EXTRA_A, EXTRA_B, OTHER_V4, OTHER_V6, Options, Router,
        TEAMS_V4, TEAMS_V6, Upstream, arrived,
        dns::{DIRECT_RESOLVER, LAN_RESOLVER, Side, TUNNEL_RESOLVER},
    },
};

/// A name of set 12 (`*.teams.microsoft.com`, Allow: direct by the default policy) that the
/// feed gives no address: the resolver on each side answers it with its own.
const ZONE: &str = "teams.microsoft.com";
const DIRECT_ANSWER: &str = EXTRA_A;
const TUNNEL_ANSWER: &str = EXTRA_B;

/// The resolvers: dnsmasq on the router for the LAN (its default upstream behind the tunnel,
/// the agent's forward zones in a servers file), one through the direct uplink, one behind the
/// tunnel.
struct Resolvers {
    lan: Resolver,
    direct: Resolver,
    _tunnel: Resolver,
}

fn start_resolvers(router: &Router) -> std::io::Result<Resolvers> {
    let servers = router.work_file("servers.conf");
    std::fs::write(&servers, "")?;
    let tunnel = router.start_resolver(
        Side::Tunnel,
        "tunnel-dns",
        &Dnsmasq::new(TUNNEL_RESOLVER)
            .local_ttl(1)
            .address(ZONE, TUNNEL_ANSWER),
    )?;
    let direct = router.start_resolver(
        Side::Direct,
        "direct-dns",
        &Dnsmasq::new(DIRECT_RESOLVER)
            .local_ttl(1)
            .address(ZONE, DIRECT_ANSWER),
    )?;
    let lan = router.start_resolver(
        Side::Router,
        "lan-dns",
        &Dnsmasq::new(LAN_RESOLVER)
            .server(TUNNEL_RESOLVER)
            .servers_file(&servers)
            .arg("--no-negcache"),
    )?;
    Ok(Resolvers {
        lan,
        direct,
        _tunnel: tunnel,
    })
}

/// The topology, as the demo builds it.
fn describe(router: &Router) {
    println!("== a branch router in network namespaces");
    println!(
        "   client 10.0.1.2 -- lan0 [router: xdp-breakout] wan0 -- direct uplink isp-a (masquerade)"
    );
    println!(
        "                                                 wan1 -- direct uplink isp-b (masquerade)"
    );
    println!(
        "                                                 {} -- WireGuard tunnel (default route)",
        router.tun
    );
    println!("   ip rule fwmark 0x365/0xffff lookup 365; table 365: default via isp-a");
    println!("   ip rule fwmark 0x366/0xffff lookup 366; table 366: default via isp-b");
    println!(
        "   dnsmasq on the router ({LAN_RESOLVER}) for the LAN, forwarding to {TUNNEL_RESOLVER} \
         behind the tunnel;\n   a resolver through the direct uplink at {DIRECT_RESOLVER}"
    );
}

fn main() -> ExitCode {
    let options = Options {
        second_direct: true,
        ..Options::default()
    };
    let mut router = match Router::new("demo", options) {
        Ok(router) => router,
        Err(error) => {
            eprintln!("demo: building the namespaces failed (run as root): {error}");
            return ExitCode::FAILURE;
        }
    };
    describe(&router);
    let resolvers = match start_resolvers(&router) {
        Ok(resolvers) => resolvers,
        Err(error) => {
            eprintln!("demo: starting dnsmasq failed (cargo xtask setup installs it): {error}");
            return ExitCode::FAILURE;
        }
    };
    let Some((isp_a, _isp_b)) = start_responders(&router) else {
        eprintln!("demo: starting the probe responders failed");
        return ExitCode::FAILURE;
    };
    if let Err(error) = start_agent(&mut router, &resolvers) {
        eprintln!("demo: starting the agent: {error}");
        return ExitCode::FAILURE;
    }
    router.wait_log("attached to lan0");
    println!("\n== xdp-breakout run --iface lan0  (log)");
    thread::sleep(Duration::from_millis(300));
    for line in router.daemon_log().lines() {
        println!("   {}", line.trim());
    }

    let arrivals = Arrivals::default();
    router.listen_udp(3478, &arrivals);
    router.listen_tcp(443, &arrivals);
    router.listen_tcp(587, &arrivals);
    println!("\n== traffic from the client, and where it came out");
    let udp = [
        ("Teams media", TEAMS_V4),
        ("Teams media", TEAMS_V6),
        ("a non-Microsoft service", OTHER_V4),
    ];
    for (_, addr) in udp {
        router.send_udp(addr, 3478, 5, Duration::from_millis(2));
    }
    let tcp = [
        ("Exchange", EXCHANGE_V4, 443),
        ("Exchange", EXCHANGE_V6, 443),
        ("Exchange submission (Allow)", EXCHANGE_V4, 587),
        ("a non-Microsoft site", OTHER_V6, 443),
    ];
    for (_, addr, port) in tcp {
        let _ = router.connect_tcp(addr, port);
    }
    thread::sleep(Duration::from_millis(300));
    let path = |addr: &str, port: u16| {
        let direct = arrived(&arrivals, Upstream::Direct, addr, port);
        let tunnel = arrived(&arrivals, Upstream::Tunnel, addr, port);
        format!("{direct} via the direct uplink, {tunnel} via the tunnel")
    };
    for (what, addr) in udp {
        println!("   {what:<28} UDP {addr}:3478  ->  {}", path(addr, 3478));
    }
    for (what, addr, port) in tcp {
        println!(
            "   {what:<28} TCP {addr}:{port}  ->  {} (connections)",
            path(addr, port)
        );
    }

    for args in [
        &["status"][..],
        &["stats"],
        &["lookup", EXCHANGE_V4, "--proto", "tcp", "--port", "587"],
    ] {
        println!("\n== xdp-breakout {}", args.join(" "));
        let output = router.cli(args);
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
    println!("\n== xdp-breakout flows  (the first lines)");
    let output = router.cli(&["flows"]);
    for line in String::from_utf8_lossy(&output.stdout).lines().take(6) {
        println!("{line}");
    }

    show_local_dns(&router, &resolvers, &arrivals);
    show_degradation(&router, &isp_a, &arrivals);
    show_failover(&router, &arrivals);

    println!("\n== removing the namespaces and pins");
    drop(router);
    ExitCode::SUCCESS
}

/// A probe responder in each direct upstream; isp-b's 8 ms slower, so that `best` sends
/// Teams to isp-a while it meets its SLA.
fn start_responders(router: &Router) -> Option<(Responder, Responder)> {
    let probe = PROBE_V4.parse().expect("literal");
    let isp_a = Responder::start(&router.direct, probe, 8080).ok()?;
    let isp_b = Responder::start(router.direct2.as_ref()?, probe, 8080).ok()?;
    isp_b.set(Emulation {
        delay: Duration::from_millis(8),
        ..Emulation::default()
    });
    Some((isp_a, isp_b))
}

/// Starts the agent on the router with two direct uplinks, each probed through its own mark
/// (an ICMP echo and an HTTP GET of a responder in its upstream every 200 ms). Learning is on
/// by default and trusts the router's own resolver; the agent keeps the resolver's forward
/// zones for Microsoft's direct names, pointed at the direct side. The feed server answers
/// nothing: the agent classifies with its embedded snapshot.
fn start_agent(router: &mut Router, resolvers: &Resolvers) -> std::io::Result<()> {
    let config = router.work_file("config.toml");
    let targets = format!("[\"icmp://{PROBE_V4}\", \"http://{PROBE_V4}:8080/\"]");
    std::fs::write(
        &config,
        format!(
            "[[uplinks]]\nname = \"isp-a\"\ninterface = \"wan0\"\ntable = 365\n\
             targets = {targets}\nnat-address = [\"192.0.2.10\"]\n\n\
             [[uplinks]]\nname = \"isp-b\"\ninterface = \"wan1\"\nmark = \"0x366\"\n\
             table = 366\ntargets = {targets}\nnat-address = [\"198.51.100.20\"]\n\n\
             [steering]\ndwell = \"2s\"\n\n\
             [dns]\nlocal-resolvers = [\"{DIRECT_RESOLVER}\"]\nlocal-config = \"{}\"\n\
             local-reload = [\"kill\", \"-HUP\", \"{}\"]\n",
            router.work_file("servers.conf").display(),
            resolvers.lan.pid().unwrap_or_default()
        ),
    )?;
    let config = config.display().to_string();
    router.start_daemon(&[
        "--config",
        &config,
        "--health-interval",
        "200ms",
        "--health-timeout",
        "150ms",
        "--health-fail-after",
        "3",
        "--health-recover-after",
        "3",
        "--health-window",
        "20",
    ]);
    Ok(())
}

/// isp-a starts losing 3% of its packets: degraded against Teams' 0.1%, new Teams calls take
/// isp-b, and a call already on isp-a stays there.
fn show_degradation(router: &Router, isp_a: &Responder, arrivals: &Arrivals) {
    let status_lines = |prefixes: &[&str]| {
        let output = router.cli(&["status"]);
        for line in String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| prefixes.iter().any(|prefix| line.starts_with(prefix)))
        {
            println!("{line}");
        }
    };
    println!("\n== two direct uplinks, graded against Teams' targets");
    status_lines(&["uplink", "quality", "grade", "steering"]);
    let call = router.start_call(TEAMS_V4, 3478);
    thread::sleep(Duration::from_millis(300));
    println!("\n== isp-a starts losing 3% of its packets (a call is on it)");
    isp_a.set(Emulation {
        loss: 0.03,
        ..Emulation::default()
    });
    router.wait_log("uplink isp-a degraded");
    for line in router
        .daemon_log()
        .lines()
        .filter(|line| line.contains("degraded"))
    {
        println!("   {}", line.trim());
    }
    status_lines(&["grade isp-a", "steering"]);
    let before =
        [Upstream::Direct, Upstream::Direct2].map(|path| arrived(arrivals, path, TEAMS_V6, 3478));
    router.send_udp(TEAMS_V6, 3478, 5, Duration::from_millis(2));
    thread::sleep(Duration::from_millis(300));
    let after =
        [Upstream::Direct, Upstream::Direct2].map(|path| arrived(arrivals, path, TEAMS_V6, 3478));
    println!(
        "   a new Teams call, UDP [{TEAMS_V6}]:3478  ->  {} via isp-a, {} via isp-b",
        after[0] - before[0],
        after[1] - before[1]
    );
    let on_a = arrived(arrivals, Upstream::Direct, TEAMS_V4, 3478);
    thread::sleep(Duration::from_millis(300));
    println!(
        "   the call already on isp-a: {} more datagrams via isp-a, {} via isp-b",
        arrived(arrivals, Upstream::Direct, TEAMS_V4, 3478) - on_a,
        arrived(arrivals, Upstream::Direct2, TEAMS_V4, 3478)
    );
    drop(call);
    println!("\n== xdp-breakout flows  (Teams media)");
    let output = router.cli(&["flows"]);
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("SOURCE") || line.contains(":3478 "))
        .take(5)
    {
        println!("{line}");
    }
    println!("\n== xdp-breakout egress  (for Entra ID named locations)");
    print!(
        "{}",
        String::from_utf8_lossy(
            &router
                .cli(&[
                    "egress",
                    "--config",
                    &router.work_file("config.toml").display().to_string()
                ])
                .stdout
        )
    );
    isp_a.set(Emulation::default());
}

/// A Microsoft name the feed gives no address: resolved by the router's resolver through the
/// direct uplink, learned from the answer the client got, and its connection direct.
fn show_local_dns(router: &Router, resolvers: &Resolvers, arrivals: &Arrivals) {
    let servers = router.work_file("servers.conf");
    println!(
        "\n== the resolver's forward zones, as the agent wrote them ({})",
        servers.display()
    );
    for _ in 0..50 {
        if std::fs::read_to_string(&servers).is_ok_and(|text| text.contains(ZONE)) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&servers).unwrap_or_default();
    for line in text.lines().filter(|line| line.starts_with('#')).take(4) {
        println!("   {line}");
    }
    let zones = text
        .lines()
        .filter(|line| line.starts_with("server="))
        .count();
    for line in text
        .lines()
        .filter(|line| line.contains(&format!("/{ZONE}/")))
    {
        println!("   {line}   (one of {zones} zones)");
    }
    let name = format!("demo.{ZONE}");
    println!("\n== the client resolves {name} with the router's resolver");
    let mut answer = String::new();
    for _ in 0..20 {
        answer = router.dig(LAN_RESOLVER, &name);
        if answer.contains(DIRECT_ANSWER) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("   dig @{LAN_RESOLVER} {name}  ->  {}", answer.trim());
    println!(
        "   asked of the direct side's resolver: {}",
        if resolvers.direct.asked(&name, None) {
            "yes, through the direct uplink"
        } else {
            "no"
        }
    );
    for _ in 0..50 {
        if String::from_utf8_lossy(&router.cli(&["learned"]).stdout).contains(DIRECT_ANSWER) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!("\n== xdp-breakout learned");
    print!(
        "{}",
        String::from_utf8_lossy(&router.cli(&["learned"]).stdout)
    );
    let _ = router.connect_tcp(DIRECT_ANSWER, 443);
    thread::sleep(Duration::from_millis(300));
    println!(
        "   TCP {DIRECT_ANSWER}:443  ->  {} via the direct uplink, {} via the tunnel (connections)",
        arrived(arrivals, Upstream::Direct, DIRECT_ANSWER, 443),
        arrived(arrivals, Upstream::Tunnel, DIRECT_ANSWER, 443)
    );
}

/// Black-holes the direct uplink, shows the failover, and lifts the black hole.
fn show_failover(router: &Router, arrivals: &Arrivals) {
    println!("\n== both direct uplinks die (their upstreams drop everything; the links stay up)");
    let blackhole = |args: &[&str]| {
        for upstream in [Some(&router.direct), router.direct2.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = upstream.command("nft").args(args).output();
        }
    };
    blackhole(&["add", "table", "inet", "blackhole"]);
    blackhole(&[
        "add",
        "chain",
        "inet",
        "blackhole",
        "input",
        "{ type filter hook input priority 0; policy drop; }",
    ]);
    router.wait_log("new direct verdicts go to the tunnel");
    for line in router
        .daemon_log()
        .lines()
        .filter(|line| line.contains(" -> down"))
    {
        println!("   {}", line.trim());
    }
    let before = arrived(arrivals, Upstream::Tunnel, TEAMS_V4, 3478);
    router.send_udp(TEAMS_V4, 3478, 5, Duration::from_millis(2));
    thread::sleep(Duration::from_millis(300));
    println!(
        "   Teams media UDP {TEAMS_V4}:3478 now  ->  {} via the tunnel",
        arrived(arrivals, Upstream::Tunnel, TEAMS_V4, 3478) - before
    );
    // The forward zones leave the resolver: Microsoft's names resolve behind the tunnel
    // again, where their traffic now goes.
    let servers = router.work_file("servers.conf");
    let name = format!("failover.{ZONE}");
    let mut answer = String::new();
    for _ in 0..20 {
        answer = router.dig(LAN_RESOLVER, &name);
        if answer.contains(TUNNEL_ANSWER) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!(
        "   the resolver's forward zones: {} left; dig @{LAN_RESOLVER} {name}  ->  {} (the tunnel \
         side's)",
        std::fs::read_to_string(&servers)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("server="))
            .count(),
        answer.trim()
    );
    let output = router.cli(&["status"]);
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("uplink") || line.starts_with("probe"))
    {
        println!("{line}");
    }
    println!("\n== the direct uplinks recover");
    blackhole(&["delete", "table", "inet", "blackhole"]);
    router.wait_log("direct verdicts go direct again");
    let output = router.cli(&["status"]);
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("uplink"))
    {
        println!("{line}");
    }
}
