//! The ABI between the xdp-breakout kernel programs and user space.
//!
//! Everything here is `#[repr(C)]` and laid out by hand: these types are map keys, map values
//! and XDP metadata, so their size and field order are a contract with every pinned map on a
//! running router and with whoever reads those maps with `bpftool`. Never reorder a field or
//! renumber a constant; add new ones at the end.
//!
//! Byte order: addresses are kept as the bytes of the packet (network order) so that the
//! kernel copies them straight from the header; every other integer is in host order.
#![no_std]

use core::mem::size_of;

pub mod index;

/// Name under `/sys/fs/bpf` of the directory that holds every pin.
pub const PIN_DIR: &str = "/sys/fs/bpf/xdp-breakout";

/// Map and program names: the contract between the object file, the agent and `bpftool`.
/// The kernel keeps 15 characters of a map name (`BPF_OBJ_NAME_LEN` - 1).
pub mod names {
    /// IPv4 prefixes: [`crate::LpmKeyV4`] -> [`crate::PrefixRules`].
    pub const PREFIX_V4: &str = "XB_PREFIX_V4";
    /// IPv6 prefixes: [`crate::LpmKeyV6`] -> [`crate::PrefixRules`].
    pub const PREFIX_V6: &str = "XB_PREFIX_V6";
    /// Category -> action ([`crate::Policy`]).
    pub const POLICY: &str = "XB_POLICY";
    /// Single entry: [`crate::Config`].
    pub const CONFIG: &str = "XB_CONFIG";
    /// Per-CPU [`crate::Counter`] by [`crate::stat`] index.
    pub const STATS: &str = "XB_STATS";
    /// Per-CPU [`crate::Counter`] by endpoint set id.
    pub const SET_STATS: &str = "XB_SET_STATS";
    /// Connections and the action of their first packet: [`crate::FlowKey`] ->
    /// [`crate::FlowValue`].
    pub const FLOWS: &str = "XB_FLOWS";
    /// The compiled index beside the tries: [`crate::index::Slot`]s, two halves.
    pub const INDEX_SLOTS: &str = "XB_IDX_SLOTS";
    /// Single entry: [`crate::index::IndexCtl`], which half is live.
    pub const INDEX_CTL: &str = "XB_IDX_CTL";
    /// Single entry: [`crate::Uplinks`], the direct uplinks' marks and which one a new flow
    /// of each category takes.
    pub const UPLINKS: &str = "XB_UPLINKS";
    /// Per-CPU [`crate::Counter`] of the packets marked for each direct uplink, by its index.
    pub const UPLINK_STATS: &str = "XB_UPLINK_STATS";
    /// aya-log's ring buffer (its name is fixed by aya-log).
    pub const LOGS: &str = "AYA_LOGS";
    /// Every map the agent pins, in pin order.
    pub const PINNED_MAPS: [&str; 11] = [
        PREFIX_V4,
        PREFIX_V6,
        POLICY,
        CONFIG,
        STATS,
        SET_STATS,
        FLOWS,
        INDEX_SLOTS,
        INDEX_CTL,
        UPLINKS,
        UPLINK_STATS,
    ];

    /// The XDP program (function name in the object file).
    pub const XDP_PROGRAM: &str = "breakout";
    /// The tc ingress program that turns the verdict into `skb->mark`.
    pub const TC_PROGRAM: &str = "breakout_mark";
    /// The tc ingress program that does both jobs, where no XDP program runs (`--mode tc`).
    pub const TC_ONLY_PROGRAM: &str = "breakout_tc";
    /// The tc egress program that copies DNS answers to clients (`[dns] learn`).
    pub const DNS_PROGRAM: &str = "breakout_dns";
    /// The query recorder the tc ingress programs tail-call (`[dns] learn`), and the program
    /// array that holds it (not pinned).
    pub const QUERY_PROGRAM: &str = "breakout_query";
    pub const QUERY_JUMP: &str = "XB_DNS_QUERY";
    /// Its ring buffer (not pinned: each agent loads its own, and swaps the program in).
    pub const DNS_RING: &str = "XB_DNS";
    /// DNS queries from LAN clients, awaiting their answers: [`crate::DnsQueryKey`] ->
    /// [`crate::DnsQuery`] (not pinned, as [`DNS_RING`]).
    pub const DNS_QUERIES: &str = "XB_DNS_QUERIES";
}

/// Maximum entries of each prefix trie.
pub const MAX_PREFIXES: u32 = 1 << 20;
/// Port rules carried by one prefix. The 2026043000 feed needs at most 7 after folding
/// covering prefixes into more specific ones; the compiler refuses a feed that needs more.
pub const MAX_RULES: usize = 16;
/// Endpoint set ids are indices into [`names::SET_STATS`], laid out by source: each
/// Microsoft 365 instance has [`M365_SET_IDS`] ids (Microsoft's own are below 200), the
/// configured instance first; every other source has one id from [`SOURCE_SET_BASE`] on.
pub const MAX_SET_ID: u32 = 8192;
/// Set ids of one Microsoft 365 instance: instance `k` (0 is `[feed]`) has
/// `k * M365_SET_IDS ..` and its feed's ids must be below this.
pub const M365_SET_IDS: u32 = 1024;
/// Microsoft 365 instances at once: `[feed]` and up to three more sources.
pub const MAX_M365_INSTANCES: u32 = 4;
/// The set id of the first source of another kind (`aws`, `cidr-list`, ...).
pub const SOURCE_SET_BASE: u32 = M365_SET_IDS * MAX_M365_INSTANCES;
/// Entries of [`names::STATS`].
pub const STATS_LEN: u32 = 32;
/// Entries of [`names::FLOWS`] unless the agent's configuration says otherwise (its
/// `[flows] table-size` sets the map's size at load).
pub const DEFAULT_FLOWS: u32 = 1 << 16;
/// Entries of [`names::INDEX_SLOTS`] (both halves) unless the agent's configuration says
/// otherwise (`[index] memory-mib`): 24 MiB.
pub const DEFAULT_INDEX_SLOTS: u32 = 1 << 20;
/// Idle time after which a flow is forgotten, when [`Config`] leaves it 0: TCP connections
/// idle for long (IMAP IDLE, keepalives of 30 min and more); other flows for short.
pub const DEFAULT_TCP_IDLE_S: u16 = 7200;
pub const DEFAULT_OTHER_IDLE_S: u16 = 120;

