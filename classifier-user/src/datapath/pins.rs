//! The pin directory: bpffs under it, its lock and ownership, the shapes of the maps pinned
//! in it, and the names of the link pins.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, MapType},
    sys::SyscallError,
};
use classifier_common::{
    Config, Counter, DEFAULT_FLOWS, DEFAULT_INDEX_SLOTS, FlowKey, FlowValue, LpmKeyV4, LpmKeyV6,
    MAX_PREFIXES, MAX_SET_ID, MAX_UPLINKS, Policy, PrefixRules, STATS_LEN, Uplinks, category,
    index::{IndexCtl, Slot},
    names,
};

use super::DatapathError;
use crate::privilege::denied_or;

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[expect(clippy::cast_possible_truncation, reason = "MAX_UPLINKS is 8")]
const UPLINK_STATS_LEN: u32 = MAX_UPLINKS as u32;

/// The shape every pinned map must have: (name, type, key size, value size, max entries).
/// Checked before a pin is reused, because aya opens a pinned map without comparing it.
///
/// The flow table's size is the agent's to choose (`[flows] table-size`); the object declares
/// [`DEFAULT_FLOWS`].
pub const MAP_SHAPES: [(&str, MapType, u32, u32, u32); 11] = [
    (
        names::PREFIX_V4,
        MapType::LpmTrie,
        size32::<LpmKeyV4>(),
        size32::<PrefixRules>(),
        MAX_PREFIXES,
    ),
    (
        names::PREFIX_V6,
        MapType::LpmTrie,
        size32::<LpmKeyV6>(),
        size32::<PrefixRules>(),
        MAX_PREFIXES,
    ),
    (
        names::POLICY,
        MapType::Array,
        4,
        size32::<Policy>(),
        category::COUNT,
    ),
    (names::CONFIG, MapType::Array, 4, size32::<Config>(), 1),
    (
        names::STATS,
        MapType::PerCpuArray,
        4,
        size32::<Counter>(),
        STATS_LEN,
    ),
    (
        names::SET_STATS,
        MapType::PerCpuArray,
        4,
        size32::<Counter>(),
        MAX_SET_ID,
    ),
    (
        names::FLOWS,
        MapType::LruHash,
        size32::<FlowKey>(),
        size32::<FlowValue>(),
        DEFAULT_FLOWS,
    ),
    (
        names::INDEX_SLOTS,
        MapType::Array,
        4,
        size32::<Slot>(),
        DEFAULT_INDEX_SLOTS,
    ),
    (names::INDEX_CTL, MapType::Array, 4, size32::<IndexCtl>(), 1),
    (names::UPLINKS, MapType::Array, 4, size32::<Uplinks>(), 1),
    (
        names::UPLINK_STATS,
        MapType::PerCpuArray,
        4,
        size32::<Counter>(),
        UPLINK_STATS_LEN,
    ),
];

/// The sizes of the maps sized at load (the flow table, the index); `None`: the pinned
/// map's size, else the object's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapSizes {
    pub flows: Option<u32>,
    pub index_slots: Option<u32>,
}

impl MapSizes {
    /// The size asked for map `name`, if it is one sized at load.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<u32> {
        match name {
            names::FLOWS => self.flows,
            names::INDEX_SLOTS => self.index_slots,
            _ => None,
        }
    }

    /// Slots for an index of `memory_mib` MiB (both halves); 0 turns the index off (a map
    /// of two slots).
    #[must_use]
    pub fn index_slots(memory_mib: u32) -> u32 {
        let slots = (u64::from(memory_mib) << 20) / size_of::<Slot>() as u64;
        u32::try_from(slots & !1).unwrap_or(u32::MAX - 1).max(2)
    }
}

/// Maps sized at load, with their defaults.
pub(super) const SIZED_MAPS: [(&str, u32); 2] = [
    (names::FLOWS, DEFAULT_FLOWS),
    (names::INDEX_SLOTS, DEFAULT_INDEX_SLOTS),
];

#[expect(
    clippy::cast_possible_truncation,
    reason = "ABI types are a few hundred bytes"
)]
const fn size32<T>() -> u32 {
    size_of::<T>() as u32
}

