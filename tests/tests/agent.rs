//! The agent against a real HTTP server on loopback serving Microsoft's real responses: it
//! applies feed versions in turn, the maps then decide exactly what an independent reading of
//! the feed decides, and every kind of bad answer leaves the maps byte for byte as they were.

use std::{net::IpAddr, time::Duration};

use classifier_common::{LpmKeyV4, PrefixRules, category, proto};
use classifier_user::{
    agent::{Agent, RefreshError, Refreshed, Start},
    client::FetchError,
    compile::Compiled,
    config::Config,
    datapath::{Datapath, Maps},
    state::State,
};
use ipnet::IpNet;
use serde_json::Value;
use tests::{
    FEED_2026033100, FEED_2026043000, TempDir,
    http::{FeedServer, Reply},
    runtime,
};

const FEED_2020: &[u8] = include_bytes!("../fixtures/m365-worldwide-endpoints-2020-05-31.json");

fn config(server: &FeedServer) -> Config {
    let mut config = Config::default();
    config.feed.url = server.url();
    config.feed.allow_http = true;
    config.feed.connect_timeout = Duration::from_secs(1);
    config.feed.request_timeout = Duration::from_secs(1);
    config
}

/// An agent on private maps, or `None` (skip) without BPF outside CI.
fn agent(config: Config, state_dir: &TempDir) -> Option<(Datapath, Agent)> {
    let mut datapath = tests::load_private(&classifier_user::datapath::MapSizes::default())?;
    let maps = datapath.maps().unwrap();
    let agent = Agent::new(config, maps, State::open(&state_dir.0).unwrap()).unwrap();
    Some((datapath, agent))
}

/// The version of the `m365` source the agent holds.
fn m365_version(agent: &Agent) -> String {
    agent
        .status()
        .source("m365")
        .and_then(|m365| m365.version.clone())
        .unwrap_or_default()
}

// --- An independent reading of the feed: straight from the JSON, one probe at a time. ---

fn rank(category: &str) -> u8 {
    match category {
        "Optimize" => category::OPTIMIZE,
        "Allow" => category::ALLOW,
        "Default" => category::DEFAULT,
        other => panic!("category {other}"),
    }
}

fn ports(set: &Value, key: &str) -> Vec<(u16, u16)> {
    set[key]
        .as_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((lo, hi)) => (lo.parse().unwrap(), hi.parse().unwrap()),
            None => (p.parse().unwrap(), p.parse().unwrap()),
        })
        .collect()
}

fn sets_with_ips(feed: &[u8]) -> Vec<Value> {
    let feed = feed.strip_prefix(b"\xef\xbb\xbf").unwrap_or(feed);
    let all: Vec<Value> = serde_json::from_slice(feed).unwrap();
    all.into_iter()
        .filter(|set| set["ips"].as_array().is_some_and(|ips| !ips.is_empty()))
        .collect()
}

