//! Map refresh: compiling and applying the real feed, a feed update, and (from the other
//! sections) large synthetic tables and the nftables equivalent.

use std::time::Instant;

use classifier_user::EMBEDDED_FEED;

use crate::{
    cost::{Loaded, load_classifier},
    report::{Figure, Section},
    tables,
};

pub struct Refresh {
    pub section: Section,
    /// The real feed's update, until the index was live.
    pub diff_ms: f64,
}

pub fn run() -> anyhow::Result<Refresh> {
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
    let loaded = load_classifier(&real)?;
    section.push(
        Figure::new(
            "apply the 2026043000 feed from empty: the index live",
            loaded.report.ready.as_secs_f64() * 1e3,
            "ms",
        )
        .note(format!(
            "the tries filled after {:.2} ms",
            loaded.seconds * 1e3
        )),
    );
    drop(loaded);

    let old = tables::compile_feed(tables::FEED_2026033100)?;
    let Loaded { mut datapath, .. } = load_classifier(&old)?;
    let mut maps = datapath.maps()?;
    // The agent has the installed entries at hand (it dumps them to check the change).
    let installed = maps.installed()?;
    let start = Instant::now();
    let report = maps.apply_over(&installed, &real)?;
    let seconds = start.elapsed().as_secs_f64();
    let ready = section.push(
        Figure::new(
            "apply the update 2026033100 -> 2026043000: the index live",
            report.ready.as_secs_f64() * 1e3,
            "ms",
        )
        .note(format!(
            "{} added, {} changed, {} removed, {} unchanged; the tries' diff done after {:.2} \
             ms, after waiting {:.1} ms for the readers of the previous switch",
            report.added,
            report.changed,
            report.removed,
            report.unchanged,
            seconds * 1e3,
            report
                .index
                .map_or(0.0, |index| index.grace.as_secs_f64() * 1e3)
        )),
    );
    Ok(Refresh {
        section,
        diff_ms: ready.value,
    })
}
