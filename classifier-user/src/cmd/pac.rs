//! `xdp-breakout pac [--type 1|2] [--proxy "PROXY host:port"] [--feed-file FILE]`: the PAC
//! file of the installed feed, on stdout (see [`crate::pac`]): every Microsoft 365 source's
//! last good file in the state directory (the `m365` source's replaced by `--feed-file`, or
//! by the embedded snapshot when it has none). No JSON form: the output is a file for
//! browsers.

use std::io::Write as _;

use anyhow::Context as _;

use crate::{
    cli::{GlobalArgs, PacArgs},
    feed::{Feed, NamedSet},
    sources::{Kind, M365},
    state::State,
};

pub fn run(global: &GlobalArgs, args: &PacArgs) -> anyhow::Result<()> {
    let config = args.config.effective(global)?;
    let state = State::open_existing(&config.state_dir).ok();
    let mut feeds: Vec<(String, Vec<NamedSet>)> = Vec::new();
    for source in config.all_sources() {
        if source.kind != Kind::M365 {
            continue;
        }
        let (body, about) = match (&args.feed_file, source.name == M365) {
            (Some(path), true) => (
                std::fs::read(path).with_context(|| format!("reading feed {}", path.display()))?,
                format!("feed file {}", path.display()),
            ),
            _ => match super::installed_feed(state.as_ref(), &source.name) {
                Some(installed) => installed,
                None => continue,
            },
        };
        let feed = Feed::parse(&body).with_context(|| format!("the feed of {about}"))?;
        feeds.push((about, feed.named));
    }
    let feeds: Vec<(String, &[NamedSet])> = feeds
        .iter()
        .map(|(about, sets)| (about.clone(), sets.as_slice()))
        .collect();
    let pac = crate::pac::build(&config, &feeds, args.r#type, args.proxy.as_deref())
        .map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    out.write_all(pac.as_bytes())?;
    out.flush()?;
    Ok(())
}
