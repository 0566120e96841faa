//! The Debian package that `cargo xtask package` builds (`cargo xtask test` builds it first
//! and names it in `XDP_BREAKOUT_DEB`): installed with `dpkg -i` on this machine, its files
//! are where Debian wants them, the installed binary runs and accepts the installed
//! configuration, nothing is started, mounted or enabled, and `dpkg --purge` leaves nothing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tests::{in_ci, output::ok};

const PACKAGE: &str = "xdp-breakout";

fn dpkg(args: &[&str]) -> Output {
    Command::new("dpkg").args(args).output().expect("dpkg")
}

/// The `.deb` to test, or `None` (skip) outside CI.
fn deb() -> Option<PathBuf> {
    let found = std::env::var_os("XDP_BREAKOUT_DEB").map(PathBuf::from);
    match found {
        Some(path) if path.exists() => Some(path),
        _ => {
            let _ = tests::unavailable(
                "the .deb (cargo xtask test builds it, or cargo xtask package)",
                &"XDP_BREAKOUT_DEB names no file",
            );
            None
        }
    }
}

/// Purges the package when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = dpkg(&["--purge", PACKAGE]);
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario: install, check, purge")]
fn the_package_installs_runs_starts_nothing_and_purges_clean() {
    let Some(deb) = deb() else {
        return;
    };
    // This machine's own installation is never replaced.
    let mine = [
        "/usr/bin/xdp-breakout",
        "/etc/xdp-breakout",
        "/lib/systemd/system/xdp-breakout.service",
    ];
    if dpkg(&["-s", PACKAGE]).status.success() || mine.iter().any(|path| Path::new(path).exists()) {
        assert!(
            !in_ci(),
            "xdp-breakout is already installed here: a fresh CI machine has none"
        );
        let _ = tests::unavailable(
            "a machine without xdp-breakout installed",
            &"dpkg or /etc/xdp-breakout has one",
        );
        return;
    }
    let pins_before = Path::new("/sys/fs/bpf/xdp-breakout").exists();
    let _purge = Purge;
    ok(&Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap());

    let listed = ok(&dpkg(&["-L", PACKAGE]));
    let files: Vec<&str> = listed
        .lines()
        .filter(|path| Path::new(path).is_file())
        .collect();
    for expected in [
        "/usr/bin/xdp-breakout",
        "/lib/systemd/system/xdp-breakout.service",
        "/etc/xdp-breakout/config.toml",
        "/usr/share/man/man1/xdp-breakout.1.gz",
        "/usr/share/bash-completion/completions/xdp-breakout",
        "/usr/share/zsh/vendor-completions/_xdp-breakout",
        "/usr/share/fish/vendor_completions.d/xdp-breakout.fish",
        "/usr/share/xdp-breakout/grafana-dashboard.json",
        "/usr/share/doc/xdp-breakout/copyright",
    ] {
        assert!(files.contains(&expected), "{expected} is not in:\n{listed}");
    }
    let conffiles = ok(&Command::new("dpkg-query")
        .args(["-W", "-f=${Conffiles}", PACKAGE])
        .output()
        .unwrap());
    assert!(
        conffiles.contains("/etc/xdp-breakout/config.toml"),
        "the configuration is a conffile: {conffiles}"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/xdp-breakout.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/xdp-breakout run") && !unit.contains("/usr/local"),
        "{unit}"
    );

    let version = ok(&Command::new("/usr/bin/xdp-breakout")
        .arg("--version")
        .output()
        .unwrap());
    assert_eq!(
        version.trim(),
        format!("xdp-breakout {}", env!("CARGO_PKG_VERSION"))
    );
    let checked = ok(&Command::new("/usr/bin/xdp-breakout")
        .args([
            "config",
            "check",
            "--config",
            "/etc/xdp-breakout/config.toml",
        ])
        .output()
        .unwrap());
    assert!(checked.contains("[feed]"), "{checked}");
    // The man page is the binary's own.
    let man = Command::new("gzip")
        .args(["-dc", "/usr/share/man/man1/xdp-breakout.1.gz"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH xdp-breakout 1"));
    // Nothing was started, mounted or pinned by installing.
    assert_eq!(
        Path::new("/sys/fs/bpf/xdp-breakout").exists(),
        pins_before,
        "the package created pins"
    );
    assert!(
        !Path::new("/var/lib/xdp-breakout").exists(),
        "state written"
    );
    let running = Command::new("pgrep")
        .args(["-f", "^/usr/bin/xdp-breakout run"])
        .output()
        .unwrap();
    assert!(!running.status.success(), "an agent was started");

    ok(&dpkg(&["--purge", PACKAGE]));
    assert!(!dpkg(&["-s", PACKAGE]).status.success());
    for file in &files {
        assert!(!Path::new(file).exists(), "{file} is left after the purge");
    }
    for dir in [
        "/etc/xdp-breakout",
        "/usr/share/xdp-breakout",
        "/usr/share/doc/xdp-breakout",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} is left after the purge");
    }
}
