//! `xdp-breakout status`: attachments, feed, prefix counts, polls, errors, marking.
//!
//! JSON (stable): one document, [`Report`]: `{"pin_dir", "interfaces": [{"name", "attach", "xdp":
//! {"link_id", "program_id", "program_name", "mode"}, "tc": {"link_id", "program_id",
//! "program_name"}}], "agent": {"pid", "running"}, "feed": {"instance", "url", "version",
//! "applied_at", "source"}, "prefixes": {"ipv4", "ipv6"}, "last_poll", "next_poll",
//! "last_error", "consecutive_failures", "mark", "strict_ports", "policy": {"Optimize",
//! "Allow", "Default"}, "uplink": {"name", "interface", "mark", "table", "state",
//! "failing_over", "since", "reason", "transitions", "failed_probes", "targets": [{"target",
//! "ok", "rtt_us", "error"}], "quality": {"rtt_ms", "last_rtt_ms", "jitter_ms", "loss_ratio",
//! "window"}, "grade", "degraded_because", "grade_since", "grade_changes", "sla",
//! "addresses", "nat_address", "packets", "bytes"}, "uplinks": [the same, one per direct
//! uplink], "steering": [{"category", "policy", "sensitive", "to": [[NAME, PERCENT]]}],
//! "index": {"live",
//! "ipv4", "ipv6", "slots_used", "slots_per_half", "rule_sets", "memory_mib"}, "dns":
//! {"resolvers", "resolvers_from"}}`; times are
//! RFC 3339
//! UTC or null. The fields' documentation below
//! says what each holds.

use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use classifier_common::{action, category, flags};
use serde::Serialize;

use super::or_dash;
use crate::{
    cli::{GlobalArgs, StatusArgs},
    datapath::{self, attached_xdp, tc_link_pin, xdp_link_pin},
    health::{Figures, ProbeResult, State},
    state::{SourceStatus, read_status},
    time::Time,
};

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The pin directory read (`--pin-dir`).
    pub pin_dir: PathBuf,
    /// The interfaces with xdp-breakout's links pinned there.
    pub interfaces: Vec<Interface>,
    /// The agent using `--state-dir`; null when no agent has written its status there.
    pub agent: Option<Agent>,
    /// The feed the agent applied; null without the agent's status.
    pub feed: Option<Feed>,
    /// How many prefixes the tries hold.
    pub prefixes: Prefixes,
    /// When the agent last asked the feed service; null before its first poll.
    pub last_poll: Option<Time>,
    /// When it asks next; null without the agent's status.
    pub next_poll: Option<Time>,
    /// The last poll's failure; null once a poll succeeds.
    pub last_error: Option<String>,
    /// Polls that failed in a row; 0 without the agent's status.
    pub consecutive_failures: u32,
    /// The mark direct packets get, `VALUE/MASK` in hex (`0x365/0xffff`).
    pub mark: String,
    /// Whether a packet whose port matches no rule of its prefix goes to the tunnel.
    pub strict_ports: bool,
    /// The action, `direct` or `tunnel`, of each category.
    pub policy: Policy,
    /// The first direct uplink, as the agent's health checks see it (`uplinks[0]`).
    pub uplink: Uplink,
    /// Every direct uplink, in configuration order.
    pub uplinks: Vec<Uplink>,
    /// Where each direct category's new flows go: the kernel's steering rows.
    pub steering: Vec<crate::state::SteerRow>,
    /// The compiled index beside the tries; null in pins of a version before it.
    pub index: Option<Index>,
    /// DNS learning; null when the agent does not learn (or has written no status).
    pub dns: Option<Dns>,
}

/// What DNS learning trusts.
#[derive(Debug, Serialize)]
pub struct Dns {
    /// The resolvers whose answers are learned (answers to queries the router saw).
    pub resolvers: Vec<String>,
    /// `interfaces` (the LAN interfaces' own addresses: `[dns] resolvers` is empty) or
    /// `config`.
    pub resolvers_from: &'static str,
}

