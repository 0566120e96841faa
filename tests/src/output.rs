//! Checks of a finished command: it succeeded, or it failed with a given exit code and a
//! message on stderr.

use std::process::Output;

/// Its stdout.
///
/// # Panics
///
/// When it failed; the message holds its stderr and stdout.
#[expect(
    clippy::must_use_candidate,
    reason = "a check first: callers that only assert success ignore the output"
)]
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Checks that it exited with `code` and said `needle` on stderr.
///
/// # Panics
///
/// Unless it did.
pub fn fails(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
}