/// Endpoint categories, lowest first: a packet that belongs to several sets takes the highest.
pub mod category {
    /// No category: the destination is in no installed prefix.
    pub const NONE: u8 = 0;
    pub const DEFAULT: u8 = 1;
    pub const ALLOW: u8 = 2;
    pub const OPTIMIZE: u8 = 3;
    /// A source of another provider whose policy is `tunnel` (or one whose ports are given,
    /// for its other ports): below every Microsoft category.
    pub const TUNNEL: u8 = 4;
    /// A source of another provider whose policy is `direct`: above every Microsoft category.
    pub const DIRECT: u8 = 5;
    /// Entries of [`names::POLICY`](crate::names::POLICY), with room for more.
    pub const COUNT: u32 = 8;

    /// Microsoft's spelling, as in the feed and in `--json` output, and the two source
    /// categories.
    #[must_use]
    pub const fn name(category: u8) -> Option<&'static str> {
        match category {
            DEFAULT => Some("Default"),
            ALLOW => Some("Allow"),
            OPTIMIZE => Some("Optimize"),
            TUNNEL => Some("Tunnel"),
            DIRECT => Some("Direct"),
            _ => None,
        }
    }
}

/// What happens to a packet. Stored in [`Policy`] and [`XdpMeta`].
pub mod action {
    /// Leave the packet alone: it follows the main routing table, the tunnel.
    pub const TUNNEL: u8 = 0;
    /// Mark the packet so that policy routing sends it out of the direct uplink.
    pub const DIRECT: u8 = 1;

    #[must_use]
    pub const fn name(action: u8) -> &'static str {
        match action {
            DIRECT => "direct",
            _ => "tunnel",
        }
    }
}

/// IP protocol numbers carried in [`PortRule::proto`].
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Indices of [`names::STATS`]. Never renumbered: dashboards and scripts read them.
///
/// Every packet the XDP program sees counts once under an action (`TUNNEL`, `DIRECT`) and once
/// under a reason (`MATCH_PORT` .. `ERROR`). The notes after them count events on top.
pub mod stat {
    /// Left to the normal route (the tunnel).
    pub const TUNNEL: u32 = 0;
    /// Marked for direct egress.
    pub const DIRECT: u32 = 1;
    /// Destination in a prefix, and protocol and port matched one of its port rules.
    pub const MATCH_PORT: u32 = 2;
    /// Destination in a prefix; no port rule matched (or the protocol has no ports): the
    /// highest category of the prefix's endpoint sets applies.
    pub const MATCH_ADDR: u32 = 3;
    /// Destination in a prefix, no port rule matched, and strict ports is on: tunnel.
    pub const STRICT_MISS: u32 = 4;
    /// Destination in no prefix.
    pub const NO_MATCH: u32 = 5;
    /// A non-first IPv4 or IPv6 fragment: no ports, classified by its destination alone.
    pub const FRAGMENT: u32 = 6;
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    pub const NOT_IP: u32 = 7;
    /// A header was truncated or invalid (IPv4 IHL < 5, too many extension headers, ...).
    pub const MALFORMED: u32 = 8;
    /// An internal failure (a map or helper returned an error). The packet passes untouched.
    pub const ERROR: u32 = 9;
    /// Note: the driver gave no metadata room, the tc program classifies the packet itself.
    pub const NO_META: u32 = 10;
    /// Destination in an operator's `exclude` prefix (an entry of category none): tunnel.
    pub const EXCLUDED: u32 = 11;
    /// Note: a packet of a known flow took its flow's action, without a trie lookup.
    pub const FLOW_HIT: u32 = 13;
    /// Note: a new flow entered the flow table.
    pub const FLOW_NEW: u32 = 14;
    /// Note: the kernel closed a flow (TCP FIN or RST, or idle past its timeout). Flows the
    /// table evicts when full are `FLOW_NEW` minus this minus the flows in the table
    /// (`flow_evicted`, computed by user space: an LRU map evicts silently).
    pub const FLOW_CLOSED: u32 = 15;
    /// Note: a direct verdict went to the tunnel because the direct uplink is down
    /// ([`flags::UPLINK_DOWN`](crate::flags::UPLINK_DOWN)); counted under `TUNNEL`.
    pub const FAILOVER: u32 = 12;
    /// tc: mark set from the XDP program's metadata.
    pub const TC_MARK_META: u32 = 16;
    /// tc: mark set from the tc program's own classification (no metadata).
    pub const TC_MARK_SELF: u32 = 17;
    /// tc: verdict tunnel, mark left as it was.
    pub const TC_PASS: u32 = 18;
    /// Flows the full flow table evicted: never written by the kernel (an LRU map evicts
    /// silently); user space shows `FLOW_NEW - FLOW_CLOSED - flows in the table` here.
    pub const FLOW_EVICTED: u32 = 19;
    /// DNS learning (tc egress): a DNS answer copied to the agent.
    pub const DNS_COPIED: u32 = 20;
    /// A DNS answer not copied: the ring buffer was full (the agent is behind).
    pub const DNS_RING_FULL: u32 = 21;
    /// A DNS answer not copied: more than [`crate::DNS_RATE_PER_SEC`] this second on this CPU.
    pub const DNS_RATE_LIMITED: u32 = 22;
    /// A DNS answer not copied: longer than [`crate::DNS_MAX_MESSAGE`] (or no DNS header).
    pub const DNS_TOO_BIG: u32 = 23;
    /// DNS learning (LAN ingress): a client's query recorded in [`names::DNS_QUERIES`](crate::names::DNS_QUERIES).
    pub const DNS_QUERY: u32 = 24;
    /// A DNS answer refused: no recorded query has its client address and port, resolver
    /// address and DNS id (forged, or its query never crossed the LAN).
    pub const DNS_UNSOLICITED: u32 = 25;
    /// A DNS answer refused: its query was answered already (a replay, or a duplicate).
    pub const DNS_REPLAY: u32 = 26;
    /// A DNS answer refused: its question (name or type) is not the one asked, here or when
    /// the agent parsed it.
    pub const DNS_QUESTION_MISMATCH: u32 = 27;
    /// A DNS answer refused: it came more than [`crate::DNS_ANSWER_WITHIN_NS`] after its query.
    pub const DNS_LATE: u32 = 28;
    /// A DNS answer refused by the agent: from a resolver not in `[dns] resolvers`. Written by
    /// user space (CPU 0's slot), never by the kernel.
    pub const DNS_UNTRUSTED_RESOLVER: u32 = 29;
    /// A DNS answer refused by the agent: the question it parsed is not the one the kernel
    /// recorded (a hash collision, or a name the kernel's walk read otherwise). Written by
    /// user space, as [`DNS_UNTRUSTED_RESOLVER`].
    pub const DNS_PARSED_MISMATCH: u32 = 30;

