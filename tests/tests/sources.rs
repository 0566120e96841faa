//! Sources of other providers' ranges (`[[sources]]`) through the agent, against a real HTTP
//! server on loopback serving the providers' real files: the maps always equal the union an
//! independent reading of every file computes, one source failing or changing leaves the
//! others' prefixes alone, every kind of bad answer changes nothing and names its source, and
//! `lookup`'s catalog names the source that decided an address two sources cover.

use std::{net::IpAddr, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use classifier_common::{category, proto};
use classifier_user::{
    agent::{Agent, Refreshed},
    compile::Compiled,
    config::Config,
    datapath::{Datapath, Maps},
    explain::{Catalog, Oracle},
    sources::SourceConfig,
    state::State,
};
use ipnet::IpNet;
use serde_json::Value;
use tests::{
    FEED_2026033100, FEED_2026043000, TempDir,
    http::{FeedServer, Reply},
    runtime,
};

const AWS: &[u8] = include_bytes!("../fixtures/providers/aws-ip-ranges-1753388594.json");
const AZURE: &[u8] = include_bytes!("../fixtures/providers/azure-service-tags-public-363.json");
const GOOGLE: &[u8] = include_bytes!("../fixtures/providers/google-cloud-1753409788780.json");
const ZOOM: &[u8] = include_bytes!("../fixtures/providers/zoom-ipranges-20220109.txt");
const CLOUDFLARE_V4: &[u8] = include_bytes!("../fixtures/providers/cloudflare-ips-v4.txt");

fn source(text: &str) -> SourceConfig {
    toml::from_str(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn config(server: &FeedServer, sources: Vec<SourceConfig>) -> Config {
    let mut config = Config::default();
    config.feed.url = server.url();
    config.feed.allow_http = true;
    config.feed.connect_timeout = Duration::from_secs(1);
    config.feed.request_timeout = Duration::from_secs(2);
    config.sources = sources;
    config.validate().unwrap();
    config
}

/// An agent on private maps with `[feed]` applied from the server, or `None` (skip) without
/// BPF outside CI.
fn agent(config: Config, state_dir: &TempDir, server: &FeedServer) -> Option<(Datapath, Agent)> {
    let mut datapath = tests::load_private(&classifier_user::datapath::MapSizes::default())?;
    let maps = datapath.maps().unwrap();
    let mut agent = Agent::new(config, maps, State::open(&state_dir.0).unwrap()).unwrap();
    agent.apply_settings().unwrap();
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    runtime().block_on(agent.refresh("m365", false)).unwrap();
    Some((datapath, agent))
}

// --- An independent reading of every file: straight from its JSON or text. ---

/// One set as the reference reads it: its rank (Tunnel < Default < Allow < Optimize <
/// Direct), prefixes, ports, and whether it claims the other ports by address.
struct RefSet {
    rank: u8,
    prefixes: Vec<IpNet>,
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
    by_address: bool,
}

const RANKS: [u8; 5] = [
    category::TUNNEL,
    category::DEFAULT,
    category::ALLOW,
    category::OPTIMIZE,
    category::DIRECT,
];

fn rank(code: u8) -> u8 {
    u8::try_from(RANKS.iter().position(|c| *c == code).unwrap()).unwrap()
}

fn port_list(text: &str) -> Vec<(u16, u16)> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((lo, hi)) => (lo.parse().unwrap(), hi.parse().unwrap()),
            None => (p.parse().unwrap(), p.parse().unwrap()),
        })
        .collect()
}

fn m365_sets(feed: &[u8]) -> Vec<RefSet> {
    let all: Vec<Value> = serde_json::from_slice(feed).unwrap();
    all.iter()
        .filter(|set| set["ips"].as_array().is_some_and(|ips| !ips.is_empty()))
        .map(|set| RefSet {
            rank: rank(match set["category"].as_str().unwrap() {
                "Optimize" => category::OPTIMIZE,
                "Allow" => category::ALLOW,
                _ => category::DEFAULT,
            }),
            prefixes: set["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ip| ip.as_str().unwrap().parse().unwrap())
                .collect(),
            tcp: port_list(set["tcpPorts"].as_str().unwrap_or("")),
            udp: port_list(set["udpPorts"].as_str().unwrap_or("")),
            by_address: true,
        })
        .collect()
}

/// A source's set: `direct` or not, its prefixes, and its ports (none: every port).
fn list_set(direct: bool, prefixes: Vec<IpNet>, udp: &str) -> RefSet {
    let every = udp.is_empty();
    RefSet {
        rank: rank(if direct {
            category::DIRECT
        } else {
            category::TUNNEL
        }),
        prefixes,
        tcp: if every { vec![(0, 65535)] } else { Vec::new() },
        udp: if every {
            vec![(0, 65535)]
        } else {
            port_list(udp)
        },
        by_address: every,
    }
}

fn text_prefixes(body: &[u8]) -> Vec<IpNet> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|line| line.split('#').next().unwrap().trim())
        .filter(|line| !line.is_empty())
        .map(|line| line.parse().unwrap())
        .collect()
}

fn aws_prefixes(body: &[u8], service: &str) -> Vec<IpNet> {
    let file: Value = serde_json::from_slice(body).unwrap();
    let mut nets: Vec<IpNet> = Vec::new();
    for (list, key) in [("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")] {
        for entry in file[list].as_array().unwrap() {
            if entry["service"] == service {
                nets.push(entry[key].as_str().unwrap().parse().unwrap());
            }
        }
    }
    nets
}

