//! Compiles classifier-ebpf for the BPF target (nightly, build-std); src/lib.rs embeds the
//! object. `cargo xtask setup` installs what this needs.
use std::{env, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir.join("../classifier-ebpf");
    let root_dir = root_dir
        .to_str()
        .context("non-UTF-8 path to classifier-ebpf")?;
    let package = Package {
        name: "classifier-ebpf",
        root_dir,
        ..Package::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
