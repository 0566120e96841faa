//! `xdp-breakout pac [--type 1|2] [--proxy "PROXY host:port"] [--feed-file FILE]`: the PAC
//! file of the installed feed, on stdout (see [`crate::pac`]). No JSON form: the output is a
//! file for browsers.

use std::io::Write as _;

use anyhow::Context as _;

use crate::cli::{GlobalArgs, PacArgs};

pub fn run(global: &GlobalArgs, args: &PacArgs) -> anyhow::Result<()> {
    let config = args.config.effective(global)?;
    let feed = match &args.feed_file {
        Some(path) => Some((
            std::fs::read(path).with_context(|| format!("reading feed {}", path.display()))?,
            format!("feed file {}", path.display()),
        )),
        None => None,
    };
    let pac = crate::pac::build(
        &config,
        feed.as_ref()
            .map(|(body, from)| (body.as_slice(), from.clone())),
        args.r#type,
        args.proxy.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    out.write_all(pac.as_bytes())?;
    out.flush()?;
    Ok(())
}
