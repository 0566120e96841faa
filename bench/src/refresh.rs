//! Map refresh: compiling and applying the real feed, a feed update, and (from the other
//! sections) large synthetic tables and the nftables equivalent.

use std::time::Instant;

use anyhow::{Context as _, ensure};

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
    /// The slowest periodic check (`Maps::check`) of a whole walk at a million prefixes a
    /// family.
    pub check_1m_ms: f64,
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
    let diff_ms = ready.value;
    let feed_alone = section.figures.last().cloned();
    union(&mut section, feed_alone.as_ref())?;
    let mut check_1m_ms = 0.0;
    for size in [100_000, 1_000_000] {
        check_1m_ms = check(&mut section, size)?;
    }
    Ok(Refresh {
        section,
        diff_ms,
        check_1m_ms,
    })
}

/// The agent's look for other writers before each poll, with `size` synthetic prefixes a
/// family in the tries: the full read-back and digest it took before (and takes at start),
/// against the periodic check (`Maps::check`: the kernel's counts and one window of each
/// trie), timed over a whole walk. Returns the slowest check's CPU time, in ms.
fn check(section: &mut Section, size: usize) -> anyhow::Result<f64> {
    use classifier_user::datapath::{Record, Verdict, Walk};
    let mut table = tables::synthetic_v4(size, 7);
    table.v6 = tables::synthetic_v6(size, 8).v6;
    let mut datapath = classifier_user::datapath::Datapath::load_private_sized(
        classifier_user::EBPF_OBJECT,
        &classifier_user::datapath::MapSizes::default(),
    )?;
    let mut maps = datapath.maps()?;
    maps.index_mut().context("index maps")?.disable()?;
    maps.apply(&table)?;
    let label = crate::cost::size_label(size);
    // The full read-back learns each trie's entry size in memlock, as at the agent's start.
    let (start, start_cpu) = (Instant::now(), thread_cpu_ms());
    let installed = maps.installed()?;
    let digest = installed.digest();
    let full = section.push(
        Figure::new(
            format!("look for other writers, {label} prefixes a family: full read-back (CPU)"),
            thread_cpu_ms() - start_cpu,
            "ms",
        )
        .note(format!(
            "the read and its digest, as before each poll until now; wall clock {:.0} ms",
            start.elapsed().as_secs_f64() * 1e3
        )),
    );
    ensure!(installed == table, "the tries do not hold the table");
    drop(installed);
    let start = Instant::now();
    let record = Record::of(&table, digest);
    let recorded = start.elapsed().as_secs_f64() * 1e3;
    let mut walk = Walk::default();
    // The kernel frees the maps of the sections before in the background (RCU callbacks,
    // which run in softirq and are charged to whatever thread they interrupt): let it finish
    // first, as a poll an hour apart would.
    std::thread::sleep(std::time::Duration::from_secs(2));
    // CPU time of this thread (user and kernel: the batch reads are syscalls), which the
    // other work of a shared machine does not inflate as it does the wall clock.
    let mut cpu_ms = Vec::with_capacity(record.bound());
    let mut wall_ms = Vec::with_capacity(record.bound());
    for _ in 0..record.bound() {
        let (start, start_cpu) = (Instant::now(), thread_cpu_ms());
        let verdict = maps.check(&record, &mut walk)?;
        cpu_ms.push(thread_cpu_ms() - start_cpu);
        wall_ms.push(start.elapsed().as_secs_f64() * 1e3);
        ensure!(verdict == Verdict::Unchanged, "a false alarm: {verdict:?}");
    }
    let count = f64::from(u32::try_from(cpu_ms.len().max(1))?);
    let slowest = |times: &[f64]| times.iter().copied().fold(0.0, f64::max);
    section.push(
        Figure::new(
            format!("look for other writers, {label} prefixes a family: periodic check (CPU)"),
            cpu_ms.iter().sum::<f64>() / count,
            "ms",
        )
        .note(format!(
            "1/{:.0} of the full read-back; mean CPU time of a whole walk of {} checks (an \
             in-place change is found within that many polls), p99 {:.2} ms, the slowest \
             {:.2} ms; wall clock mean {:.2} ms, slowest {:.2} ms; recording the table for it \
             took {recorded:.0} ms",
            full.value / (cpu_ms.iter().sum::<f64>() / count),
            cpu_ms.len(),
            {
                let mut sorted = cpu_ms.clone();
                sorted.sort_by(f64::total_cmp);
                sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
            },
            slowest(&cpu_ms),
            wall_ms.iter().sum::<f64>() / count,
            slowest(&wall_ms),
        ))
        .vs(&full),
    );
    let slowest = slowest(&cpu_ms);
    Ok(slowest)
}

