//! `xdp-breakout lookup ADDRESS... [--proto tcp|udp --port N]`, or `lookup -` for lines
//! `ADDRESS [tcp|udp PORT]` on stdin.
//!
//! JSON (stable): one object per query and line, [`Answer`]: `{"address", "proto" ("tcp",
//! "udp" or null), "port", "prefix" (or null), "endpoint_sets" (ids of the feed's sets whose
//! prefixes hold the address), "decided_by" (the set whose rule or category decided, or
//! null), "source" (the source that set belongs to: "m365", a `[[sources]]` name,
//! "operator", "domains", or null), "learned_from" (the DNS name the decisive address was
//! learned from, or null), "service_area", "category" ("Optimize", "Allow", "Default",
//! "Direct", "Tunnel" or null), "reason",
//! "action" ("direct" or "tunnel"), "mark" (the mark a direct packet gets, or null)}`. With
//! `lookup -`, a line that is no question gets [`BadLine`] in its place: `{"line", "error"}`.

use std::{
    io::{self, BufRead, Write as _},
    net::IpAddr,
};

use anyhow::{Context as _, bail};
use classifier_common::{action, category, proto};
use ipnet::IpNet;
use serde::Serialize;

use super::or_dash;
use crate::{
    cli::{GlobalArgs, LookupArgs, Proto},
    explain::{Catalog, Oracle, reason_name},
};

/// The longest question line read from stdin: an IPv6 address, a protocol and a port fit in
/// 60 bytes; the rest is room for spaces. A longer line is skipped, not buffered.
pub const MAX_LINE: usize = 1024;

/// One line of stdin, read without buffering more than [`MAX_LINE`] bytes of it.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Text(Vec<u8>),
    /// Longer than [`MAX_LINE`]: its length and first bytes.
    TooLong {
        len: usize,
        start: Vec<u8>,
    },
}

/// Reads one line (without its newline); `None` at the end of input.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut len = 0usize;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(end) => (&chunk[..end], Some(end + 1)),
            None => (chunk, None),
        };
        let room = (MAX_LINE + 1).saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        len = len.saturating_add(part.len());
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Some(finish(line, len)));
        }
    }
    Ok((len > 0).then(|| finish(line, len)))
}

fn finish(mut line: Vec<u8>, len: usize) -> Line {
    if len > MAX_LINE {
        line.truncate(40);
        return Line::TooLong { len, start: line };
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Line::Text(line)
}

/// One question: an address and, for TCP or UDP, a port.
#[derive(Debug)]
struct Query {
    addr: IpAddr,
    proto: Option<(Proto, u16)>,
}

fn parse_addr(text: &str) -> anyhow::Result<IpAddr> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not an IP address"))
}

/// `ADDRESS`, or `ADDRESS tcp|udp PORT`.
fn parse_line(line: &str) -> anyhow::Result<Query> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        [addr] => Ok(Query {
            addr: parse_addr(addr)?,
            proto: None,
        }),
        [addr, protocol, port] => {
            let protocol = match protocol.to_ascii_lowercase().as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => bail!("{protocol:?} is not tcp or udp"),
            };
            let port = port
                .parse()
                .map_err(|_| anyhow::anyhow!("{port:?} is not a port number"))?;
            Ok(Query {
                addr: parse_addr(addr)?,
                proto: Some((protocol, port)),
            })
        }
        _ => bail!("expected `ADDRESS [tcp|udp PORT]`"),
    }
}

