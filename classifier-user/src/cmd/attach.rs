//! `xdp-breakout attach IFACE...`

use std::io::Write as _;

use anyhow::Context as _;
use classifier_common::{Config, flags};

use crate::{
    EBPF_OBJECT, EMBEDDED_FEED, EMBEDDED_FEED_VERSION,
    cli::{AttachArgs, GlobalArgs},
    compile::compile,
    datapath::{DEFAULT_POLICY, Datapath, PinLock},
    feed::Feed,
    gate::{self, PrefixLimits},
};

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
    let mut datapath = Datapath::load_pinned(EBPF_OBJECT, &pin_dir)
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
    let mut out = std::io::stdout().lock();
    if let Some((feed, source)) = source {
        let compiled = compile(&feed).with_context(|| format!("compiling {source}"))?;
        let report = maps.apply(&compiled)?;
        writeln!(out, "installed {source}: {}", report.describe(&compiled))?;
    } else {
        writeln!(out, "kept the {} installed prefixes", installed.len())?;
    }

    let mode = (*mode).into();
    for iface in ifaces {
        datapath.attach(iface, mode)?;
        writeln!(
            out,
            "attached to {iface}: mark {:#x}/{:#x}{}",
            config.mark,
            config.mark_mask,
            if config.flags & flags::STRICT_PORTS != 0 {
                ", strict ports"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}