fn nets(set: &Value) -> Vec<IpNet> {
    set["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip.as_str().unwrap().parse().unwrap())
        .collect()
}

/// The category of a packet and whether a port rule decided it, per the feed's definition.
fn reference(sets: &[Value], addr: IpAddr, protocol: u8, port: Option<u16>) -> Option<(u8, bool)> {
    let holding: Vec<&Value> = sets
        .iter()
        .filter(|set| nets(set).iter().any(|net| net.contains(&addr)))
        .collect();
    if holding.is_empty() {
        return None;
    }
    let key = if protocol == proto::TCP {
        "tcpPorts"
    } else {
        "udpPorts"
    };
    let by_port = port.and_then(|port| {
        holding
            .iter()
            .filter(|set| {
                ports(set, key)
                    .iter()
                    .any(|&(lo, hi)| lo <= port && port <= hi)
            })
            .map(|set| rank(set["category"].as_str().unwrap()))
            .max()
    });
    match by_port {
        Some(category) => Some((category, true)),
        None => Some((
            holding
                .iter()
                .map(|set| rank(set["category"].as_str().unwrap()))
                .max()
                .unwrap(),
            false,
        )),
    }
}

/// Probes every prefix's first, middle and last address with every port the feed names (and
/// some it does not), TCP, UDP and without ports, and compares the maps with the reference.
fn assert_maps_match(maps: &Maps, feed: &[u8]) {
    let sets = sets_with_ips(feed);
    let mut unique: Vec<IpNet> = sets.iter().flat_map(nets).collect();
    unique.sort_unstable();
    unique.dedup();
    let installed = maps.installed().unwrap();
    assert_eq!(installed.len(), unique.len(), "one entry per unique prefix");
    let mut all_ports: Vec<u16> = sets
        .iter()
        .flat_map(|set| [ports(set, "tcpPorts"), ports(set, "udpPorts")].concat())
        .flat_map(|(lo, hi)| [lo, hi, hi.saturating_add(1)])
        .chain([1, 8080, 65535])
        .collect();
    all_ports.sort_unstable();
    all_ports.dedup();
    let mut probes = 0;
    for net in &unique {
        let middle = match net {
            IpNet::V4(n) => {
                IpAddr::V4((u32::from(n.network()) / 2 + u32::from(n.broadcast()) / 2).into())
            }
            IpNet::V6(n) => {
                IpAddr::V6((u128::from(n.network()) / 2 + u128::from(n.broadcast()) / 2).into())
            }
        };
        for addr in [net.network(), middle, net.broadcast()] {
            let value = maps.lookup(addr).unwrap();
            for (protocol, port) in all_ports
                .iter()
                .flat_map(|&port| [(proto::TCP, Some(port)), (proto::UDP, Some(port))])
                .chain([(1, None)])
            {
                let expected = reference(&sets, addr, protocol, port);
                let found = value.map(|v| {
                    let m = v.classify(protocol, port);
                    (m.category, m.by_port)
                });
                assert_eq!(found, expected, "{addr} proto {protocol} port {port:?}");
                probes += 1;
            }
        }
    }
    for addr in ["198.51.100.1", "2001:db8::1", "203.0.113.9"] {
        assert_eq!(maps.lookup(addr.parse().unwrap()).unwrap(), None, "{addr}");
    }
    eprintln!("{probes} probes agree");
}

#[test]
fn applies_versions_in_turn_and_the_maps_decide_as_the_feed_says() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("versions");
    let Some((_datapath, mut agent)) = agent(config(&server), &state_dir) else {
        return;
    };
    let rt = runtime();

    // Offline first: the embedded snapshot.
    assert!(matches!(agent.start().unwrap(), Start::Embedded { .. }));
    assert_maps_match(agent.maps(), FEED_2026043000);

    // A version older than the applied one is refused unless forced.
    server.set("/version/Worldwide", Reply::version("2020053100"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2020));
    let error = rt
        .block_on(agent.refresh("m365", false))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("version 2020053100 is older than the applied 2026043000"),
        "{error}"
    );
    assert_maps_match(agent.maps(), FEED_2026043000);
    rt.block_on(agent.refresh("m365", true)).unwrap();
    assert_maps_match(agent.maps(), FEED_2020);

    for (version, body) in [
        ("2026033100", FEED_2026033100),
        ("2026043000", FEED_2026043000),
    ] {
        server.set("/version/Worldwide", Reply::version(version));
        server.set("/endpoints/Worldwide", Reply::json(body));
        let refreshed = rt.block_on(agent.refresh("m365", false)).unwrap();
        assert!(
            matches!(&refreshed, Refreshed::Applied { version: Some(v), .. } if v == version),
            "{refreshed:?}"
        );
        assert_maps_match(agent.maps(), body);
        assert_eq!(m365_version(&agent), version);
    }
    // The same version again fetches nothing more.
    let before = server.requests().len();
    assert_eq!(
        rt.block_on(agent.refresh("m365", false)).unwrap(),
        Refreshed::Unchanged {
            version: Some("2026043000".into()),
            why: "the service's version is the one held"
        }
    );
    assert_eq!(server.requests().len(), before + 1, "only /version");

    // Every request carries the same client request id, kept in the state directory.
    let id = std::fs::read_to_string(state_dir.0.join("client-request-id")).unwrap();
    assert_eq!(id.len(), 36);
    assert!(
        server
            .requests()
            .iter()
            .all(|target| target.contains(&format!("clientrequestid={id}")))
    );
    // The applied feed is on disk, for the next start.
    assert_eq!(
        std::fs::read(state_dir.0.join("sources/m365.body")).unwrap(),
        FEED_2026043000
    );
}

/// A bad answer: its name, the `/version` and `/endpoints` replies, and what the refusal says.
type Case = (&'static str, Reply, Reply, &'static str);

