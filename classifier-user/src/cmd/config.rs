//! `xdp-breakout config check`: validates and prints the effective configuration, and
//! refuses a file it names that the agent would refuse to read.

use std::io::Write as _;

use crate::cli::{ConfigArgs, ConfigCommand, GlobalArgs};

pub fn run(global: &GlobalArgs, command: &ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check(args) = command;
    print_effective(global, args)
}

fn print_effective(global: &GlobalArgs, args: &ConfigArgs) -> anyhow::Result<()> {
    let config = args.effective(global)?;
    config.check_files()?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    let mut out = std::io::stdout().lock();
    if global.json {
        serde_json::to_writer_pretty(&mut out, &config)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", toml::to_string_pretty(&config)?)?;
    }
    Ok(())
}