pub fn run(global: &GlobalArgs, args: &LookupArgs) -> anyhow::Result<()> {
    // Parse every argument before the first answer: a typo fails cleanly.
    let from_stdin = args.addresses.iter().any(|a| a == "-");
    if from_stdin && args.addresses.len() > 1 {
        bail!("`-` (read stdin) cannot be mixed with addresses");
    }
    let queries: Vec<Query> = if from_stdin {
        Vec::new()
    } else {
        args.addresses
            .iter()
            .map(|text| {
                Ok(Query {
                    addr: parse_addr(text)?,
                    proto: args.proto.zip(args.port),
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let maps = super::pinned_maps(global)?;
    let oracle = Oracle::new(&maps)?;
    let catalog = Catalog::load(&global.state_dir(), &maps.installed()?);
    let mut out = io::BufWriter::new(io::stdout().lock());
    if !global.json {
        writeln!(
            out,
            "{:<40} {:<9} {:<24} {:<10} {:<7} {:<11} SETS",
            "ADDRESS", "PACKET", "PREFIX", "CATEGORY", "ACTION", "REASON"
        )?;
    }
    let answer =
        |query: &Query, out: &mut io::BufWriter<io::StdoutLock<'_>>| -> anyhow::Result<()> {
            let answer = explain(&oracle, &catalog, query)?;
            if global.json {
                super::write_json_line(out, &answer)
            } else {
                Ok(answer.write_row(out)?)
            }
        };
    if !from_stdin {
        for query in &queries {
            answer(query, &mut out)?;
        }
        out.flush()?;
        return Ok(());
    }
    // Each bad line is reported on its own (stderr, or an error object in the JSON stream)
    // and the rest are answered; the exit status says that some were bad.
    let (mut questions, mut bad) = (0u64, 0u64);
    let mut stdin = io::stdin().lock();
    let mut number = 0u64;
    while let Some(line) = read_line(&mut stdin).context("reading stdin")? {
        number += 1;
        let query = match line {
            Line::TooLong { len, start } => Err(anyhow::anyhow!(
                "a line of {len} bytes (starting {:?}), longer than the {MAX_LINE}-byte limit",
                String::from_utf8_lossy(&start)
            )),
            Line::Text(bytes) => match std::str::from_utf8(&bytes) {
                Err(_) => Err(anyhow::anyhow!("not UTF-8 text")),
                Ok(line) => {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    // Quoted, and cut: the line is shown, never a megabyte of it.
                    let shown: String = line.chars().take(80).collect();
                    parse_line(line).with_context(|| format!("{shown:?}"))
                }
            },
        };
        questions += 1;
        match query {
            Ok(query) => answer(&query, &mut out)?,
            Err(error) => {
                bad += 1;
                let bad_line = BadLine {
                    line: number,
                    error: format!("{error:#}"),
                };
                if global.json {
                    super::write_json_line(&mut out, &bad_line)?;
                } else {
                    out.flush()?;
                    eprintln!("{bad_line}");
                }
            }
        }
    }
    out.flush()?;
    if bad > 0 {
        bail!("{bad} of {questions} lines on stdin were not questions `ADDRESS [tcp|udp PORT]`");
    }
    Ok(())
}

/// What the data plane decides for one question, and why.
#[derive(Debug, Serialize)]
pub struct Answer<'a> {
    /// The address asked about.
    pub address: IpAddr,
    /// `tcp` or `udp`; null for a packet without ports.
    pub proto: Option<&'static str>,
    /// The destination port; null for a packet without ports.
    pub port: Option<u16>,
    /// The longest installed prefix that holds the address; null when none does.
    pub prefix: Option<IpNet>,
    /// Ids of the feed's endpoint sets whose prefixes hold the address; without a feed the
    /// maps are known to hold, the sets the matching entry names.
    pub endpoint_sets: Vec<u16>,
    /// The set whose port rule or category decided (0 for an operator's prefix); null when
    /// no prefix, or an excluded one, holds the address.
    pub decided_by: Option<u16>,
    /// The source that set belongs to: `m365` (`[feed]`), a `[[sources]]` entry's name,
    /// `operator` or `domains`; null with `decided_by`, or when no record the maps hold names
    /// it.
    pub source: Option<&'a str>,
    /// When the address was learned from a DNS answer (`[dns] learn`) and that decided: the
    /// name the client asked for; else null.
    pub learned_from: Option<&'a str>,
    /// That set's service area (`operator`; `unknown` when no feed the maps hold names it);
    /// null with `decided_by`.
    pub service_area: Option<&'a str>,
    /// `Optimize`, `Allow` or `Default`; null when no prefix, or an excluded one, holds the
    /// address.
    pub category: Option<&'static str>,
    /// Why, as a counter of the README's table counts it: `match_port`, `match_addr`,
    /// `strict_miss` or `no_match`.
    pub reason: &'static str,
    /// `direct` or `tunnel`.
    pub action: &'static str,
    /// The mark a direct packet gets, `VALUE/MASK` in hex; null for the tunnel.
    pub mark: Option<String>,
}

/// A line of `lookup -` that is no question.
#[derive(Debug, Serialize)]
pub struct BadLine {
    /// Its number on stdin, from 1.
    pub line: u64,
    /// What is wrong with it, with the line quoted (cut to 80 characters).
    pub error: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stdin line {}: {}", self.line, self.error)
    }
}

fn explain<'a>(
    oracle: &Oracle<'_>,
    catalog: &'a Catalog,
    query: &Query,
) -> anyhow::Result<Answer<'a>> {
    let (ip_proto, port, proto_name) = match query.proto {
        Some((Proto::Tcp, port)) => (proto::TCP, Some(port), Some("tcp")),
        Some((Proto::Udp, port)) => (proto::UDP, Some(port), Some("udp")),
        None => (0, None, None),
    };
    let decision = oracle.decide(query.addr, ip_proto, port)?;
    let decided_by = (decision.prefix.is_some() && decision.category != category::NONE)
        .then_some(decision.set_id);
    Ok(Answer {
        address: query.addr,
        proto: proto_name,
        port,
        prefix: decision.prefix,
        endpoint_sets: catalog.sets_holding(query.addr, decision.rules.as_ref()),
        decided_by,
        source: decided_by.and_then(|id| catalog.source_of(id)),
        learned_from: decided_by
            .filter(|_| {
                decision
                    .prefix
                    .is_some_and(|prefix| prefix.prefix_len() == prefix.max_prefix_len())
            })
            .and_then(|id| catalog.learned_from(query.addr, id)),
        service_area: decided_by.map(|id| catalog.service_area(id)),
        category: category::name(decision.category),
        reason: reason_name(decision.reason),
        action: action::name(decision.action),
        mark: (decision.action == action::DIRECT).then(|| super::mark(oracle.config())),
    })
}

