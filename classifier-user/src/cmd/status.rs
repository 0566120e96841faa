//! `xdp-breakout status`: attachments, feed, prefix counts, polls, errors, marking.
//!
//! JSON schema (stable): `{"pin_dir", "interfaces": [{"name", "xdp": {"link_id",
//! "program_id", "program_name", "mode"}, "tc": {...}}], "agent": {"pid", "running"},
//! "feed": {"instance", "url", "version", "applied_at", "source"}, "prefixes": {"ipv4",
//! "ipv6"}, "last_poll", "next_poll", "last_error", "consecutive_failures", "mark",
//! "strict_ports", "policy": {"Optimize": "direct", ...}}`; times are RFC 3339 UTC or null.

use std::{io::Write as _, path::Path};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use classifier_common::{action, category, flags};
use serde_json::{Value, json};

use crate::{
    cli::{GlobalArgs, StatusArgs},
    datapath::{self, attached_xdp, tc_link_pin, xdp_link_pin},
    explain::rfc3339,
    state::read_status,
};

pub fn run(global: &GlobalArgs, StatusArgs {}: &StatusArgs) -> anyhow::Result<()> {
    let pin_dir = global.pin_dir();
    let maps = super::pinned_maps(global)?;
    let config = maps.config()?;
    let policy = maps.policy()?;
    let installed = maps.installed()?;
    let agent = read_status(&global.state_dir());
    let interfaces: Vec<Value> = datapath::attached_interfaces(&pin_dir)
        .iter()
        .map(|iface| interface(&pin_dir, iface))
        .collect();
    let time = |secs: Option<u64>| secs.map(rfc3339);
    let running = agent.as_ref().is_some_and(|status| {
        std::fs::read_to_string(format!("/proc/{}/comm", status.pid))
            .is_ok_and(|comm| comm.trim() == "xdp-breakout")
    });
    let report = json!({
        "pin_dir": pin_dir,
        "interfaces": interfaces,
        "agent": agent.as_ref().map(|status| json!({"pid": status.pid, "running": running})),
        "feed": agent.as_ref().map(|status| json!({
            "instance": status.instance,
            "url": status.feed_url,
            "version": status.applied.as_ref().map(|a| &a.version),
            "applied_at": time(status.applied.as_ref().map(|a| a.applied_at)),
            "source": status.applied.as_ref().map(|a| &a.source),
        })),
        "prefixes": {"ipv4": installed.v4.len(), "ipv6": installed.v6.len()},
        "last_poll": time(agent.as_ref().and_then(|s| s.last_poll)),
        "next_poll": time(agent.as_ref().and_then(|s| s.next_poll)),
        "last_error": agent.as_ref().and_then(|s| s.last_error.clone()),
        "consecutive_failures": agent.as_ref().map_or(0, |s| s.consecutive_failures),
        "mark": format!("{:#x}/{:#x}", config.mark, config.mark_mask),
        "strict_ports": config.flags & flags::STRICT_PORTS != 0,
        "policy": {
            "Optimize": action::name(policy[usize::from(category::OPTIMIZE)]),
            "Allow": action::name(policy[usize::from(category::ALLOW)]),
            "Default": action::name(policy[usize::from(category::DEFAULT)]),
        },
    });
    let mut out = std::io::stdout().lock();
    if global.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    print_human(&mut out, &report)?;
    Ok(())
}

fn interface(pin_dir: &Path, iface: &str) -> Value {
    let link = |path: std::path::PathBuf| -> Value {
        let Ok(pinned) = PinnedLink::from_pin(&path) else {
            return Value::Null;
        };
        let Ok(info) = FdLink::from(pinned).info() else {
            return Value::Null;
        };
        let program_name = loaded_programs()
            .filter_map(Result::ok)
            .find(|program| program.id() == info.program_id())
            .and_then(|program| program.name_as_str().map(str::to_owned));
        json!({"link_id": info.id(), "program_id": info.program_id(), "program_name": program_name})
    };
    let mut xdp = link(xdp_link_pin(pin_dir, iface));
    let mode = xdp_mode(iface);
    if let Some(object) = xdp.as_object_mut() {
        object.insert("mode".into(), json!(mode));
    }
    json!({"name": iface, "xdp": xdp, "tc": link(tc_link_pin(pin_dir, iface))})
}

/// An interface of another network namespace is not visible to `ip`.
fn xdp_mode(iface: &str) -> &'static str {
    attached_xdp(iface).map_or("not visible in this network namespace", |xdp| xdp.mode)
}

fn print_human(out: &mut impl std::io::Write, report: &Value) -> std::io::Result<()> {
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    writeln!(out, "pin directory:  {}", text(&report["pin_dir"]))?;
    let interfaces = report["interfaces"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    if interfaces.is_empty() {
        writeln!(out, "interfaces:     none attached")?;
    }
    for iface in interfaces {
        writeln!(
            out,
            "interface:      {}: XDP program {} ({}, {}), tc program {} ({})",
            text(&iface["name"]),
            text(&iface["xdp"]["program_id"]),
            text(&iface["xdp"]["program_name"]),
            text(&iface["xdp"]["mode"]),
            text(&iface["tc"]["program_id"]),
            text(&iface["tc"]["program_name"]),
        )?;
    }
    match report["agent"].as_object() {
        Some(agent) => writeln!(
            out,
            "agent:          pid {}, {}",
            text(&agent["pid"]),
            if agent["running"] == true {
                "running"
            } else {
                "not running"
            }
        )?,
        None => writeln!(
            out,
            "agent:          no status (not run with this --state-dir)"
        )?,
    }
    let feed = &report["feed"];
    writeln!(
        out,
        "feed:           {} version {} applied {} from {}",
        text(&feed["instance"]),
        text(&feed["version"]),
        text(&feed["applied_at"]),
        text(&feed["source"])
    )?;
    writeln!(
        out,
        "prefixes:       {} IPv4, {} IPv6",
        text(&report["prefixes"]["ipv4"]),
        text(&report["prefixes"]["ipv6"])
    )?;
    writeln!(out, "last poll:      {}", text(&report["last_poll"]))?;
    writeln!(out, "next poll:      {}", text(&report["next_poll"]))?;
    writeln!(
        out,
        "last error:     {} ({} consecutive failures)",
        text(&report["last_error"]),
        text(&report["consecutive_failures"])
    )?;
    writeln!(
        out,
        "marking:        {} for direct; strict ports {}",
        text(&report["mark"]),
        if report["strict_ports"] == true {
            "on"
        } else {
            "off"
        }
    )?;
    let policy = &report["policy"];
    writeln!(
        out,
        "policy:         Optimize {}, Allow {}, Default {}",
        text(&policy["Optimize"]),
        text(&policy["Allow"]),
        text(&policy["Default"])
    )
}
