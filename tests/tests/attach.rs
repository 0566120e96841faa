//! The real `xdp-breakout` binary attaches both programs to a veth in a throwaway network
//! namespace; real frames cross the pair; the counters are read back through the pinned maps
//! and through `xdp-breakout stats --json`; detach leaves nothing attached.

use classifier_common::stat;
use classifier_user::datapath::Maps;
use tests::{
    PinDir, ip,
    netns::{Netns, ifindex, send_frames},
    packet::{ETH_P_8021AD, ETH_P_8021Q, L4, Spec},
    xdp_breakout,
};

fn veth_namespace() -> Option<Netns> {
    Netns::with_veth_pair("xbt-attach")
}

fn cli(netns: &Netns, pin_dir: &PinDir, args: &[&str]) -> std::process::Output {
    netns
        .command(xdp_breakout().to_str().unwrap())
        .arg("--pin-dir")
        .arg(&pin_dir.path)
        .args(args)
        .output()
        .unwrap()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn attached_programs_classify_and_mark_real_frames() {
    let Some(netns) = veth_namespace() else {
        return;
    };
    let pin_dir = PinDir::new("attach");

    let output = cli(&netns, &pin_dir, &["attach", "lan1"]);
    assert!(
        output.status.success(),
        "attach: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("installed embedded snapshot 2026043000: 34 IPv4 and 59 IPv6"),
        "{stdout}"
    );
    assert!(
        pin_dir.path.join("xdp_link@lan1").exists() && pin_dir.path.join("tc_link@lan1").exists()
    );
    let link =
        String::from_utf8_lossy(&netns.ip(&["link", "show", "lan1"]).unwrap().stdout).into_owned();
    assert!(link.contains("xdp"), "XDP on lan1: {link}");

    let teams = Spec::new(ip("52.112.1.1"), L4::Udp(3478)).build();
    let teams_v6_tagged = Spec::new(ip("2603:1063::1"), L4::Udp(3479))
        .vlans(&[ETH_P_8021AD, ETH_P_8021Q])
        .build();
    let exchange_587 = Spec::new(ip("40.96.1.1"), L4::Tcp(587))
        .vlans(&[ETH_P_8021Q])
        .build();
    let other = Spec::new(ip("198.51.100.1"), L4::Tcp(443)).build();
    let mut frames = Vec::new();
    frames.extend(std::iter::repeat_n(teams.clone(), 20));
    frames.extend(std::iter::repeat_n(teams_v6_tagged.clone(), 5));
    frames.extend(std::iter::repeat_n(exchange_587.clone(), 7));
    frames.extend(std::iter::repeat_n(other.clone(), 11));
    netns
        .run(move || send_frames(ifindex("lan0").unwrap(), &frames))
        .unwrap();

    let maps = Maps::from_pins(&pin_dir.path).unwrap();
    let stats = maps.stats().unwrap();
    let packets = |index: u32| stats[index as usize].packets;
    assert_eq!(packets(stat::DIRECT), 32, "Teams and Exchange");
    assert_eq!(packets(stat::MATCH_PORT), 32);
    assert_eq!(packets(stat::TUNNEL), 11, "the other destination");
    assert_eq!(packets(stat::NO_MATCH), 11);
    assert_eq!(
        stats[stat::DIRECT as usize].bytes,
        (20 * teams.len() + 5 * teams_v6_tagged.len() + 7 * exchange_587.len()) as u64
    );
    // veth hands XDP metadata to the skb: the tc program marks from it, never by itself.
    assert_eq!(packets(stat::TC_MARK_META), 32);
    assert_eq!(packets(stat::TC_MARK_SELF), 0);
    assert_eq!(packets(stat::TC_PASS), 11);
    assert_eq!(packets(stat::NO_META), 0);
    let sets: Vec<(u16, u64)> = maps
        .set_stats()
        .unwrap()
        .into_iter()
        .map(|(id, c)| (id, c.packets))
        .collect();
    assert_eq!(sets, [(2, 7), (11, 25)]);

    // The CLI reads the same pinned maps.
    let output = cli(&netns, &pin_dir, &["--json", "stats"]);
    assert!(
        output.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["counters"]["direct"]["packets"], 32);
    assert_eq!(json["counters"]["tc_mark_meta"]["packets"], 32);
    assert_eq!(json["endpoint_sets"][1]["id"], 11);
    assert_eq!(json["endpoint_sets"][1]["packets"], 25);

    // Attaching again swaps the programs in place and keeps entries and counters.
    let output = cli(&netns, &pin_dir, &["attach", "lan1"]);
    assert!(
        output.status.success(),
        "re-attach: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("kept the 93 installed prefixes"));
    assert_eq!(
        Maps::from_pins(&pin_dir.path).unwrap().stats().unwrap()[stat::DIRECT as usize].packets,
        32
    );

    let output = cli(&netns, &pin_dir, &["detach", "lan1"]);
    assert!(
        output.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let link =
        String::from_utf8_lossy(&netns.ip(&["link", "show", "lan1"]).unwrap().stdout).into_owned();
    assert!(!link.contains("xdp"), "nothing left on lan1: {link}");
    netns
        .run(move || send_frames(ifindex("lan0").unwrap(), &[teams]))
        .unwrap();
    assert_eq!(
        maps.stats().unwrap()[stat::DIRECT as usize].packets,
        32,
        "detached: no more counting"
    );

    let output = cli(&netns, &pin_dir, &["detach", "lan1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("xdp-breakout is not attached"));
}

#[test]
fn attach_to_a_missing_interface_fails_clearly_and_changes_nothing() {
    let Some(netns) = veth_namespace() else {
        return;
    };
    let pin_dir = PinDir::new("missing");
    let output = cli(&netns, &pin_dir, &["attach", "nosuch0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interface nosuch0"), "{stderr}");
    assert!(!pin_dir.path.join("xdp_link@nosuch0").exists());

    let output = cli(
        &netns,
        &pin_dir,
        &["attach", "lan1", "--feed-file", "/nonexistent/feed.json"],
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("reading feed /nonexistent/feed.json")
    );
    assert!(
        !pin_dir.path.join("xdp_link@lan1").exists(),
        "a bad feed attaches nothing"
    );
}

#[test]
fn a_held_pin_lock_makes_attach_wait_then_fail_clearly() {
    let Some(netns) = veth_namespace() else {
        return;
    };
    let pin_dir = PinDir::new("locked");
    let lock = classifier_user::datapath::PinLock::acquire(&pin_dir.path).unwrap();
    let output = cli(&netns, &pin_dir, &["attach", "lan1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another xdp-breakout process has been changing"),
        "{stderr}"
    );
    assert!(!pin_dir.path.join("xdp_link@lan1").exists());
    drop(lock);
    let output = cli(&netns, &pin_dir, &["attach", "lan1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A pin that exists under a link's name but is no link (a directory here; a stale or foreign
/// object in general) is refused by name, and nothing is left attached. (`attach` used to
/// attach anew, find the pin present, skip pinning and report success: the new link died
/// with the process.)
#[test]
fn a_pin_that_cannot_be_adopted_is_refused_and_nothing_is_attached() {
    let Some(netns) = veth_namespace() else {
        return;
    };
    let pin_dir = PinDir::new("attach-stale");
    std::fs::create_dir_all(&pin_dir.path).unwrap();
    for stale in ["xdp_link@lan1", "tc_link@lan1"] {
        let path = pin_dir.path.join(stale);
        std::fs::create_dir(&path).unwrap();
        let output = cli(&netns, &pin_dir, &["attach", "lan1"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{} exists but is no {} link xdp-breakout can adopt",
                path.display(),
                if stale.starts_with("xdp") {
                    "XDP"
                } else {
                    "tc"
                }
            )),
            "{stderr}"
        );
        std::fs::remove_dir(&path).unwrap();
        // Whatever was attached before the refusal was pinned, so it is still there; clear
        // it for the next case.
        let _ = cli(&netns, &pin_dir, &["detach", "lan1"]);
    }
    let link =
        String::from_utf8_lossy(&netns.ip(&["link", "show", "lan1"]).unwrap().stdout).into_owned();
    assert!(!link.contains("xdp"), "nothing attached to lan1: {link}");
    // With the stale pins gone, attach works and keeps its links.
    let output = cli(&netns, &pin_dir, &["attach", "lan1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let link =
        String::from_utf8_lossy(&netns.ip(&["link", "show", "lan1"]).unwrap().stdout).into_owned();
    assert!(
        link.contains("xdp"),
        "XDP on lan1 after the command exited: {link}"
    );
    let status = cli(&netns, &pin_dir, &["--json", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["interfaces"][0]["xdp"]["mode"], "native", "{status}");
    assert_eq!(
        status["interfaces"][0]["xdp"]["program_name"], "breakout",
        "{status}"
    );
}

/// `attach --mode tc` swaps `breakout_tc` into the interface's tc link and removes the XDP
/// link; frames are then classified, counted and recorded by tc alone; `attach` without it
/// brings XDP back. `status` names the mode each time.
#[test]
fn the_mode_changes_between_xdp_and_tc_alone_in_place() {
    let Some(netns) = Netns::with_veth_pair("xbt-mode") else {
        return;
    };
    let pin_dir = PinDir::new("mode");
    let ok = |args: &[&str]| {
        let output = cli(&netns, &pin_dir, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let attach_of = |status: &str| -> (String, bool, String) {
        let status: serde_json::Value = serde_json::from_str(status).unwrap();
        let lan = &status["interfaces"][0];
        (
            lan["attach"].as_str().unwrap().to_owned(),
            lan["xdp"].is_null(),
            lan["tc"]["program_name"].as_str().unwrap().to_owned(),
        )
    };
    ok(&["attach", "lan1"]);
    let tc_link = || ok(&["--json", "status"]);
    let before: serde_json::Value = serde_json::from_str(&tc_link()).unwrap();
    let link_id = before["interfaces"][0]["tc"]["link_id"].clone();
    assert_eq!(
        attach_of(&tc_link()),
        ("xdp".to_owned(), false, "breakout_mark".to_owned())
    );

    ok(&["attach", "--mode", "tc", "lan1"]);
    assert!(!pin_dir.path.join("xdp_link@lan1").exists());
    let status = tc_link();
    assert_eq!(
        attach_of(&status),
        ("tc".to_owned(), true, "breakout_tc".to_owned())
    );
    let after: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        after["interfaces"][0]["tc"]["link_id"], link_id,
        "the same tc link, its program swapped"
    );
    let link =
        String::from_utf8_lossy(&netns.ip(&["link", "show", "lan1"]).unwrap().stdout).into_owned();
    assert!(!link.contains("prog/xdp"), "no XDP on lan1: {link}");

    let teams = Spec::new(ip("52.112.1.1"), L4::Udp(3478)).build();
    let other = Spec::new(ip("198.51.100.1"), L4::Tcp(443)).build();
    let maps = Maps::from_pins(&pin_dir.path).unwrap();
    let before = maps.stats().unwrap();
    let frames = [vec![teams.clone(); 9], vec![other.clone(); 4]].concat();
    netns
        .run(move || send_frames(ifindex("lan0").unwrap(), &frames))
        .unwrap();
    let moved = tests::delta(&before, &maps.stats().unwrap());
    let packets = |index: u32| {
        moved
            .iter()
            .find(|(i, _)| *i == index as usize)
            .map_or(0, |(_, counter)| counter.packets)
    };
    assert_eq!(
        [
            packets(stat::DIRECT),
            packets(stat::TUNNEL),
            packets(stat::TC_MARK_SELF),
            packets(stat::TC_MARK_META),
            packets(stat::FLOW_NEW),
        ],
        [9, 4, 9, 0, 2],
        "direct, tunnel, marked by tc itself, from metadata, new flows"
    );

    ok(&["attach", "lan1"]);
    assert_eq!(
        attach_of(&tc_link()),
        ("xdp".to_owned(), false, "breakout_mark".to_owned())
    );
    ok(&["detach", "lan1"]);
    assert_eq!(ok(&["--json", "status"]).matches("\"attach\"").count(), 0);
}
