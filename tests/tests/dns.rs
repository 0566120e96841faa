//! DNS learning through the real capture path: `breakout_dns` run by BPF_PROG_TEST_RUN on
//! DNS answers copies them into its ring buffer, the agent reads them from there, learns the
//! addresses of URL-only endpoint sets into the live tries at once (folded with the prefixes
//! that cover them), names them in `lookup`, forgets them when their time is up, and takes a
//! corpus of malformed answers without learning anything or stopping.

use std::{net::IpAddr, time::Duration};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use classifier_common::{category, proto, stat};
use classifier_user::{
    agent::Agent,
    config::Config,
    datapath::{Datapath, Maps},
    explain::{Catalog, Oracle},
    state::State,
};
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};
use tests::{
    FEED_2026043000, TempDir,
    http::{FeedServer, Reply},
    packet::dns_answer_frame,
};

const TC_ACT_UNSPEC: u32 = u32::MAX;

fn answer(question: &str, records: Vec<Record>, code: ResponseCode) -> Vec<u8> {
    let mut message = Message::new();
    message.set_id(7);
    message.set_message_type(MessageType::Response);
    message.set_response_code(code);
    message.add_query(Query::query(
        Name::from_ascii(question).unwrap(),
        RecordType::A,
    ));
    message.add_answers(records);
    message.to_vec().unwrap()
}

fn a(name: &str, addr: &str, ttl: u32) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).unwrap(),
        ttl,
        RData::A(rdata::A(addr.parse().unwrap())),
    )
}

fn cname(name: &str, target: &str) -> Record {
    Record::from_rdata(
        Name::from_ascii(name).unwrap(),
        60,
        RData::CNAME(rdata::CNAME(Name::from_ascii(target).unwrap())),
    )
}

type Ring = aya::maps::RingBuf<aya::maps::MapData>;

/// Runs `breakout_dns` on each frame; returns what its ring buffer (`ring`) then holds.
fn capture(datapath: &mut Datapath, ring: &mut Ring, frames: &[Vec<u8>]) -> Vec<(u64, Vec<u8>)> {
    for frame in frames {
        let result = datapath
            .dns()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .map_err(|error: ProgramError| error.to_string())
            .unwrap();
        assert_eq!(result.return_value, TC_ACT_UNSPEC, "never drops");
    }
    let mut records = Vec::new();
    while let Some(item) = ring.next() {
        records.push(classifier_user::dns::record(&item).expect("a DnsRecord"));
    }
    records
}

/// An agent learning from DNS on private maps, the real feed applied from a local server.
fn learning_agent(
    state_dir: &TempDir,
    tweak: impl FnOnce(&mut Config),
) -> Option<(Datapath, Agent)> {
    let server = FeedServer::start();
    let mut config = Config::default();
    config.feed.url = server.url();
    config.feed.allow_http = true;
    config.dns.learn = true;
    tweak(&mut config);
    config.validate().unwrap();
    let mut datapath = tests::load_private(&classifier_user::datapath::MapSizes::default())?;
    let maps = datapath.maps().unwrap();
    let mut agent = Agent::new(config, maps, State::open(&state_dir.0).unwrap()).unwrap();
    agent.apply_settings().unwrap();
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    tests::runtime()
        .block_on(agent.refresh("m365", false))
        .unwrap();
    Some((datapath, agent))
}

fn stats(maps: &Maps, index: u32) -> u64 {
    maps.stats().unwrap()[index as usize].packets
}

