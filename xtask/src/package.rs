//! `cargo xtask package`: the Debian package, built with cargo-deb from the release binary,
//! the systemd unit (with `/usr/bin` paths), the default configuration as a conffile, the
//! man page, shell completions and the Grafana dashboard.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{cargo, run_command};

/// Builds the package; returns the path of the `.deb`.
pub fn run() -> anyhow::Result<PathBuf> {
    run_command(cargo().args([
        "build",
        "--release",
        "--package",
        "classifier-user",
        "--bins",
    ]))?;
    let target = target_dir()?;
    let release = target.join("release");
    let binary = release.join("xdp-breakout");
    let assets = release.join("package");
    fs::create_dir_all(&assets).with_context(|| format!("creating {}", assets.display()))?;
    // The unit as installed: the binary is /usr/bin/xdp-breakout in the package.
    let unit =
        fs::read_to_string("dist/xdp-breakout.service").context("dist/xdp-breakout.service")?;
    fs::write(
        assets.join("xdp-breakout.service"),
        unit.replace("/usr/local/bin/xdp-breakout", "/usr/bin/xdp-breakout"),
    )?;
    let man = output(&binary, &["man"])?;
    fs::write(assets.join("xdp-breakout.1.gz"), gzip(&man)?)?;
    for (shell, name) in [
        ("bash", "xdp-breakout.bash"),
        ("zsh", "_xdp-breakout"),
        ("fish", "xdp-breakout.fish"),
    ] {
        fs::write(assets.join(name), output(&binary, &["completions", shell])?)?;
    }
    let out = target.join("debian");
    let deb = Command::new("cargo-deb")
        .args(["--package", "classifier-user", "--no-build", "--output"])
        .arg(&out)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo-deb (cargo xtask setup installs it)")?;
    if !deb.status.success() {
        bail!("cargo-deb failed");
    }
    let path = PathBuf::from(String::from_utf8_lossy(&deb.stdout).trim());
    if !path.exists() {
        bail!("cargo-deb printed {}, which does not exist", path.display());
    }
    eprintln!("xtask: built {}", path.display());
    Ok(path)
}

fn target_dir() -> anyhow::Result<PathBuf> {
    let metadata = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cargo metadata")?;
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    Ok(PathBuf::from(
        metadata["target_directory"]
            .as_str()
            .context("cargo metadata: no target_directory")?,
    ))
}

fn output(binary: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", binary.display(), args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{} {}: {}",
            binary.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// `gzip -9n`: no name or time in the header, so the package is reproducible.
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("gzip")?;
    child.stdin.take().context("gzip stdin")?.write_all(data)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("gzip failed");
    }
    Ok(output.stdout)
}