    /// Every refusal of a DNS answer, by the name `learned` and `/metrics` give its reason.
    pub const DNS_REFUSALS: [(u32, &str); 6] = [
        (DNS_UNSOLICITED, "unsolicited"),
        (DNS_REPLAY, "replay"),
        (DNS_QUESTION_MISMATCH, "question_mismatch"),
        (DNS_LATE, "late"),
        (DNS_UNTRUSTED_RESOLVER, "untrusted_resolver"),
        (DNS_PARSED_MISMATCH, "parsed_mismatch"),
    ];

    /// The indices user space shows, with their names.
    pub const NAMED: [(u32, &str); 31] = [
        (TUNNEL, "tunnel"),
        (DIRECT, "direct"),
        (MATCH_PORT, "match_port"),
        (MATCH_ADDR, "match_addr"),
        (STRICT_MISS, "strict_miss"),
        (NO_MATCH, "no_match"),
        (FRAGMENT, "fragment"),
        (NOT_IP, "not_ip"),
        (MALFORMED, "malformed"),
        (ERROR, "error"),
        (NO_META, "no_meta"),
        (EXCLUDED, "excluded"),
        (FAILOVER, "failover"),
        (FLOW_HIT, "flow_hit"),
        (FLOW_NEW, "flow_new"),
        (FLOW_CLOSED, "flow_closed"),
        (FLOW_EVICTED, "flow_evicted"),
        (TC_MARK_META, "tc_mark_meta"),
        (TC_MARK_SELF, "tc_mark_self"),
        (TC_PASS, "tc_pass"),
        (DNS_COPIED, "dns_copied"),
        (DNS_RING_FULL, "dns_ring_full"),
        (DNS_RATE_LIMITED, "dns_rate_limited"),
        (DNS_TOO_BIG, "dns_too_big"),
        (DNS_QUERY, "dns_query"),
        (DNS_UNSOLICITED, "dns_unsolicited"),
        (DNS_REPLAY, "dns_replay"),
        (DNS_QUESTION_MISMATCH, "dns_question_mismatch"),
        (DNS_LATE, "dns_late"),
        (DNS_UNTRUSTED_RESOLVER, "dns_untrusted_resolver"),
        (DNS_PARSED_MISMATCH, "dns_parsed_mismatch"),
    ];
}

/// Key of [`names::PREFIX_V4`]: the layout of the kernel's `struct bpf_lpm_trie_key_u8`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LpmKeyV4 {
    /// Prefix length in bits, host order.
    pub prefix_len: u32,
    /// Address, network order (as in the packet).
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<LpmKeyV4>() == 8);

/// Key of [`names::PREFIX_V6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LpmKeyV6 {
    /// Prefix length in bits, host order.
    pub prefix_len: u32,
    /// Address, network order (as in the packet).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<LpmKeyV6>() == 20);

/// One `(protocol, port range) -> category, endpoint set` rule of a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRule {
    /// First port of the range, host order.
    pub port_lo: u16,
    /// Last port of the range (inclusive), host order.
    pub port_hi: u16,
    /// [`proto`] number.
    pub proto: u8,
    /// [`category`] of the packets this rule matches.
    pub category: u8,
    /// Endpoint set counted for them, host order.
    pub set_id: u16,
}
const _: () = assert!(size_of::<PortRule>() == 8);

/// Value of both prefix tries: everything the kernel needs about a prefix, in one entry, so
/// that one trie lookup and a bounded scan decide a packet and an update replaces a prefix's
/// whole rule set atomically (the trie swaps the node under RCU).
///
/// The compiler has folded the rules of every covering prefix into this entry, so the longest
/// match alone gives the right answer; rules are disjoint, so the first match is the match.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrefixRules {
    /// Number of valid entries at the front of `rules`.
    pub n_rules: u8,
    /// Category when no rule matches: the highest category of the prefix's endpoint sets.
    pub addr_category: u8,
    /// Endpoint set counted for an address-only match, host order.
    pub addr_set: u16,
    /// Length of this entry's own prefix, so that user space can explain a lookup.
    pub prefix_len: u8,
    pub _pad: [u8; 3],
    pub rules: [PortRule; MAX_RULES],
}
const _: () = assert!(size_of::<PrefixRules>() == 8 + 8 * MAX_RULES);

impl PrefixRules {
    pub const EMPTY: Self = Self {
        n_rules: 0,
        addr_category: category::NONE,
        addr_set: 0,
        prefix_len: 0,
        _pad: [0; 3],
        rules: [PortRule {
            port_lo: 0,
            port_hi: 0,
            proto: 0,
            category: category::NONE,
            set_id: 0,
        }; MAX_RULES],
    };

    /// The category and endpoint set for a packet, ignoring strict ports: the first rule whose
    /// protocol and port range hold the packet, else the address category. `port` is `None`
    /// for a packet without ports (another protocol, or a non-first fragment).
    #[must_use]
    pub fn classify(&self, proto: u8, port: Option<u16>) -> RuleMatch {
        classify_rules(self, proto, port).unwrap_or(RuleMatch {
            category: self.addr_category,
            set_id: self.addr_set,
            by_port: false,
        })
    }
}

/// Where a prefix's rules are read from: a trie's [`PrefixRules`], or the index's packed copy
/// of them ([`index::Packed`]).
pub trait Rules {
    /// `n_rules`, `addr_category`, `addr_set`.
    fn header(&self) -> (u8, u8, u16);
    /// Rule `i` (below `n_rules`), `None` when it cannot be read.
    fn rule(&self, i: usize) -> Option<PortRule>;
}

