//! Support for xdp-breakout's privileged tests: packet building, loading the programs seeded
//! with the real feed, throwaway network namespaces, control of the real daemon, and a branch
//! router built of namespaces.
//!
//! Under `CI=true` a test that cannot get BPF or a network namespace fails; elsewhere it skips
//! and [`skips`] records it where `cargo test` and `cargo xtask test` show it.

pub mod daemon;
pub mod dns;
pub mod http;
pub mod netns;
pub mod output;
pub mod packet;
pub mod quality;
pub mod router;
pub mod skips;

use std::net::IpAddr;

use classifier_common::{Config, Counter};
use classifier_user::{
    compile::compile,
    datapath::{DEFAULT_POLICY, Datapath, MapSizes, Maps},
    feed::Feed,
};

/// bench-ebpf: baselines, the traffic generator and the VLAN tagging programs.
pub static HARNESS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-progs"));

/// The 2026043000 Worldwide feed.
pub const FEED_2026043000: &[u8] =
    include_bytes!("../fixtures/m365-worldwide-endpoints-2026043000.json");
/// The 2026033100 Worldwide feed.
pub const FEED_2026033100: &[u8] =
    include_bytes!("../fixtures/m365-worldwide-endpoints-2026033100.json");

/// Each scenario is a function of the attach mode, run as two tests: `<scenario>::xdp` and
/// `<scenario>::tc` (`--mode tc`), so that none is written, or added, for one mode only.
#[macro_export]
macro_rules! in_both_modes {
    ($scenario:ident) => {
        mod $scenario {
            use $crate::router::Mode;

            #[test]
            fn xdp() {
                super::$scenario(Mode::Xdp);
            }

            #[test]
            fn tc() {
                super::$scenario(Mode::Tc);
            }
        }
    };
}

/// True when running in CI, where a privileged test must not skip.
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Reports that a privileged facility is missing: fails in CI; elsewhere records the running
/// test as skipped (see [`skips`]) and returns `None`, for the test to return at once.
///
/// # Panics
///
/// Under `CI=true`.
pub fn unavailable(what: &str, error: &dyn std::fmt::Display) -> Option<std::convert::Infallible> {
    assert!(!in_ci(), "{what} is unavailable under CI=true: {error}");
    // A command's error ends with its stderr's line break.
    let error = error.to_string();
    skips::record(&format!(
        "{what} is unavailable ({}); run as root with CAP_BPF and CAP_NET_ADMIN",
        error.trim_end()
    ));
    None
}

/// The programs loaded with private maps, the maps sized at load as `sizes` says; `None`
/// (skip) when BPF is unavailable outside CI.
///
/// # Panics
///
/// When BPF is unavailable under `CI=true`.
#[must_use]
pub fn load_private(sizes: &MapSizes) -> Option<Datapath> {
    match Datapath::load_private_sized(classifier_user::EBPF_OBJECT, sizes) {
        Ok(datapath) => Some(datapath),
        Err(error) => {
            let chain = anyhow::Error::from(error);
            unavailable("loading BPF programs", &format!("{chain:#}"))?;
            unreachable!()
        }
    }
}

/// The programs loaded with private maps seeded from `feed`, the default policy and `config`;
/// `None` (skip) when BPF is unavailable outside CI.
///
/// # Panics
///
/// When the feed does not compile, or BPF is unavailable under `CI=true`.
#[must_use]
pub fn load_seeded(feed: &[u8], config: &Config) -> Option<(Datapath, Maps)> {
    let mut datapath = load_private(&MapSizes::default())?;
    let mut maps = datapath.maps().expect("maps of a loaded object");
    let compiled = compile(&Feed::parse(feed).expect("fixture parses")).expect("fixture compiles");
    maps.apply(&compiled).expect("seeding the tries");
    maps.set_policy(DEFAULT_POLICY).expect("policy");
    maps.set_config(config).expect("config");
    Some((datapath, maps))
}

