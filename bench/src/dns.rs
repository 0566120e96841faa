//! Domain learning: from a DNS answer crossing tc egress (`breakout_dns`, run by
//! BPF_PROG_TEST_RUN, which stamps it) to its address in the map, through the agent's ring
//! reader path (ring buffer, parse, match, fold, write), one answer at a time as a client's
//! would come; with the real feed alone, with the AWS + Azure union installed, and with
//! 100k and 1M synthetic prefixes beside the feed (folding must not grow with the table).

use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use classifier_user::{
    agent::Agent, config::Config, cover::Cover, datapath::Datapath, state::State,
};
use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};

use crate::{
    cost,
    report::{Figure, Section},
};

const AWS: &[u8] = include_bytes!("../../tests/fixtures/providers/aws-ip-ranges-1753388594.json");
const AZURE: &[u8] =
    include_bytes!("../../tests/fixtures/providers/azure-service-tags-public-363.json");
/// The sources installed beside the feed in "the union": `[[sources]]` name, kind, file.
pub const UNION: [(&str, &str, &[u8]); 2] =
    [("aws", "aws", AWS), ("azure", "azure-service-tags", AZURE)];

/// A client's query for `name` (id `id`) and the resolver's answer, `name` is `address`: the
/// frames entering and leaving the LAN.
fn exchange(name: &str, id: u16, address: std::net::Ipv4Addr) -> anyhow::Result<[Vec<u8>; 2]> {
    let mut message = Message::new();
    message.set_id(id);
    message.set_message_type(MessageType::Query);
    message.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let query = tests::packet::dns_query_frame(&message.to_vec()?);
    message.set_message_type(MessageType::Response);
    message.add_answer(Record::from_rdata(
        Name::from_ascii(name)?,
        300,
        RData::A(rdata::A(address)),
    ));
    Ok([query, tests::packet::dns_answer_frame(&message.to_vec()?)])
}

/// What the agent holds beside the real feed while answers are learned.
#[derive(Clone, Copy)]
enum Installed {
    Feed,
    /// AWS's and Azure's files as two more sources.
    Union,
    /// A `cidr-list` source of this many synthetic IPv4 prefixes (`tables::synthetic_v4`).
    Synthetic(usize),
}

impl Installed {
    fn label(self) -> String {
        match self {
            Self::Feed => "the real feed".to_owned(),
            Self::Union => "AWS + Azure + the feed".to_owned(),
            Self::Synthetic(n) => format!("{} synthetic + the feed", cost::size_label(n)),
        }
    }

    /// The sources this adds to `config`, their files written under `dir`.
    fn sources(self, dir: &std::path::Path, config: &mut Config) -> anyhow::Result<Vec<String>> {
        let files: Vec<(&str, &str, Vec<u8>)> = match self {
            Self::Feed => Vec::new(),
            Self::Union => UNION
                .iter()
                .map(|(name, kind, body)| (*name, *kind, body.to_vec()))
                .collect(),
            Self::Synthetic(n) => {
                let mut list = String::new();
                for net in synthetic_list(n) {
                    let _ = writeln!(list, "{net}");
                }
                vec![("synthetic", "cidr-list", list.into_bytes())]
            }
        };
        let mut names = Vec::new();
        for (name, kind, body) in files {
            let path = dir.join(format!("{name}.source"));
            std::fs::write(&path, body)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            config.sources.push(toml::from_str(&format!(
                "name = \"{name}\"\nkind = \"{kind}\"\npath = \"{}\"",
                path.display()
            ))?);
            names.push(name.to_owned());
        }
        Ok(names)
    }
}

/// `n` distinct synthetic IPv4 prefixes a source accepts: `tables::synthetic_v4`'s without
/// special-purpose space, topped up from further draws (spread over each draw, so that the
/// top-up keeps its lengths' mix).
fn synthetic_list(n: usize) -> std::collections::BTreeSet<ipnet::IpNet> {
    let mut nets = std::collections::BTreeSet::new();
    let mut seed = 300 + n as u64;
    while nets.len() < n {
        let missing = n - nets.len();
        let size = if nets.is_empty() { n } else { 4 * missing };
        let draw: Vec<ipnet::IpNet> = crate::tables::synthetic_v4(size, seed)
            .v4
            .keys()
            .map(|key| {
                let addr = std::net::Ipv4Addr::from(key.addr);
                ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
                    addr,
                    u8::try_from(key.prefix_len).unwrap_or(32),
                ))
            })
            .filter(|net| {
                classifier_user::gate::special_block(*net).is_none() && !nets.contains(net)
            })
            .collect();
        let step = (draw.len() / missing).max(1);
        nets.extend(draw.into_iter().step_by(step).take(missing));
        seed += 1;
    }
    nets
}

