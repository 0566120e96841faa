//! Local DNS for local egress: the forward zones that send the names of direct traffic to
//! resolvers reached through the direct uplink, rendered for dnsmasq or unbound, and the
//! policy rules that route the resolver's own queries to them through that uplink.
//!
//! Microsoft's connectivity principles pair local egress with local DNS: a resolver behind
//! the tunnel answers with front doors near the head office, so a name whose traffic leaves
//! through the direct uplink must be resolved by a resolver reached through it. The names
//! are the URL patterns of the Microsoft 365 endpoint sets whose category `[policy] direct`
//! sends direct, and the operator's `[[domains]]` rules with `policy = "direct"`; every
//! other name keeps the default (tunnel) resolver.
//!
//! A pattern becomes a zone ([`zone_of`]): an exact name is its own zone, a `*` pattern the
//! labels after the last label that holds a `*`. A forward zone covers its apex and every
//! name under it (`*.teams.microsoft.com` forwards `teams.microsoft.com` itself too): that
//! is how both resolvers define a zone, and the pattern's names all lie in it.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    dns::{DomainRule, LocalFormat, Resolver, normalize},
    feed::{Category, NamedSet},
    sources::SourcePolicy,
};

/// The priority of the policy rules that send the resolver's queries to `local-resolvers`
/// through the direct uplink's table: after the kernel's `local` rule (0) and the usual
/// fwmark rules (README: 1000), well before `main` (32766). 9365 echoes the mark's 0x365.
pub const RULE_PRIORITY: u32 = 9365;

/// `FRA_PROTOCOL` of those rules: who installed them (`ip rule` shows `proto 245`), so that
/// the agent and `detach` find exactly xdp-breakout's rules and no one else's. 245 is in no
/// `rt_protos` list of iproute2, bird or FRR.
pub const RULE_PROTOCOL: u8 = 245;

/// How long the reload command may run before it is killed.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Every name pattern of the inputs, normalized ([`normalize`]), with whether its traffic
/// goes direct: each Microsoft 365 source's named sets (direct when `direct` holds their
/// category) and the operator's `[[domains]]` rules (direct when their policy says so).
#[must_use]
pub fn names(
    m365: &[&[NamedSet]],
    domains: &[DomainRule],
    direct: &[Category],
) -> Vec<(String, bool)> {
    let sets = m365.iter().flat_map(|sets| sets.iter()).flat_map(|set| {
        let goes = direct.contains(&set.category) || set.category == Category::Direct;
        set.urls.iter().map(move |url| (url.as_str(), goes))
    });
    let rules = domains
        .iter()
        .map(|rule| (rule.name.as_str(), rule.policy == SourcePolicy::Direct));
    sets.chain(rules)
        .filter_map(|(pattern, goes)| Some((normalize(pattern)?, goes)))
        .collect()
}

/// The zone of a normalized pattern: an exact name is its own zone; a `*` pattern the labels
/// after the last label holding a `*` (`*.teams.microsoft.com` → `teams.microsoft.com`,
/// `autodiscover.*.onmicrosoft.com` → `onmicrosoft.com`, `*cdn.onenote.net` →
/// `onenote.net`). `None` when nothing is left (`foo.*`).
#[must_use]
pub fn zone_of(pattern: &str) -> Option<&str> {
    let labels: Vec<&str> = pattern.split('.').collect();
    let after = labels
        .iter()
        .rposition(|label| label.contains('*'))
        .map_or(0, |at| at + 1);
    if after >= labels.len() || labels[after..].iter().any(|label| label.is_empty()) {
        return None;
    }
    let start: usize = labels[..after].iter().map(|label| label.len() + 1).sum();
    Some(&pattern[start..])
}

/// Whether `zone` covers `name`: the apex and every name under it.
#[must_use]
pub fn covers(zone: &str, name: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

/// The forward zones, and what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zones {
    /// Sorted, none covered by another.
    pub zones: Vec<String>,
    /// Zones refused because they are a top-level domain or a single label (`*.com`).
    pub top_level: Vec<String>,
    /// Zones left out because they cover a name whose traffic goes to the tunnel: forwarding
    /// them would resolve that name outside the tunnel too.
    pub tunnel_inside: Vec<String>,
}

