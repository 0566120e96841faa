//! The agent's HTTP listener: `GET /metrics` (OpenMetrics text, `prometheus-client`) and,
//! with `[pac] serve`, `GET /proxy.pac`. A client whose `Accept` does not name OpenMetrics
//! (Prometheus always does) gets the same families in the Prometheus text format 0.0.4,
//! which older tools such as `promtool check metrics` read.
//!
//! Counters are read from the per-CPU maps at scrape time, through the pins, so there is no
//! second bookkeeping: a scrape says what `stats` and `bpftool` say. What only the agent
//! knows (the sources, the uplink, the endpoint sets' names, apply durations) it hands over
//! in [`Shared`] whenever it changes. Labels are bounded: actions, reasons, events,
//! categories, sources and endpoint set ids (at most `MAX_SET_ID`), never an address or a
//! flow.
//!
//! The server reads at most [`MAX_REQUEST`] bytes of a request within [`REQUEST_TIMEOUT`],
//! answers one request per connection, serves [`MAX_CONNECTIONS`] at once, and never blocks
//! the agent: a scrape runs on the blocking pool.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use classifier_common::{Counter, category, stat};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use crate::{datapath::Maps, state::Status};

/// The longest request head read.
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;

/// An endpoint set's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetLabels {
    pub id: u16,
    pub service_area: String,
    /// `Optimize`, ..., `Direct`, `Tunnel`.
    pub category: &'static str,
    /// `m365`, a `[[sources]]` name, `operator`.
    pub source: String,
}

/// What the agent hands to the listener.
#[derive(Debug)]
pub struct Shared {
    pub status: Mutex<Status>,
    pub sets: Mutex<Vec<SetLabels>>,
    /// Seconds from the start of an apply until the data plane classified by the new table.
    pub apply_seconds: Histogram,
    /// The PAC file, when `[pac] serve` is on and a feed is installed.
    pub pac: Mutex<Option<String>>,
    /// DNS learning: what answers did, and from capture to the map.
    pub dns: Mutex<crate::dns::Counts>,
    pub dns_seconds: Histogram,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            status: Mutex::default(),
            sets: Mutex::default(),
            // 0.1 ms .. about 27 s.
            apply_seconds: Histogram::new(exponential_buckets(0.000_1, 4.0, 10)),
            pac: Mutex::default(),
            dns: Mutex::default(),
            // 10 us .. about 10 s.
            dns_seconds: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
        }
    }
}

/// The counters of [`stat`] by family: actions, reasons, and events on top.
const ACTIONS: [u32; 2] = [stat::DIRECT, stat::TUNNEL];
const REASONS: [u32; 9] = [
    stat::MATCH_PORT,
    stat::MATCH_ADDR,
    stat::STRICT_MISS,
    stat::NO_MATCH,
    stat::EXCLUDED,
    stat::FRAGMENT,
    stat::NOT_IP,
    stat::MALFORMED,
    stat::ERROR,
];
const EVENTS: [u32; 8] = [
    stat::FAILOVER,
    stat::FLOW_HIT,
    stat::FLOW_NEW,
    stat::FLOW_CLOSED,
    stat::NO_META,
    stat::TC_MARK_META,
    stat::TC_MARK_SELF,
    stat::TC_PASS,
];

fn stat_name(index: u32) -> &'static str {
    crate::explain::reason_name(index)
}

/// One scrape: the maps pinned in `pin_dir`, and what the agent shared.
struct Scrape {
    maps: Result<Maps, String>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape")
            .field("maps", &self.maps.as_ref().map(|_| "pinned maps"))
            .finish_non_exhaustive()
    }
}

/// `(labels, packets, bytes)` rows of a packets-and-bytes pair of families.
type Rows<'a> = Vec<(Vec<(&'static str, String)>, Counter)>;

