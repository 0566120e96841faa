//! What a careless administrator or another user on the router can do, tried for real with
//! the `xdp-breakout` binary: pin and state directories another user could change are refused
//! (and nothing is mounted over a directory outside bpffs), `lookup -` survives hostile input,
//! `lookup` names only the endpoint sets the maps hold, and `config check` refuses settings
//! that cannot work or that weaken trust.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use tests::{FEED_2026043000, PinDir, TempDir, netns::Netns, output::ok, xdp_breakout};

fn output(command: &mut Command) -> Output {
    command.output().expect("running xdp-breakout")
}

fn fails(output: &Output, needle: &str) {
    tests::output::fails(output, 1, needle);
}

fn temp_dir(what: &str) -> TempDir {
    let dir = TempDir::new(what);
    fs::create_dir_all(&dir.0).expect("creating a temporary directory");
    dir
}

/// Mount points below `dir`, from this process's mount table.
fn mounts_at(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The 2026043000 feed with Teams' IPv4 prefixes in an endpoint set of its own, 77, of a
/// service area no Microsoft feed has.
fn feed_with_teams_in_set_77() -> Vec<u8> {
    let mut sets: Vec<Value> = serde_json::from_slice(FEED_2026043000).expect("fixture");
    for set in &mut sets {
        if set["id"] == 11 {
            set["id"] = 77.into();
            set["serviceArea"] = "Custom".into();
        }
        if set["id"] == 12
            && let Some(ips) = set["ips"].as_array_mut()
        {
            ips.retain(|ip| !ip.as_str().is_some_and(|ip| ip.starts_with("52.11")));
        }
    }
    serde_json::to_vec(&sets).expect("JSON")
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one attached data plane, every hostile case"
)]
fn directories_and_input_others_control_are_refused() {
    let Some(netns) = Netns::with_veth_pair("xbt-hostile") else {
        return;
    };
    let bin = xdp_breakout();
    let bin = bin.to_str().expect("UTF-8 path");
    let work = temp_dir("hostile");
    let state = work.0.join("state");

    // A pin directory outside bpffs: refused, and nothing is mounted over its parent, whose
    // files stay where they were.
    let parent = work.0.join("run");
    fs::create_dir_all(&parent).unwrap();
    fs::write(parent.join("marker"), b"still here").unwrap();
    let outside = parent.join("pins");
    let refused = output(
        netns
            .command(bin)
            .arg("--pin-dir")
            .arg(&outside)
            .args(["attach", "lan1"]),
    );
    let mounted = mounts_at(&work.0);
    for point in &mounted {
        let _ = Command::new("umount").arg(point).status();
    }
    fails(&refused, "is not on a bpffs");
    assert_eq!(mounted, Vec::<String>::new(), "a bpffs was mounted");
    assert_eq!(fs::read(parent.join("marker")).unwrap(), b"still here");

    // A pin directory another user owns, or may write to, is refused and named.
    let pin_dir = PinDir::new("hostile");
    let pins = pin_dir.path.to_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        output(
            netns
                .command(bin)
                .args(["--pin-dir", &pins, "--state-dir"])
                .arg(&state)
                .args(args),
        )
    };
    let teams_media = || -> Value {
        let args = [
            "--json",
            "lookup",
            "52.112.1.1",
            "--proto",
            "udp",
            "--port",
            "3478",
        ];
        serde_json::from_str(&ok(&run(&args))).expect("lookup JSON")
    };
    fs::create_dir(&pin_dir.path).unwrap();
    std::os::unix::fs::chown(&pin_dir.path, Some(65534), Some(65534)).unwrap();
    fails(
        &run(&["attach", "lan1"]),
        &format!("pin directory {pins} is owned by uid 65534"),
    );
    std::os::unix::fs::chown(&pin_dir.path, Some(0), Some(0)).unwrap();
    chmod(&pin_dir.path, 0o777);
    fails(
        &run(&["attach", "lan1"]),
        &format!("pin directory {pins} has mode 0777: other users may write to it"),
    );
    assert!(
        fs::read_dir(&pin_dir.path).unwrap().next().is_none(),
        "nothing was pinned in a refused directory"
    );
    fs::remove_dir(&pin_dir.path).unwrap();
    // One it creates itself is private.
    ok(&run(&["attach", "lan1"]));
    let mode = fs::metadata(&pin_dir.path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);

    // A state directory others may write to is refused, and nothing is applied.
    let feed = work.0.join("feed.json");
    fs::write(&feed, FEED_2026043000).unwrap();
    fs::create_dir_all(&state).unwrap();
    chmod(&state, 0o777);
    fails(
        &run(&["sync", "--feed-file", feed.to_str().unwrap()]),
        "state directory",
    );
    chmod(&state, 0o700);
    ok(&run(&["sync", "--feed-file", feed.to_str().unwrap()]));

    // The maps filled from another source than the state directory's feed: lookup names the
    // set the maps hold, not the one the state directory's feed would.
    let other = work.0.join("other.json");
    fs::write(&other, feed_with_teams_in_set_77()).unwrap();
    ok(&run(&[
        "attach",
        "--feed-file",
        other.to_str().unwrap(),
        "lan1",
    ]));
    let answer = teams_media();
    assert_eq!(answer["decided_by"], 77, "{answer}");
    assert_eq!(answer["endpoint_sets"], serde_json::json!([77]), "{answer}");
    assert_eq!(answer["service_area"], "unknown", "{answer}");
    // After a sync through the state directory, its feed names the sets again.
    ok(&run(&[
        "sync",
        "--force",
        "--feed-file",
        feed.to_str().unwrap(),
    ]));
    let answer = teams_media();
    assert_eq!(
        answer["endpoint_sets"],
        serde_json::json!([11, 12]),
        "{answer}"
    );
    assert_eq!(answer["service_area"], "Skype", "{answer}");

    // `lookup -`: a 200 MB-class line is neither buffered nor echoed, bad lines are reported
    // one by one, and the good ones are answered.
    let long = "7".repeat(4 << 20);
    let input = format!("52.112.1.1 udp 3478\n{long}\nexample.com\n40.96.1.1 tcp 587\n");
    let mut child = netns
        .command(bin)
        .args(["--pin-dir", &pins, "--json", "lookup", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        stdin.write_all(input.as_bytes())
    });
    let result = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.len() < 1000,
        "the long line was echoed: {} bytes",
        stderr.len()
    );
    assert!(
        stderr.contains("2 of 4 lines on stdin were not questions"),
        "{stderr}"
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&result.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["action"], "direct");
    assert_eq!(lines[1]["line"], 2);
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("a line of 4194304 bytes"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["line"], 3);
    assert!(
        lines[2]["error"]
            .as_str()
            .unwrap()
            .contains("\"example.com\" is not an IP address")
    );
    assert_eq!(lines[3]["category"], "Allow");

    ok(&run(&["detach", "lan1"]));
}

#[test]
fn config_check_refuses_what_cannot_work_or_weakens_trust() {
    let bin = xdp_breakout();
    // The defaults (no /etc/xdp-breakout/config.toml on a test machine), then the flags.
    let check = |args: &[&str]| output(Command::new(&bin).args(["config", "check"]).args(args));
    fails(
        &check(&["--feed-url", "http://mirror.example"]),
        "feed.url: \"http://mirror.example\" is plain HTTP",
    );
    let allowed = check(&["--feed-url", "http://mirror.example", "--allow-http"]);
    assert!(ok(&allowed).contains("allow-http = true"));
    assert!(
        String::from_utf8_lossy(&allowed.stderr).contains("warning: feed.url"),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    fails(&check(&["--connect-timeout", "0s"]), "feed.connect-timeout");
    fails(&check(&["--request-timeout", "0s"]), "feed.request-timeout");
    fails(&check(&["--max-body-bytes", "0"]), "feed.max-body-bytes");
    fails(
        &check(&["--include", "192.168.0.0/16"]),
        "policy.include: \"192.168.0.0/16\": overlaps 192.168.0.0/16",
    );
    ok(&check(&[
        "--include",
        "192.168.0.0/16",
        "--include-special",
    ]));
}