/// Every kind of bad answer, each over the 2026043000 feed applied; and, for follow-ups, a
/// feed with one more prefix in Teams' set and the Teams-only feed.
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn corpus() -> (Vec<Case>, impl Fn(&str) -> Vec<u8>, Vec<u8>) {
    let teams_only = {
        let sets: Vec<Value> = sets_with_ips(FEED_2026043000)
            .into_iter()
            .filter(|set| set["id"] == 11)
            .collect();
        serde_json::to_vec(&sets).unwrap()
    };
    let invalid_cidr =
        String::from_utf8_lossy(FEED_2026043000).replace("52.112.0.0/14", "52.112.0.1/14");
    let with = |prefix: &str| {
        String::from_utf8_lossy(FEED_2026043000)
            .replace(
                "\"52.112.0.0/14\"",
                &format!("\"52.112.0.0/14\", \"{prefix}\""),
            )
            .into_bytes()
    };
    let port_zero = String::from_utf8_lossy(FEED_2026043000)
        .replace("\"udpPorts\": \"3478,", "\"udpPorts\": \"0,3478,");
    assert_ne!(
        port_zero.as_bytes(),
        FEED_2026043000,
        "the fixture has the Teams ports"
    );
    // Every prefix replaced by other public ones, and more of them: 93 removed, 129 added.
    let replaced = {
        let mut n = 0u32;
        let mut sets: Vec<Value> = serde_json::from_slice(FEED_2026043000).unwrap();
        for set in &mut sets {
            if let Some(ips) = set["ips"].as_array_mut() {
                let count = ips.len() * 2;
                *ips = (0..count)
                    .map(|_| {
                        n += 1;
                        Value::from(format!("44.{}.{}.0/24", n / 256, n % 256))
                    })
                    .collect();
            }
        }
        serde_json::to_vec(&sets).unwrap()
    };
    // The real feed and 1000 more prefixes: nothing removed, far more added.
    let oversized = {
        let mut sets: Vec<Value> = serde_json::from_slice(FEED_2026043000).unwrap();
        let ips: Vec<Value> = (0..1000u32)
            .map(|n| Value::from(format!("45.{}.{}.0/24", n / 256, n % 256)))
            .collect();
        sets.push(serde_json::json!({"id": 900, "serviceArea": "Common", "category": "Optimize", "ips": ips}));
        serde_json::to_vec(&sets).unwrap()
    };
    let oversize = [FEED_2026043000, &vec![b' '; 200_000]].concat();
    let truncated = &FEED_2026043000[..FEED_2026043000.len() / 2];
    let cases: Vec<Case> = vec![
        (
            "HTTP 500 on /version",
            Reply::status(500, "oops"),
            Reply::json(FEED_2026043000),
            "/version/Worldwide: HTTP 500",
        ),
        (
            "HTTP 500 on /endpoints",
            Reply::version("2026050100"),
            Reply::status(500, "oops"),
            "/endpoints/Worldwide: HTTP 500",
        ),
        (
            "HTTP 429 with Retry-After",
            Reply::status(429, "slow down").header("Retry-After", "120"),
            Reply::json(FEED_2026043000),
            "HTTP 429 too many requests; retrying in 120s",
        ),
        (
            "HTTP 429 without Retry-After",
            Reply::version("2026050100"),
            Reply::status(429, "slow down"),
            "retrying in 3600s",
        ),
        (
            "a timeout",
            Reply::version("2026050100"),
            Reply::json(FEED_2026043000).delayed(Duration::from_secs(3)),
            "/endpoints/Worldwide: request failed",
        ),
        (
            "truncated JSON",
            Reply::version("2026050100"),
            Reply::json(truncated),
            "refused feed 2026050100",
        ),
        (
            "an HTML error page",
            Reply::version("2026050100"),
            Reply::status(200, "<html><body>Service Unavailable</body></html>"),
            "feed is not valid JSON",
        ),
        (
            "an empty list",
            Reply::version("2026050100"),
            Reply::json(b"[]"),
            "feed has no endpoint sets",
        ),
        (
            "a feed that drops 90% of prefixes",
            Reply::version("2026050100"),
            Reply::json(&teams_only),
            "it would remove 90 of the 93 installed prefixes, more than the 50% limit \
             (feed.max-shrink-percent); check it with `xdp-breakout sync --dry-run`, then apply \
             it with `xdp-breakout sync --force` if it is right",
        ),
        (
            "a feed that replaces every prefix with more others",
            Reply::version("2026050100"),
            Reply::json(&replaced),
            "it would remove 93 of the 93 installed prefixes",
        ),
        (
            "a feed ten times the size",
            Reply::version("2026050100"),
            Reply::json(&oversized),
            "it would add 1000 and remove 0 prefixes where 93 are installed, a churn of more \
             than 100% (feed.max-churn-percent)",
        ),
        (
            "a default route",
            Reply::version("2026050100"),
            Reply::json(&with("0.0.0.0/0")),
            r#"endpoint set 11: ips "0.0.0.0/0": shorter than /8"#,
        ),
        (
            "an IPv6 default route",
            Reply::version("2026050100"),
            Reply::json(&with("::/0")),
            r#"endpoint set 11: ips "::/0": shorter than /16, the shortest IPv6 prefix"#,
        ),
        (
            "private space",
            Reply::version("2026050100"),
            Reply::json(&with("10.0.0.0/8")),
            r#"endpoint set 11: ips "10.0.0.0/8": overlaps 10.0.0.0/8, private-use (RFC 1918)"#,
        ),
        (
            "inside private space",
            Reply::version("2026050100"),
            Reply::json(&with("192.168.10.0/24")),
            r#"ips "192.168.10.0/24": overlaps 192.168.0.0/16"#,
        ),
        (
            "port 0",
            Reply::version("2026050100"),
            Reply::json(port_zero.as_bytes()),
            "port 0 is not a destination port",
        ),
        (
            "an older version",
            Reply::version("2026033100"),
            Reply::json(FEED_2026033100),
            "version 2026033100 is older than the applied 2026043000",
        ),
        (
            "another instance's version",
            Reply::json(br#"{"instance": "China", "latest": "2026050100"}"#),
            Reply::json(FEED_2026043000),
            r#"the answer is for instance "China", not the configured "Worldwide""#,
        ),
        (
            "a Retry-After of 2^64-1 seconds",
            Reply::status(429, "").header("Retry-After", "18446744073709551615"),
            Reply::json(FEED_2026043000),
            "retrying in 86400s",
        ),
        (
            "an invalid CIDR",
            Reply::version("2026050100"),
            Reply::json(invalid_cidr.as_bytes()),
            r#"endpoint set 11: ips "52.112.0.1/14": host bits are set"#,
        ),
        (
            "an oversize body",
            Reply::version("2026050100"),
            Reply::json(&oversize),
            "the response is larger than 200000 bytes",
        ),
        (
            "a version that is not one",
            Reply::json(br#"{"instance": "Worldwide", "latest": "soon"}"#),
            Reply::json(FEED_2026043000),
            "version \"soon\" is not YYYYMMDDNN",
        ),
    ];
    (cases, with, teams_only)
}

/// The maps, policy and config, to compare byte for byte.
fn snapshot(
    maps: &Maps,
) -> (
    Compiled,
    [u8; category::COUNT as usize],
    classifier_common::Config,
) {
    (
        maps.installed().unwrap(),
        maps.policy().unwrap(),
        maps.config().unwrap(),
    )
}

#[test]
fn bad_answers_change_nothing_and_say_why() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("bad");
    let mut config = config(&server);
    config.feed.max_body_bytes = 200_000;
    let Some((_datapath, mut agent)) = agent(config, &state_dir) else {
        return;
    };
    let rt = runtime();
    agent.apply_settings().unwrap();
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    rt.block_on(agent.refresh("m365", false)).unwrap();
    let before = snapshot(agent.maps());
    let feed_on_disk = std::fs::read(state_dir.0.join("sources/m365.body")).unwrap();

    let (cases, with, teams_only) = corpus();
    for (name, version, endpoints, expected) in cases {
        server.set("/version/Worldwide", version);
        server.set("/endpoints/Worldwide", endpoints);
        let error = rt.block_on(agent.refresh("m365", false)).expect_err(name);
        let message = format!("{:#}", anyhow::Error::from(error));
        assert!(
            message.contains(expected),
            "{name}: {message:?} lacks {expected:?}"
        );
        eprintln!("{name}: {message}");
        assert!(snapshot(agent.maps()) == before, "{name}: the maps changed");
        assert_eq!(
            std::fs::read(state_dir.0.join("sources/m365.body")).unwrap(),
            feed_on_disk,
            "{name}: the saved feed changed"
        );
        assert_eq!(m365_version(&agent), "2026043000", "{name}");
    }

    // 429 carries the wait for the daemon.
    server.set(
        "/version/Worldwide",
        Reply::status(429, "").header("Retry-After", "7"),
    );
    let error = rt.block_on(agent.refresh("m365", false)).unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    // A timeout is a transport error that reqwest knows as one.
    server.set("/version/Worldwide", Reply::version("2026050100"));
    server.set(
        "/endpoints/Worldwide",
        Reply::json(FEED_2026043000).delayed(Duration::from_secs(3)),
    );
    let error = rt.block_on(agent.refresh("m365", false)).unwrap_err();
    assert!(
        matches!(&error, RefreshError::Fetch { error: FetchError::Transport { source, .. }, .. } if source.is_timeout()),
        "{error:?}"
    );

    // A refused oversized feed does not ratchet: the next genuine version applies.
    server.set("/version/Worldwide", Reply::version("2026050200"));
    server.set("/endpoints/Worldwide", Reply::json(&with("44.50.0.0/16")));
    rt.block_on(agent.refresh("m365", false)).unwrap();
    assert_eq!(agent.maps().installed().unwrap().len(), 94);

    // Forcing applies the shrunken feed.
    server.set("/version/Worldwide", Reply::version("2026050300"));
    server.set("/endpoints/Worldwide", Reply::json(&teams_only));
    rt.block_on(agent.refresh("m365", true)).unwrap();
    assert_eq!(agent.maps().installed().unwrap().len(), 3);
}

/// `sync --dry-run` calls the gate a real apply calls: over the whole corpus of bad answers
/// (and a good one), the dry run's verdict is the real refresh's, word for word, and neither
/// changes the maps.
#[test]
fn a_dry_run_reaches_the_verdict_of_a_real_apply() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("dry-run");
    let mut config = config(&server);
    config.feed.max_body_bytes = 200_000;
    let Some((_datapath, mut agent)) = agent(config, &state_dir) else {
        return;
    };
    let rt = runtime();
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    rt.block_on(agent.refresh("m365", false)).unwrap();
    let before = snapshot(agent.maps());
    let (cases, with, _) = corpus();
    assert!(cases.len() > 20, "the whole corpus");
    let mut verdicts = Vec::new();
    for (name, version, endpoints, expected) in cases {
        server.set("/version/Worldwide", version);
        server.set("/endpoints/Worldwide", endpoints);
        // What `sync --dry-run` does: fetch whatever the service has, then plan.
        let i = agent.source_index("m365").unwrap();
        let dry = rt
            .block_on(agent.fetch(i, true))
            .and_then(|got| agent.plan("m365", got, false))
            .map_or_else(
                |error| Some(error.to_string()),
                |plan| plan.refused.map(|error| error.to_string()),
            );
        assert!(
            snapshot(agent.maps()) == before,
            "{name}: the dry run changed the maps"
        );
        let real = rt
            .block_on(agent.refresh("m365", false))
            .err()
            .map(|error| error.to_string());
        assert!(snapshot(agent.maps()) == before, "{name}: the maps changed");
        assert_eq!(dry, real, "{name}: the dry run and the apply disagree");
        let real = real.unwrap_or_else(|| panic!("{name}: applied"));
        assert!(
            real.contains(expected),
            "{name}: {real:?} lacks {expected:?}"
        );
        verdicts.push(name);
    }
    eprintln!("{} bad answers, one verdict each", verdicts.len());
    // A good feed: no refusal either way, and the plan's target is what the apply installs.
    server.set("/version/Worldwide", Reply::version("2026050200"));
    server.set("/endpoints/Worldwide", Reply::json(&with("44.50.0.0/16")));
    let i = agent.source_index("m365").unwrap();
    let got = rt.block_on(agent.fetch(i, true)).unwrap();
    let plan = agent.plan("m365", got, false).unwrap();
    assert!(plan.refused.is_none(), "{:?}", plan.refused);
    assert_eq!(plan.installed, before.0);
    rt.block_on(agent.refresh("m365", false)).unwrap();
    assert_eq!(agent.maps().installed().unwrap(), plan.target);
    assert_eq!(plan.target.len(), 94);
}