/// The compiled index (`XB_IDX_SLOTS`, `XB_IDX_CTL`).
#[derive(Debug, Serialize)]
pub struct Index {
    /// Whether the data plane classifies by the index (else by the tries: no table applied
    /// since the agent started, a table too big for `[index] memory-mib`, or memory 0).
    pub live: bool,
    /// Whether it decides IPv4 and IPv6 destinations: a family with fewer than 1000
    /// prefixes keeps to the tries, which are as fast at that size.
    pub ipv4: bool,
    pub ipv6: bool,
    /// Slots the live half uses (24 bytes each), and what a half holds.
    pub slots_used: u32,
    pub slots_per_half: u32,
    /// Distinct rule sets in the live half.
    pub rule_sets: u32,
    /// Kernel memory of both halves, MiB.
    pub memory_mib: f64,
}

/// A direct uplink's health.
#[derive(Clone, Debug, Serialize)]
pub struct Uplink {
    /// Its name (`direct` for the one uplink of `[health]`), interface, mark (hex) and
    /// routing table as configured.
    pub name: String,
    pub interface: Option<String>,
    pub mark: String,
    pub table: Option<u32>,
    /// `up`, `down` or `unchecked` (no agent status, no targets or interface, or
    /// `failover = "none"`).
    pub state: State,
    /// Whether the data plane sends direct verdicts to the tunnel now (`XB_CONFIG`'s
    /// `UPLINK_DOWN` flag, what the kernel reads).
    pub failing_over: bool,
    /// When the state last changed; null before a change.
    pub since: Option<Time>,
    /// Why it last changed.
    pub reason: Option<String>,
    /// Changes since the agent started.
    pub transitions: u64,
    /// Probes that failed since the agent started.
    pub failed_probes: u64,
    /// Each target's last probe: `target`, `ok`, `rtt_us` (microseconds), `error`.
    pub targets: Vec<ProbeResult>,
    /// RTT, jitter and loss over the last probe rounds; null before the first round (and
    /// without targets).
    pub quality: Option<Quality>,
    /// `good` or `degraded` (missed its SLA for `steering.degrade-after` rounds): new
    /// quality-sensitive flows avoid a degraded uplink, its flows stay.
    pub grade: crate::uplinks::Grade,
    /// Which figure misses its bound while degraded (`loss 2.0% (1 of 50 probes) > 0.1%`).
    pub degraded_because: Option<String>,
    /// When the grade last changed, and how often it did since the agent started.
    pub grade_since: Option<Time>,
    pub grade_changes: u64,
    /// Its SLA (`rtt 60ms, jitter 15ms, loss 0.1%`).
    pub sla: String,
    /// Its interface's addresses (what Microsoft sees without NAT), and its public NAT
    /// addresses as configured (`nat-address`).
    pub addresses: Vec<std::net::IpAddr>,
    pub nat_address: Vec<std::net::IpAddr>,
    /// Packets and bytes the kernel marked for it (`XB_UPLINK_STATS`).
    pub packets: u64,
    pub bytes: u64,
}

/// The direct uplink's quality, from the health probes (no probes of its own).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Quality {
    /// The mean round-trip time of the window's answered probes, milliseconds; null when
    /// none answered.
    pub rtt_ms: Option<f64>,
    /// The last round's (the mean over its targets that answered); null when none did.
    pub last_rtt_ms: Option<f64>,
    /// RFC 3550's jitter of consecutive RTTs (`J += (|D| - J)/16`), per target, averaged
    /// over the targets; milliseconds.
    pub jitter_ms: f64,
    /// The share of the window's probes that got no answer, 0 to 1.
    pub loss_ratio: f64,
    /// Probes in the window: the last 50 rounds (fewer since the agent started or
    /// reloaded), times the targets.
    pub window: u32,
}

