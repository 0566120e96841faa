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
//! The server is hyper's HTTP/1: it takes a request head of at most [`MAX_REQUEST`] bytes
//! (431 past that, 400 for what is not HTTP) sent in full within [`REQUEST_TIMEOUT`] of the
//! connection (a client that trickles its head is closed then all the same), answers one
//! request per connection and closes it within [`CONNECTION_TIMEOUT`], and never blocks the
//! agent: a scrape runs on the blocking pool. It serves [`MAX_CONNECTIONS`] at once, at most
//! [`MAX_PER_PEER`] from one address (IPv6: one /64; one more is closed at once), and keeps
//! a place for a new connection by shedding the oldest one still sending its head (or, when
//! all have sent theirs, the oldest): slow clients cannot keep a scrape out (`admission.rs`
//! says why this design). Connections closed unanswered are counted in
//! `xdp_breakout_listener_shed_total` by [`Shed`] reason.

mod admission;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use classifier_common::{Counter, category, stat};
use http_body_util::Full;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
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
use tokio::net::TcpListener;
use tracing::{debug, warn};

use self::admission::{Admission, Admit};
pub use self::admission::{MAX_CONNECTIONS, MAX_PER_PEER, Shed, ShedCounts};

use crate::{datapath::Maps, state::Status};

/// The agent's HTTP listener: OpenMetrics at `/metrics` (and the PAC file, with
/// `[pac] serve`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct MetricsConfig {
    /// `HOST:PORT` to listen on; empty: no listener. Takes effect at start.
    pub listen: String,
}

/// Where the listener is unless configured: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9365";

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_METRICS_LISTEN.to_owned(),
        }
    }
}