#[test]
fn the_capture_copies_answers_to_clients_and_counts_the_rest() {
    let Some(mut datapath) = tests::load_private(&classifier_user::datapath::MapSizes::default())
    else {
        return;
    };
    let maps = datapath.maps().unwrap();
    let message = answer(
        "storage.live.com.",
        vec![a("storage.live.com.", "13.107.42.13", 300)],
        ResponseCode::NoError,
    );
    let big = answer(
        "big.example.",
        (0..100)
            .map(|i| a("big.example.", &format!("13.107.{i}.1"), 60))
            .collect(),
        ResponseCode::NoError,
    );
    assert!(big.len() > classifier_common::DNS_MAX_MESSAGE);
    let mut not_dns = dns_answer_frame(&message);
    not_dns[34..36].copy_from_slice(&5353u16.to_be_bytes());
    let mut ring = datapath.take_dns_ring().unwrap();
    let records = capture(
        &mut datapath,
        &mut ring,
        &[
            dns_answer_frame(&message),
            dns_answer_frame(&big),
            not_dns,
            vec![0u8; 60],
        ],
    );
    assert_eq!(records.len(), 1, "only the answer from port 53 that fits");
    assert_eq!(records[0].1, message, "the message, byte for byte");
    assert!(records[0].0 > 0 && records[0].0 <= classifier_user::datapath::monotonic_ns());
    assert_eq!(
        (
            stats(&maps, stat::DNS_COPIED),
            stats(&maps, stat::DNS_TOO_BIG)
        ),
        (1, 1)
    );
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn learned_addresses_are_in_the_map_at_once_named_by_lookup_and_forgotten() {
    let state_dir = TempDir::new("dns-learn");
    let Some((mut datapath, mut agent)) = learning_agent(&state_dir, |config| {
        config.dns.min_ttl = Duration::from_secs(1);
        config.dns.grace = Duration::ZERO;
        config.dns.max_ttl = Duration::from_secs(2);
    }) else {
        return;
    };
    // Set 27 (Default, Skype, TCP 443) has names and no addresses; set 50 (*.microsoft.com,
    // Default, TCP 443) too. 52.113.9.9 lies in Teams' 52.112.0.0/14 (Optimize for UDP
    // 3478-3481, Allow for TCP/UDP 443 and TCP 80).
    let frames = [
        dns_answer_frame(&answer(
            "join.secure.skypeassets.com.",
            vec![
                cname("join.secure.skypeassets.com.", "edge.azureedge.example."),
                a("edge.azureedge.example.", "13.107.9.9", 30),
            ],
            ResponseCode::NoError,
        )),
        dns_answer_frame(&answer(
            "x.teams.microsoft.com.",
            vec![a("x.teams.microsoft.com.", "52.113.9.9", 30)],
            ResponseCode::NoError,
        )),
    ];
    let mut ring = datapath.take_dns_ring().unwrap();
    let records = capture(&mut datapath, &mut ring, &frames);
    assert_eq!(records.len(), 2);
    let before = agent.maps().installed().unwrap().len();
    let latencies = agent.learn(&records);
    assert_eq!(latencies.len(), 2, "both taught something");
    eprintln!("capture to map: {latencies:?}");

    let lookup = |agent: &Agent, addr: &str, protocol: u8, port: u16| {
        let oracle = Oracle::new(agent.maps()).unwrap();
        oracle
            .decide(addr.parse().unwrap(), protocol, Some(port))
            .unwrap()
    };
    // At once, before any full apply: the tries hold the host entries.
    let skype = lookup(&agent, "13.107.9.9", proto::TCP, 443);
    assert_eq!((skype.category, skype.set_id), (category::DEFAULT, 27));
    assert_eq!(skype.prefix.unwrap().to_string(), "13.107.9.9/32");
    let teams_media = lookup(&agent, "52.113.9.9", proto::UDP, 3478);
    assert_eq!(
        (teams_media.category, teams_media.set_id),
        (category::OPTIMIZE, 11),
        "folded with the covering Teams prefix: its media rule still decides"
    );
    assert_eq!(teams_media.prefix.unwrap().to_string(), "52.113.9.9/32");
    let other_port = lookup(&agent, "52.113.9.9", proto::TCP, 8443);
    assert_eq!(
        other_port.category,
        category::OPTIMIZE,
        "by address, as the /14"
    );
    // The whole table follows, and the agent records it.
    agent.settle();
    assert_eq!(agent.maps().installed().unwrap().len(), before + 2);
    let catalog = Catalog::load(&state_dir.0, &agent.maps().installed().unwrap());
    assert_eq!(
        catalog.learned_from("13.107.9.9".parse::<IpAddr>().unwrap(), 27),
        Some("join.secure.skypeassets.com")
    );
    assert_eq!(catalog.service_area(27), "Skype");
    let learned = State::open_existing(&state_dir.0)
        .unwrap()
        .learned()
        .unwrap()
        .unwrap();
    assert_eq!(learned.counts.learned, 2, "{learned:?}");
    // The counts `learned` reads are the agent's own (what `/metrics` serves), and say when.
    assert_eq!(learned.counts, agent.learned_counts());
    assert!(
        classifier_user::time::Time::now().secs() - learned.counted_at.secs() < 60,
        "{:?}",
        learned.counted_at
    );
    // x.teams.microsoft.com matches set 12 (*.teams.microsoft.com, Allow) and sets 50 and 78
    // (*.microsoft.com, Default): one row each.
    assert_eq!(
        learned
            .rows
            .iter()
            .map(|row| (row.address.to_string(), row.set))
            .collect::<Vec<_>>(),
        [
            ("13.107.9.9".to_owned(), 27),
            ("52.113.9.9".to_owned(), 12),
            ("52.113.9.9".to_owned(), 50),
            ("52.113.9.9".to_owned(), 78),
        ]
    );

    // An answer that teaches nothing (no apply follows it) still reaches `learned.json`'s
    // counts once a second has passed since they were last written; `learned` no longer lags
    // `/metrics` by everything since the last apply.
    std::thread::sleep(Duration::from_millis(1100));
    let nothing = answer(
        "unrelated.example.",
        vec![a("unrelated.example.", "198.18.0.1", 30)],
        ResponseCode::NoError,
    );
    assert!(
        agent
            .learn(&[(classifier_user::datapath::monotonic_ns(), nothing)])
            .is_empty()
    );
    let learned = State::open_existing(&state_dir.0)
        .unwrap()
        .learned()
        .unwrap()
        .unwrap();
    assert_eq!(learned.counts, agent.learned_counts());
    assert_eq!(learned.counts.answers, 3, "{learned:?}");

    // TTL 30 capped at 2 s, no grace, no flow: gone after the expiry.
    std::thread::sleep(Duration::from_secs(2));
    agent.expire_learned();
    assert_eq!(agent.maps().installed().unwrap().len(), before);
    assert!(
        lookup(&agent, "13.107.9.9", proto::TCP, 443)
            .prefix
            .is_none()
    );
}

#[test]
fn malformed_and_hostile_answers_are_counted_and_teach_nothing() {
    let state_dir = TempDir::new("dns-corpus");
    let Some((mut datapath, mut agent)) = learning_agent(&state_dir, |_| {}) else {
        return;
    };
    let good = answer(
        "storage.live.com.",
        vec![a("storage.live.com.", "13.107.42.13", 300)],
        ResponseCode::NoError,
    );
    let mut wrong_counts = good.clone();
    wrong_counts[7] = 9; // ANCOUNT 9, one answer present
    let mut pointer_loop = good[..12].to_vec();
    pointer_loop[5] = 1; // QDCOUNT 1: a name that points at itself
    pointer_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut query = good.clone();
    query[2] &= 0x7f; // QR = 0
    let long_label = {
        let mut message = good[..12].to_vec();
        message[5] = 1;
        message.push(63);
        message.extend(std::iter::repeat_n(b'a', 200));
        message
    };
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("truncated header", good[..7].to_vec()),
        ("truncated answer", good[..good.len() - 3].to_vec()),
        ("counts that lie", wrong_counts),
        ("a compression loop", pointer_loop),
        ("a label running off the end", long_label),
        ("a query", query),
        (
            "NXDOMAIN",
            answer("storage.live.com.", Vec::new(), ResponseCode::NXDomain),
        ),
        (
            "a CNAME loop",
            answer(
                "storage.live.com.",
                vec![
                    cname("storage.live.com.", "b.example."),
                    cname("b.example.", "storage.live.com."),
                ],
                ResponseCode::NoError,
            ),
        ),
        (
            "a Microsoft name in private space",
            answer(
                "storage.live.com.",
                vec![
                    a("storage.live.com.", "10.1.2.3", 300),
                    a("storage.live.com.", "127.0.0.1", 300),
                    a("storage.live.com.", "169.254.1.1", 300),
                    a("storage.live.com.", "224.0.0.1", 300),
                ],
                ResponseCode::NoError,
            ),
        ),
        (
            "a name of no set",
            answer(
                "www.example.com.",
                vec![a("www.example.com.", "93.184.216.34", 300)],
                ResponseCode::NoError,
            ),
        ),
        ("noise", (0u8..=255).cycle().take(300).collect()),
    ];
    let frames: Vec<Vec<u8>> = corpus
        .iter()
        .map(|(_, message)| dns_answer_frame(message))
        .collect();
    let mut ring = datapath.take_dns_ring().unwrap();
    let records = capture(&mut datapath, &mut ring, &frames);
    // A message shorter than a DNS header stops at the capture.
    assert_eq!(records.len(), corpus.len() - 1);
    assert_eq!(stats(agent.maps(), stat::DNS_TOO_BIG), 1);
    let before = agent.maps().installed().unwrap();
    let latencies = agent.learn(&records);
    assert!(latencies.is_empty(), "nothing learned");
    agent.settle();
    assert_eq!(agent.maps().installed().unwrap(), before);
    agent.save_status();
    let counts = agent.learned_counts();
    let taken = u64::try_from(corpus.len() - 1).unwrap();
    assert_eq!(counts.answers, taken);
    assert_eq!(counts.learned, 0);
    assert_eq!(counts.special, 4, "{counts:?}");
    let ignored: u64 = counts.ignored.values().sum();
    assert_eq!(
        ignored + 1,
        taken,
        "all but the private one ignored: {counts:?}"
    );
    for reason in ["malformed", "not_answer", "error", "chain", "no_match"] {
        assert!(counts.ignored.contains_key(reason), "{reason}: {counts:?}");
    }
    // Alive: the next good answer is learned.
    let records = capture(&mut datapath, &mut ring, &[dns_answer_frame(&good)]);
    assert_eq!(agent.learn(&records).len(), 1);
}
