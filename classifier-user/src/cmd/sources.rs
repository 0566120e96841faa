//! `xdp-breakout sources`: every source of prefixes the agent keeps, `m365` (`[feed]`) first,
//! then each `[[sources]]` entry, as the agent last recorded them.
//!
//! JSON (stable): an array of [`SourceStatus`]: `[{"name", "kind", "location", "instance",
//! "policy", "first_set", "version", "from", "applied_at", "prefixes_v4", "prefixes_v6",
//! "last_success", "last_attempt", "next_refresh", "last_error", "consecutive_failures"}]`;
//! times are RFC 3339 UTC or null.

use std::io::Write as _;

use anyhow::Context as _;

use super::or_dash;
use crate::{
    cli::{GlobalArgs, SourcesArgs},
    state::{SourceStatus, read_status},
};

pub fn run(global: &GlobalArgs, SourcesArgs {}: &SourcesArgs) -> anyhow::Result<()> {
    let dir = global.state_dir();
    let status = read_status(&dir)?.with_context(|| {
        format!(
            "no agent status in {}: start the agent (`xdp-breakout run`) or give --state-dir",
            dir.display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    if global.json {
        return super::write_json(&mut out, &status.sources);
    }
    write_text(&mut out, &status.sources)?;
    out.flush()?;
    Ok(())
}

fn write_text(out: &mut impl std::io::Write, rows: &[SourceStatus]) -> std::io::Result<()> {
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
            or_dash(row.last_success.map(|at| at.to_string()).as_deref()),
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
        let rows = vec![
            SourceStatus {
                name: "m365".into(),
                kind: "m365".into(),
                instance: Some("Worldwide".into()),
                applied_at: Some(crate::time::Time(1)),
                ..SourceStatus::default()
            },
            SourceStatus {
                name: "zoom".into(),
                kind: "cidr-list".into(),
                version: Some("sha256:0123456789abcdef".into()),
                last_error: Some("x".into()),
                ..SourceStatus::default()
            },
        ];
        assert_documented_in(&rows, &module_doc(include_str!("sources.rs")));
        assert_documented_in(&rows, readme_section());
        let mut text = Vec::new();
        write_text(&mut text, &rows).unwrap();
        assert_eq!(String::from_utf8(text).unwrap().lines().count(), 3);
    }
}
