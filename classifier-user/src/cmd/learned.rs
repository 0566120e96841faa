//! `xdp-breakout learned`: the addresses the agent learned from DNS answers (`[dns] learn`),
//! as it last recorded them, and what answers did.
//!
//! JSON (stable): one object, [`Report`]: `{"addresses": [{"address", "name", "matched",
//! "set", "service_area", "category", "source", "expires"}], "counts": {"answers",
//! "learned", "refreshed", "ignored": {REASON: N}, "special", "capped", "excluded",
//! "evicted", "cap_hits": {"max_learned", "max_per_name"}, "refused": {REASON: N}},
//! "counted_at"}`; `expires` and `counted_at` are RFC 3339 UTC. `evicted` counts addresses a
//! full cap evicted for newer ones, `cap_hits` new addresses that found each cap full,
//! `capped` those refused because live flows held every candidate, `refused` answers refused
//! as untrusted (the kernel's and the agent's reasons).

use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cli::{GlobalArgs, LearnedArgs},
    dns::{CapHits, Counts},
    state::{LearnedRow, State},
};

/// What `learned` shows.
#[derive(Debug, Serialize)]
pub struct Report {
    /// One row per learned address and endpoint set, as the agent recorded it.
    pub addresses: Vec<LearnedRow>,
    /// Answers taken since the agent started, and what each did.
    pub counts: Counts,
    /// When the agent took `counts` (it writes them at most once a second while answers
    /// come; `/metrics` reads them live).
    pub counted_at: crate::time::Time,
}

pub fn run(global: &GlobalArgs, LearnedArgs {}: &LearnedArgs) -> anyhow::Result<()> {
    let dir = global.state_dir();
    // A missing directory has learned nothing. Any other failure is said as it is: root's
    // directory, read by another user, is "needs root", not "nothing learned".
    let learned = if matches!(dir.try_exists(), Ok(false)) {
        None
    } else {
        State::open_existing(&dir)?.learned()?
    };
    let learned = learned.with_context(|| {
        format!(
            "no learned addresses in {}: the agent learns with [dns] learn = true",
            dir.display()
        )
    })?;
    let report = Report {
        addresses: learned.rows,
        counts: learned.counts,
        counted_at: learned.counted_at,
    };
    let mut out = std::io::stdout().lock();
    if global.json {
        return super::write_json(&mut out, &report);
    }
    writeln!(
        out,
        "{:<40} {:<40} {:>6} {:<10} {:<10} EXPIRES",
        "ADDRESS", "NAME", "SET", "CATEGORY", "SOURCE"
    )?;
    for row in &report.addresses {
        writeln!(
            out,
            "{:<40} {:<40} {:>6} {:<10} {:<10} {}",
            row.address.to_string(),
            row.name,
            row.set,
            row.category,
            row.source,
            row.expires
        )?;
    }
    let Counts {
        answers,
        learned,
        refreshed,
        ignored,
        special,
        capped,
        excluded,
        refused,
        evicted,
        cap_hits: CapHits {
            max_learned,
            max_per_name,
        },
    } = &report.counts;
    let ignored: u64 = ignored.values().sum();
    writeln!(
        out,
        "{answers} answers: {learned} addresses learned, {refreshed} refreshed, {ignored} answers \
         ignored, {special} special-purpose, {excluded} excluded (counted at {})",
        report.counted_at
    )?;
    if max_learned + max_per_name != 0 {
        writeln!(
            out,
            "caps full: max-learned {max_learned} times, max-per-name {max_per_name} times; \
             {evicted} least recently used addresses evicted, {capped} refused (live flows \
             held every candidate)"
        )?;
    }
    let refusals: Vec<String> = refused
        .iter()
        .filter(|(_, count)| **count != 0)
        .map(|(why, count)| format!("{count} {}", why.replace('_', " ")))
        .collect();
    if !refusals.is_empty() {
        writeln!(out, "answers refused as untrusted: {}", refusals.join(", "))?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn every_field_is_documented() {
        let mut counts = Counts::default();
        counts.ignored.insert("malformed".into(), 1);
        let report = Report {
            addresses: vec![LearnedRow {
                address: "52.113.9.9".parse().unwrap(),
                name: "x.teams.microsoft.com".into(),
                matched: "x.teams.microsoft.com".into(),
                set: 12,
                service_area: "Skype".into(),
                category: "Allow".into(),
                source: "m365".into(),
                expires: crate::time::Time(0),
            }],
            counts,
            counted_at: crate::time::Time(0),
        };
        // REASON is a value, not a field: checked with the map emptied.
        let doc_sample = Report {
            counts: Counts::default(),
            ..report
        };
        assert_documented_in(&doc_sample, &module_doc(include_str!("learned.rs")));
        assert_documented_in(&doc_sample, readme_section());
    }
}
