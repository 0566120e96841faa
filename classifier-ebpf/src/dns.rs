//! Trusted DNS learning: the queries LAN clients send are recorded at the LAN interface's tc
//! ingress (the XDP program, which sees them first, only flags them in its metadata), and an answer leaving it for a client is copied to the agent only when it
//! answers one of them: same client address and port, from the resolver the query went to,
//! same id and question, within [`DNS_ANSWER_WITHIN_NS`], once. A forged answer (from the
//! tunnel side, a LAN neighbour, or with the resolver's address and no query) and a replayed
//! one are counted by why and never reach the agent.

use aya_ebpf::{
    bindings::BPF_ANY,
    btf_maps::{LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_skb_pull_data},
    macros::btf_map,
    programs::TcContext,
};
use classifier_common::{
    DNS_ANSWER_WITHIN_NS, DNS_MAX_MESSAGE, DNS_QUERIES, DNS_RATE_PER_SEC, DNS_RING_BYTES, DnsQuery,
    DnsQueryKey, DnsRecord, proto, stat,
};
use classifier_ebpf::parse::{Cursor, Packet, Question, dns_question_in, parse};

use crate::count;

/// DNS answers for the agent. Not pinned: each agent loads its own.
#[btf_map]
static XB_DNS: RingBuf<DnsRecord, { DNS_RING_BYTES as usize }> = RingBuf::new();

/// Per CPU: the second ([`bpf_ktime_get_ns`] / 1e9) and the answers copied in it.
#[btf_map]
static XB_DNS_RATE: PerCpuArray<[u64; 2], 1> = PerCpuArray::new();

/// Queries awaiting their answers: [`DnsQueryKey`] -> [`DnsQuery`], [`DNS_QUERIES`] entries,
/// least recently used forgotten first. Written by the LAN ingress program (XDP, or tc
/// alone), read and marked answered at tc egress. Not pinned: each agent loads its own, so a
/// restart refuses the answers to the queries in flight, as unsolicited.
#[btf_map]
static XB_DNS_QUERIES: LruHashMap<DnsQueryKey, DnsQuery, { DNS_QUERIES as usize }> =
    LruHashMap::new();

/// The query recorder, for the tc ingress programs to tail-call: `breakout_query` at 0. Filled
/// by the agent at load.
#[btf_map]
static XB_DNS_QUERY: ProgramArray<1> = ProgramArray::new();

/// Tail-calls `breakout_query`; returns only when the call fails (no program loaded there).
#[inline(always)]
pub fn record_query_tc(ctx: &TcContext) {
    // SAFETY: a tail call with the program's own context; on failure, execution goes on.
    unsafe { XB_DNS_QUERY.tail_call(ctx, 0) };
}

/// Bytes made linear before a DNS message's question is read: Ethernet, two tags, IPv6 with
/// extension headers, UDP, the DNS header and a name of the longest kind.
const DNS_PULL_LEN: u32 = 512;

/// A UDP packet to port 53: a query, if the DNS header says so.
#[inline(always)]
pub fn is_query(packet: &Packet) -> bool {
    packet.proto == proto::UDP && packet.dport == 53 && packet.has_port
}

/// Bytes of a query copied out of the packet before its question is read: a header, the
/// longest name and its type and class fit.
const QUERY_COPY: usize = 512;

/// Per CPU: the copy of the query being recorded (too big for the stack).
#[btf_map]
static XB_DNS_SCRATCH: PerCpuArray<[u8; DNS_MAX_MESSAGE], 1> = PerCpuArray::new();

/// Records the query of `packet`, whose UDP payload starts `offset` bytes into the frame and
/// runs to its end (`total` bytes); `load` copies bytes of the frame into the scratch buffer.
/// Counts it. Not a standard query with one question: nothing.
#[inline(always)]
fn record(
    packet: &Packet,
    offset: usize,
    total: usize,
    bytes: u64,
    load: impl FnOnce(u32, *mut u8, u32) -> i64,
) {
    let len = total.saturating_sub(offset).min(QUERY_COPY);
    let Some(scratch) = XB_DNS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    if len < 12 || load(offset as u32, scratch.cast(), len as u32) != 0 {
        return;
    }
    // SAFETY: this CPU's scratch buffer, `len` bytes of it just loaded.
    let Some(question) = dns_question_in(unsafe { &*scratch }, len, false) else {
        return;
    };
    let key = query_key(
        packet.src.bytes,
        packet.dst.bytes,
        packet.sport,
        &question,
        packet,
    );
    let query = DnsQuery {
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        name_hash: question.name_hash,
        qtype: question.qtype,
        answered: 0,
        _pad: 0,
    };
    // A retransmission (same port and id) starts the query afresh.
    if XB_DNS_QUERIES
        .insert(&key, &query, u64::from(BPF_ANY))
        .is_ok()
    {
        count(stat::DNS_QUERY, bytes);
    } else {
        count(stat::ERROR, bytes);
    }
}

/// Records the query in an skb (`breakout_query`).
#[inline(always)]
pub fn record_query_skb(ctx: &TcContext) {
    let bytes = u64::from(ctx.len());
    let Ok(packet) = crate::parse_skb(ctx, bytes) else {
        return;
    };
    if !is_query(&packet) {
        return;
    }
    let Ok((packet, cursor)) = parse_for_question(ctx, bytes) else {
        return;
    };
    let Some(offset) = cursor.position().checked_sub(ctx.data()) else {
        return;
    };
    record(
        &packet,
        offset,
        ctx.len() as usize,
        bytes,
        |at, into, len| {
            // SAFETY: the helper checks `at .. at + len` against the skb.
            unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), at, into.cast(), len) }
        },
    );
}

