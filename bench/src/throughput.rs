//! Throughput over a veth pair in a private namespace.
//!
//! `bench_generate` runs in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel 5.18) on
//! a thread inside the namespace and redirects every frame to `va`; the kernel transmits it
//! into `vb`, where the thing under test runs, then the IP stack (prerouting, policy routing)
//! drops it on a blackhole route. The generator rewrites the IPv4 destination from a list of
//! 4096 addresses in installed prefixes: the same packets for every variant.
//!
//! A veth only takes redirected frames when its peer has NAPI: an XDP program or GRO
//! (Documentation/networking/... `veth_xdp_xmit` refuses them otherwise), so every variant has
//! an XDP program on `vb`; the baselines use `bench_pass`. The whole path runs on the
//! generator's CPU (the batch is flushed and `vb`'s NAPI polled when the test run re-enables
//! bottom halves), so each figure is the rate of generator plus receiver: compare them with
//! each other, not with a NIC.

use std::{net::IpAddr, time::Instant};

use anyhow::{Context as _, ensure};
use aya::programs::{TcAttachType, TestRun as _, TestRunAttrs, TestRunOptions, XdpMode, tc};
use classifier_common::{Config, flags, stat};
use classifier_user::{EMBEDDED_FEED, compile::Compiled, datapath::Datapath};
use tests::netns::{Netns, ifindex};

use crate::{
    Settings,
    cost::{load_classifier, size_label},
    frames, nft,
    progs::{self, BenchProgs},
    report::{Figure, Section, Series},
    tables,
};

const VA: &str = "va";
const VB: &str = "vb";
/// Frames per live-frames batch (the kernel's default is 64).
const BATCH: u32 = 64;

/// Classifier against nftables at one size, for the goals.
pub struct ThroughputGoal {
    pub label: String,
    pub size: usize,
    /// Packets per second, classifier / nftables.
    pub ratio: f64,
    /// ns the classifier adds over the baseline / ns nftables adds.
    pub added: f64,
}

pub struct ThroughputResults {
    pub section: Section,
    /// (table, Mpps with the flow table on / every packet classified).
    pub flow_gain: Vec<(String, f64)>,
    /// `nft -f` load times of each set, for the refresh section.
    pub nft_loads: Vec<Figure>,
    pub chart: Vec<Series>,
    pub goals: Vec<ThroughputGoal>,
}

/// Packets per second counted on `vb`, and offered by the generator.
struct Rate {
    received: f64,
    offered: f64,
}

impl Rate {
    fn mpps(&self) -> f64 {
        self.received / 1e6
    }

    /// Nanoseconds per packet of the whole path.
    fn ns(&self) -> f64 {
        1e9 / self.received.max(1.0)
    }
}

