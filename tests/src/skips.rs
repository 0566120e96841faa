//! Privileged tests that skip, made visible.
//!
//! A test that cannot get BPF or a network namespace outside `CI=true` returns early and
//! libtest reports it as passed. So each skip is written twice: as a `SKIPPED:` line on the
//! process's stderr, which a plain `cargo test` shows, and as a line in the skip log named by
//! [`LOG_ENV`], from which `cargo xtask test` prints its summary.

use std::{
    fs::OpenOptions,
    io::{self, Write as _},
    path::Path,
};

/// The environment variable naming the skip log; `cargo xtask test` sets it (xtask's `skips`
/// module spells the same name and reads the same format).
pub const LOG_ENV: &str = "XDP_BREAKOUT_SKIP_LOG";

/// Records that the running test skips, and why.
///
/// The stderr line goes through the `Stderr` handle, not `eprintln!`: libtest captures what
/// the print macros write (std's output capture hooks them alone), and shows it only for
/// failed tests, so `eprintln!` would hide the skip of a test that "passed".
pub fn record(reason: &str) {
    let (test, reason) = (current_test(), one_line(reason));
    let _ = io::stderr()
        .lock()
        .write_all(format!("SKIPPED: {test}: {reason}\n").as_bytes());
    if let Some(log) = std::env::var_os(LOG_ENV)
        && let Err(error) = append(Path::new(&log), &test, &reason)
    {
        // The stderr line above still tells; a lost log line only shortens the summary.
        let _ = io::stderr().lock().write_all(
            format!(
                "SKIPPED: could not write {}: {error}\n",
                Path::new(&log).display()
            )
            .as_bytes(),
        );
    }
}

/// The running test as `<test target>::<test path>`, the words `cargo test --test TARGET
/// PATH` takes to run it again.
///
/// libtest runs each test on a thread named after the test's path (also with
/// `--test-threads=1`); the target is the executable's name without the `-<hash>` cargo adds.
#[must_use]
pub fn current_test() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(Path::file_stem)
        .and_then(|stem| stem.to_str())
        .unwrap_or("an unknown test executable");
    let target = match stem.rsplit_once('-') {
        Some((target, hash)) if hash.bytes().all(|b| b.is_ascii_hexdigit()) => target,
        _ => stem,
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("an unnamed thread");
    format!("{target}::{test}")
}

/// `text` with each run of whitespace (the line breaks of a command's stderr, tabs) made one
/// space: a skip is one line on stderr and in the log.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Appends `test` and `reason` to the skip log at `log`: one line per skip, the two fields
/// apart by a tab (see [`one_line`]). One `write` per line with `O_APPEND`, so that tests
/// skipping at once on parallel threads do not interleave.
pub fn append(log: &Path, test: &str, reason: &str) -> io::Result<()> {
    let line = format!("{}\t{}\n", one_line(test), one_line(reason));
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::{append, current_test};

    #[test]
    fn names_the_running_test_by_target_and_path() {
        assert_eq!(
            current_test(),
            "tests::skips::tests::names_the_running_test_by_target_and_path"
        );
    }

    #[test]
    fn appends_one_line_per_skip_with_the_separators_flattened() {
        let log = std::env::temp_dir().join(format!("xb-skip-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        append(&log, "attach::first", "a network namespace is unavailable").unwrap();
        append(&log, "cli::second", "loading BPF programs:\n\tEPERM\n").unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(
            text,
            "attach::first\ta network namespace is unavailable\n\
             cli::second\tloading BPF programs: EPERM\n"
        );
    }
}
