//! Loading the kernel programs, pinning their maps and links, and reading and writing maps.
//!
//! Everything lives under one pin directory (default `/sys/fs/bpf/xdp-breakout`): the maps by
//! their names, and per interface the XDP and tc links (`xdp_link@<iface>`,
//! `tc_link@<iface>`). Links are `bpf_links`, so the programs stay attached after the process
//! exits and a new process can swap in a new program atomically (`BPF_LINK_UPDATE`).

use std::{
    ffi::CString,
    fs, io,
    net::IpAddr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, Map, MapData, MapError, MapType, PerCpuArray, lpm_trie::Key},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc,
    },
};
use classifier_common::{
    Config, Counter, LpmKeyV4, LpmKeyV6, MAX_PREFIXES, MAX_SET_ID, Policy, PrefixRules, STATS_LEN,
    action, category, names,
};

use crate::compile::Compiled;

/// Optimize and Allow go direct, as Microsoft recommends; Default follows the tunnel.
pub const DEFAULT_POLICY: [u8; category::COUNT as usize] = [
    action::TUNNEL,
    action::TUNNEL,
    action::DIRECT,
    action::DIRECT,
];

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
        id: u64,
    },
    #[error(
        "another xdp-breakout process has been changing {path} for 10 s (its lock is held); \
         try again when it is done"
    )]
    Locked { path: PathBuf },
    #[error("the programs were loaded with private maps; attaching needs a pin directory")]
    Unpinned,
    #[error("interface {iface}: xdp-breakout is not attached (no {path})")]
    NotAttached { iface: String, path: PathBuf },
}

