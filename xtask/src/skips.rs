//! The privileged tests that skipped during `cargo xtask test`, summed up in one line.
//!
//! libtest counts a test that returned early as passed, so the tests crate writes each skip
//! to a log (tests/src/skips.rs) whose path this module chooses and passes in [`LOG_ENV`].

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The environment variable naming the skip log; tests/src/skips.rs spells the same name.
pub const LOG_ENV: &str = "XDP_BREAKOUT_SKIP_LOG";

/// The skip log of this workspace: in its target directory, as `cargo metadata` names it
/// (which honours `CARGO_TARGET_DIR` and `build.target-dir`).
pub fn log_path(cargo: &mut Command) -> anyhow::Result<PathBuf> {
    let output = cargo
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata names no target_directory")?;
    Ok(Path::new(target).join("privileged-test-skips.tsv"))
}

/// Removes the log of an earlier run, so that the summary speaks of this run alone.
pub fn clear(log: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(log) {
        Err(error) if error.kind() != ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", log.display()))
        }
        _ => Ok(()),
    }
}

/// The log's text; empty when no test skipped (nothing created it).
pub fn read(log: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(log) {
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(String::new()),
        read => read.with_context(|| format!("reading {}", log.display())),
    }
}

/// The skips in a log, `(test, reason)` sorted by test: one line each, test and reason apart by
/// a tab.
#[must_use]
pub fn parse(log: &str) -> Vec<(&str, &str)> {
    let mut skips: Vec<(&str, &str)> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.split_once('\t')
                .unwrap_or((line, "no reason recorded"))
        })
        .collect();
    skips.sort_unstable();
    skips
}

/// "N privileged tests skipped: test (reason), ...", or "0 privileged tests skipped".
#[must_use]
pub fn summary(skips: &[(&str, &str)]) -> String {
    let count = match skips.len() {
        1 => "1 privileged test skipped".to_owned(),
        n => format!("{n} privileged tests skipped"),
    };
    if skips.is_empty() {
        return count;
    }
    let list: Vec<String> = skips
        .iter()
        .map(|(test, reason)| format!("{test} ({reason})"))
        .collect();
    format!("{count}: {}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::{parse, summary};

    #[test]
    fn no_log_says_none_skipped() {
        assert_eq!(summary(&parse("")), "0 privileged tests skipped");
    }

    #[test]
    fn one_skip_is_named_with_its_reason() {
        assert_eq!(
            summary(&parse(
                "attach::attach_to_a_missing_interface\ta network namespace is unavailable\n"
            )),
            "1 privileged test skipped: attach::attach_to_a_missing_interface \
             (a network namespace is unavailable)"
        );
    }

    #[test]
    fn several_skips_are_listed_by_test() {
        let log = "router::the_same_with_a_vlan_tagged_lan\tnetwork namespaces for the router \
                   is unavailable (EPERM)\n\
                   cli::operator_commands\ta network namespace is unavailable (EPERM)\n\
                   \n\
                   agent::a_line_cut_short\n";
        assert_eq!(
            summary(&parse(log)),
            "3 privileged tests skipped: agent::a_line_cut_short (no reason recorded), \
             cli::operator_commands (a network namespace is unavailable (EPERM)), \
             router::the_same_with_a_vlan_tagged_lan (network namespaces for the router is \
             unavailable (EPERM))"
        );
    }
}
