//! `xdp-breakout classify --pcap FILE`: every packet of a capture through the XDP program
//! with BPF_PROG_TEST_RUN, against the live tries, policy and config (its counters are a
//! private copy: test packets do not show in `stats`).
//!
//! JSON (stable): one object per packet and line, `{"index", "length", "action", "reason",
//! "category", "endpoint_set"}`, then `{"summary": {"packets", "direct", "tunnel",
//! "reasons": {NAME: N}}}`.

use std::{collections::BTreeMap, io::Write as _};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use classifier_common::{XDP_META_MAGIC, action, category, stat};
use serde_json::json;

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
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut direct, mut tunnel) = (0u64, 0u64);
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
        if act == action::DIRECT {
            direct += 1;
        } else {
            tunnel += 1;
        }
        *reasons.entry(reason_name(reason)).or_default() += 1;
        if global.json {
            serde_json::to_writer(
                &mut out,
                &json!({
                    "index": index,
                    "length": packet.len(),
                    "action": action::name(act),
                    "reason": reason_name(reason),
                    "category": category::name(cat),
                    "endpoint_set": (set != 0).then_some(set),
                }),
            )?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{index:>7} {:>6} {:<7} {:<12} {:<9} {}",
                packet.len(),
                action::name(act),
                reason_name(reason),
                category::name(cat).unwrap_or("-"),
                if set == 0 {
                    "-".to_owned()
                } else {
                    set.to_string()
                }
            )?;
        }
    }
    let total = packets.len();
    if global.json {
        serde_json::to_writer(
            &mut out,
            &json!({"summary": {"packets": total, "direct": direct, "tunnel": tunnel, "reasons": reasons}}),
        )?;
        writeln!(out)?;
    } else {
        let reasons: Vec<String> = reasons
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        writeln!(
            out,
            "\n{total} packets: {direct} direct, {tunnel} tunnel ({})",
            reasons.join(", ")
        )?;
    }
    out.flush()?;
    Ok(())
}
