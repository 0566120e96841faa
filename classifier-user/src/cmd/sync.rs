//! `xdp-breakout sync [--feed-file FILE | --feed-url URL] [--dry-run] [--force]`: one refresh
//! of the pinned maps through the agent's gate (validation, shrink limit, diff apply, record).
//! `sync --source NAME` refreshes one `[[sources]]` entry the same way; the others stay.
//!
//! JSON (stable): one document. [`Synced`]: `{"version", "source", "report": {"added",
//! "changed", "removed", "unchanged"}}`, or `"report": "unchanged"` when the service's version
//! was already applied (with `--source`, `"held"` when the file waits for `[feed]`). With `--dry-run`, [`Plan`]: `{"version", "source", "added": [PREFIX],
//! "changed": [PREFIX], "removed": [PREFIX], "unchanged": N, "refused": null or REASON}`.

use std::collections::BTreeSet;

use anyhow::Context as _;
use ipnet::IpNet;
use serde::{Serialize, Serializer};

use super::Changes;
use crate::{
    agent::{Agent, Refreshed, SourceRefreshed},
    cli::{GlobalArgs, SyncArgs},
    compile::{Compiled, key_net_v4, key_net_v6},
    datapath::Maps,
    state::State,
};

/// The version recorded for a feed file: unknown, so that the agent fetches the service's.
const FILE_VERSION: &str = "unknown";

/// What `sync` applied.
#[derive(Debug, Serialize)]
pub struct Synced {
    /// The feed's version: the service's `YYYYMMDDNN`, or `unknown` for a feed file.
    pub version: String,
    /// Where the feed came from: the endpoints URL, or the file's path.
    pub source: String,
    /// What applying it changed in the tries.
    pub report: Outcome,
    /// Not in the JSON: the text names a file by its path, a service's feed by its version.
    #[serde(skip)]
    pub from_file: bool,
}

/// What applying a feed did.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The prefixes added, changed, removed and left as they were.
    Applied(Changes),
    /// `"unchanged"`: the service's version was already applied; nothing was fetched or
    /// changed (`--force` applies it again).
    #[serde(serialize_with = "unchanged")]
    Unchanged,
    /// `"held"`: a source's new file is kept, and applied once `[feed]` is installed.
    #[serde(serialize_with = "held")]
    Held,
}

fn unchanged<S: Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("unchanged")
}

fn held<S: Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("held")
}

/// What `sync --source NAME` did.
#[derive(Debug, Serialize)]
pub struct SyncedSource {
    /// The source's name (as in `version` and `source` of [`Synced`]).
    pub source: String,
    /// The version the maps now hold of it; null when it has none yet.
    pub version: Option<String>,
    pub report: Outcome,
}

impl SyncedSource {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            source,
            version,
            report,
        } = self;
        let version = version.as_deref().unwrap_or("-");
        match report {
            Outcome::Unchanged => writeln!(
                out,
                "source {source}: version {version} is already applied (--force applies it again)"
            ),
            Outcome::Held => writeln!(
                out,
                "source {source}: version {version} is held until [feed] is installed"
            ),
            Outcome::Applied(Changes {
                added,
                changed,
                removed,
                unchanged,
            }) => writeln!(
                out,
                "applied source {source} {version}: {added} added, {changed} changed, {removed} removed, {unchanged} unchanged"
            ),
        }
    }
}

/// What `sync --dry-run` would change.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// The feed's version: the service's `YYYYMMDDNN`, or `unknown` for a feed file.
    pub version: String,
    /// Where the feed comes from: the endpoints URL, or the file's path.
    pub source: String,
    /// `added`, `changed`, `removed` and `unchanged` (flattened into the object).
    #[serde(flatten)]
    pub diff: Diff,
    /// Why the gate (shrink and churn limits) would refuse the feed; null when it would
    /// apply, and always with `--force`.
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
    if let Some(name) = &args.source
        && name != crate::config::FEED_SOURCE_NAME
    {
        let outcome = runtime.block_on(agent.refresh_source(name, args.force))?;
        let synced = SyncedSource {
            source: name.clone(),
            version: agent
                .status()
                .sources
                .iter()
                .find(|source| source.name == *name)
                .and_then(|source| source.version.clone()),
            report: match outcome {
                SourceRefreshed::Unchanged { .. } => Outcome::Unchanged,
                SourceRefreshed::Held => Outcome::Held,
                SourceRefreshed::Applied { report } => Outcome::Applied(report.into()),
            },
        };
        if global.json {
            return super::write_json(&mut out, &synced);
        }
        synced.write_text(&mut out)?;
        return Ok(());
    }
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
        let plan = Plan {
            diff: diff(&installed, &target),
            version,
            source,
            refused,
        };
        if global.json {
            return super::write_json(&mut out, &plan);
        }
        plan.write_text(&mut out)?;
        return Ok(());
    }
    let synced = if let Some((body, path)) = feed_file {
        let report = agent.install(&body, FILE_VERSION, &path, args.force)?;
        Synced {
            version: FILE_VERSION.to_owned(),
            source: path,
            report: Outcome::Applied(report.into()),
            from_file: true,
        }
    } else {
        let (version, report) = match runtime.block_on(agent.refresh(args.force))? {
            Refreshed::Unchanged { version } => (version, Outcome::Unchanged),
            Refreshed::Applied { version, report } => (version, Outcome::Applied(report.into())),
        };
        // The agent's record of the feed the maps hold says where it came from.
        let source = agent
            .status()
            .applied
            .as_ref()
            .map_or_else(|| agent.endpoints_url(), |applied| applied.source.clone());
        Synced {
            version,
            source,
            report,
            from_file: false,
        }
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
            version,
            source,
            report,
            from_file,
        } = self;
        match report {
            Outcome::Unchanged => writeln!(
                out,
                "version {version} is already applied (--force applies it again)"
            ),
            Outcome::Held => Ok(()),
            Outcome::Applied(Changes {
                added,
                changed,
                removed,
                unchanged,
            }) => {
                let feed = if *from_file {
                    source.clone()
                } else {
                    format!("feed {version}")
                };
                writeln!(
                    out,
                    "applied {feed}: {added} added, {changed} changed, {removed} removed, {unchanged} unchanged"
                )
            }
        }
    }
}

impl Plan {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
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
            "dry run, nothing changed: feed {version} from {source} would add {}, change {}, remove {} and keep {unchanged} prefixes",
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
            version: FILE_VERSION.into(),
            source: "/tmp/feed.json".into(),
            report: Outcome::Applied(changes),
            from_file: true,
        };
        let unchanged = Synced {
            version: "2026043000".into(),
            source: "https://endpoints.office.com/endpoints/Worldwide".into(),
            report: Outcome::Unchanged,
            from_file: false,
        };
        assert_eq!(
            serde_json::to_value(&unchanged).unwrap()["report"],
            "unchanged"
        );
        let plan = Plan {
            version: "2026043000".into(),
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
            "applied /tmp/feed.json: 75 added, 60 changed, 13 removed, 7 unchanged\n\
             version 2026043000 is already applied (--force applies it again)\n"
        );
    }
}
