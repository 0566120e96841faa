//! Programs around the classifier for the benchmarks and the end-to-end tests (the `tests`
//! crate builds and embeds this object as `tests::HARNESS_OBJECT`).
//!
//! - `bench_pass`: `XDP_PASS` and nothing else, the floor of a `BPF_PROG_TEST_RUN`.
//! - `bench_parse`: the classifier's own parser (`classifier_ebpf::parse`) and one per-CPU
//!   counter: what classification costs before its trie lookup.
//! - `bench_count` / `bench_count_drop`: an XDP counter that passes (or drops) every frame.
//! - `bench_tc_count`: a tc ingress counter, to count where no XDP program does.
//! - `bench_generate`: run in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`), it redirects
//!   every frame to `GEN_IFINDEX`, rewriting the IPv4 destination from `BENCH_DST` in turn.
//! - `harness_vlan_push` / `harness_vlan_pop`: tag a client's frames with VLAN 100 (tc
//!   egress) and untag them on the router's LAN (tc ingress), for a tagged LAN on kernels
//!   built without 802.1Q VLAN devices (`CONFIG_VLAN_8021Q` unset).
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{
        TC_ACT_UNSPEC,
        xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    },
    btf_maps::{Array, PerCpuArray},
    helpers::{bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use classifier_common::Counter;
use classifier_ebpf::{
    counter,
    parse::{Cursor, parse},
};
use harness_common::{
    BENCH_COUNT_LEN, MAX_DST, Sink,
    slot::{GENERATED, PARSED, TC_COUNT, UNPARSED, VLAN_POPPED, VLAN_PUSHED, XDP_COUNT},
};

/// Per-CPU packets and bytes by `harness_common::slot`; user space sums them.
#[btf_map]
static BENCH_COUNT: PerCpuArray<Counter, BENCH_COUNT_LEN> = PerCpuArray::new();

#[btf_map]
static BENCH_SINK: PerCpuArray<Sink, 1> = PerCpuArray::new();

/// Destination IPv4 addresses (network order) that `bench_generate` writes in turn.
#[btf_map]
static BENCH_DST: Array<[u8; 4], MAX_DST> = Array::new();

/// The next `BENCH_DST` index, per CPU.
#[btf_map]
static BENCH_SEQ: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Where `bench_generate` redirects frames (set by the loader).
#[unsafe(no_mangle)]
static GEN_IFINDEX: Global<u32> = Global::new(0);
/// How many `BENCH_DST` entries to cycle through; 0 leaves the frame as it is.
#[unsafe(no_mangle)]
static GEN_DST_COUNT: Global<u32> = Global::new(0);

#[inline(always)]
fn count(index: u32, bytes: u64) {
    counter::add(&BENCH_COUNT, index, bytes);
}

#[inline(always)]
fn xdp_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    // SAFETY: data .. data_end is the frame, valid while the program runs.
    let parsed = parse(&mut unsafe { Cursor::new(ctx.data(), ctx.data_end()) });
    let Ok(packet) = parsed else {
        count(UNPARSED, xdp_len(&ctx));
        return XDP_PASS;
    };
    count(PARSED, xdp_len(&ctx));
    if let Some(sink) = BENCH_SINK.get_ptr_mut(0) {
        let addr = packet.dst.bytes;
        // SAFETY: as in `count`.
        unsafe {
            *sink = Sink {
                addr,
                port: packet.dport,
                proto: packet.proto,
                later_fragment: u8::from(packet.later_fragment),
                _pad: [0; 4],
            };
        }
    }
    XDP_PASS
}

#[xdp]
pub fn bench_count(ctx: XdpContext) -> u32 {
    count(XDP_COUNT, xdp_len(&ctx));
    XDP_PASS
}

#[xdp]
pub fn bench_count_drop(ctx: XdpContext) -> u32 {
    count(XDP_COUNT, xdp_len(&ctx));
    XDP_DROP
}

#[classifier]
pub fn bench_tc_count(ctx: TcContext) -> i32 {
    count(TC_COUNT, u64::from(ctx.len()));
    TC_ACT_UNSPEC
}

/// Ethernet header, then the IPv4 header (no VLAN tag, no options: the frames are ours).
const IPV4_OFFSET: usize = 14;
const IPV4_LEN: usize = 20;
const IPV4_CHECKSUM: usize = 10;
const IPV4_DST: usize = 16;

#[xdp]
pub fn bench_generate(ctx: XdpContext) -> u32 {
    let n = GEN_DST_COUNT.load();
    if n != 0 && rewrite_dst(&ctx, n).is_err() {
        return XDP_ABORTED;
    }
    count(GENERATED, xdp_len(&ctx));
    // SAFETY: a helper call with plain integers; it returns XDP_REDIRECT or XDP_ABORTED.
    #[expect(clippy::cast_possible_truncation, reason = "an XDP action code")]
    unsafe {
        bpf_redirect(GEN_IFINDEX.load(), 0) as u32
    }
}

/// Writes the next destination and recomputes the header checksum from scratch: live frames
/// recycle their pages, so the previous contents are not to be trusted either way.
#[inline(always)]
fn rewrite_dst(ctx: &XdpContext, n: u32) -> Result<(), ()> {
    let start = ctx.data();
    if start + IPV4_OFFSET + IPV4_LEN > ctx.data_end() {
        return Err(());
    }
    let seq = BENCH_SEQ.get_ptr_mut(0).ok_or(())?;
    // SAFETY: a per-CPU slot, as in `count`.
    let index = unsafe {
        let index = *seq % n;
        *seq = index + 1;
        index
    };
    let dst = BENCH_DST.get(index).ok_or(())?;
    let header = (start + IPV4_OFFSET) as *mut [u8; IPV4_LEN];
    // SAFETY: the 20 header bytes lie inside the frame (checked above).
    let header = unsafe { &mut *header };
    header[IPV4_DST..IPV4_DST + 4].copy_from_slice(dst);
    header[IPV4_CHECKSUM] = 0;
    header[IPV4_CHECKSUM + 1] = 0;
    let mut sum = 0u32;
    for i in 0..IPV4_LEN / 2 {
        sum += u32::from(u16::from_be_bytes([header[2 * i], header[2 * i + 1]]));
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let checksum = !(sum as u16);
    header[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&checksum.to_be_bytes());
    Ok(())
}

/// VLAN the harness tags the LAN with.
const HARNESS_VLAN: u16 = 100;

/// Tags every frame leaving the client with VLAN 100. With VLAN offload off on the device,
/// the stack writes the tag into the frame, so the router's XDP program sees it.
#[classifier]
pub fn harness_vlan_push(ctx: TcContext) -> i32 {
    // SAFETY: the helper takes the program's own skb.
    if unsafe { bpf_skb_vlan_push(ctx.skb.skb, 0x8100_u16.to_be(), HARNESS_VLAN) } == 0 {
        count(VLAN_PUSHED, u64::from(ctx.len()));
    }
    TC_ACT_UNSPEC
}

/// Removes the tag the stack moved out of a frame (skb_vlan_untag), as a VLAN interface
/// would; the packet then goes on untagged, with its mark.
#[classifier]
pub fn harness_vlan_pop(ctx: TcContext) -> i32 {
    // SAFETY: the context is the program's own `__sk_buff`.
    let tagged = unsafe { (*ctx.skb.skb).vlan_present } != 0;
    // SAFETY: the helper takes the program's own skb.
    if tagged && unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } == 0 {
        count(VLAN_POPPED, u64::from(ctx.len()));
    }
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