#[expect(
    clippy::inline_always,
    reason = "the kernel programs must inline the rule scan"
)]
impl Rules for PrefixRules {
    #[inline(always)]
    fn header(&self) -> (u8, u8, u16) {
        (self.n_rules, self.addr_category, self.addr_set)
    }

    #[inline(always)]
    fn rule(&self, i: usize) -> Option<PortRule> {
        self.rules.get(i).copied()
    }
}

/// [`PrefixRules::classify`] for any [`Rules`]; `None` when a rule cannot be read. The
/// kernel programs and user space (explaining a lookup) run this same loop.
#[expect(
    clippy::inline_always,
    reason = "the kernel programs must inline the bounded loop"
)]
#[inline(always)]
pub fn classify_rules<R: Rules + ?Sized>(
    rules: &R,
    proto: u8,
    port: Option<u16>,
) -> Option<RuleMatch> {
    let (n_rules, addr_category, addr_set) = rules.header();
    if let Some(port) = port {
        let n = usize::from(n_rules);
        // A constant bound keeps the loop visible to the verifier.
        for i in 0..MAX_RULES {
            if i >= n {
                break;
            }
            let rule = rules.rule(i)?;
            if rule.proto == proto && rule.port_lo <= port && port <= rule.port_hi {
                return Some(RuleMatch {
                    category: rule.category,
                    set_id: rule.set_id,
                    by_port: true,
                });
            }
        }
    }
    Some(RuleMatch {
        category: addr_category,
        set_id: addr_set,
        by_port: false,
    })
}

/// The result of [`PrefixRules::classify`] (not an ABI type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    /// [`category`] of the packet.
    pub category: u8,
    /// The endpoint set that decided it.
    pub set_id: u16,
    /// A port rule matched (else the address category applied).
    pub by_port: bool,
}

/// Value of [`names::POLICY`], indexed by [`category`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// [`action`] for packets of this category.
    pub action: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<Policy>() == 4);

/// Bits of [`Config::flags`].
pub mod flags {
    /// A packet whose destination matches but whose port matches no rule goes to the tunnel.
    pub const STRICT_PORTS: u32 = 1 << 0;
    /// Log each decision through aya-log (for debugging only: one line per packet).
    pub const DEBUG: u32 = 1 << 1;
    /// The direct uplink is down (the agent's health checks): a direct verdict goes to the
    /// tunnel. One write of the config map fails every new direct decision over.
    pub const UPLINK_DOWN: u32 = 1 << 2;
    /// Classify every packet afresh, without the flow table (the benchmarks' first-packet
    /// cost; never set by the agent).
    pub const FLOWS_OFF: u32 = 1 << 3;
    /// DNS learning is on: record the DNS queries LAN clients send, so that only answers to
    /// them are copied to the agent.
    pub const DNS_QUERIES: u32 = 1 << 4;
    /// Bits 16-23: direct uplink `i` is dead ([`crate::Uplinks::down`] too), so its flows
    /// move. In the config, read for every packet anyway, a flow hit needs no second map.
    pub const UPLINK_DOWN_SHIFT: u32 = 16;

    /// The flag of uplink `uplink`'s death; 0 (never set) for an index past the eighth.
    #[must_use]
    pub const fn uplink_down(uplink: u8) -> u32 {
        if (uplink as usize) < crate::MAX_UPLINKS {
            1 << (UPLINK_DOWN_SHIFT + uplink as u32)
        } else {
            0
        }
    }
}

/// Value of [`names::CONFIG`] (index 0), written by user space, read once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bits the tc program sets in `skb->mark` for direct packets, host order.
    pub mark: u32,
    /// Which bits of `skb->mark` belong to xdp-breakout; the others are kept, host order.
    pub mark_mask: u32,
    /// [`flags`] bits, host order.
    pub flags: u32,
    /// Seconds a TCP flow may be idle before it is classified afresh; 0 means
    /// [`DEFAULT_TCP_IDLE_S`]. Host order.
    pub tcp_idle_s: u16,
    /// The same for every other flow; 0 means [`DEFAULT_OTHER_IDLE_S`].
    pub other_idle_s: u16,
}
const _: () = assert!(size_of::<Config>() == 16);

/// Key of [`names::FLOWS`]: a TCP or UDP connection by its 5-tuple, any other protocol by
/// its addresses. Addresses in network order (IPv4 in the first 4 bytes, the rest zero),
/// everything else host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The source address (user space: `lookup`, `flows`, DNS learning).
    #[must_use]
    pub fn src_addr(&self) -> core::net::IpAddr {
        Self::addr(self.src, self.family)
    }

    /// The destination address.
    #[must_use]
    pub fn dst_addr(&self) -> core::net::IpAddr {
        Self::addr(self.dst, self.family)
    }

    fn addr(bytes: [u8; 16], family: u8) -> core::net::IpAddr {
        if family == 4 {
            core::net::IpAddr::V4(core::net::Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))
        } else {
            core::net::IpAddr::V6(core::net::Ipv6Addr::from(bytes))
        }
    }
}

/// Value of [`names::FLOWS`]: what the first packet of a flow got, kept for its life.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of its first and last packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Packets and bytes seen by the XDP program, first packet included.
    pub packets: u64,
    pub bytes: u64,
    /// [`action`] of every packet of the flow (tunnel after a failover).
    pub action: u8,
    /// [`category`] and endpoint set of the first packet.
    pub category: u8,
    pub set_id: u16,
    /// [`stat`] reason of the first packet.
    pub reason: u8,
    /// The direct uplink (its index in [`Uplinks`]) a direct flow leaves by.
    pub uplink: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowValue>() == 40);

/// The longest DNS message copied to the agent: EDNS's recommended UDP size (DNS Flag Day
/// 2020). A longer answer is counted ([`stat::DNS_TOO_BIG`]) and not copied.
pub const DNS_MAX_MESSAGE: usize = 1232;
/// DNS answers copied per second per CPU at most ([`stat::DNS_RATE_LIMITED`]).
pub const DNS_RATE_PER_SEC: u64 = 4096;
/// Bytes of the DNS ring buffer: about 800 answers of the largest size.
pub const DNS_RING_BYTES: u32 = 1 << 20;

