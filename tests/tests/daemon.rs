//! The real `xdp-breakout run` daemon in a throwaway network namespace, fed by a real HTTP
//! server inside that namespace: it applies versions in turn, survives SIGKILL without a gap
//! (the data plane keeps classifying, the restart adopts every pinned entry), reloads its
//! configuration on SIGHUP, forwards kernel logs, and leaves the data plane on SIGTERM.

use std::{
    ffi::OsStr,
    fs,
    net::TcpListener,
    time::{Duration, Instant},
};

use classifier_common::{action, stat};
use classifier_user::datapath::Maps;
use tests::{
    FEED_2026033100, FEED_2026043000, PinDir,
    daemon::{Daemon, Setup, applied_version, status, wait_for},
    http::{FeedServer, Reply},
    ip,
    netns::{Netns, ifindex, send_frames},
    output::ok,
    packet::{L4, Spec},
    xdp_breakout,
};

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn daemon_follows_the_feed_and_survives_kill_hup_and_term() {
    let Some(netns) = Netns::with_veth_pair("xbt-daemon") else {
        return;
    };

    // The feed server listens on the namespace's own loopback, where the daemon looks.
    let server = FeedServer::serve(netns.run(|| TcpListener::bind("127.0.0.1:0").unwrap()));
    // Versions newer than the embedded snapshot's 2026043000 (an older one is refused).
    server.set("/version/Worldwide", Reply::version("2026050100"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026033100));

    let pin_dir = PinDir::new("daemon");
    let work = std::env::temp_dir().join(format!("xdp-breakout-daemon-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let state_dir = work.join("state");
    let config = work.join("config.toml");
    fs::write(&config, "# defaults\n").unwrap();
    let feed_url = server.url();
    let setup = Setup {
        netns: &netns,
        pin_dir: &pin_dir.path,
        state_dir: &state_dir,
        iface: "lan1",
        feed_url: &feed_url,
    };
    let args: [&OsStr; 4] = [
        "--poll-interval".as_ref(),
        "1s".as_ref(),
        "--config".as_ref(),
        config.as_ref(),
    ];
    let start = |n: u32| Daemon::start(&setup, args, work.join(format!("daemon-{n}.log")));

    // Version 2026050100 (the 2026033100 feed), then 2026060100 (the 2026043000 feed).
    let daemon = start(1);
    wait_for(
        "version 2026050100",
        || applied_version(&state_dir).as_deref() == Some("2026050100"),
        || daemon.log(),
    );
    assert!(
        daemon
            .log()
            .contains("classifying with the embedded snapshot"),
        "{}",
        daemon.log()
    );
    server.set("/version/Worldwide", Reply::version("2026060100"));
    server.set("/endpoints/Worldwide", Reply::json(FEED_2026043000));
    wait_for(
        "version 2026060100",
        || applied_version(&state_dir).as_deref() == Some("2026060100"),
        || daemon.log(),
    );
    let maps = Maps::from_pins(&pin_dir.path).unwrap();
    let entries = maps.installed().unwrap();
    assert_eq!(entries.len(), 93);

    let teams = Spec::new(ip("52.112.1.1"), L4::Udp(3478)).build();
    let send = |count: usize| {
        let frames = vec![teams.clone(); count];
        netns
            .run(move || send_frames(ifindex("lan0").unwrap(), &frames))
            .unwrap();
    };
    let direct = || maps.stats().unwrap()[stat::DIRECT as usize].packets;
    send(10);
    assert_eq!(direct(), 10);

    // SIGKILL: the data plane keeps classifying without its agent.
    daemon.signal(libc::SIGKILL);
    drop(daemon);
    send(10);
    assert_eq!(direct(), 20, "no gap while the agent is dead");
    assert_eq!(maps.installed().unwrap(), entries);

    // The restart adopts the pins and the last feed: not one entry lost, counters kept.
    let daemon = start(2);
    daemon.wait_log("classifying with the last applied feed 2026060100");
    daemon.wait_log("attached to lan1");
    assert_eq!(maps.installed().unwrap(), entries);
    send(5);
    assert_eq!(direct(), 25);
    wait_for(
        "a poll",
        || {
            status(&state_dir).is_some_and(|s| {
                s.pid == daemon.pid() && s.source("m365").is_some_and(|m| m.last_attempt.is_some())
            })
        },
        || daemon.log(),
    );
    let polled = status(&state_dir).unwrap();
    assert_eq!(
        (
            polled.prefixes_v4,
            polled.prefixes_v6,
            polled.source("m365").unwrap().last_error.clone()
        ),
        (34, 59, None)
    );

    // SIGHUP: Allow goes to the tunnel, and kernel decisions are logged.
    fs::write(
        &config,
        "[policy]\ndirect = [\"Optimize\"]\ndebug-log = true\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("SIGHUP: configuration reloaded");
    assert_eq!(
        maps.policy().unwrap()[..4],
        [
            action::TUNNEL,
            action::TUNNEL,
            action::TUNNEL,
            action::DIRECT
        ]
    );
    send(1);
    daemon.wait_log("verdict action=1 reason=2 category=3 set=11");

    // A broken file keeps the running configuration.
    fs::write(&config, "[policy]\ndirect = [\"Fast\"]\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("SIGHUP: keeping the running configuration");
    assert!(
        daemon.log().contains("unknown category"),
        "{}",
        daemon.log()
    );
    assert_eq!(maps.policy().unwrap()[2], action::TUNNEL);

    // `sync` changes the maps under the running daemon: it notices on its next poll, says so,
    // and returns the maps to the service's version instead of calling it "already applied".
    let synced = work.join("synced.json");
    fs::write(
        &synced,
        String::from_utf8_lossy(FEED_2026043000)
            .replace("\"52.112.0.0/14\"", "\"52.112.0.0/14\", \"44.60.0.0/16\""),
    )
    .unwrap();
    // Another process writes the maps (in the daemon's namespace, with its pin directory).
    let other_writer = |args: &[&str], after_feed: &[&str]| {
        let _ = ok(&netns
            .command(xdp_breakout().to_str().unwrap())
            .arg("--pin-dir")
            .arg(&pin_dir.path)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(args)
            .arg(&synced)
            .args(after_feed)
            .output()
            .unwrap());
    };
    other_writer(&["sync", "--feed-file"], &[]);
    daemon.wait_log("the maps were changed by another process");
    wait_for(
        "the service's feed back in the maps",
        || maps.installed().unwrap() == entries,
        || daemon.log(),
    );
    wait_for(
        "the status to name the service's feed",
        || {
            status(&state_dir).is_some_and(|s| {
                s.source("m365").is_some_and(|m| {
                    m.version.as_deref() == Some("2026060100")
                        && m.from
                            .as_deref()
                            .is_some_and(|from| from.ends_with("/endpoints/Worldwide"))
                }) && (s.prefixes_v4, s.prefixes_v6) == (34, 59)
            })
        },
        || daemon.log(),
    );

    // `attach --feed-file` changes the maps without a record: noticed and undone as well.
    other_writer(&["attach", "--feed-file"], &["lan1"]);
    daemon.wait_log("hold no recorded feed; installing the service's feed again");
    wait_for(
        "the service's feed back in the maps after attach",
        || maps.installed().unwrap() == entries,
        || daemon.log(),
    );

    // A stalled feed server never holds up a reload or an exit: the request in flight is
    // cancelled at once (the request timeout is a minute).
    let endpoints_requests = || {
        server
            .requests()
            .iter()
            .filter(|target| target.starts_with("/endpoints/"))
            .count()
    };
    let stall = |before: usize| {
        wait_for(
            "a request to the stalled server",
            || endpoints_requests() > before,
            || daemon.log(),
        );
    };
    let before = endpoints_requests();
    server.set("/version/Worldwide", Reply::version("2026070100"));
    server.set(
        "/endpoints/Worldwide",
        Reply::json(FEED_2026043000).delayed(Duration::from_secs(90)),
    );
    stall(before);
    let stalled = endpoints_requests();
    let hangup_at = Instant::now();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("SIGHUP: cancelled the feed request in flight");
    assert!(
        hangup_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        hangup_at.elapsed()
    );

    // SIGTERM during the next stalled request (the reload polls again at once): a clean exit
    // within seconds that leaves the data plane in place.
    stall(stalled);
    let mut daemon = daemon;
    let term_at = Instant::now();
    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait();
    assert!(
        term_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        term_at.elapsed()
    );
    assert!(exit.success(), "{exit}: {}", daemon.log());
    assert!(
        daemon
            .log()
            .contains("cancelled the feed request in flight")
    );
    assert!(daemon.log().contains("the data plane stays attached"));
    assert!(pin_dir.path.join("xdp_link@lan1").exists());
    send(1);
    assert_eq!(direct(), 27);
    let _ = fs::remove_dir_all(&work);
}
