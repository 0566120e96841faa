//! `xdp-breakout stats [--watch SECS]`: the counters, summed over CPUs.
//!
//! JSON (stable): one object, [`Report`]: `{"counters": {NAME: {"packets", "bytes"}, ...},
//! "categories": {"Optimize": {"packets", "bytes"}, ...}, "sources": {"m365": {"packets",
//! "bytes"}, ...}, "endpoint_sets": [{"id", "source", "service_area", "category", "packets",
//! "bytes"}, ...]}`, counter names as in the README's
//! table. With `--watch`, one such object per line and interval, each with `"interval_secs"`
//! and, from the second on, `"rates"`: `{NAME: {"pps", "bps"}}`.

use std::{collections::BTreeMap, time::Duration};

use classifier_common::{Counter, category, stat};
use serde::{Serialize, Serializer};

use crate::{
    cli::{GlobalArgs, StatsArgs},
    datapath::Maps,
    explain::Catalog,
};

/// The counters at one moment.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Every counter, by the name of the README's table.
    pub counters: ByCounter<Traffic>,
    /// The endpoint sets' counts summed per category of the feed (`Optimize`, `Allow`,
    /// `Default`, or `unknown` for a set no feed the maps hold names).
    pub categories: BTreeMap<&'a str, Traffic>,
    /// The endpoint sets' counts summed per source (`m365`, a `[[sources]]` name,
    /// `operator`, or `unknown`).
    pub sources: BTreeMap<&'a str, Traffic>,
    /// Each endpoint set that counted packets, by id.
    pub endpoint_sets: Vec<SetRow<'a>>,
    /// With `--watch`: the seconds between reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// With `--watch`, from the second report on: each counter's rate over the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<ByCounter<Rate>>,
}

/// Packets and bytes, summed over CPUs since the maps were created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Packets counted.
    pub packets: u64,
    /// Their bytes, from the Ethernet header on.
    pub bytes: u64,
}

impl From<Counter> for Traffic {
    fn from(counter: Counter) -> Self {
        let Counter { packets, bytes } = counter;
        Self { packets, bytes }
    }
}

/// A counter's rate over the last interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Packets per second.
    pub pps: u64,
    /// Bits per second.
    pub bps: u64,
}

/// The packets an endpoint set decided.
#[derive(Debug, Serialize)]
pub struct SetRow<'a> {
    /// The set's id in the feed (0: the operator's `include` prefixes).
    pub id: u16,
    /// The source it belongs to, as in `sources`.
    pub source: &'a str,
    /// Its service area (`Exchange`, `Skype`, ...; `operator`; `unknown` when no feed the
    /// maps hold names the set).
    pub service_area: &'a str,
    /// Its category, as in `categories`.
    pub category: &'a str,
    /// Its `packets` and `bytes` (flattened into the row).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// One value per counter, in the order of [`stat::NAMED`]; a JSON object keyed by the
/// counters' names.
#[derive(Debug)]
pub struct ByCounter<T>(Vec<(&'static str, T)>);

impl<T> ByCounter<T> {
    fn new(mut value: impl FnMut(usize) -> T) -> Self {
        Self(
            stat::NAMED
                .iter()
                .map(|(index, name)| (*name, value(*index as usize)))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl<T: Serialize> Serialize for ByCounter<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

struct Snapshot {
    counters: Vec<Counter>,
    sets: Vec<(u16, Counter)>,
}

fn snapshot(maps: &Maps) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        counters: maps.stats()?,
        sets: maps.set_stats()?,
    })
}

pub fn run(global: &GlobalArgs, args: &StatsArgs) -> anyhow::Result<()> {
    let maps = super::pinned_maps(global)?;
    let catalog = Catalog::load(&global.state_dir(), &maps.installed()?);
    let mut out = std::io::stdout().lock();
    let Some(secs) = args.watch else {
        let now = snapshot(&maps)?;
        return print(&mut out, global.json, &report(&now, None, None, &catalog));
    };
    let mut previous = snapshot(&maps)?;
    print(
        &mut out,
        global.json,
        &report(&previous, None, Some(secs), &catalog),
    )?;
    loop {
        std::thread::sleep(Duration::from_secs(secs));
        let now = snapshot(&maps)?;
        print(
            &mut out,
            global.json,
            &report(&now, Some(&previous), Some(secs), &catalog),
        )?;
        previous = now;
    }
}

/// The report of `now`; with `--watch` (`interval_secs`), the rates since `previous`.
fn report<'a>(
    now: &Snapshot,
    previous: Option<&Snapshot>,
    interval_secs: Option<u64>,
    catalog: &'a Catalog,
) -> Report<'a> {
    let mut categories: BTreeMap<&str, Traffic> = BTreeMap::new();
    let mut sources: BTreeMap<&str, Traffic> = BTreeMap::new();
    let mut endpoint_sets = Vec::new();
    for (id, counter) in &now.sets {
        let category = catalog.set(*id).map_or("unknown", |set| {
            category::name(set.category.code()).unwrap_or("unknown")
        });
        let sum = categories.entry(category).or_default();
        sum.packets += counter.packets;
        sum.bytes += counter.bytes;
        let source = catalog.source_of(*id).unwrap_or("unknown");
        let sum = sources.entry(source).or_default();
        sum.packets += counter.packets;
        sum.bytes += counter.bytes;
        endpoint_sets.push(SetRow {
            id: *id,
            source,
            service_area: catalog.service_area(*id),
            category,
            traffic: (*counter).into(),
        });
    }
    let rates = previous.zip(interval_secs).map(|(previous, secs)| {
        ByCounter::new(|index| {
            let (a, b) = (now.counters[index], previous.counters[index]);
            let per_sec = |x: u64, y: u64| x.saturating_sub(y) / secs;
            Rate {
                pps: per_sec(a.packets, b.packets),
                bps: per_sec(a.bytes, b.bytes) * 8,
            }
        })
    });
    Report {
        counters: ByCounter::new(|index| now.counters[index].into()),
        categories,
        sources,
        endpoint_sets,
        interval_secs,
        rates,
    }
}