impl Answer<'_> {
    fn write_row(&self, out: &mut impl io::Write) -> io::Result<()> {
        let Self {
            address,
            proto,
            port,
            prefix,
            endpoint_sets,
            decided_by,
            source,
            learned_from,
            service_area,
            category,
            reason,
            action,
            mark: _,
        } = self;
        let packet = match (proto, port) {
            (Some(proto), Some(port)) => format!("{proto}/{port}"),
            _ => "any".to_owned(),
        };
        let sets = if endpoint_sets.is_empty() {
            "-".to_owned()
        } else {
            endpoint_sets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let decided = match decided_by {
            Some(id) => format!(
                " (decided by {id}, {} of {}{})",
                or_dash(*service_area),
                or_dash(*source),
                learned_from.map_or_else(String::new, |name| format!(", learned from {name}"))
            ),
            None => String::new(),
        };
        writeln!(
            out,
            "{:<40} {packet:<9} {:<24} {:<10} {action:<7} {reason:<11} {sets}{decided}",
            address.to_string(),
            or_dash(*prefix),
            or_dash(*category),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::schema_docs::{assert_documented_in, module_doc, readme_section};

    #[test]
    fn long_lines_are_skipped_not_buffered() {
        let long = "9".repeat(MAX_LINE * 50);
        let input = format!("52.112.1.1\r\n{long}\n1.2.3.4 udp 3478\n{long}");
        let mut reader = io::BufReader::with_capacity(64, input.as_bytes());
        assert_eq!(
            read_line(&mut reader).unwrap(),
            Some(Line::Text(b"52.112.1.1".to_vec()))
        );
        assert_eq!(
            read_line(&mut reader).unwrap(),
            Some(Line::TooLong {
                len: MAX_LINE * 50,
                start: vec![b'9'; 40]
            })
        );
        assert_eq!(
            read_line(&mut reader).unwrap(),
            Some(Line::Text(b"1.2.3.4 udp 3478".to_vec()))
        );
        assert!(matches!(
            read_line(&mut reader).unwrap(),
            Some(Line::TooLong { len, .. }) if len == MAX_LINE * 50
        ));
        assert_eq!(read_line(&mut reader).unwrap(), None);
        let exactly = "1".repeat(MAX_LINE);
        let mut reader = io::BufReader::new(exactly.as_bytes());
        assert_eq!(
            read_line(&mut reader).unwrap(),
            Some(Line::Text(exactly.into_bytes()))
        );
    }

    #[test]
    fn every_field_is_documented() {
        let answer = Answer {
            address: "52.112.1.1".parse().unwrap(),
            proto: Some("udp"),
            port: Some(3478),
            prefix: Some("52.112.0.0/14".parse().unwrap()),
            endpoint_sets: vec![11, 12],
            decided_by: Some(11),
            source: Some("m365"),
            learned_from: Some("x.teams.microsoft.com"),
            service_area: Some("Skype"),
            category: Some("Optimize"),
            reason: "match_port",
            action: "direct",
            mark: Some("0x365/0xffff".into()),
        };
        let mut row = Vec::new();
        answer.write_row(&mut row).unwrap();
        let row = String::from_utf8(row).unwrap();
        assert!(row.starts_with("52.112.1.1 "), "{row}");
        assert!(
            row.contains(" udp/3478  52.112.0.0/14 ")
                && row.ends_with(
                    " 11,12 (decided by 11, Skype of m365, learned from x.teams.microsoft.com)\n"
                ),
            "{row}"
        );
        let bad = BadLine {
            line: 2,
            error: "\"example.com\": \"example.com\" is not an IP address".into(),
        };
        for doc in [
            module_doc(include_str!("lookup.rs")).as_str(),
            readme_section(),
        ] {
            assert_documented_in(&answer, doc);
            assert_documented_in(&bad, doc);
        }
    }

    #[test]
    fn lines_parse_or_say_what_is_wrong() {
        assert!(parse_line("52.112.1.1").unwrap().proto.is_none());
        assert_eq!(
            parse_line("2603:1063::1 UDP 3478").unwrap().proto,
            Some((Proto::Udp, 3478))
        );
        assert!(
            parse_line("52.112.1.1 sctp 5")
                .unwrap_err()
                .to_string()
                .contains("not tcp or udp")
        );
        assert!(
            parse_line("52.112.1.1 tcp http")
                .unwrap_err()
                .to_string()
                .contains("not a port number")
        );
        assert!(
            parse_line("example.com")
                .unwrap_err()
                .to_string()
                .contains("not an IP address")
        );
        assert!(
            parse_line("1.2.3.4 tcp")
                .unwrap_err()
                .to_string()
                .contains("expected")
        );
    }
}
