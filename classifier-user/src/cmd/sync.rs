//! `xdp-breakout sync [--source NAME] [--feed-file FILE | --feed-url URL] [--dry-run]
//! [--force]`: one refresh of one source of the pinned maps (`m365`, `[feed]`, unless
//! `--source`), through the agent's one path: fetch, parse, gate, union, diff apply, record.
//! The other sources stay as they are. `--dry-run` stops after the gate's verdict, which is
//! the one a real apply reaches.
//!
//! JSON (stable): one document. [`Synced`]: `{"name", "version", "source", "report":
//! {"added", "changed", "removed", "unchanged"}}`, or `"report": "unchanged"` when the
//! source's file is the one the maps hold, `"held"` when it waits for the `m365` source
//! (the maps hold pins of unknown origin). With `--dry-run`, [`Plan`]: `{"name", "version",
//! "source", "added": [PREFIX], "changed": [PREFIX], "removed": [PREFIX], "unchanged": N,
//! "refused": null or REASON}`.

use std::collections::BTreeSet;

use anyhow::Context as _;
use ipnet::IpNet;
use serde::{Serialize, Serializer};

use super::Changes;
use crate::{
    agent::{Agent, Refreshed},
    cli::{GlobalArgs, SyncArgs},
    compile::{Compiled, key_net_v4, key_net_v6},
    datapath::Maps,
    sources::{M365, fetch::Got},
    state::State,
};

/// What `sync` applied.
#[derive(Debug, Serialize)]
pub struct Synced {
    /// The source: `m365`, or the `[[sources]]` entry's name.
    pub name: String,
    /// The version the maps now hold of it (the service's `YYYYMMDDNN`, a file's own, or
    /// `sha256:` and 16 digits of its hash); null when it has none yet.
    pub version: Option<String>,
    /// Where the file came from: the URL it was finally served from, or the file's path.
    pub source: Option<String>,
    /// What applying it changed in the tries.
    pub report: Outcome,
}

/// What applying a file did.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The prefixes added, changed, removed and left as they were.
    Applied(Changes),
    /// `"unchanged"`: the maps hold this file already; nothing changed (`--force` applies
    /// it again).
    #[serde(serialize_with = "unchanged")]
    Unchanged,
    /// `"held"`: the file is kept, and applied once the `m365` source has one.
    #[serde(serialize_with = "held")]
    Held,
}

fn unchanged<S: Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("unchanged")
}

fn held<S: Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("held")
}

/// What `sync --dry-run` would change.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// The source.
    pub name: String,
    /// The file's version, when it states one (`null` for a feed file).
    pub version: Option<String>,
    /// Where the file comes from: a URL, or the file's path.
    pub source: String,
    /// `added`, `changed`, `removed` and `unchanged` (flattened into the object).
    #[serde(flatten)]
    pub diff: Diff,
    /// Why the gate (a parse or prefix check, the version, the shrink and churn limits) would
    /// refuse the file; null when it would apply, and the limits never with `--force`.
    pub refused: Option<String>,
}

/// The installed prefixes against a feed's: each list IPv4 then IPv6, in address order.
#[derive(Debug, Default, Serialize)]
pub struct Diff {
    /// Prefixes the feed would add.
    pub added: Vec<IpNet>,
    /// Installed prefixes whose rules (category, endpoint set, ports) it would change.
    pub changed: Vec<IpNet>,
    /// Installed prefixes it would remove.
    pub removed: Vec<IpNet>,
    /// How many installed prefixes it would leave as they are.
    pub unchanged: usize,
}

pub fn run(global: &GlobalArgs, args: &SyncArgs) -> anyhow::Result<()> {
    let config = args.config.effective(global)?;
    let name = args.source.clone().unwrap_or_else(|| M365.to_owned());
    let file = match &args.feed_file {
        Some(path) => Some(Got::Body {
            body: std::fs::read(path)
                .with_context(|| format!("reading feed {}", path.display()))?,
            from: path.display().to_string(),
            etag: None,
            last_modified: None,
            version: None,
        }),
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
        let got = if let Some(file) = file {
            file
        } else {
            runtime.block_on(agent.fetch(agent.source_index(&name)?, true))?
        };
        let plan = agent.plan(&name, got, args.force)?;
        let plan = Plan {
            name,
            diff: diff(&plan.installed, &plan.target),
            version: plan.version,
            source: plan.from,
            refused: plan
                .refused
                .map(|error| format!("{:#}", anyhow::Error::from(error))),
        };
        if global.json {
            return super::write_json(&mut out, &plan);
        }
        plan.write_text(&mut out)?;
        return Ok(());
    }
    let refreshed = match file {
        Some(Got::Body { body, from, .. }) => {
            agent.install_file(&name, &body, None, &from, args.force)?
        }
        _ => runtime.block_on(agent.refresh(&name, args.force))?,
    };
    let status = agent.status();
    let row = status.source(&name);
    let synced = Synced {
        name: name.clone(),
        version: row.and_then(|row| row.version.clone()),
        source: row.and_then(|row| row.from.clone()),
        report: match refreshed {
            Refreshed::Unchanged { .. } => Outcome::Unchanged,
            Refreshed::Held { .. } => Outcome::Held,
            Refreshed::Applied { report, .. } => Outcome::Applied(report.into()),
        },
    };
    if global.json {
        return super::write_json(&mut out, &synced);
    }
    synced.write_text(&mut out)?;
    Ok(())
}

