//! One module per verb; each has `run(global, args)`.

pub mod attach;
pub mod config;
pub mod detach;
pub mod run;
pub mod stats;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    match command {
        Command::Run(args) => run::run(&global, &args),
        Command::Attach(args) => attach::run(&global, &args),
        Command::Config(command) => config::run(&global, &command),
        Command::Detach(args) => detach::run(&global, &args),
        Command::Stats(args) => stats::run(&global, &args),
    }
}
