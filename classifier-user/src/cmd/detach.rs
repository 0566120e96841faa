//! `xdp-breakout detach IFACE...`

use std::io::Write as _;

use crate::{
    cli::{DetachArgs, GlobalArgs},
    datapath,
};

pub fn run(global: &GlobalArgs, args: &DetachArgs) -> anyhow::Result<()> {
    let pin_dir = global.pin_dir();
    // A missing directory has nothing to detach (and gets no lock, so it is not created).
    let _lock = pin_dir
        .exists()
        .then(|| datapath::PinLock::acquire(&pin_dir))
        .transpose()?;
    let mut out = std::io::stdout().lock();
    for iface in &args.ifaces {
        datapath::detach(&pin_dir, iface)?;
        writeln!(out, "detached from {iface}")?;
    }
    Ok(())
}
