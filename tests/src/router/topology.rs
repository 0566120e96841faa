//! The router's wiring: four namespaces joined by veth pairs, their addresses, static
//! neighbours (so no packet waits on ARP or neighbour discovery), the routes and the fwmark
//! rule of policy routing, and the test addresses every upstream owns. The direct uplink
//! source-NATs (nftables masquerade, IPv4 and IPv6, as the README's recipe does), so the
//! direct upstream has no route back to the LAN; the tunnel is a real WireGuard tunnel
//! (Debian's `wireguard-go` on TUN, keys made per run) over an underlay veth. With
//! [`Options::vlan`], the LAN is tagged; with [`Options::second_direct`], a second direct
//! uplink is wired as the first.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{DIRECT_RESOLVER, Router};
use crate::netns::{Netns, run_checked};

/// Addresses every upstream answers on: Microsoft 365 ones from the 2026043000 feed, and
/// others.
pub const TEAMS_V4: &str = "52.112.1.1";
pub const TEAMS_V6: &str = "2603:1063::1";
pub const EXCHANGE_V4: &str = "40.96.1.1";
pub const EXCHANGE_V6: &str = "2603:1006::1";
pub const OTHER_V4: &str = "198.51.100.1";
pub const OTHER_V6: &str = "2001:db8:5::1";
/// Addresses for feeds that add or remove prefixes: public unicast (the feed gate refuses
/// documentation and benchmarking space), not in Microsoft's feed.
pub const EXTRA_A: &str = "44.10.0.1";
pub const EXTRA_B: &str = "44.20.0.1";
pub const TEST_ADDRESSES: [&str; 8] = [
    TEAMS_V4,
    TEAMS_V6,
    EXCHANGE_V4,
    EXCHANGE_V6,
    OTHER_V4,
    OTHER_V6,
    EXTRA_A,
    EXTRA_B,
];

const MAC_CLIENT: &str = "02:00:00:00:01:02";
const MAC_LAN: &str = "02:00:00:00:01:01";
const MAC_WAN: &str = "02:00:00:00:02:01";
const MAC_DIRECT: &str = "02:00:00:00:02:02";
const MAC_UNDERLAY: &str = "02:00:00:00:03:01";
const MAC_TUNNEL: &str = "02:00:00:00:03:02";
// 10.0.4.0/24 and the 04 MACs are the LAN neighbour's (`super::dns`), which a test may add
// beside a second uplink.
const MAC_WAN2: &str = "02:00:00:00:05:01";
const MAC_DIRECT2: &str = "02:00:00:00:05:02";

/// The fwmark (under mask 0xffff) that sends a packet to [`DIRECT_TABLE`], and that table:
/// default routes via the direct upstream.
pub const DIRECT_MARK: u32 = 0x365;
pub const DIRECT_TABLE: u32 = 365;
/// The same for the second direct uplink ([`Options::second_direct`]).
pub const DIRECT2_MARK: u32 = 0x366;
pub const DIRECT2_TABLE: u32 = 366;
/// The router's interface towards the second direct upstream.
pub const WAN2: &str = "wan1";
/// The second direct upstream's addresses on that link: the gateway of [`DIRECT2_TABLE`].
pub const DIRECT2_GATEWAY_V4: &str = "10.0.5.2";
pub const DIRECT2_GATEWAY_V6: &str = "fd00:5::2";
/// The router's addresses on [`WAN2`].
pub const WAN2_V4: &str = "10.0.5.1";
pub const WAN2_V6: &str = "fd00:5::1";

/// How the router is built.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The LAN is VLAN 100, tagged in the frames (the tag is not offloaded).
    pub vlan: bool,
    /// How every daemon on the router attaches to the LAN.
    pub mode: Mode,
    /// A second direct upstream, namespace `xb<what>-e` ([`Router::direct2`]), behind
    /// [`WAN2`]: [`DIRECT2_MARK`] selects [`DIRECT2_TABLE`], masqueraded as `wan0` is.
    pub second_direct: bool,
}

/// The daemon's attach mode, as `run --mode` takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// XDP classifies, `breakout_mark` at tc ingress marks (the default).
    #[default]
    Xdp,
    /// `--mode tc`: `breakout_tc` at tc ingress alone.
    Tc,
}

impl Mode {
    /// The arguments of `xdp-breakout run` that select this mode.
    #[must_use]
    pub const fn args(self) -> &'static [&'static str] {
        match self {
            Self::Xdp => &[],
            Self::Tc => &["--mode", "tc"],
        }
    }
}

