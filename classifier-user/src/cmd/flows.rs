//! `xdp-breakout flows`: the flow table, the connections and the action each keeps.
//!
//! JSON (stable): an array of [`Row`], `{"src", "dst", "proto", "sport", "dport", "action",
//! "uplink", "category", "endpoint_set", "reason", "packets", "bytes", "idle_s", "age_s"}`,
//! most recently seen first.

use std::{io::Write as _, net::IpAddr};

use classifier_common::{FlowKey, action, category, proto};
use serde::Serialize;

use crate::{
    cli::{FlowsArgs, GlobalArgs},
    datapath::Flow,
    explain::reason_name,
};

/// One flow.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Source and destination address.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp`, `udp`, or the IP protocol number.
    pub proto: String,
    /// Ports; 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// `direct` or `tunnel`: what every packet of the flow gets.
    pub action: &'static str,
    /// The direct uplink a direct flow leaves by (its name in the agent's status, else
    /// `#INDEX`); null for a tunnel flow.
    pub uplink: Option<String>,
    /// The category of its first packet (`Optimize`, `Allow`, `Default`), or null.
    pub category: Option<&'static str>,
    /// The endpoint set that decided its first packet (0: none, or an operator prefix).
    pub endpoint_set: u16,
    /// Why its first packet got its action (a counter name: `match_port`, `no_match`, ...).
    pub reason: &'static str,
    /// The first packet's count (1) and size: the kernel does not count a flow's packets
    /// (a write on every packet would move the entry between CPUs; `stats` counts them).
    pub packets: u64,
    pub bytes: u64,
    /// Seconds since its last packet (refreshed once a second at most), and since its first.
    pub idle_s: u64,
    pub age_s: u64,
}

fn row(flow: &Flow, now: u64, names: &[String]) -> Row {
    let Flow { key, value } = flow;
    let FlowKey {
        sport,
        dport,
        proto: ip_proto,
        ..
    } = *key;
    let seconds = |ns: u64| now.saturating_sub(ns) / 1_000_000_000;
    Row {
        src: key.src_addr(),
        dst: key.dst_addr(),
        proto: match ip_proto {
            proto::TCP => "tcp".to_owned(),
            proto::UDP => "udp".to_owned(),
            other => other.to_string(),
        },
        sport,
        dport,
        action: action::name(value.action),
        uplink: (value.action == action::DIRECT).then(|| {
            names
                .get(usize::from(value.uplink))
                .cloned()
                .unwrap_or_else(|| format!("#{}", value.uplink))
        }),
        category: category::name(value.category),
        endpoint_set: value.set_id,
        reason: reason_name(u32::from(value.reason)),
        packets: value.packets,
        bytes: value.bytes,
        idle_s: seconds(value.last_ns),
        age_s: seconds(value.first_ns),
    }
}

pub fn run(global: &GlobalArgs, FlowsArgs {}: &FlowsArgs) -> anyhow::Result<()> {
    let maps = super::pinned_maps(global)?;
    let mut flows = maps.flows()?;
    flows.sort_by_key(|flow| std::cmp::Reverse(flow.value.last_ns));
    let now = crate::datapath::monotonic_ns();
    let names: Vec<String> = crate::state::read_status(&global.state_dir())
        .ok()
        .flatten()
        .map(|status| {
            if status.uplinks.is_empty() {
                status.uplink.iter().map(|u| u.name.clone()).collect()
            } else {
                status.uplinks.iter().map(|u| u.name.clone()).collect()
            }
        })
        .unwrap_or_default();
    let rows: Vec<Row> = flows.iter().map(|flow| row(flow, now, &names)).collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if global.json {
        return super::write_json(&mut out, &rows);
    }
    writeln!(
        out,
        "{:<41} {:<41} {:<5} {:<7} {:<10} {:<9} {:<11} {:>7} {:>7}",
        "SOURCE",
        "DESTINATION",
        "PROTO",
        "ACTION",
        "UPLINK",
        "CATEGORY",
        "REASON",
        "IDLE_S",
        "AGE_S"
    )?;
    for row in &rows {
        let with_port = |addr: IpAddr, port: u16| match (addr, port) {
            (_, 0) => addr.to_string(),
            (IpAddr::V4(_), port) => format!("{addr}:{port}"),
            (IpAddr::V6(_), port) => format!("[{addr}]:{port}"),
        };
        writeln!(
            out,
            "{:<41} {:<41} {:<5} {:<7} {:<10} {:<9} {:<11} {:>7} {:>7}",
            with_port(row.src, row.sport),
            with_port(row.dst, row.dport),
            row.proto,
            row.action,
            row.uplink.as_deref().unwrap_or("-"),
            row.category.unwrap_or("-"),
            row.reason,
            row.idle_s,
            row.age_s
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use classifier_common::FlowValue;

    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc};

    #[test]
    fn every_field_is_documented_and_addresses_read_back() {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[10, 0, 1, 2]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[52, 112, 1, 1]);
        let flow = Flow {
            key: FlowKey {
                src,
                dst,
                sport: 40000,
                dport: 3478,
                proto: proto::UDP,
                family: 4,
                _pad: [0; 2],
            },
            value: FlowValue {
                first_ns: 1_000_000_000,
                last_ns: 3_000_000_000,
                packets: 5,
                bytes: 500,
                action: action::DIRECT,
                category: category::OPTIMIZE,
                set_id: 11,
                reason: 2,
                uplink: 0,
                _pad: [0; 2],
            },
        };
        let row = row(&flow, 10_000_000_000, &["isp-a".to_owned()]);
        assert_eq!(row.uplink.as_deref(), Some("isp-a"));
        assert_eq!(row.src.to_string(), "10.0.1.2");
        assert_eq!(row.dst.to_string(), "52.112.1.1");
        assert_eq!((row.idle_s, row.age_s), (7, 9));
        assert_eq!((row.proto.as_str(), row.reason), ("udp", "match_port"));
        assert_documented_in(&[row], &module_doc(include_str!("flows.rs")));
    }
}
