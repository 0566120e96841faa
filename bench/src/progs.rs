//! bench-ebpf's programs: the baselines and the traffic generator.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{SchedClassifier, Xdp},
};
use classifier_common::Counter;

/// The compiled bench-ebpf object (built by the tests crate, which uses it too).
pub static BENCH_OBJECT: &[u8] = tests::HARNESS_OBJECT;

pub use harness_common::slot;

pub const PASS: &str = "bench_pass";
pub const PARSE: &str = "bench_parse";
pub const COUNT: &str = "bench_count";
pub const COUNT_DROP: &str = "bench_count_drop";
pub const TC_COUNT: &str = "bench_tc_count";
pub const GENERATE: &str = "bench_generate";

const XDP_PROGRAMS: [&str; 5] = [PASS, PARSE, COUNT, COUNT_DROP, GENERATE];
pub use harness_common::MAX_DST;

pub struct BenchProgs {
    ebpf: Ebpf,
}

impl BenchProgs {
    /// Loads every program. `gen_ifindex` is where `bench_generate` redirects; `dsts` (IPv4
    /// only, at most [`MAX_DST`]) are the destinations it writes in turn (none: the frame's own).
    pub fn load(gen_ifindex: u32, dsts: &[IpAddr]) -> anyhow::Result<Self> {
        let count = u32::try_from(dsts.len().min(MAX_DST)).context("destination count")?;
        let mut ebpf = EbpfLoader::new()
            .override_global("GEN_IFINDEX", &gen_ifindex, true)
            .override_global("GEN_DST_COUNT", &count, true)
            .load(BENCH_OBJECT)
            .context("loading bench-ebpf")?;
        for name in XDP_PROGRAMS {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
        }
        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_COUNT)
            .context("program bench_tc_count")?
            .try_into()?;
        tc.load().context("loading bench_tc_count")?;
        let mut table: Array<&mut MapData, [u8; 4]> =
            Array::try_from(ebpf.map_mut("BENCH_DST").context("map BENCH_DST")?)?;
        for (index, dst) in (0..).zip(dsts.iter().take(MAX_DST)) {
            let IpAddr::V4(dst) = dst else {
                bail!("the generator rewrites IPv4 destinations only");
            };
            table.set(index, dst.octets(), 0)?;
        }
        Ok(Self { ebpf })
    }

    pub fn xdp(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?)
    }

    pub fn xdp_ref(&self, name: &str) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?)
    }

    pub fn tc(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(TC_COUNT)
            .context("program bench_tc_count")?
            .try_into()?)
    }

    /// A `BENCH_COUNT` slot, summed over CPUs.
    pub fn count(&self, index: u32) -> anyhow::Result<Counter> {
        let map: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map(harness_common::BENCH_COUNT)
                .context("map BENCH_COUNT")?,
        )?;
        Ok(map.get(&index, 0)?.iter().sum())
    }
}
