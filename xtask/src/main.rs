//! `cargo xtask`: set up a fresh machine, run every test, run the demo.

mod bench;
mod demo;
mod package;
mod setup;
mod skips;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs: llvm-22-dev, nightly rust-src, bpf-linker 0.13.0.
    Setup,
    /// Set up, build, then run every test: host unit tests and the privileged ones (BPF,
    /// network namespaces). Needs root.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and build the Debian package (target/debian/xdp-breakout_*.deb) with cargo-deb.
    Package,
    /// Set up, build, and show xdp-breakout on a branch router built in four throwaway
    /// network namespaces, with real traffic. Needs root; touches no host interface.
    Demo,
    /// Set up, build in release mode, and run the benchmarks: cost per packet, throughput over
    /// veth against nftables, map refresh. Needs root; installs nftables when missing.
    Bench {
        /// About a minute instead of about five.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Test { args } => setup::run().and_then(|()| test(&args)),
        Task::Package => setup::run().and_then(|()| package::run().map(drop)),
        Task::Demo => setup::run().and_then(|()| demo::run()),
        Task::Bench { quick } => setup::run().and_then(|()| bench::run(quick)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command`, failing with its rendering when it fails.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("spawning {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

#[must_use]
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// True when running in CI, where no privileged test may skip (as `tests::in_ci`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Every package, the privileged `tests` crate included. The binary is built first: the attach
/// tests run the real `xdp-breakout`. Ends with the privileged tests that skipped (libtest
/// counts them as passed), also when a test failed.
fn test(args: &[String]) -> anyhow::Result<()> {
    let log = skips::log_path(&mut cargo())?;
    skips::clear(&log)?;
    run_command(cargo().args(["build", "--package", "classifier-user", "--bins"]))?;
    // The package test installs this .deb.
    let deb = package::run()?;
    let tested = run_command(
        cargo()
            .args([
                "test",
                "--package",
                "classifier-common",
                "--package",
                "classifier-user",
                "--package",
                "harness-common",
            ])
            .args(["--package", "xtask", "--package", "tests", "--"])
            .args(args)
            .env(skips::LOG_ENV, &log)
            .env("XDP_BREAKOUT_DEB", &deb),
    );
    let recorded = skips::read(&log)?;
    let skipped = skips::parse(&recorded);
    eprintln!("xtask: {}", skips::summary(&skipped));
    tested?;
    // The tests fail instead of skipping under CI=true; this catches a skip that forgets to.
    if in_ci() && !skipped.is_empty() {
        bail!("CI=true, and privileged tests skipped");
    }
    Ok(())
}
