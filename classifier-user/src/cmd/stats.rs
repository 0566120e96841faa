//! `xdp-breakout stats [--watch SECS]`: the counters, summed over CPUs.
//!
//! JSON schema (stable): `{"counters": {NAME: {"packets", "bytes"}, ...}, "categories":
//! {"Optimize": {"packets", "bytes"}, ...}, "endpoint_sets": [{"id", "service_area",
//! "category", "packets", "bytes"}, ...]}`, counter names as in the README's table. With
//! `--watch`, one such object per line and interval, each with `"interval_secs"` and, from the
//! second on, `"rates"`: `{NAME: {"pps", "bps"}}`.

use std::time::Duration;

use classifier_common::{Counter, stat};
use serde_json::{Map, Value, json};

use crate::{
    cli::{GlobalArgs, StatsArgs},
    datapath::Maps,
    explain::Catalog,
};

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
        return print(&mut out, global.json, &report(&now, None, 0, &catalog));
    };
    let mut previous = snapshot(&maps)?;
    print(
        &mut out,
        global.json,
        &report(&previous, None, secs, &catalog),
    )?;
    loop {
        std::thread::sleep(Duration::from_secs(secs));
        let now = snapshot(&maps)?;
        print(
            &mut out,
            global.json,
            &report(&now, Some(&previous), secs, &catalog),
        )?;
        previous = now;
    }
}

fn counter(c: Counter) -> Value {
    json!({"packets": c.packets, "bytes": c.bytes})
}

fn report(now: &Snapshot, previous: Option<&Snapshot>, secs: u64, catalog: &Catalog) -> Value {
    let counters: Map<String, Value> = stat::NAMED
        .iter()
        .map(|(index, name)| ((*name).to_owned(), counter(now.counters[*index as usize])))
        .collect();
    let mut categories: Map<String, Value> = Map::new();
    let mut rows = Vec::new();
    for (id, c) in &now.sets {
        let set = catalog.set(*id);
        let category = set.map_or_else(|| "unknown".to_owned(), |set| set.category.to_string());
        let sum = categories
            .entry(category.clone())
            .or_insert_with(|| counter(Counter::default()));
        sum["packets"] = json!(sum["packets"].as_u64().unwrap_or(0) + c.packets);
        sum["bytes"] = json!(sum["bytes"].as_u64().unwrap_or(0) + c.bytes);
        rows.push(json!({
            "id": id,
            "service_area": catalog.service_area(*id),
            "category": category,
            "packets": c.packets,
            "bytes": c.bytes,
        }));
    }
    let mut report = json!({"counters": counters, "categories": categories, "endpoint_sets": rows});
    if secs > 0 {
        report["interval_secs"] = json!(secs);
    }
    if let Some(previous) = previous {
        let rates: Map<String, Value> = stat::NAMED
            .iter()
            .map(|(index, name)| {
                let (a, b) = (now.counters[*index as usize], previous.counters[*index as usize]);
                let per_sec = |x: u64, y: u64| x.saturating_sub(y) / secs;
                ((*name).to_owned(), json!({"pps": per_sec(a.packets, b.packets), "bps": per_sec(a.bytes, b.bytes) * 8}))
            })
            .collect();
        report["rates"] = Value::Object(rates);
    }
    report
}

fn print(out: &mut impl std::io::Write, json: bool, report: &Value) -> anyhow::Result<()> {
    if json {
        // One object per line, so that `--watch --json` streams.
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let rates = report.get("rates");
    let u = |value: &Value| value.as_u64().unwrap_or(0);
    if rates.is_some() {
        writeln!(
            out,
            "{:<14} {:>14} {:>16} {:>12} {:>14}",
            "COUNTER", "PACKETS", "BYTES", "PPS", "BITS/S"
        )?;
    } else {
        writeln!(out, "{:<14} {:>14} {:>16}", "COUNTER", "PACKETS", "BYTES")?;
    }
    for (_, name) in stat::NAMED {
        let c = &report["counters"][name];
        write!(
            out,
            "{name:<14} {:>14} {:>16}",
            u(&c["packets"]),
            u(&c["bytes"])
        )?;
        if let Some(rates) = rates {
            write!(
                out,
                " {:>12} {:>14}",
                u(&rates[name]["pps"]),
                u(&rates[name]["bps"])
            )?;
        }
        writeln!(out)?;
    }
    if let Some(categories) = report["categories"].as_object().filter(|c| !c.is_empty()) {
        writeln!(out)?;
        writeln!(out, "{:<14} {:>14} {:>16}", "CATEGORY", "PACKETS", "BYTES")?;
        for (name, c) in categories {
            writeln!(
                out,
                "{name:<14} {:>14} {:>16}",
                u(&c["packets"]),
                u(&c["bytes"])
            )?;
        }
    }
    if let Some(sets) = report["endpoint_sets"].as_array().filter(|s| !s.is_empty()) {
        writeln!(out)?;
        writeln!(
            out,
            "{:<6} {:<12} {:<10} {:>14} {:>16}",
            "SET", "AREA", "CATEGORY", "PACKETS", "BYTES"
        )?;
        for set in sets {
            writeln!(
                out,
                "{:<6} {:<12} {:<10} {:>14} {:>16}",
                u(&set["id"]),
                set["service_area"].as_str().unwrap_or("-"),
                set["category"].as_str().unwrap_or("-"),
                u(&set["packets"]),
                u(&set["bytes"])
            )?;
        }
    }
    if rates.is_some() || report.get("interval_secs").is_some() {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}
