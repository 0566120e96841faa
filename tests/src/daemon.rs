//! Daemon control: the real `xdp-breakout run` started in a network namespace, signalled and
//! waited for, and watched through its log and its status file.

use std::{
    ffi::OsStr,
    fs, io,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use classifier_user::state::{Status, read_status};

use crate::{netns::Netns, xdp_breakout};

/// How long any wait of the harness lasts before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Where a daemon runs and what it follows.
pub struct Setup<'a> {
    /// The namespace its interface and its feed server are in.
    pub netns: &'a Netns,
    pub pin_dir: &'a Path,
    pub state_dir: &'a Path,
    /// The LAN interface it attaches to.
    pub iface: &'a str,
    /// The test's feed server, plain HTTP on the namespace's loopback.
    pub feed_url: &'a str,
}

/// A running `xdp-breakout run`, killed on drop (also when a test fails).
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `xdp-breakout --pin-dir DIR --state-dir DIR -v run --iface IFACE --feed-url URL
    /// --allow-http ARGS` in the setup's namespace, with stderr (its log) in the file `log`.
    ///
    /// # Panics
    ///
    /// When the log cannot be created or the binary cannot be started.
    pub fn start(
        setup: &Setup<'_>,
        args: impl IntoIterator<Item: AsRef<OsStr>>,
        log: PathBuf,
    ) -> Self {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|arg| arg.as_ref().to_owned())
            .collect();
        // Without health flags of its own, a test checks nothing: an uplink without targets
        // would probe the feed's front doors, which no test upstream answers.
        let probes = args
            .iter()
            .any(|arg| arg.to_string_lossy().starts_with("--health"));
        let quiet: &[&str] = if probes {
            &[]
        } else {
            &["--health-failover", "none"]
        };
        let child = setup
            .netns
            .command(xdp_breakout().to_str().expect("UTF-8 path"))
            .arg("--pin-dir")
            .arg(setup.pin_dir)
            .arg("--state-dir")
            .arg(setup.state_dir)
            .args([
                "-v",
                "run",
                "--iface",
                setup.iface,
                "--feed-url",
                setup.feed_url,
                "--allow-http",
            ])
            .args(quiet)
            .args(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("daemon log file"))
            .spawn()
            .expect("xdp-breakout run");
        Self { child, log }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`; returns at once.
    ///
    /// # Panics
    ///
    /// When kill(2) fails.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child, which is not reaped before `self` is dropped or
        // waited for, so the pid cannot name another process.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill {pid}: {}", io::Error::last_os_error());
    }

    /// Waits for the daemon to exit.
    ///
    /// # Panics
    ///
    /// When waiting fails.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("waiting for xdp-breakout run")
    }

    /// Waits for a daemon that should exit by itself (a refusal at start): a daemon that
    /// keeps running fails the test instead of hanging it.
    ///
    /// # Panics
    ///
    /// After 30 s, or when waiting fails.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for xdp-breakout run") {
                return status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for the daemon to exit; {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    #[must_use]
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Waits until the log holds `needle`.
    ///
    /// # Panics
    ///
    /// After 30 s.
    pub fn wait_log(&self, needle: &str) {
        wait_log(&self.log, needle);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Also after `wait`: std keeps the exit status and sends no signal to a reaped child.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log at `path`, empty until the daemon has written to it.
#[must_use]
pub fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log at `path` holds `needle`: for the log of a daemon that may have exited.
///
/// # Panics
///
/// After 30 s.
pub fn wait_log(path: &Path, needle: &str) {
    wait_for(
        &format!("log line {needle:?}"),
        || read_log(path).contains(needle),
        || read_log(path),
    );
}

/// Polls `done` every 50 ms until it holds.
///
/// # Panics
///
/// After 30 s, naming `what` and showing `context` (a log, usually).
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < PATIENCE,
            "waited {PATIENCE:?} for {what}; {}",
            context()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The status file of the agent using `state_dir`, as the agent wrote it last.
///
/// # Panics
///
/// When it cannot be read (root reads its own test's directory).
#[must_use]
pub fn status(state_dir: &Path) -> Option<Status> {
    read_status(state_dir).expect("reading the agent's status")
}

/// The feed version (the `m365` source's) the agent using `state_dir` says it applied.
#[must_use]
pub fn applied_version(state_dir: &Path) -> Option<String> {
    status(state_dir)?
        .source(classifier_user::sources::M365)?
        .version
        .clone()
        .filter(|_| m365_applied(state_dir))
}

/// Whether the agent using `state_dir` says the maps hold a file of the `m365` source.
#[must_use]
pub fn m365_applied(state_dir: &Path) -> bool {
    status(state_dir)
        .and_then(|status| status.source(classifier_user::sources::M365).cloned())
        .is_some_and(|m365| m365.applied_at.is_some())
}
