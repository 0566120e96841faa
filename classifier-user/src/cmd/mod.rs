//! One module per verb; each has `run(global, args)`.

pub mod attach;
pub mod classify;
pub mod config;
pub mod detach;
pub mod lookup;
pub mod prefixes;
pub mod run;
pub mod stats;
pub mod status;
pub mod sync;

use std::io::Write as _;

use clap::CommandFactory as _;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    match command {
        Command::Run(args) => run::run(&global, &args),
        Command::Attach(args) => attach::run(&global, &args),
        Command::Detach(args) => detach::run(&global, &args),
        Command::Status(args) => status::run(&global, &args),
        Command::Stats(args) => stats::run(&global, &args),
        Command::Lookup(args) => lookup::run(&global, &args),
        Command::Classify(args) => classify::run(&global, &args),
        Command::Prefixes(args) => prefixes::run(&global, &args),
        Command::Sync(args) => sync::run(&global, &args),
        Command::Config(command) => config::run(&global, &command),
        Command::Completions(args) => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(args.shell, &mut Cli::command(), "xdp-breakout", &mut out);
            out.flush()?;
            Ok(())
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            Ok(())
        }
    }
}

/// Opens the pinned maps with a hint when there are none.
pub fn pinned_maps(global: &crate::cli::GlobalArgs) -> anyhow::Result<crate::datapath::Maps> {
    Ok(crate::datapath::Maps::from_pins(&global.pin_dir())?)
}