impl Uplink {
    /// Its lines of `status`: the one uplink as before there were several, or each one
    /// under its name.
    fn write_text(&self, out: &mut impl std::io::Write, named: bool) -> std::io::Result<()> {
        let label = |what: &str| {
            let text = if named {
                format!("{what} {}:", self.name)
            } else {
                format!("{what}:")
            };
            format!("{text:<16}")
        };
        writeln!(
            out,
            "{}{}{} since {} ({}; {} transitions, {} failed probes)",
            label("uplink"),
            self.state,
            if self.failing_over {
                ", direct verdicts go to the tunnel"
            } else {
                ""
            },
            or_dash(self.since.as_ref()),
            or_dash(self.reason.as_ref()),
            self.transitions,
            self.failed_probes
        )?;
        if named {
            writeln!(
                out,
                "{}{} mark {}, table {}; {} packets marked",
                label("  route"),
                or_dash(self.interface.as_ref()),
                self.mark,
                or_dash(self.table.as_ref()),
                self.packets
            )?;
        }
        if let Some(quality) = &self.quality {
            let rtt = quality
                .rtt_ms
                .map_or_else(|| "-".to_owned(), |rtt| format!("{rtt:.1} ms"));
            writeln!(
                out,
                "{}rtt {rtt}, jitter {:.1} ms, loss {:.1}% over the last {} probes",
                label("quality"),
                quality.jitter_ms,
                quality.loss_ratio * 100.0,
                quality.window
            )?;
        }
        if !self.sla.is_empty() {
            match &self.degraded_because {
                Some(why) => writeln!(
                    out,
                    "{}degraded since {}: {why} (SLA {})",
                    label("grade"),
                    or_dash(self.grade_since.as_ref()),
                    self.sla
                )?,
                None => writeln!(out, "{}meets its SLA ({})", label("grade"), self.sla)?,
            }
        }
        if !self.addresses.is_empty() || !self.nat_address.is_empty() {
            let list = |addresses: &[std::net::IpAddr]| {
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                out,
                "{}{}{}",
                label("egress"),
                list(&self.addresses),
                if self.nat_address.is_empty() {
                    String::new()
                } else {
                    format!("; NAT {}", list(&self.nat_address))
                }
            )?;
        }
        for probe in &self.targets {
            match (&probe.error, probe.rtt_us) {
                (None, Some(rtt)) => {
                    writeln!(out, "{}{} ok in {rtt} us", label("probe"), probe.target)?;
                }
                (error, _) => writeln!(
                    out,
                    "{}{} failed: {}",
                    label("probe"),
                    probe.target,
                    or_dash(error.as_ref())
                )?,
            }
        }
        Ok(())
    }
}

impl From<Figures> for Quality {
    fn from(figures: Figures) -> Self {
        let Figures {
            rtt_us,
            last_rtt_us,
            jitter_us,
            probes,
            lost: _,
        } = figures;
        Self {
            rtt_ms: rtt_us.map(millis),
            last_rtt_ms: last_rtt_us.map(millis),
            jitter_ms: millis(jitter_us),
            loss_ratio: figures.loss_ratio(),
            window: probes,
        }
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "an RTT in microseconds is far below 2^52"
)]
fn millis(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// An interface xdp-breakout is attached to.
#[derive(Debug, Serialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// `xdp` (XDP classifies, tc ingress marks), `tc` (tc ingress alone, `--mode tc`), or
    /// `incomplete` when a link is missing.
    pub attach: &'static str,
    /// The XDP link; null when its pin is missing or no link (always in `tc` mode).
    pub xdp: Option<XdpLink>,
    /// The tc ingress link; null when its pin is missing or no link.
    pub tc: Option<Link>,
}

/// A pinned bpf_link and the program it runs.
#[derive(Debug, Serialize)]
pub struct Link {
    /// The kernel's id of the link (`bpftool link show id N`).
    pub link_id: u32,
    /// The kernel's id of its program (`bpftool prog show id N`).
    pub program_id: u32,
    /// The program's name (`breakout`, `breakout_mark`, `breakout_tc`); null when the kernel
    /// has none.
    pub program_name: Option<String>,
}

/// The XDP link, and the mode the kernel runs it in.
#[derive(Debug, Serialize)]
pub struct XdpLink {
    /// `link_id`, `program_id` and `program_name` (flattened into the object).
    #[serde(flatten)]
    pub link: Link,
    /// How the kernel runs the interface's XDP program (its `XDP_ATTACHED_*`): `native`,
    /// `skb`, `offload`, `multi` or `unknown`; `not visible in this network namespace` when
    /// the kernel reports none on it here.
    pub mode: &'static str,
}

/// The agent's process.
#[derive(Debug, Serialize)]
pub struct Agent {
    /// The pid it recorded.
    pub pid: u32,
    /// Whether that pid is an `xdp-breakout` process now.
    pub running: bool,
}

