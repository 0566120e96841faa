//! Compiles bench-ebpf (baselines, traffic generator, VLAN tagging: the programs the tests and
//! benchmarks run around the classifier) for the BPF target, as classifier-user's build script
//! does for the classifier; src/lib.rs embeds the object as `HARNESS_OBJECT`.
use std::{env, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir.join("../bench-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path to bench-ebpf")?;
    let package = Package {
        name: "bench-ebpf",
        root_dir,
        ..Package::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
