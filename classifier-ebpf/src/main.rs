//! xdp-breakout's kernel side.
//!
//! `breakout` (XDP, on the LAN interface) classifies each packet by a longest-prefix match of
//! its destination (a walk of the compiled index, `classifier_common::index`, or a lookup in
//! the tries while no index is live) and records the verdict in XDP metadata; `breakout_mark` (tc ingress, same
//! interface) turns a direct verdict into `skb->mark` for policy routing, classifying the
//! packet itself when the driver gave no metadata room. `breakout_tc` (tc ingress alone,
//! `--mode tc`: bridges, VLAN devices and NICs where XDP runs only in generic mode) does both
//! jobs in one program: the flow table, the decision and the counters of `breakout`, then
//! the mark. With `[dns] learn`, the LAN ingress program (`breakout`, or `breakout_tc`
//! alone) records each DNS query a client sends, and `breakout_dns` (tc egress) copies the
//! answers to those queries, and only those, into a ring buffer for the agent, which learns
//! the addresses of Microsoft 365's URL-only endpoints from them (`dns`). None ever drops a packet: every
//! path ends in a pass. Failing open is deliberate: a router that loses its classifier must
//! still route, through the tunnel, as it did before xdp-breakout.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    helpers::{bpf_ktime_get_coarse_ns, bpf_skb_pull_data, bpf_xdp_adjust_meta},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::info;
use classifier_common::{
    Config, Counter, DEFAULT_FLOWS, DEFAULT_INDEX_SLOTS, DEFAULT_OTHER_IDLE_S, DEFAULT_TCP_IDLE_S,
    Decision, FlowKey, FlowValue, LpmKeyV4, LpmKeyV6, MAX_PREFIXES, MAX_SET_ID, MAX_UPLINKS,
    Policy, PrefixRules, STATS_LEN, STEER_TUNNEL, Uplinks, XDP_META_MAGIC, XdpMeta, action,
    category, decide, flags, flow_hash,
    index::{self, IndexCtl, Packed, Slot, Slots},
    proto, stat,
};

use classifier_ebpf::{
    counter,
    parse::{Cursor, Packet, Unparsed, parse},
};

mod dns;

// The map names are the contract in `classifier_common::names`; a test reads them back
// from the object. `BPF_F_NO_PREALLOC` is the trie's default flag and the kernel requires it.

/// IPv4 prefixes. Key: prefix length (host order) and address (network order). Value: the
/// prefix's folded port rules. Written by the agent; pinned as `XB_PREFIX_V4`.
#[btf_map]
static XB_PREFIX_V4: LpmTrie<[u8; 4], PrefixRules, { MAX_PREFIXES as usize }> = LpmTrie::new();

/// IPv6 prefixes, as [`XB_PREFIX_V4`]. Pinned as `XB_PREFIX_V6`.
#[btf_map]
static XB_PREFIX_V6: LpmTrie<[u8; 16], PrefixRules, { MAX_PREFIXES as usize }> = LpmTrie::new();

/// Category (index) -> action. Written by the agent from its policy; pinned as `XB_POLICY`.
#[btf_map]
static XB_POLICY: Array<Policy, { category::COUNT as usize }> = Array::new();

/// Index 0: mark value and mask, strict ports and debug flags. Written by the agent; pinned
/// as `XB_CONFIG`.
#[btf_map]
static XB_CONFIG: Array<Config, 1> = Array::new();

/// Per-CPU packets and bytes by `classifier_common::stat` index. Written here; summed by the
/// agent; pinned as `XB_STATS`.
#[btf_map]
static XB_STATS: PerCpuArray<Counter, { STATS_LEN as usize }> = PerCpuArray::new();

/// Per-CPU packets and bytes by the endpoint set that decided a packet. Pinned as
/// `XB_SET_STATS`.
#[btf_map]
static XB_SET_STATS: PerCpuArray<Counter, { MAX_SET_ID as usize }> = PerCpuArray::new();

/// Flows (5-tuples; addresses and protocol without ports) and the action of their first
/// packet, so that a connection keeps its uplink across feed updates and policy reloads, and
/// a known flow skips the trie. An LRU hash: a full table forgets its least recent flow.
/// The agent sets its size at load (`[flows] table-size`); pinned as `XB_FLOWS`.
#[btf_map]
static XB_FLOWS: LruHashMap<FlowKey, FlowValue, { DEFAULT_FLOWS as usize }> = LruHashMap::new();