impl Router {
    pub(super) fn wire(&self) -> io::Result<()> {
        let (client, router, direct, tunnel) =
            (&self.client, &self.router, &self.direct, &self.tunnel);
        for netns in [client, router, direct, tunnel] {
            netns.sysctl("net.ipv6.conf.all.accept_dad=0")?;
            netns.sysctl("net.ipv6.conf.default.accept_dad=0")?;
        }
        router.sysctl("net.ipv4.ip_forward=1")?;
        router.sysctl("net.ipv6.conf.all.forwarding=1")?;
        veth_pair(client, "client0", MAC_CLIENT, router, "lan0", MAC_LAN)?;
        veth_pair(router, "wan0", MAC_WAN, direct, "up0", MAC_DIRECT)?;
        veth_pair(router, "wgu0", MAC_UNDERLAY, tunnel, "up0", MAC_TUNNEL)?;
        let (client_if, lan_if) = ("client0", "lan0");
        up(client, client_if, "10.0.1.2/24", "fd00:1::2/64")?;
        up(router, lan_if, "10.0.1.1/24", "fd00:1::1/64")?;
        up(router, "wan0", "10.0.2.1/24", "fd00:2::1/64")?;
        up(direct, "up0", "10.0.2.2/24", "fd00:2::2/64")?;
        up(router, "wgu0", "10.0.3.1/24", "fd00:3::1/64")?;
        up(tunnel, "up0", "10.0.3.2/24", "fd00:3::2/64")?;
        permanent(client, "10.0.1.1", MAC_LAN, client_if)?;
        permanent(client, "fd00:1::1", MAC_LAN, client_if)?;
        permanent(router, "10.0.1.2", MAC_CLIENT, lan_if)?;
        permanent(router, "fd00:1::2", MAC_CLIENT, lan_if)?;
        permanent(router, "10.0.2.2", MAC_DIRECT, "wan0")?;
        permanent(router, "fd00:2::2", MAC_DIRECT, "wan0")?;
        permanent(router, "10.0.3.2", MAC_TUNNEL, "wgu0")?;
        permanent(router, "fd00:3::2", MAC_TUNNEL, "wgu0")?;
        permanent(direct, "10.0.2.1", MAC_WAN, "up0")?;
        permanent(direct, "fd00:2::1", MAC_WAN, "up0")?;
        permanent(tunnel, "10.0.3.1", MAC_UNDERLAY, "up0")?;
        permanent(tunnel, "fd00:3::1", MAC_UNDERLAY, "up0")?;
        client.ip(&["route", "add", "default", "via", "10.0.1.1"])?;
        client.ip(&["-6", "route", "add", "default", "via", "fd00:1::1"])?;
        // The tunnel (see `wireguard`) is the default; table 365 is the direct uplink, for
        // marked packets.
        uplink_table(router, DIRECT_MARK, DIRECT_TABLE, "10.0.2.2", "fd00:2::2")?;
        // The direct uplink hides the LAN behind the router's address; the tunnel's far end
        // routes the LAN back through the tunnel, as a VPN hub does.
        for (command, what) in [
            ("add table inet breakout", "table"),
            (
                "add chain inet breakout postrouting { type nat hook postrouting priority srcnat; }",
                "chain",
            ),
        ] {
            run_checked(router.command("nft").arg(command))
                .map_err(|error| io::Error::other(format!("nft {what}: {error}")))?;
        }
        masquerade(router, "wan0")?;
        router.sysctl("net.ipv4.conf.all.rp_filter=2")?;
        router.sysctl("net.ipv4.conf.wan0.rp_filter=2")?;
        // A resolver's address the direct upstream alone owns: the main table sends it into
        // the tunnel, where it does not exist (see `super::dns`).
        direct.ip(&["addr", "add", &format!("{DIRECT_RESOLVER}/32"), "dev", "lo"])?;
        own_test_addresses(direct)?;
        own_test_addresses(tunnel)?;
        if let Some(direct2) = &self.direct2 {
            self.wire_second_direct(direct2)?;
        }
        Ok(())
    }

