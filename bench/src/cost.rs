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
use classifier_common::{Config, STEER_SLOTS, Uplinks, action, category, names};
use classifier_user::{
    EMBEDDED_FEED,
    compile::Compiled,
    datapath::{ApplyReport, DEFAULT_POLICY, Datapath, MapSizes},
    index,
};
use harness_common::Rng;

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
    pub goals: GoalInputs,
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

/// What steering between two direct uplinks adds to a direct packet, against one uplink in
/// the same load: `(first packet, one uplink; two; flow hit, one uplink; two)`, ns. Every
/// category goes direct for it (a tunnel verdict never reads the uplinks), and the rows
/// alternate the two uplinks slot by slot.
fn steering_cost(
    datapath: &mut Datapath,
    frame: &[u8],
    settings: &Settings,
) -> anyhow::Result<[f64; 4]> {
    let mut maps = datapath.maps()?;
    maps.set_policy([action::DIRECT; category::COUNT as usize])?;
    let mut two = Uplinks::ONE;
    two.count = 2;
    two.marks[..2].copy_from_slice(&[0x365, 0x366]);
    for row in &mut two.steer {
        for (slot, uplink) in row.iter_mut().enumerate().take(STEER_SLOTS) {
            *uplink = u8::from(slot % 2 == 1);
        }
    }
    let mut figures = [0.0; 4];
    for (at, uplinks) in [(0, Uplinks::ONE), (1, two)] {
        maps.set_uplinks(&uplinks)?;
        maps.clear_flows()?;
        figures[at] = hot(datapath.xdp()?, frame, settings)?;
        figures[at + 2] = flow_hit(datapath, frame, settings)?;
    }
    maps.set_uplinks(&Uplinks::ONE)?;
    maps.set_policy(DEFAULT_POLICY)?;
    maps.clear_flows()?;
    Ok(figures)
}

/// The classifier loaded with private maps holding `compiled`, its index sized for the table
/// (two halves of what it needs, as an operator sets `[index] memory-mib`).
pub struct Loaded {
    pub datapath: Datapath,
    /// The apply from empty: index first, then the tries.
    pub report: ApplyReport,
    /// The whole apply, tries included.
    pub seconds: f64,
}

/// Index map sizes that hold `compiled`: twice what one half needs.
pub fn index_sizes(compiled: &Compiled) -> anyhow::Result<MapSizes> {
    let mut capacity = classifier_common::index::FIRST_FREE_SLOT as usize + 8 * compiled.len();
    let built = loop {
        match index::build(compiled, u32::try_from(capacity)?) {
            Ok(built) => break built,
            Err(index::IndexError::Slots { .. }) => capacity *= 2,
        }
    };
    Ok(MapSizes {
        flows: None,
        index_slots: Some(2 * u32::try_from(built.slots.len())?),
    })
}

pub fn load_classifier(compiled: &Compiled) -> anyhow::Result<Loaded> {
    let mut datapath =
        Datapath::load_private_sized(classifier_user::EBPF_OBJECT, &index_sizes(compiled)?)
            .context("loading the classifier")?;
    let mut maps = datapath.maps()?;
    maps.set_policy(DEFAULT_POLICY)?;
    maps.set_config(&first_packets())?;
    // The index at every size, to measure it where the agent would keep to the tries too.
    maps.index_mut().context("index maps")?.walk_from(0);
    let start = Instant::now();
    let report = maps
        .apply(compiled)
        .context("filling the index and the tries")?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(report.index.is_some(), "no index: {:?}", report.index_error);
    Ok(Loaded {
        datapath,
        report,
        seconds,
    })
}

