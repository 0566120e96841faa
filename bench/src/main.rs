//! xdp-breakout's benchmarks (`cargo xtask bench [--quick]`; needs root): cost per packet with
//! `BPF_PROG_TEST_RUN`, throughput over a veth pair in a private namespace against nftables,
//! map refresh times, domain learning, and the real agent's steady-state bill (CPU and memory
//! idle and learning, a scrape of /metrics at 65k flows). Every figure is printed next to its
//! baseline from the same run; a JSON report and an SVG chart are written under
//! `target/bench/`. Benchmarks report, they never assert on timing.

mod bill;
mod cost;
mod dns;
mod frames;
mod goals;
mod nft;
mod progs;
mod refresh;
mod report;
mod tables;
mod throughput;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::Parser;

use crate::report::{Machine, Report, svg_chart};

#[derive(Parser)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line switches, each independent"
)]
#[command(
    name = "bench",
    about = "xdp-breakout benchmarks (root: BPF and network namespaces)"
)]
struct Cli {
    /// About a minute: fewer repeats, shorter runs, no 1M-prefix nftables set.
    #[arg(long)]
    quick: bool,
    /// Where report.json and cost-per-packet.svg go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Skip the veth throughput runs (and with them the nftables figures).
    #[arg(long)]
    no_throughput: bool,
    /// Skip nftables (also when `nft` is not installed).
    #[arg(long)]
    no_nft: bool,
    /// Only the domain learning section, printed (no report written): what recording DNS
    /// queries costs a packet, and an answer's way to the map.
    #[arg(long)]
    dns_only: bool,
    /// Only the agent's steady-state bill, printed (no report written): its CPU and memory
    /// idle and learning, and what a scrape of /metrics costs at 65k flows.
    #[arg(long)]
    bill_only: bool,
    /// Only the veth throughput runs, printed (no report written).
    #[arg(long, conflicts_with_all = ["dns_only", "bill_only", "refresh_only", "no_throughput"])]
    throughput_only: bool,
    /// Only the map refresh section, printed (no report written): applies, reads and the
    /// periodic check for other writers.
    #[arg(long, conflicts_with_all = ["dns_only", "bill_only"])]
    refresh_only: bool,
}

/// How long and how often to measure.
pub struct Settings {
    pub hot_repeat: u32,
    pub hot_trials: usize,
    pub many_frames: usize,
    pub many_rounds: usize,
    /// Synthetic table sizes for the cost per packet (and table loads).
    pub sizes: Vec<usize>,
    /// Seconds of one throughput round, and rounds of each variant.
    pub throughput_secs: f64,
    pub throughput_rounds: usize,
    /// Frames per live-frames test run.
    pub live_repeat: u32,
    /// Synthetic IPv4 table sizes for throughput (the real feed is always measured).
    pub throughput_sizes: Vec<usize>,
}

impl Settings {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                hot_repeat: 100_000,
                hot_trials: 3,
                many_frames: 4096,
                many_rounds: 2,
                sizes: vec![1_000, 10_000, 100_000, 1_000_000],
                throughput_secs: 0.4,
                throughput_rounds: 3,
                live_repeat: 1 << 16,
                throughput_sizes: vec![10_000, 100_000],
            }
        } else {
            Self {
                hot_repeat: 1_000_000,
                hot_trials: 5,
                many_frames: 4096,
                many_rounds: 8,
                sizes: vec![1_000, 10_000, 100_000, 1_000_000],
                throughput_secs: 1.0,
                throughput_rounds: 5,
                live_repeat: 1 << 16,
                throughput_sizes: vec![10_000, 100_000, 1_000_000],
            }
        }
    }
}

/// Peak resident set of this process (`VmHWM`), KiB.
#[must_use]
pub fn vm_hwm_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_kib(&status, "VmHWM:"))
        .unwrap_or(0.0)
}

