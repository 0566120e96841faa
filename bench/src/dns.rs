//! Domain learning: from a DNS answer crossing tc egress (`breakout_dns`, run by
//! BPF_PROG_TEST_RUN, which stamps it) to its address in the map, through the agent's ring
//! reader path (ring buffer, parse, match, fold, write), one answer at a time as a client's
//! would come; with the real feed alone and with the AWS + Azure union installed.

use std::{
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use classifier_user::{agent::Agent, config::Config, datapath::Datapath, state::State};
use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};

use crate::report::{Figure, Section};

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

/// Latencies of `count` answers learned one at a time, and the time of one plain trie write
/// (the baseline: what the fast path cannot go below).
fn measure(with_union: bool, count: u32) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let dir = std::env::temp_dir().join(format!(
        "xdp-breakout-bench-dns-{}-{with_union}",
        std::process::id()
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
    if with_union {
        for (name, kind, body) in UNION {
            let path = dir.join(format!("{name}.json"));
            std::fs::write(&path, body)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            config.sources.push(toml::from_str(&format!(
                "name = \"{name}\"\nkind = \"{kind}\"\npath = \"{}\"",
                path.display()
            ))?);
        }
    }
    let mut datapath = Datapath::load_private(classifier_user::EBPF_OBJECT)?;
    let maps = datapath.maps()?;
    let mut agent = Agent::new(config, maps, State::open(&dir.join("state"))?)?;
    agent.apply_settings()?;
    agent.start()?;
    if with_union {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        for (name, _, _) in UNION {
            runtime.block_on(agent.refresh(name, true))?;
        }
    }
    let mut ring = datapath.take_dns_ring()?;
    let mut latencies = Vec::with_capacity(count as usize);
    for n in 0..count {
        // Names under svc.ms (set 39, URL-only), each a new address in 45.0.0.0/8.
        let address = std::net::Ipv4Addr::from(0x2d00_0000 | n);
        // The id tells the queries apart (one client port); 2,000 fit in 16 bits.
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

pub fn run(quick: bool) -> anyhow::Result<Section> {
    let mut section = Section::new(
        "Domain learning",
        "a client's query through the XDP program and tc ingress (recorded), its answer through breakout_dns \
         (matched, stamped; BPF_PROG_TEST_RUN), the ring buffer, the agent's checks, parse, \
         match, fold and trie write, one answer at a time; until its address is in the map \
         (CLOCK_MONOTONIC); against one plain trie write. First, what recording queries costs \
         a packet",
    );
    recording_cost(&mut section, quick)?;
    let count = if quick { 500 } else { 2000 };
    for (with_union, what) in [(false, "the real feed"), (true, "AWS + Azure + the feed")] {
        let (mut latencies, write) = measure(with_union, count)?;
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
    Ok(section)
}