fn setup(netns: &Netns) -> anyhow::Result<()> {
    let mac = |mac: [u8; 6]| {
        mac.iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    netns.ip(&[
        "link",
        "add",
        VA,
        "address",
        &mac(frames::SRC_MAC),
        "type",
        "veth",
        "peer",
        "name",
        VB,
        "address",
        &mac(frames::DST_MAC),
    ])?;
    netns.ip(&["addr", "add", "10.200.0.1/24", "dev", VB])?;
    netns.ip(&["link", "set", VA, "up"])?;
    netns.ip(&["link", "set", VB, "up"])?;
    // A router: forwarding on, so that a packet without a route is dropped silently on the
    // blackhole (with forwarding off, ip_route_input answers with ICMP unreachable).
    netns.sysctl("net.ipv4.ip_forward=1")?;
    netns.sysctl("net.ipv4.conf.all.rp_filter=0")?;
    netns.sysctl("net.ipv4.conf.vb.rp_filter=0")?;
    netns.ip(&["route", "add", "blackhole", "default"])?;
    // Policy routing of the direct traffic, as deployed: marked packets use table 100.
    netns.ip(&["rule", "add", "fwmark", "0x365/0xffff", "lookup", "100"])?;
    netns.ip(&["route", "add", "blackhole", "default", "table", "100"])?;
    Ok(())
}

/// Runs the generator for the configured time; `received` reads the counter on `vb`.
fn pump(
    bench: &BenchProgs,
    frame: &[u8],
    settings: &Settings,
    received: &dyn Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<Rate> {
    let generator = bench.xdp_ref(progs::GENERATE)?;
    let push = || {
        generator
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: settings.live_repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::default()
            })
            .context("live-frames test run")
    };
    push()?; // warm up
    let generated = || Ok::<_, anyhow::Error>(bench.count(progs::slot::GENERATED)?.packets);
    let (r0, g0) = (received()?, generated()?);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < settings.throughput_secs {
        push()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let (r1, g1) = (received()?, generated()?);
    ensure!(r1 > r0, "nothing arrived on {VB}");
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    Ok(Rate {
        received: (r1 - r0) as f64 / seconds,
        offered: (g1 - g0) as f64 / seconds,
    })
}

/// A bench program on `vb` (and the tc counter when `tc_count`).
fn bench_receiver(
    dsts: &[IpAddr],
    frame: &[u8],
    settings: &Settings,
    xdp: &str,
    tc_count: bool,
) -> anyhow::Result<Rate> {
    let mut bench = BenchProgs::load(ifindex(VA)?, dsts)?;
    bench
        .xdp(xdp)?
        .attach(VB, XdpMode::Driver)
        .with_context(|| format!("attaching {xdp} to {VB}"))?;
    if tc_count {
        // tcx (6.6+) needs no qdisc; older kernels need clsact. Adding it is harmless.
        let _ = tc::qdisc_add_clsact(VB);
        bench.tc()?.attach(VB, TcAttachType::Ingress)?;
    }
    let slot = if tc_count {
        progs::slot::TC_COUNT
    } else {
        progs::slot::XDP_COUNT
    };
    pump(&bench, frame, settings, &|| Ok(bench.count(slot)?.packets))
    // Dropping `bench` detaches its programs.
}

/// The classifier on `vb`, loaded once per table: XDP `breakout` and tc `breakout_mark`,
/// attached for a round and detached after it. It counts its own verdicts.
struct Classifier {
    datapath: Datapath,
    /// Verdicts over every round, and the direct ones among them.
    all: u64,
    direct: u64,
}

impl Classifier {
    fn load(compiled: &Compiled) -> anyhow::Result<Self> {
        Ok(Self {
            datapath: load_classifier(compiled)?.datapath,
            all: 0,
            direct: 0,
        })
    }

    /// One round, with the flow table on (the default configuration) or off (every packet
    /// classified). The table keeps its flows from one round to the next, as on a router.
    fn round(
        &mut self,
        flows: bool,
        dsts: &[IpAddr],
        frame: &[u8],
        settings: &Settings,
    ) -> anyhow::Result<Rate> {
        self.datapath.maps()?.set_config(&if flows {
            Config::default()
        } else {
            Config {
                flags: flags::FLOWS_OFF,
                ..Config::default()
            }
        })?;
        let xdp = self
            .datapath
            .xdp()?
            .attach(VB, XdpMode::Driver)
            .context("attaching breakout")?;
        let _ = tc::qdisc_add_clsact(VB);
        let tc = self
            .datapath
            .tc(false)?
            .attach(VB, TcAttachType::Ingress)
            .context("attaching breakout_mark");
        let rate = tc.and_then(|tc| {
            let maps = self.datapath.maps()?;
            let verdicts = || -> anyhow::Result<(u64, u64)> {
                let stats = maps.stats()?;
                let direct = stats[stat::DIRECT as usize].packets;
                Ok((stats[stat::TUNNEL as usize].packets + direct, direct))
            };
            let bench = BenchProgs::load(ifindex(VA)?, dsts)?;
            let before = verdicts()?;
            let rate = pump(&bench, frame, settings, &|| Ok(verdicts()?.0));
            let after = verdicts()?;
            self.all += after.0 - before.0;
            self.direct += after.1 - before.1;
            drop(maps);
            self.datapath.tc(false)?.detach(tc)?;
            rate
        });
        self.datapath.xdp()?.detach(xdp)?;
        rate
    }

    /// Nanoseconds a packet spends in `breakout` on this path, by the kernel's own count
    /// (`BPF_ENABLE_STATS`, on for this round only: it adds its clock reads to every
    /// program), in a round with the flow table on or off.
    fn program_ns(
        &mut self,
        flows: bool,
        dsts: &[IpAddr],
        frame: &[u8],
        settings: &Settings,
    ) -> anyhow::Result<f64> {
        let _stats =
            aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
        let info = |datapath: &mut Datapath| -> anyhow::Result<(u128, u64)> {
            let info = datapath.xdp()?.info()?;
            Ok((info.run_time().as_nanos(), info.run_count()))
        };
        let (time0, count0) = info(&mut self.datapath)?;
        self.round(flows, dsts, frame, settings)?;
        let (time1, count1) = info(&mut self.datapath)?;
        ensure!(count1 > count0, "breakout ran no packet");
        #[expect(clippy::cast_precision_loss, reason = "times and counts")]
        Ok((time1 - time0) as f64 / (count1 - count0) as f64)
    }

    fn direct_share(&self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "packet counts")]
        let share = self.direct as f64 / self.all.max(1) as f64;
        share
    }
}