/// The shape every pinned map must have: (name, type, key size, value size, max entries).
/// Checked before a pin is reused, because aya opens a pinned map without comparing it.
pub const MAP_SHAPES: [(&str, MapType, u32, u32, u32); 6] = [
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
        return Err(mount_error(io::Error::last_os_error()));
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
    if !pin_dir.exists() {
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
        let dir = fs::File::open(pin_dir).map_err(pin_error)?;
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

/// Checks every map already pinned in `pin_dir` against [`MAP_SHAPES`].
fn check_pins(pin_dir: &Path) -> Result<(), DatapathError> {
    for (name, map_type, key_size, value_size, max_entries) in MAP_SHAPES {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path).map_err(|source| DatapathError::OpenPin {
            path: path.clone(),
            source,
        })?;
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

/// The loaded object: programs loaded into the kernel, maps created or adopted.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

impl Datapath {
    /// Loads the programs, adopting maps already pinned in `pin_dir` (so that a restart or an
    /// upgrade keeps every entry and counter) and pinning the ones it creates.
    pub fn load_pinned(object: &[u8], pin_dir: &Path) -> Result<Self, DatapathError> {
        prepare_pin_dir(pin_dir)?;
        check_pins(pin_dir)?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = names::PINNED_MAPS
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(object).map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, Some(pin_dir.to_owned()))
    }

    /// Loads a second copy of the programs that reads the pinned tries, policy and config but
    /// counts into private maps: `classify` asks what the data plane would decide without
    /// adding test packets to its counters.
    pub fn load_shadow(object: &[u8], pin_dir: &Path) -> Result<Self, DatapathError> {
        check_pin_dir(pin_dir)?;
        check_pins(pin_dir)?;
        let shared = [
            names::PREFIX_V4,
            names::PREFIX_V6,
            names::POLICY,
            names::CONFIG,
        ];
        let paths: Vec<(&str, PathBuf)> = shared
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        if let Some((_, path)) = paths.iter().find(|(_, path)| !path.exists()) {
            return Err(DatapathError::NoPins { path: path.clone() });
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(object).map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, None)
    }

    /// Loads the programs with private maps that nothing else sees (tests, `classify`).
    pub fn load_private(object: &[u8]) -> Result<Self, DatapathError> {
        let ebpf = EbpfLoader::new()
            .load(object)
            .map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, None)
    }

    fn finish_load(mut ebpf: Ebpf, pin_dir: Option<PathBuf>) -> Result<Self, DatapathError> {
        let program_error = |name| move |source| DatapathError::Program { name, source };
        xdp_program(&mut ebpf)?
            .load()
            .map_err(program_error(names::XDP_PROGRAM))?;
        tc_program(&mut ebpf)?
            .load()
            .map_err(program_error(names::TC_PROGRAM))?;
        Ok(Self { ebpf, pin_dir })
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        tc_program(&mut self.ebpf)
    }

    /// The maps of the loaded object.
    pub fn maps(&mut self) -> Result<Maps, DatapathError> {
        let mut take = |name: &'static str| {
            let map = self
                .ebpf
                .map_mut(name)
                .ok_or(DatapathError::MissingMap { name })?;
            // The object keeps its own handle; ours is a second fd on the same map.
            let (Map::LpmTrie(data) | Map::Array(data) | Map::PerCpuArray(data)) = map else {
                return Err(DatapathError::MissingMap { name });
            };
            let info = data
                .info()
                .map_err(|source| DatapathError::Map { name, source })?;
            MapData::from_id(info.id()).map_err(|source| DatapathError::Map { name, source })
        };
        Maps::from_data([
            take(names::PREFIX_V4)?,
            take(names::PREFIX_V6)?,
            take(names::POLICY)?,
            take(names::CONFIG)?,
            take(names::STATS)?,
            take(names::SET_STATS)?,
        ])
    }

    /// Attaches XDP and tc ingress to `iface` and pins both links, or, when this pin directory
    /// already has links for it, swaps the loaded programs into them without a gap.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), DatapathError> {
        let pin_dir = self.pin_dir.clone().ok_or(DatapathError::Unpinned)?;
        let attach_error = |what: &str| {
            let what = what.to_owned();
            let iface = iface.to_owned();
            move |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
                iface,
                what,
                source,
            }
        };
        let xdp_pin = xdp_link_pin(&pin_dir, iface);
        if !xdp_pin.exists()
            && let Some(AttachedXdp { id, name, .. }) = attached_xdp(iface)
        {
            return Err(DatapathError::ForeignXdp {
                iface: iface.to_owned(),
                name,
                id,
            });
        }
        let xdp = self.xdp()?;
        let link_id = match PinnedLink::from_pin(&xdp_pin) {
            Ok(pinned) => {
                let link = FdLink::from(pinned).try_into().map_err(|e: LinkError| {
                    attach_error("adopting the pinned XDP link")(e.into())
                })?;
                xdp.attach_to_link(link)
                    .map_err(|e| attach_error("replacing the XDP program")(e.into()))?
            }
            Err(_) => xdp
                .attach(iface, mode)
                .map_err(|e| attach_error(&xdp_attach_hint(mode))(e.into()))?,
        };
        let link = xdp
            .take_link(link_id)
            .map_err(|e| attach_error("taking the XDP link")(e.into()))?
            .try_into()
            .map_err(|e: LinkError| attach_error("XDP attached without a bpf_link")(e.into()))?;
        keep_pinned(link, &xdp_pin).map_err(|e| attach_error("pinning the XDP link")(e.into()))?;

        let tc_pin = tc_link_pin(&pin_dir, iface);
        let classifier = self.tc()?;
        let link_id = if let Ok(pinned) = PinnedLink::from_pin(&tc_pin) {
            let link = FdLink::from(pinned)
                .try_into()
                .map_err(|e: LinkError| attach_error("adopting the pinned tc link")(e.into()))?;
            classifier
                .attach_to_link(link)
                .map_err(|e| attach_error("replacing the tc program")(e.into()))?
        } else {
            // tcx (6.6+) needs no qdisc; older kernels need clsact. Adding it is harmless.
            if let Err(error) = tc::qdisc_add_clsact(iface) {
                log::debug!("{iface}: clsact qdisc: {error}");
            }
            classifier
                .attach(iface, TcAttachType::Ingress)
                .map_err(|e| attach_error("attaching the tc ingress program")(e.into()))?
        };
        let link = classifier
            .take_link(link_id)
            .map_err(|e| attach_error("taking the tc link")(e.into()))?
            .try_into()
            .map_err(|e: LinkError| {
                attach_error("tc attached without a bpf_link (kernel older than 6.6?)")(e.into())
            })?;
        keep_pinned(link, &tc_pin).map_err(|e| attach_error("pinning the tc link")(e.into()))?;
        Ok(())
    }
}

