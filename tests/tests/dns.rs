//! DNS learning through the real capture path: the LAN ingress programs run by
//! BPF_PROG_TEST_RUN on clients' DNS queries record them, `breakout_dns` copies the answers
//! to those queries (and refuses every other, counted by why) into its ring buffer, the agent
//! reads them from there, checks their resolver and question, learns the
//! addresses of URL-only endpoint sets into the live tries at once (folded with the prefixes
//! that cover them), names them in `lookup`, forgets them when their time is up, and takes a
//! corpus of malformed answers without learning anything or stopping.

use std::{net::IpAddr, time::Duration};

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use classifier_common::{DnsQuery, DnsQueryKey, category, proto, stat};
use classifier_user::{
    agent::Agent,
    config::Config,
    datapath::{Datapath, Maps},
    dns::Captured,
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
    packet::{dns_answer_frame, dns_query_frame, udp_frame},
};

const RESOLVER_ADDR: &str = "10.0.3.2";

const TC_ACT_UNSPEC: u32 = u32::MAX;
const XDP_PASS: u32 = 2;

/// A client's query for `question`'s A records, id 7: what [`answer`] answers.
fn query(question: &str) -> Vec<u8> {
    query_with(question, 7, RecordType::A)
}

fn query_with(question: &str, id: u16, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new();
    message.set_id(id);
    message.set_message_type(MessageType::Query);
    message.set_recursion_desired(true);
    message.add_query(Query::query(Name::from_ascii(question).unwrap(), qtype));
    message.to_vec().unwrap()
}

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

/// How the LAN's ingress sees queries: the XDP program, whose metadata tells `breakout_mark`
/// to record them, or the tc program alone.
#[derive(Clone, Copy, Debug)]
enum Ingress {
    Xdp,
    Tc,
}

/// Runs the LAN's ingress on each query frame, as a client's query enters the router: the XDP
/// program, then `breakout_mark` on the frame with the metadata it left; or `breakout_tc`.
fn ask(datapath: &mut Datapath, ingress: Ingress, frames: &[Vec<u8>]) {
    // BPF_PROG_TEST_RUN gives an skb program no XDP metadata: `breakout_mark` then parses
    // the frame itself, as it does behind a driver without metadata room. The router test
    // covers the metadata's path on live frames.
    let tc = |datapath: &mut Datapath, alone: bool, frame: &[u8]| {
        datapath
            .tc(alone)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .map_err(|error: ProgramError| error.to_string())
            .unwrap()
    };
    for frame in frames {
        let result = match ingress {
            Ingress::Xdp => {
                let mut out = vec![0u8; frame.len() + 64];
                let xdp = datapath
                    .xdp()
                    .unwrap()
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        data_out: Some(&mut out),
                        ..TestRunOptions::default()
                    })
                    .unwrap();
                assert_eq!(xdp.return_value, XDP_PASS, "never drops");
                let meta = classifier_common::XdpMeta::from_bytes(&out).expect("our metadata");
                // The UDP destination port, after an IPv4 or an IPv6 header.
                let port_at = if frame[12..14] == [0x08, 0x00] {
                    36
                } else {
                    56
                };
                let is_query = frame[port_at..port_at + 2] == 53u16.to_be_bytes();
                assert_eq!(
                    meta.dns_query,
                    u8::from(is_query),
                    "the flag for tc ingress"
                );
                tc(datapath, false, frame)
            }
            Ingress::Tc => tc(datapath, true, frame),
        };
        assert_eq!(result.return_value, TC_ACT_UNSPEC, "never drops");
    }
}