/// Intune's endpoints (`MEM`), which Microsoft's guidance asks for beside Office 365's: the
/// service leaves them out unless a request names them, so a filter that names `MEM` asks for
/// every area and Intune, and Intune's sets are classified like any other area's.
#[test]
fn a_filter_naming_mem_asks_for_intune_and_classifies_it() {
    const FEED_MEM: &[u8] =
        include_bytes!("../fixtures/m365-worldwide-endpoints-2026043000-mem.json");
    let server = FeedServer::start();
    let state_dir = TempDir::new("mem");
    let mut config = config(&server);
    config.feed.service_areas = vec!["Skype".to_owned(), "MEM".to_owned()];
    let Some((_datapath, mut agent)) = agent(config, &state_dir) else {
        return;
    };
    server.set("/version/Worldwide", Reply::version("2026043000"));
    // Without `ServiceAreas`, no Intune: as the service answers.
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    server.set(
        "/endpoints/Worldwide?ServiceAreas=Common%2CExchange%2CSharePoint%2CSkype%2CMEM",
        Reply::json(FEED_MEM),
    );
    runtime().block_on(agent.refresh("m365", false)).unwrap();
    let endpoints: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|target| target.starts_with("/endpoints/"))
        .collect();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert!(
        endpoints[0].contains("ServiceAreas=Common%2CExchange%2CSharePoint%2CSkype%2CMEM"),
        "{endpoints:?}"
    );
    let maps = agent.maps();
    let lookup = |addr: &str| maps.lookup(addr.parse().unwrap()).unwrap();
    // Intune's set 163, Allow, with its ports; Teams (Skype) as before.
    let intune = lookup("13.67.13.177").expect("Intune's prefix is installed");
    assert_eq!(
        (intune.addr_category, intune.addr_set, intune.n_rules),
        (category::ALLOW, 163, 2),
        "TCP 80 and 443"
    );
    let teams = lookup("52.112.1.1").expect("Teams");
    assert_eq!(
        (teams.addr_category, teams.addr_set),
        (category::OPTIMIZE, 11)
    );
    // Exchange is filtered out, as it would be without Intune.
    assert_eq!(lookup("40.96.1.1"), None);
    // Every prefix of the two areas, and nothing else.
    let sets: Vec<Value> = serde_json::from_slice::<Vec<Value>>(FEED_MEM)
        .unwrap()
        .into_iter()
        .filter(|set| set["serviceArea"] == "Skype" || set["serviceArea"] == "MEM")
        .filter(|set| set["ips"].as_array().is_some_and(|ips| !ips.is_empty()))
        .collect();
    let mut expected: Vec<IpNet> = sets.iter().flat_map(nets).collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(maps.installed().unwrap().len(), expected.len());
    // The status names the source's filter's result.
    let m365 = agent.status().source("m365").cloned().unwrap();
    assert_eq!(
        m365.prefixes_v4 + m365.prefixes_v6,
        expected.len(),
        "{m365:?}"
    );
}

