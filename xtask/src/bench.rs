//! `cargo xtask bench [--quick]`: builds the benchmarks in release mode and runs them (root:
//! BPF, network namespaces). The figures go to stdout, `target/bench/report.json` and
//! `target/bench/cost-per-packet.svg`.

use std::process::Command;

use anyhow::Context as _;

use crate::{cargo, run_command};

pub fn run(quick: bool) -> anyhow::Result<()> {
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!(
            "xtask: installing nftables (the benchmarks compare xdp-breakout with an nft set)"
        );
        run_command(Command::new("apt-get").arg("update").arg("-qq"))?;
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "nftables"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    run_command(cargo().args(["build", "--release", "--package", "bench"]))?;
    let root = std::env::current_dir()?;
    let bin = root.join("target/release/bench");
    let out = root.join("target/bench");
    let mut bench = Command::new(&bin);
    bench.arg("--out").arg(&out);
    if quick {
        bench.arg("--quick");
    }
    run_command(&mut bench).with_context(|| format!("running {}", bin.display()))
}