impl MetricsConfig {
    /// An address the listener can bind, or empty for none.
    pub fn validate(&self) -> Result<(), crate::settings::Invalid> {
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err(crate::settings::Invalid::new(
                "listen",
                format!(
                    "{:?} is not HOST:PORT (an IP address and a port: 127.0.0.1:9365, \
                     [::1]:9365), or empty for no listener",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// A listener beyond loopback: allowed, but it has no authentication.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        let listen = self.listen.parse::<SocketAddr>().ok()?;
        (!listen.ip().is_loopback()).then(|| {
            format!(
                "metrics.listen {listen} is not loopback: anyone who reaches it reads the \
                 counters (and the PAC file)"
            )
        })
    }
}

/// The longest request head (request line and headers) taken; a longer one is answered 431.
/// hyper's smallest `max_buf_size`, too.
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its whole request head, counted from its connection
/// however it trickles. A head is one segment: 5 s survives two losses of it (TCP's first
/// retransmission timeouts are 1 s and 2 s, RFC 6298).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may last in all: head, scrape and answer. Prometheus gives up on a
/// scrape after its default `scrape_timeout`, 10 s, so a connection open longer serves no
/// one; a client that stops reading its answer gives back its place after this.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Connections the listener closed before answering them.
    pub listener_shed: ShedCounts,
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
            listener_shed: ShedCounts::default(),
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
            counter(
                &mut encoder,
                "xdp_breakout_dns_refused",
                "DNS answers refused as untrusted, by why: no recorded query (unsolicited), its \
                 query answered already (replay), another question, too late, from a resolver \
                 not trusted, or a question the agent parsed otherwise",
                &stat::DNS_REFUSALS
                    .iter()
                    .map(|(index, reason)| {
                        (
                            vec![("reason", (*reason).to_owned())],
                            stats.get(*index as usize).map_or(0, |c| c.packets),
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
            counter(
                &mut encoder,
                "xdp_breakout_dns_queries",
                "DNS queries from LAN clients recorded at the LAN's ingress",
                &[(
                    Vec::new(),
                    stats.get(stat::DNS_QUERY as usize).map_or(0, |c| c.packets),
                )],
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
                (vec![("outcome", "evicted".to_owned())], dns.evicted),
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
                 special, capped, excluded and evicted; answers for ignored_*)",
                &rows,
            )?;
            let crate::dns::CapHits {
                max_learned,
                max_per_name,
            } = dns.cap_hits;
            counter(
                &mut encoder,
                "xdp_breakout_dns_cap_hits",
                "new learned addresses that found a cap full (each then evicted the least \
                 recently used address no live flow holds, or was capped)",
                &[
                    (vec![("cap", "max_learned".to_owned())], max_learned),
                    (vec![("cap", "max_per_name".to_owned())], max_per_name),
                ],
            )?;
        }
        counter(
            &mut encoder,
            "xdp_breakout_listener_shed",
            "connections this listener closed before answering them, by why: over the \
             per-address limit, shed to make room (the slowest still sending its head, or the \
             oldest), or past the head or connection timeout",
            &self
                .shared
                .listener_shed
                .rows()
                .map(|(why, count)| (vec![("reason", why.label().to_owned())], count)),
        )?;
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
            failures.push((
                vec![("source", row.name.clone())],
                float(row.consecutive_failures),
            ));
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
        let recorded: Vec<&crate::state::Uplink> = if status.uplinks.is_empty() {
            status.uplink.iter().collect()
        } else {
            status.uplinks.iter().collect()
        };
        if !recorded.is_empty() {
            let named = |uplink: &crate::state::Uplink| ("uplink", uplink.name.clone());
            gauge(
                &mut encoder,
                "xdp_breakout_uplink_state",
                "each direct uplink's state as the health checks see it: 1 for the current one",
                &recorded
                    .iter()
                    .flat_map(|uplink| {
                        let state = uplink.state.to_string();
                        ["up", "down", "unchecked"].into_iter().map(move |name| {
                            (
                                vec![named(uplink), ("state", name.to_owned())],
                                if name == state { 1.0 } else { 0.0 },
                            )
                        })
                    })
                    .collect::<Vec<_>>(),
            )?;
            gauge(
                &mut encoder,
                "xdp_breakout_uplink_degraded",
                "1 while a direct uplink misses its SLA (new quality-sensitive flows avoid it)",
                &recorded
                    .iter()
                    .map(|uplink| {
                        (
                            vec![named(uplink)],
                            if uplink.grade == crate::uplinks::Grade::Degraded {
                                1.0
                            } else {
                                0.0
                            },
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
            counter(
                &mut encoder,
                "xdp_breakout_uplink_transitions",
                "changes of each direct uplink's state since the agent started",
                &recorded
                    .iter()
                    .map(|uplink| (vec![named(uplink)], uplink.transitions))
                    .collect::<Vec<_>>(),
            )?;
            counter(
                &mut encoder,
                "xdp_breakout_uplink_grade_changes",
                "changes of each direct uplink's grade (good, degraded) since the agent started",
                &recorded
                    .iter()
                    .map(|uplink| (vec![named(uplink)], uplink.grade_changes))
                    .collect::<Vec<_>>(),
            )?;
            if let Ok(maps) = &self.maps
                && let Ok(counted) = maps.uplink_stats()
                && !counted.is_empty()
            {
                counter(
                    &mut encoder,
                    "xdp_breakout_uplink_packets",
                    "packets the kernel marked for each direct uplink",
                    &recorded
                        .iter()
                        .zip(&counted)
                        .map(|(uplink, counter)| (vec![named(uplink)], counter.packets))
                        .collect::<Vec<_>>(),
                )?;
            }
            let seconds = |us: u64| float(us) / 1e6;
            let measured: Vec<(&crate::state::Uplink, crate::health::Figures)> = recorded
                .iter()
                .filter_map(|uplink| uplink.quality.map(|quality| (*uplink, quality)))
                .collect();
            // No answer in the window, no RTT: an absent series, not a made-up one.
            let rtts: Vec<_> = measured
                .iter()
                .filter_map(|(uplink, quality)| {
                    quality
                        .rtt_us
                        .map(|rtt| (vec![named(uplink)], seconds(rtt)))
                })
                .collect();
            if !rtts.is_empty() {
                gauge(
                    &mut encoder,
                    "xdp_breakout_uplink_rtt_seconds",
                    "mean round-trip time of the health probes answered over the last \
                     [health] window rounds",
                    &rtts,
                )?;
            }
            if !measured.is_empty() {
                gauge(
                    &mut encoder,
                    "xdp_breakout_uplink_jitter_seconds",
                    "RFC 3550 jitter of consecutive health probe round-trip times",
                    &measured
                        .iter()
                        .map(|(uplink, quality)| (vec![named(uplink)], seconds(quality.jitter_us)))
                        .collect::<Vec<_>>(),
                )?;
                gauge(
                    &mut encoder,
                    "xdp_breakout_uplink_loss_ratio",
                    "share of the health probes of the last [health] window rounds that got \
                     no answer",
                    &measured
                        .iter()
                        .map(|(uplink, quality)| (vec![named(uplink)], quality.loss_ratio()))
                        .collect::<Vec<_>>(),
                )?;
            }
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

/// Whether a request's `Accept` names OpenMetrics, as Prometheus's always does.
fn accepts_open_metrics(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|value| {
        String::from_utf8_lossy(value.as_bytes())
            .to_ascii_lowercase()
            .contains("application/openmetrics-text")
    })
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Serves `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, pin_dir: PathBuf, shared: Arc<Shared>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // Armed when hyper first polls for a head, right as the connection is served, and
        // not re-armed by each byte (hyper 1 `Conn::poll_read_head`): a deadline for the
        // whole head, which a client trickling a byte a second does not push back.
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_header_size(MAX_REQUEST)
        // Nothing we serve takes a body, so the read buffer need not outgrow the head.
        .max_buf_size(MAX_REQUEST)
        // One request per connection: a place then holds a request, not an idle keep-alive
        // connection a scraper parks between scrapes, and CONNECTION_TIMEOUT bounds a
        // request. A scrape every 15 s or so pays one TCP handshake for it.
        .keep_alive(false);
    let admission = Arc::new(Admission::default());
    loop {
        // Accept at once, whatever the load: the connections to shed must be ours to see.
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!("metrics: accepting a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut place = match admission.admit(peer.ip()) {
            Admit::OverPeerLimit => {
                shared.listener_shed.count(Shed::PeerLimit);
                debug!("metrics: {peer}: over {MAX_PER_PEER} connections from its address, closed");
                continue;
            }
            Admit::Placed { place, made_room } => {
                if let Some(why) = made_room {
                    shared.listener_shed.count(why);
                    debug!(
                        "metrics: all {MAX_CONNECTIONS} places taken, shed one ({}) for {peer}",
                        why.label()
                    );
                }
                place
            }
        };
        let mark = place.mark();
        let pin_dir = pin_dir.clone();
        let scrape_shared = Arc::clone(&shared);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| {
                mark.answering();
                let pin_dir = pin_dir.clone();
                let shared = Arc::clone(&scrape_shared);
                async move { Ok::<_, Infallible>(answer(&request, pin_dir, shared).await) }
            }),
        );
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // Dropping the connection closes it; dropping `place` (with the task) frees it.
            let served = tokio::select! {
                served = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => served,
                () = place.shed() => return,
            };
            match served {
                Ok(Ok(())) => {}
                Ok(Err(error)) if error.is_timeout() => {
                    shared.listener_shed.count(Shed::HeadTimeout);
                    debug!("metrics: {peer}: no complete head within {REQUEST_TIMEOUT:?}, closed");
                }
                Ok(Err(error)) => debug!("metrics: {peer}: {error}"),
                Err(_) => {
                    shared.listener_shed.count(Shed::ConnectionTimeout);
                    debug!(
                        "metrics: {peer}: connection open longer than {CONNECTION_TIMEOUT:?}, closed"
                    );
                }
            }
        });
        // Before the next accept, let the new connection read what it has sent: a scraper's
        // whole head is there by now, and once read, its place is shed only after every
        // place still waiting for a head. Without this, a burst of accepts could shed it
        // unread. `yield_now` lets the I/O driver run first (tokio defers its wake-up).
        tokio::task::yield_now().await;
    }
}

/// The answer to one request whose head hyper has read; hyper answers malformed and
/// oversized heads itself (400, 431).
async fn answer(
    request: &Request<Incoming>,
    pin_dir: PathBuf,
    shared: Arc<Shared>,
) -> Response<Full<Bytes>> {
    // HEAD is answered as GET: hyper leaves out the body and keeps its Content-Length.
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let text = match tokio::task::spawn_blocking(move || render(&pin_dir, &shared)).await {
                Ok(text) => text,
                Err(error) => {
                    warn!("metrics: the scrape failed: {error}");
                    return respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        PLAIN,
                        "the scrape failed; the agent's log says why\n".to_owned(),
                    );
                }
            };
            if accepts_open_metrics(request.headers()) {
                respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                )
            } else {
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    to_text_004(&text),
                )
            }
        }
        "/proxy.pac" => match shared.pac.lock().ok().and_then(|pac| pac.clone()) {
            Some(pac) => respond(StatusCode::OK, "application/x-ns-proxy-autoconfig", pac),
            None => respond(
                StatusCode::NOT_FOUND,
                PLAIN,
                "no PAC file: [pac] serve is off, or no feed is installed\n".to_owned(),
            ),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: GET /metrics or /proxy.pac\n".to_owned(),
        ),
    }
}

/// Binds the listener: `listen` is `HOST:PORT`.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        sync::atomic::{AtomicUsize, Ordering},
        time::Instant,
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpSocket, TcpStream},
    };

    use super::*;

    const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// The listener on a loopback port, serving without pins.
    async fn listening(shared: Arc<Shared>) -> SocketAddr {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, PathBuf::from("/nonexistent"), shared));
        address
    }

    /// A connection to `address` from `source`: loopback takes any 127/8 source, so one
    /// test plays several peers.
    async fn connect_from(source: Ipv4Addr, address: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        socket.connect(address).await
    }

    /// Sends `request` on a new connection and reads the answer until the server closes.
    async fn ask(address: SocketAddr, request: &[u8]) -> String {
        ask_from(Ipv4Addr::LOCALHOST, address, request).await
    }

    /// [`ask`] from `source`.
    async fn ask_from(source: Ipv4Addr, address: SocketAddr, request: &[u8]) -> String {
        let mut stream = connect_from(source, address).await.unwrap();
        // The server may answer an oversized head and close before reading all of it: the
        // write may then fail, and the read end in a reset after the answer. What was read
        // is the answer either way.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "no answer to {request:?} within 10 s");
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// The status line and the head (lowercase) of an answer, and its body.
    fn split(answer: &str) -> (&str, String, &str) {
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
        let status = head.lines().next().unwrap_or_default();
        (status, head.to_ascii_lowercase(), body)
    }

    async fn still_serving(address: SocketAddr, after: &str) {
        let answer = ask(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "after {after}: {answer}"
        );
    }

    #[tokio::test]
    async fn a_scrape_answers_in_the_format_asked_for() {
        let address = listening(Arc::default()).await;
        // As Prometheus asks (the header name in any case).
        let answer = ask(
            address,
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: agent\r\nACCEPT: application/openmetrics-text;\
              version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
        )
        .await;
        let (status, head, body) = split(&answer);
        assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
        assert!(
            head.contains(&format!("content-type: {OPEN_METRICS}\r\n")),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        assert!(body.contains("xdp_breakout_maps_readable 0"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        // As older tools ask: the text format 0.0.4, without `# EOF`.
        for request in [
            &b"GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n"[..],
            b"GET /metrics HTTP/1.0\r\n\r\n",
        ] {
            let answer = ask(address, request).await;
            let (status, head, body) = split(&answer);
            assert!(status.ends_with(" 200 OK"), "{answer}");
            assert!(
                head.contains(&format!("content-type: {TEXT_004}\r\n")),
                "{head}"
            );
            assert!(body.contains("xdp_breakout_maps_readable 0"), "{body}");
            assert!(!body.contains("# EOF"), "{body}");
        }
        // HEAD: the GET's head, no body.
        let answer = ask(address, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        let (status, head, body) = split(&answer);
        assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
        assert!(
            head.contains(&format!("content-type: {TEXT_004}\r\n")),
            "{head}"
        );
        assert_eq!(body, "", "{answer}");
    }

    #[tokio::test]
    async fn the_pac_file_is_served_once_shared() {
        let shared = Arc::new(Shared::default());
        let address = listening(Arc::clone(&shared)).await;
        let answer = ask(address, b"GET /proxy.pac HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        assert!(answer.ends_with("no feed is installed\n"), "{answer}");
        let pac = "function FindProxyForURL(url, host) { return \"DIRECT\"; }\n";
        *shared.pac.lock().unwrap() = Some(pac.to_owned());
        let answer = ask(address, b"GET /proxy.pac HTTP/1.1\r\n\r\n").await;
        let (status, head, body) = split(&answer);
        assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
        assert!(
            head.contains("content-type: application/x-ns-proxy-autoconfig\r\n"),
            "{head}"
        );
        assert_eq!(body, pac);
    }

    /// Each request at the edges gets its status, and the next scrape is served.
    #[tokio::test]
    async fn requests_at_the_edges_get_their_status_and_the_listener_keeps_serving() {
        let address = listening(Arc::default()).await;
        let oversized_line = [&b"GET /"[..], &vec![b'a'; 20_000], b" HTTP/1.1\r\n\r\n"].concat();
        // A head of `len` bytes in few headers (hyper counts at most 100, and refuses more
        // with 431 too: few keep this about the size).
        let head_of = |len: usize| {
            let start = b"GET /metrics HTTP/1.1\r\n";
            let padding = len - start.len() - b"X-Padding: \r\n\r\n".len();
            [
                &start[..],
                b"X-Padding: ",
                &vec![b'a'; padding],
                b"\r\n\r\n",
            ]
            .concat()
        };
        let (largest, too_large) = (head_of(MAX_REQUEST), head_of(MAX_REQUEST + 1));
        let rows: [(&str, &[u8], &str); 9] = [
            (
                "another path",
                b"GET /nothing HTTP/1.1\r\n\r\n",
                "404 Not Found",
            ),
            (
                "another method",
                b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "405 Method Not Allowed",
            ),
            (
                "a TLS client hello",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                "400 Bad Request",
            ),
            (
                "an SSH banner",
                b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
                "400 Bad Request",
            ),
            (
                "a request line without a version",
                b"GET /metrics\r\n\r\n",
                "400 Bad Request",
            ),
            (
                "a request line with two spaces",
                b"GET  /metrics HTTP/1.1\r\n\r\n",
                "400 Bad Request",
            ),
            (
                "a 20 KB request line",
                &oversized_line,
                "431 Request Header Fields Too Large",
            ),
            ("a head of MAX_REQUEST bytes", &largest, "200 OK"),
            (
                "a head of MAX_REQUEST + 1 bytes",
                &too_large,
                "431 Request Header Fields Too Large",
            ),
        ];
        for (name, request, status) in rows {
            let answer = ask(address, request).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{name}: {answer}"
            );
            if status.starts_with("405") {
                assert!(
                    answer
                        .to_ascii_lowercase()
                        .contains("\r\nallow: get, head\r\n"),
                    "{name}: {answer}"
                );
            }
            still_serving(address, name).await;
        }
    }

    #[test]
    fn the_uplinks_quality_is_three_gauges_and_no_made_up_rtt() {
        use crate::{health::Figures, state::Uplink};
        let shared = Arc::new(Shared::default());
        let scrape = |quality: Option<Figures>| {
            *shared.status.lock().unwrap() = Status {
                uplink: Some(Uplink {
                    name: "direct".into(),
                    interface: None,
                    mark: 0x365,
                    table: None,
                    state: crate::health::State::Up,
                    since: None,
                    reason: None,
                    transitions: 0,
                    failed_probes: 0,
                    targets: Vec::new(),
                    quality,
                    grade: crate::uplinks::Grade::Good,
                    grade_reason: None,
                    grade_since: None,
                    grade_changes: 0,
                    sla: String::new(),
                    addresses: Vec::new(),
                    nat_address: Vec::new(),
                }),
                ..Status::default()
            };
            render(std::path::Path::new("/nonexistent"), &shared)
        };
        let body = scrape(None);
        assert!(!body.contains("xdp_breakout_uplink_loss_ratio"), "{body}");
        let body = scrape(Some(Figures {
            rtt_us: Some(12_500),
            last_rtt_us: Some(11_000),
            jitter_us: 750,
            probes: 50,
            lost: 1,
        }));
        for line in [
            "xdp_breakout_uplink_rtt_seconds{uplink=\"direct\"} 0.0125",
            "xdp_breakout_uplink_jitter_seconds{uplink=\"direct\"} 0.00075",
            "xdp_breakout_uplink_loss_ratio{uplink=\"direct\"} 0.02",
        ] {
            assert!(body.lines().any(|l| l == line), "no {line} in:\n{body}");
        }
        // Nothing answered in the window: loss and jitter, and no RTT at all.
        let body = scrape(Some(Figures {
            rtt_us: None,
            last_rtt_us: None,
            jitter_us: 0,
            probes: 50,
            lost: 50,
        }));
        assert!(!body.contains("xdp_breakout_uplink_rtt_seconds"), "{body}");
        assert!(
            body.lines()
                .any(|l| l == "xdp_breakout_uplink_loss_ratio{uplink=\"direct\"} 1.0"),
            "{body}"
        );
    }

    /// The value of the counter sample `name` (labels included) in an OpenMetrics `body`.
    fn sample(body: &str, name: &str) -> Option<u64> {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Holds `stream` open, trickling a byte of a head every 500 ms if `trickle`, until the
    /// server closes it; what the server sent (nothing is expected) and when it closed.
    async fn hold(mut stream: TcpStream, trickle: bool) -> (Vec<u8>, Instant) {
        let mut answer = Vec::new();
        let deadline = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5);
        while Instant::now() < deadline {
            if trickle {
                // The server may have closed: the read below says so.
                let _ = stream.write_all(b"a").await;
            }
            let mut buffer = [0; 512];
            match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
                Err(_) => {}
            }
        }
        (answer, Instant::now())
    }

    /// MAX_CONNECTIONS clients from four addresses that send part of a head, silent or one
    /// byte every 500 ms: a fifth from one address is closed at once; a scrape is answered
    /// at once, in the place of the oldest; the rest are closed REQUEST_TIMEOUT after they
    /// connected, the trickling ones too; each is counted once, by its reason.
    #[tokio::test]
    async fn slow_clients_are_closed_at_their_deadline_or_shed_and_counted() {
        let address = listening(Arc::default()).await;
        let mut slow = Vec::new();
        for client in 0..MAX_CONNECTIONS {
            let peer = u8::try_from(client / MAX_PER_PEER).unwrap();
            let source = Ipv4Addr::new(127, 0, 0, 2 + peer);
            let mut stream = connect_from(source, address).await.unwrap();
            let connected = Instant::now();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .unwrap();
            slow.push((connected, tokio::spawn(hold(stream, client % 2 == 1))));
        }
        // The clients' places are taken as they are accepted: let the listener catch up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let extra = connect_from(Ipv4Addr::new(127, 0, 0, 2), address)
            .await
            .unwrap();
        let connected = Instant::now();
        let (answer, closed) = hold(extra, false).await;
        assert!(answer.is_empty(), "{answer:?}");
        let extra_open = closed.duration_since(connected);
        let started = Instant::now();
        let answer = ask_from(
            Ipv4Addr::new(127, 0, 0, 100),
            address,
            b"GET /metrics HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "the scrape waited {waited:?}"
        );
        assert!(
            extra_open < Duration::from_secs(1),
            "a fifth connection from one address was kept {extra_open:?}"
        );
        for (client, (connected, holding)) in slow.into_iter().enumerate() {
            let (answer, closed) = holding.await.unwrap();
            assert!(
                answer.is_empty(),
                "client {client} was answered: {answer:?}"
            );
            let open = closed.duration_since(connected);
            if client == 0 {
                // The oldest sending its head, shed for the scrape.
                assert!(open < REQUEST_TIMEOUT, "client 0 was closed after {open:?}");
            } else {
                assert!(
                    open >= REQUEST_TIMEOUT && open < REQUEST_TIMEOUT + Duration::from_secs(2),
                    "client {client} was closed after {open:?}"
                );
            }
        }
        let answer = ask(
            address,
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n",
        )
        .await;
        let (_, _, body) = split(&answer);
        for (reason, count) in [
            ("peer_limit", 1),
            ("slowest_head", 1),
            ("oldest", 0),
            ("head_timeout", u64::try_from(MAX_CONNECTIONS - 1).unwrap()),
            ("connection_timeout", 0),
        ] {
            let name = format!("xdp_breakout_listener_shed_total{{reason=\"{reason}\"}}");
            assert_eq!(sample(body, &name), Some(count), "{name}: {body}");
        }
    }

    /// A client from `source` that sends a request head one byte a second and never ends
    /// it; when the server closes it, it connects again a second later, so the pressure
    /// lasts as long as the task. `connected` counts its connections.
    async fn trickle(source: Ipv4Addr, address: SocketAddr, connected: Arc<AtomicUsize>) {
        let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        loop {
            if let Ok(mut stream) = connect_from(source, address).await {
                connected.fetch_add(1, Ordering::Relaxed);
                for sent in 0.. {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    if stream.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    // A read ends early only when the server closes (or answers): then
                    // this client starts again.
                    let mut answer = [0; 512];
                    let wait =
                        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut answer));
                    if wait.await.is_ok() {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Issue 21, finding 4: 200 clients trickling their heads from ten addresses do not
    /// keep a scrape from another address from being answered within 5 s, and the listener
    /// serves as before once they are gone.
    #[tokio::test]
    async fn a_scrape_is_answered_while_200_slow_clients_are_connected() {
        const SLOW_CLIENTS: usize = 200;
        const SLOW_PEERS: u8 = 10;
        let address = listening(Arc::default()).await;
        let connected = Arc::new(AtomicUsize::new(0));
        let slow: Vec<_> = (0..SLOW_CLIENTS)
            .map(|client| {
                // In blocks of 20: each address sends more than MAX_PER_PEER in a row.
                let peer = u8::try_from(client / (SLOW_CLIENTS / usize::from(SLOW_PEERS))).unwrap();
                let source = Ipv4Addr::new(127, 0, 0, 2 + peer);
                tokio::spawn(trickle(source, address, Arc::clone(&connected)))
            })
            .collect();
        let all_connected = async {
            while connected.load(Ordering::Relaxed) < SLOW_CLIENTS {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all_connected)
            .await
            .expect("the slow clients connect within 10 s");
        // Two bytes of each head are in: every slot is held by a slow client.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let scraper = Ipv4Addr::new(127, 0, 0, 200);
        for scrape in 1..=3 {
            let started = Instant::now();
            let mut stream = connect_from(scraper, address).await.unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
            let read = read.await;
            let took = started.elapsed();
            eprintln!("scrape {scrape} under {SLOW_CLIENTS} slow clients: {took:?}");
            assert!(read.is_ok(), "scrape {scrape}: no answer within 10 s");
            let answer = String::from_utf8_lossy(&answer);
            let (status, _, body) = split(&answer);
            assert_eq!(status, "HTTP/1.1 200 OK", "scrape {scrape}: {answer}");
            assert!(body.ends_with("# EOF\n"), "scrape {scrape}: {body}");
            assert!(
                took < Duration::from_secs(5),
                "scrape {scrape} took {took:?}"
            );
            // Both limits were at work: the ten addresses want 40 places.
            for reason in ["peer_limit", "slowest_head"] {
                let name = format!("xdp_breakout_listener_shed_total{{reason=\"{reason}\"}}");
                assert!(
                    sample(body, &name).is_some_and(|count| count > 0),
                    "{name}: {body}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for client in slow {
            client.abort();
        }
        still_serving(address, "the slow clients went away").await;
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