/// A state directory written before the sources were one model (`fixtures/state-layout-1`,
/// made by commit 1699ff1's binary: `attach`, `sync` of feed 2026043000 from a server, `sync
/// --source zoom` of a root-owned list) is migrated on the first start: the feed becomes the
/// `m365` source's last good file, and the agent starts from it and Zoom's with exactly the
/// entries the old agent had installed.
#[test]
fn a_layout_1_state_directory_is_migrated_on_first_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let fixture = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/state-layout-1"
    ));
    let state_dir = TempDir::new("layout-1");
    for dir in ["", "sources"] {
        let to = state_dir.0.join(dir);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o700)).unwrap();
        for entry in std::fs::read_dir(fixture.join(dir)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let old_feed = std::fs::read(fixture.join("feed.json")).unwrap();
    let old_entries = "72bf03c7e83ff453";
    let config = Config {
        sources: vec![
            toml::from_str(
                "name = \"zoom\"\nkind = \"cidr-list\"\npath = \"/tmp/xbmig/zoom.txt\"\n\
                 udp = \"3478-3479,8801-8810\"",
            )
            .unwrap(),
        ],
        ..Config::default()
    };
    let Some((_datapath, mut agent)) = agent(config, &state_dir) else {
        return;
    };
    // The old files are gone, their content is in the new ones.
    for old in ["feed.json", "applied.json", "catalog.json"] {
        assert!(!state_dir.0.join(old).exists(), "{old} is left");
    }
    assert_eq!(
        std::fs::read(state_dir.0.join("sources/m365.body")).unwrap(),
        old_feed
    );
    let union: Value =
        serde_json::from_slice(&std::fs::read(state_dir.0.join("union.json")).unwrap()).unwrap();
    assert_eq!(union["entries"], old_entries);
    let names: Vec<&str> = union["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|source| source["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m365", "zoom"]);
    // It starts from them, as the old agent would have: the same entries, byte for byte.
    let start = agent.start().unwrap();
    assert!(
        matches!(&start, Start::LastFeed { version, .. } if version == "2026043000"),
        "{start:?}"
    );
    let installed = agent.maps().installed().unwrap();
    assert_eq!((installed.v4.len(), installed.v6.len()), (156, 59));
    assert_eq!(installed.digest(), old_entries);
    let status = agent.status();
    let m365 = status.source("m365").unwrap();
    assert_eq!(
        (m365.version.as_deref(), m365.from.as_deref()),
        (
            Some("2026043000"),
            Some("http://127.0.0.1:8099/endpoints/Worldwide")
        )
    );
    let zoom = status.source("zoom").unwrap();
    assert_eq!(
        (zoom.version.as_deref(), zoom.prefixes_v4),
        (Some("sha256:ea6fc8537b61ff88"), 122)
    );
    // The client request id is kept; a second open has nothing to migrate.
    assert_eq!(
        std::fs::read(state_dir.0.join("client-request-id")).unwrap(),
        std::fs::read(fixture.join("client-request-id")).unwrap()
    );
    assert!(!State::open(&state_dir.0).unwrap().migrate().unwrap());
}

/// A redirect within HTTP is followed and the feed is recorded as coming from where it was
/// finally served, not from the URL asked for.
#[test]
fn redirects_are_followed_only_as_allowed_and_the_final_url_is_recorded() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("redirect");
    let Some((_datapath, mut agent)) = agent(config(&server), &state_dir) else {
        return;
    };
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set(
        "/endpoints/Worldwide",
        Reply::status(302, "").header("Location", "/mirror/endpoints"),
    );
    server.set("/mirror/endpoints", Reply::json(FEED_2026043000));
    runtime().block_on(agent.refresh("m365", false)).unwrap();
    let applied = agent.status().source("m365").cloned().unwrap();
    assert_eq!(
        applied.from.unwrap(),
        format!("{}/mirror/endpoints", server.url())
    );
    // A redirect to a non-HTTP scheme is not followed, and a chain ends after 5 hops.
    server.set("/version/Worldwide", Reply::version("2026050100"));
    server.set(
        "/endpoints/Worldwide",
        Reply::status(302, "").header("Location", "file:///etc/shadow"),
    );
    let error = format!(
        "{:#}",
        anyhow::Error::from(
            runtime()
                .block_on(agent.refresh("m365", false))
                .unwrap_err()
        )
    );
    assert!(error.contains("/endpoints/Worldwide: HTTP 302"), "{error}");
    server.set(
        "/endpoints/Worldwide",
        Reply::status(302, "").header("Location", "/hop/1"),
    );
    for hop in 1..=6 {
        let next = format!("/hop/{}", hop + 1);
        server.set(
            &format!("/hop/{hop}"),
            Reply::status(302, "").header("Location", &next),
        );
    }
    server.set("/hop/7", Reply::json(FEED_2026043000));
    let error = format!(
        "{:#}",
        anyhow::Error::from(
            runtime()
                .block_on(agent.refresh("m365", false))
                .unwrap_err()
        )
    );
    assert!(error.contains("refused a redirect"), "{error}");
    assert!(error.contains("more than 5 redirects"), "{error}");
    assert_eq!(m365_version(&agent), "2026043000");
}