/// The forward zones of the direct names of `names` ([`names`]): each direct pattern's zone
/// ([`zone_of`]), without single-label zones (a TLD would send every name under it out of
/// the uplink's resolver), without zones that cover a tunnel name's zone (that name keeps
/// the tunnel's resolver; a name a direct pattern matches too goes direct, so is none), and
/// without zones covered by another zone of the list.
#[must_use]
pub fn zones(names: &[(String, bool)]) -> Zones {
    let mut out = Zones::default();
    let direct: Vec<&str> = names
        .iter()
        .filter(|(_, direct)| *direct)
        .map(|(pattern, _)| pattern.as_str())
        .collect();
    // A name that a direct pattern also matches goes direct (its addresses join the direct
    // set too): only the others are the tunnel's.
    let tunnel: Vec<&str> = names
        .iter()
        .filter(|(pattern, goes)| {
            !goes
                && !direct.iter().any(|other| {
                    other == pattern
                        || (!pattern.contains('*') && crate::dns::matches(other, pattern))
                })
        })
        .filter_map(|(pattern, _)| zone_of(pattern))
        .collect();
    let mut candidates = BTreeSet::new();
    let mut top_level = BTreeSet::new();
    let mut tunnel_inside = BTreeSet::new();
    for (pattern, _) in names.iter().filter(|(_, direct)| *direct) {
        let Some(zone) = zone_of(pattern) else {
            top_level.insert(pattern.clone());
            continue;
        };
        if !zone.contains('.') {
            top_level.insert(zone.to_owned());
        } else if tunnel.iter().any(|name| covers(zone, name)) {
            tunnel_inside.insert(zone.to_owned());
        } else {
            candidates.insert(zone.to_owned());
        }
    }
    out.zones = candidates
        .iter()
        .filter(|zone| {
            !candidates
                .iter()
                .any(|other| other != *zone && covers(other, zone))
        })
        .cloned()
        .collect();
    for zone in &top_level {
        tracing::warn!("local dns: {zone:?} is no zone of its own (a top-level domain): left out");
    }
    out.top_level = top_level.into_iter().collect();
    out.tunnel_inside = tunnel_inside.into_iter().collect();
    out
}

/// What the file's header says besides the zones: where the names came from, and why there
/// are no zones when the direct uplink is down.
#[derive(Clone, Debug, Default)]
pub struct About {
    /// Each input, as `pac_about` names a feed (`feed 2026043000 from https://...`), and the
    /// operator's rules.
    pub inputs: Vec<String>,
    /// Set while the direct uplink is down: the file then holds no zones.
    pub uplink_down: Option<String>,
}

/// The file for `format`: a header comment, then the zones forwarded to every resolver (none
/// while `about.uplink_down` is set, so that every name resolves through the default, tunnel
/// resolver again, as the traffic goes to the tunnel).
#[must_use]
pub fn render(format: LocalFormat, zones: &Zones, resolvers: &[Resolver], about: &About) -> String {
    let mut text = String::new();
    let clean = |line: &str| -> String { line.chars().filter(|c| !c.is_control()).collect() };
    let _ = writeln!(
        text,
        "# Generated by xdp-breakout: do not edit, it is rewritten when the feeds, the \
         configuration or the direct uplink change."
    );
    let _ = writeln!(
        text,
        "# The names that go direct, forwarded to the resolvers reached through the direct uplink."
    );
    for input in &about.inputs {
        let _ = writeln!(text, "# From {}.", clean(input));
    }
    let _ = writeln!(
        text,
        "# {} zones; left out: {} top-level or single-label, {} covering names that go to \
         the tunnel.",
        zones.zones.len(),
        zones.top_level.len(),
        zones.tunnel_inside.len()
    );
    if let Some(why) = &about.uplink_down {
        let _ = writeln!(
            text,
            "# The direct uplink is down ({}): no forward zones, every name resolves through \
             the default (tunnel) resolver.",
            clean(why)
        );
        return text;
    }
    for zone in &zones.zones {
        match format {
            LocalFormat::Dnsmasq => {
                for resolver in resolvers {
                    let _ = match resolver.port() {
                        53 => writeln!(text, "server=/{zone}/{}", resolver.ip()),
                        port => writeln!(text, "server=/{zone}/{}#{port}", resolver.ip()),
                    };
                }
            }
            LocalFormat::Unbound => {
                let _ = writeln!(text, "forward-zone:\n    name: \"{zone}.\"");
                for resolver in resolvers {
                    let _ = writeln!(
                        text,
                        "    forward-addr: {}@{}",
                        resolver.ip(),
                        resolver.port()
                    );
                }
            }
        }
    }
    text
}