fn encode_traffic(
    encoder: &mut DescriptorEncoder,
    name: &str,
    what: &str,
    rows: &Rows<'_>,
) -> Result<(), std::fmt::Error> {
    for (unit, pick) in [
        ("packets", (|c: &Counter| c.packets) as fn(&Counter) -> u64),
        ("bytes", |c: &Counter| c.bytes),
    ] {
        let family = format!("xdp_breakout_{name}_{unit}");
        let help = format!("{unit} {what} (since the maps were created)");
        let mut metric = encoder.encode_descriptor(
            &family,
            &help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (labels, counter) in rows {
            ConstCounter::new(pick(counter)).encode(metric.encode_family(labels)?)?;
        }
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    if let [(labels, value)] = rows
        && labels.is_empty()
    {
        return ConstGauge::new(*value).encode(metric);
    }
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    if let [(labels, value)] = rows
        && labels.is_empty()
    {
        return ConstCounter::new(*value).encode(metric);
    }
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

#[expect(clippy::cast_precision_loss, reason = "gauges are floats")]
fn float(value: impl TryInto<u64>) -> f64 {
    value.try_into().unwrap_or(u64::MAX) as f64
}

impl Collector for Scrape {
    #[expect(
        clippy::too_many_lines,
        reason = "one block per family, in the README's order"
    )]
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read = self.maps.as_ref().ok().and_then(|maps| {
            Some((
                maps.stats().ok()?,
                maps.set_stats().ok()?,
                maps.flow_occupancy(),
            ))
        });
        gauge(
            &mut encoder,
            "xdp_breakout_maps_readable",
            "1 when the pinned maps could be read for this scrape, else 0 (and no counters)",
            &[(Vec::new(), if read.is_some() { 1.0 } else { 0.0 })],
        )?;
        if let Some((stats, sets, (flows, flow_capacity))) = &read {
            let rows = |indices: &[u32], label: &'static str| -> Rows<'_> {
                indices
                    .iter()
                    .map(|index| {
                        (
                            vec![(label, stat_name(*index).to_owned())],
                            stats.get(*index as usize).copied().unwrap_or_default(),
                        )
                    })
                    .collect()
            };
            encode_traffic(
                &mut encoder,
                "action",
                "by action, direct or tunnel",
                &rows(&ACTIONS, "action"),
            )?;
            encode_traffic(
                &mut encoder,
                "reason",
                "by the reason of their verdict",
                &rows(&REASONS, "reason"),
            )?;
            counter(
                &mut encoder,
                "xdp_breakout_events",
                "events counted on top of verdicts: failovers, flow hits, new and closed \
                 flows, marks",
                &EVENTS
                    .iter()
                    .map(|index| {
                        (
                            vec![("event", stat_name(*index).to_owned())],
                            stats.get(*index as usize).map_or(0, |c| c.packets),
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
            let labels = self
                .shared
                .sets
                .lock()
                .map(|sets| sets.clone())
                .unwrap_or_default();
            let label_of = |id: u16| labels.iter().find(|set| set.id == id);
            let mut by_category: BTreeMap<&str, Counter> = BTreeMap::new();
            let mut by_source: BTreeMap<String, Counter> = BTreeMap::new();
            let mut by_set: Rows<'_> = Vec::new();
            for (id, traffic) in sets {
                let set = label_of(*id);
                let category = set.map_or("unknown", |set| set.category);
                let source = set.map_or_else(|| "unknown".to_owned(), |set| set.source.clone());
                *by_category.entry(category).or_default() =
                    by_category.get(category).copied().unwrap_or_default() + *traffic;
                let sum = by_source.entry(source.clone()).or_default();
                *sum = *sum + *traffic;
                by_set.push((
                    vec![
                        ("set", id.to_string()),
                        (
                            "service_area",
                            set.map_or_else(
                                || "unknown".to_owned(),
                                |set| set.service_area.clone(),
                            ),
                        ),
                        ("category", category.to_owned()),
                        ("source", source),
                    ],
                    *traffic,
                ));
            }
            let category_rows: Rows<'_> = [
                category::OPTIMIZE,
                category::ALLOW,
                category::DEFAULT,
                category::DIRECT,
                category::TUNNEL,
            ]
            .iter()
            .filter_map(|code| category::name(*code))
            .map(|name| {
                (
                    vec![("category", name.to_owned())],
                    by_category.get(name).copied().unwrap_or_default(),
                )
            })
            .collect();
            encode_traffic(
                &mut encoder,
                "category",
                "decided by an endpoint set of each category",
                &category_rows,
            )?;
            let source_rows: Rows<'_> = by_source
                .into_iter()
                .map(|(source, traffic)| (vec![("source", source)], traffic))
                .collect();
            encode_traffic(
                &mut encoder,
                "source",
                "decided by an endpoint set of each source",
                &source_rows,
            )?;
            encode_traffic(
                &mut encoder,
                "set",
                "decided by each endpoint set that decided any",
                &by_set,
            )?;
            counter(
                &mut encoder,
                "xdp_breakout_dns_capture",
                "DNS answers at the LAN's tc egress: copied to the agent, or why not",
                &[
                    (stat::DNS_COPIED, "copied"),
                    (stat::DNS_RING_FULL, "ring_full"),
                    (stat::DNS_RATE_LIMITED, "rate_limited"),
                    (stat::DNS_TOO_BIG, "too_big"),
                ]
                .iter()
                .map(|(index, outcome)| {
                    (
                        vec![("outcome", (*outcome).to_owned())],
                        stats.get(*index as usize).map_or(0, |c| c.packets),
                    )
                })
                .collect::<Vec<_>>(),
            )?;
            gauge(
                &mut encoder,
                "xdp_breakout_flows",
                "connections in the flow table",
                &[(Vec::new(), float(*flows))],
            )?;
            gauge(
                &mut encoder,
                "xdp_breakout_flow_table_size",
                "entries the flow table holds before it evicts",
                &[(Vec::new(), float(*flow_capacity))],
            )?;
            counter(
                &mut encoder,
                "xdp_breakout_flows_evicted",
                "flows the full table evicted (new flows minus closed minus those in the table)",
                &[(
                    Vec::new(),
                    stats
                        .get(stat::FLOW_EVICTED as usize)
                        .map_or(0, |c| c.packets),
                )],
            )?;
        }
        if let Ok(dns) = self.shared.dns.lock().map(|dns| dns.clone()) {
            let mut rows = vec![
                (vec![("outcome", "learned".to_owned())], dns.learned),
                (vec![("outcome", "refreshed".to_owned())], dns.refreshed),
                (vec![("outcome", "special".to_owned())], dns.special),
                (vec![("outcome", "capped".to_owned())], dns.capped),
                (vec![("outcome", "excluded".to_owned())], dns.excluded),
            ];
            for reason in [
                "malformed",
                "not_answer",
                "error",
                "chain",
                "no_match",
                "no_address",
            ] {
                rows.push((
                    vec![("outcome", format!("ignored_{reason}"))],
                    dns.ignored.get(reason).copied().unwrap_or(0),
                ));
            }
            counter(
                &mut encoder,
                "xdp_breakout_dns_answers",
                "DNS answers the agent took, by what they did (addresses for learned, refreshed, \
                 special, capped and excluded; answers for ignored_*)",
                &rows,
            )?;
        }
        let Ok(status) = self.shared.status.lock().map(|status| status.clone()) else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "xdp_breakout_prefixes",
            "prefixes installed in the tries, by family",
            &[
                (
                    vec![("family", "ipv4".to_owned())],
                    float(status.prefixes_v4),
                ),
                (
                    vec![("family", "ipv6".to_owned())],
                    float(status.prefixes_v6),
                ),
            ],
        )?;
        let feed = &status.sources;
        gauge(
            &mut encoder,
            "xdp_breakout_source_info",
            "1 for each source, with its kind and the version the maps hold",
            &feed
                .iter()
                .map(|row| {
                    (
                        vec![
                            ("source", row.name.clone()),
                            ("kind", row.kind.clone()),
                            ("version", row.version.clone().unwrap_or_default()),
                        ],
                        1.0,
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        let mut success = Vec::new();
        let mut failures = Vec::new();
        for row in feed {
            if let Some(at) = row.last_success {
                success.push((vec![("source", row.name.clone())], float(at.secs())));
            }
            failures.push((vec![("source", row.name.clone())], float(row.consecutive_failures)));
        }
        gauge(
            &mut encoder,
            "xdp_breakout_source_last_success_timestamp_seconds",
            "when each source's last fetch ended well (new or unchanged), Unix time",
            &success,
        )?;
        gauge(
            &mut encoder,
            "xdp_breakout_source_consecutive_failures",
            "fetches of each source that failed in a row",
            &failures,
        )?;
        gauge(
            &mut encoder,
            "xdp_breakout_source_prefixes",
            "prefixes each source holds, by family",
            &feed
                .iter()
                .flat_map(|row| {
                    [
                        (
                            vec![("source", row.name.clone()), ("family", "ipv4".to_owned())],
                            float(row.prefixes_v4),
                        ),
                        (
                            vec![("source", row.name.clone()), ("family", "ipv6".to_owned())],
                            float(row.prefixes_v6),
                        ),
                    ]
                })
                .collect::<Vec<_>>(),
        )?;
        if let Some(uplink) = &status.uplink {
            let state = uplink.state.to_string();
            gauge(
                &mut encoder,
                "xdp_breakout_uplink_state",
                "the direct uplink's state as the health checks see it: 1 for the current one",
                &["up", "down", "unchecked"]
                    .iter()
                    .map(|name| {
                        (
                            vec![("state", (*name).to_owned())],
                            if *name == state { 1.0 } else { 0.0 },
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
            counter(
                &mut encoder,
                "xdp_breakout_uplink_transitions",
                "changes of the direct uplink's state since the agent started",
                &[(Vec::new(), uplink.transitions)],
            )?;
        }
        Ok(())
    }
}

/// The OpenMetrics text of one scrape of the maps pinned in `pin_dir`.
pub fn render(pin_dir: &std::path::Path, shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register(
        "xdp_breakout_apply_duration_seconds",
        "time from the start of an apply until the data plane classified by the new table",
        shared.apply_seconds.clone(),
    );
    registry.register(
        "xdp_breakout_dns_learn_duration_seconds",
        "time from a DNS answer crossing tc until its addresses were in the map",
        shared.dns_seconds.clone(),
    );
    registry.register_collector(Box::new(Scrape {
        maps: Maps::from_pins(pin_dir).map_err(|error| error.to_string()),
        shared: Arc::clone(shared),
    }));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text: a counter family `x` becomes
/// `x_total` (its samples' name), and `# UNIT` and `# EOF` go.
#[must_use]
pub fn to_text_004(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Whether a request head's `Accept` names OpenMetrics.
#[must_use]
pub fn accepts_open_metrics(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value
                    .to_ascii_lowercase()
                    .contains("application/openmetrics-text")
        })
    })
}

/// A request the listener answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Metrics,
    Pac,
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    Method,
    /// Not an HTTP request line: 400.
    Bad,
}

/// Reads a request head: the request line of at most [`MAX_REQUEST`] bytes of head.
#[must_use]
pub fn parse_request(head: &[u8]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Bad;
    };
    let Some(line) = text.split("\r\n").next() else {
        return Request::Bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Request::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Request::Method;
    }
    match target.split('?').next() {
        Some("/metrics") => Request::Metrics,
        Some("/proxy.pac") => Request::Pac,
        _ => Request::NotFound,
    }
}

/// Serves `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, pin_dir: PathBuf, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!("metrics: accepting a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let pin_dir = pin_dir.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &pin_dir, &shared).await {
                debug!("metrics: {peer}: {error}");
            }
            drop(permit);
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    pin_dir: &std::path::Path,
    shared: &Arc<Shared>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buffer = [0u8; 1024];
        loop {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buffer[..n]);
            if head.windows(4).any(|window| window == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
    })
    .await;
    let request = match read {
        Ok(Ok(true)) => parse_request(&head),
        Ok(Ok(false)) => Request::Bad,
        Ok(Err(error)) => return Err(error),
        Err(_) => return Ok(()),
    };
    let head_only = head.starts_with(b"HEAD ");
    let (status, content_type, body) = match request {
        Request::Metrics => {
            let pin_dir = pin_dir.to_owned();
            let shared = Arc::clone(shared);
            let text = tokio::task::spawn_blocking(move || render(&pin_dir, &shared))
                .await
                .unwrap_or_default();
            if accepts_open_metrics(&head) {
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                )
            } else {
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    to_text_004(&text),
                )
            }
        }
        Request::Pac => match shared.pac.lock().ok().and_then(|pac| pac.clone()) {
            Some(pac) => ("200 OK", "application/x-ns-proxy-autoconfig", pac),
            None => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "no PAC file: [pac] serve is off, or no feed is installed\n".to_owned(),
            ),
        },
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: GET /metrics or /proxy.pac\n".to_owned(),
        ),
        Request::Method => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Binds the listener: `listen` is `HOST:PORT`.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_are_refused() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"HEAD /proxy.pac HTTP/1.1\r\n\r\n"),
            Request::Pac
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::Method
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Request::Bad, "{bad:?}");
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let open = "# HELP x_packets packets.\n# TYPE x_packets counter\nx_packets_total{a=\"b\"} 4\n\
                    # HELP g a gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 1.0\n# EOF\n";
        assert_eq!(
            to_text_004(open),
            "# HELP x_packets_total packets.\n# TYPE x_packets_total counter\n\
             x_packets_total{a=\"b\"} 4\n# HELP g a gauge.\n# TYPE g gauge\ng 1.0\n"
        );
        assert!(accepts_open_metrics(
            b"GET /metrics HTTP/1.1\r\nACCEPT: application/openmetrics-text;version=1.0.0\r\n\r\n"
        ));
        assert!(!accepts_open_metrics(
            b"GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n"
        ));
    }

    /// Without pins a scrape still answers: the agent's families, and `maps_readable 0`.
    #[test]
    fn a_scrape_without_maps_says_so() {
        let shared = Arc::new(Shared::default());
        shared.apply_seconds.observe(0.000_4);
        let text = render(std::path::Path::new("/nonexistent"), &shared);
        assert!(text.contains("xdp_breakout_maps_readable 0"), "{text}");
        assert!(
            text.contains("xdp_breakout_apply_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
