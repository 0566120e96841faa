//! A reload takes only what a reload can change. The interfaces, the XDP mode and the pin and
//! state directories take effect at start; a SIGHUP whose file changes them says so and keeps
//! the running ones, and `--detach-on-exit` then detaches what was attached, from where it was
//! pinned, not what the new file names.

use std::{
    fs,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use tests::{PinDir, netns::Netns, xdp_breakout};

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