const AWS: &[u8] = include_bytes!("../../tests/fixtures/providers/aws-ip-ranges-1753388594.json");
const AZURE: &[u8] =
    include_bytes!("../../tests/fixtures/providers/azure-service-tags-public-363.json");

/// The union of every AWS range, every Azure Service Tag and Microsoft 365, as the agent
/// builds it from three sources: parsed and checked, compiled, applied from empty, and added
/// to the maps holding the Microsoft 365 feed alone.
fn union(section: &mut Section, feed_alone: Option<&Figure>) -> anyhow::Result<()> {
    use classifier_user::{
        compile::compile_excluding,
        feed::Feed,
        gate::PrefixLimits,
        sources::{SourceConfig, source::filter_m365},
    };
    let source = |text: &str| -> anyhow::Result<SourceConfig> { Ok(toml::from_str(text)?) };
    let aws = source("name = \"aws\"\nkind = \"aws\"\npath = \"/aws.json\"")?;
    let azure = source("name = \"azure\"\nkind = \"azure-service-tags\"\npath = \"/a.json\"")?;
    let base = classifier_common::SOURCE_SET_BASE;
    let start = Instant::now();
    let mut sets = filter_m365(Feed::parse(EMBEDDED_FEED)?.sets, &[], false);
    let aws = aws.parse(base, AWS, PrefixLimits::default())?;
    let azure = azure.parse(base + 1, AZURE, PrefixLimits::default())?;
    let parsed = start.elapsed().as_secs_f64() * 1e3;
    section.push(
        Figure::new(
            "parse and check every AWS range and Azure Service Tag (6.2 MB)",
            parsed,
            "ms",
        )
        .note(format!(
            "AWS {} + {} and Azure {} + {} distinct IPv4 + IPv6 prefixes",
            aws.v4, aws.v6, azure.v4, azure.v6
        )),
    );
    sets.extend(aws.sets);
    sets.extend(azure.sets);
    let start = Instant::now();
    let union = compile_excluding(&sets, &[])?;
    section.push(
        Figure::new(
            "compile the AWS + Azure + Microsoft 365 union",
            start.elapsed().as_secs_f64() * 1e3,
            "ms",
        )
        .note(format!(
            "{} IPv4 + {} IPv6 entries",
            union.v4.len(),
            union.v6.len()
        )),
    );
    let loaded = load_classifier(&union)?;
    section.push(
        Figure::new(
            "apply the union from empty: the index live",
            loaded.report.ready.as_secs_f64() * 1e3,
            "ms",
        )
        .note(format!(
            "the tries filled after {:.0} ms",
            loaded.seconds * 1e3
        )),
    );
    drop(loaded);
    // The agent's own sizes (the default `[index] memory-mib`), holding the feed alone.
    let real = tables::compile_feed(EMBEDDED_FEED)?;
    let mut datapath = classifier_user::datapath::Datapath::load_private_sized(
        classifier_user::EBPF_OBJECT,
        &classifier_user::datapath::MapSizes::default(),
    )?;
    let mut maps = datapath.maps()?;
    maps.set_policy(classifier_user::datapath::DEFAULT_POLICY)?;
    maps.apply(&real)?;
    let installed = maps.installed()?;
    let start = Instant::now();
    let report = maps.apply_over(&installed, &union)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut figure = Figure::new(
        "apply the union over the Microsoft 365 feed alone (default sizes): the index live",
        report.ready.as_secs_f64() * 1e3,
        "ms",
    )
    .note(format!(
        "{} added, {} changed, {} unchanged; the tries' diff done after {:.0} ms, after \
         waiting {:.1} ms for the readers of the previous switch",
        report.added,
        report.changed,
        report.unchanged,
        seconds * 1e3,
        report
            .index
            .map_or(0.0, |index| index.grace.as_secs_f64() * 1e3)
    ));
    if let Some(error) = report.index_error {
        figure = figure.note(format!("no index: {error}"));
    }
    if let Some(alone) = feed_alone {
        figure = figure.vs(alone);
    }
    section.push(figure);
    Ok(())
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`: user and kernel), in ms.
fn thread_cpu_ms() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    #[expect(clippy::cast_precision_loss, reason = "ms of a bench run")]
    let ms = now.tv_sec as f64 * 1e3 + now.tv_nsec as f64 / 1e6;
    ms
}