/// What one table's rounds measured: each variant's median packets per second.
struct Rounds {
    baseline: Rate,
    /// Every packet classified, then the flow table on.
    classifier: [Rate; 2],
    nft: Option<Rate>,
    direct_share: f64,
    /// `breakout`'s own ns a packet, every packet classified and the flow table on; and the
    /// same with [`FEW`] destinations (so as many flows), when asked for.
    program_ns: [f64; 2],
    few_ns: Option<[f64; 2]>,
}

/// Destinations of the rounds that show what the flow table's memory costs: their flows'
/// entries stay in the CPU's caches, 4096 flows' do not.
const FEW: usize = 64;

/// The median of one variant's rounds, and its spread as text.
fn median(mut rates: Vec<f64>) -> (Rate, String) {
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let spread = format!(
        "median of {} rounds, {:.2}-{:.2} Mpps",
        rates.len(),
        rates.first().copied().unwrap_or(0.0) / 1e6,
        rates.last().copied().unwrap_or(0.0) / 1e6
    );
    (
        Rate {
            received: median,
            offered: 0.0,
        },
        spread,
    )
}

/// Each variant once a round, in an order that turns by one each round, so that the drift of
/// a shared machine (seconds long, tens of percent) falls on every variant alike.
fn rounds(
    netns: &Netns,
    compiled: &Compiled,
    dsts: &[IpAddr],
    settings: &Settings,
    nft_loaded: bool,
    few: bool,
) -> anyhow::Result<(Rounds, [String; 4])> {
    let frame = frames::udp(dsts[0], frames::UDP_PORT);
    let mut classifier = Classifier::load(compiled)?;
    let mut rates: [Vec<f64>; 4] = Default::default();
    let variants = if nft_loaded { 4 } else { 3 };
    for round in 0..settings.throughput_rounds {
        for turn in 0..variants {
            let variant = (round + turn) % variants;
            let rate = match variant {
                0 => netns.run(|| bench_receiver(dsts, &frame, settings, progs::PASS, true))?,
                1 | 2 => netns.run(|| classifier.round(variant == 2, dsts, &frame, settings))?,
                _ => {
                    nft::hook(netns, true)?;
                    let rate =
                        netns.run(|| bench_receiver(dsts, &frame, settings, progs::PASS, true));
                    nft::hook(netns, false)?;
                    rate?
                }
            };
            rates[variant].push(rate.received);
        }
    }
    let mut program_ns = |dsts: &[IpAddr]| -> anyhow::Result<[f64; 2]> {
        Ok([
            netns.run(|| classifier.program_ns(false, dsts, &frame, settings))?,
            netns.run(|| classifier.program_ns(true, dsts, &frame, settings))?,
        ])
    };
    let few_ns = if few {
        Some(program_ns(&dsts[..FEW.min(dsts.len())])?)
    } else {
        None
    };
    let program_ns = program_ns(dsts)?;
    let [baseline, every, flows, nft] = rates.map(median);
    Ok((
        Rounds {
            baseline: baseline.0,
            classifier: [every.0, flows.0],
            nft: nft_loaded.then_some(nft.0),
            direct_share: classifier.direct_share(),
            program_ns,
            few_ns,
        },
        [baseline.1, every.1, flows.1, nft.1],
    ))
}

