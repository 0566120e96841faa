//! `xdp-breakout prefixes`: the installed ranges, their category and endpoint sets.
//!
//! JSON (stable): an array of [`Row`], `{"prefix", "category" (or null for an excluded
//! prefix), "endpoint_set", "service_area", "rules": [{"proto", "ports", "category",
//! "endpoint_set"}]}`, in address order, IPv4 first.

use std::{fmt, io::Write as _};

use anyhow::Context as _;

use classifier_common::{PortRule, PrefixRules, category, proto};
use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::{
    cli::{GlobalArgs, PrefixesArgs},
    compile::{key_net_v4, key_net_v6},
    explain::Catalog,
};

/// An installed prefix.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    /// The prefix.
    pub prefix: IpNet,
    /// The category of an address in it when no port rule matches (`Optimize`, `Allow`,
    /// `Default`); null for an excluded prefix (`--exclude`), which never goes direct.
    pub category: Option<&'static str>,
    /// The endpoint set of that category (0 for an operator's prefix or none).
    pub endpoint_set: u16,
    /// That set's service area (`operator`; `unknown` when no feed the maps hold names it);
    /// null for an excluded prefix.
    pub service_area: Option<&'a str>,
    /// Port rules, tried in order before the category by address.
    pub rules: Vec<Rule>,
}

/// A port rule of a prefix.
#[derive(Debug, Serialize)]
pub struct Rule {
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// The destination ports it matches: `443`, or a range `3478-3481`.
    pub ports: Ports,
    /// The category of a packet it matches.
    pub category: Option<&'static str>,
    /// The endpoint set the rule comes from.
    pub endpoint_set: u16,
}

/// A port range, written `LO` or `LO-HI`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

pub fn run(global: &GlobalArgs, PrefixesArgs { source }: &PrefixesArgs) -> anyhow::Result<()> {
    let maps = super::pinned_maps(global)?;
    let installed = maps.installed()?;
    let catalog = Catalog::load(&global.state_dir(), &installed);
    let ids = match source {
        Some(name) => Some(catalog.ids_of(name).with_context(|| {
            let known: Vec<&str> = ["m365", "operator"]
                .into_iter()
                .chain(catalog.sources.iter().map(|(name, _, _)| name.as_str()))
                .collect();
            format!(
                "no source {name:?} in what the maps hold (known: {}); `sources` lists the \
                 configured ones",
                known.join(", ")
            )
        })?),
        None => None,
    };
    // An entry belongs to a source when its category or one of its rules names a set of it.
    let of_source = |value: &PrefixRules| {
        ids.as_ref().is_none_or(|ids| {
            value.addr_category != category::NONE && ids.contains(&u32::from(value.addr_set))
                || value.rules[..usize::from(value.n_rules).min(value.rules.len())]
                    .iter()
                    .any(|rule| ids.contains(&u32::from(rule.set_id)))
        })
    };
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
    let mut entries: Vec<_> = entries.filter(|(_, value)| of_source(value)).collect();
    entries.sort_by_key(|(net, _)| *net);
    let rows: Vec<Row> = entries
        .into_iter()
        .map(|(net, value)| row(net, value, &catalog))
        .collect();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if global.json {
        super::write_json(&mut out, &rows)?;
    } else {
        write_text(&mut out, &rows)?;
    }
    out.flush()?;
    Ok(())
}

fn row<'a>(prefix: IpNet, value: &PrefixRules, catalog: &'a Catalog) -> Row<'a> {
    let rules = value.rules[..usize::from(value.n_rules).min(value.rules.len())]
        .iter()
        .map(|rule| {
            let PortRule {
                port_lo,
                port_hi,
                proto,
                category,
                set_id,
            } = *rule;
            Rule {
                proto: if proto == proto::TCP { "tcp" } else { "udp" },
                ports: Ports {
                    lo: port_lo,
                    hi: port_hi,
                },
                category: category::name(category),
                endpoint_set: set_id,
            }
        })
        .collect();
    let excluded = value.addr_category == category::NONE;
    Row {
        prefix,
        category: category::name(value.addr_category),
        endpoint_set: value.addr_set,
        service_area: (!excluded).then(|| catalog.service_area(value.addr_set)),
        rules,
    }
}

fn write_text(out: &mut impl std::io::Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<28} {:<9} {:<5} {:<11} RULES",
        "PREFIX", "CATEGORY", "SET", "AREA"
    )?;
    for Row {
        prefix,
        category,
        endpoint_set,
        service_area,
        rules,
    } in rows
    {
        let rules: Vec<String> = rules
            .iter()
            .map(|rule| {
                format!(
                    "{}/{} {}",
                    rule.proto,
                    rule.ports,
                    rule.category.unwrap_or("-")
                )
            })
            .collect();
        writeln!(
            out,
            "{:<28} {:<9} {endpoint_set:<5} {:<11} {}",
            prefix.to_string(),
            category.unwrap_or("excluded"),
            service_area.unwrap_or("-"),
            rules.join(", ")
        )?;
    }
    let v4 = rows
        .iter()
        .filter(|row| row.prefix.addr().is_ipv4())
        .count();
    writeln!(out, "\n{v4} IPv4 and {} IPv6 prefixes", rows.len() - v4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc};

    #[test]
    fn every_field_is_documented() {
        let rows = [Row {
            prefix: "40.96.0.0/13".parse().unwrap(),
            category: Some("Optimize"),
            endpoint_set: 1,
            service_area: Some("Exchange"),
            rules: vec![Rule {
                proto: "tcp",
                ports: Ports { lo: 587, hi: 587 },
                category: Some("Allow"),
                endpoint_set: 2,
            }],
        }];
        assert_documented_in(&rows, &module_doc(include_str!("prefixes.rs")));
        let mut text = Vec::new();
        write_text(&mut text, &rows).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(" tcp/587 Allow\n"), "{text}");
        assert!(text.ends_with("\n1 IPv4 and 0 IPv6 prefixes\n"), "{text}");
        assert_eq!(Ports { lo: 3478, hi: 3481 }.to_string(), "3478-3481");
    }
}
