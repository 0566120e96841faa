//! `xdp-breakout sync [--feed-file FILE | --feed-url URL] [--dry-run] [--force]`: one refresh
//! of the pinned maps through the agent's gate (validation, shrink limit, diff apply, record).
//!
//! JSON (stable) of `--dry-run`: `{"version", "source", "added": [PREFIX], "changed":
//! [PREFIX], "removed": [PREFIX], "unchanged": N, "refused": null or REASON}`.

use std::{collections::BTreeSet, io::Write as _};

use anyhow::Context as _;
use serde_json::json;

use crate::{
    agent::{Agent, Refreshed},
    cli::{GlobalArgs, SyncArgs},
    compile::{Compiled, key_net_v4, key_net_v6},
    datapath::Maps,
    state::State,
};

/// The version recorded for a feed file: unknown, so that the agent fetches the service's.
const FILE_VERSION: &str = "unknown";

pub fn run(global: &GlobalArgs, args: &SyncArgs) -> anyhow::Result<()> {
    let config = args.config.effective(global)?;
    let feed_file = match &args.feed_file {
        Some(path) => Some((
            std::fs::read(path).with_context(|| format!("reading feed {}", path.display()))?,
            path.display().to_string(),
        )),
        None => None,
    };
    let maps = Maps::from_pins(&config.pin_dir)?;
    let state = State::open(&config.state_dir)?;
    let pin_dir = config.pin_dir.clone();
    let mut agent = Agent::new(config, maps, state)?.locking(&pin_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        let (body, version, source) = if let Some((body, path)) = feed_file {
            (body, FILE_VERSION.to_owned(), path)
        } else {
            let (version, fetched) = runtime.block_on(agent.fetch())?;
            (fetched.body, version, fetched.url)
        };
        let target = agent.compile(&body, &version, &source)?;
        let installed = agent.maps().installed()?;
        let refused = (!args.force)
            .then(|| {
                agent
                    .check_change(&installed, &target, &version, &source)
                    .err()
            })
            .flatten()
            .map(|error| error.to_string());
        let diff = diff(&installed, &target);
        if global.json {
            serde_json::to_writer_pretty(
                &mut out,
                &json!({
                    "version": version,
                    "source": source,
                    "added": diff.added,
                    "changed": diff.changed,
                    "removed": diff.removed,
                    "unchanged": diff.unchanged,
                    "refused": refused,
                }),
            )?;
            writeln!(out)?;
        } else {
            for (sign, list) in [
                ("+", &diff.added),
                ("~", &diff.changed),
                ("-", &diff.removed),
            ] {
                for prefix in list {
                    writeln!(out, "{sign} {prefix}")?;
                }
            }
            writeln!(
                out,
                "dry run, nothing changed: feed {version} from {source} would add {}, change {}, remove {} and keep {} prefixes",
                diff.added.len(),
                diff.changed.len(),
                diff.removed.len(),
                diff.unchanged
            )?;
            if let Some(refused) = refused {
                writeln!(out, "it would be refused: {refused}")?;
            }
        }
        return Ok(());
    }
    match feed_file {
        Some((body, path)) => {
            let report = agent.install(&body, FILE_VERSION, &path, args.force)?;
            writeln!(
                out,
                "applied {path}: {} added, {} changed, {} removed, {} unchanged",
                report.added, report.changed, report.removed, report.unchanged
            )?;
        }
        None => match runtime.block_on(agent.refresh(args.force))? {
            Refreshed::Unchanged { version } => writeln!(
                out,
                "version {version} is already applied (--force applies it again)"
            )?,
            Refreshed::Applied { version, report } => writeln!(
                out,
                "applied feed {version}: {} added, {} changed, {} removed, {} unchanged",
                report.added, report.changed, report.removed, report.unchanged
            )?,
        },
    }
    Ok(())
}

struct Diff {
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
    unchanged: usize,
}

fn diff(installed: &Compiled, target: &Compiled) -> Diff {
    let mut diff = Diff {
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
        unchanged: 0,
    };
    let v4: BTreeSet<_> = installed.v4.keys().chain(target.v4.keys()).collect();
    for key in v4 {
        classify(
            &mut diff,
            key_net_v4(key).to_string(),
            installed.v4.get(key),
            target.v4.get(key),
        );
    }
    let v6: BTreeSet<_> = installed.v6.keys().chain(target.v6.keys()).collect();
    for key in v6 {
        classify(
            &mut diff,
            key_net_v6(key).to_string(),
            installed.v6.get(key),
            target.v6.get(key),
        );
    }
    diff
}

fn classify<T: PartialEq>(diff: &mut Diff, prefix: String, before: Option<&T>, after: Option<&T>) {
    match (before, after) {
        (None, Some(_)) => diff.added.push(prefix),
        (Some(_), None) => diff.removed.push(prefix),
        (Some(a), Some(b)) if a != b => diff.changed.push(prefix),
        _ => diff.unchanged += 1,
    }
}
