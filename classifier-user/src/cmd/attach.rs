//! `xdp-breakout attach IFACE...`
//!
//! JSON (stable): one document, [`Report`], once every interface is attached: `{"prefixes":
//! {"installed" (the feed this command installed, or null when it kept the installed
//! prefixes), "ipv4", "ipv6", "added", "changed", "removed", "unchanged"}, "interfaces":
//! [{"name", "mark", "strict_ports"}]}`.

use anyhow::Context as _;
use classifier_common::{Config, flags};
use serde::Serialize;

use crate::{
    EBPF_OBJECT, EMBEDDED_FEED, EMBEDDED_FEED_VERSION,
    cli::{AttachArgs, GlobalArgs},
    compile::{Compiled, compile},
    datapath::{DEFAULT_POLICY, Datapath, MapSizes, Maps, PinLock},
    feed::Feed,
    gate::{self, PrefixLimits},
};

use super::Changes;

/// What `attach` did.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What the tries hold now.
    pub prefixes: Prefixes,
    /// The interfaces attached, in the order given.
    pub interfaces: Vec<Attached>,
}

/// The tries after `attach`.
#[derive(Debug, Serialize)]
pub struct Prefixes {
    /// The feed this command installed: the `--feed-file` path, or `embedded snapshot
    /// VERSION` for empty tries; null when it kept the prefixes already installed.
    pub installed: Option<String>,
    /// IPv4 prefixes the tries hold.
    pub ipv4: usize,
    /// IPv6 prefixes the tries hold.
    pub ipv6: usize,
    /// What installing the feed changed, flattened into the object: `added`, `changed`,
    /// `removed`, and `unchanged` (all of them when the prefixes were kept).
    #[serde(flatten)]
    pub changes: Changes,
}

/// An interface the programs are attached to.
#[derive(Debug, Serialize)]
pub struct Attached {
    /// Its name.
    pub name: String,
    /// The mark its direct packets get, `VALUE/MASK` in hex (`0x365/0xffff`).
    pub mark: String,
    /// Whether a packet whose port matches no rule of its prefix goes to the tunnel.
    pub strict_ports: bool,
}

fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

pub fn run(global: &GlobalArgs, args: &AttachArgs) -> anyhow::Result<()> {
    let AttachArgs {
        ifaces,
        mode,
        feed_file,
        mark,
        strict_ports,
    } = args;
    // Check what can be checked before touching the kernel: a typo changes nothing.
    for iface in ifaces {
        anyhow::ensure!(
            ifindex(iface).is_some(),
            "interface {iface} does not exist in this network namespace (see `ip link`)"
        );
    }
    let feed = match feed_file {
        Some(path) => {
            let body =
                std::fs::read(path).with_context(|| format!("reading feed {}", path.display()))?;
            let feed = Feed::parse(&body).with_context(|| format!("feed {}", path.display()))?;
            gate::check_feed(&feed, PrefixLimits::default())
                .with_context(|| format!("refused feed {}", path.display()))?;
            Some((feed, path.display().to_string()))
        }
        None => None,
    };
    let pin_dir = global.pin_dir();
    let _lock = PinLock::acquire(&pin_dir)?;
    let mut datapath = Datapath::load_pinned(EBPF_OBJECT, &pin_dir, &MapSizes::default())
        .with_context(|| format!("loading the programs with pins in {}", pin_dir.display()))?;
    let mut maps = datapath.maps()?;

    // A zero mask never comes from us: these maps are new.
    let mut config = maps.config()?;
    let fresh = config.mark_mask == 0;
    if fresh {
        config = Config::default();
        maps.set_policy(DEFAULT_POLICY)?;
    }
    if let Some(mark) = mark {
        (config.mark, config.mark_mask) = (mark.value, mark.mask);
    }
    if *strict_ports {
        config.flags |= flags::STRICT_PORTS;
    }
    maps.set_config(&config)?;

    let installed = maps.installed()?;
    let source = match feed {
        Some((feed, source)) => Some((feed, source)),
        None if installed.is_empty() => Some((
            Feed::parse(EMBEDDED_FEED).context("the embedded feed")?,
            format!("embedded snapshot {EMBEDDED_FEED_VERSION}"),
        )),
        None => None,
    };
    let prefixes = fill(&mut maps, &installed, source)?;
    // The text says each step as it is done; JSON is one document at the end.
    let mut out = std::io::stdout().lock();
    if !global.json {
        prefixes.write_text(&mut out)?;
    }
    let mode = (*mode).into();
    let mut interfaces = Vec::with_capacity(ifaces.len());
    for iface in ifaces {
        datapath.attach(iface, mode)?;
        let attached = Attached {
            name: iface.clone(),
            mark: super::mark(&config),
            strict_ports: config.flags & flags::STRICT_PORTS != 0,
        };
        if !global.json {
            attached.write_text(&mut out)?;
        }
        interfaces.push(attached);
    }
    if global.json {
        super::write_json(
            &mut out,
            &Report {
                prefixes,
                interfaces,
            },
        )?;
    }
    Ok(())
}

/// Installs the feed of `source` when there is one, else keeps the `installed` prefixes.
fn fill(
    maps: &mut Maps,
    installed: &Compiled,
    source: Option<(Feed, String)>,
) -> anyhow::Result<Prefixes> {
    let Some((feed, source)) = source else {
        return Ok(Prefixes {
            installed: None,
            ipv4: installed.v4.len(),
            ipv6: installed.v6.len(),
            changes: Changes {
                added: 0,
                changed: 0,
                removed: 0,
                unchanged: installed.len(),
            },
        });
    };
    let compiled = compile(&feed).with_context(|| format!("compiling {source}"))?;
    let report = maps.apply(&compiled)?;
    Ok(Prefixes {
        installed: Some(source),
        ipv4: compiled.v4.len(),
        ipv6: compiled.v6.len(),
        changes: report.into(),
    })
}

impl Prefixes {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            installed,
            ipv4,
            ipv6,
            changes:
                Changes {
                    added,
                    changed,
                    removed,
                    unchanged: _,
                },
        } = self;
        match installed {
            Some(source) => writeln!(
                out,
                "installed {source}: {ipv4} IPv4 and {ipv6} IPv6 prefixes ({added} added, {changed} changed, {removed} removed)"
            ),
            None => writeln!(out, "kept the {} installed prefixes", ipv4 + ipv6),
        }
    }
}

impl Attached {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            name,
            mark,
            strict_ports,
        } = self;
        writeln!(
            out,
            "attached to {name}: mark {mark}{}",
            if *strict_ports { ", strict ports" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn every_field_is_documented() {
        let report = Report {
            prefixes: Prefixes {
                installed: Some("embedded snapshot 2026043000".into()),
                ipv4: 34,
                ipv6: 59,
                changes: Changes {
                    added: 93,
                    changed: 0,
                    removed: 0,
                    unchanged: 0,
                },
            },
            interfaces: vec![Attached {
                name: "lan0".into(),
                mark: "0x365/0xffff".into(),
                strict_ports: true,
            }],
        };
        for doc in [
            module_doc(include_str!("attach.rs")).as_str(),
            readme_section(),
        ] {
            assert_documented_in(&report, doc);
        }
        let mut text = Vec::new();
        report.prefixes.write_text(&mut text).unwrap();
        report.interfaces[0].write_text(&mut text).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "installed embedded snapshot 2026043000: 34 IPv4 and 59 IPv6 prefixes (93 added, 0 changed, 0 removed)\n\
             attached to lan0: mark 0x365/0xffff, strict ports\n"
        );
    }
}
