//! Local DNS: the forward-zone files of the real feed read by the real resolvers' checkers
//! (`dnsmasq --test`, `unbound-checkconf`), printed by `xdp-breakout dns-config`; the policy
//! rules of the resolvers' queries in a throwaway namespace, read back with `ip -j rule`
//! (an independent reader), through `attach` and `detach`; and the agent's writes of the file:
//! none when nothing changed, one reload per write, no zones while the direct uplink is down.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use classifier_user::{
    agent::Agent,
    config::Config,
    dns::{LocalFormat, Resolver},
    dnsconfig,
    feed::{Category, Feed},
    health::{Report, State as Uplink, Transition},
    sources::fetch::Meta,
    state::State,
};
use serde_json::Value;
use tests::{
    FEED_2026043000, PinDir, TempDir, chmod, daemon::wait_for, in_ci, netns::Netns, output::ok,
    skips, unavailable, xdp_breakout,
};

const RESOLVERS: [&str; 3] = ["192.0.2.53", "[2001:db8::53]:5353", "198.51.100.7:53"];
const FROM: &str = "https://endpoints.office.com";

fn resolvers(texts: &[&str]) -> Vec<Resolver> {
    texts.iter().map(|text| text.parse().unwrap()).collect()
}

/// A checker of the resolvers, or `None` (a visible skip) when it is not installed; under
/// `CI=true` its absence fails (`cargo xtask setup` installs both).
fn tool(program: &str, package: &str) -> Option<PathBuf> {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.exists());
    if found.is_none() {
        assert!(
            !in_ci(),
            "{program} is missing under CI=true: install {package} (cargo xtask setup does)"
        );
        skips::record(&format!(
            "{program} is missing: install {package} (cargo xtask setup does)"
        ));
    }
    found
}

/// The file of the fixture feed, as the library renders it, with `[policy] direct`'s
/// default categories and one operator rule each way.
fn expected(format: LocalFormat, resolvers: &[Resolver]) -> String {
    let feed = Feed::parse(FEED_2026043000).unwrap();
    let domains = domains();
    let names = dnsconfig::names(
        &[&feed.named],
        &domains,
        &[Category::Optimize, Category::Allow],
    );
    let about = dnsconfig::About {
        inputs: vec![
            format!("feed 2026043000 from {FROM}"),
            "2 [[domains]] rules".to_owned(),
        ],
        uplink_down: None,
    };
    dnsconfig::render(format, &dnsconfig::zones(&names), resolvers, &about)
}

fn domains() -> Vec<classifier_user::dns::DomainRule> {
    toml::from_str::<Config>(
        "[[domains]]\nname = \"*.zoom.us\"\npolicy = \"direct\"\n\
         [[domains]]\nname = \"intranet.example.net\"\npolicy = \"tunnel\"\n",
    )
    .unwrap()
    .domains
}