/// Why the file could not be written, or the resolver not told.
#[derive(Debug, thiserror::Error)]
pub enum LocalDnsError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("running {command:?}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command:?} ran longer than {}s and was killed", RELOAD_TIMEOUT.as_secs())]
    Timeout { command: String },
    #[error("{command:?} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("policy rule for resolver {address} (table {table})")]
    Rule {
        address: IpAddr,
        table: u32,
        #[source]
        source: io::Error,
    },
    #[error("listing the policy rules")]
    Rules(#[source] io::Error),
}

/// Writes `content` to `path` unless the file holds exactly it already: a temporary file in
/// the same directory, fsync, mode 0644 (the resolver may run as another user), rename, so
/// that the resolver never reads half a file. Returns whether it wrote.
pub fn write_if_changed(path: &Path, content: &[u8]) -> Result<bool, LocalDnsError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let error = |source| LocalDnsError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temp)?;
        // The umask may have narrowed the mode.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(error)?;
    Ok(true)
}

/// Runs `words` (an argv, no shell) and waits at most [`RELOAD_TIMEOUT`]; a non-zero exit is an error
/// carrying its stderr.
pub fn reload(words: &[String]) -> Result<(), LocalDnsError> {
    use std::io::Read as _;
    let command = words.join(" ");
    let Some((program, args)) = words.split_first() else {
        return Ok(());
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| LocalDnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < RELOAD_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LocalDnsError::Timeout { command });
            }
            Err(source) => return Err(LocalDnsError::Spawn { command, source }),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    Err(LocalDnsError::Failed {
        command,
        status,
        stderr: stderr.trim().to_owned(),
    })
}

/// The policy rules that xdp-breakout keeps: `to ADDR/32 (or /128) lookup TABLE priority
/// 9365 proto 245`, one per resolver address whose family has a table.
#[must_use]
pub fn wanted_rules(
    resolvers: &[Resolver],
    table: impl Fn(IpAddr) -> Option<u32>,
) -> Vec<crate::netlink::Rule> {
    let mut rules: Vec<crate::netlink::Rule> = Vec::new();
    for resolver in resolvers {
        let Some(table) = table(resolver.ip()) else {
            continue;
        };
        let rule =
            crate::netlink::Rule::to_host(resolver.ip(), table, RULE_PRIORITY, RULE_PROTOCOL);
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    rules
}

/// The rules of ours installed now (both families).
pub fn our_rules() -> Result<Vec<crate::netlink::Rule>, LocalDnsError> {
    Ok(crate::netlink::rules()
        .map_err(LocalDnsError::Rules)?
        .into_iter()
        .filter(|rule| rule.protocol == RULE_PROTOCOL)
        .collect())
}

/// Makes the rules of ours exactly `wanted`: missing ones added, stale ones (a resolver
/// dropped from the configuration, another table) removed; rules of anyone else untouched.
/// Returns how many were added and removed.
pub fn sync_rules(wanted: &[crate::netlink::Rule]) -> Result<(usize, usize), LocalDnsError> {
    let installed = our_rules()?;
    let rule_error = |rule: &crate::netlink::Rule| {
        let rule = rule.clone();
        move |source| LocalDnsError::Rule {
            address: rule
                .dst
                .map_or(IpAddr::from([0, 0, 0, 0]), |dst| dst.addr()),
            table: rule.table,
            source,
        }
    };
    let mut added = 0;
    for rule in wanted.iter().filter(|rule| !installed.contains(rule)) {
        crate::netlink::add_rule(rule).map_err(rule_error(rule))?;
        added += 1;
    }
    let mut removed = 0;
    for rule in installed.iter().filter(|rule| !wanted.contains(rule)) {
        crate::netlink::delete_rule(rule).map_err(rule_error(rule))?;
        removed += 1;
    }
    Ok((added, removed))
}

/// What [`apply_rules`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesReport {
    pub added: usize,
    pub removed: usize,
    /// The families (`IPv4`, `IPv6`) of resolvers left without a rule: `local-table` unset
    /// and no rule matches the mark.
    pub no_table: Vec<&'static str>,
}

