//! `xdp-breakout classify --pcap FILE`: every packet of a capture through the XDP program
//! with BPF_PROG_TEST_RUN, against the live tries, policy and config (its counters are a
//! private copy: test packets do not show in `stats`).
//!
//! JSON (stable): one object per packet and line, [`Verdict`]: `{"index", "length", "action",
//! "reason", "category", "endpoint_set"}`, then a last line [`Summary`]: `{"summary":
//! {"packets", "direct", "tunnel", "reasons": {NAME: N}}}`.

use std::{collections::BTreeMap, io::Write as _};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use classifier_common::{XDP_META_MAGIC, action, category, stat};
use serde::Serialize;

use crate::{
    EBPF_OBJECT,
    cli::{ClassifyArgs, GlobalArgs},
    datapath::Datapath,
    explain::reason_name,
    pcap,
};

/// BPF_PROG_TEST_RUN takes frames of an Ethernet header up to about a page; the verdict
/// depends only on the headers, so longer frames are cut.
const MAX_TEST_FRAME: usize = 3000;
const ETH_HLEN: usize = 14;

/// What the XDP program decided for one packet.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// The packet's position in the capture, from 0.
    pub index: usize,
    /// Its captured length in bytes (the program ran on at most the first 3000).
    pub length: usize,
    /// `direct` or `tunnel`.
    pub action: &'static str,
    /// Why, as a counter of the README's table counts it (`match_port`, `no_match`,
    /// `fragment`, `not_ip`, `malformed`, ...).
    pub reason: &'static str,
    /// `Optimize`, `Allow` or `Default`; null when no prefix, or an excluded one, holds the
    /// destination (or the packet has none).
    pub category: Option<&'static str>,
    /// The endpoint set that decided; null for none or an operator's prefix.
    pub endpoint_set: Option<u16>,
}

/// The last line: totals over the capture.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The totals.
    pub summary: Totals,
}

/// Totals over the capture.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    /// Packets in the capture.
    pub packets: usize,
    /// Packets the program sent direct.
    pub direct: u64,
    /// Packets left to the tunnel.
    pub tunnel: u64,
    /// Packets per reason, by the reason's name.
    pub reasons: BTreeMap<&'static str, u64>,
}

impl Totals {
    fn count(&mut self, direct: bool, reason: &'static str) {
        self.packets += 1;
        if direct {
            self.direct += 1;
        } else {
            self.tunnel += 1;
        }
        *self.reasons.entry(reason).or_default() += 1;
    }
}

pub fn run(global: &GlobalArgs, args: &ClassifyArgs) -> anyhow::Result<()> {
    let data = std::fs::read(&args.pcap)
        .with_context(|| format!("reading capture {}", args.pcap.display()))?;
    let packets =
        pcap::packets(&data).with_context(|| format!("capture {}", args.pcap.display()))?;
    let pin_dir = global.pin_dir();
    let mut datapath = Datapath::load_shadow(EBPF_OBJECT, &pin_dir)?;
    let program = datapath.xdp()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !global.json {
        writeln!(
            out,
            "{:>7} {:>6} {:<7} {:<12} {:<9} SET",
            "PACKET", "BYTES", "ACTION", "REASON", "CATEGORY"
        )?;
    }
    let mut totals = Totals::default();
    let mut buffer = vec![0u8; MAX_TEST_FRAME + 64];
    for (index, packet) in packets.iter().enumerate() {
        let (act, reason, cat, set) = if packet.len() < ETH_HLEN {
            (action::TUNNEL, stat::MALFORMED, category::NONE, 0)
        } else {
            let frame = &packet[..packet.len().min(MAX_TEST_FRAME)];
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut buffer),
                    ..TestRunOptions::default()
                })
                .with_context(|| format!("running packet {index}"))?;
            let meta = &buffer[..result.data_size_out as usize];
            let magic = meta
                .get(..4)
                .map(|m| u32::from_ne_bytes(m.try_into().unwrap_or_default()));
            anyhow::ensure!(
                magic == Some(XDP_META_MAGIC),
                "packet {index}: the program left no verdict"
            );
            (
                meta[4],
                u32::from(meta[8]),
                meta[5],
                u16::from_ne_bytes([meta[6], meta[7]]),
            )
        };
        let verdict = Verdict {
            index,
            length: packet.len(),
            action: action::name(act),
            reason: reason_name(reason),
            category: category::name(cat),
            endpoint_set: (set != 0).then_some(set),
        };
        totals.count(act == action::DIRECT, verdict.reason);
        if global.json {
            super::write_json_line(&mut out, &verdict)?;
        } else {
            verdict.write_row(&mut out)?;
        }
    }
    if global.json {
        super::write_json_line(&mut out, &Summary { summary: totals })?;
    } else {
        totals.write_text(&mut out)?;
    }
    out.flush()?;
    Ok(())
}

impl Verdict {
    fn write_row(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            index,
            length,
            action,
            reason,
            category,
            endpoint_set,
        } = self;
        writeln!(
            out,
            "{index:>7} {length:>6} {action:<7} {reason:<12} {:<9} {}",
            category.unwrap_or("-"),
            super::or_dash(*endpoint_set)
        )
    }
}

impl Totals {
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            packets,
            direct,
            tunnel,
            reasons,
        } = self;
        let reasons: Vec<String> = reasons
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        writeln!(
            out,
            "\n{packets} packets: {direct} direct, {tunnel} tunnel ({})",
            reasons.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn every_field_is_documented() {
        let verdict = Verdict {
            index: 0,
            length: 60,
            action: "direct",
            reason: "match_port",
            category: Some("Optimize"),
            endpoint_set: Some(11),
        };
        let mut summary = Summary {
            summary: Totals::default(),
        };
        summary.summary.count(true, verdict.reason);
        assert_eq!((summary.summary.packets, summary.summary.direct), (1, 1));
        let mut text = Vec::new();
        summary.summary.write_text(&mut text).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "\n1 packets: 1 direct, 0 tunnel (match_port 1)\n"
        );
        // Reason names are values, not fields.
        summary.summary.reasons.clear();
        for doc in [
            module_doc(include_str!("classify.rs")).as_str(),
            readme_section(),
        ] {
            assert_documented_in(&verdict, doc);
            assert_documented_in(&summary, doc);
        }
    }
}