/// The compiled index (`classifier_common::index`): two halves of slots, the live one and the
/// one user space builds next, filled through a shared mapping. Sized at load (`[index]
/// memory-mib`); pinned as `XB_IDX_SLOTS`.
#[btf_map]
static XB_IDX_SLOTS: Array<Slot, { DEFAULT_INDEX_SLOTS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

/// Index 0: which half of the index is live, or none (then the tries decide). Pinned as
/// `XB_IDX_CTL`.
#[btf_map]
static XB_IDX_CTL: Array<IndexCtl, 1, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Index 0: the direct uplinks' marks, which are dead, and which one a new flow of each
/// category takes. Written by the agent; pinned as `XB_UPLINKS`.
#[btf_map]
static XB_UPLINKS: Array<Uplinks, 1> = Array::new();

/// Per-CPU packets and bytes marked for each direct uplink. Pinned as `XB_UPLINK_STATS`.
#[btf_map]
static XB_UPLINK_STATS: PerCpuArray<Counter, MAX_UPLINKS> = PerCpuArray::new();

// Compile-time proof that the keys above are the common crate's key types.
const _: () = assert!(size_of::<Key<[u8; 4]>>() == size_of::<LpmKeyV4>());
const _: () = assert!(size_of::<Key<[u8; 16]>>() == size_of::<LpmKeyV6>());

/// A packet that could not be parsed passes to the tunnel, counted by why.
#[inline(always)]
fn unparsed(unparsed: Unparsed) -> Decision {
    Decision::tunnel(match unparsed {
        Unparsed::NotIp => stat::NOT_IP,
        Unparsed::Malformed => stat::MALFORMED,
    })
}

#[inline(always)]
fn config() -> Config {
    XB_CONFIG.get(0).copied().unwrap_or_default()
}

/// The live half of the index: its slots from `base`.
struct LiveHalf {
    base: u32,
}

impl Slots for LiveHalf {
    #[inline(always)]
    fn slot(&self, index: u32) -> Option<&Slot> {
        XB_IDX_SLOTS.get(self.base.wrapping_add(index))
    }
}

/// The control word of the index: which half is live, if any (`index::live_half`). Read
/// once per packet, as a plain integer: an `Option` kept across the branches below leaves
/// LLVM an undefined payload to spill, which the verifier refuses.
#[inline(always)]
fn live_word() -> u64 {
    let Some(ctl) = XB_IDX_CTL.get_ptr(0) else {
        return index::LIVE_OFF;
    };
    // SAFETY: the map's value; user space switches halves with one aligned 64-bit store,
    // read once here, so a packet walks one half from start to end. The half it walks is
    // not rewritten before an RCU grace period has passed since the switch.
    unsafe { core::ptr::read_volatile(&raw const (*ctl).live) }
}

/// One index walk (or trie lookup), one bounded rule scan, one policy read; the rule itself
/// is `classifier_common::decide`, which `lookup` applies too.
#[inline(always)]
fn classify(packet: &Packet, config_flags: u32) -> Decision {
    let policy = |category: u8| {
        XB_POLICY
            .get(u32::from(category))
            .map(|policy| policy.action)
    };
    // One `decide` per family: with a single call after the lookup, LLVM merges the two trie
    // lookups into one call that sees both maps, and the kernel keeps the generic lookup
    // helper (an indirect call, 12-15 ns a packet) instead of binding each call to its map's
    // own lookup. `tests/object.rs` checks every lookup sees one map.
    // Prefix length 32 (128) asks for the longest prefix that holds the whole address.
    // Either answer is read in place: the tries' value, or the index's packed rules.
    let live = live_word();
    if !packet.dst.v6 {
        let addr = packet.dst.v4_bytes();
        if let Some(base) = index::live_v4(live)
            && let half = (LiveHalf { base })
            && let Some(leaf) = index::find_v4(&half, addr)
            && let Some(found) = Packed::at(&half, leaf)
        {
            return decide(
                found.as_ref(),
                packet.proto,
                packet.port(),
                packet.later_fragment,
                config_flags,
                policy,
            );
        }
        decide(
            XB_PREFIX_V4.get(&Key::new(32, addr)),
            packet.proto,
            packet.port(),
            packet.later_fragment,
            config_flags,
            policy,
        )
    } else {
        let addr = packet.dst.bytes;
        if let Some(base) = index::live_v6(live)
            && let half = (LiveHalf { base })
            && let Some(leaf) = index::find_v6(&half, addr)
            && let Some(found) = Packed::at(&half, leaf)
        {
            return decide(
                found.as_ref(),
                packet.proto,
                packet.port(),
                packet.later_fragment,
                config_flags,
                policy,
            );
        }
        decide(
            XB_PREFIX_V6.get(&Key::new(128, addr)),
            packet.proto,
            packet.port(),
            packet.later_fragment,
            config_flags,
            policy,
        )
    }
}

#[inline(always)]
fn count(map_index: u32, bytes: u64) {
    counter::add(&XB_STATS, map_index, bytes);
}

#[inline(always)]
fn count_set(set_id: u16, bytes: u64) {
    if set_id != 0 {
        counter::add(&XB_SET_STATS, u32::from(set_id), bytes);
    }
}

/// Classifies each packet on the LAN interface and leaves the verdict in XDP metadata.
#[xdp]
pub fn breakout(ctx: XdpContext) -> u32 {
    let config = config();
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let mut query = false;
    // SAFETY: data .. data_end is the frame, valid while the program runs.
    let verdict = match parse(&mut unsafe { Cursor::new(ctx.data(), ctx.data_end()) }) {
        Ok(packet) => {
            query = config.flags & flags::DNS_QUERIES != 0 && dns::is_query(&packet);
            decide_packet(&packet, &config, bytes)
        }
        Err(why) => unparsed(why),
    };
    // A query is recorded at tc ingress, told by the metadata.
    finish(&ctx, verdict, config.flags, query)
}

/// A parsed packet's verdict, through the flow table: a known flow keeps its action, a new
/// one is classified and recorded (the XDP program's path, and `breakout_tc`'s).
#[inline(always)]
fn decide_packet(packet: &Packet, config: &Config, bytes: u64) -> Decision {
    // A non-first fragment has no ports, so no flow of its own: its destination decides, as
    // it did before flows (`decide`). It never enters the table. One `classify` for both
    // paths: two copies of it make the program too big for LLVM to inline into its entry.
    let packet = *packet;
    let key = flow_key(&packet);
    let tracked = !packet.later_fragment && config.flags & flags::FLOWS_OFF == 0;
    // SAFETY: a helper without arguments. The coarse clock (CLOCK_MONOTONIC to a jiffy)
    // costs a fraction of the precise one, and idle timeouts are counted in seconds.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if tracked && let Some(flow) = XB_FLOWS.get_ptr_mut(&key) {
        // SAFETY: the map's value, valid while the program runs; two CPUs that refresh
        // `last_ns` together write the same tick.
        let flow = unsafe { &mut *flow };
        // `last_ns` lags the last packet by up to a tick: the flow lives out its idle time.
        if now.saturating_sub(flow.last_ns) <= idle_ns(config, packet.proto) + REFRESH_NS {
            return known_flow(&key, flow, &packet, config.flags, now, bytes);
        }
        // Idle past its timeout: forgotten, and this packet starts it afresh.
        count(stat::FLOW_CLOSED, bytes);
    }
    let mut decision = classify(&packet, config.flags);
    steer(&mut decision, || flow_hash(&key));
    if tracked && !packet.tcp_end {
        let flow = FlowValue {
            first_ns: now,
            last_ns: now,
            packets: 1,
            bytes,
            action: decision.action,
            category: decision.category,
            set_id: decision.set_id,
            // Reasons are small stat indices.
            reason: decision.reason as u8,
            uplink: decision.uplink,
            _pad: [0; 2],
        };
        if XB_FLOWS.insert(&key, &flow, 0).is_ok() {
            count(stat::FLOW_NEW, bytes);
        }
    }
    decision
}