/// Queries awaiting their answers at most ([`names::DNS_QUERIES`], an LRU hash: a flood of
/// queries forgets the oldest, whose answers are then refused as unsolicited).
pub const DNS_QUERIES: u32 = 16384;
/// An answer later than this after its query is refused ([`stat::DNS_LATE`]): resolvers give
/// up on an upstream well before (dnsmasq after 10 s in all, stub resolvers after 5 s a try).
pub const DNS_ANSWER_WITHIN_NS: u64 = 10_000_000_000;
/// Bytes of a question's name walked at most: a name on the wire is at most 255 bytes.
pub const DNS_MAX_NAME: usize = 255;

/// Key of [`names::DNS_QUERIES`]: what an answer to a query must echo, from where it must
/// come. Addresses network order (IPv4 in the first 4 bytes, the rest zero), the rest host
/// order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsQueryKey {
    /// The client that asked (the query's source, the answer's destination).
    pub client: [u8; 16],
    /// The resolver it asked (the query's destination, the answer's source).
    pub resolver: [u8; 16],
    /// The client's UDP port.
    pub client_port: u16,
    /// The DNS message id.
    pub id: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<DnsQueryKey>() == 40);

/// Value of [`names::DNS_QUERIES`], host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsQuery {
    /// `bpf_ktime_get_ns()` when the query crossed the LAN's ingress.
    pub ts_ns: u64,
    /// [`dns_name_hash`] of the question's name as it was on the wire.
    pub name_hash: u32,
    /// The question's type (A, AAAA, ...).
    pub qtype: u16,
    /// 1 once an answer matched: another one is a replay.
    pub answered: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<DnsQuery>() == 16);

/// FNV-1a's offset basis and prime (32 bits), for [`dns_name_hash`].
pub const FNV_OFFSET: u32 = 0x811c_9dc5;
pub const FNV_PRIME: u32 = 0x0100_0193;

/// One byte into an FNV-1a hash: the kernel hashes a question's name byte by byte as it walks
/// it, user space with [`dns_name_hash`]; both must give the same value.
#[expect(clippy::inline_always, reason = "in the kernel programs' bounded loop")]
#[inline(always)]
#[must_use]
pub const fn fnv_step(hash: u32, byte: u8) -> u32 {
    (hash ^ byte as u32).wrapping_mul(FNV_PRIME)
}

/// The hash of a question's name as on the wire, and its length: its length bytes and labels
/// up to and including the root's zero byte, case kept (a resolver echoes the question byte
/// for byte, and keeping the case keeps 0x20 randomization's bits).
///
/// The kernel hashes up to the first zero byte without reading the lengths (a bounded loop
/// the verifier can afford); here the labels are walked, and a name the two would read
/// differently is refused: `None` unless `wire` starts with a whole uncompressed name of at
/// most [`DNS_MAX_NAME`] bytes, labels of at most 63 bytes, no zero byte inside a label.
#[must_use]
pub fn dns_name_hash(wire: &[u8]) -> Option<(u32, usize)> {
    let mut hash = FNV_OFFSET;
    let mut next = 0;
    for (i, &byte) in wire.iter().enumerate().take(DNS_MAX_NAME) {
        hash = fnv_step(hash, byte);
        if i == next {
            if byte == 0 {
                return Some((hash, i + 1));
            }
            if byte > 63 {
                return None;
            }
            next = i + usize::from(byte) + 1;
        } else if byte == 0 {
            return None;
        }
    }
    None
}

/// A DNS answer on its way to a client, as the tc egress program copies it once it matched
/// the client's query. Host order but for `resolver`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsRecord {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it crossed tc.
    pub ts_ns: u64,
    /// The resolver that answered (the answer's source address), network order.
    pub resolver: [u8; 16],
    /// The recorded query's [`DnsQuery::name_hash`] and type, for the agent to check the
    /// question it parses against.
    pub name_hash: u32,
    /// Bytes of `message` that hold the DNS message.
    pub len: u16,
    pub qtype: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 7],
    pub message: [u8; DNS_MAX_MESSAGE],
}
const _: () = assert!(size_of::<DnsRecord>() == 40 + DNS_MAX_MESSAGE);

/// Default `mark/mask`: 0x365 ("365") in the low 16 bits.
pub const DEFAULT_MARK: u32 = 0x365;
pub const DEFAULT_MARK_MASK: u32 = 0xffff;

impl Default for Config {
    fn default() -> Self {
        Self {
            mark: DEFAULT_MARK,
            mark_mask: DEFAULT_MARK_MASK,
            flags: 0,
            tcp_idle_s: DEFAULT_TCP_IDLE_S,
            other_idle_s: DEFAULT_OTHER_IDLE_S,
        }
    }
}

/// Value of [`names::STATS`] and [`names::SET_STATS`], per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Host order.
    pub packets: u64,
    /// Bytes of frame from the Ethernet header on, host order.
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

impl core::ops::Add for Counter {
    type Output = Self;

    /// Wrapping, as the kernel's counters do.
    fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

/// The sum of per-CPU values.
impl<'a> core::iter::Sum<&'a Counter> for Counter {
    fn sum<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |sum, counter| sum + *counter)
    }
}

/// What the XDP program leaves in front of the packet (`bpf_xdp_adjust_meta`) for the tc
/// program. The kernel wants metadata sizes that are multiples of 4 and at most 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpMeta {
    /// [`XDP_META_MAGIC`], host order: tells our metadata from another program's.
    pub magic: u32,
    /// [`action`].
    pub action: u8,
    /// [`category`].
    pub category: u8,
    /// Endpoint set, host order.
    pub set_id: u16,
    /// The [`stat`] reason index.
    pub reason: u8,
    /// 1: a DNS query that the tc program records (`[dns] learn`; the XDP program leaves it
    /// to tc ingress, which records it in a program of its own).
    pub dns_query: u8,
    /// The direct uplink of a direct verdict, its index in [`Uplinks`].
    pub uplink: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<XdpMeta>() == 12);

/// "XBRK".
pub const XDP_META_MAGIC: u32 = 0x5842_524b;