/// Where bpffs belongs, and the only place xdp-breakout ever mounts one.
pub const BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) == 0 && stat.f_type == BPF_FS_MAGIC }
}

/// Mounts bpffs on `/sys/fs/bpf` when nothing is mounted there (a fresh machine has none).
/// Nowhere else: a mount over another directory would hide what is in it.
pub fn ensure_bpffs() -> Result<(), DatapathError> {
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(());
    }
    let mount_error = |source| DatapathError::Mount {
        path: path.to_owned(),
        source,
    };
    // SAFETY: all strings are NUL-terminated; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return Err(denied_or(error, "mounting bpffs on", path, mount_error));
    }
    Ok(())
}

/// Makes `pin_dir` ready for pins: bpffs on `/sys/fs/bpf` if the directory is there, the
/// directory on a bpffs, created 0700, owned by us and closed to others.
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    if pin_dir.starts_with(BPFFS) {
        ensure_bpffs()?;
    }
    // The nearest directory that exists decides the file system the new ones land on.
    let base = pin_dir
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(Path::new("/"));
    if !is_bpffs(base) {
        return Err(DatapathError::NotBpffs {
            path: pin_dir.to_owned(),
            base: base.to_owned(),
        });
    }
    crate::secure::create_private(pin_dir, "pin directory")?;
    Ok(())
}

/// Checks a pin directory that must exist already, before anything in it is trusted.
pub fn check_pin_dir(pin_dir: &Path) -> Result<(), DatapathError> {
    // Not `exists()`: a directory the kernel will not show this user (EACCES on the way) is
    // not a missing one, and [`crate::secure::check`] says what it is.
    if matches!(pin_dir.try_exists(), Ok(false)) {
        return Err(DatapathError::NoPins {
            path: pin_dir.to_owned(),
        });
    }
    crate::secure::check(pin_dir, "pin directory")?;
    Ok(())
}

/// An exclusive lock on a pin directory, held while maps or links there change, so that two
/// xdp-breakout processes (the agent and an operator's `attach` or `sync`) never interleave
/// their changes. Released on drop. (xdp-tools locks its bpffs directory the same way.)
pub struct PinLock {
    _dir: fs::File,
}

