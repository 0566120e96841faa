//! The usual alternative to xdp-breakout: an nftables interval set of the same prefixes, with
//! a prerouting rule that sets the same mark.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use classifier_user::compile::Compiled;

use tests::netns::{Netns, run_checked as run};

pub const TABLE: &str = "xbbench";

/// The ruleset: both families' prefixes in interval sets (`auto-merge`, since feed and
/// synthetic prefixes nest). The chain that marks by them is [`hook`]ed apart, so that the
/// throughput rounds can take it in and out without loading the sets again.
#[must_use]
pub fn ruleset(compiled: &Compiled) -> String {
    let mut text = format!("table inet {TABLE} {{\n");
    let v4: Vec<String> = compiled
        .v4
        .keys()
        .map(|key| format!("{}/{}", Ipv4Addr::from(key.addr), key.prefix_len))
        .collect();
    let v6: Vec<String> = compiled
        .v6
        .keys()
        .map(|key| format!("{}/{}", Ipv6Addr::from(key.addr), key.prefix_len))
        .collect();
    for (name, kind, elements) in [("o365v4", "ipv4_addr", v4), ("o365v6", "ipv6_addr", v6)] {
        let _ = write!(
            text,
            "  set {name} {{\n    type {kind}; flags interval; auto-merge;\n"
        );
        if !elements.is_empty() {
            let _ = writeln!(text, "    elements = {{\n{}\n    }}", elements.join(",\n"));
        }
        text.push_str("  }\n");
    }
    text.push_str("}\n");
    text
}

/// Hooks (or unhooks) the chain that marks by the sets: at priority -150 (mangle) in
/// prerouting, as a policy-routing setup does. Unhooked, the table costs a packet nothing.
pub fn hook(netns: &Netns, on: bool) -> anyhow::Result<()> {
    if !on {
        run(netns
            .command("nft")
            .args(["delete", "chain", "inet", TABLE, "pre"]))?;
        return Ok(());
    }
    run(netns.command("nft").args([
        "add",
        "chain",
        "inet",
        TABLE,
        "pre",
        "{ type filter hook prerouting priority -150; policy accept; }",
    ]))?;
    for (family, set) in [("ip", "o365v4"), ("ip6", "o365v6")] {
        run(netns.command("nft").args([
            "add",
            "rule",
            "inet",
            TABLE,
            "pre",
            family,
            "daddr",
            &format!("@{set}"),
            "meta",
            "mark",
            "set",
            "0x365",
        ]))?;
    }
    Ok(())
}

/// A ruleset file, removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What loading a ruleset took.
pub struct Load {
    pub seconds: f64,
    /// nft's peak resident set, sampled from /proc while it runs (`None` when it finished
    /// before the first sample). `getrusage` cannot tell: a spawned child's `ru_maxrss`
    /// starts from the parent's, whose memory it shares until exec.
    pub peak_rss_kib: Option<f64>,
}

/// Loads the ruleset for `compiled` into `netns` with `nft -f`.
pub fn load(netns: &Netns, compiled: &Compiled) -> anyhow::Result<Load> {
    let file = TempFile(std::env::temp_dir().join(format!("{}.nft", netns.name)));
    std::fs::write(&file.0, ruleset(compiled))
        .with_context(|| format!("writing {}", file.0.display()))?;
    let start = Instant::now();
    // `nsenter --net` execs nft in its own process: the pid is nft's.
    let mut child = netns
        .command("nft")
        .arg("-f")
        .arg(&file.0)
        .stdout(Stdio::null())
        .spawn()
        .context("spawning nft")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_rss_kib = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(kib) = std::fs::read_to_string(&status_path)
            .ok()
            // Before nsenter has exec'd, the process is nsenter.
            .filter(|status| status.lines().any(|line| line == "Name:\tnft"))
            .and_then(|status| crate::status_kib(&status, "VmHWM:"))
        {
            peak_rss_kib = Some(kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        status.success(),
        "nft -f {} failed: {status}",
        file.0.display()
    );
    Ok(Load {
        seconds,
        peak_rss_kib,
    })
}

/// Removes the table from `netns`.
pub fn unload(netns: &Netns) -> anyhow::Result<()> {
    run(netns
        .command("nft")
        .args(["delete", "table", "inet", TABLE]))?;
    Ok(())
}
