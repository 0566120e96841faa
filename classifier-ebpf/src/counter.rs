//! Per-CPU packet and byte counters, the one helper every program counts with.

use aya_ebpf::btf_maps::PerCpuArray;
use classifier_common::Counter;

/// Adds one packet of `bytes` to slot `index` of `map`; an index out of range counts nothing.
#[inline(always)]
pub fn add<const N: usize>(map: &PerCpuArray<Counter, N>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