fn google_prefixes(body: &[u8], scope: &str) -> Vec<IpNet> {
    let file: Value = serde_json::from_slice(body).unwrap();
    file["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["scope"] == scope)
        .map(|entry| {
            entry["ipv4Prefix"]
                .as_str()
                .or_else(|| entry["ipv6Prefix"].as_str())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

fn azure_prefixes(body: &[u8], tag: &str) -> Vec<IpNet> {
    let file: Value = serde_json::from_slice(body).unwrap();
    file["values"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|value| value["name"] == tag)
        .flat_map(|value| value["properties"]["addressPrefixes"].as_array().unwrap())
        .map(|net| net.as_str().unwrap().parse().unwrap())
        .collect()
}

/// The category of a packet and whether a port rule decided it, by the documented rule:
/// every set holding the address counts (any prefix length); the best set whose ports hold
/// the packet, else the best set that claims by address, else a source's port-only tunnel.
fn reference(sets: &[RefSet], addr: IpAddr, protocol: u8, port: Option<u16>) -> Option<(u8, bool)> {
    let holding: Vec<&RefSet> = sets
        .iter()
        .filter(|set| set.prefixes.iter().any(|net| net.contains(&addr)))
        .collect();
    if holding.is_empty() {
        return None;
    }
    let by_port = port.and_then(|port| {
        holding
            .iter()
            .filter(|set| {
                let ranges = if protocol == proto::TCP {
                    &set.tcp
                } else {
                    &set.udp
                };
                protocol != 1 && ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
            })
            .map(|set| set.rank)
            .max()
    });
    let code = |rank: u8| RANKS[usize::from(rank)];
    Some(match by_port {
        Some(rank) => (code(rank), true),
        None => (
            code(
                holding
                    .iter()
                    .filter(|set| set.by_address)
                    .map(|set| set.rank)
                    .max()
                    .unwrap_or(0),
            ),
            false,
        ),
    })
}

/// The maps hold one entry per distinct prefix of every set, and decide every probe (each
/// prefix's first, middle and last address, a spread of ports) as [`reference`] does.
fn assert_union(maps: &Maps, sets: &[RefSet]) {
    let mut unique: Vec<IpNet> = sets.iter().flat_map(|set| set.prefixes.clone()).collect();
    unique.sort_unstable();
    unique.dedup();
    let installed = maps.installed().unwrap();
    assert_eq!(
        installed.len(),
        unique.len(),
        "one entry per distinct prefix"
    );
    let probes: Vec<(u8, Option<u16>)> = [80, 443, 587, 3478, 3481, 3482, 8801, 8810, 50000]
        .into_iter()
        .flat_map(|port| [(proto::TCP, Some(port)), (proto::UDP, Some(port))])
        .chain([(1, None)])
        .collect();
    let mut checked = 0;
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
            for &(protocol, port) in &probes {
                let found = value.map(|v| {
                    let m = v.classify(protocol, port);
                    (m.category, m.by_port)
                });
                assert_eq!(
                    found,
                    reference(sets, addr, protocol, port),
                    "{addr} proto {protocol} port {port:?}"
                );
                checked += 1;
            }
        }
    }
    eprintln!("{} prefixes, {checked} probes agree", unique.len());
}

fn refresh(
    agent: &mut Agent,
    name: &str,
) -> Result<Refreshed, classifier_user::agent::RefreshError> {
    runtime().block_on(agent.refresh(name, false))
}

/// A file only root may change, for a `path` source.
fn private_file(dir: &Path, name: &str, body: &[u8]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn four_sources_one_failing_one_changing_always_equal_the_union() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("sources-union");
    let files = TempDir::new("sources-union-files");
    let azure = private_file(&files.0, "ServiceTags_Public.json", AZURE);
    let url = server.url();
    let sources = vec![
        source(&format!(
            "name = \"zoom\"\nkind = \"cidr-list\"\nurl = \"{url}/zoom.txt\"\nallow-http = true\nudp = \"3478-3479,8801-8810\""
        )),
        source(&format!(
            "name = \"cloudfront\"\nkind = \"aws\"\nurl = \"{url}/ip-ranges.json\"\nallow-http = true\nservices = [\"CLOUDFRONT\"]"
        )),
        source(&format!(
            "name = \"gcp\"\nkind = \"google\"\nurl = \"{url}/cloud.json\"\nallow-http = true\nscopes = [\"us-central1\"]\npolicy = \"tunnel\""
        )),
        source(&format!(
            "name = \"afd\"\nkind = \"azure-service-tags\"\npath = \"{}\"\ntags = [\"AzureFrontDoor.Frontend\"]",
            azure.display()
        )),
        source(&format!(
            "name = \"broken\"\nkind = \"cidr-list\"\nurl = \"{url}/broken.txt\"\nallow-http = true"
        )),
    ];
    let Some((_datapath, mut agent)) = agent(config(&server, sources), &state_dir, &server) else {
        return;
    };
    server.set(
        "/zoom.txt",
        Reply::status(200, std::str::from_utf8(ZOOM).unwrap()).header("ETag", "\"zoom-1\""),
    );
    server.set(
        "/ip-ranges.json",
        Reply::json(AWS).header("ETag", "\"aws-1753388594\""),
    );
    server.set("/cloud.json", Reply::json(GOOGLE));
    server.set("/broken.txt", Reply::status(500, "<html>oops</html>"));

    // Step 1: each source's first fetch; the broken one fails alone.
    for name in ["zoom", "cloudfront", "gcp", "afd"] {
        let outcome = refresh(&mut agent, name).unwrap();
        assert!(
            matches!(outcome, Refreshed::Applied { .. }),
            "{name}: {outcome:?}"
        );
    }
    let error = refresh(&mut agent, "broken").unwrap_err().to_string();
    assert!(
        error.starts_with("source broken: GET ") && error.contains("HTTP 500"),
        "{error}"
    );
    let zoom = |body: &[u8]| list_set(true, text_prefixes(body), "3478-3479,8801-8810");
    let others = || {
        vec![
            list_set(true, aws_prefixes(AWS, "CLOUDFRONT"), ""),
            list_set(false, google_prefixes(GOOGLE, "us-central1"), ""),
            list_set(true, azure_prefixes(AZURE, "AzureFrontDoor.Frontend"), ""),
        ]
    };
    let mut expected = m365_sets(FEED_2026043000);
    expected.push(zoom(ZOOM));
    expected.extend(others());
    assert_union(agent.maps(), &expected);
    let status = agent.status().sources.clone();
    assert_eq!(status.len(), 6);
    assert_eq!(status[0].name, "m365", "the feed is the first source");
    let status = status[1..].to_vec();
    assert_eq!(
        status
            .iter()
            .map(|s| (s.name.as_str(), s.version.as_deref(), s.prefixes_v4))
            .collect::<Vec<_>>(),
        [
            ("zoom", status[0].version.as_deref(), 122),
            ("cloudfront", Some("1753388594"), 193),
            ("gcp", Some("1753409788780"), 87),
            ("afd", Some("363"), 90),
            ("broken", None, 0),
        ]
    );
    assert!(status[0].version.as_deref().unwrap().starts_with("sha256:"));
    assert_eq!(status[4].consecutive_failures, 1);
    assert!(
        status[4]
            .last_error
            .as_deref()
            .unwrap()
            .contains("HTTP 500")
    );

    // Step 2: Zoom's list changes (five prefixes gone, one new); the others have not.
    let changed_zoom = {
        let text = std::str::from_utf8(ZOOM).unwrap();
        let mut lines: Vec<&str> = text.lines().skip(5).collect();
        lines.push("8.8.4.0/24");
        lines.join("\n")
    };
    server.set(
        "/zoom.txt",
        Reply::status(200, &changed_zoom).header("ETag", "\"zoom-2\""),
    );
    assert!(matches!(
        refresh(&mut agent, "zoom").unwrap(),
        Refreshed::Applied { .. }
    ));
    let before = server.requests().len();
    assert!(matches!(
        refresh(&mut agent, "cloudfront").unwrap(),
        Refreshed::Unchanged {
            why: "the server answered 304 Not Modified",
            ..
        }
    ));
    assert_eq!(
        server.requests()[before..],
        ["/ip-ranges.json", "304 /ip-ranges.json"],
        "a conditional GET with the held ETag, answered 304"
    );
    assert!(matches!(
        refresh(&mut agent, "gcp").unwrap(),
        Refreshed::Unchanged {
            why: "the same content as held",
            ..
        }
    ));
    assert!(matches!(
        refresh(&mut agent, "afd").unwrap(),
        Refreshed::Unchanged {
            why: "the same content as held",
            ..
        }
    ));
    assert!(refresh(&mut agent, "broken").is_err());
    assert_eq!(agent.status().sources[5].consecutive_failures, 2);
    let mut expected = m365_sets(FEED_2026043000);
    expected.push(zoom(changed_zoom.as_bytes()));
    expected.extend(others());
    assert_union(agent.maps(), &expected);

    // Step 3: a new Microsoft 365 version keeps every source's prefixes.
    server.set("/version/Worldwide", Reply::version("2026043001"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026033100));
    runtime().block_on(agent.refresh("m365", false)).unwrap();
    let mut expected = m365_sets(FEED_2026033100);
    expected.push(zoom(changed_zoom.as_bytes()));
    expected.extend(others());
    assert_union(agent.maps(), &expected);

    // Step 4: the broken source answers; it joins without touching the others.
    server.set(
        "/broken.txt",
        Reply::status(200, "# mine\n203.0.113.0/24\n"),
    );
    let error = refresh(&mut agent, "broken").unwrap_err().to_string();
    assert!(
        error.contains("203.0.113.0/24") && error.contains("documentation"),
        "special-purpose space is refused: {error}"
    );
    server.set(
        "/broken.txt",
        Reply::status(200, "# mine\n100.64.0.0/10\n45.60.0.0/16\n"),
    );
    assert!(
        refresh(&mut agent, "broken").is_err(),
        "shared address space"
    );
    server.set("/broken.txt", Reply::status(200, "# mine\n45.60.0.0/16\n"));
    assert!(matches!(
        refresh(&mut agent, "broken").unwrap(),
        Refreshed::Applied { .. }
    ));
    expected.push(list_set(true, vec!["45.60.0.0/16".parse().unwrap()], ""));
    assert_union(agent.maps(), &expected);
    let status = agent.status();
    let broken = &status.sources[5];
    assert_eq!(
        (broken.consecutive_failures, broken.last_error.as_deref()),
        (0, None)
    );

    // A restart finds every source's last good file in the state directory.
    let held: Vec<_> = agent
        .status()
        .sources
        .iter()
        .map(|s| s.version.clone())
        .collect();
    let config = agent.config().clone();
    drop(agent);
    let state = State::open(&state_dir.0).unwrap();
    assert!(state.source("zoom").is_some() && state.source("afd").is_some());
    let mut datapath = tests::load_private(&classifier_user::datapath::MapSizes::default())
        .expect("BPF worked a moment ago");
    let mut agent = Agent::new(config, datapath.maps().unwrap(), state).unwrap();
    agent.start().unwrap();
    assert_union(agent.maps(), &expected);
    agent.save_status();
    let versions: Vec<_> = agent
        .status()
        .sources
        .iter()
        .map(|s| s.version.clone())
        .collect();
    assert_eq!(versions, held);
}

/// The maps, to compare whole.
fn snapshot(maps: &Maps) -> Compiled {
    maps.installed().unwrap()
}

/// `body` with its first `keep` tenths of entries of `list` that `wanted` takes, and a newer
/// version (`syncToken` or `changeNumber`).
fn json_keeping(body: &[u8], list: &str, wanted: impl Fn(&Value) -> bool, keep: usize) -> Vec<u8> {
    let mut file: Value = serde_json::from_slice(body).unwrap();
    if let Some(token) = file["syncToken"].as_str() {
        file["syncToken"] = Value::from((token.parse::<u64>().unwrap() + 1).to_string());
    }
    let entries = file[list].as_array_mut().unwrap();
    let total = entries.iter().filter(|entry| wanted(entry)).count();
    let mut seen = 0;
    entries.retain(|entry| {
        if !wanted(entry) {
            return true;
        }
        seen += 1;
        seen <= total * keep / 10
    });
    serde_json::to_vec(&file).unwrap()
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of bad answers per kind")]
fn each_kinds_bad_answers_change_nothing_and_name_the_source() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("sources-bad");
    let url = server.url();
    let sources = vec![
        source(&format!(
            "name = \"cloudfront\"\nkind = \"aws\"\nurl = \"{url}/aws.json\"\nallow-http = true\nservices = [\"CLOUDFRONT\"]"
        )),
        source(&format!(
            "name = \"afd\"\nkind = \"azure-service-tags\"\nurl = \"{url}/azure.json\"\nallow-http = true\ntags = [\"AzureFrontDoor.Frontend\"]"
        )),
        source(&format!(
            "name = \"gcp\"\nkind = \"google\"\nurl = \"{url}/google.json\"\nallow-http = true\nscopes = [\"us-central1\"]"
        )),
        source(&format!(
            "name = \"zoom\"\nkind = \"cidr-list\"\nurl = \"{url}/zoom.txt\"\nallow-http = true"
        )),
        source(&format!(
            "name = \"gcc\"\nkind = \"m365\"\nurl = \"{url}\"\nallow-http = true\ninstance = \"USGovGCCHigh\""
        )),
    ];
    let mut config = config(&server, sources);
    config.feed.max_body_bytes = 16 << 20;
    let Some((_datapath, mut agent)) = agent(config, &state_dir, &server) else {
        return;
    };
    let gcc_version = |version: &str| {
        Reply::json(format!(r#"{{"instance": "USGovGCCHigh", "latest": "{version}"}}"#).as_bytes())
    };
    let good: Vec<(&str, &str, Vec<u8>)> = vec![
        ("cloudfront", "/aws.json", AWS.to_vec()),
        ("afd", "/azure.json", AZURE.to_vec()),
        ("gcp", "/google.json", GOOGLE.to_vec()),
        ("zoom", "/zoom.txt", ZOOM.to_vec()),
        ("gcc", "/endpoints/USGovGCCHigh", FEED_2026043000.to_vec()),
    ];
    server.set("/version/USGovGCCHigh", gcc_version("2026043000"));
    for (name, path, body) in &good {
        server.set(path, Reply::json(body));
        assert!(
            matches!(
                refresh(&mut agent, name).unwrap(),
                Refreshed::Applied { .. }
            ),
            "{name}"
        );
    }
    let before = snapshot(agent.maps());
    let versions = |agent: &Agent| -> Vec<Option<String>> {
        agent
            .status()
            .sources
            .iter()
            .map(|s| s.version.clone())
            .collect()
    };
    let held = versions(&agent);
    assert_eq!(held.len(), 6, "m365 and five sources");

    let host_bits = |body: &[u8], from: &str, to: &str| {
        let text = String::from_utf8_lossy(body);
        assert!(text.contains(from), "{from} is in the file");
        text.replacen(from, to, 1).into_bytes()
    };
    let huge = [AWS, &vec![b' '; 50 << 20]].concat();
    let html = b"<!DOCTYPE html><html><body>Service unavailable</body></html>".to_vec();
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("cloudfront", "/aws.json", html.clone(), "HTML"),
        (
            "cloudfront",
            "/aws.json",
            AWS[..AWS.len() / 2].to_vec(),
            "EOF",
        ),
        ("cloudfront", "/aws.json", Vec::new(), "EOF"),
        ("cloudfront", "/aws.json", GOOGLE.to_vec(), "missing field"),
        (
            "cloudfront",
            "/aws.json",
            host_bits(AWS, "\"120.52.22.96/27\"", "\"120.52.22.97/27\""),
            "host bits",
        ),
        (
            "cloudfront",
            "/aws.json",
            host_bits(AWS, "\"120.52.22.96/27\"", "\"120.52.22.64/27\""),
            "version 1753388594, the applied file's, with other content",
        ),
        (
            "cloudfront",
            "/aws.json",
            host_bits(AWS, "\"1753388594\"", "\"1753388000\""),
            "older than the applied 1753388594",
        ),
        (
            "cloudfront",
            "/aws.json",
            json_keeping(AWS, "prefixes", |e| e["service"] == "CLOUDFRONT", 1),
            "more than the 50% limit",
        ),
        ("cloudfront", "/aws.json", huge, "larger than"),
        ("afd", "/azure.json", html.clone(), "HTML"),
        (
            "afd",
            "/azure.json",
            AZURE[..AZURE.len() / 3].to_vec(),
            "EOF",
        ),
        ("afd", "/azure.json", AWS.to_vec(), "missing field"),
        (
            "afd",
            "/azure.json",
            br#"{"changeNumber": 364, "cloud": "Public", "values": []}"#.to_vec(),
            "no prefix matched",
        ),
        ("gcp", "/google.json", html.clone(), "HTML"),
        ("gcp", "/google.json", b"{}".to_vec(), "missing field"),
        (
            "gcp",
            "/google.json",
            json_keeping(GOOGLE, "prefixes", |e| e["scope"] == "us-central1", 0),
            "no prefix matched",
        ),
        ("zoom", "/zoom.txt", html.clone(), "HTML"),
        ("zoom", "/zoom.txt", b"".to_vec(), "no prefix"),
        ("zoom", "/zoom.txt", AWS.to_vec(), "is not a CIDR prefix"),
        (
            "zoom",
            "/zoom.txt",
            host_bits(ZOOM, "101.36.167.0/24", "101.36.167.1/24"),
            "host bits",
        ),
        ("zoom", "/zoom.txt", ZOOM[..100].to_vec(), "it would remove"),
        ("gcc", "/endpoints/USGovGCCHigh", html, "not valid JSON"),
        (
            "gcc",
            "/endpoints/USGovGCCHigh",
            FEED_2026043000[..1000].to_vec(),
            "not valid JSON",
        ),
    ];
    for (name, path, body, needle) in &cases {
        let reply = if *name == "zoom" {
            Reply::status(200, &String::from_utf8_lossy(body))
        } else {
            Reply::json(body)
        };
        if *name == "gcc" {
            server.set("/version/USGovGCCHigh", gcc_version("2026043001"));
        }
        server.set(path, reply);
        let error = refresh(&mut agent, name)
            .err()
            .unwrap_or_else(|| panic!("{name} {needle}: accepted"))
            .to_string();
        assert!(
            error.starts_with(&format!("source {name}: ")) && error.contains(needle),
            "{name}, expected {needle:?}: {error}"
        );
        assert_eq!(
            snapshot(agent.maps()),
            before,
            "{name} {needle}: the maps changed"
        );
        assert_eq!(
            versions(&agent),
            held,
            "{name} {needle}: a held file changed"
        );
        let status = agent.status();
        let failed = status.source(name).unwrap();
        assert!(failed.last_error.as_deref().unwrap().contains(needle));
    }
    // The other sources' errors were their own: the good ones still fetch as unchanged.
    for (name, path, body) in &good {
        server.set(path, Reply::json(body));
        if *name == "gcc" {
            server.set("/version/USGovGCCHigh", gcc_version("2026043000"));
        }
        assert!(
            matches!(
                refresh(&mut agent, name).unwrap(),
                Refreshed::Unchanged { .. }
            ),
            "{name}"
        );
    }
    assert_eq!(snapshot(agent.maps()), before);
}

/// Addresses two sources cover: `lookup`'s oracle and catalog name the source that decides.
#[test]
fn lookup_names_the_source_that_decided() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("sources-lookup");
    let url = server.url();
    let sources = vec![
        source(&format!(
            "name = \"zoom\"\nkind = \"cidr-list\"\nurl = \"{url}/zoom.txt\"\nallow-http = true\nudp = \"3478-3479\""
        )),
        source(&format!(
            "name = \"teams-direct\"\nkind = \"cidr-list\"\nurl = \"{url}/teams.txt\"\nallow-http = true"
        )),
        source(&format!(
            "name = \"corp\"\nkind = \"cidr-list\"\nurl = \"{url}/corp.txt\"\nallow-http = true\npolicy = \"tunnel\""
        )),
    ];
    let Some((_datapath, mut agent)) = agent(config(&server, sources), &state_dir, &server) else {
        return;
    };
    server.set("/zoom.txt", Reply::status(200, "101.36.167.0/24\n"));
    // Inside Teams' 52.112.0.0/14 (Optimize for UDP 3478-3481, Allow for TCP 443).
    server.set("/teams.txt", Reply::status(200, "52.112.1.0/24\n"));
    // A host inside Zoom's /24, to the tunnel.
    server.set("/corp.txt", Reply::status(200, "101.36.167.9/32\n"));
    for name in ["zoom", "teams-direct", "corp"] {
        refresh(&mut agent, name).unwrap();
    }
    let installed = agent.maps().installed().unwrap();
    let catalog = Catalog::load(&state_dir.0, &installed);
    let oracle = Oracle::new(agent.maps()).unwrap();
    let ask = |addr: &str, protocol: u8, port: u16| {
        let decision = oracle
            .decide(addr.parse().unwrap(), protocol, Some(port))
            .unwrap();
        (
            catalog.source_of(decision.set_id),
            category::name(decision.category),
            classifier_common::action::name(decision.action),
        )
    };
    // Teams media in the direct list: the direct source outranks Optimize.
    assert_eq!(
        ask("52.112.1.1", proto::UDP, 3478),
        (Some("teams-direct"), Some("Direct"), "direct")
    );
    // Next to it, only Microsoft's set holds the address.
    assert_eq!(
        ask("52.113.1.1", proto::UDP, 3478),
        (Some("m365"), Some("Optimize"), "direct")
    );
    // Zoom's port, inside corp's tunnel host: direct wins over tunnel.
    assert_eq!(
        ask("101.36.167.9", proto::UDP, 3478),
        (Some("zoom"), Some("Direct"), "direct")
    );
    // Another port of that host: only corp's rule holds it.
    assert_eq!(
        ask("101.36.167.9", proto::TCP, 443),
        (Some("corp"), Some("Tunnel"), "tunnel")
    );
    // Another port of Zoom's range: Zoom claims only its ports.
    assert_eq!(
        ask("101.36.167.10", proto::TCP, 443),
        (Some("zoom"), Some("Tunnel"), "tunnel")
    );
    assert_eq!(catalog.ids_of("corp").map(|ids| ids.len()), Some(1));
}

/// The real daemon refreshes each source on its own clock, a failing one alone shows an
/// error, and the operator's commands (`sources`, `lookup`, `prefixes --source`,
/// `sync --source`) name the source.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn the_daemon_refreshes_each_source_and_the_commands_name_it() {
    use std::{ffi::OsStr, net::TcpListener};

    use tests::{
        PinDir,
        daemon::{Daemon, Setup, status, wait_for},
        netns::Netns,
        output::ok,
        xdp_breakout,
    };

    let Some(netns) = Netns::with_veth_pair("xbt-src") else {
        return;
    };
    let server = FeedServer::serve(netns.run(|| TcpListener::bind("127.0.0.1:0").unwrap()));
    server.set("/version/Worldwide", Reply::version("2026050100"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    server.set(
        "/zoom.txt",
        Reply::status(200, std::str::from_utf8(ZOOM).unwrap()).header("ETag", "\"z1\""),
    );
    server.set("/down.txt", Reply::status(503, "down"));
    let pin_dir = PinDir::new("sources");
    let work = TempDir::new("sources-daemon");
    std::fs::create_dir_all(&work.0).unwrap();
    let state_dir = work.0.join("state");
    let config = work.0.join("config.toml");
    let url = server.url();
    std::fs::write(
        &config,
        format!(
            "[[sources]]\nname = \"zoom\"\nkind = \"cidr-list\"\nurl = \"{url}/zoom.txt\"\n\
             allow-http = true\nrefresh = \"1s\"\nudp = \"3478-3479,8801-8810\"\n\n\
             [[sources]]\nname = \"down\"\nkind = \"cidr-list\"\nurl = \"{url}/down.txt\"\n\
             allow-http = true\nrefresh = \"1s\"\n"
        ),
    )
    .unwrap();
    let setup = Setup {
        netns: &netns,
        pin_dir: &pin_dir.path,
        state_dir: &state_dir,
        iface: "lan1",
        feed_url: &url,
    };
    let args: [&OsStr; 4] = [
        "--poll-interval".as_ref(),
        "1h".as_ref(),
        "--config".as_ref(),
        config.as_ref(),
    ];
    let daemon = Daemon::start(&setup, args, work.0.join("daemon.log"));
    let source = |name: &str| {
        status(&state_dir).and_then(|status| {
            status
                .sources
                .into_iter()
                .find(|source| source.name == name)
        })
    };
    wait_for(
        "zoom applied and down failing twice",
        || {
            source("zoom").is_some_and(|zoom| zoom.prefixes_v4 == 122)
                && source("down").is_some_and(|down| down.consecutive_failures >= 2)
        },
        || daemon.log(),
    );
    daemon.wait_log("source zoom: applied sha256:");
    daemon.wait_log("source down: GET ");

    let cli = |args: &[&str]| {
        let mut command = netns.command(xdp_breakout().to_str().unwrap());
        command
            .arg("--pin-dir")
            .arg(&pin_dir.path)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(args);
        ok(&command.output().unwrap())
    };
    let rows: Vec<Value> = serde_json::from_str(&cli(&["--json", "sources"])).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows.iter()
            .map(|row| (row["name"].as_str().unwrap(), row["kind"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("m365", "m365"),
            ("zoom", "cidr-list"),
            ("down", "cidr-list")
        ]
    );
    assert_eq!(
        (rows[0]["prefixes_v4"].as_u64(), rows[0]["version"].as_str()),
        (Some(34), Some("2026050100"))
    );
    assert_eq!(rows[1]["prefixes_v4"], 122);
    assert!(rows[1]["last_error"].is_null());
    assert!(
        rows[2]["last_error"].as_str().unwrap().contains("HTTP 503"),
        "{}",
        rows[2]
    );
    let text = cli(&["sources"]);
    assert!(
        text.lines().nth(2).unwrap().starts_with("zoom ") && text.contains("HTTP 503"),
        "{text}"
    );

    let lookup = |args: &[&str]| -> Value {
        serde_json::from_str(&cli(&[&["--json", "lookup"][..], args].concat())).unwrap()
    };
    let zoom = lookup(&["101.36.167.1", "--proto", "udp", "--port", "3478"]);
    assert_eq!(
        (&zoom["source"], &zoom["category"], &zoom["action"]),
        (
            &Value::from("zoom"),
            &Value::from("Direct"),
            &Value::from("direct")
        ),
        "{zoom}"
    );
    let teams = lookup(&["52.112.1.1", "--proto", "udp", "--port", "3478"]);
    assert_eq!(teams["source"], "m365", "{teams}");
    let rows: Vec<Value> =
        serde_json::from_str(&cli(&["--json", "prefixes", "--source", "zoom"])).unwrap();
    assert_eq!(rows.len(), 122);
    tests::output::fails(
        &{
            let mut command = netns.command(xdp_breakout().to_str().unwrap());
            command
                .arg("--pin-dir")
                .arg(&pin_dir.path)
                .arg("--state-dir")
                .arg(&state_dir)
                .args(["prefixes", "--source", "nope"]);
            command.output().unwrap()
        },
        1,
        "no source \"nope\"",
    );

    // Zoom's list changes: the daemon takes it within a refresh or two.
    server.set(
        "/zoom.txt",
        Reply::status(200, "101.36.167.0/24\n8.5.128.0/23\n").header("ETag", "\"z2\""),
    );
    // ... unless its shrink limit refuses it: 120 of 122 removed.
    daemon.wait_log("it would remove 120 of the 122 installed prefixes");
    assert_eq!(source("zoom").unwrap().prefixes_v4, 122);
    // The operator forces it.
    let forced = cli(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--source",
        "zoom",
        "--force",
    ]);
    assert!(
        forced.starts_with("applied source zoom sha256:") && forced.contains("120 removed"),
        "{forced}"
    );
    let rows: Vec<Value> =
        serde_json::from_str(&cli(&["--json", "prefixes", "--source", "zoom"])).unwrap();
    assert_eq!(rows.len(), 2);
    // The daemon notices the other writer and keeps the forced file.
    wait_for(
        "the daemon to take in the forced file",
        || source("zoom").is_some_and(|zoom| zoom.prefixes_v4 == 2 && zoom.last_error.is_none()),
        || daemon.log(),
    );

    // A reload drops the failing source and adds Cloudflare's list; Zoom keeps its file.
    server.set(
        "/ips-v4",
        Reply::status(200, std::str::from_utf8(CLOUDFLARE_V4).unwrap()),
    );
    std::fs::write(
        &config,
        format!(
            "[[sources]]\nname = \"zoom\"\nkind = \"cidr-list\"\nurl = \"{url}/zoom.txt\"\n\
             allow-http = true\nrefresh = \"1s\"\nudp = \"3478-3479,8801-8810\"\n\n\
             [[sources]]\nname = \"cloudflare\"\nkind = \"cidr-list\"\nurl = \"{url}/ips-v4\"\n\
             allow-http = true\nrefresh = \"1s\"\npolicy = \"tunnel\"\n"
        ),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for(
        "the reloaded sources",
        || {
            status(&state_dir).is_some_and(|status| {
                status.sources.len() == 3
                    && status.sources[1].prefixes_v4 == 2
                    && status.sources[2].name == "cloudflare"
                    && status.sources[2].prefixes_v4 == 15
            })
        },
        || daemon.log(),
    );
    let installed = Maps::from_pins(&pin_dir.path).unwrap().installed().unwrap();
    assert_eq!(
        (installed.v4.len(), installed.v6.len()),
        (34 + 2 + 15, 59),
        "the feed, Zoom's two and Cloudflare's 15, none of the dropped source's"
    );
    let cloudflare = lookup(&["104.16.0.1", "--proto", "tcp", "--port", "443"]);
    assert_eq!(
        (&cloudflare["source"], &cloudflare["action"]),
        (&Value::from("cloudflare"), &Value::from("tunnel")),
        "{cloudflare}"
    );
}

/// Snapshot of the maps to compare byte for byte.
fn entries(agent: &Agent) -> Compiled {
    agent.maps().installed().unwrap()
}

/// `count` /24s from `first.0.0.0` on, one a line: a cidr-list file of public space.
fn slash_24s(first: u8, count: u32) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(count as usize * 14);
    for n in 0..count {
        let [high, a, b, _] = ((u32::from(first) << 24) + (n << 8)).to_be_bytes();
        let _ = writeln!(text, "{high}.{a}.{b}.0/24");
    }
    text.into_bytes()
}

/// Two lists whose union is larger than the tries (1,048,576 entries a family): the second
/// is refused before anything is written, naming the numbers; the maps stay byte for byte
/// what they were, and the source's status says why. (The union used to be half-applied:
/// the trie filled, addresses of the refused part went direct.)
#[test]
fn a_union_larger_than_the_tries_is_refused_before_any_write() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("sources-capacity");
    let files = state_dir.0.with_extension("files");
    let big = private_file(&files, "big.txt", &slash_24s(11, 600_000));
    let bigger = private_file(&files, "bigger.txt", &slash_24s(21, 500_000));
    let list = |name: &str, path: &Path| {
        source(&format!(
            "name = \"{name}\"\nkind = \"cidr-list\"\npath = \"{}\"",
            path.display()
        ))
    };
    let mut config = config(&server, vec![list("big", &big), list("bigger", &bigger)]);
    config.feed.max_body_bytes = 32 << 20;
    let Some((_datapath, mut agent)) = agent(config, &state_dir, &server) else {
        return;
    };
    assert!(matches!(
        refresh(&mut agent, "big").unwrap(),
        Refreshed::Applied { .. }
    ));
    let before = entries(&agent);
    assert_eq!(before.v4.len(), 600_000 + 34);
    let error = refresh(&mut agent, "bigger").unwrap_err().to_string();
    assert!(
        error.starts_with("source bigger: refused file sha256:")
            && error.contains("/bigger.txt: the union")
            && error.contains(
                "the union of every source would hold 1100034 IPv4 prefixes, more than the \
                 1032192 the IPv4 trie holds (1048576 entries, 16384 kept for learned \
                 addresses)"
            )
            && error.contains("nothing was written"),
        "{error}"
    );
    assert!(entries(&agent) == before, "the maps changed");
    let status = agent.status();
    let bigger = status.source("bigger").unwrap();
    assert!(
        bigger
            .last_error
            .as_deref()
            .unwrap()
            .contains("more than the 1032192"),
        "{bigger:?}"
    );
    assert_eq!((bigger.prefixes_v4, bigger.version.as_deref()), (0, None));
    // An address of the refused part stays in the tunnel.
    assert_eq!(
        agent.maps().lookup("25.0.0.1".parse().unwrap()).unwrap(),
        None
    );
    std::fs::remove_dir_all(&files).unwrap();
}

/// A write that fails anyway is rolled back: another writer fills the trie after the agent
/// looked for other writers and before it writes, so the kernel answers ENOSPC; the maps then equal the last good table, and the source says what happened.
#[test]
fn a_failed_write_is_rolled_back_to_the_last_good_table() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("sources-rollback");
    let list_text = String::from_utf8(slash_24s(11, 1000)).unwrap();
    server.set("/list.txt", Reply::status(200, &list_text));
    let list = source(&format!(
        "name = \"list\"\nkind = \"cidr-list\"\nurl = \"{}/list.txt\"\nallow-http = true",
        server.url()
    ));
    let Some((mut datapath, mut agent)) = agent(config(&server, vec![list]), &state_dir, &server)
    else {
        return;
    };
    let good = entries(&agent);
    // The other writer leaves 500 entries free: the list's 1000 do not fit.
    let mut other = datapath.maps().unwrap();
    let mut full = good.clone();
    let value = *good.v4.values().next().unwrap();
    let room = agent.maps().capacity().0 - good.v4.len() - 500;
    for n in 0..u32::try_from(room).unwrap() {
        full.v4.insert(
            classifier_common::LpmKeyV4 {
                prefix_len: 32,
                addr: ((30u32 << 24) + n).to_be_bytes(),
            },
            value,
        );
    }
    // The daemon's steps, with the other writer between the look for other writers and the
    // write: reconcile, fetch, (the fill), accept.
    agent.reconcile();
    let i = agent.source_index("list").unwrap();
    let got = runtime().block_on(agent.fetch(i, false));
    other.apply(&full).unwrap();
    let refreshed = agent.accept(i, got, false);
    let error = refreshed.unwrap_err().to_string();
    assert!(
        error.starts_with("updating the maps failed (")
            && error.ends_with("; rolled back to the last good table"),
        "{error}"
    );
    assert!(
        entries(&agent) == good,
        "the maps are not the last good table"
    );
    let status = agent.status();
    let list = status.source("list").unwrap();
    assert!(
        list.last_error.as_deref().unwrap().contains("rolled back"),
        "{list:?}"
    );
    assert_eq!((list.consecutive_failures, list.prefixes_v4), (1, 0));
    // With room again, the same file applies.
    assert!(matches!(
        refresh(&mut agent, "list").unwrap(),
        Refreshed::Applied { .. }
    ));
    assert_eq!(entries(&agent).v4.len(), good.v4.len() + 1000);
}

/// Every source has the feed's gates: a list that grows from 16 prefixes to most of IPv4
/// (205 public /8s, as a probe did) is refused by the address-space cap, a 7,500-fold jump
/// by the churn limit; `sync --source NAME --force` takes each for one refresh.
#[test]
fn a_source_that_grows_too_much_is_refused_unless_forced() {
    let server = FeedServer::start();
    let state_dir = TempDir::new("sources-growth");
    let small = String::from_utf8(slash_24s(11, 16)).unwrap();
    server.set("/list.txt", Reply::status(200, &small));
    let list = source(&format!(
        "name = \"list\"\nkind = \"cidr-list\"\nurl = \"{}/list.txt\"\nallow-http = true",
        server.url()
    ));
    let Some((_datapath, mut agent)) = agent(config(&server, vec![list]), &state_dir, &server)
    else {
        return;
    };
    assert!(matches!(
        refresh(&mut agent, "list").unwrap(),
        Refreshed::Applied { .. }
    ));
    let before = entries(&agent);
    // Most of IPv4.
    let mut eights = small.clone();
    for n in (11..=223)
        .filter(|n| ![100, 127, 169, 172, 192, 198, 203].contains(n))
        .take(205)
    {
        eights.push_str(&n.to_string());
        eights.push_str(".0.0.0/8\n");
    }
    server.set("/list.txt", Reply::status(200, &eights));
    let error = refresh(&mut agent, "list").unwrap_err().to_string();
    assert!(
        error.contains("IPv4 addresses not in its installed prefixes")
            && error.contains("more than the 4% limit (feed.max-added-v4, feed.max-added-v6)")
            && error.contains("`xdp-breakout sync --source list --force`"),
        "{error}"
    );
    assert!(entries(&agent) == before, "the maps changed");
    assert_eq!(
        agent.maps().lookup("9.9.9.9".parse().unwrap()).unwrap(),
        None
    );
    // 120,000 more /24s: within the address-space cap (2.9% of IPv4), past the churn limit.
    let jump = [small.as_bytes(), &slash_24s(12, 120_000)].concat();
    server.set(
        "/list.txt",
        Reply::status(200, std::str::from_utf8(&jump).unwrap()),
    );
    let error = refresh(&mut agent, "list").unwrap_err().to_string();
    assert!(
        error.contains("it would add 120000 and remove 0 prefixes where 16 are installed")
            && error.contains("(feed.max-churn-percent)"),
        "{error}"
    );
    assert!(entries(&agent) == before, "the maps changed");
    // Forced, once: applied; the next unforced refresh judges against it.
    assert!(matches!(
        runtime().block_on(agent.refresh("list", true)).unwrap(),
        Refreshed::Applied { .. }
    ));
    assert_eq!(entries(&agent).v4.len(), before.v4.len() + 120_000);
    assert!(matches!(
        refresh(&mut agent, "list").unwrap(),
        Refreshed::Unchanged { .. }
    ));
}