/// `dnsmasq --test` reads `file` as a configuration file.
fn dnsmasq_accepts(dnsmasq: &Path, file: &Path) {
    let output = Command::new(dnsmasq)
        .arg("--test")
        .arg(format!("--conf-file={}", file.display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.contains("syntax check OK"),
        "dnsmasq --test {}: {said}",
        file.display()
    );
}

/// `unbound-checkconf` accepts a minimal configuration that `include:`s `file` at the top.
fn unbound_accepts(checkconf: &Path, dir: &Path, file: &Path) {
    let main = dir.join("unbound.conf");
    std::fs::write(
        &main,
        format!(
            "server:\n    chroot: \"\"\n    username: \"\"\n    directory: \"{}\"\n\
             include: \"{}\"\n",
            dir.display(),
            file.display()
        ),
    )
    .unwrap();
    let output = Command::new(checkconf).arg(&main).output().unwrap();
    assert!(
        output.status.success(),
        "unbound-checkconf {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_files_of_the_real_feed_pass_both_resolvers_checks() {
    let (Some(dnsmasq), Some(checkconf)) = (
        tool("dnsmasq", "dnsmasq-base"),
        tool("unbound-checkconf", "unbound"),
    ) else {
        return;
    };
    let dir = TempDir::new("dnsconfig-check");
    std::fs::create_dir_all(&dir.0).unwrap();
    let resolvers = resolvers(&RESOLVERS);
    let dnsmasq_file = dir.0.join("dnsmasq.conf");
    let text = expected(LocalFormat::Dnsmasq, &resolvers);
    // The fixture's direct names: Teams, Exchange, SharePoint and the operator's Zoom.
    for zone in [
        "teams.microsoft.com",
        "outlook.office365.com",
        "sharepoint.com",
        "zoom.us",
    ] {
        assert!(
            text.contains(&format!("server=/{zone}/192.0.2.53\n")),
            "{zone}: {text}"
        );
        assert!(
            text.contains(&format!("server=/{zone}/2001:db8::53#5353\n")),
            "{zone}"
        );
    }
    assert!(
        !text.contains("intranet.example.net"),
        "a tunnel rule: {text}"
    );
    std::fs::write(&dnsmasq_file, &text).unwrap();
    dnsmasq_accepts(&dnsmasq, &dnsmasq_file);
    let unbound_file = dir.0.join("forward.conf");
    let text = expected(LocalFormat::Unbound, &resolvers);
    assert!(text.contains("    name: \"teams.microsoft.com.\"\n    forward-addr: 192.0.2.53@53\n"));
    std::fs::write(&unbound_file, &text).unwrap();
    unbound_accepts(&checkconf, &dir.0, &unbound_file);
}

/// A state directory holding the fixture as the `m365` source's last good file, and a
/// configuration file (root's, 0600) with `dns` keys and the two rules.
fn prepared(dir: &Path, dns: &str) -> (PathBuf, PathBuf) {
    let state_dir = dir.join("state");
    let state = State::open(&state_dir).unwrap();
    state
        .save_source(
            "m365",
            FEED_2026043000,
            &Meta {
                version: Some("2026043000".into()),
                sha256: classifier_user::sources::fetch::sha256(FEED_2026043000),
                etag: None,
                last_modified: None,
                from: FROM.into(),
                fetched_at: classifier_user::time::Time::now(),
            },
        )
        .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\n{dns}\n[[domains]]\nname = \"*.zoom.us\"\npolicy = \"direct\"\n\
             [[domains]]\nname = \"intranet.example.net\"\npolicy = \"tunnel\"\n"
        ),
    )
    .unwrap();
    chmod(&config, 0o600);
    (state_dir, config)
}

#[test]
fn dns_config_prints_the_file_of_the_installed_feed() {
    let dir = TempDir::new("dnsconfig-cli");
    std::fs::create_dir_all(&dir.0).unwrap();
    let (state_dir, config) = prepared(
        &dir.0,
        "local-resolvers = [\"192.0.2.53\", \"[2001:db8::53]:5353\", \"198.51.100.7:53\"]\n\
         local-format = \"unbound\"",
    );
    let run = |args: &[&str]| {
        Command::new(xdp_breakout())
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("dns-config")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let resolvers = resolvers(&RESOLVERS);
    // The configuration's format by default; --format chooses.
    assert_eq!(ok(&run(&[])), expected(LocalFormat::Unbound, &resolvers));
    let printed = ok(&run(&["--format", "dnsmasq"]));
    assert_eq!(printed, expected(LocalFormat::Dnsmasq, &resolvers));
    if let Some(dnsmasq) = tool("dnsmasq", "dnsmasq-base") {
        let file = dir.0.join("printed.conf");
        std::fs::write(&file, &printed).unwrap();
        dnsmasq_accepts(&dnsmasq, &file);
    }
    if let Some(checkconf) = tool("unbound-checkconf", "unbound") {
        let file = dir.0.join("printed-unbound.conf");
        std::fs::write(&file, ok(&run(&["--format", "unbound"]))).unwrap();
        unbound_accepts(&checkconf, &dir.0, &file);
    }

    // Without resolvers: which key to set.
    let (_, bare) = prepared(&dir.0, "");
    let output = Command::new(xdp_breakout())
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["dns-config", "--config"])
        .arg(&bare)
        .output()
        .unwrap();
    tests::output::fails(&output, 1, "set [dns] local-resolvers");
    // A file without resolvers is refused by the configuration, naming the key.
    let (_, orphan) = prepared(
        &dir.0,
        "local-config = \"/etc/dnsmasq.d/xdp-breakout.conf\"",
    );
    let output = Command::new(xdp_breakout())
        .args(["config", "check", "--config"])
        .arg(&orphan)
        .output()
        .unwrap();
    tests::output::fails(&output, 1, "dns.local-config");
}

/// `(priority, dst, table, protocol)` of every rule of one family, as `ip -j rule` reads
/// them.
fn ip_rules(netns: &Netns, family: &str) -> Vec<(u64, String, String, String)> {
    let output = netns.ip(&[family, "-j", "rule", "show"]).unwrap();
    let rules: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    rules
        .iter()
        .map(|rule| {
            let text = |key: &str| rule[key].as_str().unwrap_or_default().to_owned();
            (
                rule["priority"].as_u64().unwrap_or_default(),
                text("dst"),
                text("table"),
                text("protocol"),
            )
        })
        .collect()
}