/// The feed, as the agent recorded it.
#[derive(Debug, Serialize)]
pub struct Feed {
    /// The Microsoft 365 instance (`Worldwide`, ...).
    pub instance: String,
    /// The feed service's base URL.
    pub url: String,
    /// The applied version, `YYYYMMDDNN` (`unknown` for a feed file); null before the first.
    pub version: Option<String>,
    /// When it was applied.
    pub applied_at: Option<Time>,
    /// Where it came from: the endpoints URL, a file, or `embedded snapshot VERSION`.
    pub source: Option<String>,
}

/// Prefix counts.
#[derive(Debug, Serialize)]
pub struct Prefixes {
    /// Entries of the IPv4 trie.
    pub ipv4: usize,
    /// Entries of the IPv6 trie.
    pub ipv6: usize,
}

/// The action of each category, `direct` or `tunnel`.
#[derive(Debug, Serialize)]
pub struct Policy {
    #[serde(rename = "Optimize")]
    pub optimize: &'static str,
    #[serde(rename = "Allow")]
    pub allow: &'static str,
    #[serde(rename = "Default")]
    pub default: &'static str,
}

pub fn run(global: &GlobalArgs, StatusArgs {}: &StatusArgs) -> anyhow::Result<()> {
    let pin_dir = global.pin_dir();
    let maps = super::pinned_maps(global)?;
    let config = maps.config()?;
    let policy = maps.policy()?;
    let installed = maps.installed()?;
    let status = read_status(&global.state_dir())?;
    let agent = status.as_ref();
    let m365 = agent.and_then(|status| status.source(crate::sources::M365));
    let failing_over = config.flags & flags::UPLINK_DOWN != 0;
    let counted = maps.uplink_stats()?;
    let recorded: Vec<&crate::state::Uplink> = match agent {
        Some(status) if !status.uplinks.is_empty() => status.uplinks.iter().collect(),
        Some(status) => status.uplink.iter().collect(),
        None => Vec::new(),
    };
    let mut uplinks: Vec<Uplink> = recorded
        .iter()
        .enumerate()
        .map(|(i, record)| {
            uplink(
                Some(record),
                config.mark,
                failing_over,
                counted.get(i).copied().unwrap_or_default(),
            )
        })
        .collect();
    if uplinks.is_empty() {
        uplinks.push(uplink(
            None,
            config.mark,
            failing_over,
            counted.first().copied().unwrap_or_default(),
        ));
    }
    let report = Report {
        interfaces: datapath::attached_interfaces(&pin_dir)
            .into_iter()
            .map(|iface| interface(&pin_dir, iface))
            .collect(),
        pin_dir,
        agent: agent.map(|status| Agent {
            pid: status.pid,
            running: std::fs::read_to_string(format!("/proc/{}/comm", status.pid))
                .is_ok_and(|comm| comm.trim() == "xdp-breakout"),
        }),
        feed: m365.map(feed),
        prefixes: Prefixes {
            ipv4: installed.v4.len(),
            ipv6: installed.v6.len(),
        },
        last_poll: m365.and_then(|s| s.last_attempt),
        next_poll: m365.and_then(|s| s.next_refresh),
        last_error: m365.and_then(|s| s.last_error.clone()),
        consecutive_failures: m365.map_or(0, |s| s.consecutive_failures),
        mark: super::mark(&config),
        strict_ports: config.flags & flags::STRICT_PORTS != 0,
        policy: Policy {
            optimize: action::name(policy[usize::from(category::OPTIMIZE)]),
            allow: action::name(policy[usize::from(category::ALLOW)]),
            default: action::name(policy[usize::from(category::DEFAULT)]),
        },
        uplink: uplinks.first().cloned().unwrap_or_else(|| {
            uplink(None, 0, failing_over, classifier_common::Counter::default())
        }),
        uplinks,
        steering: agent
            .map(|status| status.steering.clone())
            .unwrap_or_default(),
        dns: agent.and_then(|status| status.dns.as_ref()).map(|dns| Dns {
            resolvers: dns.resolvers.iter().map(ToString::to_string).collect(),
            resolvers_from: if dns.from_interfaces {
                "interfaces"
            } else {
                "config"
            },
        }),
        index: maps.index().map(|index| {
            let used = index.used();
            #[expect(clippy::cast_precision_loss, reason = "MiB for display")]
            let memory_mib = index.memory_bytes() as f64 / f64::from(1 << 20);
            let (ipv4, ipv6) = index.walks();
            Index {
                live: used.is_some(),
                ipv4,
                ipv6,
                slots_used: used.map_or(0, |(slots, _)| slots),
                slots_per_half: index.half_slots(),
                rule_sets: used.map_or(0, |(_, rules)| rules),
                memory_mib,
            }
        }),
    };
    let mut out = std::io::stdout().lock();
    if global.json {
        return super::write_json(&mut out, &report);
    }
    report.write_text(&mut out)?;
    Ok(())
}