/// A known flow's `last_ns` is rewritten at most once per tick, not on every packet: a write
/// on every packet would move the entry's cache line between the CPUs that carry the flow.
/// Its packets and bytes are not counted per flow (the counters by action, reason and set
/// count them).
const REFRESH_NS: u64 = 1_000_000_000;

/// A packet of a flow in the table takes the flow's action: the connection stays on the
/// uplink its first packet took. Only a failover moves it off the direct uplink (it is dead
/// anyway), and for good: the flow stays in the tunnel after the failback.
#[inline(always)]
fn known_flow(
    key: &FlowKey,
    flow: &mut FlowValue,
    packet: &Packet,
    config_flags: u32,
    now: u64,
    bytes: u64,
) -> Decision {
    if now.saturating_sub(flow.last_ns) >= REFRESH_NS {
        flow.last_ns = now;
    }
    let mut failover = false;
    if flow.action == action::DIRECT {
        match moved(flow, key, config_flags) {
            Some(STEER_TUNNEL) => {
                flow.action = action::TUNNEL;
                failover = true;
            }
            Some(uplink) => flow.uplink = uplink,
            None => {}
        }
    }
    let decision = Decision {
        action: flow.action,
        reason: u32::from(flow.reason),
        category: flow.category,
        set_id: flow.set_id,
        failover,
        uplink: flow.uplink,
    };
    count(stat::FLOW_HIT, bytes);
    if packet.tcp_end {
        // The connection ends: its last packets take its action, then it is forgotten.
        if XB_FLOWS.remove(key).is_ok() {
            count(stat::FLOW_CLOSED, bytes);
        }
    }
    decision
}