/// Installs the rules of `dns`'s resolvers, idempotently: the table is `local-table`, else
/// the one the `ip rule` of `fwmark` (value, mask) looks up in the resolver's family (none: no rule
/// for that family, and the report says so). Without resolvers, removes every rule of ours.
pub fn apply_rules(
    dns: &crate::dns::DnsConfig,
    fwmark: (u32, u32),
) -> Result<RulesReport, LocalDnsError> {
    let (v4, v6) = match dns.local_table {
        Some(table) => (Some(table), Some(table)),
        None if dns.local_resolvers.is_empty() => (None, None),
        None => mark_tables(fwmark)?,
    };
    let mut report = RulesReport::default();
    for (family, table, is_v6) in [("IPv4", v4, false), ("IPv6", v6, true)] {
        if table.is_none()
            && dns
                .local_resolvers
                .iter()
                .any(|resolver| resolver.ip().is_ipv6() == is_v6)
        {
            report.no_table.push(family);
        }
    }
    let wanted = wanted_rules(
        &dns.local_resolvers,
        |ip| if ip.is_ipv6() { v6 } else { v4 },
    );
    (report.added, report.removed) = sync_rules(&wanted)?;
    Ok(report)
}

/// Removes every rule of ours (`detach`); returns how many.
pub fn remove_rules() -> Result<usize, LocalDnsError> {
    sync_rules(&[]).map(|(_, removed)| removed)
}

/// How the header names the operator's rules, when there are any.
#[must_use]
pub fn domains_about(domains: &[DomainRule]) -> Option<String> {
    (!domains.is_empty()).then(|| format!("{} [[domains]] rules", domains.len()))
}