fn uplink(
    recorded: Option<&crate::state::Uplink>,
    config_mark: u32,
    failing_over: bool,
    counted: classifier_common::Counter,
) -> Uplink {
    Uplink {
        name: recorded.map_or_else(
            || crate::uplinks::SINGLE.to_owned(),
            |uplink| uplink.name.clone(),
        ),
        interface: recorded.and_then(|uplink| uplink.interface.clone()),
        mark: format!(
            "{:#x}",
            recorded
                .map(|uplink| uplink.mark)
                .filter(|mark| *mark != 0)
                .unwrap_or(config_mark)
        ),
        table: recorded.and_then(|uplink| uplink.table),
        grade: recorded.map(|uplink| uplink.grade).unwrap_or_default(),
        degraded_because: recorded
            .and_then(|uplink| uplink.grade_reason.as_ref())
            .map(ToString::to_string),
        grade_since: recorded.and_then(|uplink| uplink.grade_since),
        grade_changes: recorded.map_or(0, |uplink| uplink.grade_changes),
        sla: recorded
            .map(|uplink| uplink.sla.clone())
            .unwrap_or_default(),
        addresses: recorded
            .map(|uplink| uplink.addresses.clone())
            .unwrap_or_default(),
        nat_address: recorded
            .map(|uplink| uplink.nat_address.clone())
            .unwrap_or_default(),
        packets: counted.packets,
        bytes: counted.bytes,
        state: recorded.map_or(State::Unchecked, |uplink| uplink.state),
        failing_over,
        since: recorded.and_then(|uplink| uplink.since),
        reason: recorded.and_then(|uplink| uplink.reason.clone()),
        transitions: recorded.map_or(0, |uplink| uplink.transitions),
        failed_probes: recorded.map_or(0, |uplink| uplink.failed_probes),
        targets: recorded
            .map(|uplink| uplink.targets.clone())
            .unwrap_or_default(),
        quality: recorded.and_then(|uplink| uplink.quality.map(Quality::from)),
    }
}

/// The `m365` source's row, as `status` showed `[feed]` before the sources were one model.
fn feed(m365: &SourceStatus) -> Feed {
    Feed {
        instance: m365.instance.clone().unwrap_or_default(),
        url: m365.location.clone(),
        version: m365.version.clone(),
        applied_at: m365.applied_at,
        source: m365.from.clone(),
    }
}

fn interface(pin_dir: &Path, name: String) -> Interface {
    let xdp = link(&xdp_link_pin(pin_dir, &name)).map(|link| XdpLink {
        link,
        mode: xdp_mode(&name),
    });
    let tc = link(&tc_link_pin(pin_dir, &name));
    let alone = tc.as_ref().and_then(|tc| tc.program_name.as_deref())
        == Some(classifier_common::names::TC_ONLY_PROGRAM);
    let attach = match (&xdp, &tc) {
        (None, Some(_)) if alone => "tc",
        (Some(_), Some(_)) if !alone => "xdp",
        _ => "incomplete",
    };
    Interface {
        name,
        attach,
        xdp,
        tc,
    }
}

/// The link pinned at `path`, if it is one the kernel knows.
fn link(path: &Path) -> Option<Link> {
    let info = FdLink::from(PinnedLink::from_pin(path).ok()?).info().ok()?;
    let program_name = loaded_programs()
        .filter_map(Result::ok)
        .find(|program| program.id() == info.program_id())
        .and_then(|program| program.name_as_str().map(str::to_owned));
    Some(Link {
        link_id: info.id(),
        program_id: info.program_id(),
        program_name,
    })
}

/// An interface of another network namespace is not visible to `ip`.
fn xdp_mode(iface: &str) -> &'static str {
    attached_xdp(iface).map_or("not visible in this network namespace", |xdp| xdp.mode)
}

