//! One module per verb; each has `run(global, args)`.
//!
//! A command that prints a result builds it once as a typed value (`Report`, `Answer`, ...,
//! `#[derive(Serialize)]` in its module, with a doc comment per field: those docs are the
//! stable `--json` schema), then serializes that value for `--json` or renders its text from
//! the same value.

pub mod attach;
pub mod classify;
pub mod config;
pub mod detach;
pub mod dns_config;
pub mod egress;
pub mod flows;
pub mod learned;
pub mod lookup;
pub mod pac;
pub mod prefixes;
pub mod run;
pub mod sources;
pub mod stats;
pub mod status;
pub mod sync;

use std::io::Write as _;

use clap::CommandFactory as _;
use serde::Serialize;

use crate::{
    cli::{Cli, Command},
    datapath::ApplyReport,
};

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    match command {
        Command::Run(args) => run::run(&global, &args),
        Command::Attach(args) => attach::run(&global, &args),
        Command::Detach(args) => detach::run(&global, &args),
        Command::Status(args) => status::run(&global, &args),
        Command::Stats(args) => stats::run(&global, &args),
        Command::Lookup(args) => lookup::run(&global, &args),
        Command::Classify(args) => classify::run(&global, &args),
        Command::Prefixes(args) => prefixes::run(&global, &args),
        Command::Flows(args) => flows::run(&global, &args),
        Command::Sources(args) => sources::run(&global, &args),
        Command::Pac(args) => pac::run(&global, &args),
        Command::DnsConfig(args) => dns_config::run(&global, &args),
        Command::Egress(args) => egress::run(&global, &args),
        Command::Learned(args) => learned::run(&global, &args),
        Command::Sync(args) => sync::run(&global, &args),
        Command::Config(command) => config::run(&global, &command),
        Command::Completions(args) => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(args.shell, &mut Cli::command(), "xdp-breakout", &mut out);
            out.flush()?;
            Ok(())
        }
        Command::Man => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            Ok(())
        }
    }
}

/// Opens the pinned maps with a hint when there are none.
pub fn pinned_maps(global: &crate::cli::GlobalArgs) -> anyhow::Result<crate::datapath::Maps> {
    Ok(crate::datapath::Maps::from_pins(&global.pin_dir())?)
}

/// What applying a feed changed in the tries (`attach`, `sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Prefixes that were not installed.
    pub added: usize,
    /// Installed prefixes whose rules (category, endpoint set, ports) changed.
    pub changed: usize,
    /// Installed prefixes the feed no longer has.
    pub removed: usize,
    /// Installed prefixes left as they were.
    pub unchanged: usize,
}

impl From<ApplyReport> for Changes {
    fn from(report: ApplyReport) -> Self {
        let ApplyReport {
            added,
            changed,
            removed,
            unchanged,
            ..
        } = report;
        Self {
            added,
            changed,
            removed,
            unchanged,
        }
    }
}

/// The mark direct packets get, `VALUE/MASK` in hex (`0x365/0xffff`).
#[must_use]
pub fn mark(config: &classifier_common::Config) -> String {
    format!("{:#x}/{:#x}", config.mark, config.mark_mask)
}

/// `-` for a value the text output has not got.
/// The installed file of Microsoft 365 source `name` and what it is, for the verbs that print
/// a file from the feeds (`pac`, `dns-config`): its last good file in the state directory, or
/// the embedded snapshot for the `m365` source when it has none; `None` otherwise.
fn installed_feed(state: Option<&crate::state::State>, name: &str) -> Option<(Vec<u8>, String)> {
    match state.and_then(|state| state.source(name)) {
        Some((body, meta)) => Some((body, crate::agent::pac_about(name, &meta))),
        None if name == crate::sources::M365 => Some((
            crate::EMBEDDED_FEED.to_vec(),
            format!("the embedded snapshot {}", crate::EMBEDDED_FEED_VERSION),
        )),
        None => None,
    }
}

fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// One JSON document, indented, and a newline.
fn write_json(out: &mut impl std::io::Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// One JSON object on one line, for commands that stream a line per answer.
fn write_json_line(out: &mut impl std::io::Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod schema_docs {
    use serde_json::Value;

    /// The README's "Command line" section.
    pub fn readme_section() -> &'static str {
        include_str!("../../../README.md")
            .split("## Command line")
            .nth(1)
            .and_then(|section| section.split("\n## ").next())
            .expect("the README has a Command line section")
    }

    /// The `//!` lines of a module's source.
    pub fn module_doc(source: &str) -> String {
        source
            .lines()
            .filter_map(|line| line.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every field name of `sample`'s JSON, at any depth, is written `"name"` in `doc`: a
    /// field added to an output type is documented where operators read.
    pub fn assert_documented_in(sample: &impl serde::Serialize, doc: &str) {
        fn names(value: &Value, into: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    for (name, value) in map {
                        into.push(name.clone());
                        names(value, into);
                    }
                }
                Value::Array(items) => {
                    for item in items {
                        names(item, into);
                    }
                }
                _ => {}
            }
        }
        let mut fields = Vec::new();
        names(
            &serde_json::to_value(sample).expect("serializes"),
            &mut fields,
        );
        assert!(!fields.is_empty(), "a sample with fields");
        // Line breaks and the README's indentation may fall anywhere.
        let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        for field in &fields {
            assert!(
                doc.contains(&format!("\"{field}\"")),
                "field {field:?} is not documented in:\n{doc}"
            );
        }
    }
}
