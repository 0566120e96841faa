//! Google's `goog.json` and `cloud.json` (`https://www.gstatic.com/ipranges/`): `{syncToken,
//! creationTime, prefixes: [{ipv4Prefix | ipv6Prefix, service, scope}]}`.

use serde::Deserialize;

use super::{Collect, Kind, Ranges, SourceError, describe, json, passes};

/// Which entries to take: empty lists take every scope, every service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `scope` names (`us-central1`, `europe-west4`, ...).
    pub scopes: Vec<String>,
    /// `service` names (`Google Cloud`).
    pub services: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "syncToken")]
    sync_token: String,
    prefixes: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "ipv4Prefix")]
    ipv4: Option<String>,
    #[serde(rename = "ipv6Prefix")]
    ipv6: Option<String>,
    #[serde(default)]
    service: String,
    #[serde(default)]
    scope: String,
}

/// The prefixes of `body` that `filter` takes; the version is the `syncToken`.
pub fn parse(body: &[u8], filter: &Filter) -> Result<Ranges, SourceError> {
    let file: File = json(Kind::Google, body)?;
    let mut collect = Collect::new(Kind::Google);
    for (i, entry) in file.prefixes.iter().enumerate() {
        let takes =
            passes(&filter.scopes, &entry.scope) && passes(&filter.services, &entry.service);
        match (&entry.ipv4, &entry.ipv6) {
            (Some(prefix), None) => {
                collect.add(takes, prefix, || format!("prefixes[{i}].ipv4Prefix"))?;
            }
            (None, Some(prefix)) => {
                collect.add(takes, prefix, || format!("prefixes[{i}].ipv6Prefix"))?;
            }
            _ => {
                return Err(SourceError::Shape {
                    kind: Kind::Google,
                    why: format!("prefixes[{i}] has not exactly one of ipv4Prefix, ipv6Prefix"),
                });
            }
        }
    }
    collect.finish(Some(file.sync_token), file.prefixes.len(), || {
        format!(
            "{}; {}",
            describe("scope", &filter.scopes),
            describe("service", &filter.services)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static FILE: &[u8] =
        include_bytes!("../../../tests/fixtures/providers/google-cloud-1753409788780.json");

    #[test]
    fn the_real_file_and_a_scope() {
        let all = parse(FILE, &Filter::default()).unwrap();
        assert_eq!(all.len(), 782, "no repeats in cloud.json");
        assert_eq!(all.version.as_deref(), Some("1753409788780"));
        assert!(all.v4.iter().any(|net| net.to_string() == "34.1.208.0/20"));
        let central = parse(
            FILE,
            &Filter {
                scopes: vec!["us-central1".into()],
                services: vec!["Google Cloud".into()],
            },
        )
        .unwrap();
        assert_eq!((central.v4.len(), central.v6.len()), (87, 1));
    }

    #[test]
    fn bad_answers_name_what_and_where() {
        let bad = |body: &str| {
            parse(body.as_bytes(), &Filter::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("<!DOCTYPE html>").contains("HTML"));
        assert!(bad("{}").contains("missing field"));
        assert_eq!(
            bad(
                r#"{"syncToken":"1","prefixes":[{"ipv4Prefix":"34.1.208.0/20","ipv6Prefix":"2600:1900::/28"}]}"#
            ),
            "google: not the file of a google source: prefixes[0] has not exactly one of \
             ipv4Prefix, ipv6Prefix"
        );
        assert_eq!(
            bad(r#"{"syncToken":"1","prefixes":[{"ipv6Prefix":"2600:1900::1/28","scope":"x"}]}"#),
            "google: prefixes[0].ipv6Prefix: \"2600:1900::1/28\" has host bits set (the prefix \
             is 2600:1900::/28)"
        );
    }
}