    /// The second direct uplink, wired as the first: `wan1` <-> `up0`, static neighbours,
    /// table 366 for mark 0x366, masqueraded, every test address on its loopback.
    fn wire_second_direct(&self, direct2: &Netns) -> io::Result<()> {
        let router = &self.router;
        direct2.sysctl("net.ipv6.conf.all.accept_dad=0")?;
        direct2.sysctl("net.ipv6.conf.default.accept_dad=0")?;
        veth_pair(router, WAN2, MAC_WAN2, direct2, "up0", MAC_DIRECT2)?;
        up(
            router,
            WAN2,
            &format!("{WAN2_V4}/24"),
            &format!("{WAN2_V6}/64"),
        )?;
        up(
            direct2,
            "up0",
            &format!("{DIRECT2_GATEWAY_V4}/24"),
            &format!("{DIRECT2_GATEWAY_V6}/64"),
        )?;
        permanent(router, DIRECT2_GATEWAY_V4, MAC_DIRECT2, WAN2)?;
        permanent(router, DIRECT2_GATEWAY_V6, MAC_DIRECT2, WAN2)?;
        permanent(direct2, WAN2_V4, MAC_WAN2, "up0")?;
        permanent(direct2, WAN2_V6, MAC_WAN2, "up0")?;
        uplink_table(
            router,
            DIRECT2_MARK,
            DIRECT2_TABLE,
            DIRECT2_GATEWAY_V4,
            DIRECT2_GATEWAY_V6,
        )?;
        masquerade(router, WAN2)?;
        router.sysctl(&format!("net.ipv4.conf.{WAN2}.rp_filter=2"))?;
        own_test_addresses(direct2)
    }

