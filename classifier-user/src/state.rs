//! The agent's state directory: the client request id, each source's last good file, the
//! record of what the maps hold, the status and the learned addresses.
//!
//! Layout 2 (this version):
//! - `client-request-id`;
//! - `sources/NAME.body` and `sources/NAME.json`: each source's last good file and its
//!   [`Meta`], the `m365` source (`[feed]`) as every other;
//! - `union.json`: what the maps hold ([`Union`]): the digest of their entries and every
//!   source's endpoint sets, so that `lookup`, `prefixes` and `stats` name what decided;
//! - `status.json`, `learned.json`.
//!
//! Layout 1 (before the sources were one model) kept `[feed]` apart in `feed.json`,
//! `applied.json` and `catalog.json`; [`State::open`] migrates such a directory once.
//!
//! Every file is replaced whole (temporary file, fsync, rename, fsync of the directory), so a
//! crash or power cut leaves the old file or the new one, never half of one. The directory is
//! created 0700 and refused when another user owns it or may write to it
//! ([`crate::secure`]); temporary files are created new (`O_EXCL`, `O_NOFOLLOW`, 0600) under
//! a name nobody can guess, so a planted file or symlink is never written through.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use crate::sources::fetch::Meta;
use crate::{feed::Feed, privilege::denied_or, sources::fetch::sha256, time::Time};

const CLIENT_ID: &str = "client-request-id";
const STATUS: &str = "status.json";
/// The last good file of each source: `sources/NAME.body`, `sources/NAME.json`.
const SOURCES: &str = "sources";
/// What the maps hold.
const UNION: &str = "union.json";
/// The addresses learned from DNS answers, for `learned` and `lookup`.
const LEARNED: &str = "learned.json";
/// Layout 1's files of `[feed]`: its body, its record, and the other sources' sets.
const V1_FEED: &str = "feed.json";
const V1_APPLIED: &str = "applied.json";
const V1_CATALOG: &str = "catalog.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Untrusted(#[from] crate::secure::DirError),
    #[error(transparent)]
    Denied(#[from] crate::privilege::Denied),
}

/// What `status` and `sources` show; written whenever it changes. The JSON field names are a
/// stable schema.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub interfaces: Vec<String>,
    pub mark: String,
    /// Entries of the tries.
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// The first direct uplink's health, when the agent checks it (as before there were
    /// several: `uplinks[0]`).
    #[serde(default)]
    pub uplink: Option<Uplink>,
    /// Every direct uplink, in configuration order (index = the kernel's uplink index).
    #[serde(default)]
    pub uplinks: Vec<Uplink>,
    /// Where each category's new direct flows go now.
    #[serde(default)]
    pub steering: Vec<SteerRow>,
    /// Every source, `m365` (`[feed]`) first, then `[[sources]]` in configuration order.
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
    /// DNS learning, when on.
    #[serde(default)]
    pub dns: Option<DnsStatus>,
}

/// What DNS learning trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// The resolvers whose answers are learned.
    pub resolvers: Vec<std::net::IpAddr>,
    /// Whether they are the LAN interfaces' own addresses (`[dns] resolvers` empty).
    pub from_interfaces: bool,
}

impl Status {
    /// The source named `name`.
    #[must_use]
    pub fn source(&self, name: &str) -> Option<&SourceStatus> {
        self.sources.iter().find(|source| source.name == name)
    }
}