/// Runs `breakout_dns` on each frame; returns what its ring buffer (`ring`) then holds.
fn capture(datapath: &mut Datapath, ring: &mut Ring, frames: &[Vec<u8>]) -> Vec<Captured> {
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
    // The resolver of `tests::packet`'s frames.
    config.dns.resolvers = vec![RESOLVER_ADDR.parse().unwrap()];
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

/// An answer as the kernel would copy it from `resolver`, its question recorded as asked:
/// for the agent's own checks, past the kernel's.
fn captured(resolver: &str, message: &[u8]) -> Captured {
    let question = message.get(12..).unwrap_or_default();
    let (name_hash, qtype) =
        classifier_common::dns_name_hash(question).map_or((0, 0), |(hash, len)| {
            let qtype = question
                .get(len..len + 2)
                .map_or(0, |bytes| u16::from_be_bytes([bytes[0], bytes[1]]));
            (hash, qtype)
        });
    Captured {
        ts_ns: classifier_user::datapath::monotonic_ns(),
        resolver: resolver.parse().unwrap(),
        name_hash,
        qtype,
        message: message.to_vec(),
    }
}

fn stats(maps: &Maps, index: u32) -> u64 {
    maps.stats().unwrap()[index as usize].packets
}

/// Private maps with query recording on, as the agent sets it when learning.
fn recording_datapath() -> Option<(Datapath, Maps)> {
    let mut datapath = tests::load_private(&classifier_user::datapath::MapSizes::default())?;
    let mut maps = datapath.maps().unwrap();
    maps.set_config(&classifier_common::Config {
        flags: classifier_common::flags::DNS_QUERIES,
        ..classifier_common::Config::default()
    })
    .unwrap();
    Some((datapath, maps))
}

fn the_capture_copies_answers_to_recorded_queries_and_counts_the_rest(ingress: Ingress) {
    let Some((mut datapath, maps)) = recording_datapath() else {
        return;
    };
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
    let resolver: std::net::SocketAddr = tests::packet::RESOLVER.parse().unwrap();
    let big_client: std::net::SocketAddr = "10.0.1.2:40009".parse().unwrap();
    ask(
        &mut datapath,
        ingress,
        &[
            dns_query_frame(&query("storage.live.com.")),
            udp_frame(big_client, resolver, &query("big.example.")),
            // Not queries: an answer sent to port 53, and a query to another port.
            dns_query_frame(&message),
            udp_frame(
                "10.0.1.2:40001".parse().unwrap(),
                "10.0.3.2:5353".parse().unwrap(),
                &query("other.example."),
            ),
        ],
    );
    assert_eq!(stats(&maps, stat::DNS_QUERY), 2, "two queries recorded");
    let mut ring = datapath.take_dns_ring().unwrap();
    let records = capture(
        &mut datapath,
        &mut ring,
        &[
            dns_answer_frame(&message),
            udp_frame(resolver, big_client, &big),
            not_dns,
            vec![0u8; 60],
        ],
    );
    assert_eq!(records.len(), 1, "only the answer from port 53 that fits");
    assert_eq!(records[0].message, message, "the message, byte for byte");
    assert_eq!(records[0].resolver.to_string(), RESOLVER_ADDR);
    assert!(records[0].ts_ns > 0 && records[0].ts_ns <= classifier_user::datapath::monotonic_ns());
    let counted = |index: u32| stats(&maps, index);
    assert_eq!(
        (counted(stat::DNS_COPIED), counted(stat::DNS_TOO_BIG)),
        (1, 1)
    );
    assert_eq!(counted(stat::DNS_UNSOLICITED), 0, "{:?}", maps.stats());
}

/// Every forged answer the kernel can tell from a real one, one at a time: each refused and
/// counted by why, none copied; the real answer, after them, still copied once.
#[expect(
    clippy::too_many_lines,
    reason = "one table of forgeries, case by case"
)]
fn forged_answers_are_refused_by_the_kernel_and_counted(ingress: Ingress) {
    let Some((mut datapath, maps)) = recording_datapath() else {
        return;
    };
    let name = "x.teams.microsoft.com.";
    let real = answer(
        name,
        vec![a(name, "52.113.9.9", 300)],
        ResponseCode::NoError,
    );
    let client: std::net::SocketAddr = tests::packet::CLIENT.parse().unwrap();
    let resolver: std::net::SocketAddr = tests::packet::RESOLVER.parse().unwrap();
    let with_id = |id: u16| {
        let mut message = real.clone();
        message[..2].copy_from_slice(&id.to_be_bytes());
        message
    };
    let other_question = answer(
        "x.teams.microsoft.org.",
        vec![a("x.teams.microsoft.org.", "52.113.9.9", 300)],
        ResponseCode::NoError,
    );
    let mut other_type = real.clone();
    // The question's type follows its name: A (1) becomes AAAA (28).
    let qtype_at = 12 + name.len() + 1;
    other_type[qtype_at..qtype_at + 2].copy_from_slice(&28u16.to_be_bytes());
    let mut ring = datapath.take_dns_ring().unwrap();
    // No query yet: the resolver's own address and port, and the client's, are not enough.
    let cases: [(&str, Vec<u8>, u32); 1] = [(
        "from the resolver's address with no query",
        dns_answer_frame(&real),
        stat::DNS_UNSOLICITED,
    )];
    let mut expected = std::collections::BTreeMap::<u32, u64>::new();
    for (what, frame, why) in cases {
        assert!(
            capture(&mut datapath, &mut ring, &[frame]).is_empty(),
            "{what}"
        );
        *expected.entry(why).or_default() += 1;
        assert_eq!(stats(&maps, why), expected[&why], "{what}");
    }
    ask(&mut datapath, ingress, &[dns_query_frame(&query(name))]);
    let cases: [(&str, Vec<u8>, u32); 6] = [
        (
            "from the tunnel side: another resolver address",
            udp_frame("44.20.0.1:53".parse().unwrap(), client, &real),
            stat::DNS_UNSOLICITED,
        ),
        (
            "to another client port",
            udp_frame(resolver, "10.0.1.2:40001".parse().unwrap(), &real),
            stat::DNS_UNSOLICITED,
        ),
        (
            "to another client",
            udp_frame(resolver, "10.0.1.3:40000".parse().unwrap(), &real),
            stat::DNS_UNSOLICITED,
        ),
        (
            "an answer to another id",
            dns_answer_frame(&with_id(8)),
            stat::DNS_UNSOLICITED,
        ),
        (
            "an answer with another question",
            dns_answer_frame(&other_question),
            stat::DNS_QUESTION_MISMATCH,
        ),
        (
            "an answer with another question type",
            dns_answer_frame(&other_type),
            stat::DNS_QUESTION_MISMATCH,
        ),
    ];
    for (what, frame, why) in cases {
        assert!(
            capture(&mut datapath, &mut ring, &[frame]).is_empty(),
            "{what}"
        );
        *expected.entry(why).or_default() += 1;
        assert_eq!(stats(&maps, why), expected[&why], "{what}");
    }
    // The forgeries consumed nothing: the real answer is copied, once.
    let copied = capture(&mut datapath, &mut ring, &[dns_answer_frame(&real)]);
    assert_eq!(copied.len(), 1);
    assert_eq!(copied[0].message, real);
    assert!(
        capture(&mut datapath, &mut ring, &[dns_answer_frame(&real)]).is_empty(),
        "a replay"
    );
    assert_eq!(stats(&maps, stat::DNS_REPLAY), 1);

    // Late: a query recorded more than DNS_ANSWER_WITHIN_NS ago.
    let late = query_with(name, 9, RecordType::A);
    ask(&mut datapath, ingress, &[dns_query_frame(&late)]);
    age_queries(
        &mut datapath,
        classifier_common::DNS_ANSWER_WITHIN_NS + 1_000_000_000,
    );
    assert!(capture(&mut datapath, &mut ring, &[dns_answer_frame(&with_id(9))]).is_empty());
    assert_eq!(stats(&maps, stat::DNS_LATE), 1);

    // IPv6, both ways.
    let client6: std::net::SocketAddr = "[fd00:1::2]:40000".parse().unwrap();
    let resolver6: std::net::SocketAddr = "[fd00:1::1]:53".parse().unwrap();
    ask(
        &mut datapath,
        ingress,
        &[udp_frame(client6, resolver6, &query(name))],
    );
    let copied = capture(
        &mut datapath,
        &mut ring,
        &[udp_frame(resolver6, client6, &real)],
    );
    assert_eq!(copied.len(), 1, "IPv6");
    assert_eq!(copied[0].resolver, resolver6.ip());
    assert_eq!(stats(&maps, stat::DNS_COPIED), 2);
}

