//! Map refresh: compiling and applying the real feed, a feed update, and (from the other
//! sections) large synthetic tables and the nftables equivalent.

use std::time::Instant;

use classifier_user::{EMBEDDED_FEED, datapath::Datapath};

use crate::{
    cost::load_classifier,
    report::{Figure, Section},
    tables,
};

pub fn run() -> anyhow::Result<Section> {
    let mut section = Section::new(
        "Map refresh",
        "Maps::apply (the agent's diff-apply: new and changed entries, then stale ones) into \
         the classifier's tries; nft -f of a ruleset with the same prefixes in interval sets",
    );
    let start = Instant::now();
    let real = tables::compile_feed(EMBEDDED_FEED)?;
    section.push(
        Figure::new(
            "parse + compile the 2026043000 feed",
            start.elapsed().as_secs_f64() * 1e3,
            "ms",
        )
        .note(format!("{} entries", real.len())),
    );
    let (_, seconds) = load_classifier(&real)?;
    section.push(Figure::new(
        "apply the 2026043000 feed to empty tries",
        seconds * 1e3,
        "ms",
    ));

    let old = tables::compile_feed(tables::FEED_2026033100)?;
    let (mut datapath, _): (Datapath, f64) = load_classifier(&old)?;
    let mut maps = datapath.maps()?;
    let start = Instant::now();
    let report = maps.apply(&real)?;
    section.push(
        Figure::new(
            "apply the update 2026033100 -> 2026043000",
            start.elapsed().as_secs_f64() * 1e3,
            "ms",
        )
        .note(format!(
            "{} added, {} changed, {} removed, {} unchanged",
            report.added, report.changed, report.removed, report.unchanged
        )),
    );
    Ok(section)
}
