//! `cargo xtask demo`: a branch router in four throwaway network namespaces (see
//! `tests::router`), xdp-breakout on its LAN side with the embedded feed, a little Teams,
//! Exchange and other traffic from a client, where each packet came out, and what an operator
//! sees. Everything is removed at the end, also on failure; no host interface is touched.

use std::{process::ExitCode, thread, time::Duration};

use tests::router::{
    Arrivals, EXCHANGE_V4, EXCHANGE_V6, OTHER_V4, OTHER_V6, Options, Router, TEAMS_V4, TEAMS_V6,
    Upstream, arrived, fast_health,
};

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
    // The feed server answers nothing: the agent classifies with its embedded snapshot. It
    // checks the direct uplink with a TCP probe every 200 ms.
    let health = fast_health(&format!("tcp://{TEAMS_V4}:443"));
    let mut args: Vec<&str> = health.iter().map(String::as_str).collect();
    args.extend(["--health-interface", "wan0"]);
    router.start_daemon(&args);
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

    show_failover(&router, &arrivals);

    println!("\n== removing the namespaces and pins");
    drop(router);
    ExitCode::SUCCESS
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