/// One source as the agent last saw it: what `sources --json` prints, one object per source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `m365` for `[feed]`, else the `[[sources]]` entry's name.
    pub name: String,
    /// `m365`, `aws`, `azure-service-tags`, `google` or `cidr-list`.
    pub kind: String,
    /// The URL or file it is read from (an m365 source: the web service's base URL).
    pub location: String,
    /// An m365 source's instance (`Worldwide`, ...); null for the other kinds.
    pub instance: Option<String>,
    /// `direct`, `tunnel`, or `by category` (Microsoft 365).
    pub policy: String,
    /// Its first endpoint set id: a Microsoft 365 instance has 1024 from there (`m365`'s
    /// from 1), the others one.
    pub first_set: u32,
    /// The version the maps hold (`syncToken`, `changeNumber`, Microsoft's version, or
    /// `sha256:` and the first 16 digits of the content hash); null before a good file.
    pub version: Option<String>,
    /// Where the file the maps hold came from (after redirects: a URL, a file, or
    /// `embedded snapshot VERSION`), and when the maps took it; null before one.
    pub from: Option<String>,
    pub applied_at: Option<Time>,
    /// Its distinct prefixes in the maps, after its filters.
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// The last fetch that ended well (new or unchanged), the last attempt and the next.
    pub last_success: Option<Time>,
    pub last_attempt: Option<Time>,
    pub next_refresh: Option<Time>,
    /// Why the last attempt failed; null once one succeeds.
    pub last_error: Option<String>,
    /// Attempts that failed in a row.
    pub consecutive_failures: u32,
}

/// `union.json`: what the maps hold, while their entries' digest is `entries`
/// ([`crate::compile::Compiled::digest`]); a reader that finds other entries knows another
/// writer changed them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Union {
    pub entries: String,
    pub applied_at: Time,
    pub sources: Vec<UnionSource>,
}

impl Union {
    /// `m365 2026043000, zoom sha256:…`: what it holds, for messages.
    #[must_use]
    pub fn versions(&self) -> String {
        self.sources
            .iter()
            .map(|source| {
                format!(
                    "{} {}",
                    source.name,
                    source.version.as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One source's part of [`Union`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnionSource {
    pub name: String,
    pub kind: String,
    pub first_set: u32,
    pub version: Option<String>,
    pub sets: Vec<CatalogSet>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSet {
    pub id: u32,
    pub service_area: String,
    pub category: u8,
    pub prefixes: Vec<ipnet::IpNet>,
}

impl CatalogSet {
    #[must_use]
    pub fn of(set: &crate::feed::EndpointSet) -> Self {
        Self {
            id: set.id,
            service_area: set.service_area.clone(),
            category: set.category.code(),
            prefixes: set.prefixes.clone(),
        }
    }
}

/// A file's identity and version: [`State::union_stamp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    inode: u64,
    len: u64,
    modified_ns: i64,
}

/// One learned address in one endpoint set: a row of `learned.json` and of `learned --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedRow {
    pub address: std::net::IpAddr,
    /// The name the client asked for.
    pub name: String,
    /// The name of its CNAME chain that matched a pattern.
    pub matched: String,
    pub set: u32,
    pub service_area: String,
    pub category: String,
    pub source: String,
    /// When it is forgotten (unless flows still use it).
    pub expires: Time,
}

/// `learned.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedFile {
    pub counts: crate::dns::Counts,
    /// When the counts were taken: the file is written at most once a second while answers
    /// come, so `learned` lags `/metrics` by at most that and says by how much.
    #[serde(default)]
    pub counted_at: Time,
    pub rows: Vec<LearnedRow>,
    /// Addresses written to the tries alone since the last apply: the maps hold the union's
    /// record plus these host entries until the whole table is applied (at most every 5 s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<std::net::IpAddr>,
}

/// A category's steering as the kernel's row holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteerRow {
    /// `Optimize`, `Allow`, `Default` or `Direct`.
    pub category: String,
    /// `best`, `ordered` or `balance`.
    pub policy: String,
    /// Whether it avoids degraded uplinks.
    pub sensitive: bool,
    /// The uplinks new flows take, by name, with their share of the row's slots in percent;
    /// `tunnel` when none may take them.
    pub to: Vec<(String, u32)>,
}

/// A direct uplink as the agent's health checks see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    /// Its name (`direct` for the one of `[health]`).
    #[serde(default = "single")]
    pub name: String,
    /// Its interface, mark and routing table.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub mark: u32,
    #[serde(default)]
    pub table: Option<u32>,
    pub state: crate::health::State,
    /// When it last changed, and why.
    pub since: Option<Time>,
    pub reason: Option<String>,
    /// Changes of state since the agent started.
    pub transitions: u64,
    /// Probes that failed since the agent started (each is logged at info level).
    #[serde(default)]
    pub failed_probes: u64,
    /// The last probe round, one result per target.
    pub targets: Vec<crate::health::ProbeResult>,
    /// RTT, jitter and loss over the last probe rounds; null before the first round.
    #[serde(default)]
    pub quality: Option<crate::health::Figures>,
    /// Whether it meets its SLA for new quality-sensitive flows, and why not.
    #[serde(default)]
    pub grade: crate::uplinks::Grade,
    #[serde(default)]
    pub grade_reason: Option<crate::uplinks::Miss>,
    #[serde(default)]
    pub grade_since: Option<Time>,
    #[serde(default)]
    pub grade_changes: u64,
    /// Its SLA, as people read it (`rtt 60ms, jitter 15ms, loss 0.1%`).
    #[serde(default)]
    pub sla: String,
    /// Its interface's addresses (the source addresses Microsoft sees without NAT), and its
    /// public NAT addresses, when configured.
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub nat_address: Vec<std::net::IpAddr>,
}

