//! Cost per packet with `BPF_PROG_TEST_RUN`: the floor (`XDP_PASS`), the parser alone, and the
//! classifier with the real feed and with synthetic tables, IPv4 and IPv6.
//!
//! Two ways, both reported: one packet repeated (`repeat` runs in the kernel: caches stay hot,
//! which flatters large tables), and many destinations (4096 frames, each in a different
//! installed prefix, one run each, cycled: the kernel times each run, so the syscall is not
//! counted, but the timer's own overhead is, as it is for the floor measured the same way).

use std::{net::IpAddr, time::Instant};

use anyhow::{Context as _, ensure};
use aya::{
    maps::Map,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use classifier_common::{Config, names};
use classifier_user::{
    EMBEDDED_FEED,
    compile::Compiled,
    datapath::{DEFAULT_POLICY, Datapath},
};

use crate::{
    Settings, frames,
    progs::{self, BenchProgs},
    report::{Figure, Section, Series},
    tables, vm_hwm_kib,
};

const XDP_PASS: u32 = 2;

/// What the cost section found, for the refresh section and the chart.
pub struct CostResults {
    pub section: Section,
    /// Loading each synthetic table from empty, and the kernel memory it takes.
    pub loads: Vec<Figure>,
    pub chart: Vec<Series>,
}

/// Average ns of one run of `prog` on `frame`, median over trials of `repeat` runs.
fn hot(prog: &Xdp, frame: &[u8], settings: &Settings) -> anyhow::Result<f64> {
    let mut trials = Vec::with_capacity(settings.hot_trials);
    for _ in 0..settings.hot_trials {
        let result = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: settings.hot_repeat,
            ..TestRunOptions::default()
        })?;
        ensure!(
            result.return_value == XDP_PASS,
            "verdict {}",
            result.return_value
        );
        trials.push(result.duration.as_secs_f64() * 1e9);
    }
    Ok(median(&mut trials))
}

/// Average ns of one run over `frames`, each run once per round.
fn many(prog: &Xdp, frames: &[Vec<u8>], settings: &Settings) -> anyhow::Result<f64> {
    let mut total = 0.0;
    let mut runs = 0u32;
    for _ in 0..settings.many_rounds {
        for frame in frames {
            let result = prog.test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            })?;
            total += result.duration.as_secs_f64() * 1e9;
            runs += 1;
        }
    }
    Ok(total / f64::from(runs.max(1)))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Frames to `dsts`, UDP to the Teams media port.
fn frames_to(dsts: &[IpAddr]) -> Vec<Vec<u8>> {
    dsts.iter()
        .map(|dst| frames::udp(*dst, frames::UDP_PORT))
        .collect()
}

/// The classifier's config without the flow table: every run is a first packet, classified
/// by the trie (what the "one packet" and "many destinations" rows measure).
fn first_packets() -> Config {
    Config {
        flags: classifier_common::flags::FLOWS_OFF,
        ..Config::default()
    }
}

/// Average ns of a packet of a known flow: the flow table on, the same frame repeated (its
/// first run records the flow, every later one hits it).
fn flow_hit(datapath: &mut Datapath, frame: &[u8], settings: &Settings) -> anyhow::Result<f64> {
    let mut maps = datapath.maps()?;
    maps.set_config(&Config::default())?;
    let result = hot(datapath.xdp()?, frame, settings);
    maps.set_config(&first_packets())?;
    result
}

/// The classifier loaded with private maps holding `compiled`; returns it and the seconds
/// the apply took.
pub fn load_classifier(compiled: &Compiled) -> anyhow::Result<(Datapath, f64)> {
    let mut datapath =
        Datapath::load_private(classifier_user::EBPF_OBJECT).context("loading the classifier")?;
    let mut maps = datapath.maps()?;
    maps.set_policy(DEFAULT_POLICY)?;
    maps.set_config(&first_packets())?;
    let start = Instant::now();
    maps.apply(compiled).context("filling the tries")?;
    Ok((datapath, start.elapsed().as_secs_f64()))
}

