//! A reload takes only what a reload can change. The interfaces, the XDP mode and the pin and
//! state directories take effect at start; a SIGHUP whose file changes them says so and keeps
//! the running ones, and `--detach-on-exit` then detaches what was attached, from where it was
//! pinned, not what the new file names.
//!
//! And only from a file another user cannot change: `run` refuses one at start, and a SIGHUP
//! keeps the running configuration.

use std::{
    fs,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use classifier_user::datapath::{Maps, attached_xdp};
use tests::{
    PinDir, TempDir, chmod, chown,
    daemon::{Daemon, Setup},
    ip,
    netns::Netns,
    xdp_breakout,
};

fn wait_for(what: &str, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited 30 s for {what}; {}",
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A veth pair in a throwaway namespace `netns`, a pin directory and a work directory named
/// `name`; `None` (a skip, or a loud failure under CI) without namespaces.
fn scene(netns: &str, name: &str) -> Option<(Netns, PinDir, TempDir)> {
    let netns = Netns::with_veth_pair(netns)?;
    let work = TempDir::new(name);
    fs::create_dir(&work.0).unwrap();
    Some((netns, PinDir::new(name), work))
}

#[test]
fn a_reload_that_changes_restart_only_settings_detaches_what_was_attached() {
    let Some(netns) = Netns::with_veth_pair("xbt-reload") else {
        return;
    };
    let pin_dir = PinDir::new("reload");
    let work = std::env::temp_dir().join(format!("xbt-reload-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let config = work.join("config.toml");
    let file = |iface: &str, pins: &std::path::Path| {
        format!(
            "interfaces = [\"{iface}\"]\npin-dir = \"{}\"\nstate-dir = \"{}\"\n\
             detach-on-exit = true\n",
            pins.display(),
            work.join("state").display()
        )
    };
    fs::write(&config, file("lan1", &pin_dir.path)).unwrap();
    let log_path = work.join("daemon.log");
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    // Nothing listens on the discard port: polls fail fast and change nothing.
    let mut daemon = netns
        .command(xdp_breakout().to_str().unwrap())
        .args([
            "-v",
            "run",
            "--feed-url",
            "http://127.0.0.1:9",
            "--allow-http",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_for("the attach", || log().contains("attached to lan1"), log);
    // SIGHUP ends a daemon whose loop has not started yet; its first failed poll says it has.
    wait_for(
        "the first poll",
        || log().contains("keeping its installed prefixes"),
        log,
    );
    let link = pin_dir.path.join("xdp_link@lan1");
    assert!(link.exists());

    // The file now names another interface and pin directory.
    let elsewhere = PinDir::new("reload-elsewhere");
    fs::write(&config, file("lo", &elsewhere.path)).unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(i32::try_from(daemon.id()).unwrap(), libc::SIGHUP) },
        0
    );
    wait_for(
        "the reload",
        || log().contains("SIGHUP: configuration reloaded"),
        log,
    );
    assert!(
        log().contains("SIGHUP: interfaces, pin-dir change only on restart"),
        "{}",
        log()
    );

    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::kill(i32::try_from(daemon.id()).unwrap(), libc::SIGTERM) },
        0
    );
    let exit = daemon.wait().unwrap();
    assert!(exit.success(), "{exit}: {}", log());
    assert!(log().contains("detached from lan1"), "{}", log());
    assert!(!link.exists(), "lan1's XDP link is still pinned");
    assert!(!elsewhere.path.exists(), "nothing was created elsewhere");
    let _ = fs::remove_dir_all(&work);
}

/// `run` with a configuration file another user could change refuses to start: exit 1, the
/// file, owner and fix named, and nothing attached or pinned.
#[test]
fn run_refuses_a_configuration_file_another_user_could_change() {
    let Some((netns, pin_dir, work)) = scene("xbt-cfgown", "config-owner-start") else {
        return;
    };
    let config = work.0.join("config.toml");
    fs::write(&config, "[policy]\ninclude = [\"77.0.0.0/8\"]\n").unwrap();
    chmod(&config, 0o644);
    let Some(()) = chown(&config, 65534) else {
        return;
    };
    let setup = Setup {
        netns: &netns,
        pin_dir: &pin_dir.path,
        state_dir: &work.0.join("state"),
        iface: "lan1",
        feed_url: "http://127.0.0.1:9",
    };
    let mut daemon = Daemon::start(
        &setup,
        ["--config".as_ref(), config.as_os_str()],
        work.0.join("daemon.log"),
    );
    let exit = daemon.wait_exit();
    let log = daemon.log();
    assert_eq!(exit.code(), Some(1), "{log}");
    let path = config.display();
    assert!(
        log.contains(&format!("configuration file {path} is owned by uid 65534")),
        "{log}"
    );
    assert!(
        log.contains(&format!("`chown root:root {path} && chmod go-w {path}`")),
        "{log}"
    );
    assert!(
        netns.run(|| attached_xdp("lan1")).is_none(),
        "nothing attached to lan1"
    );
    assert!(!pin_dir.path.exists(), "nothing pinned: {log}");
}

/// A running daemon whose file another user could change keeps its running configuration on
/// SIGHUP and says why: an appended `include` sends nothing direct. Once root's own again, the
/// same file is taken.
#[test]
fn a_reload_refuses_a_configuration_file_another_user_could_change() {
    let Some((netns, pin_dir, work)) = scene("xbt-cfghup", "config-owner-hup") else {
        return;
    };
    let config = work.0.join("config.toml");
    fs::write(&config, "# defaults\n").unwrap();
    chmod(&config, 0o644);
    let setup = Setup {
        netns: &netns,
        pin_dir: &pin_dir.path,
        state_dir: &work.0.join("state"),
        iface: "lan1",
        feed_url: "http://127.0.0.1:9",
    };
    let daemon = Daemon::start(
        &setup,
        ["--config".as_ref(), config.as_os_str()],
        work.0.join("daemon.log"),
    );
    daemon.wait_log("attached to lan1");
    let maps = Maps::from_pins(&pin_dir.path).unwrap();
    let direct = || maps.lookup(ip("77.0.0.1")).unwrap().is_some();
    assert!(!direct(), "77.0.0.1 is in no feed");

    // Anyone may write the file, and someone did.
    fs::write(&config, "[policy]\ninclude = [\"77.0.0.0/8\"]\n").unwrap();
    chmod(&config, 0o666);
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("SIGHUP: keeping the running configuration");
    let path = config.display();
    assert!(
        daemon.log().contains(&format!(
            "configuration file {path} is owned by uid 0 (root) with mode 0666"
        )),
        "{}",
        daemon.log()
    );
    assert!(!direct(), "77.0.0.1 went direct: {}", daemon.log());

    // Another user owns it.
    chmod(&config, 0o644);
    let Some(()) = chown(&config, 65534) else {
        return;
    };
    daemon.signal(libc::SIGHUP);
    tests::daemon::wait_for(
        "the second refusal",
        || {
            daemon
                .log()
                .matches("SIGHUP: keeping the running configuration")
                .count()
                == 2
        },
        || daemon.log(),
    );
    assert!(
        daemon
            .log()
            .contains(&format!("configuration file {path} is owned by uid 65534")),
        "{}",
        daemon.log()
    );
    assert!(!direct(), "77.0.0.1 went direct: {}", daemon.log());
    assert!(
        !daemon.log().contains("SIGHUP: configuration reloaded"),
        "{}",
        daemon.log()
    );

    // Root's own again: the same file is taken, so the refusals above were the file's owner
    // and mode, not its content.
    chown(&config, 0).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("SIGHUP: configuration reloaded");
    tests::daemon::wait_for("77.0.0.1 to go direct", direct, || daemon.log());
}

/// A SIGHUP while the daemon starts (a `systemctl reload` just after a start) is taken once
/// the loop runs: it used to end the process (exit 129), whose signal handlers were only
/// installed after the programs had loaded and attached.
#[test]
fn a_sighup_while_the_daemon_starts_is_taken_not_fatal() {
    let Some((netns, pin_dir, work)) = scene("xbt-earlyhup", "early-hup") else {
        return;
    };
    let setup = Setup {
        netns: &netns,
        pin_dir: &pin_dir.path,
        state_dir: &work.0.join("state"),
        iface: "lan1",
        feed_url: "http://127.0.0.1:9",
    };
    let daemon = Daemon::start(
        &setup,
        [] as [&std::ffi::OsStr; 0],
        work.0.join("daemon.log"),
    );
    // The first line is logged before anything loads: the programs are not attached yet.
    daemon.wait_log("plain HTTP");
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("attached to lan1");
    daemon.wait_log("SIGHUP: configuration reloaded");
    assert!(
        std::path::Path::new(&format!("/proc/{}", daemon.pid())).exists(),
        "the daemon ended: {}",
        daemon.log()
    );
}