impl Synced {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            name,
            version,
            source,
            report,
        } = self;
        let version = version.as_deref().unwrap_or("-");
        // `m365` is the feed; its name is said for the other sources only.
        let what = if name == M365 {
            format!("feed {version}")
        } else {
            format!("source {name} {version}")
        };
        match report {
            Outcome::Unchanged => {
                writeln!(out, "{what} is already applied (--force applies it again)")
            }
            Outcome::Held => writeln!(
                out,
                "{what} is held until the m365 source replaces the pins of unknown origin"
            ),
            Outcome::Applied(Changes {
                added,
                changed,
                removed,
                unchanged,
            }) => writeln!(
                out,
                "applied {what} from {}: {added} added, {changed} changed, {removed} removed, {unchanged} unchanged",
                source.as_deref().unwrap_or("-")
            ),
        }
    }
}

impl Plan {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            name,
            version,
            source,
            diff:
                Diff {
                    added,
                    changed,
                    removed,
                    unchanged,
                },
            refused,
        } = self;
        for (sign, list) in [("+", added), ("~", changed), ("-", removed)] {
            for prefix in list {
                writeln!(out, "{sign} {prefix}")?;
            }
        }
        writeln!(
            out,
            "dry run, nothing changed: source {name} {} from {source} would add {}, change {}, remove {} and keep {unchanged} prefixes",
            version.as_deref().unwrap_or("-"),
            added.len(),
            changed.len(),
            removed.len(),
        )?;
        if let Some(refused) = refused {
            writeln!(out, "it would be refused: {refused}")?;
        }
        Ok(())
    }
}

fn diff(installed: &Compiled, target: &Compiled) -> Diff {
    let mut diff = Diff::default();
    let v4: BTreeSet<_> = installed.v4.keys().chain(target.v4.keys()).collect();
    for key in v4 {
        classify(
            &mut diff,
            key_net_v4(key),
            installed.v4.get(key),
            target.v4.get(key),
        );
    }
    let v6: BTreeSet<_> = installed.v6.keys().chain(target.v6.keys()).collect();
    for key in v6 {
        classify(
            &mut diff,
            key_net_v6(key),
            installed.v6.get(key),
            target.v6.get(key),
        );
    }
    diff
}

fn classify<T: PartialEq>(diff: &mut Diff, prefix: IpNet, before: Option<&T>, after: Option<&T>) {
    match (before, after) {
        (None, Some(_)) => diff.added.push(prefix),
        (Some(_), None) => diff.removed.push(prefix),
        (Some(a), Some(b)) if a != b => diff.changed.push(prefix),
        _ => diff.unchanged += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn every_field_is_documented() {
        let changes = Changes {
            added: 75,
            changed: 60,
            removed: 13,
            unchanged: 7,
        };
        let applied = Synced {
            name: M365.into(),
            version: Some("sha256:0123456789abcdef".into()),
            source: Some("/tmp/feed.json".into()),
            report: Outcome::Applied(changes),
        };
        let unchanged = Synced {
            name: "zoom".into(),
            version: Some("2026043000".into()),
            source: Some("https://example.com/zoom.txt".into()),
            report: Outcome::Unchanged,
        };
        assert_eq!(
            serde_json::to_value(&unchanged).unwrap()["report"],
            "unchanged"
        );
        let plan = Plan {
            name: M365.into(),
            version: Some("2026043000".into()),
            source: "/tmp/feed.json".into(),
            diff: Diff {
                added: vec!["52.112.0.0/14".parse().unwrap()],
                changed: Vec::new(),
                removed: Vec::new(),
                unchanged: 92,
            },
            refused: None,
        };
        for doc in [
            module_doc(include_str!("sync.rs")).as_str(),
            readme_section(),
        ] {
            assert_documented_in(&applied, doc);
            assert_documented_in(&plan, doc);
        }
        let mut text = Vec::new();
        applied.write_text(&mut text).unwrap();
        unchanged.write_text(&mut text).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "applied feed sha256:0123456789abcdef from /tmp/feed.json: 75 added, 60 changed, 13 removed, 7 unchanged\n\
             source zoom 2026043000 is already applied (--force applies it again)\n"
        );
    }
}
