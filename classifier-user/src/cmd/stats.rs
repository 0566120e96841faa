//! `xdp-breakout stats`: the counters, summed over CPUs.
//!
//! JSON schema (stable): `{"counters": {NAME: {"packets": N, "bytes": N}, ...},
//! "endpoint_sets": [{"id": N, "packets": N, "bytes": N}, ...]}` with the counter names of
//! `classifier_common::stat::NAMED`.

use std::io::Write as _;

use anyhow::Context as _;
use classifier_common::stat;
use serde_json::json;

use crate::{
    cli::{GlobalArgs, StatsArgs},
    datapath::Maps,
};

pub fn run(global: &GlobalArgs, StatsArgs {}: &StatsArgs) -> anyhow::Result<()> {
    let maps = Maps::from_pins(&global.pin_dir()).with_context(|| {
        format!(
            "reading counters in {} (is xdp-breakout attached?)",
            global.pin_dir().display()
        )
    })?;
    let counters = maps.stats()?;
    let sets = maps.set_stats()?;
    let mut out = std::io::stdout().lock();
    if global.json {
        let counters: serde_json::Map<String, serde_json::Value> = stat::NAMED
            .iter()
            .map(|(index, name)| {
                let c = counters[*index as usize];
                (
                    (*name).to_owned(),
                    json!({"packets": c.packets, "bytes": c.bytes}),
                )
            })
            .collect();
        let sets: Vec<_> = sets
            .iter()
            .map(|(id, c)| json!({"id": id, "packets": c.packets, "bytes": c.bytes}))
            .collect();
        serde_json::to_writer_pretty(
            &mut out,
            &json!({"counters": counters, "endpoint_sets": sets}),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:<14} {:>14} {:>16}", "COUNTER", "PACKETS", "BYTES")?;
    for (index, name) in stat::NAMED {
        let c = counters[index as usize];
        writeln!(out, "{name:<14} {:>14} {:>16}", c.packets, c.bytes)?;
    }
    if !sets.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<14} {:>14} {:>16}",
            "ENDPOINT SET", "PACKETS", "BYTES"
        )?;
        for (id, c) in sets {
            writeln!(out, "{id:<14} {:>14} {:>16}", c.packets, c.bytes)?;
        }
    }
    Ok(())
}