/// How long to wait for another process's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl PinLock {
    /// Creates `pin_dir` (mounting bpffs if needed) and locks it.
    pub fn acquire(pin_dir: &Path) -> Result<Self, DatapathError> {
        prepare_pin_dir(pin_dir)?;
        let pin_error = |source| DatapathError::PinDir {
            path: pin_dir.to_owned(),
            source,
        };
        let dir = fs::File::open(pin_dir)
            .map_err(|source| denied_or(source, "locking the pin directory", pin_dir, pin_error))?;
        let start = std::time::Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&dir),
                    libc::LOCK_EX | libc::LOCK_NB,
                )
            } == 0
            {
                return Ok(Self { _dir: dir });
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(pin_error(error));
            }
            if start.elapsed() > LOCK_WAIT {
                return Err(DatapathError::Locked {
                    path: pin_dir.to_owned(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The size of map `name` pinned in `pin_dir`, if there is one.
pub(super) fn pinned_size(pin_dir: &Path, name: &str) -> Option<u32> {
    let map = MapData::from_pin(pin_dir.join(name)).ok()?;
    Some(map.info().ok()?.max_entries())
}

/// Opens the map pinned at `path` (`BPF_OBJ_GET`, which bpffs refuses to a user who may not
/// read the pin).
pub(super) fn open_pin(path: &Path) -> Result<MapData, DatapathError> {
    MapData::from_pin(path).map_err(|source| {
        let open_pin_error = |source| DatapathError::OpenPin {
            path: path.to_owned(),
            source,
        };
        match source {
            MapError::SyscallError(SyscallError { call, io_error })
                if crate::privilege::pin_denied_to_user(&io_error) =>
            {
                denied_or(io_error, "opening the pinned map", path, |io_error| {
                    open_pin_error(MapError::SyscallError(SyscallError { call, io_error }))
                })
            }
            source => open_pin_error(source),
        }
    })
}

/// Checks every map already pinned in `pin_dir` against [`MAP_SHAPES`]; the sizes of the maps
/// sized at load against `sizes` when given (any size when not: readers take what is there).
pub(super) fn check_pins(pin_dir: &Path, sizes: &MapSizes) -> Result<(), DatapathError> {
    for (name, map_type, key_size, value_size, max_entries) in MAP_SHAPES {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let max_entries = if SIZED_MAPS.iter().any(|(sized, _)| *sized == name) {
            sizes
                .get(name)
                .or_else(|| pinned_size(pin_dir, name))
                .unwrap_or(max_entries)
        } else {
            max_entries
        };
        let map = open_pin(&path)?;
        let info = map.info().map_err(|source| DatapathError::OpenPin {
            path: path.clone(),
            source,
        })?;
        let found = (
            info.map_type().ok(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        if found != (Some(map_type), key_size, value_size, max_entries) {
            return Err(DatapathError::IncompatiblePin {
                path,
                found: format!(
                    "{:?} key {} value {} entries {}",
                    found.0, found.1, found.2, found.3
                ),
                expected: format!(
                    "{map_type:?} key {key_size} value {value_size} entries {max_entries}"
                ),
            });
        }
    }
    Ok(())
}

const XDP_LINK_PREFIX: &str = "xdp_link@";
const TC_LINK_PREFIX: &str = "tc_link@";
const TC_EGRESS_LINK_PREFIX: &str = "tc_egress@";

/// bpffs refuses names with a dot (`bpf_lookup`: "reserved for future use"), and VLAN
/// interfaces are called `eth0.100`: escape `%` and `.` as in a URL.
fn pin_name(prefix: &str, iface: &str) -> String {
    format!("{prefix}{}", iface.replace('%', "%25").replace('.', "%2e"))
}

fn iface_from_pin_name(name: &str) -> Option<String> {
    let escaped = name
        .strip_prefix(XDP_LINK_PREFIX)
        .or_else(|| name.strip_prefix(TC_LINK_PREFIX))?;
    Some(escaped.replace("%2e", ".").replace("%25", "%"))
}

/// Where the DNS capture link (tc egress) of `iface` is pinned.
#[must_use]
pub fn tc_egress_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(pin_name(TC_EGRESS_LINK_PREFIX, iface))
}

/// Where the XDP link of `iface` is pinned.
#[must_use]
pub fn xdp_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(pin_name(XDP_LINK_PREFIX, iface))
}

/// Where the tc link of `iface` is pinned.
#[must_use]
pub fn tc_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(pin_name(TC_LINK_PREFIX, iface))
}

/// Interfaces with pinned links in `pin_dir`.
pub fn attached_interfaces(pin_dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| iface_from_pin_name(entry.file_name().to_str()?))
        .collect();
    // An interface in XDP mode has both pins; in `--mode tc`, only the tc one.
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_have_no_dots_and_round_trip() {
        for iface in ["eth0", "eth0.100", "lan%1.2"] {
            let pin = xdp_link_pin(Path::new("/sys/fs/bpf/x"), iface);
            let name = pin.file_name().unwrap().to_str().unwrap();
            assert!(!name.contains('.'), "{name}");
            assert_eq!(iface_from_pin_name(name).as_deref(), Some(iface));
        }
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    /// The names and shapes the agent relies on are the ones the compiled object declares.
    #[test]
    fn object_declares_the_contracted_maps_and_programs() {
        let object =
            aya_obj::Object::parse(crate::EBPF_OBJECT).expect("the embedded object parses");
        for (name, map_type, key_size, value_size, max_entries) in MAP_SHAPES {
            let map = object
                .maps
                .get(name)
                .unwrap_or_else(|| panic!("map {name} missing"));
            assert_eq!(map.map_type(), map_type as u32, "{name}");
            assert_eq!(
                (map.key_size(), map.value_size(), map.max_entries()),
                (key_size, value_size, max_entries),
                "{name}"
            );
        }
        for name in [
            names::XDP_PROGRAM,
            names::TC_PROGRAM,
            names::TC_ONLY_PROGRAM,
            names::DNS_PROGRAM,
        ] {
            assert!(object.programs.contains_key(name), "program {name} missing");
        }
        assert!(object.maps.contains_key(names::LOGS), "aya-log ring buffer");
        assert_eq!(object.license.to_str(), Ok("Dual MIT/GPL"));
    }
}