/// Kernel memory of one of the classifier's maps (`memlock` in its fdinfo: the kernel's own
/// accounting since 6.4).
fn map_memory_kib(datapath: &mut Datapath, name: &str) -> Option<f64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let Some(Map::LpmTrie(data)) = datapath.ebpf().map(name) else {
        return None;
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let bytes: f64 = info
        .lines()
        .find_map(|line| line.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()?;
    Some(bytes / 1024.0)
}

struct Family {
    name: &'static str,
    map: &'static str,
}

const V4: Family = Family {
    name: "IPv4",
    map: names::PREFIX_V4,
};
const V6: Family = Family {
    name: "IPv6",
    map: names::PREFIX_V6,
};

#[expect(
    clippy::too_many_lines,
    reason = "one measurement after the other, in order"
)]
pub fn run(settings: &Settings) -> anyhow::Result<CostResults> {
    let mut section = Section::new(
        "Cost per packet (BPF_PROG_TEST_RUN)",
        &format!(
            "one packet: median of {} trials of {} runs; many destinations: {} frames to \
             different installed prefixes, one run each, {} rounds (both without the flow \
             table: every run is a first packet); flow hit: the one packet again with the \
             flow table on, so every run but the first finds its flow; UDP to port {}, \
             60/78-byte frames",
            settings.hot_trials,
            settings.hot_repeat,
            settings.many_frames,
            settings.many_rounds,
            frames::UDP_PORT
        ),
    );
    let mut loads = Vec::new();

    let real = tables::compile_feed(EMBEDDED_FEED)?;
    let (real_v4, real_v6) = tables::destinations(&real, settings.many_frames, 1);
    let frames_v4 = frames_to(&real_v4);
    let frames_v6 = frames_to(&real_v6);

    let mut bench = BenchProgs::load(0, &[])?;
    let mut baselines = Vec::new();
    for (family, frames) in [(&V4, &frames_v4), (&V6, &frames_v6)] {
        let floor = bench.xdp(progs::PASS)?;
        let floor_hot = section.push(Figure::new(
            format!("floor (XDP_PASS), {}, one packet", family.name),
            hot(floor, &frames[0], settings)?,
            "ns",
        ));
        let floor_many = section.push(Figure::new(
            format!("floor (XDP_PASS), {}, many destinations", family.name),
            many(floor, frames, settings)?,
            "ns",
        ));
        let parse = bench.xdp(progs::PARSE)?;
        let parse_hot = section.push(
            Figure::new(
                format!("parse + count, {}, one packet", family.name),
                hot(parse, &frames[0], settings)?,
                "ns",
            )
            .vs(&floor_hot),
        );
        let parse_many = section.push(
            Figure::new(
                format!("parse + count, {}, many destinations", family.name),
                many(parse, frames, settings)?,
                "ns",
            )
            .vs(&floor_many),
        );
        baselines.push((floor_hot, floor_many, parse_hot, parse_many));
    }
    let parsed = bench.count(progs::slot::PARSED)?;
    ensure!(parsed.packets > 0, "the parse baseline parsed nothing");
    drop(bench);

    let over_parse = |figure: Figure, parse: &Figure| {
        let extra = figure.value - parse.value;
        figure.note(format!("{extra:+.1} ns over parse"))
    };

    // The real feed: both families in one load, as the agent installs it.
    let (mut datapath, _) = load_classifier(&real)?;
    for (index, (family, frames, count)) in [
        (&V4, &frames_v4, real.v4.len()),
        (&V6, &frames_v6, real.v6.len()),
    ]
    .into_iter()
    .enumerate()
    {
        let (floor_hot, floor_many, parse_hot, parse_many) = &baselines[index];
        let xdp = datapath.xdp()?;
        let figure = Figure::new(
            format!(
                "classifier, real feed ({count} {} prefixes), one packet",
                family.name
            ),
            hot(xdp, &frames[0], settings)?,
            "ns",
        )
        .vs(floor_hot);
        section.push(over_parse(figure, parse_hot));
        let figure = Figure::new(
            format!(
                "classifier, real feed ({count} {} prefixes), many destinations",
                family.name
            ),
            many(xdp, frames, settings)?,
            "ns",
        )
        .vs(floor_many);
        section.push(over_parse(figure, parse_many));
        let figure = Figure::new(
            format!(
                "classifier, real feed ({count} {} prefixes), flow hit",
                family.name
            ),
            flow_hit(&mut datapath, &frames[0], settings)?,
            "ns",
        )
        .vs(floor_hot);
        section.push(over_parse(figure, parse_hot));
    }
    drop(datapath);

    let mut hot_v4 = Vec::new();
    let mut many_v4 = Vec::new();
    let mut hot_v6 = Vec::new();
    let mut many_v6 = Vec::new();
    for &size in &settings.sizes {
        for (index, family) in [&V4, &V6].into_iter().enumerate() {
            let seed = 100 + size as u64 + index as u64;
            let compiled = if index == 0 {
                tables::synthetic_v4(size, seed)
            } else {
                tables::synthetic_v6(size, seed)
            };
            let (dst_v4, dst_v6) = tables::destinations(&compiled, settings.many_frames, seed);
            let frames = frames_to(if index == 0 { &dst_v4 } else { &dst_v6 });
            let (mut datapath, seconds) = load_classifier(&compiled)?;
            let label = size_label(size);
            loads.push(
                Figure::new(
                    format!("apply {label} {} prefixes to empty tries", family.name),
                    seconds * 1e3,
                    "ms",
                )
                .note(format!(
                    "{:.0} prefixes/s",
                    f64::from(u32::try_from(size).unwrap_or(u32::MAX)) / seconds
                )),
            );
            if let Some(kib) = map_memory_kib(&mut datapath, family.map) {
                loads.push(Figure::new(
                    format!(
                        "kernel memory of the {} trie, {label} prefixes",
                        family.name
                    ),
                    kib / 1024.0,
                    "MiB",
                ));
            }
            drop(compiled);
            let (floor_hot, floor_many, parse_hot, parse_many) = &baselines[index];
            let xdp = datapath.xdp()?;
            let one = hot(xdp, &frames[0], settings)?;
            let spread = many(xdp, &frames, settings)?;
            let figure = Figure::new(
                format!("classifier, {label} {} prefixes, one packet", family.name),
                one,
                "ns",
            )
            .vs(floor_hot);
            section.push(over_parse(figure, parse_hot));
            let figure = Figure::new(
                format!(
                    "classifier, {label} {} prefixes, many destinations",
                    family.name
                ),
                spread,
                "ns",
            )
            .vs(floor_many);
            section.push(over_parse(figure, parse_many));
            let figure = Figure::new(
                format!("classifier, {label} {} prefixes, flow hit", family.name),
                flow_hit(&mut datapath, &frames[0], settings)?,
                "ns",
            )
            .vs(floor_hot);
            section.push(over_parse(figure, parse_hot));
            #[expect(clippy::cast_precision_loss, reason = "at most a million")]
            let x = size as f64;
            if index == 0 {
                hot_v4.push((x, one));
                many_v4.push((x, spread));
            } else {
                hot_v6.push((x, one));
                many_v6.push((x, spread));
            }
        }
    }
    loads.push(Figure::new(
        "peak memory of the bench process (VmHWM) after the loads",
        vm_hwm_kib() / 1024.0,
        "MiB",
    ));

    let flat = |value: f64| {
        settings
            .sizes
            .iter()
            .map(|&size| {
                #[expect(clippy::cast_precision_loss, reason = "at most a million")]
                let x = size as f64;
                (x, value)
            })
            .collect::<Vec<_>>()
    };
    let chart = vec![
        Series {
            label: "classifier IPv4, one packet (hot)".to_owned(),
            color: "#1f77b4",
            dashed: false,
            points: hot_v4,
        },
        Series {
            label: "classifier IPv4, many destinations".to_owned(),
            color: "#d62728",
            dashed: false,
            points: many_v4,
        },
        Series {
            label: "classifier IPv6, one packet (hot)".to_owned(),
            color: "#1f77b4",
            dashed: true,
            points: hot_v6,
        },
        Series {
            label: "classifier IPv6, many destinations".to_owned(),
            color: "#d62728",
            dashed: true,
            points: many_v6,
        },
        Series {
            label: "parse + count IPv4 (no lookup)".to_owned(),
            color: "#7f7f7f",
            dashed: true,
            points: flat(baselines[0].2.value),
        },
        Series {
            label: "floor: XDP_PASS, one packet".to_owned(),
            color: "#2ca02c",
            dashed: false,
            points: flat(baselines[0].0.value),
        },
        Series {
            label: "floor: XDP_PASS, many dst.".to_owned(),
            color: "#2ca02c",
            dashed: true,
            points: flat(baselines[0].1.value),
        },
    ];
    Ok(CostResults {
        section,
        loads,
        chart,
    })
}

/// 10k, 100k, 1M.
#[must_use]
pub fn size_label(size: usize) -> String {
    match size {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