/// Moves every recorded query `by` nanoseconds into the past.
fn age_queries(datapath: &mut Datapath, by: u64) {
    let map = datapath
        .ebpf()
        .map_mut(classifier_common::names::DNS_QUERIES)
        .expect("the query map");
    let mut queries: aya::maps::HashMap<_, DnsQueryKey, DnsQuery> =
        aya::maps::HashMap::try_from(map).unwrap();
    let entries: Vec<(DnsQueryKey, DnsQuery)> = queries.iter().map(Result::unwrap).collect();
    assert!(!entries.is_empty());
    for (key, mut query) in entries {
        query.ts_ns = query.ts_ns.saturating_sub(by);
        queries.insert(key, query, 0).unwrap();
    }
}

macro_rules! at_both_ingresses {
    ($($test:ident),* $(,)?) => {
        mod xdp {
            $(#[test] fn $test() { super::$test(super::Ingress::Xdp) })*
        }
        mod tc {
            $(#[test] fn $test() { super::$test(super::Ingress::Tc) })*
        }
    };
}
at_both_ingresses!(
    the_capture_copies_answers_to_recorded_queries_and_counts_the_rest,
    forged_answers_are_refused_by_the_kernel_and_counted,
);

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
    // Two queries from two client ports, and their answers.
    let resolver: std::net::SocketAddr = tests::packet::RESOLVER.parse().unwrap();
    let port = |port: u16| std::net::SocketAddr::from(([10, 0, 1, 2], port));
    ask(
        &mut datapath,
        Ingress::Xdp,
        &[
            udp_frame(
                port(40001),
                resolver,
                &query("join.secure.skypeassets.com."),
            ),
            udp_frame(port(40002), resolver, &query("x.teams.microsoft.com.")),
        ],
    );
    let frames = [
        udp_frame(
            resolver,
            port(40001),
            &answer(
                "join.secure.skypeassets.com.",
                vec![
                    cname("join.secure.skypeassets.com.", "edge.azureedge.example."),
                    a("edge.azureedge.example.", "13.107.9.9", 30),
                ],
                ResponseCode::NoError,
            ),
        ),
        udp_frame(
            resolver,
            port(40002),
            &answer(
                "x.teams.microsoft.com.",
                vec![a("x.teams.microsoft.com.", "52.113.9.9", 30)],
                ResponseCode::NoError,
            ),
        ),
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
    assert!(agent.learn(&[captured(RESOLVER_ADDR, &nothing)]).is_empty());
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
#[expect(clippy::too_many_lines, reason = "one corpus, step by step")]
fn malformed_and_hostile_answers_are_counted_and_teach_nothing() {
    let state_dir = TempDir::new("dns-corpus");
    let Some((_datapath, mut agent)) = learning_agent(&state_dir, |_| {}) else {
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
    // The kernel copies only answers to recorded queries (above); the agent takes nothing on
    // trust either: each message is handed to it as if the kernel had matched it.
    let records: Vec<Captured> = corpus
        .iter()
        .map(|(_, message)| captured(RESOLVER_ADDR, message))
        .collect();
    let before = agent.maps().installed().unwrap();
    let latencies = agent.learn(&records);
    assert!(latencies.is_empty(), "nothing learned");
    agent.settle();
    assert_eq!(agent.maps().installed().unwrap(), before);
    agent.save_status();
    let counts = agent.learned_counts();
    // Those whose question cannot be walked are refused before they are parsed.
    let refused = stats(agent.maps(), stat::DNS_PARSED_MISMATCH);
    assert_eq!(counts.refused["parsed_mismatch"], refused, "{counts:?}");
    assert_eq!(
        counts.answers + refused,
        u64::try_from(corpus.len()).unwrap(),
        "{counts:?}"
    );
    assert_eq!(counts.learned, 0);
    assert_eq!(counts.special, 4, "{counts:?}");
    let ignored: u64 = counts.ignored.values().sum();
    assert_eq!(
        ignored + 1,
        counts.answers,
        "all but the private one ignored: {counts:?}"
    );
    for reason in ["malformed", "not_answer", "error", "chain", "no_match"] {
        assert!(counts.ignored.contains_key(reason), "{reason}: {counts:?}");
    }
    // A good answer from a resolver not trusted teaches nothing, and is counted.
    assert!(agent.learn(&[captured("44.20.0.1", &good)]).is_empty());
    assert_eq!(stats(agent.maps(), stat::DNS_UNTRUSTED_RESOLVER), 1);
    assert_eq!(agent.learned_counts().refused["untrusted_resolver"], 1);
    // Alive: the next good answer is learned.
    assert_eq!(agent.learn(&[captured(RESOLVER_ADDR, &good)]).len(), 1);
}

/// A full `max-learned` does not lock real answers out: the next address evicts the least
/// recently used one (no flow holds it), in the maps too once the table is applied.
#[test]
fn a_full_cap_evicts_the_least_recently_used_address_from_the_maps() {
    let state_dir = TempDir::new("dns-cap");
    let Some((_datapath, mut agent)) = learning_agent(&state_dir, |config| {
        config.dns.max_learned = 2;
    }) else {
        return;
    };
    let storage = |n: u8| {
        captured(
            RESOLVER_ADDR,
            &answer(
                "storage.live.com.",
                vec![a("storage.live.com.", &format!("13.107.42.{n}"), 300)],
                ResponseCode::NoError,
            ),
        )
    };
    let installed = |agent: &Agent, n: u8| {
        Oracle::new(agent.maps())
            .unwrap()
            .decide(
                format!("13.107.42.{n}").parse().unwrap(),
                proto::TCP,
                Some(443),
            )
            .unwrap()
            .prefix
            .is_some_and(|prefix| prefix.to_string() == format!("13.107.42.{n}/32"))
    };
    for n in [1, 2] {
        assert_eq!(agent.learn(&[storage(n)]).len(), 1);
    }
    // 1 is refreshed: 2 is now the least recently used.
    assert!(agent.learn(&[storage(1)]).is_empty());
    assert_eq!(
        agent.learn(&[storage(3)]).len(),
        1,
        "learned despite the full cap"
    );
    agent.settle();
    assert!(installed(&agent, 1) && installed(&agent, 3));
    assert!(!installed(&agent, 2), "the least recently used, evicted");
    let counts = agent.learned_counts();
    assert_eq!(
        (counts.evicted, counts.cap_hits.max_learned, counts.capped),
        (1, 1, 0),
        "{counts:?}"
    );
}

/// An apply of learned addresses is the table of the sources kept from the last change plus
/// each address's entry, not a compile of every set: it must equal that compile, for an
/// address alone, one inside a feed prefix, one that a second name adds sets to, and one an
/// eviction takes out.
#[test]
fn applies_of_learned_addresses_equal_the_union_compiled_from_scratch() {
    let state_dir = TempDir::new("dns-incremental");
    let Some((_datapath, mut agent)) = learning_agent(&state_dir, |config| {
        config.dns.max_learned = 3;
    }) else {
        return;
    };
    // Each answer teaches its address (a new one, or new sets for one already learned).
    let learn = |agent: &mut Agent, name: &str, address: &str| {
        let question = format!("{name}.");
        let taught = agent.learn(&[captured(
            RESOLVER_ADDR,
            &answer(
                &question,
                vec![a(&question, address, 300)],
                ResponseCode::NoError,
            ),
        )]);
        assert_eq!(taught.len(), 1, "{name} {address} taught nothing");
    };
    let same = |agent: &Agent, when: &str| {
        let installed = agent.maps().installed().unwrap();
        let compiled = agent.union_compiled().unwrap();
        assert_eq!(
            (installed.v4.len(), installed.v6.len()),
            (compiled.v4.len(), compiled.v6.len()),
            "{when}"
        );
        assert!(installed == compiled, "{when}: the entries differ");
    };
    // The first apply after the feed's compiles everything and keeps the table.
    learn(&mut agent, "join.secure.skypeassets.com", "13.107.9.9");
    agent.settle();
    same(&agent, "the first apply");
    // Then: a new address alone, one inside Teams' 52.112.0.0/14, and a second name (set 12,
    // 50 and 78 of *.teams.microsoft.com and *.microsoft.com) for the first address.
    learn(&mut agent, "storage.live.com", "13.107.42.1");
    learn(&mut agent, "x.teams.microsoft.com", "52.113.9.9");
    learn(&mut agent, "y.teams.microsoft.com", "13.107.9.9");
    agent.settle();
    same(&agent, "an apply from the kept table");
    // A fourth address finds the cap of 3 full: the least recently used goes, in the maps
    // too.
    learn(&mut agent, "storage.live.com", "13.107.42.2");
    assert_eq!(agent.learned_counts().evicted, 1);
    agent.settle();
    same(&agent, "after an eviction");
}
