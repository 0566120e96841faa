//! An operator who is not root, run for real as `nobody` against a data plane root attached:
//! `status`, `stats`, `detach`, `learned` and `sources` fail and say that xdp-breakout needs
//! root. Never that a healthy pin directory is another user's and should be removed, nor that
//! there are no maps, no status or nothing learned; and nothing changes.
//!
//! Two layouts: pins and state in directories `nobody` may look into (a bpffs mounted 1777)
//! and so finds root's, and in directories it may not (bpffs mounted 0700, as systemd does),
//! where the kernel answers EACCES.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Output,
};

use classifier_user::state::{LearnedFile, State, Status};
use serde_json::Value;
use tests::{PinDir, TempDir, netns::Netns, output::ok, unavailable, xdp_breakout};

/// `nobody`, who owns nothing of xdp-breakout's.
const NOBODY: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Whether `nobody` may run `bin`: every directory above it searchable by others, and the
/// file readable and executable by them.
fn others_may_run(bin: &Path) -> bool {
    let mode = |path: &Path| fs::metadata(path).map_or(0, |meta| meta.permissions().mode());
    mode(bin) & 0o005 == 0o005
        && bin
            .ancestors()
            .skip(1)
            .all(|dir| dir.as_os_str().is_empty() || mode(dir) & 0o001 != 0)
}

/// The binary of this build where `nobody` may run it: in place, or copied into `work`.
fn binary_for_nobody(work: &Path) -> PathBuf {
    let bin = xdp_breakout();
    if others_may_run(&bin) {
        return bin;
    }
    let copy = work.join("xdp-breakout");
    fs::copy(&bin, &copy).expect("copying xdp-breakout where nobody may run it");
    chmod(&copy, 0o755);
    copy
}

/// One layout of pins and state, attached to `iface` by root.
struct Layout {
    what: &'static str,
    iface: &'static str,
    pins: PathBuf,
    state: PathBuf,
}

/// What root sees, to show that `nobody` changed nothing.
#[derive(Debug, PartialEq)]
struct Seen {
    status: Value,
    stats: Value,
    prefixes: Value,
    pins: Vec<String>,
    state: Vec<(String, Vec<u8>)>,
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("reading a directory as root")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, two layouts, read top to bottom"
)]
fn commands_run_by_another_user_say_root_is_needed_and_change_nothing() {
    if let Err(error) = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
    {
        unavailable("setpriv (util-linux)", &error);
        return;
    }
    let Some(netns) = Netns::with_veth_pair("xbt-nonroot") else {
        return;
    };
    let work = TempDir::new("nonroot");
    fs::create_dir_all(&work.0).unwrap();
    chmod(&work.0, 0o755);
    let bin = binary_for_nobody(&work.0);
    let bin = bin.to_str().expect("UTF-8 path");

    // Visible: nobody may look into the pin directory's parent (this bpffs, when mounted
    // 1777) and the state directory's, and finds directories of root's.
    let visible_pins = PinDir::new("nonroot");
    let visible_state = work.0.join("visible");
    fs::create_dir(&visible_state).unwrap();
    chmod(&visible_state, 0o755);
    // Hidden: both inside directories only root may enter, so nobody meets EACCES.
    let hidden_pins = PinDir::new("nonroot-hidden");
    fs::create_dir(&hidden_pins.path).unwrap();
    chmod(&hidden_pins.path, 0o700);
    let hidden_state = work.0.join("hidden");
    fs::create_dir(&hidden_state).unwrap();
    chmod(&hidden_state, 0o700);
    let layouts = [
        Layout {
            what: "visible",
            iface: "lan1",
            pins: visible_pins.path.clone(),
            state: visible_state.join("state"),
        },
        Layout {
            what: "hidden",
            iface: "lan0",
            pins: hidden_pins.path.join("pins"),
            state: hidden_state.join("state"),
        },
    ];

    let run_as = |uid: Option<u32>, layout: &Layout, args: &[&str]| -> Output {
        let mut command = match uid {
            Some(uid) => {
                let mut command = netns.command("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .args(["--clear-groups", "--", bin]);
                command
            }
            None => netns.command(bin),
        };
        command
            .arg("--pin-dir")
            .arg(&layout.pins)
            .arg("--state-dir")
            .arg(&layout.state)
            .args(args)
            .output()
            .expect("running xdp-breakout")
    };
    let root = |layout: &Layout, args: &[&str]| run_as(None, layout, args);
    let json = |layout: &Layout, args: &[&str]| -> Value {
        serde_json::from_str(&ok(&root(layout, args))).expect("JSON")
    };
    let seen = |layout: &Layout| Seen {
        status: json(layout, &["--json", "status"]),
        stats: json(layout, &["--json", "stats"]),
        prefixes: json(layout, &["--json", "prefixes"]),
        pins: names(&layout.pins),
        state: names(&layout.state)
            .into_iter()
            .map(|name| {
                let body = fs::read(layout.state.join(&name)).unwrap();
                (name, body)
            })
            .collect(),
    };

    let mut before = Vec::new();
    for layout in &layouts {
        ok(&root(layout, &["attach", layout.iface]));
        // The files the agent keeps, as it writes them: `sources` and `learned` have
        // something to show root.
        let state = State::open(&layout.state).expect("the state directory, as root");
        state
            .save_status(&Status {
                pid: std::process::id(),
                interfaces: vec![layout.iface.to_owned()],
                ..Status::default()
            })
            .unwrap();
        state.save_learned(&LearnedFile::default()).unwrap();
        ok(&root(layout, &["sources"]));
        ok(&root(layout, &["learned"]));
        let seen = seen(layout);
        assert_eq!(
            seen.status["interfaces"][0]["name"], layout.iface,
            "{}",
            seen.status
        );
        assert_eq!(
            seen.status["interfaces"][0]["attach"], "xdp",
            "{}",
            seen.status
        );
        before.push(seen);
    }

    // Every answer is gathered first, so that a failure lists all of them.
    let mut answers = Vec::new();
    let mut wrong = Vec::new();
    for layout in &layouts {
        for args in [
            &["status"][..],
            &["stats"],
            &["detach", layout.iface],
            &["learned"],
            &["sources"],
        ] {
            let output = run_as(Some(NOBODY), layout, args);
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            let answer = format!(
                "{} {}: exit {:?}: {}",
                layout.what,
                args.join(" "),
                output.status.code(),
                stderr.trim_end()
            );
            if output.status.code() != Some(1)
                || !stderr.contains("needs root")
                || stderr.contains("remove")
            {
                wrong.push(answer.clone());
            }
            answers.push(answer);
        }
    }
    eprintln!("as uid {NOBODY}:\n{}", answers.join("\n"));
    assert!(
        wrong.is_empty(),
        "these did not fail saying root is needed (or advised removing something):\n{}",
        wrong.join("\n")
    );

    for (layout, before) in layouts.iter().zip(&before) {
        assert_eq!(
            &seen(layout),
            before,
            "{}: what nobody ran changed something",
            layout.what
        );
        ok(&root(layout, &["detach", layout.iface]));
    }
}