#[inline(always)]
fn query_key(
    client: [u8; 16],
    resolver: [u8; 16],
    client_port: u16,
    question: &Question,
    packet: &Packet,
) -> DnsQueryKey {
    DnsQueryKey {
        client,
        resolver,
        client_port,
        id: question.id,
        family: if packet.dst.v6 { 6 } else { 4 },
        _pad: [0; 3],
    }
}

/// Makes the first [`DNS_PULL_LEN`] bytes linear (or the whole packet) and parses the headers
/// from there; returns the packet and a cursor at its payload.
#[inline(always)]
fn parse_for_question(ctx: &TcContext, bytes: u64) -> Result<(Packet, Cursor<'_>), ()> {
    let want = ctx.len().min(DNS_PULL_LEN);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // SAFETY: the helper validates the length against the skb. On failure the parse below
        // sees only the linear part, and a truncated question is no question.
        if unsafe { bpf_skb_pull_data(ctx.skb.skb.cast(), want) } != 0 {
            count(stat::ERROR, bytes);
        }
    }
    // SAFETY: data .. data_end is the linear part of the skb, valid while the program runs
    // (re-read after the pull, which moves it).
    let mut cursor = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let packet = parse(&mut cursor).map_err(|_| ())?;
    Ok((packet, cursor))
}

/// Copies the DNS answer (UDP from port 53) leaving for a LAN client into [`XB_DNS`] when it
/// answers a recorded query, at most [`DNS_MAX_MESSAGE`] bytes and [`DNS_RATE_PER_SEC`] a
/// second per CPU; every answer is counted as copied or why not. The packet is never delayed
/// or changed.
///
/// The message is copied into a reserved entry first and its question read from the copy
/// ([`dns_question_in`]); an answer that is refused is discarded, never submitted.
#[inline(always)]
pub fn copy_answer(ctx: &TcContext) {
    let bytes = u64::from(ctx.len());
    // Every packet to the LAN passes here: only the UDP headers are read before the port says
    // it is DNS.
    let Ok(packet) = crate::parse_skb(ctx, bytes) else {
        return;
    };
    if packet.proto != proto::UDP || packet.sport != 53 || packet.later_fragment {
        return;
    }
    let Ok((packet, cursor)) = parse_for_question(ctx, bytes) else {
        return;
    };
    let Some(offset) = cursor.position().checked_sub(ctx.data()) else {
        return;
    };
    let len = (ctx.len() as usize).saturating_sub(offset);
    // A DNS header is 12 bytes.
    if !(12..=DNS_MAX_MESSAGE).contains(&len) {
        count(stat::DNS_TOO_BIG, bytes);
        return;
    }
    let Some(mut entry) = XB_DNS.reserve(0) else {
        count(stat::DNS_RING_FULL, bytes);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved entry, `size_of::<DnsRecord>()` bytes; `len` is
    // 12..=DNS_MAX_MESSAGE, the size of `message`; the helper checks the skb's bounds.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            (&raw mut (*record).message).cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        entry.discard(0);
        count(stat::ERROR, bytes);
        return;
    }
    // SAFETY: the message was just loaded into the entry.
    let question = dns_question_in(unsafe { &(*record).message }, len, true);
    match matched(&packet, question) {
        Ok((question, now)) => {
            if !within_rate(now) {
                entry.discard(0);
                count(stat::DNS_RATE_LIMITED, bytes);
                return;
            }
            // SAFETY: the reserved entry, as above.
            unsafe {
                (*record).ts_ns = now;
                (*record).resolver = packet.src.bytes;
                (*record).name_hash = question.name_hash;
                (*record).len = len as u16;
                (*record).qtype = question.qtype;
                (*record).family = if packet.src.v6 { 6 } else { 4 };
                (*record)._pad = [0; 7];
            }
            entry.submit(0);
            count(stat::DNS_COPIED, bytes);
        }
        Err(why) => {
            entry.discard(0);
            count(why, bytes);
        }
    }
}

/// Matches an answer to its recorded query and marks the query answered; returns the
/// question and the time, or the counter of why the answer is refused.
#[inline(always)]
fn matched(packet: &Packet, question: Option<Question>) -> Result<(Question, u64), u32> {
    let question = question.ok_or(stat::DNS_UNSOLICITED)?;
    // The answer goes back the way the query came: to the client, from the resolver.
    let key = query_key(
        packet.dst.bytes,
        packet.src.bytes,
        packet.dport,
        &question,
        packet,
    );
    let query = XB_DNS_QUERIES
        .get_ptr_mut(&key)
        .ok_or(stat::DNS_UNSOLICITED)?;
    // SAFETY: the map's value, valid while the program runs.
    let query = unsafe { &mut *query };
    if query.answered != 0 {
        return Err(stat::DNS_REPLAY);
    }
    if query.name_hash != question.name_hash || query.qtype != question.qtype {
        // Not consumed: the real answer may still come.
        return Err(stat::DNS_QUESTION_MISMATCH);
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(query.ts_ns) > DNS_ANSWER_WITHIN_NS {
        return Err(stat::DNS_LATE);
    }
    query.answered = 1;
    Ok((question, now))
}

/// Whether this CPU may copy another answer this second.
#[inline(always)]
fn within_rate(now: u64) -> bool {
    let second = now / 1_000_000_000;
    let Some(rate) = XB_DNS_RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's value, valid while the program runs.
    let rate = unsafe { &mut *rate };
    if rate[0] != second {
        *rate = [second, 0];
    }
    if rate[1] >= DNS_RATE_PER_SEC {
        return false;
    }
    rate[1] += 1;
    true
}
