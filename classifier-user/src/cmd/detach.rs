//! `xdp-breakout detach IFACE...`

use std::io::Write as _;

use crate::{
    cli::{DetachArgs, GlobalArgs},
    datapath,
};

pub fn run(global: &GlobalArgs, args: &DetachArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for iface in &args.ifaces {
        datapath::detach(&global.pin_dir(), iface)?;
        writeln!(out, "detached from {iface}")?;
    }
    Ok(())
}
