//! Every operator command run for real against programs attached in a throwaway namespace:
//! `lookup` agrees with the data plane's own verdict, `classify --pcap` decides a capture,
//! `sync --dry-run` changes nothing, the `--json` forms say what was done, and bad arguments
//! fail clearly. Also `completions` and `man` from the real binary.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Output},
};

use classifier_user::{datapath::Maps, pcap};
use serde_json::Value;
use tests::{
    FEED_2026043000, PinDir, TempDir, chmod, chown,
    http::{FeedServer, Reply},
    ip,
    netns::{Netns, ifindex, send_frames},
    output::ok,
    packet::{ETH_P_8021Q, L4, Spec, non_ip},
    unavailable, xdp_breakout,
};

fn cli(netns: Option<&Netns>, args: &[&str]) -> Output {
    let bin = xdp_breakout();
    let mut command = match netns {
        Some(netns) => netns.command(bin.to_str().unwrap()),
        None => Command::new(bin),
    };
    command.args(args).output().unwrap()
}

fn fails(output: &Output, code: i32, needle: &str) {
    tests::output::fails(output, code, needle);
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `classify --json` output split into its per-packet decisions and its summary (the last
/// line), so that callers compare every decision and none is taken for the summary.
fn classified(output: &str) -> (Vec<Value>, Value) {
    let mut lines = json_lines(output);
    let last = lines.pop().expect("classify printed nothing");
    let summary = last
        .get("summary")
        .unwrap_or_else(|| panic!("the last line is not the summary: {last}"))
        .clone();
    for line in &lines {
        assert!(
            line.get("index").is_some(),
            "not a packet's decision: {line}"
        );
    }
    (lines, summary)
}

/// `completions` and `man` print what clap_complete and clap_mangen generate from the command
/// tree. (That the README lists exactly the commands of `--help` is a host unit test in
/// classifier-user's `cli` module.)
#[test]
fn completions_and_man_page_are_printed() {
    assert!(ok(&cli(None, &["completions", "bash"])).contains("xdp-breakout"));
    assert!(ok(&cli(None, &["man"])).contains(".TH xdp-breakout 1"));
}

#[test]
fn bad_arguments_fail_clearly_without_touching_anything() {
    fails(
        &cli(None, &["lookup", "--port", "5", "1.2.3.4"]),
        2,
        "--proto",
    );
    fails(
        &cli(None, &["lookup", "example.com"]),
        1,
        "\"example.com\" is not an IP address",
    );
    fails(
        &cli(
            None,
            &["--pin-dir", "/sys/fs/bpf/xbt-nothing-here", "stats"],
        ),
        1,
        "no xdp-breakout maps at /sys/fs/bpf/xbt-nothing-here",
    );
    fails(
        &cli(
            None,
            &[
                "--pin-dir",
                "/sys/fs/bpf/xbt-nothing-here",
                "lookup",
                "1.2.3.4",
            ],
        ),
        1,
        "no xdp-breakout maps",
    );
    fails(
        &cli(
            None,
            &["--pin-dir", "/sys/fs/bpf/xbt-nothing-here", "status"],
        ),
        1,
        "no xdp-breakout maps",
    );
    fails(
        &cli(None, &["classify", "--pcap", "/nonexistent.pcap"]),
        1,
        "reading capture /nonexistent.pcap",
    );
    fails(
        &cli(None, &["attach", "nosuch0"]),
        1,
        "interface nosuch0 does not exist",
    );
    fails(
        &cli(None, &["config", "check", "--config", "/nonexistent.toml"]),
        1,
        "reading /nonexistent.toml",
    );
    fails(
        &cli(None, &["run", "--poll-interval", "soon"]),
        2,
        "not a duration",
    );
    assert!(!Path::new("/sys/fs/bpf/xbt-nothing-here").exists());
}

/// A configuration file another user could change is refused by `config check` (and by
/// `run`, `sync` and `pac`, which load it the same way), naming the file, its owner, its
/// mode and the fix; so is a `[[sources]]` file the agent would refuse to fetch.
#[test]
fn config_check_refuses_files_another_user_could_change() {
    let dir = TempDir::new("config-owner");
    std::fs::create_dir(&dir.0).unwrap();
    let config = dir.0.join("config.toml");
    std::fs::write(&config, "[policy]\ninclude = [\"77.0.0.0/8\"]\n").unwrap();
    chmod(&config, 0o644);
    let path = config.to_str().unwrap();
    let check = || cli(None, &["config", "check", "--config", path]);
    assert!(
        ok(&check()).contains("77.0.0.0/8"),
        "root's 0644 file passes"
    );

    let Some(()) = chown(&config, 65534) else {
        return;
    };
    let output = check();
    fails(
        &output,
        1,
        &format!("configuration file {path} is owned by uid 65534"),
    );
    fails(&output, 1, "with mode 0644: another user could change");
    fails(
        &output,
        1,
        &format!("`chown root:root {path} && chmod go-w {path}`"),
    );
    chown(&config, 0).unwrap();
    for (mode, shown) in [(0o666, "0666"), (0o620, "0620")] {
        chmod(&config, mode);
        let output = check();
        fails(
            &output,
            1,
            &format!("configuration file {path} is owned by uid 0 (root) with mode {shown}"),
        );
        fails(&output, 1, &format!("`chmod go-w {path}`"));
    }
    chmod(&config, 0o644);
    let _ = ok(&check());

    let list = dir.0.join("zoom.txt");
    std::fs::write(&list, "203.0.113.0/24\n").unwrap();
    chmod(&list, 0o644);
    std::fs::write(
        &config,
        format!(
            "[[sources]]\nname = \"zoom\"\nkind = \"cidr-list\"\npath = \"{}\"\n",
            list.display()
        ),
    )
    .unwrap();
    let _ = ok(&check());
    chown(&list, 65534).unwrap();
    let output = check();
    fails(&output, 1, "source \"zoom\"");
    fails(
        &output,
        1,
        &format!("source file {} is owned by uid 65534", list.display()),
    );
}

/// Pins left by another version of xdp-breakout are refused, not silently reused. Skips (fails
/// under `CI=true`) when bpftool cannot create a map, as the other tests do without BPF.
#[test]
fn pins_of_another_shape_are_refused() {
    let pin_dir = PinDir::new("shape");
    std::fs::create_dir_all(&pin_dir.path).unwrap();
    let config = pin_dir.path.join("XB_CONFIG");
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&config)
        .args([
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "1",
            "name",
            "XB_CONFIG",
        ])
        .output()
        .unwrap();
    if !created.status.success() {
        let error = String::from_utf8_lossy(&created.stderr);
        let _ = unavailable("creating a BPF map with bpftool", &error);
        return;
    }
    let pins = pin_dir.path.to_str().unwrap();
    for args in [&["lookup", "192.0.2.1"][..], &["stats"]] {
        fails(
            &cli(None, &[&["--pin-dir", pins][..], args].concat()),
            1,
            "this build expects Array key 4 value 16 entries 1: the pins belong to another version",
        );
    }
    assert!(
        !pin_dir.path.join("XB_PREFIX_V4").exists(),
        "nothing was created next to them"
    );
}

/// A description, an address, and a protocol and port.
type Question = (&'static str, &'static str, Option<(&'static str, u16)>);

/// Questions asked both ways.
const QUESTIONS: [Question; 9] = [
    ("Teams media", "52.112.1.1", Some(("udp", 3478))),
    ("Teams media over IPv6", "2603:1063::1", Some(("udp", 3481))),
    ("Teams signalling", "52.112.1.1", Some(("tcp", 443))),
    ("Exchange Optimize", "40.96.1.1", Some(("tcp", 443))),
    ("Exchange Allow", "40.96.1.1", Some(("tcp", 587))),
    ("Exchange other port", "40.96.1.1", Some(("tcp", 8080))),
    ("Exchange without ports", "2603:1006::1", None),
    ("SharePoint", "52.104.0.9", Some(("tcp", 443))),
    ("not Microsoft", "198.51.100.1", Some(("udp", 3478))),
];

fn frame(addr: &str, question: Option<(&str, u16)>) -> Vec<u8> {
    let l4 = match question {
        Some(("tcp", port)) => L4::Tcp(port),
        Some((_, port)) => L4::Udp(port),
        None => L4::Icmp,
    };
    Spec::new(ip(addr), l4).build()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one attached data plane, every command against it"
)]
fn operator_commands_against_an_attached_data_plane() {
    let Some(netns) = Netns::with_veth_pair("xbt-cli") else {
        return;
    };
    netns.ip(&["link", "set", "lo", "up"]).unwrap();
    let pin_dir = PinDir::new("cli");
    let pins = pin_dir.path.to_str().unwrap().to_owned();
    let state = std::env::temp_dir().join(format!("xdp-breakout-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let state_dir = state.to_str().unwrap().to_owned();
    let global = [
        "--pin-dir",
        pins.as_str(),
        "--state-dir",
        state_dir.as_str(),
    ];
    let run = |args: &[&str]| cli(Some(&netns), &[&global[..], args].concat());

    let attached: Value = serde_json::from_str(&ok(&run(&["--json", "attach", "lan1"]))).unwrap();
    assert_eq!(
        attached["prefixes"]["installed"], "embedded snapshot 2026043000",
        "{attached}"
    );
    assert_eq!(attached["prefixes"]["added"], 93, "{attached}");
    assert_eq!(attached["interfaces"][0]["name"], "lan1", "{attached}");
    assert_eq!(
        attached["interfaces"][0]["mark"], "0x365/0xffff",
        "{attached}"
    );

    // lookup answers what the XDP program decides for the same packets.
    let mut answers = Vec::new();
    for (what, addr, question) in QUESTIONS {
        let mut args = vec!["--json", "lookup", addr];
        let port;
        if let Some((proto, p)) = question {
            port = p.to_string();
            args.extend(["--proto", proto, "--port", &port]);
        }
        let answer = json_lines(&ok(&run(&args))).remove(0);
        answers.push((what, answer));
    }
    let capture = state.join("questions.pcap");
    std::fs::create_dir_all(&state).unwrap();
    let frames: Vec<Vec<u8>> = QUESTIONS
        .iter()
        .map(|(_, addr, q)| frame(addr, *q))
        .collect();
    std::fs::write(&capture, pcap::write(&frames)).unwrap();
    let (verdicts, _) = classified(&ok(&run(&[
        "--json",
        "classify",
        "--pcap",
        capture.to_str().unwrap(),
    ])));
    assert_eq!(
        verdicts.len(),
        answers.len(),
        "classify decides each question's packet once"
    );
    // The same fields under each command's names: lookup's `decided_by` is classify's
    // `endpoint_set`.
    let from_lookup: Vec<(&str, [&Value; 4])> = answers
        .iter()
        .map(|(what, a)| {
            let fields = [&a["action"], &a["reason"], &a["category"], &a["decided_by"]];
            (*what, fields)
        })
        .collect();
    let from_classify: Vec<(&str, [&Value; 4])> = answers
        .iter()
        .zip(&verdicts)
        .map(|((what, _), v)| {
            let fields = [
                &v["action"],
                &v["reason"],
                &v["category"],
                &v["endpoint_set"],
            ];
            (*what, fields)
        })
        .collect();
    assert_eq!(from_lookup, from_classify, "lookup against classify");
    let by_name = |what: &str| &answers.iter().find(|(w, _)| *w == what).unwrap().1;
    assert_eq!(by_name("Exchange Allow")["category"], "Allow");
    assert_eq!(by_name("Exchange Allow")["prefix"], "40.96.0.0/13");
    assert_eq!(by_name("Exchange Allow")["mark"], "0x365/0xffff");
    assert_eq!(
        by_name("Teams media")["endpoint_sets"],
        serde_json::json!([11, 12])
    );
    assert_eq!(by_name("Teams media")["service_area"], "Skype");
    assert_eq!(by_name("not Microsoft")["action"], "tunnel");
    assert_eq!(by_name("not Microsoft")["category"], Value::Null);

    // Many questions at once on stdin.
    let mut lines = String::new();
    for i in 0..2000 {
        writeln!(lines, "52.112.{}.{} udp 3478", i / 250, i % 250).unwrap();
    }
    lines.push_str("198.51.100.1\n");
    let mut child = netns
        .command(xdp_breakout().to_str().unwrap())
        .args(global)
        .args(["--json", "lookup", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), lines.as_bytes()).unwrap();
    let stdin_answers = json_lines(&ok(&child.wait_with_output().unwrap()));
    assert_eq!(stdin_answers.len(), 2001);
    assert!(
        stdin_answers[..2000]
            .iter()
            .all(|a| a["action"] == "direct" && a["reason"] == "match_port")
    );
    assert_eq!(stdin_answers[2000]["reason"], "no_match");
    let mut child = netns
        .command(xdp_breakout().to_str().unwrap())
        .args(global)
        .args(["lookup", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"52.112.1.1\n52.112.1.1 tcp web\n",
    )
    .unwrap();
    fails(
        &child.wait_with_output().unwrap(),
        1,
        "stdin line 2: \"52.112.1.1 tcp web\"",
    );

    // classify decides a capture packet by packet; its test packets stay out of the counters.
    let capture_frames = vec![
        Spec::new(ip("52.112.1.1"), L4::Udp(3478))
            .vlans(&[ETH_P_8021Q])
            .build(),
        Spec::new(ip("40.96.1.1"), L4::Tcp(587)).build(),
        Spec::new(ip("198.51.100.1"), L4::Tcp(443)).build(),
        Spec::new(ip("52.112.1.1"), L4::Udp(3478))
            .ipv4_fragment(100, false)
            .build(),
        non_ip(0x0806),
        Spec::new(ip("52.112.1.1"), L4::Udp(3478)).build()[..30].to_vec(),
    ];
    std::fs::write(&capture, pcap::write(&capture_frames)).unwrap();
    let before = Maps::from_pins(&pin_dir.path).unwrap().stats().unwrap();
    let output = ok(&run(&[
        "--json",
        "classify",
        "--pcap",
        capture.to_str().unwrap(),
    ]));
    let (packets, summary) = classified(&output);
    let decided: Vec<(String, String)> = packets
        .iter()
        .map(|v| {
            (
                v["action"].as_str().unwrap().to_owned(),
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("direct", "match_port"),
        ("direct", "match_port"),
        ("tunnel", "no_match"),
        ("direct", "fragment"),
        ("tunnel", "not_ip"),
        ("tunnel", "malformed"),
    ];
    assert_eq!(decided, expected.map(|(a, r)| (a.to_owned(), r.to_owned())));
    assert_eq!(summary["direct"], 3);
    assert_eq!(
        Maps::from_pins(&pin_dir.path).unwrap().stats().unwrap(),
        before,
        "classify counted privately"
    );
    let human = ok(&run(&["classify", "--pcap", capture.to_str().unwrap()]));
    assert!(human.contains("6 packets: 3 direct, 3 tunnel"), "{human}");

    // Real traffic, then stats with categories and endpoint sets.
    let media = Spec::new(ip("52.112.1.1"), L4::Udp(3478)).build();
    netns
        .run(move || send_frames(ifindex("lan0").unwrap(), &vec![media; 4]))
        .unwrap();
    let counters: Value = serde_json::from_str(&ok(&run(&["--json", "stats"]))).unwrap();
    assert_eq!(counters["counters"]["direct"]["packets"], 4);
    assert_eq!(counters["categories"]["Optimize"]["packets"], 4);
    assert_eq!(counters["endpoint_sets"][0]["id"], 11);
    assert_eq!(counters["endpoint_sets"][0]["service_area"], "Skype");
    assert!(ok(&run(&["stats"])).contains("Skype"));
    // --watch streams one object per interval, with rates from the second on.
    let mut watch = netns
        .command(xdp_breakout().to_str().unwrap())
        .args(global)
        .args(["--json", "stats", "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert_eq!(
        (first["interval_secs"].as_u64(), first.get("rates")),
        (Some(1), None)
    );
    assert_eq!(
        second["rates"]["direct"]["pps"], 0,
        "nothing sent during the interval"
    );
    assert_eq!(second["counters"]["direct"]["packets"], 4);

    // status and prefixes.
    let status: Value = serde_json::from_str(&ok(&run(&["--json", "status"]))).unwrap();
    assert_eq!(status["interfaces"][0]["name"], "lan1");
    assert_eq!(status["interfaces"][0]["xdp"]["program_name"], "breakout");
    assert_eq!(status["interfaces"][0]["xdp"]["mode"], "native");
    assert_eq!(
        status["interfaces"][0]["tc"]["program_name"],
        "breakout_mark"
    );
    assert_eq!(
        (
            status["prefixes"]["ipv4"].as_u64(),
            status["prefixes"]["ipv6"].as_u64()
        ),
        (Some(34), Some(59))
    );
    assert_eq!(status["mark"], "0x365/0xffff");
    let prefixes: Value = serde_json::from_str(&ok(&run(&["--json", "prefixes"]))).unwrap();
    assert_eq!(prefixes.as_array().unwrap().len(), 93);
    assert!(ok(&run(&["prefixes"])).contains("40.96.0.0/13"));

    // sync --dry-run shows the diff and changes nothing; sync applies; a bad feed changes nothing.
    let maps = Maps::from_pins(&pin_dir.path).unwrap();
    let installed = maps.installed().unwrap();
    let feed_2020 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/m365-worldwide-endpoints-2020-05-31.json"
    );
    let dry: Value = serde_json::from_str(&ok(&run(&[
        "--json",
        "sync",
        "--feed-file",
        feed_2020,
        "--dry-run",
    ])))
    .unwrap();
    assert_eq!(
        (
            dry["added"].as_array().unwrap().len(),
            dry["removed"].as_array().unwrap().len()
        ),
        (75, 13)
    );
    assert_eq!(dry["refused"], Value::Null);
    assert_eq!(
        maps.installed().unwrap(),
        installed,
        "a dry run changes nothing"
    );
    assert!(!state.join("feed.json").exists(), "nor the state");
    let bad = state.join("bad.json");
    std::fs::write(
        &bad,
        b"[{\"id\": 1, \"category\": \"Optimize\", \"ips\": [\"10.0.0.1/8\"]}]",
    )
    .unwrap();
    fails(
        &run(&["sync", "--feed-file", bad.to_str().unwrap()]),
        1,
        "host bits are set",
    );
    assert_eq!(maps.installed().unwrap(), installed);
    assert!(
        ok(&run(&["sync", "--feed-file", feed_2020])).contains("75 added, 60 changed, 13 removed")
    );
    assert_eq!(maps.installed().unwrap().len(), 155);
    // From the service (on the host's loopback: sync needs only the pins), then once more.
    let server = FeedServer::start();
    server.set("/version/Worldwide", Reply::version("2026043000"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    let url = server.url();
    let from_service = [
        &global[..],
        &["--json", "sync", "--allow-http", "--feed-url", &url],
    ]
    .concat();
    let synced: Value = serde_json::from_str(&ok(&cli(None, &from_service))).unwrap();
    assert_eq!(synced["version"], "2026043000", "{synced}");
    assert_eq!(
        synced["source"],
        format!("{url}/endpoints/Worldwide"),
        "{synced}"
    );
    assert_eq!(synced["report"]["removed"], 75, "{synced}");
    let again: Value = serde_json::from_str(&ok(&cli(None, &from_service))).unwrap();
    assert_eq!(again["report"], "unchanged", "{again}");
    assert_eq!(maps.installed().unwrap().len(), 93);

    // Attach refuses to replace another XDP program and names it.
    let other = PinDir::new("cli-other");
    fails(
        &cli(
            Some(&netns),
            &["--pin-dir", other.path.to_str().unwrap(), "attach", "lan1"],
        ),
        1,
        "interface lan1 already has XDP program \"breakout\"",
    );
    // A driver without native XDP gets a hint.
    fails(
        &run(&["attach", "--mode", "native", "lo"]),
        1,
        "try --mode skb",
    );

    let detached: Value = serde_json::from_str(&ok(&run(&["--json", "detach", "lan1"]))).unwrap();
    assert_eq!(detached["detached"], serde_json::json!(["lan1"]));
    let _ = std::fs::remove_dir_all(&state);
}
