//! The agent's state directory: the client request id, the last applied feed and the status.
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
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

const CLIENT_ID: &str = "client-request-id";
const FEED: &str = "feed.json";
const APPLIED: &str = "applied.json";
const STATUS: &str = "status.json";
/// The last good file of each `[[sources]]` entry: `sources/NAME.body`, `sources/NAME.json`.
const SOURCES: &str = "sources";
/// The endpoint sets of every source the maps hold, for `lookup`, `prefixes` and `stats`.
const CATALOG: &str = "catalog.json";
/// The addresses learned from DNS answers, for `learned` and `lookup`.
const LEARNED: &str = "learned.json";

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
}

/// Which feed the maps hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// `YYYYMMDDNN`.
    pub version: String,
    /// Where it came from: a URL, a file, or the embedded snapshot.
    pub source: String,
    /// Seconds since the epoch.
    pub applied_at: u64,
    /// [`crate::compile::Compiled::digest`] of the entries it compiled to: the maps hold this
    /// feed only while their entries have this digest.
    #[serde(default)]
    pub entries: Option<String>,
}

/// What `status` shows; written after every poll. The JSON field names are a stable schema.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub feed_url: String,
    pub interfaces: Vec<String>,
    pub mark: String,
    pub applied: Option<Applied>,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// Of those, the prefixes of `[feed]`'s feed after its filter.
    #[serde(default)]
    pub feed_prefixes_v4: usize,
    #[serde(default)]
    pub feed_prefixes_v6: usize,
    /// Seconds since the epoch of the last poll and of the next one.
    pub last_poll: Option<u64>,
    pub next_poll: Option<u64>,
    /// The last failure, cleared by a successful poll.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub pid: u32,
    /// The direct uplink's health, when the agent checks it.
    #[serde(default)]
    pub uplink: Option<Uplink>,
    /// Each `[[sources]]` entry, in configuration order (`[feed]` is the fields above).
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
}

/// One `[[sources]]` entry as the agent last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    pub kind: String,
    /// Its URL or file.
    pub location: String,
    /// `direct`, `tunnel`, or `by category` (m365).
    pub policy: String,
    /// Its first endpoint set id (an m365 instance has 1024 from there; others one).
    pub first_set: u32,
    /// The version of the file the maps hold (`syncToken`, `changeNumber`, m365's version),
    /// or its content hash's first 16 digits when it has none; null before a good file.
    pub version: Option<String>,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// Seconds since the epoch: the last fetch that ended well (new or unchanged), the last
    /// attempt, and the next.
    pub last_success: Option<u64>,
    pub last_attempt: Option<u64>,
    pub next_refresh: Option<u64>,
    /// The last failure, cleared by a good fetch.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

/// The endpoint sets of every source but `[feed]` that the maps hold (`entries` is their
/// [`crate::compile::Compiled::digest`]), so that readers name what decided a packet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCatalog {
    pub entries: String,
    pub sources: Vec<CatalogSource>,
}

/// One learned address in one endpoint set.
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
    /// Seconds since the epoch.
    pub expires: u64,
}

/// `learned.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedFile {
    pub counts: crate::dns::Counts,
    pub rows: Vec<LearnedRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSource {
    pub name: String,
    pub kind: String,
    pub first_set: u32,
    pub sets: Vec<CatalogSet>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSet {
    pub id: u32,
    pub service_area: String,
    pub category: u8,
    pub prefixes: Vec<ipnet::IpNet>,
}

/// The direct uplink as the agent's health checks see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    pub state: crate::health::State,
    /// Seconds since the epoch of the last change, and why it changed.
    pub since: Option<u64>,
    pub reason: Option<String>,
    /// Changes of state since the agent started.
    pub transitions: u64,
    /// Probes that failed since the agent started (each is logged at info level).
    #[serde(default)]
    pub failed_probes: u64,
    /// The last probe round, one result per target.
    pub targets: Vec<crate::health::ProbeResult>,
}

/// Plain structs of strings and integers always serialize.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// The status file of the agent using `dir`, without creating anything.
#[must_use]
pub fn read_status(dir: &Path) -> Option<Status> {
    serde_json::from_slice(&fs::read(dir.join(STATUS)).ok()?).ok()
}

pub struct State {
    dir: PathBuf,
}