/// Kernel memory of one of the classifier's maps (`memlock` in its fdinfo: the kernel's own
/// accounting since 6.4).
fn map_memory_kib(datapath: &mut Datapath, name: &str) -> Option<f64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let (Map::LpmTrie(data) | Map::Array(data)) = datapath.ebpf().map(name)? else {
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

/// Switches the index on (rebuilt from the tries) or off.
fn use_index(datapath: &mut Datapath, on: bool) -> anyhow::Result<()> {
    let mut maps = datapath.maps()?;
    maps.index_mut().context("index maps")?.walk_from(0);
    if on {
        let installed = maps.installed()?;
        let report = maps.apply_over(&installed, &installed)?;
        ensure!(report.index.is_some(), "no index: {:?}", report.index_error);
    } else if let Some(index) = maps.index_mut() {
        index.disable()?;
    }
    Ok(())
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

/// Baselines of one family, from the same run.
struct Baselines {
    floor_hot: Figure,
    floor_many: Figure,
    parse_hot: Figure,
    parse_many: Figure,
}

/// What the classifier costs on one table in one mode.
struct Rows {
    one: f64,
    many: f64,
    hit: f64,
}

fn measure(
    datapath: &mut Datapath,
    frames: &[Vec<u8>],
    settings: &Settings,
) -> anyhow::Result<Rows> {
    let (one, hit) = first_and_hit(datapath, &frames[0], settings)?;
    let many = many(datapath.xdp()?, frames, settings)?;
    Ok(Rows { one, many, hit })
}

/// A first packet and a flow hit of the same frame (ns), their trials in turns so that the
/// machine's drift between them falls on both: each the median of its trials.
fn first_and_hit(
    datapath: &mut Datapath,
    frame: &[u8],
    settings: &Settings,
) -> anyhow::Result<(f64, f64)> {
    let one_trial = Settings {
        hot_trials: 1,
        sizes: Vec::new(),
        throughput_sizes: Vec::new(),
        ..*settings
    };
    let mut ones = Vec::with_capacity(settings.hot_trials);
    let mut hits = Vec::with_capacity(settings.hot_trials);
    for _ in 0..settings.hot_trials {
        ones.push(hot(datapath.xdp()?, frame, &one_trial)?);
        hits.push(flow_hit(datapath, frame, &one_trial)?);
    }
    Ok((median(&mut ones), median(&mut hits)))
}

/// Pushes the rows of the tries, then the index's against them; returns the index's.
fn push_rows(
    section: &mut Section,
    label: &str,
    base: &Baselines,
    tries: &Rows,
    index: &Rows,
) -> (Figure, Figure, Figure) {
    let over_parse = |figure: Figure, parse: &Figure| {
        let extra = figure.value - parse.value;
        figure.note(format!("{extra:+.1} ns over parse"))
    };
    let rows = [
        (
            "one packet",
            tries.one,
            index.one,
            &base.floor_hot,
            &base.parse_hot,
        ),
        (
            "many destinations",
            tries.many,
            index.many,
            &base.floor_many,
            &base.parse_many,
        ),
        (
            "flow hit",
            tries.hit,
            index.hit,
            &base.floor_hot,
            &base.parse_hot,
        ),
    ];
    let mut out = Vec::new();
    for (what, tries, index, floor, parse) in rows {
        let tries = section.push(over_parse(
            Figure::new(format!("classifier (tries), {label}, {what}"), tries, "ns").vs(floor),
            parse,
        ));
        out.push(section.push(over_parse(
            Figure::new(format!("classifier (index), {label}, {what}"), index, "ns").vs(&tries),
            parse,
        )));
    }
    let [one, many, hit] = <[Figure; 3]>::try_from(out).expect("three rows");
    (one, many, hit)
}

/// Traffic with the flow table on: `flows` flows over Zipf-ranked destinations, packets
/// drawn by Zipf from the flows (a few elephants, a long tail), and every packet a new flow.
fn mixes(
    datapath: &mut Datapath,
    dsts: &[IpAddr],
    settings: &Settings,
    seed: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut rng = Rng::new(seed);
    let flows = 4096.min(dsts.len() * 16).max(1);
    let zipf_dst = Zipf::new(dsts.len());
    let flow_frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let dst = dsts[zipf_dst.sample(&mut rng)];
            frames::udp_from(1024 + u16::try_from(i).unwrap_or(0), dst, frames::UDP_PORT)
        })
        .collect();
    let zipf_flow = Zipf::new(flows);
    let packets = settings.many_frames * settings.many_rounds;
    let order: Vec<usize> = (0..packets).map(|_| zipf_flow.sample(&mut rng)).collect();
    let mut maps = datapath.maps()?;
    maps.set_config(&Config::default())?;
    maps.clear_flows()?;
    let xdp = datapath.xdp()?;
    let mut total = 0.0;
    let mut started = std::collections::HashSet::new();
    for &flow in &order {
        total += once(xdp, &flow_frames[flow])?;
        started.insert(flow);
    }
    #[expect(clippy::cast_precision_loss, reason = "thousands")]
    let zipf = total / order.len() as f64;
    #[expect(clippy::cast_precision_loss, reason = "thousands")]
    let new_share = started.len() as f64 / order.len() as f64;
    // Every packet a new flow: each round's frames have fresh source ports, and the table is
    // emptied between rounds (not timed).
    let mut total = 0.0;
    let mut runs = 0u32;
    for round in 0..settings.many_rounds {
        maps.clear_flows()?;
        let xdp = datapath.xdp()?;
        for (i, dst) in dsts.iter().take(settings.many_frames).enumerate() {
            let sport = u16::try_from((i + round * 7919) % 60_000).unwrap_or(0) + 1024;
            total += once(xdp, &frames::udp_from(sport, *dst, frames::UDP_PORT))?;
            runs += 1;
        }
    }
    maps.clear_flows()?;
    maps.set_config(&first_packets())?;
    Ok((zipf, new_share, total / f64::from(runs.max(1))))
}

