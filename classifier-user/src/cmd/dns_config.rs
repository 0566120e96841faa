//! `xdp-breakout dns-config [--format dnsmasq|unbound] [--config FILE]`: the forward-zone file
//! the agent keeps at `[dns] local-config` (see [`crate::dnsconfig`]), on stdout, from every
//! Microsoft 365 source's last good file in the state directory (the embedded snapshot when
//! the `m365` source has none), the `[[domains]]` rules and `[policy] direct`: the zones as
//! while the direct uplink is up. No JSON form: the output is a file for the resolver.

use std::io::Write as _;

use anyhow::Context as _;

use crate::{
    cli::{DnsConfigArgs, GlobalArgs},
    dnsconfig,
    feed::{Category, Feed, NamedSet},
    sources::Kind,
    state::State,
};

pub fn run(global: &GlobalArgs, args: &DnsConfigArgs) -> anyhow::Result<()> {
    let config = args.config.effective(global)?;
    let dns = &config.dns;
    if dns.local_resolvers.is_empty() {
        anyhow::bail!(
            "no local resolvers: set [dns] local-resolvers (the resolvers reached through the \
             direct uplink, e.g. [\"192.0.2.53\"]) in the configuration file"
        );
    }
    let state = State::open_existing(&config.state_dir).ok();
    let mut feeds: Vec<(String, Vec<NamedSet>)> = Vec::new();
    for source in config.all_sources() {
        if source.kind != Kind::M365 {
            continue;
        }
        let Some((body, about)) = super::installed_feed(state.as_ref(), &source.name) else {
            continue;
        };
        let feed = Feed::parse(&body).with_context(|| format!("the feed of {about}"))?;
        feeds.push((about, feed.named));
    }
    let sets: Vec<&[NamedSet]> = feeds.iter().map(|(_, sets)| sets.as_slice()).collect();
    let direct: Vec<Category> = config.policy.direct.iter().map(|name| name.0).collect();
    let zones = dnsconfig::zones(&dnsconfig::names(&sets, &config.domains, &direct));
    let mut about = dnsconfig::About {
        inputs: feeds.into_iter().map(|(about, _)| about).collect(),
        uplink_down: None,
    };
    about
        .inputs
        .extend(dnsconfig::domains_about(&config.domains));
    let text = dnsconfig::render(
        args.format.unwrap_or(dns.local_format),
        &zones,
        &dns.local_resolvers,
        &about,
    );
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
