//! A client and a router in two throwaway network namespaces, joined by a veth pair;
//! xdp-breakout on the router's LAN side, a little Teams, Exchange and other traffic from the
//! client, and the counters as an operator sees them. Everything is removed at the end, also
//! on failure; the host's interfaces are never touched.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{cargo, run_command};

const CLIENT_MAC: &str = "02:00:00:00:99:02";
const ROUTER_MAC: &str = "02:00:00:00:99:01";

struct Namespace(String);

impl Namespace {
    fn new(name: String) -> anyhow::Result<Self> {
        run_command(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self(name))
    }

    fn ip(&self, args: &str) -> anyhow::Result<()> {
        run_command(
            Command::new("ip")
                .args(["-n", &self.0])
                .args(args.split_whitespace()),
        )
    }

    /// A command in the namespace's network stack only: it keeps the host's /sys/fs/bpf.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.0))
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run() -> anyhow::Result<()> {
    run_command(cargo().args(["build", "--quiet", "--package", "classifier-user", "--bins"]))?;
    let bin = std::env::current_dir()?.join("target/debug/xdp-breakout");
    let bin = bin.to_str().context("non-UTF-8 path")?;
    let id = std::process::id();
    let client = Namespace::new(format!("xb-demo-client-{id}"))?;
    let router = Namespace::new(format!("xb-demo-router-{id}"))?;
    let pin_dir = PinDir(PathBuf::from(format!("/sys/fs/bpf/xb-demo-{id}")));

    println!("== topology: client (10.99.0.2, fd99::2) -- lan0 router (10.99.0.1, fd99::1)");
    client.ip(&format!(
        "link add client0 address {CLIENT_MAC} type veth peer name lan0 address {ROUTER_MAC} netns {}",
        router.0
    ))?;
    client.ip("addr add 10.99.0.2/24 dev client0")?;
    client.ip("addr add fd99::2/64 dev client0 nodad")?;
    client.ip("link set client0 up")?;
    client.ip("route add default via 10.99.0.1")?;
    client.ip("-6 route add default via fd99::1")?;
    // Static neighbours: the first packets must not wait on ARP or neighbour discovery.
    client.ip(&format!(
        "neigh add 10.99.0.1 lladdr {ROUTER_MAC} dev client0 nud permanent"
    ))?;
    client.ip(&format!(
        "neigh add fd99::1 lladdr {ROUTER_MAC} dev client0 nud permanent"
    ))?;
    router.ip("addr add 10.99.0.1/24 dev lan0")?;
    router.ip("addr add fd99::1/64 dev lan0 nodad")?;
    router.ip("link set lan0 up")?;
    router.ip(&format!(
        "neigh add 10.99.0.2 lladdr {CLIENT_MAC} dev lan0 nud permanent"
    ))?;
    router.ip(&format!(
        "neigh add fd99::2 lladdr {CLIENT_MAC} dev lan0 nud permanent"
    ))?;

    let xdp_breakout = |args: &[&str]| -> anyhow::Result<()> {
        println!("\n$ xdp-breakout {}", args.join(" "));
        run_command(
            router
                .command(bin)
                .arg("--pin-dir")
                .arg(&pin_dir.0)
                .args(args),
        )
    };
    xdp_breakout(&["attach", "lan0"])?;

    println!("\n== traffic from the client");
    let traffic = [
        (
            "Teams media, UDP 3478 to 52.112.1.1",
            "for i in 1 2 3 4 5; do echo media > /dev/udp/52.112.1.1/3478; done",
        ),
        (
            "Teams media, UDP 3479 to 2603:1063::1",
            "for i in 1 2 3; do echo media > /dev/udp/2603:1063::1/3479; done",
        ),
        (
            "Exchange, TCP 443 to 40.96.1.1",
            "timeout 0.3 bash -c 'exec 3<>/dev/tcp/40.96.1.1/443'",
        ),
        (
            "Exchange submission, TCP 587 to 40.96.1.1",
            "timeout 0.3 bash -c 'exec 3<>/dev/tcp/40.96.1.1/587'",
        ),
        (
            "a non-Microsoft site, TCP 443 to 198.51.100.1",
            "timeout 0.3 bash -c 'exec 3<>/dev/tcp/198.51.100.1/443'",
        ),
    ];
    for (what, script) in traffic {
        println!("  {what}");
        // Connections fail (nothing answers behind the router); the packets are what count.
        let _ = client.command("bash").args(["-c", script]).output();
    }

    xdp_breakout(&["stats"])?;
    xdp_breakout(&["detach", "lan0"])?;
    println!("\n== removed the namespaces and {}", pin_dir.0.display());
    Ok(())
}
