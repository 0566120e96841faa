//! A proxy auto-config file from the Microsoft 365 feed, as Microsoft's `Get-PacFile` makes
//! it: the URLs and wildcards of the categories that go direct return `DIRECT`, everything
//! else the proxy. Type 1 sends Optimize direct, type 2 Optimize and Allow; by default the
//! categories `[policy] direct` names, so the PAC file and the data plane agree.
//!
//! Nothing of the feed reaches the JavaScript unchecked: an entry must be a host name or a
//! `*` wildcard of one (`[a-z0-9.*-]`, at most 253 characters), and the proxy string is
//! checked by [`check_proxy`]; both are written as JSON string literals.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    feed::{Category, NamedSet},
    settings::Invalid,
};

/// The longest host name (RFC 1035).
const MAX_HOST: usize = 253;

/// The PAC file made from the feed (`xdp-breakout pac`, and `GET /proxy.pac`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct PacConfig {
    /// Serve it at `GET /proxy.pac` on `[metrics] listen`, regenerated with every feed.
    pub serve: bool,
    /// What everything else gets: `PROXY host:port` (or `PROXY a:1; PROXY b:2; DIRECT`).
    pub proxy: String,
    /// Microsoft's type 1 (Optimize direct) or 2 (Optimize and Allow); unset: the
    /// categories `[policy] direct` sends direct.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#type: Option<u8>,
}

impl PacConfig {
    /// A type Microsoft defines and a proxy string browsers can read. Whether it can be
    /// served depends on `[metrics]`: the configuration checks that.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(kind) = self.r#type
            && !(1..=2).contains(&kind)
        {
            return Err(Invalid::new("type", format!("{kind} is not 1 or 2")));
        }
        check_proxy(&self.proxy).map_err(|why| Invalid::new("proxy", why))
    }
}

/// The settings the PAC file is made from besides the feeds. A whole configuration converts
/// into it, so that this module needs no [`crate::config::Config`].
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub pac: &'a PacConfig,
    /// The categories `[policy] direct` sends direct: what goes direct unless a type is given.
    pub direct: Vec<Category>,
}

/// The host patterns of the sets of `categories`, lowercased, sorted and without repeats;
/// and the entries left out because they are no host pattern.
#[must_use]
pub fn hosts(sets: &[NamedSet], categories: &[Category]) -> (Vec<String>, usize) {
    let mut hosts = BTreeSet::new();
    let mut skipped = 0;
    for set in sets.iter().filter(|set| categories.contains(&set.category)) {
        for url in &set.urls {
            let host = url.trim().to_ascii_lowercase();
            if is_host_pattern(&host) {
                hosts.insert(host);
            } else {
                skipped += 1;
            }
        }
    }
    (hosts.into_iter().collect(), skipped)
}

/// `[a-z0-9.*-]`, 1 to 253 characters, not all wildcards and dots.
#[must_use]
pub fn is_host_pattern(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST
        && host.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b".*-".contains(&byte)
        })
        && host.bytes().any(|byte| byte.is_ascii_alphanumeric())
}

/// A PAC return value: `DIRECT`, or `PROXY`/`HTTPS`/`SOCKS`/`SOCKS4`/`SOCKS5` `host:port`,
/// several joined by `;`. Empty is allowed (not configured).
pub fn check_proxy(proxy: &str) -> Result<(), String> {
    if proxy.is_empty() {
        return Ok(());
    }
    if proxy.len() > 1024 {
        return Err("longer than 1024 characters".to_owned());
    }
    for item in proxy.split(';').map(str::trim) {
        if item == "DIRECT" {
            continue;
        }
        let Some((kind, target)) = item.split_once(' ') else {
            return Err(format!(
                "{item:?} is not DIRECT or PROXY host:port (HTTPS, SOCKS, SOCKS4, SOCKS5)"
            ));
        };
        if !["PROXY", "HTTPS", "SOCKS", "SOCKS4", "SOCKS5"].contains(&kind) {
            return Err(format!(
                "{kind:?} is not PROXY, HTTPS, SOCKS, SOCKS4 or SOCKS5"
            ));
        }
        let target = target.trim();
        let port_ok = target.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !port_ok
            || !target
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b".:-_[]".contains(&byte))
        {
            return Err(format!("{target:?} is not host:port"));
        }
    }
    Ok(())
}

/// The categories of Microsoft's PAC type 1 (Optimize) or 2 (Optimize and Allow).
#[must_use]
pub fn type_categories(kind: u8) -> Vec<Category> {
    if kind == 1 {
        vec![Category::Optimize]
    } else {
        vec![Category::Optimize, Category::Allow]
    }
}