/// One run of `frame`, ns.
fn once(prog: &Xdp, frame: &[u8]) -> anyhow::Result<f64> {
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat: 1,
        ..TestRunOptions::default()
    })?;
    Ok(result.duration.as_secs_f64() * 1e9)
}

/// Zipf (s = 1) over `n` ranks, by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut sum = 0.0;
        #[expect(clippy::cast_precision_loss, reason = "thousands")]
        let cdf = (0..n.max(1))
            .map(|rank| {
                sum += 1.0 / (rank + 1) as f64;
                sum
            })
            .collect();
        Self { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        #[expect(clippy::cast_precision_loss, reason = "53 bits of randomness")]
        let pick = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cdf
            .partition_point(|&c| c < pick)
            .min(self.cdf.len() - 1)
    }
}

/// The figures the goals of the README's Performance section are computed from.
#[derive(Default)]
pub struct GoalInputs {
    /// (family, real feed many destinations, largest table many destinations) with the index.
    pub first_packet: Vec<(&'static str, f64, f64)>,
    /// (family, real feed flow hit, largest table flow hit).
    pub flow_hit: Vec<(&'static str, f64, f64)>,
    /// (family, real feed first packet, real feed flow hit), one packet repeated, the index.
    pub hit_vs_first: Vec<(&'static str, f64, f64)>,
    /// (family, ms until the index of the largest table was live, ms of the whole apply).
    pub load: Vec<(&'static str, f64, f64)>,
    /// (family, index MiB both halves, trie MiB) at the largest table.
    pub memory: Vec<(&'static str, f64, f64)>,
    pub largest: usize,
}

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
             flow table on, so every run but the first finds its flow; each with the index \
             and with the tries alone (index switched off), ratios index / tries; mixes (flow \
             table on): Zipf flows over Zipf destinations, and every packet a new flow; UDP to \
             port {}, 60/78-byte frames",
            settings.hot_trials,
            settings.hot_repeat,
            settings.many_frames,
            settings.many_rounds,
            frames::UDP_PORT
        ),
    );
    let mut loads = Vec::new();
    let mut goals = GoalInputs {
        largest: settings.sizes.iter().copied().max().unwrap_or(0),
        ..GoalInputs::default()
    };

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
        baselines.push(Baselines {
            floor_hot,
            floor_many,
            parse_hot,
            parse_many,
        });
    }
    let parsed = bench.count(progs::slot::PARSED)?;
    ensure!(parsed.packets > 0, "the parse baseline parsed nothing");
    drop(bench);

    let mut chart_points: [Vec<(f64, f64)>; 6] = Default::default();
    // The real feed: both families in one load, as the agent installs it.
    let mut real_rows = Vec::new();
    let Loaded { mut datapath, .. } = load_classifier(&real)?;
    for (index, (family, frames, dsts, count)) in [
        (&V4, &frames_v4, &real_v4, real.v4.len()),
        (&V6, &frames_v6, &real_v6, real.v6.len()),
    ]
    .into_iter()
    .enumerate()
    {
        let label = format!("real feed ({count} {} prefixes)", family.name);
        let with_index = measure(&mut datapath, frames, settings)?;
        use_index(&mut datapath, false)?;
        let tries = measure(&mut datapath, frames, settings)?;
        use_index(&mut datapath, true)?;
        let (one, many, hit) =
            push_rows(&mut section, &label, &baselines[index], &tries, &with_index);
        section.push(
            Figure::new(
                format!("classifier (index), {label}, flow hit / one packet"),
                hit.value / one.value,
                "x",
            )
            .note("a known flow against a first packet, both one packet repeated"),
        );
        goals.hit_vs_first.push((family.name, one.value, hit.value));
        let [one_1, one_2, hit_1, hit_2] = steering_cost(&mut datapath, &frames[0], settings)?;
        for (what, one, two) in [("one packet", one_1, one_2), ("flow hit", hit_1, hit_2)] {
            let one = section.push(Figure::new(
                format!("classifier (index), {label}, {what}, direct, one uplink"),
                one,
                "ns",
            ));
            section.push(
                Figure::new(
                    format!("classifier (index), {label}, {what}, direct, two uplinks steered"),
                    two,
                    "ns",
                )
                .vs(&one),
            );
        }
        let (zipf, share, fresh) = mixes(&mut datapath, dsts, settings, 7 + index as u64)?;
        push_mixes(&mut section, &label, zipf, share, fresh);
        real_rows.push((many.value, hit.value));
    }
    drop(datapath);

    for &size in &settings.sizes {
        for (index, family) in [&V4, &V6].into_iter().enumerate() {
            let seed = 100 + size as u64 + index as u64;
            let compiled = if index == 0 {
                tables::synthetic_v4(size, seed)
            } else {
                tables::synthetic_v6(size, seed)
            };
            let (dst_v4, dst_v6) = tables::destinations(&compiled, settings.many_frames, seed);
            let dsts = if index == 0 { dst_v4 } else { dst_v6 };
            let frames = frames_to(&dsts);
            let Loaded {
                mut datapath,
                report,
                seconds,
            } = load_classifier(&compiled)?;
            let label = size_label(size);
            let ready_ms = report.ready.as_secs_f64() * 1e3;
            #[expect(clippy::cast_precision_loss, reason = "at most a million")]
            let per_second = size as f64 / seconds;
            loads.push(
                Figure::new(
                    format!(
                        "apply {label} {} prefixes from empty: the index live",
                        family.name
                    ),
                    ready_ms,
                    "ms",
                )
                .note(format!(
                    "built in the idle half, then switched; {} slots, {} rule sets in {} copies",
                    report.index.map_or(0, |index| index.slots),
                    report.index.map_or(0, |index| index.rule_sets),
                    report.index.map_or(0, |index| index.rule_copies)
                )),
            );
            loads.push(
                Figure::new(
                    format!(
                        "apply {label} {} prefixes from empty: the tries filled too",
                        family.name
                    ),
                    seconds * 1e3,
                    "ms",
                )
                .note(format!(
                    "{per_second:.0} prefixes/s; the record, after the switch"
                )),
            );
            let start = Instant::now();
            let dumped = datapath.maps()?.installed()?.len();
            ensure!(dumped == size, "dumped {dumped} of {size} entries");
            loads.push(
                Figure::new(
                    format!("read {label} {} prefixes back from the tries", family.name),
                    start.elapsed().as_secs_f64() * 1e3,
                    "ms",
                )
                .note("BPF_MAP_LOOKUP_BATCH, as the agent checks what the maps hold"),
            );
            let trie_mib = map_memory_kib(&mut datapath, family.map).map(|kib| kib / 1024.0);
            if let Some(mib) = trie_mib {
                loads.push(Figure::new(
                    format!(
                        "kernel memory of the {} trie, {label} prefixes",
                        family.name
                    ),
                    mib,
                    "MiB",
                ));
            }
            let index_mib = [names::INDEX_SLOTS]
                .iter()
                .filter_map(|name| map_memory_kib(&mut datapath, name))
                .sum::<f64>()
                / 1024.0;
            let mut figure = Figure::new(
                format!(
                    "kernel memory of the index (both halves), {label} {} prefixes",
                    family.name
                ),
                index_mib,
                "MiB",
            );
            if let Some(mib) = trie_mib {
                figure = figure.note(format!("{:.2}x the trie", index_mib / mib));
            }
            loads.push(figure);
            drop(compiled);
            let with_index = measure(&mut datapath, &frames, settings)?;
            use_index(&mut datapath, false)?;
            let tries = measure(&mut datapath, &frames, settings)?;
            use_index(&mut datapath, true)?;
            let label = format!("{label} {} prefixes", family.name);
            let (_, many, hit) =
                push_rows(&mut section, &label, &baselines[index], &tries, &with_index);
            let (zipf, share, fresh) = mixes(&mut datapath, &dsts, settings, seed)?;
            push_mixes(&mut section, &label, zipf, share, fresh);
            #[expect(clippy::cast_precision_loss, reason = "at most a million")]
            let x = size as f64;
            let base = index * 3;
            chart_points[base].push((x, tries.many));
            chart_points[base + 1].push((x, with_index.many));
            chart_points[base + 2].push((x, with_index.hit));
            if size == goals.largest {
                goals
                    .first_packet
                    .push((family.name, real_rows[index].0, many.value));
                goals
                    .flow_hit
                    .push((family.name, real_rows[index].1, hit.value));
                goals.load.push((family.name, ready_ms, seconds * 1e3));
                goals
                    .memory
                    .push((family.name, index_mib, trie_mib.unwrap_or(0.0)));
            }
        }
    }
    working_set(&mut section, settings, goals.largest)?;
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
    let [tries_v4, index_v4, hit_v4, tries_v6, index_v6, hit_v6] = chart_points;
    let series = |label: &str, color, dashed, points| Series {
        label: label.to_owned(),
        color,
        dashed,
        points,
    };
    let chart = vec![
        series(
            "tries alone IPv4, many destinations",
            "#d62728",
            false,
            tries_v4,
        ),
        series(
            "tries alone IPv6, many destinations",
            "#d62728",
            true,
            tries_v6,
        ),
        series("index IPv4, many destinations", "#1f77b4", false, index_v4),
        series("index IPv6, many destinations", "#1f77b4", true, index_v6),
        series("flow hit IPv4", "#9467bd", false, hit_v4),
        series("flow hit IPv6", "#9467bd", true, hit_v6),
        series(
            "parse + count IPv4 (no lookup)",
            "#7f7f7f",
            true,
            flat(baselines[0].parse_many.value),
        ),
        series(
            "floor: XDP_PASS, many dst.",
            "#2ca02c",
            true,
            flat(baselines[0].floor_many.value),
        ),
    ];
    Ok(CostResults {
        section,
        loads,
        chart,
        goals,
    })
}

/// What a first packet costs as the destinations spread: the same frames, cycled over 1 to
/// 4096 different prefixes of the largest IPv4 table. The lookup's work stays the same; what
/// grows is the memory it touches that is not in a cache or the TLB.
fn working_set(section: &mut Section, settings: &Settings, size: usize) -> anyhow::Result<()> {
    let compiled = tables::synthetic_v4(size, 5);
    let Loaded { mut datapath, .. } = load_classifier(&compiled)?;
    let label = size_label(size);
    for count in [1usize, 64, 512, 4096] {
        let (dsts, _) = tables::destinations(&compiled, count, 9);
        let frames: Vec<Vec<u8>> = frames_to(&dsts)
            .into_iter()
            .cycle()
            .take(settings.many_frames)
            .collect();
        let index = many(datapath.xdp()?, &frames, settings)?;
        use_index(&mut datapath, false)?;
        let tries = many(datapath.xdp()?, &frames, settings)?;
        use_index(&mut datapath, true)?;
        let tries = section.push(Figure::new(
            format!("classifier (tries), {label} IPv4 prefixes, {count} destinations"),
            tries,
            "ns",
        ));
        section.push(
            Figure::new(
                format!("classifier (index), {label} IPv4 prefixes, {count} destinations"),
                index,
                "ns",
            )
            .vs(&tries),
        );
    }
    Ok(())
}

fn push_mixes(section: &mut Section, label: &str, zipf: f64, share: f64, fresh: f64) {
    section.push(
        Figure::new(
            format!("classifier (index), {label}, Zipf flows"),
            zipf,
            "ns",
        )
        .note(format!("{:.1}% of packets start a flow", share * 100.0)),
    );
    section.push(Figure::new(
        format!("classifier (index), {label}, every packet a new flow"),
        fresh,
        "ns",
    ));
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
