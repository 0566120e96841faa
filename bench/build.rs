//! Compiles bench-ebpf (the baselines and the traffic generator) for the BPF target, as
//! classifier-user's build script does for the classifier; src/progs.rs embeds the object.
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