/// Latencies of `count` answers learned one at a time, and the time of one plain trie write
/// (the baseline: what the fast path cannot go below).
fn measure(installed: Installed, count: u32) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let dir = std::env::temp_dir().join(format!(
        "xdp-breakout-bench-dns-{}-{}",
        std::process::id(),
        installed.label().replace(' ', "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut config = Config::default();
    config.dns.learn = true;
    config.dns.resolvers = vec![
        tests::packet::RESOLVER
            .parse::<std::net::SocketAddr>()?
            .ip(),
    ];
    config.state_dir = dir.join("state");
    let names = installed.sources(&dir, &mut config)?;
    let mut datapath = Datapath::load_private(classifier_user::EBPF_OBJECT)?;
    let maps = datapath.maps()?;
    let mut agent = Agent::new(config, maps, State::open(&dir.join("state"))?)?;
    agent.apply_settings()?;
    agent.start()?;
    if !names.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        for name in &names {
            runtime.block_on(agent.refresh(name, true))?;
        }
    }
    let mut ring = datapath.take_dns_ring()?;
    let mut latencies = Vec::with_capacity(count as usize);
    for n in 0..count {
        // Names under svc.ms (set 39, URL-only), each a new address in 45.0.0.0/8.
        let address = std::net::Ipv4Addr::from(0x2d00_0000 | n);
        // The id tells the queries apart (one client port); the count fits in 16 bits.
        let id = u16::try_from(n)?;
        let [query, answer] = exchange(&format!("host{n}.files.svc.ms"), id, address)?;
        // The query enters the LAN (flagged by the XDP program, recorded by tc ingress's
        // tail call), the answer leaves it (matched, copied).
        datapath.xdp()?.test_run(TestRunOptions {
            data_in: Some(&query),
            ..TestRunOptions::default()
        })?;
        datapath.tc(false)?.test_run(TestRunOptions {
            data_in: Some(&query),
            ..TestRunOptions::default()
        })?;
        datapath.dns()?.test_run(TestRunOptions {
            data_in: Some(&answer),
            ..TestRunOptions::default()
        })?;
        let mut records = Vec::new();
        while let Some(item) = ring.next() {
            records.extend(classifier_user::dns::record(&item));
        }
        latencies.extend(agent.learn(&records));
        // The daemon applies the whole table after a burst; here every 256 answers.
        if n % 256 == 255 {
            agent.settle();
        }
    }
    // The baseline: one trie write of the same kind, timed alone.
    let mut maps = datapath.maps()?;
    let value = classifier_common::PrefixRules::EMPTY;
    let start = Instant::now();
    for n in 0..1000u32 {
        maps.insert_prefix(
            ipnet::IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                0x2e00_0000 | n,
            ))),
            &value,
        )?;
    }
    let write = start.elapsed() / 1000;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((latencies, write))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// Average ns of a program on `frame`, `repeat` runs in the kernel, median of 5.
fn per_packet(datapath: &mut Datapath, tc: bool, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let mut trials = Vec::new();
    for _ in 0..5 {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let result = if tc {
            datapath.tc(true)?.test_run(options)?
        } else {
            datapath.xdp()?.test_run(options)?
        };
        trials.push(result.duration.as_secs_f64() * 1e9);
    }
    trials.sort_by(f64::total_cmp);
    Ok(trials[2])
}

/// What recording queries costs: a query through `breakout_tc` (the classifier at tc
/// ingress, which records it by a tail call), and another packet through the XDP program
/// (which only tests a flag), each with recording off and on; the flow table off, so every
/// run classifies.
fn recording_cost(section: &mut Section, quick: bool) -> anyhow::Result<()> {
    let mut datapath = Datapath::load_private(classifier_user::EBPF_OBJECT)?;
    let mut maps = datapath.maps()?;
    let repeat = if quick { 20_000 } else { 200_000 };
    let [query, _] = exchange("host.files.svc.ms", 7, std::net::Ipv4Addr::new(45, 0, 0, 1))?;
    let other = tests::packet::udp_frame(
        tests::packet::CLIENT.parse()?,
        "10.0.3.2:443".parse()?,
        &[0u8; 40],
    );
    let mut figures = Vec::new();
    for recording in [false, true] {
        let mut flags = classifier_common::flags::FLOWS_OFF;
        if recording {
            flags |= classifier_common::flags::DNS_QUERIES;
        }
        maps.set_config(&classifier_common::Config {
            flags,
            ..classifier_common::Config::default()
        })?;
        figures.push((
            per_packet(&mut datapath, true, &query, repeat)?,
            per_packet(&mut datapath, false, &other, repeat)?,
        ));
    }
    let [(query_off, other_off), (query_on, other_on)] = figures[..] else {
        anyhow::bail!("two settings measured");
    };
    let base = section.push(Figure::new(
        "a DNS query at tc ingress (breakout_tc), recording off",
        query_off,
        "ns",
    ));
    section.push(
        Figure::new(
            "the same, recorded (tail call, copy, walk, insert)",
            query_on,
            "ns",
        )
        .vs(&base),
    );
    let other_base = section.push(Figure::new(
        "another packet through XDP, recording off",
        other_off,
        "ns",
    ));
    section.push(
        Figure::new("the same, recording on (a flag tested)", other_on, "ns").vs(&other_base),
    );
    Ok(())
}

