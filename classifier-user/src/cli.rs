//! Command-line arguments of `xdp-breakout`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use classifier_common::PIN_DIR;

/// Split-tunnel classifier: sends Microsoft 365 traffic out of the direct uplink.
///
/// An XDP program on the LAN interface matches each packet's destination against the
/// Microsoft 365 endpoint feed; a tc program marks the packets that go direct, and policy
/// routing (`ip rule fwmark`) sends them out of the direct uplink. Everything else follows
/// the normal route (the tunnel). No packet is ever dropped.
#[derive(Debug, Parser)]
#[command(name = "xdp-breakout", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Directory on bpffs that holds the maps and links.
    #[arg(long, global = true, value_name = "DIR", default_value = PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs and attach them to LAN interfaces (or update them in place).
    Attach(AttachArgs),
    /// Detach the programs from interfaces.
    Detach(DetachArgs),
    /// Show the counters.
    Stats(StatsArgs),
}

/// How to attach XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
    /// In the driver (fastest; fails on drivers without XDP support).
    Native,
    /// Generic XDP in the network stack (works on any interface).
    Skb,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// LAN-facing interfaces.
    #[arg(required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t)]
    pub mode: Mode,
    /// Endpoints feed (JSON of `GET /endpoints/{instance}`) to install; without it, empty
    /// tries are seeded from the snapshot built into the binary and installed ones are kept.
    #[arg(long, value_name = "FILE")]
    pub feed_file: Option<PathBuf>,
    /// Mark for direct packets as VALUE/MASK; only the bits in MASK are changed.
    #[arg(long, value_name = "VALUE/MASK", value_parser = parse_mark)]
    pub mark: Option<(u32, u32)>,
    /// Send packets whose port matches no rule of their prefix to the tunnel.
    #[arg(long)]
    pub strict_ports: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interfaces to detach from.
    #[arg(required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {}

/// `0x365/0xffff`, `869/65535`, or `0x365` (mask 0xffffffff).
pub fn parse_mark(text: &str) -> Result<(u32, u32), String> {
    let number = |s: &str| {
        let s = s.trim();
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .map_err(|_| format!("{s:?} is not a 32-bit number"))
    };
    let (value, mask) = match text.split_once('/') {
        Some((value, mask)) => (number(value)?, number(mask)?),
        None => (number(text)?, u32::MAX),
    };
    if mask == 0 {
        return Err("the mask is 0: no bit of the mark would be set".to_owned());
    }
    if value & !mask != 0 {
        return Err(format!("value {value:#x} has bits outside mask {mask:#x}"));
    }
    Ok((value, mask))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn marks_parse_with_and_without_mask() {
        assert_eq!(parse_mark("0x365/0xffff"), Ok((0x365, 0xffff)));
        assert_eq!(parse_mark("869/65535"), Ok((0x365, 0xffff)));
        assert_eq!(parse_mark("0x10"), Ok((0x10, u32::MAX)));
        assert!(parse_mark("0x365/0").unwrap_err().contains("mask is 0"));
        assert!(
            parse_mark("0x1365/0xfff")
                .unwrap_err()
                .contains("outside mask")
        );
        assert!(
            parse_mark("lots")
                .unwrap_err()
                .contains("not a 32-bit number")
        );
    }
}