fn print(out: &mut impl std::io::Write, json: bool, report: &Report<'_>) -> anyhow::Result<()> {
    if json {
        // One object per line, so that `--watch --json` streams.
        super::write_json_line(out, report)?;
    } else {
        report.write_text(out)?;
    }
    out.flush()?;
    Ok(())
}

impl Report<'_> {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            counters,
            categories,
            sources,
            endpoint_sets,
            interval_secs,
            rates,
        } = self;
        if rates.is_some() {
            writeln!(
                out,
                "{:<22} {:>14} {:>16} {:>12} {:>14}",
                "COUNTER", "PACKETS", "BYTES", "PPS", "BITS/S"
            )?;
        } else {
            writeln!(out, "{:<22} {:>14} {:>16}", "COUNTER", "PACKETS", "BYTES")?;
        }
        // 22: the longest counter's name (`dns_untrusted_resolver`).
        for (name, Traffic { packets, bytes }) in &counters.0 {
            write!(out, "{name:<22} {packets:>14} {bytes:>16}")?;
            if let Some(rates) = rates {
                let Rate { pps, bps } = rates.get(name).copied().unwrap_or(Rate { pps: 0, bps: 0 });
                write!(out, " {pps:>12} {bps:>14}")?;
            }
            writeln!(out)?;
        }
        if !categories.is_empty() {
            writeln!(out)?;
            writeln!(out, "{:<14} {:>14} {:>16}", "CATEGORY", "PACKETS", "BYTES")?;
            for (name, Traffic { packets, bytes }) in categories {
                writeln!(out, "{name:<14} {packets:>14} {bytes:>16}")?;
            }
        }
        if !sources.is_empty() {
            writeln!(out)?;
            writeln!(out, "{:<16} {:>14} {:>16}", "SOURCE", "PACKETS", "BYTES")?;
            for (name, Traffic { packets, bytes }) in sources {
                writeln!(out, "{name:<16} {packets:>14} {bytes:>16}")?;
            }
        }
        if !endpoint_sets.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "{:<6} {:<16} {:<12} {:<10} {:>14} {:>16}",
                "SET", "SOURCE", "AREA", "CATEGORY", "PACKETS", "BYTES"
            )?;
            for SetRow {
                id,
                source,
                service_area,
                category,
                traffic: Traffic { packets, bytes },
            } in endpoint_sets
            {
                writeln!(
                    out,
                    "{id:<6} {source:<16} {service_area:<12} {category:<10} {packets:>14} {bytes:>16}"
                )?;
            }
        }
        if interval_secs.is_some() {
            writeln!(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn every_field_is_documented() {
        let counter = Counter {
            packets: 4,
            bytes: 400,
        };
        let now = Snapshot {
            counters: vec![counter; classifier_common::STATS_LEN as usize],
            sets: vec![(11, counter)],
        };
        let catalog = Catalog::load(
            std::path::Path::new("/nonexistent"),
            &crate::compile::Compiled::default(),
        );
        let report = report(&now, Some(&now), Some(1), &catalog);
        assert_eq!(report.categories["unknown"], counter.into());
        assert_eq!(
            report.rates.as_ref().and_then(|r| r.get("direct")),
            Some(&Rate { pps: 0, bps: 0 })
        );
        // Counter names are values, not fields: those maps are checked empty, and a rate alone.
        let sample = Report {
            counters: ByCounter(Vec::new()),
            rates: Some(ByCounter(Vec::new())),
            categories: BTreeMap::new(),
            sources: BTreeMap::new(),
            ..report
        };
        let rate = Rate { pps: 1, bps: 8 };
        for doc in [
            module_doc(include_str!("stats.rs")).as_str(),
            readme_section(),
        ] {
            assert_documented_in(&sample, doc);
            assert_documented_in(&rate, doc);
        }
    }
}