/// The table the direct mark's `ip rule` looks up, per family: the default of
/// `local-table`. `None` for a family without such a rule.
pub fn mark_tables(fwmark: (u32, u32)) -> Result<(Option<u32>, Option<u32>), LocalDnsError> {
    let (value, mask) = fwmark;
    let rules = crate::netlink::rules().map_err(LocalDnsError::Rules)?;
    let find = |v6: bool| {
        rules
            .iter()
            .filter(|rule| rule.v6 == v6 && rule.fwmark == Some(value))
            .find(|rule| rule.fwmask.unwrap_or(u32::MAX) == mask)
            .map(|rule| rule.table)
    };
    Ok((find(false), find(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(patterns: &[&str]) -> Vec<(String, bool)> {
        patterns.iter().map(|p| ((*p).to_owned(), true)).collect()
    }

    #[test]
    fn patterns_map_to_zones() {
        for (pattern, zone) in [
            ("outlook.office365.com", Some("outlook.office365.com")),
            ("*.teams.microsoft.com", Some("teams.microsoft.com")),
            ("autodiscover.*.onmicrosoft.com", Some("onmicrosoft.com")),
            ("*cdn.onenote.net", Some("onenote.net")),
            ("a.*.b.*.example.com", Some("example.com")),
            ("*.com", Some("com")),
            ("foo.*", None),
            ("*", None),
        ] {
            assert_eq!(zone_of(pattern), zone, "{pattern}");
        }
        assert!(covers("teams.microsoft.com", "teams.microsoft.com"));
        assert!(covers("teams.microsoft.com", "a.b.teams.microsoft.com"));
        assert!(!covers("teams.microsoft.com", "evilteams.microsoft.com"));
        assert!(!covers("teams.microsoft.com", "microsoft.com"));
    }

    #[test]
    fn covered_zones_and_top_level_domains_are_left_out() {
        let zones = zones(&direct(&[
            "*.teams.microsoft.com",
            "x.teams.microsoft.com",
            "teams.microsoft.com",
            "*.lync.com",
            "*.com",
            "foo.*",
            "a.lync.com",
            "outlook.office.com",
            "*.office.com",
        ]));
        assert_eq!(
            zones.zones,
            ["lync.com", "office.com", "teams.microsoft.com"]
        );
        assert_eq!(zones.top_level, ["com", "foo.*"]);
        assert!(zones.tunnel_inside.is_empty());
    }

    #[test]
    fn a_zone_over_a_tunnel_name_is_left_out() {
        let mut names = direct(&["*.contoso.com", "*.lync.com", "*.live.com"]);
        // The apex: `*.contoso.com` does not match it, the zone `contoso.com` would cover it.
        names.push(("contoso.com".to_owned(), false));
        names.push(("*.com".to_owned(), false));
        // Also matched by a direct pattern, so direct: no conflict.
        names.push(("*.live.com".to_owned(), false));
        names.push(("cdn.live.com".to_owned(), false));
        let zones = zones(&names);
        assert_eq!(zones.zones, ["live.com", "lync.com"]);
        assert_eq!(zones.tunnel_inside, ["contoso.com"]);
    }

    #[test]
    fn names_take_the_direct_categories_and_rules() {
        let sets = vec![
            NamedSet {
                id: 1,
                service_area: "Exchange".into(),
                category: Category::Optimize,
                urls: vec!["Outlook.Office365.com".into()],
                tcp: Vec::new(),
                udp: Vec::new(),
            },
            NamedSet {
                id: 2,
                service_area: "Common".into(),
                category: Category::Default,
                urls: vec!["*.msocdn.com".into()],
                tcp: Vec::new(),
                udp: Vec::new(),
            },
        ];
        let rules = [
            DomainRule {
                name: "*.zoom.us".into(),
                policy: SourcePolicy::Direct,
                tcp: None,
                udp: None,
            },
            DomainRule {
                name: "intranet.example".into(),
                policy: SourcePolicy::Tunnel,
                tcp: None,
                udp: None,
            },
        ];
        let names = names(&[&sets], &rules, &[Category::Optimize, Category::Allow]);
        assert_eq!(
            names,
            [
                ("outlook.office365.com".to_owned(), true),
                ("*.msocdn.com".to_owned(), false),
                ("*.zoom.us".to_owned(), true),
                ("intranet.example".to_owned(), false),
            ]
        );
    }

    fn small() -> (Zones, Vec<Resolver>, About) {
        let zones = zones(&direct(&["*.teams.microsoft.com", "outlook.office365.com"]));
        let resolvers = ["192.0.2.53", "[2001:db8::53]:5353", "198.51.100.7:53"]
            .map(|text| text.parse().unwrap())
            .to_vec();
        let about = About {
            inputs: vec!["feed 2026043000 from https://endpoints.office.com".into()],
            uplink_down: None,
        };
        (zones, resolvers, about)
    }

    const HEADER: &str = "\
# Generated by xdp-breakout: do not edit, it is rewritten when the feeds, the configuration or the direct uplink change.
# The names that go direct, forwarded to the resolvers reached through the direct uplink.
# From feed 2026043000 from https://endpoints.office.com.
# 2 zones; left out: 0 top-level or single-label, 0 covering names that go to the tunnel.
";

    #[test]
    fn dnsmasq_rendering() {
        let (zones, resolvers, about) = small();
        assert_eq!(
            render(LocalFormat::Dnsmasq, &zones, &resolvers, &about),
            format!(
                "{HEADER}\
server=/outlook.office365.com/192.0.2.53
server=/outlook.office365.com/2001:db8::53#5353
server=/outlook.office365.com/198.51.100.7
server=/teams.microsoft.com/192.0.2.53
server=/teams.microsoft.com/2001:db8::53#5353
server=/teams.microsoft.com/198.51.100.7
"
            )
        );
    }

    #[test]
    fn unbound_rendering() {
        let (zones, resolvers, about) = small();
        assert_eq!(
            render(LocalFormat::Unbound, &zones, &resolvers, &about),
            format!(
                "{HEADER}\
forward-zone:
    name: \"outlook.office365.com.\"
    forward-addr: 192.0.2.53@53
    forward-addr: 2001:db8::53@5353
    forward-addr: 198.51.100.7@53
forward-zone:
    name: \"teams.microsoft.com.\"
    forward-addr: 192.0.2.53@53
    forward-addr: 2001:db8::53@5353
    forward-addr: 198.51.100.7@53
"
            )
        );
    }

    #[test]
    fn no_zones_while_the_uplink_is_down() {
        let (zones, resolvers, mut about) = small();
        about.uplink_down = Some("3 failed rounds".into());
        for format in [LocalFormat::Dnsmasq, LocalFormat::Unbound] {
            let text = render(format, &zones, &resolvers, &about);
            assert!(text.lines().all(|line| line.starts_with('#')), "{text}");
            assert!(
                text.contains("direct uplink is down (3 failed rounds)"),
                "{text}"
            );
        }
    }

    #[test]
    fn resolvers_parse_with_ports_and_print_back() {
        for (text, shown, port) in [
            ("192.0.2.53", "192.0.2.53", 53),
            ("198.51.100.7:53", "198.51.100.7", 53),
            ("[2001:db8::53]:5353", "[2001:db8::53]:5353", 5353),
            ("2001:db8::53", "2001:db8::53", 53),
        ] {
            let resolver: Resolver = text.parse().unwrap();
            assert_eq!(
                (resolver.to_string().as_str(), resolver.port()),
                (shown, port)
            );
        }
        assert!("resolver.example".parse::<Resolver>().is_err());
        assert!("192.0.2.53:99999".parse::<Resolver>().is_err());
    }

    #[test]
    fn the_keys_refuse_what_cannot_work() {
        use crate::dns::DnsConfig;
        let with = |resolvers: &[&str]| DnsConfig {
            local_resolvers: resolvers.iter().map(|r| r.parse().unwrap()).collect(),
            ..DnsConfig::default()
        };
        for (config, key) in [
            (with(&["0.0.0.0"]), "local-resolvers"),
            (with(&["::"]), "local-resolvers"),
            (with(&["224.0.0.251"]), "local-resolvers"),
            (with(&["ff02::fb"]), "local-resolvers"),
            (with(&["255.255.255.255"]), "local-resolvers"),
            (with(&["192.0.2.53", "192.0.2.53:53"]), "local-resolvers"),
            (with(&["192.0.2.1:0"]), "local-resolvers"),
            (
                with(&[
                    "192.0.2.1",
                    "192.0.2.2",
                    "192.0.2.3",
                    "192.0.2.4",
                    "192.0.2.5",
                    "192.0.2.6",
                    "192.0.2.7",
                    "192.0.2.8",
                    "192.0.2.9",
                ]),
                "local-resolvers",
            ),
            (
                DnsConfig {
                    local_config: Some("/etc/dnsmasq.d/x.conf".into()),
                    ..DnsConfig::default()
                },
                "local-config",
            ),
            (
                DnsConfig {
                    local_config: Some("x.conf".into()),
                    ..with(&["192.0.2.53"])
                },
                "local-config",
            ),
            (
                DnsConfig {
                    local_reload: vec![String::new()],
                    ..DnsConfig::default()
                },
                "local-reload",
            ),
            (
                DnsConfig {
                    local_table: Some(0),
                    ..DnsConfig::default()
                },
                "local-table",
            ),
        ] {
            assert_eq!(config.validate().map_err(|e| e.key), Err(key), "{config:?}");
        }
        assert_eq!(with(&["192.0.2.53", "192.0.2.53:5353"]).validate(), Ok(()));
    }
}
