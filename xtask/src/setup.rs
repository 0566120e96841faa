//! What the eBPF build needs on a fresh Debian 12 machine, checked and installed.

use std::process::Command;

use anyhow::Context as _;

use crate::run_command;

const BPF_LINKER_VERSION: &str = "0.13.0";
const PACPARSER_VERSION: &str = "1.5.3";
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn run() -> anyhow::Result<()> {
    // llvm-22-dev: bpf-linker links against LLVM 22. bpftool and ethtool: the end-to-end
    // tests read maps with bpftool, as operators do, and turn VLAN offload off. systemd:
    // systemd-analyze rates the unit's sandbox. wireguard-go and wireguard-tools: the router
    // harness's tunnel is WireGuard, in user space (this kernel has no WireGuard module).
    // nftables: the harness's NAT and black holes. prometheus: `promtool check metrics` on
    // what `/metrics` serves. dnsmasq-base and bind9-dnsutils: the resolver and `dig` of the
    // domain-learning test, and `dnsmasq --test` of the local resolver's file. unbound:
    // `unbound-checkconf` of the same file in unbound's syntax (Debian ships it in the
    // server's package; its unit is not started here).
    let missing: Vec<&str> = [
        "llvm-22-dev",
        "bpftool",
        "ethtool",
        "systemd",
        "wireguard-go",
        "wireguard-tools",
        "nftables",
        "prometheus",
        "dnsmasq-base",
        "bind9-dnsutils",
        "unbound",
    ]
    .into_iter()
    .filter(|package| {
        !installed(
            "dpkg-query",
            &["-W", "-f=${Status}", package],
            "install ok installed",
        )
    })
    .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {} with apt-get", missing.join(", "));
        run_command(Command::new("apt-get").arg("update").arg("-qq"))?;
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !installed(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
        "rust-src",
    ) {
        eprintln!("xtask: adding rust-src to the nightly toolchain (build-std=core for BPF)");
        run_command(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // The PAC file is tested in a real PAC engine: pacparser, pactester's, from PyPI.
    if !Command::new("python3")
        .args(["-c", "import pacparser"])
        .output()
        .is_ok_and(|output| output.status.success())
    {
        eprintln!("xtask: installing pacparser {PACPARSER_VERSION} with pip");
        run_command(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("pacparser=={PACPARSER_VERSION}"),
        ]))?;
    }
    // `cargo xtask package` builds the .deb with cargo-deb.
    if !installed("cargo-deb", &["--version"], CARGO_DEB_VERSION) {
        eprintln!("xtask: building cargo-deb {CARGO_DEB_VERSION}");
        run_command(crate::cargo().args([
            "install",
            "--locked",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
        ]))?;
    }
    if !installed("bpf-linker", &["--version"], BPF_LINKER_VERSION) {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![LLVM_BIN.into()];
        dirs.extend(std::env::split_paths(&path));
        let path = std::env::join_paths(dirs).context("PATH")?;
        // Without llvm-22's bin first on PATH, llvm-sys picks no llvm-config and the link
        // fails with -lLLVM.
        run_command(
            crate::cargo()
                .args([
                    "install",
                    "--locked",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("PATH", path),
        )?;
    }
    Ok(())
}

/// Whether `program args` succeeds and prints `needle`.
fn installed(program: &str, args: &[&str], needle: &str) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|output| {
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains(needle)
        })
}