fn single() -> String {
    crate::uplinks::SINGLE.to_owned()
}

/// Layout 1's `applied.json`.
#[derive(Deserialize)]
struct AppliedV1 {
    version: String,
    source: String,
    applied_at: u64,
    #[serde(default)]
    entries: Option<String>,
}

/// Layout 1's `catalog.json`: the `[[sources]]` sets, without `[feed]`'s.
#[derive(Deserialize)]
struct CatalogV1 {
    entries: String,
    sources: Vec<UnionSource>,
}

/// Plain structs of strings and integers always serialize.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// The JSON file at `path`; `None` when there is none, or it is not one this version reads.
/// Failing to read it otherwise is an error: root's file, read by another user, is not "none".
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(denied_or(source, "reading", path, |source| {
            StateError::Io {
                action: "reading",
                path: path.to_owned(),
                source,
            }
        })),
    }
}

/// The status file of the agent using `dir`, without creating anything; `None` when no agent
/// wrote one.
pub fn read_status(dir: &Path) -> Result<Option<Status>, StateError> {
    read_json(&dir.join(STATUS))
}

pub struct State {
    dir: PathBuf,
}

impl State {
    /// Opens the directory, creating it 0700, and migrates a layout 1 directory; refuses one
    /// another user could change.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        crate::secure::create_private(dir, "state directory")?;
        let state = Self {
            dir: dir.to_owned(),
        };
        state.migrate()?;
        Ok(state)
    }

    /// Opens a directory that exists, for reading, without creating anything.
    pub fn open_existing(dir: &Path) -> Result<Self, StateError> {
        crate::secure::check(dir, "state directory")?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves layout 1's `[feed]` files into the `m365` source's and `union.json`; returns
    /// whether there was anything to move. New files are written before old ones go, so a
    /// crash in between migrates again.
    pub fn migrate(&self) -> Result<bool, StateError> {
        let Ok(Some(applied)) = read_json::<AppliedV1>(&self.dir.join(V1_APPLIED)) else {
            return Ok(false);
        };
        if let Ok(body) = fs::read(self.dir.join(V1_FEED)) {
            let version =
                crate::gate::is_version(&applied.version).then(|| applied.version.clone());
            let meta = Meta {
                version: version.clone(),
                sha256: sha256(&body),
                etag: None,
                last_modified: None,
                from: applied.source.clone(),
                fetched_at: Time(applied.applied_at),
            };
            self.save_source(crate::sources::M365, &body, &meta)?;
            if let Some(entries) = applied.entries {
                let sets = Feed::parse(&body)
                    .map(|feed| feed.sets.iter().map(CatalogSet::of).collect())
                    .unwrap_or_default();
                let mut sources = vec![UnionSource {
                    name: crate::sources::M365.to_owned(),
                    kind: crate::sources::Kind::M365.to_string(),
                    first_set: 0,
                    version,
                    sets,
                }];
                if let Ok(Some(catalog)) = read_json::<CatalogV1>(&self.dir.join(V1_CATALOG))
                    && catalog.entries == entries
                {
                    sources.extend(catalog.sources);
                }
                self.save_union(&Union {
                    entries,
                    applied_at: Time(applied.applied_at),
                    sources,
                })?;
            }
        }
        for name in [V1_FEED, V1_CATALOG, V1_APPLIED] {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        action: "removing",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(true)
    }

    /// A new file `.NAME.PID.RANDOM.tmp`, 0600, that did not exist: never a planted one.
    fn create_temporary(&self, name: &str) -> io::Result<(PathBuf, fs::File)> {
        let mut random = [0u8; 8];
        for _ in 0..16 {
            // SAFETY: getrandom writes at most `random.len()` bytes into the buffer.
            let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
            if got != 8 {
                return Err(io::Error::last_os_error());
            }
            let tmp = self.dir.join(format!(
                ".{name}.{}.{:016x}.tmp",
                std::process::id(),
                u64::from_ne_bytes(random)
            ));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(file) => return Ok((tmp, file)),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(error),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "16 random temporary names were all taken",
        ))
    }

    /// The machine's client request id: generated once, kept across runs, as Microsoft asks.
    pub fn client_id(&self) -> Result<String, StateError> {
        let path = self.dir.join(CLIENT_ID);
        if let Ok(id) = fs::read_to_string(&path) {
            let id = id.trim();
            if id.len() == 36 {
                return Ok(id.to_owned());
            }
        }
        let id = fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(|source| {
            StateError::Io {
                action: "generating a client request id from",
                path: "/proc/sys/kernel/random/uuid".into(),
                source,
            }
        })?;
        let id = id.trim().to_owned();
        self.write(CLIENT_ID, id.as_bytes())?;
        Ok(id)
    }

    /// The directory of the sources' last good files, created 0700.
    fn sources(&self) -> Result<Self, StateError> {
        let dir = self.dir.join(SOURCES);
        crate::secure::create_private(&dir, "state directory")?;
        Ok(Self { dir })
    }

    /// Keeps `body` as source `name`'s last good file (a name is `[a-z0-9._-]`).
    pub fn save_source(&self, name: &str, body: &[u8], meta: &Meta) -> Result<(), StateError> {
        let sources = self.sources()?;
        sources.write(&format!("{name}.body"), body)?;
        sources.write(&format!("{name}.json"), &to_json(meta))
    }

    /// Replaces source `name`'s record alone (the same file, known by a new version).
    pub fn save_meta(&self, name: &str, meta: &Meta) -> Result<(), StateError> {
        self.sources()?
            .write(&format!("{name}.json"), &to_json(meta))
    }

    /// Source `name`'s last good file and its record, if any (and if they agree).
    #[must_use]
    pub fn source(&self, name: &str) -> Option<(Vec<u8>, Meta)> {
        let dir = self.dir.join(SOURCES);
        crate::secure::check(&dir, "state directory").ok()?;
        let meta: Meta = read_json(&dir.join(format!("{name}.json"))).ok()??;
        let body = fs::read(dir.join(format!("{name}.body"))).ok()?;
        (sha256(&body) == meta.sha256).then_some((body, meta))
    }

    /// Records what the maps hold. Call only once they hold it.
    pub fn save_union(&self, union: &Union) -> Result<(), StateError> {
        self.write(UNION, &serde_json::to_vec(union).unwrap_or_default())
    }

    /// What the maps held when last recorded; `None` also when it cannot be read, which only
    /// costs the sets their names.
    #[must_use]
    pub fn union(&self) -> Option<Union> {
        read_json(&self.dir.join(UNION)).ok().flatten()
    }

    /// Which version of the union's record the directory holds, without reading it (it lists
    /// every prefix): each save replaces the file (a rename), so another process's `sync` gives
    /// another stamp. `None` when there is no record.
    #[must_use]
    pub fn union_stamp(&self) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(self.dir.join(UNION)).ok()?;
        Some(Stamp {
            inode: meta.ino(),
            len: meta.len(),
            modified_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        })
    }

    pub fn save_learned(&self, learned: &LearnedFile) -> Result<(), StateError> {
        self.write(LEARNED, &serde_json::to_vec(learned).unwrap_or_default())
    }

    /// The learned addresses as last recorded; `None` before any were.
    pub fn learned(&self) -> Result<Option<LearnedFile>, StateError> {
        read_json(&self.dir.join(LEARNED))
    }

    pub fn save_status(&self, status: &Status) -> Result<(), StateError> {
        self.write(STATUS, &to_json(status))
    }

    pub fn status(&self) -> Result<Option<Status>, StateError> {
        read_status(&self.dir)
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let error = |action| {
            let path = path.clone();
            move |source| StateError::Io {
                action,
                path,
                source,
            }
        };
        let (tmp, mut file) = self
            .create_temporary(name)
            .map_err(error("creating a temporary file for"))?;
        let written = file
            .write_all(data)
            .map_err(error("writing"))
            .and_then(|()| file.sync_all().map_err(error("syncing")))
            .and_then(|()| fs::rename(&tmp, &path).map_err(error("replacing")));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(error("syncing the directory of"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(what: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xdp-breakout-state-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn client_id_is_generated_once() {
        let dir = temp_dir("id");
        let state = State::open(&dir).unwrap();
        let id = state.client_id().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(State::open(&dir).unwrap().client_id().unwrap(), id);
        fs::remove_dir_all(dir).unwrap();
    }

    fn meta(body: &[u8]) -> Meta {
        Meta {
            version: Some("2026043000".into()),
            sha256: sha256(body),
            from: "test".into(),
            fetched_at: Time(1),
            ..Meta::default()
        }
    }

    #[test]
    fn a_source_file_round_trips_and_leaves_no_temporary_file() {
        let dir = temp_dir("feed");
        let state = State::open(&dir).unwrap();
        assert!(state.source("m365").is_none());
        state.save_source("m365", b"[]", &meta(b"[]")).unwrap();
        assert_eq!(state.source("m365"), Some((b"[]".to_vec(), meta(b"[]"))));
        for dir in [dir.clone(), dir.join("sources")] {
            let names: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                names
                    .iter()
                    .all(|name| !name.to_string_lossy().ends_with(".tmp")),
                "{names:?}"
            );
        }
        // A body that is not the one its record describes is no last good file.
        fs::write(dir.join("sources/m365.body"), b"[ ]").unwrap();
        assert!(state.source("m365").is_none());
        fs::remove_dir_all(dir).unwrap();
    }

    /// A file planted under the old fixed temporary name (a symlink to a file only root may
    /// write) is neither followed nor replaced.
    #[test]
    fn planted_symlinks_are_never_written_through() {
        let dir = temp_dir("symlink");
        let state = State::open(&dir).unwrap();
        let victim = temp_dir("victim");
        fs::write(&victim, b"root's file").unwrap();
        for name in [
            ".union.json.tmp",
            ".status.json.tmp",
            "sources/.m365.body.tmp",
        ] {
            fs::create_dir_all(dir.join("sources")).unwrap();
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
        state.save_source("m365", b"[]", &meta(b"[]")).unwrap();
        state.save_union(&Union::default()).unwrap();
        state.save_status(&Status::default()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert_eq!(state.source("m365"), Some((b"[]".to_vec(), meta(b"[]"))));
        fs::remove_dir_all(dir).unwrap();
        fs::remove_file(victim).unwrap();
    }

    #[test]
    fn a_directory_others_may_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("open");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let error = State::open(&dir).err().expect("refused").to_string();
        assert!(error.contains("has mode 0777"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }
}
