//! `xdp-breakout detach IFACE...`: removes the links of each interface, then the policy rules
//! of `[dns] local-resolvers` (those whose protocol is xdp-breakout's).
//!
//! JSON (stable): one document, [`Report`], once every interface is detached: `{"detached":
//! [IFACE]}`.

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cli::{DetachArgs, GlobalArgs},
    datapath,
};

/// What `detach` did.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The interfaces whose links were removed, in the order given.
    pub detached: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &DetachArgs) -> anyhow::Result<()> {
    let pin_dir = global.pin_dir();
    // A missing directory has nothing to detach (and gets no lock, so it is not created).
    let _lock = pin_dir
        .exists()
        .then(|| datapath::PinLock::acquire(&pin_dir))
        .transpose()?;
    // The text says each interface as it is done; JSON is one document at the end.
    let mut out = std::io::stdout().lock();
    let mut report = Report {
        detached: Vec::with_capacity(args.ifaces.len()),
    };
    for iface in &args.ifaces {
        datapath::detach(&pin_dir, iface)?;
        if !global.json {
            write_text(&mut out, iface)?;
        }
        report.detached.push(iface.clone());
    }
    // The local resolvers' policy rules go with the data plane: exactly ours, by protocol.
    crate::dnsconfig::remove_rules().context("removing the local resolvers' policy rules")?;
    if global.json {
        super::write_json(&mut out, &report)?;
    }
    Ok(())
}

/// The text for one entry of [`Report::detached`].
fn write_text(out: &mut impl std::io::Write, iface: &str) -> std::io::Result<()> {
    writeln!(out, "detached from {iface}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn every_field_is_documented() {
        let report = Report {
            detached: vec!["lan0".into()],
        };
        for doc in [
            module_doc(include_str!("detach.rs")).as_str(),
            readme_section(),
        ] {
            assert_documented_in(&report, doc);
        }
    }
}