impl XdpMeta {
    /// Decodes the metadata the XDP program wrote in front of a packet: `None` unless the
    /// bytes hold a whole `XdpMeta` with our magic (another program's metadata, or none).
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        let field = |at: usize, len: usize| bytes.get(at..at + len);
        let magic = u32::from_ne_bytes(field(0, 4)?.try_into().ok()?);
        if magic != XDP_META_MAGIC {
            return None;
        }
        let set_id = u16::from_ne_bytes(field(6, 2)?.try_into().ok()?);
        Some(Self {
            magic,
            action: *bytes.get(4)?,
            category: *bytes.get(5)?,
            set_id,
            reason: *bytes.get(8)?,
            dns_query: *bytes.get(9)?,
            uplink: *bytes.get(10)?,
            _pad: 0,
        })
    }
}

/// Direct uplinks at most.
pub const MAX_UPLINKS: usize = 8;
/// Slots of each category's steering row: a new flow takes the uplink of slot
/// `flow_hash % STEER_SLOTS`, so weights are kept to 1/64.
pub const STEER_SLOTS: usize = 64;
/// A steering slot that sends new flows of its category to the tunnel: no direct uplink
/// may take them.
pub const STEER_TUNNEL: u8 = 0xff;

/// Value of [`names::UPLINKS`] (index 0), written by the agent whenever an uplink's state
/// changes: which direct uplink a new flow takes, with no user space per packet. A zeroed
/// value (`count` 0) is one uplink with [`Config::mark`], as before there were several.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uplinks {
    /// Each uplink's mark, host order (0: [`Config::mark`]); the mask is [`Config::mark_mask`].
    pub marks: [u32; MAX_UPLINKS],
    /// Bit `i`: uplink `i` is dead, and its flows move to the uplink their category's row
    /// gives now (or the tunnel). A degraded uplink keeps its flows.
    pub down: u32,
    /// Uplinks configured; 0: steering is off and every direct flow takes uplink 0.
    pub count: u32,
    /// Per [`category`], the uplink index (or [`STEER_TUNNEL`]) of each slot.
    pub steer: [[u8; STEER_SLOTS]; category::COUNT as usize],
}
const _: () = assert!(size_of::<Uplinks>() == 40 + STEER_SLOTS * category::COUNT as usize);

impl Uplinks {
    /// One uplink, no steering: what an unwritten map holds.
    pub const ONE: Self = Self {
        marks: [0; MAX_UPLINKS],
        down: 0,
        count: 0,
        steer: [[0; STEER_SLOTS]; category::COUNT as usize],
    };

    /// The uplink a new direct flow of `category` takes, by its [`flow_hash`] (computed only
    /// when there are several uplinks to choose from): an index, or [`STEER_TUNNEL`].
    #[expect(
        clippy::inline_always,
        reason = "called from the kernel programs' hot path"
    )]
    #[inline(always)]
    #[must_use]
    pub fn steer(&self, category: u8, hash: impl FnOnce() -> u32) -> u8 {
        if self.count == 0 {
            return 0;
        }
        let row = &self.steer[(category as usize) & (category::COUNT as usize - 1)];
        if self.count == 1 {
            return row[0];
        }
        row[hash() as usize % STEER_SLOTS]
    }

    /// Whether uplink `uplink`'s flows must move (it is dead).
    #[expect(
        clippy::inline_always,
        reason = "called from the kernel programs' hot path"
    )]
    #[inline(always)]
    #[must_use]
    pub const fn is_down(&self, uplink: u8) -> bool {
        uplink < 32 && self.down & (1 << uplink) != 0
    }

    /// The `skb->mark` bits of `uplink` (the configured mark for 0 or an unset one).
    #[expect(
        clippy::inline_always,
        reason = "called from the kernel programs' hot path"
    )]
    #[inline(always)]
    #[must_use]
    pub fn mark(&self, uplink: u8, config_mark: u32) -> u32 {
        match self.marks.get(uplink as usize) {
            Some(&mark) if mark != 0 => mark,
            _ => config_mark,
        }
    }
}

/// A flow's hash for steering: the words of its key folded and mixed by MurmurHash3's
/// finalizer, so that the slots of a [`Uplinks`] row share flows by their weights.
#[expect(
    clippy::inline_always,
    reason = "called from the kernel programs' hot path"
)]
#[inline(always)]
#[must_use]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let word = |bytes: &[u8; 16], at: usize| {
        u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    let mut h = 0x9e37_79b9_u32;
    let mut at = 0;
    while at < 16 {
        h = (h ^ word(&key.src, at)).rotate_left(13).wrapping_mul(5);
        h = (h ^ word(&key.dst, at)).rotate_left(13).wrapping_mul(5);
        at += 4;
    }
    h ^= (u32::from(key.sport) << 16) | u32::from(key.dport);
    h ^= u32::from(key.proto) << 8;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// What the data plane decides for a packet: the one rule that the kernel programs apply and
/// that `lookup` explains, so that the two cannot drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// [`action`].
    pub action: u8,
    /// A [`stat`] reason index.
    pub reason: u32,
    /// [`category`] of the packet.
    pub category: u8,
    /// The endpoint set that decided (0: none, or an operator prefix).
    pub set_id: u16,
    /// A direct verdict sent to the tunnel because the direct uplink is down.
    pub failover: bool,
    /// The direct uplink of a direct verdict ([`steer`]); 0 until steered.
    pub uplink: u8,
}

impl Decision {
    /// To the tunnel for `reason`, with no category.
    #[expect(
        clippy::inline_always,
        reason = "called from the kernel programs' hot path"
    )]
    #[inline(always)]
    #[must_use]
    pub const fn tunnel(reason: u32) -> Self {
        Self {
            action: action::TUNNEL,
            reason,
            category: category::NONE,
            set_id: 0,
            failover: false,
            uplink: 0,
        }
    }
}