/// The direct uplink of a new direct verdict, from its category's row in `XB_UPLINKS`; a
/// row slot that names the tunnel (no uplink may take the category) fails it over.
#[inline(always)]
fn steer(decision: &mut Decision, hash: impl FnOnce() -> u32) {
    if decision.action != action::DIRECT {
        return;
    }
    let Some(uplinks) = XB_UPLINKS.get(0) else {
        return;
    };
    match uplinks.steer(decision.category, hash) {
        STEER_TUNNEL => {
            decision.action = action::TUNNEL;
            decision.failover = true;
        }
        uplink => decision.uplink = uplink,
    }
}

/// Where a direct flow goes when its uplink died: `None` (it stays), another uplink from
/// its category's row, or [`STEER_TUNNEL`] (every uplink is down, or the row says so). Only
/// a dead uplink moves its flows; a degraded one keeps them. Whether the flow's uplink is
/// dead comes from the config's flags, read for every packet anyway: the uplinks' map is
/// read only for a flow that moves.
#[inline(always)]
fn moved(flow: &FlowValue, key: &FlowKey, config_flags: u32) -> Option<u8> {
    if config_flags & flags::UPLINK_DOWN != 0 {
        return Some(STEER_TUNNEL);
    }
    if config_flags & flags::uplink_down(flow.uplink) == 0 {
        return None;
    }
    let uplinks = XB_UPLINKS.get(0)?;
    Some(uplinks.steer(flow.category, || flow_hash(key)))
}

/// The flow a packet belongs to.
#[inline(always)]
fn flow_key(packet: &Packet) -> FlowKey {
    // The parser gives both addresses of one header, IPv4 zero-padded.
    FlowKey {
        src: packet.src.bytes,
        dst: packet.dst.bytes,
        sport: packet.sport,
        dport: packet.dport,
        proto: packet.proto,
        family: if packet.dst.v6 { 6 } else { 4 },
        _pad: [0; 2],
    }
}

/// How long a flow of `ip_proto` may be idle before it is classified afresh.
#[inline(always)]
fn idle_ns(config: &Config, ip_proto: u8) -> u64 {
    let secs = if ip_proto == proto::TCP {
        if config.tcp_idle_s == 0 {
            DEFAULT_TCP_IDLE_S
        } else {
            config.tcp_idle_s
        }
    } else if config.other_idle_s == 0 {
        DEFAULT_OTHER_IDLE_S
    } else {
        config.other_idle_s
    };
    u64::from(secs) * 1_000_000_000
}

/// The one exit: count, hand the verdict to tc, pass.
#[inline(always)]
fn finish(ctx: &XdpContext, verdict: Decision, config_flags: u32, dns_query: bool) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    account(&verdict, bytes);
    // Logged at info so that `-v` shows them: the flag, not the level, is the switch.
    if config_flags & flags::DEBUG != 0 {
        info!(
            ctx,
            "verdict action={} reason={} category={} set={}",
            verdict.action,
            verdict.reason,
            verdict.category,
            verdict.set_id
        );
    }
    if write_meta(ctx, &verdict, dns_query).is_err() {
        count(stat::NO_META, bytes);
    }
    XDP_PASS
}

