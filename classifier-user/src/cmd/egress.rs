//! `xdp-breakout egress [--json] [--config FILE]`: the addresses Microsoft 365 sees from this
//! router's direct uplinks, in a form to paste into Entra ID named locations.
//!
//! Local breakout changes the source address of Microsoft 365 traffic: it leaves by a direct
//! uplink's address (or the public address of the NAT in front of it) instead of the tunnel's
//! or proxy's. Continuous Access Evaluation compares the address a token is used from with
//! the named locations of the tenant's Conditional Access policies, so every egress address
//! must be listed there. Each uplink's interface addresses are read now (`getifaddrs`); its
//! `nat-address` comes from the configuration. A private interface address with no
//! `nat-address` is not what Microsoft sees: it is printed commented out, with a warning.
//!
//! JSON (stable): an array of [`Egress`], `{"uplink", "interface", "addresses",
//! "nat_address", "ranges", "warning"}`.

use std::{io::Write as _, net::IpAddr};

use serde::Serialize;

use crate::cli::{EgressArgs, GlobalArgs};

/// One direct uplink's egress.
#[derive(Debug, Serialize)]
pub struct Egress {
    /// The uplink's name.
    pub uplink: String,
    /// Its interface; null when none is configured.
    pub interface: Option<String>,
    /// The interface's addresses now.
    pub addresses: Vec<IpAddr>,
    /// Its public NAT addresses as configured (`nat-address`).
    pub nat_address: Vec<IpAddr>,
    /// What to list in the named location: the NAT addresses, else the interface's public
    /// addresses, as host prefixes (`/32`, `/128`).
    pub ranges: Vec<String>,
    /// Why the list may be incomplete; null when it is not.
    pub warning: Option<String>,
}

/// Whether Microsoft could see `addr` as a source: not private, shared (CGNAT), link-local,
/// loopback or unique-local space.
fn public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

fn host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("{addr}/32"),
        IpAddr::V6(_) => format!("{addr}/128"),
    }
}

/// The egress of an uplink with `addresses` on its interface and `nat` configured.
#[must_use]
pub fn egress(
    uplink: &str,
    interface: Option<&str>,
    addresses: Vec<IpAddr>,
    nat: &[IpAddr],
) -> Egress {
    let ranges: Vec<String> = if nat.is_empty() {
        addresses
            .iter()
            .copied()
            .filter(|addr| public(*addr))
            .map(host)
            .collect()
    } else {
        nat.iter().copied().map(host).collect()
    };
    // Link-local addresses never leave the link: not a source Microsoft could see.
    let private: Vec<String> = addresses
        .iter()
        .filter(|addr| !public(**addr) && !crate::netlink::link_local(**addr))
        .map(ToString::to_string)
        .collect();
    let warning = match (interface, nat.is_empty()) {
        (None, true) => Some("no interface and no nat-address: nothing to list".to_owned()),
        (Some(iface), true) if addresses.is_empty() => Some(format!(
            "{iface} has no address now, and no nat-address is configured"
        )),
        (Some(iface), true) if !private.is_empty() => Some(format!(
            "{iface} has private addresses ({}) and no nat-address: Microsoft sees the NAT's \
             public address, set it as nat-address",
            private.join(", ")
        )),
        _ => None,
    };
    Egress {
        uplink: uplink.to_owned(),
        interface: interface.map(str::to_owned),
        addresses,
        nat_address: nat.to_vec(),
        ranges,
        warning,
    }
}

pub fn run(global: &GlobalArgs, args: &EgressArgs) -> anyhow::Result<()> {
    let config = args.config.effective(global)?;
    let rows: Vec<Egress> = config
        .uplinks()
        .iter()
        .map(|uplink| {
            let interface = uplink.health.interface.as_deref();
            let addresses = interface
                .and_then(|iface| crate::netlink::addresses(&[iface.to_owned()]).ok())
                .unwrap_or_default();
            egress(&uplink.name, interface, addresses, &uplink.nat_address)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if global.json {
        return super::write_json(&mut out, &rows);
    }
    writeln!(
        out,
        "# The addresses Microsoft 365 sees from this router's direct uplinks: list them in \
         an Entra ID named location\n# (Conditional Access), or Continuous Access Evaluation \
         refuses tokens used from them."
    )?;
    for row in &rows {
        writeln!(
            out,
            "# {} ({})",
            row.uplink,
            row.interface.as_deref().unwrap_or("no interface")
        )?;
        if let Some(warning) = &row.warning {
            writeln!(out, "# warning: {warning}")?;
        }
        for range in &row.ranges {
            writeln!(out, "{range}")?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn nat_addresses_win_and_private_ones_are_warned_about() {
        let natted = egress(
            "isp-a",
            Some("wan0"),
            vec![ip("10.0.2.1")],
            &[ip("203.0.113.7")],
        );
        assert_eq!(natted.ranges, ["203.0.113.7/32"]);
        assert_eq!(natted.warning, None);
        let public = egress(
            "isp-b",
            Some("wan1"),
            vec![ip("198.51.100.9"), ip("2001:db8::9"), ip("fe80::1")],
            &[],
        );
        assert_eq!(public.ranges, ["198.51.100.9/32", "2001:db8::9/128"]);
        assert_eq!(public.warning, None);
        let private = egress(
            "isp-c",
            Some("wan2"),
            vec![ip("100.64.1.2"), ip("fd00::2")],
            &[],
        );
        assert!(private.ranges.is_empty());
        let warning = private.warning.unwrap();
        assert!(warning.contains("100.64.1.2, fd00::2"), "{warning}");
        assert!(warning.contains("set it as nat-address"), "{warning}");
        assert!(egress("x", None, Vec::new(), &[]).warning.is_some());
    }
}