/// Decides a packet from the rules of the longest installed prefix that holds its
/// destination (`rules`, `None` when none does; a rule that cannot be read is `ERROR`), its protocol and destination port (`None`
/// without ports), whether it is a non-first fragment, the [`flags`] of [`Config`], and the
/// policy (`policy(category)` is the action of a category, `None` when it cannot be read).
///
/// - No prefix: tunnel, `NO_MATCH` (`FRAGMENT` for a non-first fragment).
/// - An `exclude` entry (category none): tunnel, `EXCLUDED`.
/// - A non-first fragment: by its destination alone, `FRAGMENT`, in both port modes: its
///   first fragment most likely matched a port rule, and a datagram whose fragments take two
///   uplinks (two source NATs) never reassembles.
/// - A port rule holds the packet: its category, `MATCH_PORT`.
/// - None does: strict ports sends it to the tunnel (`STRICT_MISS`), unless the prefix's
///   category comes from an operator's `include` (set 0); otherwise the prefix's highest
///   category, `MATCH_ADDR`.
/// - The category's action comes from the policy; a failed read is `ERROR`, tunnel.
/// - A direct action becomes tunnel while [`flags::UPLINK_DOWN`] is set (`failover`).
#[expect(
    clippy::inline_always,
    reason = "the kernel programs must inline the policy closure and the rule scan"
)]
#[inline(always)]
pub fn decide<R: Rules + ?Sized>(
    rules: Option<&R>,
    proto: u8,
    port: Option<u16>,
    later_fragment: bool,
    config_flags: u32,
    policy: impl FnOnce(u8) -> Option<u8>,
) -> Decision {
    let Some(rules) = rules else {
        return Decision::tunnel(if later_fragment {
            stat::FRAGMENT
        } else {
            stat::NO_MATCH
        });
    };
    let Some(found) = classify_rules(rules, proto, if later_fragment { None } else { port }) else {
        return Decision::tunnel(stat::ERROR);
    };
    if found.category == category::NONE {
        return Decision::tunnel(stat::EXCLUDED);
    }
    let reason = if later_fragment {
        stat::FRAGMENT
    } else if found.by_port {
        stat::MATCH_PORT
    } else if config_flags & flags::STRICT_PORTS != 0 && found.set_id != 0 {
        // Strict ports is about the feed's port lists; an operator's `include` (set 0) has
        // none and goes direct by address, as configured.
        return Decision {
            action: action::TUNNEL,
            reason: stat::STRICT_MISS,
            category: found.category,
            set_id: found.set_id,
            failover: false,
            uplink: 0,
        };
    } else {
        stat::MATCH_ADDR
    };
    let Some(policy_action) = policy(found.category) else {
        return Decision::tunnel(stat::ERROR);
    };
    let failover = policy_action == action::DIRECT && config_flags & flags::UPLINK_DOWN != 0;
    Decision {
        action: if failover {
            action::TUNNEL
        } else {
            policy_action
        },
        reason,
        category: found.category,
        set_id: found.set_id,
        failover,
        uplink: 0,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], made only of integers, with explicit padding.
    unsafe impl aya::Pod for super::PrefixRules {}
    unsafe impl aya::Pod for super::Policy {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::index::Slot {}
    unsafe impl aya::Pod for super::index::IndexCtl {}
    unsafe impl aya::Pod for super::DnsQueryKey {}
    unsafe impl aya::Pod for super::DnsQuery {}
    unsafe impl aya::Pod for super::Uplinks {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> PrefixRules {
        let mut rules = PrefixRules::EMPTY;
        rules.rules[0] = PortRule {
            port_lo: 587,
            port_hi: 587,
            proto: proto::TCP,
            category: category::ALLOW,
            set_id: 2,
        };
        rules.n_rules = 1;
        rules.addr_category = category::OPTIMIZE;
        rules.addr_set = 1;
        rules.prefix_len = 13;
        rules
    }

    /// Optimize direct, the rest tunnel.
    #[expect(clippy::unnecessary_wraps, reason = "the shape decide() takes")]
    fn policy(category: u8) -> Option<u8> {
        Some(if category == category::OPTIMIZE {
            action::DIRECT
        } else {
            action::TUNNEL
        })
    }

    #[test]
    fn decide_covers_every_reason() {
        use action::{DIRECT, TUNNEL};
        let rules = exchange();
        let excluded = PrefixRules::EMPTY;
        let d = |rules: Option<&PrefixRules>, port, fragment, flags| {
            let d = decide(rules, proto::TCP, port, fragment, flags, policy);
            (d.action, d.reason, d.category, d.set_id, d.failover)
        };
        assert_eq!(
            d(None, Some(443), false, 0),
            (TUNNEL, stat::NO_MATCH, 0, 0, false)
        );
        assert_eq!(
            d(None, None, true, 0),
            (TUNNEL, stat::FRAGMENT, 0, 0, false)
        );
        assert_eq!(
            d(Some(&excluded), Some(443), false, 0),
            (TUNNEL, stat::EXCLUDED, 0, 0, false)
        );
        assert_eq!(
            d(Some(&rules), Some(587), false, 0),
            (TUNNEL, stat::MATCH_PORT, category::ALLOW, 2, false)
        );
        assert_eq!(
            d(Some(&rules), Some(9), false, 0),
            (DIRECT, stat::MATCH_ADDR, category::OPTIMIZE, 1, false)
        );
        assert_eq!(
            d(Some(&rules), Some(9), false, flags::STRICT_PORTS),
            (TUNNEL, stat::STRICT_MISS, category::OPTIMIZE, 1, false)
        );
        // A later fragment of a 587 datagram has no port: by address, in strict mode too.
        assert_eq!(
            d(Some(&rules), Some(587), true, flags::STRICT_PORTS),
            (DIRECT, stat::FRAGMENT, category::OPTIMIZE, 1, false)
        );
        assert_eq!(
            d(Some(&rules), Some(9), false, flags::UPLINK_DOWN),
            (TUNNEL, stat::MATCH_ADDR, category::OPTIMIZE, 1, true)
        );
        assert_eq!(
            d(Some(&rules), Some(587), false, flags::UPLINK_DOWN),
            (TUNNEL, stat::MATCH_PORT, category::ALLOW, 2, false),
            "only direct verdicts fail over"
        );
        let mut include = PrefixRules::EMPTY;
        include.addr_category = category::OPTIMIZE;
        assert_eq!(
            d(Some(&include), Some(443), false, flags::STRICT_PORTS),
            (DIRECT, stat::MATCH_ADDR, category::OPTIMIZE, 0, false),
            "an operator's include is direct by address, strict ports or not"
        );
        let failed = decide(Some(&rules), proto::TCP, Some(9), false, 0, |_| None);
        assert_eq!((failed.action, failed.reason), (TUNNEL, stat::ERROR));
    }

    #[test]
    fn metadata_decodes_only_with_our_magic() {
        let meta = XdpMeta {
            magic: XDP_META_MAGIC,
            action: action::DIRECT,
            category: category::OPTIMIZE,
            set_id: 11,
            reason: 2,
            dns_query: 0,
            uplink: 3,
            _pad: 0,
        };
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&XDP_META_MAGIC.to_ne_bytes());
        bytes[4] = action::DIRECT;
        bytes[5] = category::OPTIMIZE;
        bytes[6..8].copy_from_slice(&11u16.to_ne_bytes());
        bytes[8] = 2;
        bytes[10] = 3;
        assert_eq!(XdpMeta::from_bytes(&bytes), Some(meta));
        assert_eq!(XdpMeta::from_bytes(&bytes[..11]), None, "short");
        bytes[0] ^= 1;
        assert_eq!(XdpMeta::from_bytes(&bytes), None, "another program's");
    }

    /// An unwritten map is one uplink with the configured mark; a written one steers by the
    /// category's row, marks by the uplink's own mark, and names its dead uplinks.
    #[test]
    fn uplinks_steer_mark_and_die() {
        let one = Uplinks::ONE;
        assert_eq!(one.steer(category::OPTIMIZE, || 12345), 0);
        assert_eq!(one.mark(0, 0x365), 0x365);
        assert!(!one.is_down(0));
        let mut two = Uplinks::ONE;
        two.count = 2;
        two.marks[..2].copy_from_slice(&[0x365, 0x366]);
        two.down = 0b10;
        for (slot, uplink) in two.steer[usize::from(category::OPTIMIZE)]
            .iter_mut()
            .enumerate()
        {
            *uplink = u8::try_from(slot % 2).unwrap();
        }
        two.steer[usize::from(category::ALLOW)].fill(STEER_TUNNEL);
        assert_eq!(two.steer(category::OPTIMIZE, || 64 + 3), 1);
        assert_eq!(two.steer(category::OPTIMIZE, || 64 + 4), 0);
        assert_eq!(two.steer(category::ALLOW, || 7), STEER_TUNNEL);
        assert_eq!(
            two.steer(200, || 7),
            0,
            "an out-of-range category reads a row, never past"
        );
        let mut single = two;
        single.count = 1;
        single.steer[usize::from(category::OPTIMIZE)].fill(STEER_TUNNEL);
        assert_eq!(
            single.steer(category::OPTIMIZE, || unreachable!(
                "one uplink needs no hash"
            )),
            STEER_TUNNEL
        );
        assert_eq!((two.mark(1, 0x365), two.mark(5, 0x365)), (0x366, 0x365));
        assert!(two.is_down(1) && !two.is_down(0) && !two.is_down(40));
    }

    /// Flows that differ in a source port spread evenly over the 64 slots.
    #[test]
    fn flow_hashes_spread_over_the_slots() {
        let mut slots = [0u32; STEER_SLOTS];
        for port in 20_000..26_400u16 {
            let key = FlowKey {
                src: [10, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                dst: [52, 112, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                sport: port,
                dport: 3478,
                proto: proto::UDP,
                family: 4,
                _pad: [0; 2],
            };
            slots[flow_hash(&key) as usize % STEER_SLOTS] += 1;
        }
        // 100 a slot on average: every slot within 50..150.
        assert!(slots.iter().all(|n| (50..150).contains(n)), "{slots:?}");
    }

    fn rules(list: &[PortRule]) -> PrefixRules {
        let mut value = PrefixRules::EMPTY;
        value.rules[..list.len()].copy_from_slice(list);
        value.n_rules = u8::try_from(list.len()).unwrap();
        value.addr_category = category::OPTIMIZE;
        value.addr_set = 1;
        value
    }

    #[test]
    fn classify_takes_the_rule_that_holds_protocol_and_port() {
        let value = rules(&[
            PortRule {
                port_lo: 443,
                port_hi: 443,
                proto: proto::TCP,
                category: category::OPTIMIZE,
                set_id: 1,
            },
            PortRule {
                port_lo: 587,
                port_hi: 587,
                proto: proto::TCP,
                category: category::ALLOW,
                set_id: 2,
            },
            PortRule {
                port_lo: 3478,
                port_hi: 3481,
                proto: proto::UDP,
                category: category::OPTIMIZE,
                set_id: 11,
            },
        ]);
        let m = |category, set_id, by_port| RuleMatch {
            category,
            set_id,
            by_port,
        };
        assert_eq!(
            value.classify(proto::TCP, Some(587)),
            m(category::ALLOW, 2, true)
        );
        assert_eq!(
            value.classify(proto::UDP, Some(3480)),
            m(category::OPTIMIZE, 11, true)
        );
        assert_eq!(
            value.classify(proto::UDP, Some(587)),
            m(category::OPTIMIZE, 1, false)
        );
        assert_eq!(
            value.classify(proto::TCP, None),
            m(category::OPTIMIZE, 1, false)
        );
    }

    #[test]
    fn classify_never_reads_past_max_rules() {
        let mut value = rules(&[]);
        value.n_rules = u8::MAX;
        let found = value.classify(proto::TCP, Some(1));
        assert_eq!((found.category, found.by_port), (category::OPTIMIZE, false));
    }

    #[test]
    fn names_fit_the_kernel() {
        for name in names::PINNED_MAPS {
            assert!(
                name.len() <= 15,
                "{name} is longer than BPF_OBJ_NAME_LEN - 1"
            );
        }
    }

    #[test]
    fn stat_indices_are_unique_and_in_range() {
        for (i, (index, name)) in stat::NAMED.iter().enumerate() {
            assert!(*index < STATS_LEN, "{name}");
            assert!(
                stat::NAMED[..i].iter().all(|(other, _)| other != index),
                "{name}"
            );
        }
    }

    #[test]
    fn categories_are_ordered() {
        const { assert!(category::NONE < category::DEFAULT) };
        const { assert!(category::DEFAULT < category::ALLOW) };
        const { assert!(category::ALLOW < category::OPTIMIZE) };
        assert_eq!(category::name(category::OPTIMIZE), Some("Optimize"));
        assert_eq!(category::name(category::NONE), None);
    }
}