/// A `kB` field of a `/proc/<pid>/status` text.
#[must_use]
pub fn status_kib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether the nftables figures are measured: `nft` is installed and not turned off.
fn with_nft(cli: &Cli) -> bool {
    let installed = !cli.no_nft && nft_installed();
    if !cli.no_nft && !installed {
        println!("nft is not installed: skipping the nftables figures (apt-get install nftables)");
    }
    installed
}

fn nft_installed() -> bool {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// One section alone, printed (no report written): whether the command line asked for one.
fn only(cli: &Cli, settings: &Settings) -> anyhow::Result<bool> {
    if cli.dns_only {
        let learning = dns::run(cli.quick).context("domain learning")?;
        learning.section.print();
        let mut goals = report::Section::new("Goals", "the one of domain learning");
        goals.push(goals::dns(learning.union_p99_ms));
        goals.print();
        return Ok(true);
    }
    if cli.bill_only {
        bill::run(cli.quick).context("the agent's bill")?.print();
        return Ok(true);
    }
    if cli.throughput_only {
        throughput::run(settings, with_nft(cli))
            .context("throughput over veth")?
            .section
            .print();
        return Ok(true);
    }
    if cli.refresh_only {
        let refresh = refresh::run().context("map refresh")?;
        refresh.section.print();
        let mut goals = report::Section::new("Goals", "the one of the periodic check");
        goals.push(goals::check(refresh.check_1m_ms));
        goals.print();
        return Ok(true);
    }
    Ok(false)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    classifier_user::datapath::ensure_bpffs()?;
    let settings = Settings::new(cli.quick);
    let machine = Machine::probe();
    println!(
        "xdp-breakout benchmarks ({}): {}, {} cores, {} MiB, {}",
        if cli.quick { "quick" } else { "full" },
        machine.cpu,
        machine.cores,
        machine.memory_mib,
        machine.kernel
    );
    if only(cli, &settings)? {
        return Ok(());
    }
    let with_nft = with_nft(cli);

    let cost = cost::run(&settings).context("cost per packet")?;
    cost.section.print();
    let mut refresh = refresh::run().context("map refresh")?;
    refresh.section.figures.extend(cost.loads.iter().cloned());
    let mut chart = cost.chart;
    let mut sections = vec![cost.section];
    let mut throughput_goals = Vec::new();
    let mut flow_gain = Vec::new();
    if cli.no_throughput {
        println!("\n(skipping throughput)");
    } else {
        let throughput = throughput::run(&settings, with_nft).context("throughput over veth")?;
        throughput.section.print();
        refresh.section.figures.extend(throughput.nft_loads);
        chart.extend(throughput.chart);
        sections.push(throughput.section);
        throughput_goals = throughput.goals;
        flow_gain = throughput.flow_gain;
    }
    refresh.section.print();
    sections.push(refresh.section);
    let dns = dns::run(cli.quick).context("domain learning")?;
    dns.section.print();
    sections.push(dns.section);
    let bill = bill::run(cli.quick).context("the agent's bill")?;
    bill.print();
    sections.push(bill);
    let goals = goals::section(
        &cost.goals,
        &throughput_goals,
        &flow_gain,
        refresh.diff_ms,
        refresh.check_1m_ms,
        dns.union_p99_ms,
    );
    goals.print();
    sections.push(goals);

    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let report = Report {
        machine,
        mode: if cli.quick { "quick" } else { "full" },
        command: format!(
            "cargo xtask bench{}",
            if cli.quick { " --quick" } else { "" }
        ),
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        sections,
    };
    let json = cli.out.join("report.json");
    report.write_json(&json)?;
    let svg = cli.out.join("cost-per-packet.svg");
    let subtitle = format!(
        "{}, {} cores, {}; test runs measure the XDP program alone, veth lines the whole path",
        report.machine.cpu, report.machine.cores, report.machine.kernel
    );
    std::fs::write(
        &svg,
        svg_chart("xdp-breakout: cost per packet", &subtitle, &chart),
    )
    .with_context(|| format!("writing {}", svg.display()))?;
    println!(
        "\nwrote {} and {} in {:.0} s",
        json.display(),
        svg.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