#[expect(
    clippy::too_many_lines,
    reason = "one measurement after the other, in order"
)]
pub fn run(settings: &Settings, with_nft: bool) -> anyhow::Result<ThroughputResults> {
    let mut section = Section::new(
        "Throughput over veth (live-frames generator -> va -> vb)",
        &format!(
            "IPv4 UDP 60-byte frames to 4096 destinations in installed prefixes, batches of \
             {BATCH}; at each table, {} rounds of {:.1} s of every variant, in turns, each \
             figure the median of its rounds; generator and receiver share one CPU, so compare \
             the variants with each other",
            settings.throughput_rounds, settings.throughput_secs
        ),
    );
    let mut nft_loads = Vec::new();
    let netns = Netns::new("xbb")?;
    setup(&netns)?;

    let real = tables::compile_feed(EMBEDDED_FEED)?;
    let mut tables_under_test = vec![("real feed".to_owned(), 0usize, real)];
    for &size in &settings.throughput_sizes {
        let compiled = tables::synthetic_v4(size, 200 + size as u64);
        tables_under_test.push((format!("{} IPv4", size_label(size)), size, compiled));
    }

    // Baselines, with the real feed's destinations.
    let (dsts, _) = tables::destinations(&tables_under_test[0].2, progs::MAX_DST, 7);
    let frame = frames::udp(dsts[0], frames::UDP_PORT);
    let (ceiling, counter, pass_tc) = netns.run(|| {
        anyhow::Ok((
            bench_receiver(&dsts, &frame, settings, progs::COUNT_DROP, false)?,
            bench_receiver(&dsts, &frame, settings, progs::COUNT, false)?,
            bench_receiver(&dsts, &frame, settings, progs::PASS, true)?,
        ))
    })?;
    let ceiling_figure = section.push(
        Figure::new(
            "harness ceiling: XDP counter, XDP_DROP",
            ceiling.mpps(),
            "Mpps",
        )
        .note(format!(
            "generator offered {:.2} Mpps",
            ceiling.offered / 1e6
        )),
    );
    section.push(
        Figure::new(
            "(a) XDP counter, XDP_PASS into the stack",
            counter.mpps(),
            "Mpps",
        )
        .vs(&ceiling_figure),
    );
    section.push(
        Figure::new(
            "(b) no classification: XDP_PASS + tc counter",
            pass_tc.mpps(),
            "Mpps",
        )
        .note(format!("{:.0} ns per packet, whole path", pass_tc.ns())),
    );

    let mut classifier_points = [Vec::new(), Vec::new()];
    let mut flow_gain = Vec::new();
    let mut goals = Vec::new();
    let mut nft_points = Vec::new();
    for (label, size, compiled) in &tables_under_test {
        let (dsts, _) = tables::destinations(compiled, progs::MAX_DST, 7);
        if with_nft {
            let load = nft::load(&netns, compiled)?;
            let mut figure = Figure::new(
                format!("nft -f: interval sets of {label} prefixes"),
                load.seconds * 1e3,
                "ms",
            );
            if let Some(kib) = load.peak_rss_kib {
                figure = figure.note(format!("nft peak RSS {:.0} MiB", kib / 1024.0));
            }
            nft_loads.push(figure);
        }
        let measured = rounds(&netns, compiled, &dsts, settings, with_nft, *size == 0);
        if with_nft {
            nft::unload(&netns)?;
        }
        let (measured, spreads) = measured?;
        let local = section.push(
            Figure::new(
                format!("(b) XDP_PASS + tc counter, {label} destinations"),
                measured.baseline.mpps(),
                "Mpps",
            )
            .note(spreads[0].clone()),
        );
        let local_ns = measured.baseline.ns();
        let mut classifier = Vec::new();
        for (flows, rate) in [false, true].into_iter().zip(&measured.classifier) {
            let extra = rate.ns() - local_ns;
            let name = if flows {
                format!("(c) classifier, flow table on, {label}")
            } else {
                format!("(c) classifier, every packet classified, {label}")
            };
            let figure = section.push(Figure::new(name, rate.mpps(), "Mpps").vs(&local).note(
                format!(
                    "{extra:+.0} ns per packet over (b); {:.0}% direct; {}",
                    measured.direct_share * 100.0,
                    spreads[1 + usize::from(flows)]
                ),
            ));
            if *size > 0 {
                #[expect(clippy::cast_precision_loss, reason = "at most a million")]
                classifier_points[usize::from(flows)].push((*size as f64, extra));
            }
            classifier.push((figure, extra));
        }
        if let [(every, _), (flows, _)] = &classifier[..] {
            flow_gain.push((label.clone(), flows.value / every.value));
        }
        let [every_ns, flows_ns] = measured.program_ns;
        let every_ns = section.push(
            Figure::new(
                format!("breakout's own time, every packet classified, {label}"),
                every_ns,
                "ns",
            )
            .note("kernel's bpf_stats over one more round, its clock reads included"),
        );
        section.push(
            Figure::new(
                format!("breakout's own time, flow table on, {label}"),
                flows_ns,
                "ns",
            )
            .vs(&every_ns),
        );
        if let Some([every_few, flows_few]) = measured.few_ns {
            let every_few = section.push(Figure::new(
                format!(
                    "breakout's own time, every packet classified, {label}, {FEW} destinations"
                ),
                every_few,
                "ns",
            ));
            section.push(
                Figure::new(
                    format!("breakout's own time, flow table on, {label}, {FEW} destinations"),
                    flows_few,
                    "ns",
                )
                .vs(&every_few)
                .note(format!(
                    "{FEW} flows, whose entries stay in the caches; {:.0} ns less than with 4096",
                    flows_ns - flows_few
                )),
            );
        }
        let Some(rate) = measured.nft else {
            continue;
        };
        let extra = rate.ns() - local_ns;
        let nft = section.push(
            Figure::new(format!("(d) nftables set, {label}"), rate.mpps(), "Mpps")
                .vs(&local)
                .note(format!(
                    "{extra:+.0} ns per packet over (b); {}",
                    spreads[3]
                )),
        );
        for ((figure, ours), what) in classifier
            .iter()
            .zip(["every packet classified", "flow table on"])
        {
            let ratio = section.push(
                Figure::new(
                    format!("classifier / nftables, {what}, {label}"),
                    figure.value / nft.value,
                    "x",
                )
                .note(format!(
                    "packets per second, same packets, same path; adds {:.2}x the ns nftables \
                     adds",
                    ours / extra
                )),
            );
            goals.push(ThroughputGoal {
                label: format!("{what}, {label}"),
                size: *size,
                ratio: ratio.value,
                added: ours / extra,
            });
        }
        if *size > 0 {
            #[expect(clippy::cast_precision_loss, reason = "at most a million")]
            nft_points.push((*size as f64, extra));
        }
    }
    let [every, flows] = classifier_points;
    let mut chart = vec![
        Series {
            label: "classifier, veth, every packet classified (ns over b)".to_owned(),
            color: "#8c564b",
            dashed: false,
            points: every,
        },
        Series {
            label: "classifier, veth, flow table on (ns over b)".to_owned(),
            color: "#8c564b",
            dashed: true,
            points: flows,
        },
    ];
    if with_nft {
        chart.push(Series {
            label: "nftables set, veth throughput (ns over b)".to_owned(),
            color: "#ff7f0e",
            dashed: false,
            points: nft_points,
        });
    }
    Ok(ThroughputResults {
        section,
        flow_gain,
        nft_loads,
        chart,
        goals,
    })
}