/// What the covering index costs at `n` synthetic prefixes beside the real feed: its build
/// (each time a source's file changes), its heap, and one address's lookup.
fn index_cost(section: &mut Section, n: usize) -> anyhow::Result<()> {
    let feed = classifier_user::feed::Feed::parse(classifier_user::EMBEDDED_FEED)?;
    let synthetic = [classifier_user::feed::EndpointSet {
        id: 4096,
        service_area: "synthetic".to_owned(),
        category: classifier_user::feed::Category::Direct,
        prefixes: synthetic_list(n).into_iter().collect(),
        tcp: Vec::new(),
        udp: Vec::new(),
        by_address: true,
    }];
    let tables = [feed.sets.as_slice(), synthetic.as_slice()];
    let mut builds = Vec::new();
    let mut cover = Cover::default();
    for _ in 0..3 {
        let start = Instant::now();
        cover = Cover::build(tables);
        builds.push(start.elapsed());
    }
    builds.sort_unstable();
    let (lengths_v4, lengths_v6) = cover.lengths();
    section.push(
        Figure::new(
            format!(
                "covering index: build ({} synthetic + the feed)",
                cost::size_label(n)
            ),
            builds[1].as_secs_f64() * 1e3,
            "ms",
        )
        .note(format!(
            "median of 3; {} prefixes, {lengths_v4} IPv4 and {lengths_v6} IPv6 lengths",
            cover.len()
        )),
    );
    #[expect(clippy::cast_precision_loss, reason = "a size in MiB, to two decimals")]
    let mib = cover.heap_bytes() as f64 / f64::from(1 << 20);
    section.push(Figure::new(
        format!(
            "covering index: heap ({} synthetic + the feed)",
            cost::size_label(n)
        ),
        mib,
        "MiB",
    ));
    let count = 100_000u32;
    let addresses: Vec<std::net::IpAddr> = (0..count)
        .map(|i| std::net::Ipv4Addr::from(i.wrapping_mul(0x9e37_79b9)).into())
        .collect();
    let start = Instant::now();
    let found: usize = addresses
        .iter()
        .map(|address| std::hint::black_box(cover.covering(*address)).len())
        .sum();
    let per = start.elapsed().as_secs_f64() * 1e9 / f64::from(count);
    section.push(
        Figure::new(
            format!(
                "covering index: one IPv4 address's lookup ({} synthetic + the feed)",
                cost::size_label(n)
            ),
            per,
            "ns",
        )
        .note(format!(
            "{count} random addresses, {found} covering prefixes found"
        )),
    );
    Ok(())
}

/// The section, and the goal's figure: the p99 with the AWS + Azure union installed, ms.
pub struct Learning {
    pub section: Section,
    pub union_p99_ms: f64,
}

pub fn run(quick: bool) -> anyhow::Result<Learning> {
    let mut section = Section::new(
        "Domain learning",
        "a client's query through the XDP program and tc ingress (recorded), its answer through breakout_dns \
         (matched, stamped; BPF_PROG_TEST_RUN), the ring buffer, the agent's checks, parse, \
         match, fold and trie write, one answer at a time; until its address is in the map \
         (CLOCK_MONOTONIC); against one plain trie write. First, what recording queries costs \
         a packet",
    );
    recording_cost(&mut section, quick)?;
    index_cost(&mut section, 1_000_000)?;
    let count = if quick { 500 } else { 2000 };
    let mut union_p99_ms = f64::NAN;
    for installed in [
        Installed::Feed,
        Installed::Union,
        Installed::Synthetic(100_000),
        Installed::Synthetic(1_000_000),
    ] {
        let what = installed.label();
        let (mut latencies, write) = measure(installed, count)?;
        anyhow::ensure!(
            latencies.len() == count as usize,
            "{} of {count} answers learned",
            latencies.len()
        );
        latencies.sort_unstable();
        let baseline = section.push(Figure::new(
            format!("one trie write ({what} installed)"),
            write.as_secs_f64() * 1e6,
            "us",
        ));
        let p99 = quantile(&latencies, 0.99);
        if matches!(installed, Installed::Union) {
            union_p99_ms = p99.as_secs_f64() * 1e3;
        }
        section.push(
            Figure::new(
                format!("answer to map, p99 ({what} installed)"),
                p99.as_secs_f64() * 1e6,
                "us",
            )
            .vs(&baseline)
            .note(format!(
                "p50 {:.0} us, max {:.0} us, {count} answers",
                quantile(&latencies, 0.5).as_secs_f64() * 1e6,
                latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e6
            )),
        );
    }
    Ok(Learning {
        section,
        union_p99_ms,
    })
}