impl Report {
    #[expect(clippy::too_many_lines, reason = "one line per field, in order")]
    fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let Self {
            pin_dir,
            interfaces,
            agent,
            feed,
            prefixes,
            last_poll,
            next_poll,
            last_error,
            consecutive_failures,
            mark,
            strict_ports,
            policy,
            uplink: _,
            uplinks,
            steering,
            index,
            dns,
        } = self;
        writeln!(out, "pin directory:  {}", pin_dir.display())?;
        if interfaces.is_empty() {
            writeln!(out, "interfaces:     none attached")?;
        }
        for Interface {
            name,
            attach,
            xdp,
            tc,
        } in interfaces
        {
            let xdp_link = xdp.as_ref().map(|xdp| &xdp.link);
            writeln!(
                out,
                "interface:      {name} ({attach}): XDP program {} ({}, {}), tc program {} ({})",
                or_dash(xdp_link.map(|link| link.program_id)),
                or_dash(xdp_link.and_then(|link| link.program_name.as_ref())),
                or_dash(xdp.as_ref().map(|xdp| xdp.mode)),
                or_dash(tc.as_ref().map(|link| link.program_id)),
                or_dash(tc.as_ref().and_then(|link| link.program_name.as_ref())),
            )?;
        }
        match agent {
            Some(Agent { pid, running }) => writeln!(
                out,
                "agent:          pid {pid}, {}",
                if *running { "running" } else { "not running" }
            )?,
            None => writeln!(
                out,
                "agent:          no status (not run with this --state-dir)"
            )?,
        }
        writeln!(
            out,
            "feed:           {} version {} applied {} from {}",
            or_dash(feed.as_ref().map(|feed| &feed.instance)),
            or_dash(feed.as_ref().and_then(|feed| feed.version.as_ref())),
            or_dash(feed.as_ref().and_then(|feed| feed.applied_at.as_ref())),
            or_dash(feed.as_ref().and_then(|feed| feed.source.as_ref())),
        )?;
        writeln!(
            out,
            "prefixes:       {} IPv4, {} IPv6",
            prefixes.ipv4, prefixes.ipv6
        )?;
        writeln!(out, "last poll:      {}", or_dash(last_poll.as_ref()))?;
        writeln!(out, "next poll:      {}", or_dash(next_poll.as_ref()))?;
        writeln!(
            out,
            "last error:     {} ({consecutive_failures} consecutive failures)",
            or_dash(last_error.as_ref())
        )?;
        writeln!(
            out,
            "marking:        {mark} for direct; strict ports {}",
            if *strict_ports { "on" } else { "off" }
        )?;
        writeln!(
            out,
            "policy:         Optimize {}, Allow {}, Default {}",
            policy.optimize, policy.allow, policy.default
        )?;
        let several = uplinks.len() > 1;
        for uplink in uplinks {
            uplink.write_text(out, several)?;
        }
        for row in steering {
            let to: Vec<String> = row
                .to
                .iter()
                .map(|(name, share)| {
                    if row.to.len() == 1 {
                        name.clone()
                    } else {
                        format!("{name} {share}%")
                    }
                })
                .collect();
            writeln!(
                out,
                "steering:       {} {}{} -> {}",
                row.category,
                row.policy,
                if row.sensitive { " (sensitive)" } else { "" },
                to.join(", ")
            )?;
        }
        match index {
            Some(index) if index.live => writeln!(
                out,
                "index:          live for {}, {} of {} slots a half, {} rule sets ({:.1} MiB \
                 both halves)",
                match (index.ipv4, index.ipv6) {
                    (true, true) => "IPv4 and IPv6",
                    (true, false) => "IPv4 (IPv6: the tries, under 1000 prefixes)",
                    (false, true) => "IPv6 (IPv4: the tries, under 1000 prefixes)",
                    (false, false) => "neither (the tries: under 1000 prefixes a family)",
                },
                index.slots_used,
                index.slots_per_half,
                index.rule_sets,
                index.memory_mib
            )?,
            Some(index) => writeln!(
                out,
                "index:          off, the tries classify ({:.1} MiB reserved)",
                index.memory_mib
            )?,
            None => writeln!(
                out,
                "index:          none in these pins (restart the agent)"
            )?,
        }
        if let Some(dns) = dns {
            writeln!(
                out,
                "dns:            learning the answers of {} ({})",
                if dns.resolvers.is_empty() {
                    "no resolver".to_owned()
                } else {
                    dns.resolvers.join(", ")
                },
                if dns.resolvers_from == "interfaces" {
                    "the LAN interfaces' addresses"
                } else {
                    "[dns] resolvers"
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc};

    #[test]
    #[expect(clippy::too_many_lines, reason = "one report with every field set")]
    fn every_field_is_documented() {
        let link = || Link {
            link_id: 7,
            program_id: 40,
            program_name: Some("breakout".into()),
        };
        let mut report = Report {
            pin_dir: "/sys/fs/bpf/xdp-breakout".into(),
            interfaces: vec![Interface {
                name: "lan0".into(),
                attach: "xdp",
                xdp: Some(XdpLink {
                    link: link(),
                    mode: "native",
                }),
                tc: Some(link()),
            }],
            agent: Some(Agent {
                pid: 1,
                running: true,
            }),
            feed: Some(Feed {
                instance: "Worldwide".into(),
                url: "https://endpoints.office.com".into(),
                version: Some("2026043000".into()),
                applied_at: Some(Time(0)),
                source: Some("embedded snapshot 2026043000".into()),
            }),
            prefixes: Prefixes { ipv4: 1, ipv6: 2 },
            last_poll: None,
            next_poll: None,
            last_error: None,
            consecutive_failures: 0,
            mark: "0x365/0xffff".into(),
            strict_ports: false,
            policy: Policy {
                optimize: "direct",
                allow: "tunnel",
                default: "tunnel",
            },
            uplink: Uplink {
                name: "direct".into(),
                interface: Some("wan0".into()),
                mark: "0x365".into(),
                table: Some(365),
                grade: crate::uplinks::Grade::Degraded,
                degraded_because: Some("loss 2.0% (1 of 50 probes) > 0.1%".into()),
                grade_since: Some(Time(0)),
                grade_changes: 1,
                sla: "rtt 60ms, jitter 15ms, loss 0.1%".into(),
                addresses: vec!["10.0.2.1".parse().unwrap()],
                nat_address: vec!["203.0.113.7".parse().unwrap()],
                packets: 10,
                bytes: 1000,
                state: State::Down,
                failing_over: true,
                since: Some(Time(0)),
                reason: Some("wan0: link down".into()),
                transitions: 1,
                failed_probes: 3,
                targets: vec![ProbeResult {
                    target: "tcp://52.112.0.1:443".into(),
                    ok: false,
                    rtt_us: None,
                    error: Some("no answer within 2000ms".into()),
                }],
                quality: Some(Quality::from(Figures {
                    rtt_us: Some(12_345),
                    last_rtt_us: None,
                    jitter_us: 800,
                    probes: 50,
                    lost: 0,
                })),
            },
            uplinks: Vec::new(),
            steering: vec![crate::state::SteerRow {
                category: "Optimize".into(),
                policy: "best".into(),
                sensitive: true,
                to: vec![("direct".into(), 100)],
            }],
            index: Some(Index {
                live: true,
                ipv4: true,
                ipv6: false,
                slots_used: 21_911,
                slots_per_half: 524_288,
                rule_sets: 61,
                memory_mib: 24.0,
            }),
            dns: Some(Dns {
                resolvers: vec!["10.0.1.1".into()],
                resolvers_from: "interfaces",
            }),
        };
        report.uplinks = vec![report.uplink.clone()];
        assert_documented_in(&report, &module_doc(include_str!("status.rs")));
        let mut text = Vec::new();
        report.write_text(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(
                "interface:      lan0 (xdp): XDP program 40 (breakout, native), tc program 40 \
                 (breakout)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "quality:        rtt 12.3 ms, jitter 0.8 ms, loss 0.0% over the last 50 probes"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "dns:            learning the answers of 10.0.1.1 (the LAN interfaces' addresses)"
            ),
            "{text}"
        );
        for line in [
            "grade:          degraded since 1970-01-01T00:00:00Z: loss 2.0% (1 of 50 probes) > \
             0.1% (SLA rtt 60ms, jitter 15ms, loss 0.1%)",
            "egress:         10.0.2.1; NAT 203.0.113.7",
            "steering:       Optimize best (sensitive) -> direct",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
