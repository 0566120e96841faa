//! `xdp-breakout prefixes`: the installed ranges, their category and endpoint sets.
//!
//! JSON (stable): an array of `{"prefix", "category" (or null for an excluded prefix),
//! "endpoint_set", "service_area", "rules": [{"proto", "ports", "category",
//! "endpoint_set"}]}`.

use std::io::Write as _;

use classifier_common::{PrefixRules, category, proto};
use serde_json::{Value, json};

use crate::{
    cli::{GlobalArgs, PrefixesArgs},
    compile::{key_net_v4, key_net_v6},
    explain::Catalog,
};

pub fn run(global: &GlobalArgs, PrefixesArgs {}: &PrefixesArgs) -> anyhow::Result<()> {
    let maps = super::pinned_maps(global)?;
    let installed = maps.installed()?;
    let catalog = Catalog::load(&global.state_dir(), &installed);
    let entries = installed
        .v4
        .iter()
        .map(|(key, value)| (key_net_v4(key), value))
        .chain(
            installed
                .v6
                .iter()
                .map(|(key, value)| (key_net_v6(key), value)),
        );
    let mut entries: Vec<_> = entries.collect();
    entries.sort_by_key(|(net, _)| *net);
    let rows: Vec<Value> = entries
        .into_iter()
        .map(|(net, value)| row(net, value, &catalog))
        .collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if global.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<28} {:<9} {:<5} {:<11} RULES",
            "PREFIX", "CATEGORY", "SET", "AREA"
        )?;
        for row in &rows {
            let rules: Vec<String> = row["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}/{} {}",
                        r["proto"].as_str().unwrap_or("?"),
                        r["ports"].as_str().unwrap_or("?"),
                        r["category"].as_str().unwrap_or("-")
                    )
                })
                .collect();
            writeln!(
                out,
                "{:<28} {:<9} {:<5} {:<11} {}",
                row["prefix"].as_str().unwrap_or("?"),
                row["category"].as_str().unwrap_or("excluded"),
                row["endpoint_set"].to_string(),
                row["service_area"].as_str().unwrap_or("-"),
                rules.join(", ")
            )?;
        }
        writeln!(
            out,
            "\n{} IPv4 and {} IPv6 prefixes",
            installed.v4.len(),
            installed.v6.len()
        )?;
    }
    out.flush()?;
    Ok(())
}

fn row(net: ipnet::IpNet, value: &PrefixRules, catalog: &Catalog) -> Value {
    let rules: Vec<Value> = value.rules[..usize::from(value.n_rules).min(value.rules.len())]
        .iter()
        .map(|rule| {
            let ports = if rule.port_lo == rule.port_hi {
                rule.port_lo.to_string()
            } else {
                format!("{}-{}", rule.port_lo, rule.port_hi)
            };
            json!({
                "proto": if rule.proto == proto::TCP { "tcp" } else { "udp" },
                "ports": ports,
                "category": category::name(rule.category),
                "endpoint_set": rule.set_id,
            })
        })
        .collect();
    let excluded = value.addr_category == category::NONE;
    json!({
        "prefix": net.to_string(),
        "category": category::name(value.addr_category),
        "endpoint_set": value.addr_set,
        "service_area": (!excluded).then(|| catalog.service_area(value.addr_set)),
        "rules": rules,
    })
}