/// Pins a new link; a link adopted from its pin is pinned already, and closing our fd on it
/// leaves it attached.
fn keep_pinned(link: FdLink, pin: &Path) -> Result<(), aya::pin::PinError> {
    if pin.exists() {
        return Ok(());
    }
    link.pin(pin).map(drop)
}

fn xdp_attach_hint(mode: XdpMode) -> String {
    match mode {
        XdpMode::Driver => {
            "attaching XDP in native mode (if the driver lacks native XDP, try --mode skb)"
                .to_owned()
        }
        _ => "attaching XDP".to_owned(),
    }
}

/// An XDP program attached to an interface, as iproute2 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedXdp {
    pub id: u64,
    pub name: String,
    /// `native`, `skb`, `offload` (iproute2's `XDP_ATTACHED_*` modes 1 to 3) or `unknown`.
    pub mode: &'static str,
}

/// The XDP program attached to `iface` in this network namespace; `None` when there is none,
/// or `ip` cannot tell.
#[must_use]
pub fn attached_xdp(iface: &str) -> Option<AttachedXdp> {
    let output = std::process::Command::new("ip")
        .args(["-j", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let xdp = links.get(0)?.get("xdp")?;
    let prog = xdp.get("prog")?;
    let mode = match xdp.get("mode").and_then(serde_json::Value::as_u64) {
        Some(1) => "native",
        Some(2) => "skb",
        Some(3) => "offload",
        _ => "unknown",
    };
    Some(AttachedXdp {
        id: prog.get("id")?.as_u64()?,
        name: prog.get("name")?.as_str()?.to_owned(),
        mode,
    })
}

const XDP_LINK_PREFIX: &str = "xdp_link@";
const TC_LINK_PREFIX: &str = "tc_link@";

/// bpffs refuses names with a dot (`bpf_lookup`: "reserved for future use"), and VLAN
/// interfaces are called `eth0.100`: escape `%` and `.` as in a URL.
fn pin_name(prefix: &str, iface: &str) -> String {
    format!("{prefix}{}", iface.replace('%', "%25").replace('.', "%2e"))
}

fn iface_from_pin_name(name: &str) -> Option<String> {
    let escaped = name.strip_prefix(XDP_LINK_PREFIX)?;
    Some(escaped.replace("%2e", ".").replace("%25", "%"))
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

/// Detaches xdp-breakout from `iface` by removing its link pins (the kernel releases a link
/// when its last reference goes).
pub fn detach(pin_dir: &Path, iface: &str) -> Result<(), DatapathError> {
    check_pin_dir(pin_dir)?;
    let pins = [xdp_link_pin(pin_dir, iface), tc_link_pin(pin_dir, iface)];
    if !pins.iter().any(|pin| pin.exists()) {
        return Err(DatapathError::NotAttached {
            iface: iface.to_owned(),
            path: pins[0].clone(),
        });
    }
    for pin in pins {
        if let Err(error) = fs::remove_file(&pin)
            && error.kind() != io::ErrorKind::NotFound
        {
            return Err(DatapathError::PinDir {
                path: pin,
                source: error,
            });
        }
    }
    Ok(())
}

/// Interfaces with pinned links in `pin_dir`.
pub fn attached_interfaces(pin_dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| iface_from_pin_name(entry.file_name().to_str()?))
        .collect();
    found.sort();
    found
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let name = names::XDP_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    let name = names::TC_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Handles on the six maps, from a loaded object or from pins.
pub struct Maps {
    prefix_v4: LpmTrie<MapData, [u8; 4], PrefixRules>,
    prefix_v6: LpmTrie<MapData, [u8; 16], PrefixRules>,
    policy: Array<MapData, Policy>,
    config: Array<MapData, Config>,
    stats: PerCpuArray<MapData, Counter>,
    set_stats: PerCpuArray<MapData, Counter>,
}

/// What [`Maps::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

impl ApplyReport {
    /// `34 IPv4 and 59 IPv6 prefixes (93 added, 0 changed, 0 removed)`, for logs and output.
    #[must_use]
    pub fn describe(&self, target: &Compiled) -> String {
        format!(
            "{} IPv4 and {} IPv6 prefixes ({} added, {} changed, {} removed)",
            target.v4.len(),
            target.v6.len(),
            self.added,
            self.changed,
            self.removed
        )
    }
}

impl Maps {
    /// Opens the maps pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self, DatapathError> {
        check_pin_dir(pin_dir)?;
        check_pins(pin_dir)?;
        let first = pin_dir.join(names::PREFIX_V4);
        if !first.exists() {
            return Err(DatapathError::NoPins {
                path: pin_dir.to_owned(),
            });
        }
        let open = |name: &'static str| {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).map_err(|source| DatapathError::OpenPin { path, source })
        };
        Self::from_data([
            open(names::PREFIX_V4)?,
            open(names::PREFIX_V6)?,
            open(names::POLICY)?,
            open(names::CONFIG)?,
            open(names::STATS)?,
            open(names::SET_STATS)?,
        ])
    }

    fn from_data(data: [MapData; 6]) -> Result<Self, DatapathError> {
        let [prefix_v4, prefix_v6, policy, config, stats, set_stats] = data;
        let map_error = |name| move |source| DatapathError::Map { name, source };
        Ok(Self {
            prefix_v4: LpmTrie::try_from(Map::LpmTrie(prefix_v4))
                .map_err(map_error(names::PREFIX_V4))?,
            prefix_v6: LpmTrie::try_from(Map::LpmTrie(prefix_v6))
                .map_err(map_error(names::PREFIX_V6))?,
            policy: Array::try_from(Map::Array(policy)).map_err(map_error(names::POLICY))?,
            config: Array::try_from(Map::Array(config)).map_err(map_error(names::CONFIG))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(stats))
                .map_err(map_error(names::STATS))?,
            set_stats: PerCpuArray::try_from(Map::PerCpuArray(set_stats))
                .map_err(map_error(names::SET_STATS))?,
        })
    }

    pub fn config(&self) -> Result<Config, DatapathError> {
        self.config.get(&0, 0).map_err(|source| DatapathError::Map {
            name: names::CONFIG,
            source,
        })
    }

    pub fn set_config(&mut self, config: &Config) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| DatapathError::Map {
                name: names::CONFIG,
                source,
            })
    }

    /// The action of each category, indexed by category code.
    pub fn policy(&self) -> Result<[u8; category::COUNT as usize], DatapathError> {
        let mut actions = [0; category::COUNT as usize];
        for (index, action) in (0..).zip(actions.iter_mut()) {
            *action = self
                .policy
                .get(&index, 0)
                .map_err(|source| DatapathError::Map {
                    name: names::POLICY,
                    source,
                })?
                .action;
        }
        Ok(actions)
    }

    pub fn set_policy(
        &mut self,
        actions: [u8; category::COUNT as usize],
    ) -> Result<(), DatapathError> {
        for (index, action) in (0..).zip(actions) {
            self.policy
                .set(
                    index,
                    Policy {
                        action,
                        _pad: [0; 3],
                    },
                    0,
                )
                .map_err(|source| DatapathError::Map {
                    name: names::POLICY,
                    source,
                })?;
        }
        Ok(())
    }

    /// The installed entries.
    pub fn installed(&self) -> Result<Compiled, DatapathError> {
        let mut installed = Compiled::default();
        for item in &self.prefix_v4 {
            let (key, value) = item.map_err(|source| DatapathError::Map {
                name: names::PREFIX_V4,
                source,
            })?;
            installed.v4.insert(
                LpmKeyV4 {
                    prefix_len: key.prefix_len(),
                    addr: key.data(),
                },
                value,
            );
        }
        for item in &self.prefix_v6 {
            let (key, value) = item.map_err(|source| DatapathError::Map {
                name: names::PREFIX_V6,
                source,
            })?;
            installed.v6.insert(
                LpmKeyV6 {
                    prefix_len: key.prefix_len(),
                    addr: key.data(),
                },
                value,
            );
        }
        Ok(installed)
    }

    /// Makes the tries hold exactly `target`: new and changed entries first, stale ones last,
    /// so a prefix present before and after is never missing. Each update replaces one
    /// prefix's whole value atomically.
    pub fn apply(&mut self, target: &Compiled) -> Result<ApplyReport, DatapathError> {
        let installed = self.installed()?;
        self.apply_over(&installed, target)
    }

    /// [`Maps::apply`] when the caller has just read the installed entries (a dump of a
    /// million-entry trie takes a second; callers that need it too should not pay twice).
    pub fn apply_over(
        &mut self,
        installed: &Compiled,
        target: &Compiled,
    ) -> Result<ApplyReport, DatapathError> {
        let mut report = ApplyReport::default();
        let v4_error = |source| DatapathError::Map {
            name: names::PREFIX_V4,
            source,
        };
        let v6_error = |source| DatapathError::Map {
            name: names::PREFIX_V6,
            source,
        };
        for (key, value) in &target.v4 {
            match installed.v4.get(key) {
                Some(old) if old == value => report.unchanged += 1,
                old => {
                    self.prefix_v4
                        .insert(&Key::new(key.prefix_len, key.addr), value, 0)
                        .map_err(v4_error)?;
                    if old.is_some() {
                        report.changed += 1;
                    } else {
                        report.added += 1;
                    }
                }
            }
        }
        for (key, value) in &target.v6 {
            match installed.v6.get(key) {
                Some(old) if old == value => report.unchanged += 1,
                old => {
                    self.prefix_v6
                        .insert(&Key::new(key.prefix_len, key.addr), value, 0)
                        .map_err(v6_error)?;
                    if old.is_some() {
                        report.changed += 1;
                    } else {
                        report.added += 1;
                    }
                }
            }
        }
        for key in installed
            .v4
            .keys()
            .filter(|key| !target.v4.contains_key(key))
        {
            self.prefix_v4
                .remove(&Key::new(key.prefix_len, key.addr))
                .map_err(v4_error)?;
            report.removed += 1;
        }
        for key in installed
            .v6
            .keys()
            .filter(|key| !target.v6.contains_key(key))
        {
            self.prefix_v6
                .remove(&Key::new(key.prefix_len, key.addr))
                .map_err(v6_error)?;
            report.removed += 1;
        }
        Ok(report)
    }

    /// The longest installed prefix that holds `addr`, as the kernel finds it.
    pub fn lookup(&self, addr: IpAddr) -> Result<Option<PrefixRules>, DatapathError> {
        let found = match addr {
            IpAddr::V4(addr) => self.prefix_v4.get(&Key::new(32, addr.octets()), 0),
            IpAddr::V6(addr) => self.prefix_v6.get(&Key::new(128, addr.octets()), 0),
        };
        match found {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                name: if addr.is_ipv4() {
                    names::PREFIX_V4
                } else {
                    names::PREFIX_V6
                },
                source,
            }),
        }
    }

    /// [`classifier_common::stat`] counters, summed over CPUs, by index.
    pub fn stats(&self) -> Result<Vec<Counter>, DatapathError> {
        sum_per_cpu(&self.stats, STATS_LEN, names::STATS)
    }

    /// Per endpoint set counters, summed over CPUs; sets with no packets are left out.
    pub fn set_stats(&self) -> Result<Vec<(u16, Counter)>, DatapathError> {
        let all = sum_per_cpu(&self.set_stats, MAX_SET_ID, names::SET_STATS)?;
        Ok((0..)
            .zip(all)
            .filter(|(_, counter)| counter.packets != 0)
            .collect())
    }
}

fn sum_per_cpu(
    map: &PerCpuArray<MapData, Counter>,
    len: u32,
    name: &'static str,
) -> Result<Vec<Counter>, DatapathError> {
    (0..len)
        .map(|index| {
            let values = map
                .get(&index, 0)
                .map_err(|source| DatapathError::Map { name, source })?;
            Ok(values.iter().fold(Counter::default(), |sum, cpu| Counter {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
            }))
        })
        .collect()
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
        for name in [names::XDP_PROGRAM, names::TC_PROGRAM] {
            assert!(object.programs.contains_key(name), "program {name} missing");
        }
        assert!(object.maps.contains_key(names::LOGS), "aya-log ring buffer");
        assert_eq!(object.license.to_str(), Ok("Dual MIT/GPL"));
    }
}