/// Counts a verdict: its action, its reason, its endpoint set, and a failover.
#[inline(always)]
fn account(verdict: &Decision, bytes: u64) {
    // While the agent finds the direct uplink dead, `decide` sends direct verdicts to the
    // tunnel: one flag in the config map fails every new decision over.
    if verdict.failover {
        count(stat::FAILOVER, bytes);
    }
    count(
        if verdict.action == action::DIRECT {
            stat::DIRECT
        } else {
            stat::TUNNEL
        },
        bytes,
    );
    count(verdict.reason, bytes);
    count_set(verdict.set_id, bytes);
}

#[inline(always)]
fn write_meta(ctx: &XdpContext, verdict: &Decision, dns_query: bool) -> Result<(), ()> {
    const LEN: usize = size_of::<XdpMeta>();
    // SAFETY: the helper checks the room itself; packet pointers are re-read afterwards.
    // Drivers without metadata support (xdp_set_data_meta_invalid) return -ENOTSUPP.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(LEN as i32)) } != 0 {
        return Err(());
    }
    let meta = ctx.metadata();
    if meta + LEN > ctx.data() {
        return Err(());
    }
    // SAFETY: `meta .. meta + LEN` lies in the metadata area just checked.
    unsafe {
        *(meta as *mut XdpMeta) = XdpMeta {
            magic: XDP_META_MAGIC,
            action: verdict.action,
            category: verdict.category,
            set_id: verdict.set_id,
            // Reasons are small stat indices.
            reason: verdict.reason as u8,
            dns_query: u8::from(dns_query),
            uplink: verdict.uplink,
            _pad: 0,
        };
    }
    Ok(())
}

/// Headers the tc program makes linear before parsing: Ethernet, two tags, IPv6 with a few
/// extension headers and TCP fit.
const TC_PULL_LEN: u32 = 256;

/// Sets the direct-egress mark on packets the XDP program (or this program) classified
/// direct. Returns `TC_ACT_UNSPEC`, so the next filter runs and nothing is ever dropped.
#[classifier]
pub fn breakout_mark(ctx: TcContext) -> i32 {
    let config = config();
    let bytes = u64::from(ctx.len());
    let (direct, by_meta, query) = match read_meta(&ctx) {
        Some(meta) => (
            (meta.action == action::DIRECT).then_some(meta.uplink),
            true,
            meta.dns_query != 0,
        ),
        None => {
            let (decision, query) = classify_skb(&ctx, config.flags, bytes);
            if decision.failover {
                count(stat::FAILOVER, bytes);
            }
            (
                (decision.action == action::DIRECT).then_some(decision.uplink),
                false,
                query,
            )
        }
    };
    mark(&ctx, &config, direct, by_meta, bytes);
    if query && config.flags & flags::DNS_QUERIES != 0 {
        // Recorded in a program of its own (a tail call does not return): the walk of its
        // name is verified once there, not once per path of this program.
        dns::record_query_tc(&ctx);
    }
    TC_ACT_UNSPEC
}

/// The whole classifier in tc ingress, where no XDP program runs (`--mode tc`): the flow
/// table, the decision and the counters of `breakout`, then the mark. A packet that carries
/// `breakout`'s metadata (an XDP program still attached while the mode changes) takes that
/// verdict, counted once, as `breakout_mark` takes it.
#[classifier]
pub fn breakout_tc(ctx: TcContext) -> i32 {
    let config = config();
    let bytes = u64::from(ctx.len());
    let mut query = false;
    let (direct, by_meta) = match read_meta(&ctx) {
        Some(meta) => {
            query = meta.dns_query != 0;
            ((meta.action == action::DIRECT).then_some(meta.uplink), true)
        }
        None => {
            let verdict = match parse_skb(&ctx, bytes) {
                Ok(packet) => {
                    query = dns::is_query(&packet);
                    decide_packet(&packet, &config, bytes)
                }
                Err(why) => unparsed(why),
            };
            account(&verdict, bytes);
            if config.flags & flags::DEBUG != 0 {
                info!(
                    &ctx,
                    "verdict action={} reason={} category={} set={}",
                    verdict.action,
                    verdict.reason,
                    verdict.category,
                    verdict.set_id
                );
            }
            (
                (verdict.action == action::DIRECT).then_some(verdict.uplink),
                false,
            )
        }
    };
    mark(&ctx, &config, direct, by_meta, bytes);
    if query && config.flags & flags::DNS_QUERIES != 0 {
        // As in `breakout_mark`.
        dns::record_query_tc(&ctx);
    }
    TC_ACT_UNSPEC
}