#[must_use]
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    /// Opens the directory, creating it 0700; refuses one another user could change.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        crate::secure::create_private(dir, "state directory")?;
        Ok(Self {
            dir: dir.to_owned(),
        })
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

    /// The last applied feed's body and what it was, if any.
    #[must_use]
    pub fn last_feed(&self) -> Option<(Vec<u8>, Applied)> {
        let body = fs::read(self.dir.join(FEED)).ok()?;
        let applied = serde_json::from_slice(&fs::read(self.dir.join(APPLIED)).ok()?).ok()?;
        Some((body, applied))
    }

    /// What the maps hold, if recorded.
    #[must_use]
    pub fn applied(&self) -> Option<Applied> {
        serde_json::from_slice(&fs::read(self.dir.join(APPLIED)).ok()?).ok()
    }

    /// Records a feed as applied. Call only once the maps hold it.
    pub fn save_applied(&self, body: &[u8], applied: &Applied) -> Result<(), StateError> {
        self.write(FEED, body)?;
        self.write(APPLIED, &to_json(applied))
    }

    /// Records what the maps hold without a new `[feed]` body (another source changed).
    pub fn save_applied_record(&self, applied: &Applied) -> Result<(), StateError> {
        self.write(APPLIED, &to_json(applied))
    }

    /// The directory of the sources' last good files, created 0700.
    fn sources(&self) -> Result<Self, StateError> {
        let dir = self.dir.join(SOURCES);
        crate::secure::create_private(&dir, "state directory")?;
        Ok(Self { dir })
    }

    /// Keeps `body` as source `name`'s last good file (a name is `[a-z0-9._-]`).
    pub fn save_source(
        &self,
        name: &str,
        body: &[u8],
        meta: &crate::sources::fetch::Meta,
    ) -> Result<(), StateError> {
        let sources = self.sources()?;
        sources.write(&format!("{name}.body"), body)?;
        sources.write(&format!("{name}.json"), &to_json(meta))
    }

    /// Source `name`'s last good file and its record, if any (and if they agree).
    #[must_use]
    pub fn source(&self, name: &str) -> Option<(Vec<u8>, crate::sources::fetch::Meta)> {
        let dir = self.dir.join(SOURCES);
        crate::secure::check(&dir, "state directory").ok()?;
        let meta: crate::sources::fetch::Meta =
            serde_json::from_slice(&fs::read(dir.join(format!("{name}.json"))).ok()?).ok()?;
        let body = fs::read(dir.join(format!("{name}.body"))).ok()?;
        (crate::sources::fetch::sha256(&body) == meta.sha256).then_some((body, meta))
    }

    pub fn save_catalog(&self, catalog: &SourceCatalog) -> Result<(), StateError> {
        self.write(CATALOG, &serde_json::to_vec(catalog).unwrap_or_default())
    }

    pub fn save_learned(&self, learned: &LearnedFile) -> Result<(), StateError> {
        self.write(LEARNED, &serde_json::to_vec(learned).unwrap_or_default())
    }

    #[must_use]
    pub fn learned(&self) -> Option<LearnedFile> {
        serde_json::from_slice(&fs::read(self.dir.join(LEARNED)).ok()?).ok()
    }

    #[must_use]
    pub fn catalog(&self) -> Option<SourceCatalog> {
        serde_json::from_slice(&fs::read(self.dir.join(CATALOG)).ok()?).ok()
    }

    pub fn save_status(&self, status: &Status) -> Result<(), StateError> {
        self.write(STATUS, &to_json(status))
    }

    #[must_use]
    pub fn status(&self) -> Option<Status> {
        serde_json::from_slice(&fs::read(self.dir.join(STATUS)).ok()?).ok()
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

    #[test]
    fn applied_feed_round_trips_and_leaves_no_temporary_file() {
        let dir = temp_dir("feed");
        let state = State::open(&dir).unwrap();
        assert!(state.last_feed().is_none());
        let applied = Applied {
            version: "2026043000".into(),
            source: "test".into(),
            applied_at: 1,
            entries: None,
        };
        state.save_applied(b"[]", &applied).unwrap();
        assert_eq!(state.last_feed(), Some((b"[]".to_vec(), applied)));
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
        for name in [".feed.json.tmp", ".applied.json.tmp", ".status.json.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
        let applied = Applied {
            version: "2026043000".into(),
            source: "test".into(),
            applied_at: 1,
            entries: None,
        };
        state.save_applied(b"[]", &applied).unwrap();
        state.save_status(&Status::default()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert_eq!(state.last_feed(), Some((b"[]".to_vec(), applied)));
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
