//! `xdp-breakout sources`: every source of prefixes the agent keeps, `[feed]` (named `m365`)
//! first, then each `[[sources]]` entry, as the agent last recorded them.
//!
//! JSON (stable): an array of [`Row`]: `[{"name", "kind", "location", "policy", "first_set",
//! "version", "prefixes_v4", "prefixes_v6", "last_success", "last_attempt", "next_refresh",
//! "last_error", "consecutive_failures"}]`; times are RFC 3339 UTC or null.

use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use super::or_dash;
use crate::{
    cli::{GlobalArgs, SourcesArgs},
    config::FEED_SOURCE_NAME,
    explain::rfc3339,
    state::{SourceStatus, Status, read_status},
};

/// One source.
#[derive(Debug, Serialize)]
pub struct Row {
    /// `m365` for `[feed]`, else the `[[sources]]` entry's name.
    pub name: String,
    /// `m365`, `aws`, `azure-service-tags`, `google` or `cidr-list`.
    pub kind: String,
    /// The URL or file it is read from.
    pub location: String,
    /// `direct`, `tunnel`, or `by category` (Microsoft 365).
    pub policy: String,
    /// Its first endpoint set id: a Microsoft 365 instance has 1024 from there, the others
    /// one.
    pub first_set: u32,
    /// The version the maps hold (`syncToken`, `changeNumber`, Microsoft's version, or
    /// `sha256:` and the first 16 digits of the content hash); null before a good file.
    pub version: Option<String>,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// The last fetch that ended well (new or unchanged), the last attempt and the next.
    pub last_success: Option<String>,
    pub last_attempt: Option<String>,
    pub next_refresh: Option<String>,
    /// Why the last attempt failed; null once one succeeds.
    pub last_error: Option<String>,
    /// Attempts that failed in a row.
    pub consecutive_failures: u32,
}

pub fn run(global: &GlobalArgs, SourcesArgs {}: &SourcesArgs) -> anyhow::Result<()> {
    let dir = global.state_dir();
    let status = read_status(&dir).with_context(|| {
        format!(
            "no agent status in {}: start the agent (`xdp-breakout run`) or give --state-dir",
            dir.display()
        )
    })?;
    let rows = rows(&status);
    let mut out = std::io::stdout().lock();
    if global.json {
        return super::write_json(&mut out, &rows);
    }
    write_text(&mut out, &rows)?;
    out.flush()?;
    Ok(())
}

/// `[feed]`'s row from the agent's own fields, then the sources'.
#[must_use]
pub fn rows(status: &Status) -> Vec<Row> {
    let time = |secs: Option<u64>| secs.map(rfc3339);
    let feed = Row {
        name: FEED_SOURCE_NAME.to_owned(),
        kind: "m365".to_owned(),
        location: format!("{} ({})", status.feed_url, status.instance),
        policy: "by category".to_owned(),
        first_set: 1,
        version: status
            .applied
            .as_ref()
            .map(|applied| applied.version.clone()),
        prefixes_v4: status.feed_prefixes_v4,
        prefixes_v6: status.feed_prefixes_v6,
        last_success: status
            .last_error
            .is_none()
            .then_some(status.last_poll)
            .flatten()
            .map(rfc3339),
        last_attempt: time(status.last_poll),
        next_refresh: time(status.next_poll),
        last_error: status.last_error.clone(),
        consecutive_failures: status.consecutive_failures,
    };
    std::iter::once(feed)
        .chain(status.sources.iter().map(|source| {
            let SourceStatus {
                name,
                kind,
                location,
                policy,
                first_set,
                version,
                prefixes_v4,
                prefixes_v6,
                last_success,
                last_attempt,
                next_refresh,
                last_error,
                consecutive_failures,
            } = source.clone();
            Row {
                name,
                kind,
                location,
                policy,
                first_set,
                version,
                prefixes_v4,
                prefixes_v6,
                last_success: time(last_success),
                last_attempt: time(last_attempt),
                next_refresh: time(next_refresh),
                last_error,
                consecutive_failures,
            }
        }))
        .collect()
}

fn write_text(out: &mut impl std::io::Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<19} {:<12} {:<24} {:>7} {:>7}  {:<20}  LAST ERROR",
        "NAME", "KIND", "POLICY", "VERSION", "IPV4", "IPV6", "LAST SUCCESS"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<16} {:<19} {:<12} {:<24} {:>7} {:>7}  {:<20}  {}",
            row.name,
            row.kind,
            row.policy,
            or_dash(row.version.as_deref()),
            row.prefixes_v4,
            row.prefixes_v6,
            or_dash(row.last_success.as_deref()),
            or_dash(row.last_error.as_deref()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn every_field_is_documented() {
        let status = Status {
            sources: vec![SourceStatus {
                name: "zoom".into(),
                kind: "cidr-list".into(),
                version: Some("sha256:0123456789abcdef".into()),
                last_error: Some("x".into()),
                ..SourceStatus::default()
            }],
            ..Status::default()
        };
        let rows = rows(&status);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].name.as_str(), rows[1].name.as_str()),
            ("m365", "zoom")
        );
        assert_documented_in(&rows, &module_doc(include_str!("sources.rs")));
        assert_documented_in(&rows, readme_section());
    }
}
