//! A plain list: one CIDR prefix a line (Zoom's `Zoom.txt`, Cloudflare's `ips-v4` and
//! `ips-v6`, an operator's own file). `#` starts a comment, blank lines and CRLF are fine, a
//! bare address is a host route. Overlapping prefixes are kept: the data plane takes the
//! longest.

use super::{Collect, Kind, Ranges, SourceError};

/// The longest line read: a prefix and a comment fit many times over.
pub const MAX_LINE: usize = 1024;

/// The prefixes of `body`; such lists have no version.
pub fn parse(body: &[u8]) -> Result<Ranges, SourceError> {
    let text = std::str::from_utf8(body).map_err(|error| SourceError::Shape {
        kind: Kind::CidrList,
        why: format!("not UTF-8 text ({error})"),
    })?;
    if text.trim_start().starts_with('<') {
        return Err(SourceError::Shape {
            kind: Kind::CidrList,
            why: "an HTML or XML page, not a list of prefixes".to_owned(),
        });
    }
    let mut collect = Collect::new(Kind::CidrList);
    let mut lines = 0;
    for (n, line) in text.lines().enumerate() {
        lines += 1;
        let at = || format!("line {}", n + 1);
        if line.len() > MAX_LINE {
            return Err(SourceError::Prefix {
                kind: Kind::CidrList,
                at: at(),
                text: line.chars().take(40).collect::<String>() + "...",
                why: format!("is longer than {MAX_LINE} bytes"),
            });
        }
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let prefix = match entry.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(addr)) => format!("{addr}/32"),
            Ok(std::net::IpAddr::V6(addr)) => format!("{addr}/128"),
            Err(_) => entry.to_owned(),
        };
        collect.add(true, &prefix, at)?;
    }
    collect.finish(None, lines, || "a list takes every line".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_keeps_its_overlapping_pair() {
        let zoom = parse(include_bytes!(
            "../../../tests/fixtures/providers/zoom-ipranges-20220109.txt"
        ))
        .unwrap();
        assert_eq!((zoom.v4.len(), zoom.v6.len()), (122, 0));
        assert_eq!(zoom.version, None);
        for pair in ["8.5.128.0/23", "8.5.128.0/24"] {
            assert!(zoom.v4.iter().any(|net| net.to_string() == pair), "{pair}");
        }
    }

    #[test]
    fn cloudflare_both_families() {
        let v4 = parse(include_bytes!(
            "../../../tests/fixtures/providers/cloudflare-ips-v4.txt"
        ))
        .unwrap();
        let v6 = parse(include_bytes!(
            "../../../tests/fixtures/providers/cloudflare-ips-v6.txt"
        ))
        .unwrap();
        assert_eq!((v4.v4.len(), v6.v6.len()), (15, 7));
        assert!(v6.v6.iter().any(|net| net.to_string() == "2606:4700::/32"));
    }

    #[test]
    fn comments_blank_lines_crlf_and_hosts() {
        let list =
            parse(b"# ours\r\n10.1.0.0/16  # office\r\n\r\n192.0.2.7\r\n2001:db8::1\n").unwrap();
        let all: Vec<String> = list
            .v4
            .iter()
            .map(ToString::to_string)
            .chain(list.v6.iter().map(ToString::to_string))
            .collect();
        assert_eq!(all, ["10.1.0.0/16", "192.0.2.7/32", "2001:db8::1/128"]);
    }

    #[test]
    fn bad_lists_name_the_line() {
        let bad = |body: &[u8]| parse(body).unwrap_err().to_string();
        assert_eq!(
            bad(b"10.0.0.0/8\n10.0.0.1/24\n"),
            "cidr-list: line 2: \"10.0.0.1/24\" has host bits set (the prefix is 10.0.0.0/24)"
        );
        assert_eq!(
            bad(b"10.0.0.0/8\nexample.com\n"),
            "cidr-list: line 2: \"example.com\" is not a CIDR prefix"
        );
        assert!(bad(b"<html><body>Not Found</body></html>").contains("HTML"));
        assert_eq!(
            bad(b"# nothing here\n\n"),
            "cidr-list: no prefix matched the filter (a list takes every line) among 2 entries"
        );
        let mut long = b"10.0.0.0/8 #".to_vec();
        long.extend(std::iter::repeat_n(b'x', 2000));
        assert!(bad(&long).contains("longer than 1024 bytes"));
        assert!(bad(&[0xff, 0xfe]).contains("UTF-8"));
    }
}