#[test]
fn start_prefers_the_last_applied_feed_and_reapplies_it_with_the_current_policy() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("start");
    let Some((_first, mut agent)) = agent(config(&server), &state_dir) else {
        return;
    };
    server.set("/version/Worldwide", Reply::version("2020053100"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2020));
    runtime().block_on(agent.refresh("m365", false)).unwrap();
    drop(agent);

    // A new agent on new maps (as after a reboot), with a policy that excludes Teams media.
    let mut config = config(&server);
    config.policy.exclude = vec!["52.112.0.0/14".parse().unwrap()];
    let Some((_second, mut agent)) = self::agent(config, &state_dir) else {
        return;
    };
    assert!(
        matches!(agent.start().unwrap(), Start::LastFeed { version, .. } if version == "2020053100")
    );
    let teams = agent
        .maps()
        .lookup("52.112.1.1".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (teams.addr_category, teams.n_rules),
        (category::NONE, 0),
        "excluded"
    );
    assert_eq!(
        agent.maps().installed().unwrap().len(),
        155,
        "the 2020 feed: 50 IPv4 and 105 IPv6"
    );
}

/// A narrowed service-area filter can be widened again by a reload: the agent fetches and
/// keeps the whole feed and filters when compiling. (It used to send `ServiceAreas` to the
/// service and keep the narrowed answer, so widening the filter recompiled the narrow copy.)
#[test]
fn a_narrowed_filter_widens_again_on_reload() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("filter");
    let mut narrow = config(&server);
    narrow.feed.service_areas = vec!["Skype".to_owned()];
    narrow.feed.no_ipv6 = true;
    let Some((_datapath, mut agent)) = agent(narrow, &state_dir) else {
        return;
    };
    let skype_v4_only = {
        let sets: Vec<Value> = serde_json::from_slice(FEED_2026043000).unwrap();
        let sets: Vec<Value> = sets
            .into_iter()
            .filter(|set| set["serviceArea"] == "Skype")
            .map(|mut set| {
                if let Some(ips) = set["ips"].as_array_mut() {
                    ips.retain(|ip| !ip.as_str().unwrap().contains(':'));
                }
                set
            })
            .collect();
        serde_json::to_vec(&sets).unwrap()
    };
    // Microsoft's service filters when asked to; so does this server.
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    server.set(
        "/endpoints/Worldwide?ServiceAreas=Skype&NoIPv6=true",
        Reply::json(&skype_v4_only),
    );
    runtime().block_on(agent.refresh("m365", false)).unwrap();
    let narrowed = agent.maps().installed().unwrap();
    assert!(narrowed.v6.is_empty(), "NoIPv6");
    assert!(!narrowed.v4.is_empty());
    assert!(narrowed.len() < 93);
    assert!(
        server
            .requests()
            .iter()
            .all(|target| !target.contains("ServiceAreas") && !target.contains("NoIPv6")),
        "{:?}",
        server.requests()
    );

    // Widened by a reload: the saved feed compiles to every prefix again, without a fetch.
    let before = server.requests().len();
    agent.reconfigure(config(&server)).unwrap();
    assert_maps_match(agent.maps(), FEED_2026043000);
    assert_eq!(server.requests().len(), before);
}

