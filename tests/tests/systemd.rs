//! The shipped systemd unit (dist/xdp-breakout.service) stays sandboxed: `systemd-analyze
//! security` rates its overall exposure below 4.0, it grants exactly the four capabilities the
//! agent needs (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN), and it keeps the file
//! system read-only except the bpffs pins.
//!
//! The score catches a hardening setting dropped by accident; the explicit checks catch the
//! opposite mistake, a capability or writable path added to make something work, which moves
//! the score too little to notice. Without systemd-analyze the score check skips, except under
//! `CI=true` where it fails.

use std::{io::ErrorKind, path::PathBuf, process::Command};

use tests::unavailable;

/// The overall exposure the unit must stay under.
const MAX_EXPOSURE: f64 = 4.0;

/// `--threshold=` for [`MAX_EXPOSURE`]: systemd-analyze compares it with the exposure in
/// tenths (0 to 100, 2.4 is 24) and fails when the exposure is greater, so 39 fails at 4.0.
const THRESHOLD: &str = "--threshold=39";

/// The capabilities the agent needs, in the bounding set and nothing else.
const CAPABILITIES: [&str; 4] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN"];

/// The unit file as shipped.
fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/xdp-breakout.service")
}

/// The unit file's text.
fn unit_text() -> String {
    let path = unit_path();
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// The values assigned to `key` in the `[Service]` section, in order. Comments are skipped;
/// line continuations are not supported (the unit uses none).
fn assignments<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let mut in_service = false;
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with(['#', ';'])
            && let Some((name, value)) = line.split_once('=')
            && name.trim() == key
        {
            values.push(value.trim());
        }
    }
    values
}

/// The items of the list setting `key`, accumulated as systemd does: each assignment adds its
/// space-separated items, an empty one clears the list.
fn list_setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let mut items = Vec::new();
    for value in assignments(unit, key) {
        if value.is_empty() {
            items.clear();
        }
        items.extend(value.split_whitespace());
    }
    items
}

/// The overall exposure in `systemd-analyze security` output, from its last line
/// `→ Overall exposure level for xdp-breakout.service: 2.4 OK 🙂` (`->` outside UTF-8).
fn overall_exposure(output: &str) -> Option<f64> {
    let (_, rest) = output.split_once("Overall exposure level for xdp-breakout.service:")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn systemd_analyze_rates_the_unit_below_4() {
    let path = unit_path();
    // --offline=yes reads the file itself: no running systemd or installed unit is needed.
    let run = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", THRESHOLD])
        .arg(&path)
        .output();
    let output = match run {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            let _ = unavailable("systemd-analyze", &error);
            return;
        }
        Err(error) => panic!("running systemd-analyze: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = format!(
        "systemd-analyze security --offline=yes {THRESHOLD} {} ({}):\n{stdout}{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let Some(exposure) = overall_exposure(&stdout) else {
        panic!("no overall exposure level in the output of {report}");
    };
    assert!(
        exposure < MAX_EXPOSURE,
        "overall exposure {exposure:.1} is not below {MAX_EXPOSURE:.1}: {report}"
    );
    assert!(
        output.status.success(),
        "exposure {exposure:.1}, yet {report}"
    );
}

#[test]
fn unit_grants_exactly_the_needed_capabilities() {
    let unit = unit_text();
    let mut granted = list_setting(&unit, "CapabilityBoundingSet");
    granted.sort_unstable();
    let mut needed = CAPABILITIES;
    needed.sort_unstable();
    assert_eq!(
        granted.len(),
        needed.len(),
        "CapabilityBoundingSet= lists {granted:?}, expected exactly {needed:?}"
    );
    assert_eq!(
        granted, needed,
        "CapabilityBoundingSet= lists {granted:?}, expected exactly {needed:?}"
    );
}

#[test]
fn unit_is_read_only_except_bpffs() {
    let unit = unit_text();
    let protect_system = assignments(&unit, "ProtectSystem").last().copied();
    assert_eq!(
        protect_system,
        Some("strict"),
        "the unit must set ProtectSystem=strict"
    );
    let writable = list_setting(&unit, "ReadWritePaths");
    assert!(
        writable
            .iter()
            .any(|path| path.trim_start_matches(['-', '+']) == "/sys/fs/bpf"),
        "ReadWritePaths= lists {writable:?}, which lacks /sys/fs/bpf (the agent pins there)"
    );
}
