//! Loading the kernel programs, pinning their maps and links, and reading and writing maps.
//!
//! Everything lives under one pin directory (default `/sys/fs/bpf/xdp-breakout`): the maps by
//! their names, and per interface the XDP and tc links (`xdp_link@<iface>`,
//! `tc_link@<iface>`). Links are `bpf_links`, so the programs stay attached after the process
//! exits and a new process can swap in a new program atomically (`BPF_LINK_UPDATE`).
//!
//! - [`pins`]: bpffs, the pin directory (its lock, ownership, and the shapes of what is
//!   pinned in it), link pin names;
//! - [`load`]: loading the object with pinned, shadow or private maps;
//! - [`links`]: attaching and detaching, and what the kernel says is attached;
//! - [`maps`]: the maps, applied as a diff (the index first), and per-CPU sums;
//! - [`index`]: the compiled index's maps, mapped: built in the idle half, switched, released
//!   after a grace period;
//! - [`check`]: the periodic check that the tries hold what was written, without a read-back;
//! - `batch`: `BPF_MAP_*_BATCH`, which aya has not.

mod batch;
pub mod check;
pub mod index;
pub mod links;
pub mod load;
pub mod maps;
pub mod pins;

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};
use classifier_common::{action, category};

pub use check::{Difference, Record, Verdict, WINDOW, Walk};
pub use index::{IndexMaps, Installed};
pub use links::{AttachMode, AttachedXdp, attached_xdp, detach};
pub use load::Datapath;
pub use maps::{ApplyReport, Flow, Maps};
pub use pins::{
    BPFFS, MAP_SHAPES, MapSizes, PinLock, attached_interfaces, check_pin_dir, ensure_bpffs,
    prepare_pin_dir, tc_link_pin, xdp_link_pin,
};

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`: flows' and DNS
/// captures' times compare with it.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// Optimize and Allow go direct, as Microsoft recommends; Default follows the tunnel; a
/// `direct` source goes direct and a `tunnel` one follows the tunnel.
pub const DEFAULT_POLICY: [u8; category::COUNT as usize] = [
    action::TUNNEL,
    action::TUNNEL,
    action::DIRECT,
    action::DIRECT,
    action::TUNNEL,
    action::DIRECT,
    action::TUNNEL,
    action::TUNNEL,
];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("mounting bpffs on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pin directory {path} is not on a bpffs ({base} is not one): pins live under \
         /sys/fs/bpf; choose a --pin-dir there, or mount one first (`mount -t bpf bpf DIR`)"
    )]
    NotBpffs { path: PathBuf, base: PathBuf },
    #[error(transparent)]
    Untrusted(#[from] crate::secure::DirError),
    #[error(transparent)]
    Denied(#[from] crate::privilege::Denied),
    #[error("creating pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pinned map {path} is {found}, this build expects {expected}: the pins belong to \
         another version of xdp-breakout (detach it, or remove the pins, and attach again)"
    )]
    IncompatiblePin {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("opening pinned map {path}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("interface {iface}: {what}")]
    Attach {
        iface: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "no xdp-breakout maps at {path}: attach (`xdp-breakout attach IFACE`) or run the agent \
         first, or give the right --pin-dir"
    )]
    NoPins { path: PathBuf },
    #[error(
        "interface {iface} already has XDP program {name:?} (id {id}); xdp-breakout never \
         replaces another program: remove it first (`ip link set dev {iface} xdp off`)"
    )]
    ForeignXdp {
        iface: String,
        name: String,
        id: u32,
    },
    #[error(
        "interface {iface}: {path} exists but is no {kind} link xdp-breakout can adopt (a \
         stale or foreign pin); nothing was attached: remove it (`rm {path}`) and attach again"
    )]
    StalePin {
        iface: String,
        path: PathBuf,
        kind: &'static str,
    },
    #[error(
        "another xdp-breakout process has been changing {path} for 10 s (its lock is held); \
         try again when it is done"
    )]
    Locked { path: PathBuf },
    #[error("the programs were loaded with private maps; attaching needs a pin directory")]
    Unpinned,
    #[error("mapping map {name} into memory")]
    Mmap {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("an index of {slots} slots does not fit a half of the index map ({half_slots})")]
    IndexSize { slots: usize, half_slots: u32 },
    #[error("waiting for readers of the old index half (membarrier)")]
    Grace(#[source] io::Error),
    #[error("interface {iface}: xdp-breakout is not attached (no {path})")]
    NotAttached { iface: String, path: PathBuf },
}