/// Rules of protocol 245, both families, sorted.
fn ours(netns: &Netns) -> Vec<(u64, String, String)> {
    let mut rules: Vec<(u64, String, String)> = ["-4", "-6"]
        .iter()
        .flat_map(|family| ip_rules(netns, family))
        .filter(|(_, _, _, protocol)| protocol == "245")
        .map(|(priority, dst, table, _)| (priority, dst, table))
        .collect();
    rules.sort();
    rules
}

fn rule(dst: &str, table: &str) -> (u64, String, String) {
    (9365, dst.to_owned(), table.to_owned())
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn resolver_rules_are_exact_idempotent_and_detach_removes_only_ours() {
    let netns = match Netns::new("xbdnsrule") {
        Ok(netns) => netns,
        Err(error) => {
            let Some(never) = unavailable("a network namespace", &error) else {
                return;
            };
            match never {}
        }
    };
    // The direct mark's rules (the README's edge router), and others' rules: one at our
    // priority to one of our resolvers, one of another protocol.
    for args in [
        &[
            "-4",
            "rule",
            "add",
            "fwmark",
            "0x365/0xffff",
            "lookup",
            "365",
            "priority",
            "1000",
        ][..],
        &[
            "-6",
            "rule",
            "add",
            "fwmark",
            "0x365/0xffff",
            "lookup",
            "366",
            "priority",
            "1000",
        ],
        &[
            "-4",
            "rule",
            "add",
            "to",
            "192.0.2.53",
            "lookup",
            "100",
            "priority",
            "9365",
        ],
        &[
            "-4",
            "rule",
            "add",
            "to",
            "198.51.100.9",
            "lookup",
            "365",
            "priority",
            "9365",
            "proto",
            "static",
        ],
    ] {
        netns.ip(args).unwrap();
    }
    let foreign = |netns: &Netns| {
        let rules = ip_rules(netns, "-4");
        [
            (9365, "192.0.2.53", "100"),
            (9365, "198.51.100.9", "365"),
            (1000, "", "365"),
        ]
        .iter()
        .all(|(priority, dst, table)| {
            rules
                .iter()
                .any(|rule| rule.0 == *priority && rule.1 == *dst && rule.2 == *table)
        })
    };
    let mut dns = classifier_user::dns::DnsConfig {
        local_resolvers: resolvers(&RESOLVERS),
        ..Default::default()
    };
    let apply = |dns: &classifier_user::dns::DnsConfig| {
        netns.run(|| dnsconfig::apply_rules(dns, (0x365, 0xffff)).unwrap())
    };

    // The table of the mark's rule, per family; one rule per resolver address.
    let report = apply(&dns);
    assert_eq!((report.added, report.removed), (3, 0), "{report:?}");
    assert!(report.no_table.is_empty());
    let first = vec![
        rule("192.0.2.53", "365"),
        rule("198.51.100.7", "365"),
        rule("2001:db8::53", "366"),
    ];
    assert_eq!(ours(&netns), first);
    // Again: nothing to do.
    let report = apply(&dns);
    assert_eq!((report.added, report.removed), (0, 0));
    assert_eq!(ours(&netns), first);
    // A resolver dropped from the configuration loses its rule.
    dns.local_resolvers = resolvers(&["192.0.2.53", "[2001:db8::53]:5353"]);
    let report = apply(&dns);
    assert_eq!((report.added, report.removed), (0, 1));
    assert_eq!(
        ours(&netns),
        [rule("192.0.2.53", "365"), rule("2001:db8::53", "366")]
    );
    // local-table wins over the mark's rule.
    dns.local_table = Some(70_000);
    let report = apply(&dns);
    assert_eq!((report.added, report.removed), (2, 2));
    assert_eq!(
        ours(&netns),
        [rule("192.0.2.53", "70000"), rule("2001:db8::53", "70000")]
    );
    assert!(foreign(&netns), "{:?}", ip_rules(&netns, "-4"));

    // detach, for real: attach the programs to a veth of the namespace, then detach them.
    netns
        .ip(&[
            "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
        ])
        .unwrap();
    netns.ip(&["link", "set", "lan0", "up"]).unwrap();
    netns.ip(&["link", "set", "lan1", "up"]).unwrap();
    let pins = PinDir::new("dnsrule");
    let cli = |args: &[&str]| {
        netns
            .command(xdp_breakout().to_str().unwrap())
            .arg("--pin-dir")
            .arg(&pins.path)
            .args(args)
            .output()
            .unwrap()
    };
    ok(&cli(&["attach", "lan0"]));
    ok(&cli(&["detach", "lan0"]));
    assert_eq!(
        ours(&netns),
        Vec::new(),
        "detach removes every rule of ours"
    );
    assert!(foreign(&netns), "{:?}", ip_rules(&netns, "-4"));
}

/// Inode and modification time of `path`.
fn stamp(path: &Path) -> (u64, i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.ino(), meta.mtime(), meta.mtime_nsec())
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn the_agent_rewrites_the_file_only_when_it_changes_and_drops_the_zones_while_down() {
    let netns = match Netns::new("xbdnsfile") {
        Ok(netns) => netns,
        Err(error) => {
            let Some(never) = unavailable("a network namespace", &error) else {
                return;
            };
            match never {}
        }
    };
    let dir = TempDir::new("dnsconfig-agent");
    std::fs::create_dir_all(&dir.0).unwrap();
    let (state_dir, _) = prepared(&dir.0, "");
    let file = dir.0.join("xdp-breakout.conf");
    let reloads = dir.0.join("reloads");
    let mut config: Config = toml::from_str(&format!(
        "[health]\ntargets = [\"tcp://192.0.2.1:443\"]\n\
         [dns]\nlocal-resolvers = [\"192.0.2.53\", \"[2001:db8::53]:5353\"]\n\
         local-config = \"{}\"\nlocal-table = 365\n\
         local-reload = [\"sh\", \"-c\", \"echo reloaded >> {}\"]\n",
        file.display(),
        reloads.display()
    ))
    .unwrap();
    config.domains = domains();
    config.validate().unwrap();
    config.state_dir.clone_from(&state_dir);
    let wait_reloads = |n: usize| {
        wait_for(
            &format!("{n} runs of local-reload"),
            || lines(&reloads) >= n,
            || format!("{} runs", lines(&reloads)),
        );
        // And no more than that.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(lines(&reloads), n);
    };
    let file_in = file.clone();
    let done = netns.run(move || {
        let file = file_in;
        let Some(mut datapath) =
            tests::load_private(&classifier_user::datapath::MapSizes::default())
        else {
            return false;
        };
        let maps = datapath.maps().unwrap();
        let mut agent = Agent::new(config.clone(), maps, State::open(&state_dir).unwrap()).unwrap();
        agent.start().unwrap();
        assert!(
            !file.exists(),
            "nothing is written before the daemon serves"
        );
        agent.serve();
        let up = std::fs::read_to_string(&file).unwrap();
        assert_eq!(Some(up.clone()), agent.local_dns(LocalFormat::Dnsmasq));
        assert!(
            up.contains("server=/teams.microsoft.com/192.0.2.53\n"),
            "{up}"
        );
        assert!(up.contains("server=/zoom.us/2001:db8::53#5353\n"), "{up}");
        wait_reloads(1);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o644);
        }

        // A reload with the same configuration: the same bytes, so no write and no reload.
        let before = stamp(&file);
        std::thread::sleep(Duration::from_millis(20));
        agent.reconfigure(config.clone()).unwrap();
        assert_eq!(stamp(&file), before, "an unchanged file is not rewritten");
        wait_reloads(1);

        // The direct uplink goes down: no zones, one write, one reload.
        let down = Report {
            uplink: 0,
            state: Uplink::Down,
            transition: Some(Transition {
                from: Uplink::Up,
                to: Uplink::Down,
                reason: "3 failed rounds".into(),
            }),
            results: None,
            quality: None,
        };
        agent.health(down).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.lines().all(|line| line.starts_with('#')), "{text}");
        assert!(
            text.contains("direct uplink is down (3 failed rounds)"),
            "{text}"
        );
        assert_ne!(stamp(&file).0, before.0, "a new file renamed into place");
        wait_reloads(2);

        // Back up: the zones return.
        let recovered = Report {
            uplink: 0,
            state: Uplink::Up,
            transition: Some(Transition {
                from: Uplink::Down,
                to: Uplink::Up,
                reason: "5 good rounds".into(),
            }),
            results: None,
            quality: None,
        };
        agent.health(recovered).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), up);
        wait_reloads(3);

        // A changed configuration (a resolver dropped): rewritten, reloaded.
        let mut fewer = config.clone();
        fewer.dns.local_resolvers = resolvers(&["192.0.2.53"]);
        agent.reconfigure(fewer).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("2001:db8::53"), "{text}");
        wait_reloads(4);
        // The temporary files are gone.
        let left: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        true
    });
    let _ = done;
}
