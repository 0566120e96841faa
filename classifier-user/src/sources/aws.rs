//! AWS `ip-ranges.json` (`https://ip-ranges.amazonaws.com/ip-ranges.json`): `{syncToken,
//! createDate, prefixes: [{ip_prefix, region, service, network_border_group}],
//! ipv6_prefixes: [{ipv6_prefix, ...}]}`. A prefix is listed once per service that uses it
//! (`AMAZON` lists most of them), so it may appear several times; it counts once.

use serde::Deserialize;

use super::{Collect, Kind, Ranges, SourceError, describe, json, passes};

/// Which entries to take: empty lists take every service, every region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `service` names, as AWS spells them (`CLOUDFRONT`, `S3`, `EC2`, ...).
    pub services: Vec<String>,
    /// `region` names (`us-east-1`, `GLOBAL`, ...).
    pub regions: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "syncToken")]
    sync_token: String,
    prefixes: Vec<V4Entry>,
    ipv6_prefixes: Vec<V6Entry>,
}

#[derive(Deserialize)]
struct V4Entry {
    ip_prefix: String,
    region: String,
    service: String,
}

#[derive(Deserialize)]
struct V6Entry {
    ipv6_prefix: String,
    region: String,
    service: String,
}

/// The prefixes of `body` that `filter` takes; the version is the `syncToken`.
pub fn parse(body: &[u8], filter: &Filter) -> Result<Ranges, SourceError> {
    let file: File = json(Kind::Aws, body)?;
    let mut collect = Collect::new(Kind::Aws);
    let wanted = |service: &str, region: &str| {
        passes(&filter.services, service) && passes(&filter.regions, region)
    };
    for (i, entry) in file.prefixes.iter().enumerate() {
        collect.add(
            wanted(&entry.service, &entry.region),
            &entry.ip_prefix,
            || format!("prefixes[{i}].ip_prefix"),
        )?;
    }
    for (i, entry) in file.ipv6_prefixes.iter().enumerate() {
        collect.add(
            wanted(&entry.service, &entry.region),
            &entry.ipv6_prefix,
            || format!("ipv6_prefixes[{i}].ipv6_prefix"),
        )?;
    }
    collect.finish(
        Some(file.sync_token),
        file.prefixes.len() + file.ipv6_prefixes.len(),
        || {
            format!(
                "{}; {}",
                describe("service", &filter.services),
                describe("region", &filter.regions)
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    static FILE: &[u8] =
        include_bytes!("../../../tests/fixtures/providers/aws-ip-ranges-1753388594.json");

    fn filter(services: &[&str], regions: &[&str]) -> Filter {
        Filter {
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            regions: regions.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn the_real_file_counts_each_prefix_once() {
        let ranges = parse(FILE, &Filter::default()).unwrap();
        // 8,971 IPv4 and 4,373 IPv6 entries, of which 6,850 and 2,216 distinct prefixes.
        assert_eq!((ranges.v4.len(), ranges.v6.len()), (6850, 2216));
        assert_eq!(ranges.version.as_deref(), Some("1753388594"));
        // `AMAZON` lists most prefixes, not all of them (7,284 of 9,066 in this file).
        let amazon = parse(FILE, &filter(&["AMAZON"], &[])).unwrap();
        assert_eq!(amazon.len(), 7284);
    }

    #[test]
    fn filters_take_services_and_regions() {
        let cloudfront = parse(FILE, &filter(&["CLOUDFRONT"], &["GLOBAL"])).unwrap();
        assert_eq!(cloudfront.v4.len(), 100);
        assert!(
            cloudfront
                .v4
                .iter()
                .any(|net| net.to_string() == "120.52.22.96/27")
        );
        let s3 = parse(FILE, &filter(&["S3"], &["eu-west-1"])).unwrap();
        assert!(!s3.is_empty());
        assert!(s3.len() < cloudfront.len() * 10);
        let error = parse(FILE, &filter(&["CLOUDFRONT"], &["mars-1"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "aws: no prefix matched the filter (service: CLOUDFRONT; region: mars-1) among 13344 \
             entries"
        );
    }

    #[test]
    fn bad_answers_name_what_and_where() {
        let bad = |body: &str| {
            parse(body.as_bytes(), &Filter::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("<html>busy</html>").contains("HTML"));
        assert!(bad(r#"{"syncToken":"1","prefixes":["#).starts_with("aws: not the file"));
        assert!(bad("[]").starts_with("aws: not the file"));
        assert!(bad(r#"{"syncToken":"1","prefixes":[]}"#).contains("ipv6_prefixes"));
        assert_eq!(
            bad(r#"{"syncToken":"1","prefixes":[],"ipv6_prefixes":[]}"#),
            "aws: no prefix matched the filter (service: any; region: any) among 0 entries"
        );
        let host_bits = r#"{"syncToken":"1","new_field":true,"prefixes":[
            {"ip_prefix":"3.5.140.0/22","region":"a","service":"S3"},
            {"ip_prefix":"3.5.140.1/22","region":"a","service":"S3"}],"ipv6_prefixes":[]}"#;
        assert_eq!(
            bad(host_bits),
            "aws: prefixes[1].ip_prefix: \"3.5.140.1/22\" has host bits set (the prefix is \
             3.5.140.0/22)"
        );
    }
}