/// The PAC file: `hosts` direct, the rest to `proxy`; `about` goes into the heading comment.
#[must_use]
pub fn render(hosts: &[String], proxy: &str, about: &str) -> String {
    use std::fmt::Write as _;
    let literal = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    let mut pac = String::new();
    let about: String = about
        .chars()
        .filter(|c| !c.is_control() && *c != '*' && *c != '/')
        .collect();
    let _ = writeln!(pac, "// Generated by xdp-breakout: {about}.");
    let _ = writeln!(
        pac,
        "// The hosts below go direct, as the router's breakout sends them; the rest to the proxy."
    );
    pac.push_str("function FindProxyForURL(url, host)\n{\n");
    let _ = writeln!(pac, "    var direct = \"DIRECT\";");
    let _ = writeln!(pac, "    var proxyServer = {};", literal(proxy));
    pac.push_str("    host = host.toLowerCase();\n");
    if !hosts.is_empty() {
        pac.push_str("    if (");
        for (i, host) in hosts.iter().enumerate() {
            if i > 0 {
                pac.push_str("\n        || ");
            }
            let _ = write!(pac, "shExpMatch(host, {})", literal(host));
        }
        pac.push_str(")\n    {\n        return direct;\n    }\n");
    }
    pac.push_str("    return proxyServer;\n}\n");
    pac
}

/// The PAC file of `feeds`: each Microsoft 365 feed's named sets, and how the file's header
/// names it. `kind` (type 1 or 2) and `proxy` override `[pac]`.
pub fn build<'a>(
    config: impl Into<Inputs<'a>>,
    feeds: &[(String, &[NamedSet])],
    kind: Option<u8>,
    proxy: Option<&str>,
) -> Result<String, String> {
    let config = config.into();
    let proxy = proxy.unwrap_or(&config.pac.proxy);
    check_proxy(proxy).map_err(|why| format!("the proxy {proxy:?}: {why}"))?;
    if proxy.is_empty() {
        return Err(
            "no proxy for the other traffic: give --proxy \"PROXY host:port\" or [pac] proxy"
                .to_owned(),
        );
    }
    let categories = match kind.or(config.pac.r#type) {
        Some(kind) => type_categories(kind),
        None => config.direct,
    };
    let mut all = Vec::new();
    let mut skipped = 0;
    for (_, sets) in feeds {
        let (hosts, left_out) = hosts(sets, &categories);
        all.extend(hosts);
        skipped += left_out;
    }
    all.sort_unstable();
    all.dedup();
    let names: Vec<String> = categories.iter().map(ToString::to_string).collect();
    if skipped > 0 {
        tracing::warn!("pac: left out {skipped} feed entries that are no host name");
    }
    let about: Vec<&str> = feeds.iter().map(|(about, _)| about.as_str()).collect();
    Ok(render(
        &all,
        proxy,
        &format!(
            "{}; {} direct ({} hosts)",
            about.join(", "),
            names.join(" and "),
            all.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEED: &[u8] =
        include_bytes!("../../tests/fixtures/m365-worldwide-endpoints-2026043000.json");

    #[test]
    fn types_take_their_categories() {
        let sets = crate::feed::named_sets(FEED).unwrap();
        let (optimize, skipped) = hosts(&sets, &type_categories(1));
        let (both, _) = hosts(&sets, &type_categories(2));
        assert_eq!(skipped, 0);
        assert!(
            optimize.contains(&"outlook.office365.com".to_owned()),
            "{optimize:?}"
        );
        assert!(both.len() > optimize.len());
        assert!(optimize.iter().all(|host| both.contains(host)));
        assert!(both.contains(&"autodiscover.*.onmicrosoft.com".to_owned()) || !both.is_empty());
    }

    #[test]
    fn hostile_entries_and_proxies_never_reach_the_script() {
        let feed = br#"[{"id": 1, "category": "Optimize", "urls": ["ok.example.com", "x\"); alert(1); (\"", "", "*.*", "a b.com"]}]"#;
        let sets = crate::feed::named_sets(feed).unwrap();
        let (hosts, skipped) = hosts(&sets, &[Category::Optimize]);
        assert_eq!((hosts, skipped), (vec!["ok.example.com".to_owned()], 4));
        for bad in [
            "PROXY a:1\"; alert(1)",
            "PROXY",
            "PROXY host",
            "PROXY host:0",
            "FTP host:21",
            "PROXY ho st:80",
        ] {
            assert!(check_proxy(bad).is_err(), "{bad}");
        }
        for good in [
            "PROXY proxy.branch:3128",
            "PROXY a:1; PROXY b:2; DIRECT",
            "HTTPS [2001:db8::1]:443",
            "",
        ] {
            assert_eq!(check_proxy(good), Ok(()), "{good}");
        }
        let pac = render(&["ok.example.com".to_owned()], "PROXY p:1", "a */ b");
        assert!(
            pac.contains("shExpMatch(host, \"ok.example.com\")"),
            "{pac}"
        );
        assert!(
            pac.starts_with("// Generated by xdp-breakout: a  b.\n"),
            "{pac}"
        );
    }
}