/// Records a client's DNS query (tail-called by `breakout_mark` and `breakout_tc`).
#[classifier]
pub fn breakout_query(ctx: TcContext) -> i32 {
    dns::record_query_skb(&ctx);
    TC_ACT_UNSPEC
}

/// Sets the mark bits of a direct packet's uplink (and keeps the others), and counts it.
#[inline(always)]
fn mark(ctx: &TcContext, config: &Config, direct: Option<u8>, by_meta: bool, bytes: u64) {
    if let Some(uplink) = direct {
        let bits = match XB_UPLINKS.get(0) {
            Some(uplinks) => uplinks.mark(uplink, config.mark),
            None => config.mark,
        };
        // SAFETY: the context is the program's own `__sk_buff`.
        let old = unsafe { (*ctx.skb.skb).mark };
        ctx.set_mark((old & !config.mark_mask) | (bits & config.mark_mask));
        counter::add(&XB_UPLINK_STATS, u32::from(uplink), bytes);
        count(
            if by_meta {
                stat::TC_MARK_META
            } else {
                stat::TC_MARK_SELF
            },
            bytes,
        );
    } else {
        count(stat::TC_PASS, bytes);
    }
}

/// Parses an skb's headers, made linear first.
#[inline(always)]
fn parse_skb(ctx: &TcContext, bytes: u64) -> Result<Packet, Unparsed> {
    // Headers may sit in paged data (GRO, some drivers): make the first bytes linear, once.
    let want = ctx.len().min(TC_PULL_LEN);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // SAFETY: the helper validates the length against the skb. A failure is counted,
        // not logged: no per-packet logging on the hot path. The parse below then sees
        // only the linear part, and a truncated header is malformed, as it should be.
        if unsafe { bpf_skb_pull_data(ctx.skb.skb.cast(), want) } != 0 {
            count(stat::ERROR, bytes);
        }
    }
    // SAFETY: data .. data_end is the linear part of the skb, valid while the program runs
    // (re-read after the pull, which moves it).
    parse(&mut unsafe { Cursor::new(ctx.data(), ctx.data_end()) })
}

#[inline(always)]
fn read_meta(ctx: &TcContext) -> Option<XdpMeta> {
    // SAFETY: the context is the program's own `__sk_buff`.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + size_of::<XdpMeta>() > ctx.data() {
        return None;
    }
    // SAFETY: checked to lie in the metadata area.
    let found = unsafe { *(meta as *const XdpMeta) };
    (found.magic == XDP_META_MAGIC).then_some(found)
}

#[inline(always)]
fn classify_skb(ctx: &TcContext, config_flags: u32, bytes: u64) -> (Decision, bool) {
    match parse_skb(ctx, bytes) {
        Ok(packet) => {
            let query = dns::is_query(&packet);
            // The XDP program already looked the flow up (and recorded it): take its action,
            // read only, so that a driver without metadata room keeps connections sticky too.
            if !packet.later_fragment
                // SAFETY: the map's value, read while the program runs.
                && let Some(flow) = unsafe { XB_FLOWS.get(&flow_key(&packet)) }
            {
                let key = flow_key(&packet);
                let mut decision = Decision {
                    action: flow.action,
                    reason: u32::from(flow.reason),
                    category: flow.category,
                    set_id: flow.set_id,
                    failover: false,
                    uplink: flow.uplink,
                };
                if flow.action == action::DIRECT {
                    match moved(flow, &key, config_flags) {
                        Some(STEER_TUNNEL) => {
                            decision.action = action::TUNNEL;
                            decision.failover = true;
                        }
                        Some(uplink) => decision.uplink = uplink,
                        None => {}
                    }
                }
                return (decision, query);
            }
            let mut decision = classify(&packet, config_flags);
            steer(&mut decision, || flow_hash(&flow_key(&packet)));
            (decision, query)
        }
        Err(why) => (unparsed(why), false),
    }
}

/// Copies the DNS answers that leave the LAN interface for clients, when they answer a query
/// recorded at its ingress, into the agent's ring buffer ([`dns::copy_answer`]).
#[classifier]
pub fn breakout_dns(ctx: TcContext) -> i32 {
    dns::copy_answer(&ctx);
    TC_ACT_UNSPEC
}

/// The kernel rejects GPL-only helpers without a GPL-compatible license string.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
