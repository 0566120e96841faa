//! The PAC file in a real PAC engine: `xdp-breakout pac` from the real feed, evaluated by
//! `pacparser` (the engine of `pactester`, Python package) for every host and wildcard of
//! the feed and hosts outside it, against an independent reading of the feed; and the
//! daemon serving the same file at `/proxy.pac`, regenerated when the feed changes.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{
    FEED_2026033100, FEED_2026043000, PinDir, TempDir,
    daemon::{Daemon, Setup, applied_version, wait_for},
    http::{FeedServer, Reply},
    in_ci,
    netns::Netns,
    output::ok,
    xdp_breakout,
};

const PROXY: &str = "PROXY proxy.branch.example:3128";

/// `*` matches any run of characters, as `shExpMatch` does for host patterns.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|skip| rest.is_char_boundary(skip) && glob(tail, &rest[skip..]))
        }
    }
}

/// Every `(category, pattern)` of the feed's URLs.
fn patterns(feed: &[u8]) -> Vec<(String, String)> {
    let sets: Vec<Value> = serde_json::from_slice(feed).unwrap();
    sets.iter()
        .flat_map(|set| {
            let category = set["category"].as_str().unwrap().to_owned();
            set["urls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |url| (category.clone(), url.as_str().unwrap().to_lowercase()))
        })
        .collect()
}

/// Hosts to ask about: each exact host, for each wildcard a host it matches and the name
/// without its `*.`, and hosts outside the feed.
fn hosts(patterns: &[(String, String)]) -> Vec<String> {
    let mut hosts: Vec<String> = patterns
        .iter()
        .flat_map(|(_, pattern)| match pattern.strip_prefix("*.") {
            Some(rest) => vec![format!("x1.{rest}"), rest.to_owned()],
            None => vec![pattern.replace('*', "tenant7")],
        })
        .chain(
            [
                "example.com",
                "www.google.com",
                "office.com.evil.example",
                "microsoft.com",
                "outlook.office365.com.example.net",
            ]
            .map(str::to_owned),
        )
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// `pacparser`'s answer for each host (`https://HOST/`).
fn pacparser(pac: &str, hosts: &[String]) -> Option<Vec<String>> {
    let script = r#"
import json, sys, pacparser
pac, hosts = sys.argv[1], json.load(sys.stdin)
pacparser.init()
pacparser.parse_pac_string(pac)
print(json.dumps([pacparser.find_proxy("https://%s/" % host, host) for host in hosts]))
"#;
    let mut child = match Command::new("python3")
        .args(["-c", script, pac])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            let _ = tests::unavailable("python3", &error);
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(hosts).unwrap().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !in_ci() && stderr.contains("No module named 'pacparser'"),
            "pacparser: {stderr}"
        );
        let _ = tests::unavailable("the pacparser Python package (cargo xtask setup)", &stderr);
        return None;
    }
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

fn pac(state_dir: &std::path::Path, args: &[&str]) -> String {
    ok(&Command::new(xdp_breakout())
        .arg("--state-dir")
        .arg(state_dir)
        .arg("pac")
        .args(args)
        .output()
        .unwrap())
}

#[test]
fn the_pac_file_sends_exactly_the_direct_categories_hosts_direct() {
    let dir = TempDir::new("pac");
    std::fs::create_dir_all(&dir.0).unwrap();
    let feed = dir.0.join("feed.json");
    std::fs::write(&feed, FEED_2026043000).unwrap();
    let patterns = patterns(FEED_2026043000);
    let hosts = hosts(&patterns);
    assert!(hosts.len() > 200, "{} hosts", hosts.len());
    for (args, direct) in [
        (vec!["--type", "1"], vec!["Optimize"]),
        (vec!["--type", "2"], vec!["Optimize", "Allow"]),
        // The data plane's policy: Optimize and Allow direct by default.
        (vec![], vec!["Optimize", "Allow"]),
    ] {
        let mut args = args;
        args.extend(["--proxy", PROXY, "--feed-file", feed.to_str().unwrap()]);
        let file = pac(&dir.0.join("state"), &args);
        let Some(answers) = pacparser(&file, &hosts) else {
            return;
        };
        assert_eq!(answers.len(), hosts.len());
        let mut directs = 0;
        for (host, answer) in hosts.iter().zip(&answers) {
            let expected = if patterns.iter().any(|(category, pattern)| {
                direct.contains(&category.as_str()) && glob(pattern, host)
            }) {
                directs += 1;
                "DIRECT"
            } else {
                PROXY
            };
            assert_eq!(answer, expected, "{host} with {args:?}");
        }
        eprintln!("{args:?}: {directs} of {} hosts direct", hosts.len());
        assert!(directs > 0 && directs < hosts.len());
    }
    // Upper case in the URL does not change the answer.
    let file = pac(
        &dir.0.join("state"),
        &[
            "--type",
            "1",
            "--proxy",
            PROXY,
            "--feed-file",
            feed.to_str().unwrap(),
        ],
    );
    let Some(answers) = pacparser(&file, &["OUTLOOK.Office365.com".to_owned()]) else {
        return;
    };
    assert_eq!(answers, ["DIRECT"]);
    // A proxy string that would break out of its literal is refused.
    tests::output::fails(
        &Command::new(xdp_breakout())
            .args(["pac", "--proxy", "PROXY a:1\"; alert(1); \""])
            .output()
            .unwrap(),
        1,
        "is not host:port",
    );
}

fn get(netns: &Netns, addr: std::net::SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: router\r\n\r\n");
    netns.run(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
}

/// `[pac] serve`: the daemon serves what `xdp-breakout pac` prints, and a new feed version
/// changes it.
#[test]
fn the_daemon_serves_the_pac_file_of_the_feed_it_applied() {
    let Some(netns) = Netns::with_veth_pair("xbt-pac") else {
        return;
    };
    let server = FeedServer::serve(netns.run(|| TcpListener::bind("127.0.0.1:0").unwrap()));
    server.set("/version/Worldwide", Reply::version("2026050100"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026033100));
    let pin_dir = PinDir::new("pac");
    let work = TempDir::new("pac-daemon");
    std::fs::create_dir_all(&work.0).unwrap();
    let state_dir = work.0.join("state");
    let config = work.0.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"127.0.0.1:9366\"\n[pac]\nserve = true\nproxy = \"{PROXY}\"\ntype = 1\n"
        ),
    )
    .unwrap();
    let url = server.url();
    let setup = Setup {
        netns: &netns,
        pin_dir: &pin_dir.path,
        state_dir: &state_dir,
        iface: "lan1",
        feed_url: &url,
    };
    let daemon = Daemon::start(
        &setup,
        [
            "--poll-interval",
            "1s",
            "--config",
            config.to_str().unwrap(),
        ],
        work.0.join("daemon.log"),
    );
    wait_for(
        "feed 2026050100",
        || applied_version(&state_dir).as_deref() == Some("2026050100"),
        || daemon.log(),
    );
    let addr = "127.0.0.1:9366".parse().unwrap();
    let pac_served = || {
        let answer = get(&netns, addr, "/proxy.pac");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(head.contains("application/x-ns-proxy-autoconfig"), "{head}");
        body.to_owned()
    };
    let printed = || {
        ok(&Command::new(xdp_breakout())
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["pac", "--config", config.to_str().unwrap()])
            .output()
            .unwrap())
    };
    let first = pac_served();
    assert_eq!(first, printed());
    assert!(first.contains("feed 2026050100"), "{first}");

    server.set("/version/Worldwide", Reply::version("2026060100"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    wait_for(
        "feed 2026060100",
        || applied_version(&state_dir).as_deref() == Some("2026060100"),
        || daemon.log(),
    );
    wait_for(
        "the PAC file of 2026060100",
        || pac_served().contains("feed 2026060100"),
        || daemon.log(),
    );
    assert_eq!(pac_served(), printed());
    assert!(
        get(&netns, addr, "/metrics").starts_with("HTTP/1.1 200 OK"),
        "metrics on the same listener"
    );
}
