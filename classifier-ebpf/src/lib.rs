//! The eBPF pieces xdp-breakout's programs share with the harness's (bench-ebpf): header
//! parsing and per-CPU counting. The programs themselves are the `classifier` binary.
#![no_std]
// The verifier sees only what is inlined into a program: every helper here must be, and a
// host build (this crate is a build dependency, and clippy reads it) should not argue.
#![expect(
    clippy::inline_always,
    reason = "eBPF programs need their helpers inlined"
)]

pub mod counter;
pub mod parse;
