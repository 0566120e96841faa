//! xdp-breakout's user space: the feed, its compilation into map entries, and the data plane
//! (loading, attaching, reading and writing the pinned maps).

pub mod agent;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod compile;
pub mod config;
pub mod cover;
pub mod datapath;
pub mod dns;
pub mod dnsconfig;
pub mod explain;
pub mod feed;
pub mod gate;
pub mod health;
pub mod index;
pub mod metrics;
pub mod netlink;
pub mod pac;
pub mod pcap;
pub mod privilege;
pub mod secure;
pub mod settings;
pub mod sources;

pub mod state;
pub mod time;
pub mod uplinks;

/// The compiled kernel programs (classifier-ebpf), embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier"));

/// The 2026043000 Worldwide feed, so that a router classifies from its first second, offline.
pub static EMBEDDED_FEED: &[u8] =
    include_bytes!("../feeds/m365-worldwide-endpoints-2026043000.json");
/// Version of [`EMBEDDED_FEED`].
pub const EMBEDDED_FEED_VERSION: &str = "2026043000";