/// Another writer's insert, delete and in-place change of a trie entry are each found by the
/// check each poll runs instead of a read-back, and repaired: the insert and the delete at the
/// next poll (the kernel's count of entries), the in-place change within `Record::bound`
/// polls (a window of `WINDOW` entries a poll), wherever it falls in the kernel's walk. With
/// no other writer, a whole walk finds nothing.
#[test]
fn another_writers_insert_delete_and_in_place_change_are_found_and_repaired() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("check");
    let mut config = config(&server);
    // More than two windows of IPv4 entries: the walk takes several polls.
    config.policy.include = (0..5000u32)
        .map(|n| IpNet::from(IpAddr::from(std::net::Ipv4Addr::from((45u32 << 24) + n))))
        .collect();
    let Some((mut datapath, mut agent)) = agent(config, &state_dir) else {
        return;
    };
    let rt = runtime();
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    let mut poll = || rt.block_on(agent_poll(&mut agent));
    assert!(matches!(poll(), Refreshed::Applied { .. }));
    // Another writer, and a reader of what the tries hold.
    let mut other = datapath.maps().unwrap();
    let reader = datapath.maps().unwrap();
    let good = reader.installed().unwrap();
    let bound = good
        .v4
        .len()
        .max(good.v6.len())
        .div_ceil(classifier_user::datapath::WINDOW);
    assert!(bound >= 3, "{} IPv4 entries", good.v4.len());

    for _ in 0..=bound {
        assert!(
            matches!(poll(), Refreshed::Unchanged { .. }),
            "a false alarm"
        );
    }

    let value = *good.v4.values().next().unwrap();
    let other_value = PrefixRules {
        addr_category: if value.addr_category == category::DEFAULT {
            category::OPTIMIZE
        } else {
            category::DEFAULT
        },
        ..value
    };
    let net = |key: &LpmKeyV4| {
        IpNet::new(
            std::net::Ipv4Addr::from(key.addr).into(),
            u8::try_from(key.prefix_len).unwrap(),
        )
        .unwrap()
    };
    let found_within = |what: &str, within: usize, poll: &mut dyn FnMut() -> Refreshed| {
        for n in 1..=within {
            if matches!(poll(), Refreshed::Applied { .. }) {
                assert!(
                    reader.installed().unwrap() == good,
                    "{what}: the maps are not the agent's union again"
                );
                return n;
            }
        }
        panic!("{what}: not found within {within} polls");
    };

    // An insert: one more entry.
    other
        .insert_prefix("203.0.113.0/24".parse().unwrap(), &value)
        .unwrap();
    assert_eq!(found_within("an insert", 1, &mut poll), 1);

    // A delete: one entry less (a batch delete, as another agent's diff would).
    let mut fewer = good.clone();
    fewer.v4.pop_last();
    other.apply(&fewer).unwrap();
    assert_eq!(found_within("a delete", 1, &mut poll), 1);

    // In-place changes, the count as it was: the last, the first and a middle entry in key
    // order. The kernel walks a trie in about that order, so the walk, back at the start after
    // the polls above, reaches the last one after a few polls.
    let keys: Vec<LpmKeyV4> = good.v4.keys().copied().collect();
    let mut polls = Vec::new();
    for key in [keys[keys.len() - 1], keys[0], keys[keys.len() / 2]] {
        let changed = PrefixRules {
            addr_category: if good.v4[&key].addr_category == other_value.addr_category {
                value.addr_category
            } else {
                other_value.addr_category
            },
            ..good.v4[&key]
        };
        other.insert_prefix(net(&key), &changed).unwrap();
        let n = found_within("an in-place change", bound, &mut poll);
        eprintln!("{}: found after {n} of at most {bound} polls", net(&key));
        polls.push(n);
    }
    assert!(
        polls.iter().any(|&n| n > 1),
        "every change was in the next window ({polls:?}): the walk was not exercised"
    );
}

/// A poll of the `m365` source as the daemon runs it: the check for other writers, then the
/// fetch.
async fn agent_poll(agent: &mut Agent) -> Refreshed {
    agent.refresh("m365", false).await.unwrap()
}
