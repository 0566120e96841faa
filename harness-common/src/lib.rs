//! The ABI between the harness's programs (bench-ebpf: baselines, the traffic generator, VLAN
//! tagging) and the benchmarks and tests that load them, as aya's `integration-common` is for
//! aya's own tests: counter slots and map shapes in one place, so that a slot number is never
//! written twice. Also the one random number generator ([`Rng`]) the tests and benchmarks draw
//! their tables from.
#![no_std]

mod rng;

use core::mem::size_of;

pub use rng::Rng;

/// Per-CPU `classifier_common::Counter`s of the harness programs, by [`slot`].
pub const BENCH_COUNT: &str = "BENCH_COUNT";
/// Entries of [`BENCH_COUNT`].
pub const BENCH_COUNT_LEN: usize = 8;

/// Indices of [`BENCH_COUNT`]. Never renumbered.
pub mod slot {
    /// `bench_count` and `bench_count_drop`: frames seen by an XDP counter.
    pub const XDP_COUNT: u32 = 0;
    /// `bench_tc_count`: packets seen by a tc ingress counter.
    pub const TC_COUNT: u32 = 1;
    /// `bench_parse`: frames the classifier's parser took.
    pub const PARSED: u32 = 2;
    /// `bench_parse`: frames it refused.
    pub const UNPARSED: u32 = 3;
    /// `bench_generate`: frames redirected.
    pub const GENERATED: u32 = 4;
    /// `harness_vlan_push`: frames tagged.
    pub const VLAN_PUSHED: u32 = 5;
    /// `harness_vlan_pop`: frames untagged.
    pub const VLAN_POPPED: u32 = 6;
}
const _: () = assert!((slot::VLAN_POPPED as usize) < BENCH_COUNT_LEN);

/// Destination IPv4 addresses (network order) that `bench_generate` writes in turn.
pub const BENCH_DST: &str = "BENCH_DST";
/// Entries of [`BENCH_DST`].
pub const MAX_DST: usize = 4096;

/// Value of `BENCH_SINK`: what `bench_parse` found last, per CPU, so that no parsed field is
/// optimised away.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sink {
    /// Destination address, network order (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Destination port, host order.
    pub port: u16,
    pub proto: u8,
    /// 1 for a non-first fragment.
    pub later_fragment: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<Sink>() == 24);