/// Counter deltas between two snapshots of [`Maps::stats`].
///
/// # Panics
///
/// When the snapshots have different lengths: counters missing from one side would otherwise
/// be left out of the comparison, and a test would pass on an empty snapshot.
#[must_use]
pub fn delta(before: &[Counter], after: &[Counter]) -> Vec<(usize, Counter)> {
    assert_eq!(
        before.len(),
        after.len(),
        "counter snapshots of different lengths (before, after)"
    );
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| b != a)
        .map(|(index, (b, a))| {
            (
                index,
                Counter {
                    packets: a.packets - b.packets,
                    bytes: a.bytes - b.bytes,
                },
            )
        })
        .collect()
}

/// A current-thread tokio runtime with every driver on, for a `#[test]` to block on the
/// agent's and the probes' futures.
///
/// # Panics
///
/// When the runtime cannot be built.
#[must_use]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
}

/// Parses an address literal in a test table.
///
/// # Panics
///
/// On a typo in the table.
#[must_use]
pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("address literal")
}

/// Kills a helper process when the test ends, however it ends.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pin directory of its own under `/sys/fs/bpf`, removed with everything in it on drop
/// (which also releases any link pinned there).
pub struct PinDir {
    pub path: std::path::PathBuf,
}

impl PinDir {
    /// # Panics
    ///
    /// When bpffs cannot be mounted.
    #[must_use]
    pub fn new(what: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        classifier_user::datapath::ensure_bpffs().expect("bpffs");
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::path::PathBuf::from(format!("/sys/fs/bpf/xbt-{what}-{}-{n}", std::process::id()));
        Self { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The `xdp-breakout` binary of this build (`cargo xtask test` builds it first).
///
/// # Panics
///
/// When it has not been built.
#[must_use]
pub fn xdp_breakout() -> std::path::PathBuf {
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/xdp-breakout
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().expect("target dir");
    let bin = [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|dir| dir.join("xdp-breakout"))
        .find(|bin| bin.exists())
        .unwrap_or_else(|| dir.join("xdp-breakout"));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p classifier-user` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A directory of a test's own under the temporary directory (named for `what` and this
/// process), removed on drop; not created, so that code under test can create it as it
/// would (0700, ...).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    #[must_use]
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdp-breakout-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Gives `path` to `uid` (group unchanged), as another user's file would be; `None` (skip)
/// when this process may not (chown needs root) outside CI.
///
/// # Panics
///
/// When chown fails under `CI=true`.
#[must_use]
pub fn chown(path: &std::path::Path, uid: u32) -> Option<()> {
    match std::os::unix::fs::chown(path, Some(uid), None) {
        Ok(()) => Some(()),
        Err(error) => {
            unavailable(&format!("chown {}", path.display()), &error)?;
            unreachable!()
        }
    }
}

/// Sets `path`'s permission bits to exactly `mode` (the umask plays no part).
///
/// # Panics
///
/// When chmod fails.
pub fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|error| panic!("chmod {mode:o} {}: {error}", path.display()));
}

#[cfg(test)]
mod tests {
    use classifier_common::Counter;

    use super::delta;

    const ONE: Counter = Counter {
        packets: 1,
        bytes: 60,
    };
    const TWO: Counter = Counter {
        packets: 2,
        bytes: 120,
    };

    #[test]
    fn delta_lists_the_counters_that_moved() {
        assert_eq!(
            delta(&[ONE, ONE, TWO], &[ONE, TWO, TWO]),
            [(1, ONE)],
            "only index 1 moved, by one packet of 60 bytes"
        );
    }

    #[test]
    #[should_panic(expected = "counter snapshots of different lengths")]
    fn delta_refuses_an_empty_snapshot() {
        let _ = delta(&[ONE, TWO], &[]);
    }

    #[test]
    #[should_panic(expected = "counter snapshots of different lengths")]
    fn delta_refuses_a_shorter_snapshot() {
        let _ = delta(&[ONE], &[TWO, TWO]);
    }
}
