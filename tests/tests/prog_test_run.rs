//! The XDP and tc programs run on the real kernel with `BPF_PROG_TEST_RUN`, their maps seeded
//! with the real 2026043000 feed. Each row says in words what the packet is, and checks the
//! verdict, the XDP metadata, and every counter that moved.

use aya::programs::{TestRun as _, TestRunOptions};
use classifier_common::{Config, Counter, XDP_META_MAGIC, XdpMeta, action, category, flags, stat};
use tests::{
    FEED_2026043000, delta, ip, load_seeded,
    packet::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, Ext, L4, Spec, non_ip},
};

const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC`: the program lets the next filter decide and never drops.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// What a row expects of the XDP program.
#[derive(Clone, Copy, Debug)]
struct Expect {
    action: u8,
    reason: u32,
    category: u8,
    set_id: u16,
    /// A direct verdict the uplink's failure sent to the tunnel (the `failover` note).
    failover: bool,
}

const fn direct(reason: u32, category: u8, set_id: u16) -> Expect {
    Expect {
        action: action::DIRECT,
        reason,
        category,
        set_id,
        failover: false,
    }
}

const fn tunnel(reason: u32, category: u8, set_id: u16) -> Expect {
    Expect {
        action: action::TUNNEL,
        reason,
        category,
        set_id,
        failover: false,
    }
}

/// Direct by its category, sent to the tunnel because the direct uplink is down.
const fn failed_over(reason: u32, category: u8, set_id: u16) -> Expect {
    Expect {
        failover: true,
        ..tunnel(reason, category, set_id)
    }
}

const NOT_MICROSOFT: Expect = tunnel(stat::NO_MATCH, category::NONE, 0);
const MALFORMED: Expect = tunnel(stat::MALFORMED, category::NONE, 0);

struct Row {
    name: &'static str,
    frame: Vec<u8>,
    strict_ports: bool,
    expect: Expect,
}

fn row(name: &'static str, frame: Vec<u8>, expect: Expect) -> Row {
    Row {
        name,
        frame,
        strict_ports: false,
        expect,
    }
}

fn strict(name: &'static str, frame: Vec<u8>, expect: Expect) -> Row {
    Row {
        name,
        frame,
        strict_ports: true,
        expect,
    }
}

fn patched(mut frame: Vec<u8>, offset: usize, byte: u8) -> Vec<u8> {
    frame[offset] = byte;
    frame
}

// Addresses from the 2026043000 feed.
const EXCHANGE_V4: &str = "40.96.1.1"; // 40.96.0.0/13: set 1 Optimize, set 2 Allow
const EXCHANGE_V6: &str = "2603:1006::1"; // 2603:1006::/40: sets 1 and 2
const TEAMS_V4: &str = "52.112.7.9"; // 52.112.0.0/14: set 11 (media), set 12 (signalling)
const TEAMS_V4_B: &str = "52.122.3.4"; // 52.122.0.0/15: set 11, set 12
const TEAMS_V6: &str = "2603:1063::5"; // 2603:1063::/38: set 11, set 12
const OTHER_V4: &str = "198.51.100.7";
const OTHER_V6: &str = "2001:db8:ffff::7";

#[expect(clippy::too_many_lines, reason = "a table, one row per case")]
fn rows() -> Vec<Row> {
    use category::{ALLOW, OPTIMIZE};
    use stat::{FRAGMENT, MATCH_ADDR, MATCH_PORT, NOT_IP, STRICT_MISS};
    let spec = |dst: &str, l4| Spec::new(ip(dst), l4);
    vec![
        row(
            "Teams media, UDP 3478 to 52.112.0.0/14",
            spec(TEAMS_V4, L4::Udp(3478)).build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "Teams media, UDP 3481 to 52.122.0.0/15",
            spec(TEAMS_V4_B, L4::Udp(3481)).build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "Teams media, UDP 3479 to 2603:1063::/38",
            spec(TEAMS_V6, L4::Udp(3479)).build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "Teams signalling, TCP 443 to the media prefix is set 12 Allow",
            spec(TEAMS_V4, L4::Tcp(443)).build(),
            direct(MATCH_PORT, ALLOW, 12),
        ),
        row(
            "Exchange TCP 443 is Optimize (set 1)",
            spec(EXCHANGE_V4, L4::Tcp(443)).build(),
            direct(MATCH_PORT, OPTIMIZE, 1),
        ),
        row(
            "Exchange UDP 443 is Optimize (set 1)",
            spec(EXCHANGE_V4, L4::Udp(443)).build(),
            direct(MATCH_PORT, OPTIMIZE, 1),
        ),
        row(
            "Exchange TCP 587 is Allow (set 2)",
            spec(EXCHANGE_V4, L4::Tcp(587)).build(),
            direct(MATCH_PORT, ALLOW, 2),
        ),
        row(
            "Exchange TCP 993 over IPv6 is Allow (set 2)",
            spec(EXCHANGE_V6, L4::Tcp(993)).build(),
            direct(MATCH_PORT, ALLOW, 2),
        ),
        row(
            "Exchange TCP 443 over IPv6 is Optimize (set 1)",
            spec(EXCHANGE_V6, L4::Tcp(443)).build(),
            direct(MATCH_PORT, OPTIMIZE, 1),
        ),
        row(
            "Exchange on an unlisted port takes the address category",
            spec(EXCHANGE_V4, L4::Tcp(8080)).build(),
            direct(MATCH_ADDR, OPTIMIZE, 1),
        ),
        strict(
            "Exchange on an unlisted port with strict ports goes to the tunnel",
            spec(EXCHANGE_V4, L4::Tcp(8080)).build(),
            tunnel(STRICT_MISS, OPTIMIZE, 1),
        ),
        strict(
            "Exchange TCP 587 with strict ports is still direct",
            spec(EXCHANGE_V4, L4::Tcp(587)).build(),
            direct(MATCH_PORT, ALLOW, 2),
        ),
        row(
            "ICMP echo to Teams has no ports: address category",
            spec(TEAMS_V4, L4::Icmp).build(),
            direct(MATCH_ADDR, OPTIMIZE, 11),
        ),
        row(
            "ICMPv6 echo to Teams has no ports: address category",
            spec(TEAMS_V6, L4::Icmp).build(),
            direct(MATCH_ADDR, OPTIMIZE, 11),
        ),
        strict(
            "ICMP echo to Teams with strict ports goes to the tunnel",
            spec(TEAMS_V4, L4::Icmp).build(),
            tunnel(STRICT_MISS, OPTIMIZE, 11),
        ),
        row(
            "A non-Microsoft IPv4 destination",
            spec(OTHER_V4, L4::Tcp(443)).build(),
            NOT_MICROSOFT,
        ),
        row(
            "A non-Microsoft IPv6 destination",
            spec(OTHER_V6, L4::Udp(3478)).build(),
            NOT_MICROSOFT,
        ),
        row(
            "802.1Q tagged Teams media",
            spec(TEAMS_V4, L4::Udp(3478)).vlans(&[ETH_P_8021Q]).build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "802.1ad + 802.1Q double-tagged Teams media over IPv6",
            spec(TEAMS_V6, L4::Udp(3480))
                .vlans(&[ETH_P_8021AD, ETH_P_8021Q])
                .build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "Double-tagged non-Microsoft",
            spec(OTHER_V4, L4::Udp(53))
                .vlans(&[ETH_P_8021AD, ETH_P_8021Q])
                .build(),
            NOT_MICROSOFT,
        ),
        row(
            "Three tags are more than a LAN carries: not classified",
            spec(TEAMS_V4, L4::Udp(3478))
                .vlans(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q])
                .build(),
            tunnel(NOT_IP, category::NONE, 0),
        ),
        row(
            "IPv4 with 40 bytes of options (IHL 15): ports found after them",
            spec(EXCHANGE_V4, L4::Tcp(587)).ipv4_options(40).build(),
            direct(MATCH_PORT, ALLOW, 2),
        ),
        row(
            "IPv4 with 4 bytes of options",
            spec(TEAMS_V4, L4::Udp(3478)).ipv4_options(4).build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "IPv4 IHL 4 is invalid",
            patched(spec(TEAMS_V4, L4::Udp(3478)).build(), 14, 0x44),
            MALFORMED,
        ),
        row(
            "IPv4 IHL 0 is invalid",
            patched(spec(TEAMS_V4, L4::Udp(3478)).build(), 14, 0x40),
            MALFORMED,
        ),
        row(
            "IPv4 EtherType with version 6 is invalid",
            patched(spec(TEAMS_V4, L4::Udp(3478)).build(), 14, 0x65),
            MALFORMED,
        ),
        row(
            "IPv4 first fragment carries ports",
            spec(TEAMS_V4, L4::Udp(3478)).ipv4_fragment(0, true).build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "IPv4 later fragment to Teams: by address",
            spec(TEAMS_V4, L4::Udp(3478))
                .ipv4_fragment(185, false)
                .build(),
            direct(FRAGMENT, OPTIMIZE, 11),
        ),
        strict(
            "IPv4 later fragment with strict ports still follows the address",
            spec(TEAMS_V4, L4::Udp(3478))
                .ipv4_fragment(185, true)
                .build(),
            direct(FRAGMENT, OPTIMIZE, 11),
        ),
        row(
            "IPv4 later fragment to a non-Microsoft address",
            spec(OTHER_V4, L4::Udp(3478))
                .ipv4_fragment(185, false)
                .build(),
            tunnel(FRAGMENT, category::NONE, 0),
        ),
        row(
            "IPv6 hop-by-hop, destination options and routing before UDP",
            spec(TEAMS_V6, L4::Udp(3478))
                .ipv6_ext(&[Ext::HopByHop, Ext::DestOptions, Ext::Routing])
                .build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "IPv6 first fragment carries ports",
            spec(TEAMS_V6, L4::Udp(3478))
                .ipv6_ext(&[Ext::Fragment { offset: 0 }])
                .build(),
            direct(MATCH_PORT, OPTIMIZE, 11),
        ),
        row(
            "IPv6 hop-by-hop then later fragment: by address",
            spec(TEAMS_V6, L4::Udp(3478))
                .ipv6_ext(&[Ext::HopByHop, Ext::Fragment { offset: 100 }])
                .build(),
            direct(FRAGMENT, OPTIMIZE, 11),
        ),
        row(
            "IPv6 eight extension headers are walked",
            spec(EXCHANGE_V6, L4::Tcp(443))
                .ipv6_ext(&[Ext::DestOptions; 7])
                .build(),
            direct(MATCH_PORT, OPTIMIZE, 1),
        ),
        row(
            "IPv6 nine extension headers are too many",
            spec(EXCHANGE_V6, L4::Tcp(443))
                .ipv6_ext(&[Ext::DestOptions; 9])
                .build(),
            MALFORMED,
        ),
        row(
            "IPv6 EtherType with version 4 is invalid",
            patched(spec(TEAMS_V6, L4::Udp(3478)).build(), 14, 0x45),
            MALFORMED,
        ),
        row(
            "ARP is not IP",
            non_ip(ETH_P_ARP),
            tunnel(NOT_IP, category::NONE, 0),
        ),
        row(
            "LLDP is not IP",
            non_ip(0x88cc),
            tunnel(NOT_IP, category::NONE, 0),
        ),
    ]
}

fn config(strict_ports: bool) -> Config {
    Config {
        flags: if strict_ports { flags::STRICT_PORTS } else { 0 },
        ..Config::default()
    }
}

fn read_meta(out: &[u8]) -> XdpMeta {
    XdpMeta::from_bytes(out).expect("our metadata in front of the frame")
}

/// Runs `frame` through the XDP program; checks the verdict, the metadata and the counters.
fn check_xdp(
    datapath: &mut classifier_user::datapath::Datapath,
    maps: &mut classifier_user::datapath::Maps,
    name: &str,
    frame: &[u8],
    expect: Expect,
) {
    // Each row is a first packet: no flow of an earlier row decides it.
    maps.clear_flows().unwrap();
    let stats_before = maps.stats().unwrap();
    let sets_before = maps.set_stats().unwrap();
    let mut out = vec![0u8; frame.len() + 64];
    let result = datapath
        .xdp()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|error| panic!("{name}: test run: {error}"));
    assert_eq!(
        result.return_value, XDP_PASS,
        "{name}: the program never drops"
    );

    // The kernel returns the metadata in front of the frame.
    let meta_len = size_of::<XdpMeta>();
    assert_eq!(
        result.data_size_out as usize,
        frame.len() + meta_len,
        "{name}: metadata present"
    );
    assert_eq!(
        &out[meta_len..meta_len + frame.len()],
        frame,
        "{name}: frame untouched"
    );
    let meta = read_meta(&out);
    assert_eq!(
        meta,
        XdpMeta {
            magic: XDP_META_MAGIC,
            action: expect.action,
            category: expect.category,
            set_id: expect.set_id,
            reason: u8::try_from(expect.reason).unwrap(),
            dns_query: 0,
            uplink: 0,
            _pad: 0,
        },
        "{name}: metadata"
    );

    let bytes = frame.len() as u64;
    let one = Counter { packets: 1, bytes };
    let action_index = if expect.action == action::DIRECT {
        stat::DIRECT
    } else {
        stat::TUNNEL
    };
    let mut expected = vec![(action_index as usize, one), (expect.reason as usize, one)];
    if expect.failover {
        expected.push((stat::FAILOVER as usize, one));
    }
    // Every parsed packet but a later fragment starts a flow.
    if ![stat::NOT_IP, stat::MALFORMED, stat::FRAGMENT].contains(&expect.reason) {
        expected.push((stat::FLOW_NEW as usize, one));
    }
    expected.sort_by_key(|(index, _)| *index);
    assert_eq!(
        delta(&stats_before, &maps.stats().unwrap()),
        expected,
        "{name}: counters"
    );

    let sets_after = maps.set_stats().unwrap();
    let moved: Vec<(u16, u64)> = sets_after
        .iter()
        .filter(|(id, after)| {
            sets_before
                .iter()
                .find(|(b, _)| b == id)
                .map_or(0, |(_, c)| c.packets)
                != after.packets
        })
        .map(|(id, after)| {
            (
                *id,
                after.packets
                    - sets_before
                        .iter()
                        .find(|(b, _)| b == id)
                        .map_or(0, |(_, c)| c.packets),
            )
        })
        .collect();
    let expected_sets = if expect.set_id == 0 {
        vec![]
    } else {
        vec![(expect.set_id, 1)]
    };
    assert_eq!(moved, expected_sets, "{name}: endpoint set counters");
}

#[test]
fn xdp_verdicts_metadata_and_counters() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    let rows = rows();
    for Row {
        name,
        frame,
        strict_ports,
        expect,
    } in &rows
    {
        maps.set_config(&config(*strict_ports)).unwrap();
        check_xdp(&mut datapath, &mut maps, name, frame, *expect);
    }
    eprintln!("{} rows", rows.len());
}

#[test]
fn xdp_policy_decides_the_action_of_a_category() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    // Allow to the tunnel: Exchange 587 is matched but tunnelled, 443 stays direct.
    let mut policy = classifier_user::datapath::DEFAULT_POLICY;
    policy[usize::from(category::ALLOW)] = action::TUNNEL;
    maps.set_policy(policy).unwrap();
    let spec = |port| Spec::new(ip(EXCHANGE_V4), L4::Tcp(port)).build();
    check_xdp(
        &mut datapath,
        &mut maps,
        "Allow tunnelled: TCP 587",
        &spec(587),
        tunnel(stat::MATCH_PORT, category::ALLOW, 2),
    );
    check_xdp(
        &mut datapath,
        &mut maps,
        "Allow tunnelled: TCP 443",
        &spec(443),
        direct(stat::MATCH_PORT, category::OPTIMIZE, 1),
    );
    maps.set_policy([action::TUNNEL; category::COUNT as usize])
        .unwrap();
    check_xdp(
        &mut datapath,
        &mut maps,
        "everything tunnelled: TCP 443",
        &spec(443),
        tunnel(stat::MATCH_PORT, category::OPTIMIZE, 1),
    );
}

/// The operator's `include` and `exclude` prefixes, compiled with the feed: an include is
/// Optimize by address (set 0), an exclude shadows the feed inside it and counts as
/// `excluded`, the rest of the covering prefix keeps its rules; and while the direct uplink
/// is down, a direct verdict goes to the tunnel, counted as `failover`.
#[test]
fn xdp_include_exclude_and_failover() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    let include: [ipnet::IpNet; 1] = ["44.30.0.0/16".parse().unwrap()];
    let exclude: [ipnet::IpNet; 1] = ["52.112.0.0/16".parse().unwrap()];
    let feed = classifier_user::feed::Feed::parse(FEED_2026043000).unwrap();
    let compiled = classifier_user::compile::compile_filtered(
        &feed,
        &classifier_user::compile::Filter {
            include: &include,
            exclude: &exclude,
            ..classifier_user::compile::Filter::default()
        },
    )
    .unwrap();
    maps.apply(&compiled).unwrap();
    let rows = [
        row(
            "an operator's include, TCP 443: Optimize by address",
            Spec::new(ip("44.30.1.1"), L4::Tcp(443)).build(),
            direct(stat::MATCH_ADDR, category::OPTIMIZE, 0),
        ),
        row(
            "Teams media inside the excluded /16 of Teams' /14",
            Spec::new(ip(TEAMS_V4), L4::Udp(3478)).build(),
            tunnel(stat::EXCLUDED, category::NONE, 0),
        ),
        row(
            "ICMP inside the excluded /16: excluded, not match_addr",
            Spec::new(ip(TEAMS_V4), L4::Icmp).build(),
            tunnel(stat::EXCLUDED, category::NONE, 0),
        ),
        row(
            "Teams media in the /14 outside the exclude",
            Spec::new(ip("52.113.1.1"), L4::Udp(3478)).build(),
            direct(stat::MATCH_PORT, category::OPTIMIZE, 11),
        ),
    ];
    for Row {
        name,
        frame,
        expect,
        ..
    } in &rows
    {
        check_xdp(&mut datapath, &mut maps, name, frame, *expect);
    }
    // Strict ports is about the feed's port lists: an include has none and stays direct.
    maps.set_config(&config(true)).unwrap();
    check_xdp(
        &mut datapath,
        &mut maps,
        "strict ports: an operator's include, TCP 443, stays direct",
        &Spec::new(ip("44.30.1.1"), L4::Tcp(443)).build(),
        direct(stat::MATCH_ADDR, category::OPTIMIZE, 0),
    );
    maps.set_config(&Config {
        flags: flags::UPLINK_DOWN,
        ..Config::default()
    })
    .unwrap();
    let rows = [
        row(
            "uplink down: Teams media fails over to the tunnel",
            Spec::new(ip(TEAMS_V4_B), L4::Udp(3478)).build(),
            failed_over(stat::MATCH_PORT, category::OPTIMIZE, 11),
        ),
        row(
            "uplink down: the operator's include fails over too",
            Spec::new(ip("44.30.1.1"), L4::Tcp(443)).build(),
            failed_over(stat::MATCH_ADDR, category::OPTIMIZE, 0),
        ),
        row(
            "uplink down: a tunnel verdict is no failover",
            Spec::new(ip(OTHER_V4), L4::Udp(3478)).build(),
            NOT_MICROSOFT,
        ),
    ];
    for Row {
        name,
        frame,
        expect,
        ..
    } in &rows
    {
        check_xdp(&mut datapath, &mut maps, name, frame, *expect);
    }
}

/// Runs `frame` through the XDP program as it is (flows kept); its verdict and the counters
/// that moved, by index and packets.
fn run_flow(
    datapath: &mut classifier_user::datapath::Datapath,
    maps: &classifier_user::datapath::Maps,
    frame: &[u8],
) -> (XdpMeta, Vec<(usize, u64)>) {
    let before = maps.stats().unwrap();
    let mut out = vec![0u8; frame.len() + 64];
    datapath
        .xdp()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .unwrap();
    let moved = delta(&before, &maps.stats().unwrap())
        .into_iter()
        .map(|(index, counter)| (index, counter.packets))
        .collect();
    (read_meta(&out), moved)
}

/// A connection keeps the action of its first packet: a later packet of the same 5-tuple
/// skips the trie (`flow_hit`) and keeps it after the feed and the policy change, while a new
/// connection takes the new verdict; a failover moves it to the tunnel for good; FIN ends it.
#[test]
fn xdp_known_flows_keep_their_action() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    maps.clear_flows().unwrap();
    // Untagged IPv4: the UDP or TCP header starts at byte 34; its source port is 34..36.
    let teams = Spec::new(ip(TEAMS_V4), L4::Udp(3478)).build();
    let other_port = patched(teams.clone(), 35, 0x99);
    let (meta, moved) = run_flow(&mut datapath, &maps, &teams);
    assert_eq!((meta.action, meta.reason), (action::DIRECT, 2));
    let first = [
        (stat::DIRECT as usize, 1),
        (stat::MATCH_PORT as usize, 1),
        (stat::FLOW_NEW as usize, 1),
    ];
    assert_eq!(moved, first);

    // Optimize goes to the tunnel now: the known flow stays direct, a new one does not.
    maps.set_policy([action::TUNNEL; category::COUNT as usize])
        .unwrap();
    let (meta, moved) = run_flow(&mut datapath, &maps, &teams);
    assert_eq!((meta.action, meta.set_id), (action::DIRECT, 11), "sticky");
    assert_eq!(
        moved,
        [
            (stat::DIRECT as usize, 1),
            (stat::MATCH_PORT as usize, 1),
            (stat::FLOW_HIT as usize, 1),
        ]
    );
    let (meta, _) = run_flow(&mut datapath, &maps, &other_port);
    assert_eq!(
        meta.action,
        action::TUNNEL,
        "a new connection takes the new verdict"
    );
    assert_eq!(maps.flows().unwrap().len(), 2);

    // The prefix leaves the feed: the known flow still stays direct.
    let mut without = maps.installed().unwrap();
    without.v4.retain(|key, _| key.addr[..2] != [52, 112]);
    maps.apply(&without).unwrap();
    assert_eq!(
        run_flow(&mut datapath, &maps, &teams).0.action,
        action::DIRECT
    );

    // A failover moves it to the tunnel, counted, and it stays there after the failback.
    maps.set_config(&Config {
        flags: flags::UPLINK_DOWN,
        ..Config::default()
    })
    .unwrap();
    let (meta, moved) = run_flow(&mut datapath, &maps, &teams);
    assert_eq!(meta.action, action::TUNNEL);
    assert!(moved.contains(&(stat::FAILOVER as usize, 1)), "{moved:?}");
    maps.set_config(&Config::default()).unwrap();
    assert_eq!(
        run_flow(&mut datapath, &maps, &teams).0.action,
        action::TUNNEL
    );

    // TCP: FIN ends the flow; the next connection on the same ports is a new flow.
    maps.set_policy(classifier_user::datapath::DEFAULT_POLICY)
        .unwrap();
    let exchange = Spec::new(ip(EXCHANGE_V4), L4::Tcp(443)).build();
    let fin = patched(exchange.clone(), 47, 0x11);
    assert!(
        run_flow(&mut datapath, &maps, &exchange)
            .1
            .contains(&(stat::FLOW_NEW as usize, 1))
    );
    let (_, moved) = run_flow(&mut datapath, &maps, &fin);
    assert!(
        moved.contains(&(stat::FLOW_CLOSED as usize, 1)),
        "{moved:?}"
    );
    assert!(
        run_flow(&mut datapath, &maps, &exchange)
            .1
            .contains(&(stat::FLOW_NEW as usize, 1))
    );
}

/// Shifts every flow's `last_ns` back by `by` (as if its last packets were that long ago).
fn age_flows(datapath: &mut classifier_user::datapath::Datapath, by: u64) {
    let map = datapath
        .ebpf()
        .map_mut(classifier_common::names::FLOWS)
        .expect("the flow table");
    let mut flows: aya::maps::HashMap<_, classifier_common::FlowKey, classifier_common::FlowValue> =
        aya::maps::HashMap::try_from(map).unwrap();
    let entries: Vec<_> = flows.iter().map(Result::unwrap).collect();
    assert!(!entries.is_empty());
    for (key, mut flow) in entries {
        flow.last_ns = flow.last_ns.saturating_sub(by);
        flows.insert(key, flow, 0).unwrap();
    }
}

/// A flow hit writes nothing to the flow's entry within a tick (1 s): `last_ns` moves once a
/// tick at most, and packets are not counted per flow. A flow idle past its timeout is
/// classified afresh (`flow_closed`, then `flow_new`); one idle for less, plus the tick that
/// `last_ns` may lag, is still known.
#[test]
fn xdp_flow_hits_write_once_a_tick_and_idle_flows_end() {
    let Some((mut datapath, maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    let mut maps = maps;
    maps.clear_flows().unwrap();
    let teams = Spec::new(ip(TEAMS_V4), L4::Udp(3478)).build();
    run_flow(&mut datapath, &maps, &teams);
    let first = maps.flows().unwrap();
    assert_eq!(first.len(), 1);
    for _ in 0..10 {
        let (_, moved) = run_flow(&mut datapath, &maps, &teams);
        assert!(moved.contains(&(stat::FLOW_HIT as usize, 1)), "{moved:?}");
    }
    let hit = maps.flows().unwrap();
    assert_eq!(hit.len(), 1);
    assert_eq!(
        hit[0].value, first[0].value,
        "ten hits within a tick wrote nothing"
    );

    // Older than a tick: the next hit refreshes `last_ns`, once.
    age_flows(&mut datapath, 1_500_000_000);
    let aged = maps.flows().unwrap()[0].value.last_ns;
    run_flow(&mut datapath, &maps, &teams);
    let refreshed = maps.flows().unwrap()[0].value.last_ns;
    assert!(refreshed >= aged + 1_500_000_000, "{aged} -> {refreshed}");

    // UDP idles out after other-idle (here the default, 120 s): at 120 s plus the tick it
    // is still known, past that it starts afresh.
    let other_idle = u64::from(classifier_common::DEFAULT_OTHER_IDLE_S) * 1_000_000_000;
    age_flows(&mut datapath, other_idle + 500_000_000);
    let (_, moved) = run_flow(&mut datapath, &maps, &teams);
    assert!(moved.contains(&(stat::FLOW_HIT as usize, 1)), "{moved:?}");
    age_flows(&mut datapath, other_idle + 1_500_000_000);
    let (meta, moved) = run_flow(&mut datapath, &maps, &teams);
    assert_eq!(meta.action, action::DIRECT);
    assert!(
        moved.contains(&(stat::FLOW_CLOSED as usize, 1)),
        "{moved:?}"
    );
    assert!(moved.contains(&(stat::FLOW_NEW as usize, 1)), "{moved:?}");
    assert!(
        !moved.iter().any(|(i, _)| *i == stat::FLOW_HIT as usize),
        "{moved:?}"
    );
}

/// Two uplinks: a new direct flow takes its slot's uplink (in the metadata, for tc's mark) and
/// keeps it; when the config's flags say that uplink died, its flows move to the row's
/// uplink now, once, and stay there after it recovers; a row of 255 sends new flows to the
/// tunnel (counted as a failover).
#[test]
fn xdp_flows_take_their_uplink_and_move_only_when_it_dies() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    maps.clear_flows().unwrap();
    let mut uplinks = classifier_common::Uplinks::ONE;
    uplinks.count = 2;
    uplinks.marks[..2].copy_from_slice(&[0x365, 0x366]);
    for row in &mut uplinks.steer {
        row.fill(1);
    }
    maps.set_uplinks(&uplinks).unwrap();
    let teams = Spec::new(ip(TEAMS_V4), L4::Udp(3478)).build();
    let (meta, _) = run_flow(&mut datapath, &maps, &teams);
    assert_eq!((meta.action, meta.uplink), (action::DIRECT, 1));
    assert_eq!(maps.flows().unwrap()[0].value.uplink, 1);

    // The row changes (uplink 1 degraded, say): the flow keeps its uplink.
    for row in &mut uplinks.steer {
        row.fill(0);
    }
    maps.set_uplinks(&uplinks).unwrap();
    assert_eq!(run_flow(&mut datapath, &maps, &teams).0.uplink, 1, "sticky");
    // Uplink 1 dies: the flow moves to uplink 0, and stays when 1 recovers.
    uplinks.down = 0b10;
    maps.set_uplinks(&uplinks).unwrap();
    maps.set_config(&Config {
        flags: flags::uplink_down(1),
        ..Config::default()
    })
    .unwrap();
    let (meta, moved) = run_flow(&mut datapath, &maps, &teams);
    assert_eq!((meta.action, meta.uplink), (action::DIRECT, 0), "{moved:?}");
    assert!(!moved.iter().any(|(i, _)| *i == stat::FAILOVER as usize));
    uplinks.down = 0;
    maps.set_uplinks(&uplinks).unwrap();
    maps.set_config(&Config::default()).unwrap();
    assert_eq!(run_flow(&mut datapath, &maps, &teams).0.uplink, 0);

    // No uplink may take Optimize: a new flow goes to the tunnel, a failover.
    uplinks.steer[usize::from(category::OPTIMIZE)].fill(classifier_common::STEER_TUNNEL);
    maps.set_uplinks(&uplinks).unwrap();
    let other_port = patched(teams, 35, 0x98);
    let (meta, moved) = run_flow(&mut datapath, &maps, &other_port);
    assert_eq!(meta.action, action::TUNNEL);
    assert!(moved.contains(&(stat::FAILOVER as usize, 1)), "{moved:?}");
}

/// Every truncation of every header is malformed, passes, and is counted.
#[test]
fn xdp_every_truncation_is_malformed_and_passes() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    let specs = [
        ("IPv4 TCP", Spec::new(ip(EXCHANGE_V4), L4::Tcp(443))),
        (
            "IPv4 options UDP",
            Spec::new(ip(TEAMS_V4), L4::Udp(3478)).ipv4_options(12),
        ),
        (
            "double-tagged IPv4 UDP",
            Spec::new(ip(TEAMS_V4), L4::Udp(3478)).vlans(&[ETH_P_8021AD, ETH_P_8021Q]),
        ),
        ("IPv6 TCP", Spec::new(ip(EXCHANGE_V6), L4::Tcp(443))),
        (
            "IPv6 extension headers UDP",
            Spec::new(ip(TEAMS_V6), L4::Udp(3478)).ipv6_ext(&[
                Ext::HopByHop,
                Ext::Routing,
                Ext::Fragment { offset: 0 },
                Ext::DestOptions,
            ]),
        ),
        (
            "tagged IPv6 later fragment",
            Spec::new(ip(TEAMS_V6), L4::Udp(3478))
                .vlans(&[ETH_P_8021Q])
                .ipv6_ext(&[Ext::Fragment { offset: 9 }]),
        ),
    ];
    let mut runs = 0;
    for (what, spec) in specs {
        let frame = spec.build();
        // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.
        for len in 14..spec.header_len() {
            check_xdp(
                &mut datapath,
                &mut maps,
                &format!("{what} cut to {len} bytes"),
                &frame[..len],
                MALFORMED,
            );
            runs += 1;
        }
        // The whole header set is enough.
        let len = spec.header_len();
        let result = datapath
            .xdp()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame[..len]),
                ..TestRunOptions::default()
            })
            .unwrap();
        assert_eq!(result.return_value, XDP_PASS);
        let stats = maps.stats().unwrap();
        let before = stats[stat::MALFORMED as usize].packets;
        datapath
            .xdp()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame[..len]),
                ..TestRunOptions::default()
            })
            .unwrap();
        assert_eq!(
            maps.stats().unwrap()[stat::MALFORMED as usize].packets,
            before,
            "{what}: {len} bytes hold every header"
        );
    }
    eprintln!("{runs} truncations");
}

/// Offset of `mark` in `struct __sk_buff`, and the struct's size (both kernel ABI).
const SKB_MARK: usize = 8;
const SKB_LEN: usize = 192;

fn run_tc(
    datapath: &mut classifier_user::datapath::Datapath,
    frame: &[u8],
    mark: u32,
) -> (u32, u32) {
    run_tc_program(datapath, false, frame, mark)
}

/// A run of `breakout_mark`, or of `breakout_tc` (`alone`, the `--mode tc` program).
fn run_tc_program(
    datapath: &mut classifier_user::datapath::Datapath,
    alone: bool,
    frame: &[u8],
    mark: u32,
) -> (u32, u32) {
    let mut ctx_in = [0u8; SKB_LEN];
    ctx_in[SKB_MARK..SKB_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_LEN];
    let mut out = vec![0u8; frame.len() + 64];
    let result = datapath
        .tc(alone)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        })
        .unwrap();
    let mark = u32::from_ne_bytes(ctx_out[SKB_MARK..SKB_MARK + 4].try_into().unwrap());
    (result.return_value, mark)
}

/// One run of the tc program on a packet without XDP metadata.
struct TcRow<'a> {
    /// The case, in words.
    name: &'a str,
    frame: &'a [u8],
    config: Config,
    /// `skb->mark` before and after.
    mark_in: u32,
    mark_out: u32,
    /// The counters that move, by one packet each.
    counters: &'a [u32],
}

/// Without XDP metadata (a driver with no metadata room) the tc program classifies the packet
/// itself; it sets only the bits of the mask.
#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn tc_marks_direct_packets_and_keeps_other_mark_bits() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    let teams = Spec::new(ip(TEAMS_V4), L4::Udp(3478)).build();
    let teams_v6_tagged = Spec::new(ip(TEAMS_V6), L4::Udp(3478))
        .vlans(&[ETH_P_8021Q])
        .build();
    let exchange_587 = Spec::new(ip(EXCHANGE_V4), L4::Tcp(587)).build();
    let other = Spec::new(ip(OTHER_V4), L4::Tcp(443)).build();
    let rows: [TcRow<'_>; 8] = [
        TcRow {
            name: "Teams media gets 0x365 in the low 16 bits, upper bits kept",
            frame: &teams,
            config: Config::default(),
            mark_in: 0xabcd_0000,
            mark_out: 0xabcd_0365,
            counters: &[stat::TC_MARK_SELF],
        },
        TcRow {
            name: "tagged IPv6 Teams media",
            frame: &teams_v6_tagged,
            config: Config::default(),
            mark_in: 0,
            mark_out: 0x365,
            counters: &[stat::TC_MARK_SELF],
        },
        TcRow {
            name: "our bits are overwritten, not ORed",
            frame: &teams,
            config: Config::default(),
            mark_in: 0x0000_fcfc,
            mark_out: 0x0000_0365,
            counters: &[stat::TC_MARK_SELF],
        },
        TcRow {
            name: "Exchange 587 (Allow) is direct",
            frame: &exchange_587,
            config: Config::default(),
            mark_in: 7 << 20,
            mark_out: (7 << 20) | 0x365,
            counters: &[stat::TC_MARK_SELF],
        },
        TcRow {
            name: "a non-Microsoft packet keeps its mark",
            frame: &other,
            config: Config::default(),
            mark_in: 0x1234_5678,
            mark_out: 0x1234_5678,
            counters: &[stat::TC_PASS],
        },
        TcRow {
            name: "a custom mark 0x10000/0x10000 keeps the low bits",
            frame: &teams,
            config: Config {
                mark: 0x1_0000,
                mark_mask: 0x1_0000,
                ..Config::default()
            },
            mark_in: 0x365,
            mark_out: 0x1_0365,
            counters: &[stat::TC_MARK_SELF],
        },
        TcRow {
            name: "strict ports: ICMP to Teams keeps its mark",
            frame: &Spec::new(ip(TEAMS_V4), L4::Icmp).build(),
            config: Config {
                flags: flags::STRICT_PORTS,
                ..Config::default()
            },
            mark_in: 0x42,
            mark_out: 0x42,
            counters: &[stat::TC_PASS],
        },
        TcRow {
            name: "the direct uplink is down: Teams media keeps its mark, counted as failover",
            frame: &teams,
            config: Config {
                flags: flags::UPLINK_DOWN,
                ..Config::default()
            },
            mark_in: 0x42,
            mark_out: 0x42,
            counters: &[stat::TC_PASS, stat::FAILOVER],
        },
    ];
    for TcRow {
        name,
        frame,
        config,
        mark_in,
        mark_out,
        counters,
    } in rows
    {
        maps.set_config(&config).unwrap();
        let before = maps.stats().unwrap();
        let (verdict, mark) = run_tc(&mut datapath, frame, mark_in);
        assert_eq!(
            verdict, TC_ACT_UNSPEC,
            "{name}: never drops, never ends the chain"
        );
        assert_eq!(mark, mark_out, "{name}: mark {mark:#x}");
        let moved = delta(&before, &maps.stats().unwrap());
        assert_eq!(
            moved
                .iter()
                .map(|(i, c)| (*i, c.packets))
                .collect::<Vec<_>>(),
            {
                let mut expected: Vec<(usize, u64)> =
                    counters.iter().map(|c| (*c as usize, 1)).collect();
                expected.sort_unstable();
                expected
            },
            "{name}: counters"
        );
    }
}

/// The tc program parses what the XDP program parses: every truncation leaves the mark alone.
#[test]
fn tc_truncated_packets_keep_their_mark() {
    let Some((mut datapath, _maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    let spec = Spec::new(ip(TEAMS_V6), L4::Udp(3478))
        .vlans(&[ETH_P_8021Q])
        .ipv6_ext(&[Ext::HopByHop]);
    let frame = spec.build();
    for len in 14..spec.header_len() {
        let (verdict, mark) = run_tc(&mut datapath, &frame[..len], 0x99);
        assert_eq!((verdict, mark), (TC_ACT_UNSPEC, 0x99), "cut to {len} bytes");
    }
    assert_eq!(run_tc(&mut datapath, &frame, 0x99).1, 0x365);
}

/// A `breakout_tc` case: name, frame, mark after, counters that move, endpoint set counted.
type TcAloneRow<'a> = (&'a str, &'a [u8], u32, &'a [u32], Option<u16>);

/// `--mode tc`: `breakout_tc` alone does what `breakout` and `breakout_mark` do together:
/// the flow table, the decision, every counter, and the mark.
#[test]
fn tc_alone_classifies_counts_records_flows_and_marks() {
    let Some((mut datapath, mut maps)) = load_seeded(FEED_2026043000, &config(false)) else {
        return;
    };
    maps.set_config(&Config::default()).unwrap();
    let teams = Spec::new(ip(TEAMS_V4), L4::Udp(3478)).build();
    let exchange_587 = Spec::new(ip(EXCHANGE_V4), L4::Tcp(587)).build();
    let other = Spec::new(ip(OTHER_V4), L4::Tcp(443)).build();
    let rows: [TcAloneRow<'_>; 5] = [
        (
            "Teams media: a new direct flow, marked",
            &teams,
            0x365,
            &[
                stat::DIRECT,
                stat::MATCH_PORT,
                stat::FLOW_NEW,
                stat::TC_MARK_SELF,
            ],
            Some(11),
        ),
        (
            "its next packet: a flow hit, marked",
            &teams,
            0x365,
            &[
                stat::DIRECT,
                stat::MATCH_PORT,
                stat::FLOW_HIT,
                stat::TC_MARK_SELF,
            ],
            Some(11),
        ),
        (
            "Exchange 587 (Allow): direct",
            &exchange_587,
            0x365,
            &[
                stat::DIRECT,
                stat::MATCH_PORT,
                stat::FLOW_NEW,
                stat::TC_MARK_SELF,
            ],
            Some(2),
        ),
        (
            "another destination: tunnel, mark kept",
            &other,
            0,
            &[stat::TUNNEL, stat::NO_MATCH, stat::FLOW_NEW, stat::TC_PASS],
            None,
        ),
        (
            "not IP: tunnel",
            &non_ip(ETH_P_ARP),
            0,
            &[stat::TUNNEL, stat::NOT_IP, stat::TC_PASS],
            None,
        ),
    ];
    for (name, frame, mark_out, counters, set) in rows {
        let before = maps.stats().unwrap();
        let sets_before = maps.set_stats().unwrap();
        let (verdict, mark) = run_tc_program(&mut datapath, true, frame, 0);
        assert_eq!((verdict, mark), (TC_ACT_UNSPEC, mark_out), "{name}");
        let moved = delta(&before, &maps.stats().unwrap());
        let mut expected: Vec<(usize, u64)> = counters.iter().map(|c| (*c as usize, 1)).collect();
        expected.sort_unstable();
        assert_eq!(
            moved
                .iter()
                .map(|(i, c)| (*i, c.packets))
                .collect::<Vec<_>>(),
            expected,
            "{name}: counters"
        );
        let sets_after = maps.set_stats().unwrap();
        let set_moved: Vec<u16> = sets_after
            .iter()
            .filter(|(id, counter)| {
                sets_before
                    .iter()
                    .find(|(before, _)| before == id)
                    .is_none_or(|(_, before)| before.packets != counter.packets)
            })
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            set_moved,
            set.into_iter().collect::<Vec<_>>(),
            "{name}: set"
        );
    }
    let flows = maps.flows().unwrap();
    assert_eq!(flows.len(), 3, "Teams, Exchange and the other destination");
}