    /// A WireGuard tunnel between the router and the tunnel namespace over the underlay
    /// veth (wired first: a handshake that finds no route waits 5 s to try again), and the
    /// routes through it: a `wireguard-go` process in each (the kernel here has no WireGuard module), keys
    /// generated for this run, the router's peer taking every address and the far end the
    /// LAN's prefixes.
    pub(super) fn wireguard(&mut self) -> io::Result<()> {
        let key = |name: &str| -> io::Result<(PathBuf, String)> {
            let private = run_checked(Command::new("wg").arg("genkey"))?.stdout;
            let path = self.work.join(name);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?
                .write_all(&private)?;
            let mut pubkey = Command::new("wg")
                .arg("pubkey")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            pubkey
                .stdin
                .take()
                .ok_or_else(|| io::Error::other("wg pubkey: no stdin"))?
                .write_all(&private)?;
            let public = pubkey.wait_with_output()?;
            Ok((
                path,
                String::from_utf8_lossy(&public.stdout).trim().to_owned(),
            ))
        };
        let (router_key, router_pub) = key("wg-router.key")?;
        let (tunnel_key, tunnel_pub) = key("wg-tunnel.key")?;
        let ends = [
            (
                &self.router,
                self.tun.clone(),
                router_key,
                tunnel_pub,
                "0.0.0.0/0,::/0",
                "10.0.3.2:51820",
                ["10.9.0.1/30", "fd00:9::1/126"],
            ),
            (
                &self.tunnel,
                self.tunnel_tun.clone(),
                tunnel_key,
                router_pub,
                "10.0.1.0/24,fd00:1::/64,10.9.0.0/30,fd00:9::/126",
                "10.0.3.1:51820",
                ["10.9.0.2/30", "fd00:9::2/126"],
            ),
        ];
        for (netns, name, key, peer, allowed, endpoint, addresses) in ends {
            let log = fs::File::create(self.work.join(format!("{name}.log")))?;
            let child = netns
                .command("wireguard-go")
                .args(["-f", &name])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|error| io::Error::other(format!("wireguard-go: {error}")))?;
            self.wireguard.push(child);
            // The TUN device comes first, the control socket that `wg` talks to after it.
            let socket = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
            let start = Instant::now();
            while netns.ip(&["link", "show", &name]).is_err() || !socket.exists() {
                if start.elapsed() > Duration::from_secs(5) {
                    return Err(io::Error::other(format!(
                        "wireguard-go made no {name} with a control socket"
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            run_checked(
                netns
                    .command("wg")
                    .args(["set", &name, "private-key"])
                    .arg(&key)
                    .args([
                        "listen-port",
                        "51820",
                        "peer",
                        &peer,
                        "allowed-ips",
                        allowed,
                        "endpoint",
                        endpoint,
                        "persistent-keepalive",
                        "1",
                    ]),
            )?;
            netns.ip(&["addr", "add", addresses[0], "dev", &name])?;
            netns.ip(&["addr", "add", addresses[1], "dev", &name, "nodad"])?;
            netns.ip(&["link", "set", &name, "up"])?;
        }
        let (router, tunnel) = (&self.router, &self.tunnel);
        router.ip(&["route", "add", "default", "dev", &self.tun])?;
        router.ip(&["-6", "route", "add", "default", "dev", &self.tun])?;
        tunnel.ip(&["route", "add", "10.0.1.0/24", "dev", &self.tunnel_tun])?;
        tunnel.ip(&["-6", "route", "add", "fd00:1::/64", "dev", &self.tunnel_tun])?;
        Ok(())
    }

    /// Tags the LAN with VLAN 100: the client's frames carry the tag on the wire, so the
    /// router's XDP program parses it, and the router untags them after classification. This
    /// machine's kernel has no 802.1Q devices (`CONFIG_VLAN_8021Q` unset), so two tc programs
    /// of the harness (bench-ebpf) do what `client0.100` and `lan0.100` would.
    pub(super) fn tag_lan(&mut self) -> io::Result<()> {
        run_checked(
            self.client
                .command("ethtool")
                .args(["-K", "client0", "txvlan", "off"]),
        )?;
        let attach = |program: &'static str, iface: &'static str, direction| {
            move || -> Result<aya::Ebpf, Box<dyn std::error::Error + Send + Sync>> {
                let mut ebpf = aya::Ebpf::load(crate::HARNESS_OBJECT)?;
                let classifier: &mut aya::programs::SchedClassifier = ebpf
                    .program_mut(program)
                    .ok_or("program missing")?
                    .try_into()?;
                classifier.load()?;
                classifier.attach(iface, direction)?;
                Ok(ebpf)
            }
        };
        let push = self.client.run(attach(
            "harness_vlan_push",
            "client0",
            aya::programs::TcAttachType::Egress,
        ));
        let pop = self.router.run(attach(
            "harness_vlan_pop",
            "lan0",
            aya::programs::TcAttachType::Ingress,
        ));
        self.vlan.push(push.map_err(io::Error::other)?);
        self.vlan.push(pop.map_err(io::Error::other)?);
        Ok(())
    }

    /// Frames the router untagged (VLAN mode), summed over CPUs.
    ///
    /// # Panics
    ///
    /// Outside VLAN mode.
    #[must_use]
    pub fn untagged(&self) -> u64 {
        let map = self.vlan[1]
            .map(harness_common::BENCH_COUNT)
            .expect("harness counters");
        let counters = aya::maps::PerCpuArray::<_, classifier_common::Counter>::try_from(map)
            .expect("per-CPU array");
        counters
            .get(&harness_common::slot::VLAN_POPPED, 0)
            .expect("counter")
            .iter()
            .sum::<classifier_common::Counter>()
            .packets
    }
}

/// A veth pair, `a_name` in `a` and `b_name` in `b`, with fixed MACs.
fn veth_pair(
    a: &Netns,
    a_name: &str,
    a_mac: &str,
    b: &Netns,
    b_name: &str,
    b_mac: &str,
) -> io::Result<()> {
    a.ip(&[
        "link", "add", a_name, "address", a_mac, "type", "veth", "peer", "name", b_name, "address",
        b_mac, "netns", &b.name,
    ])
    .map(drop)
}

/// Addresses `dev` (IPv6 without duplicate address detection) and brings it up.
fn up(netns: &Netns, dev: &str, v4: &str, v6: &str) -> io::Result<()> {
    netns.ip(&["addr", "add", v4, "dev", dev])?;
    netns.ip(&["addr", "add", v6, "dev", dev, "nodad"])?;
    netns.ip(&["link", "set", dev, "up"]).map(drop)
}

/// A static neighbour, so that no packet waits on ARP or neighbour discovery.
pub(super) fn permanent(netns: &Netns, addr: &str, mac: &str, dev: &str) -> io::Result<()> {
    netns
        .ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
}

/// A direct uplink's policy routing: default routes via its gateways in `table`, and a rule
/// per family sending `mark/0xffff` there.
fn uplink_table(router: &Netns, mark: u32, table: u32, via4: &str, via6: &str) -> io::Result<()> {
    let table = table.to_string();
    let fwmark = format!("{mark:#x}/0xffff");
    router.ip(&["route", "add", "default", "via", via4, "table", &table])?;
    router.ip(&[
        "-6", "route", "add", "default", "via", via6, "table", &table,
    ])?;
    for family in ["-4", "-6"] {
        router.ip(&[
            family, "rule", "add", "fwmark", &fwmark, "lookup", &table, "priority", "1000",
        ])?;
    }
    Ok(())
}

/// Source-NATs what leaves by `oif` (IPv4 and IPv6) in the router's `inet breakout` table.
fn masquerade(router: &Netns, oif: &str) -> io::Result<()> {
    run_checked(router.command("nft").arg(format!(
        "add rule inet breakout postrouting oifname \"{oif}\" masquerade"
    )))
    .map(drop)
    .map_err(|error| io::Error::other(format!("nft masquerade {oif}: {error}")))
}

/// Every test address on `upstream`'s loopback: an upstream answers them all.
fn own_test_addresses(upstream: &Netns) -> io::Result<()> {
    for addr in TEST_ADDRESSES {
        if addr.contains(':') {
            upstream.ip(&["addr", "add", &format!("{addr}/128"), "dev", "lo", "nodad"])?;
        } else {
            upstream.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        }
    }
    Ok(())
}
