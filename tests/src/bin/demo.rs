//! `cargo xtask demo`: a branch router in four throwaway network namespaces (see
//! `tests::router`), xdp-breakout on its LAN side with the embedded feed, a little Teams,
//! Exchange and other traffic from a client, where each packet came out, a Microsoft name
//! resolved through the direct uplink and learned, and what an operator sees. Everything is
//! removed at the end, also on failure; no host interface is touched.

use std::{process::ExitCode, thread, time::Duration};

use tests::{
    dns::{Dnsmasq, Resolver},
    router::{
        Arrivals, EXCHANGE_V4, EXCHANGE_V6, EXTRA_A, EXTRA_B, OTHER_V4, OTHER_V6, Options, Router,
        TEAMS_V4, TEAMS_V6, Upstream, arrived,
        dns::{DIRECT_RESOLVER, LAN_RESOLVER, Side, TUNNEL_RESOLVER},
        fast_health,
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

fn main() -> ExitCode {
    let mut router = match Router::new("demo", Options::default()) {
        Ok(router) => router,
        Err(error) => {
            eprintln!("demo: building the namespaces failed (run as root): {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("== a branch router in network namespaces");
    println!(
        "   client 10.0.1.2 -- lan0 [router: xdp-breakout] wan0 -- direct uplink (masquerade)"
    );
    println!(
        "                                                 {} -- WireGuard tunnel (default route)",
        router.tun
    );
    println!("   ip rule fwmark 0x365/0xffff lookup 365; table 365: default via the direct uplink");
    println!(
        "   dnsmasq on the router ({LAN_RESOLVER}) for the LAN, forwarding to {TUNNEL_RESOLVER} \
         behind the tunnel;\n   a resolver through the direct uplink at {DIRECT_RESOLVER}"
    );
    let resolvers = match start_resolvers(&router) {
        Ok(resolvers) => resolvers,
        Err(error) => {
            eprintln!("demo: starting dnsmasq failed (cargo xtask setup installs it): {error}");
            return ExitCode::FAILURE;
        }
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
    show_failover(&router, &arrivals);

    println!("\n== removing the namespaces and pins");
    drop(router);
    ExitCode::SUCCESS
}

/// Starts the agent on the router. Learning is on by default and trusts the router's own
/// resolver; the agent keeps the resolver's forward zones for Microsoft's direct names,
/// pointed at the direct side. The feed server answers nothing: the agent classifies with its
/// embedded snapshot. It checks the direct uplink with a TCP probe every 200 ms.
fn start_agent(router: &mut Router, resolvers: &Resolvers) -> std::io::Result<()> {
    let config = router.work_file("config.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nlocal-resolvers = [\"{DIRECT_RESOLVER}\"]\nlocal-config = \"{}\"\n\
             local-reload = [\"kill\", \"-HUP\", \"{}\"]\n",
            router.work_file("servers.conf").display(),
            resolvers.lan.pid().unwrap_or_default()
        ),
    )?;
    let health = fast_health(&format!("tcp://{TEAMS_V4}:443"));
    let mut args: Vec<&str> = health.iter().map(String::as_str).collect();
    let config = config.display().to_string();
    args.extend(["--health-interface", "wan0", "--config", &config]);
    router.start_daemon(&args);
    Ok(())
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
    println!("\n== the direct uplink dies (its upstream drops everything; the link stays up)");
    let blackhole = |args: &[&str]| {
        let _ = router.direct.command("nft").args(args).output();
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
    router.wait_log("direct uplink up -> down");
    for line in router
        .daemon_log()
        .lines()
        .filter(|line| line.contains("direct uplink"))
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
    println!("\n== the direct uplink recovers");
    blackhole(&["delete", "table", "inet", "blackhole"]);
    router.wait_log("direct uplink down -> up");
    let output = router.cli(&["status"]);
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("uplink"))
    {
        println!("{line}");
    }
}
