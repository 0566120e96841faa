//! The router's DNS pieces: resolvers in its namespaces (one on the router's LAN address, one
//! behind the direct uplink only, one at the tunnel's far end), `dig` from the client, and a
//! LAN neighbour on a second LAN port, for answers forged from the LAN side.
//!
//! ```text
//!  client 10.0.1.2 -- lan0 [router: dnsmasq on 10.0.1.1] wan0 -- direct: 44.30.0.53 (lo)
//!                                                        tunnel -- tunnel: 44.20.0.1 (lo)
//!  neighbour 10.0.4.2 -- lan1 (10.0.4.1)
//! ```
//!
//! 44.30.0.53 is on the direct namespace's loopback only: the router's main table sends it
//! into the tunnel, whose far end has no such address, so only a route the agent installs
//! (table 365, or a rule for it) reaches it through `wan0`; the direct namespace answers the
//! router's `wan0` address on its own link.

use std::{io, net::IpAddr};

use super::{EXTRA_B, Router, topology::permanent};
use crate::{
    dns::{Dnsmasq, Resolver},
    netns::Netns,
};

/// The router's LAN address: where a resolver on the router listens.
pub const LAN_RESOLVER: &str = "10.0.1.1";
/// A resolver only the direct uplink reaches (on the direct namespace's loopback).
pub const DIRECT_RESOLVER: &str = "44.30.0.53";
/// The tunnel's far end's resolver (on the tunnel namespace's loopback; the direct namespace
/// owns the address too, as every test address, but runs no resolver there).
pub const TUNNEL_RESOLVER: &str = EXTRA_B;
/// The router's address on its second LAN port, and the neighbour's.
pub const LAN1_ROUTER: &str = "10.0.4.1";
pub const NEIGHBOUR: &str = "10.0.4.2";

const MAC_LAN1: &str = "02:00:00:00:04:01";
const MAC_NEIGHBOUR: &str = "02:00:00:00:04:02";

/// Which of the router's namespaces a resolver runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The router itself (its LAN address, [`LAN_RESOLVER`]).
    Router,
    /// The direct upstream ([`DIRECT_RESOLVER`]).
    Direct,
    /// The tunnel's far end ([`TUNNEL_RESOLVER`]).
    Tunnel,
}

impl Router {
    /// Starts `config` in the namespace of `side`, its files (query log, pid file) in the
    /// router's work directory named for `name`; killed when the returned value is dropped.
    pub fn start_resolver(&self, side: Side, name: &str, config: &Dnsmasq) -> io::Result<Resolver> {
        let netns = match side {
            Side::Router => &self.router,
            Side::Direct => &self.direct,
            Side::Tunnel => &self.tunnel,
        };
        Resolver::start(netns, &self.work, name, config)
    }

    /// `dig @resolver +short name` from the client (2 s, 2 tries): the answer's lines.
    ///
    /// # Panics
    ///
    /// When `dig` cannot be started.
    #[must_use]
    pub fn dig(&self, resolver: &str, name: &str) -> String {
        let output = self
            .client
            .command("dig")
            .args([
                &format!("@{resolver}"),
                "+short",
                "+time=2",
                "+tries=2",
                name,
            ])
            .output()
            .expect("dig (cargo xtask setup installs bind9-dnsutils)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Adds a neighbour namespace on a second LAN port of the router: `lan1` 10.0.4.1/24 <->
    /// `nb0` 10.0.4.2/24, default route via the router, static neighbours. xdp-breakout is not
    /// attached to `lan1`; what the neighbour sends to the client leaves by `lan0`.
    pub fn add_lan_neighbour(&mut self) -> io::Result<&Netns> {
        let neighbour = Netns::new(&format!("xb{}-n", self.what))?;
        neighbour.sysctl("net.ipv6.conf.all.accept_dad=0")?;
        neighbour.sysctl("net.ipv6.conf.default.accept_dad=0")?;
        self.router.ip(&[
            "link",
            "add",
            "lan1",
            "address",
            MAC_LAN1,
            "type",
            "veth",
            "peer",
            "name",
            "nb0",
            "address",
            MAC_NEIGHBOUR,
            "netns",
            &neighbour.name,
        ])?;
        self.router
            .ip(&["addr", "add", &format!("{LAN1_ROUTER}/24"), "dev", "lan1"])?;
        self.router.ip(&["link", "set", "lan1", "up"])?;
        neighbour.ip(&["addr", "add", &format!("{NEIGHBOUR}/24"), "dev", "nb0"])?;
        neighbour.ip(&["link", "set", "nb0", "up"])?;
        neighbour.ip(&["route", "add", "default", "via", LAN1_ROUTER])?;
        permanent(&self.router, NEIGHBOUR, MAC_NEIGHBOUR, "lan1")?;
        permanent(&neighbour, LAN1_ROUTER, MAC_LAN1, "nb0")?;
        Ok(self.neighbour.insert(neighbour))
    }

    /// The LAN neighbour ([`Router::add_lan_neighbour`]).
    ///
    /// # Panics
    ///
    /// When none was added.
    #[must_use]
    pub fn neighbour(&self) -> &Netns {
        self.neighbour.as_ref().expect("add_lan_neighbour first")
    }
}

/// The addresses in `dig +short` output (CNAME targets left out).
#[must_use]
pub fn addresses(dig: &str) -> Vec<IpAddr> {
    dig.lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}
