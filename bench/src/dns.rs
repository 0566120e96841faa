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

/// An Ethernet/IPv4/UDP frame from port 53 carrying an answer: `name` is `address`.
fn frame(name: &str, address: std::net::Ipv4Addr) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::new();
    message.set_message_type(MessageType::Response);
    message.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    message.add_answer(Record::from_rdata(
        Name::from_ascii(name)?,
        300,
        RData::A(rdata::A(address)),
    ));
    Ok(tests::packet::dns_answer_frame(&message.to_vec()?))
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
    config.state_dir = dir.join("state");
    if with_union {
        for (name, kind, body) in [("aws", "aws", AWS), ("azure", "azure-service-tags", AZURE)] {
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
        for name in ["aws", "azure"] {
            runtime.block_on(agent.refresh(name, true))?;
        }
    }
    let mut ring = datapath.take_dns_ring()?;
    let mut latencies = Vec::with_capacity(count as usize);
    for n in 0..count {
        // Names under svc.ms (set 39, URL-only), each a new address in 45.0.0.0/8.
        let address = std::net::Ipv4Addr::from(0x2d00_0000 | n);
        let frame = frame(&format!("host{n}.files.svc.ms"), address)?;
        datapath.dns()?.test_run(TestRunOptions {
            data_in: Some(&frame),
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

pub fn run(quick: bool) -> anyhow::Result<Section> {
    let mut section = Section::new(
        "Domain learning",
        "a DNS answer through breakout_dns (BPF_PROG_TEST_RUN stamps it), the ring buffer, the \
         agent's parse, match, fold and trie write, one answer at a time; until its address is in \
         the map (CLOCK_MONOTONIC); against one plain trie write",
    );
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
