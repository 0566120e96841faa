//! Directories and files that nobody but their owner (root) may change.
//!
//! The pin directory holds the links that keep the data plane attached, and the state
//! directory holds the feed the agent reinstalls at start. Another user who can write into
//! either can detach the data plane, hold its lock, or plant a feed or a symlink. On a
//! machine where bpffs is mounted world-writable (mode 1777, as systemd mounts it) any user
//! can create `/sys/fs/bpf/xdp-breakout` before root does. So both are created 0700 and
//! refused when they belong to another user or others may write to them.
//!
//! Root's directory is refused to a user who is not root too, but as what it is: a healthy
//! directory that user may not use ([`DirError::Root`], "needs root"), never one to remove.
//!
//! The configuration file and a `path` source's file say what goes direct, past the security
//! gateway, and the agent reads them again on every reload or refresh: another user who can
//! change one sends any range direct. So they are read only when root (or the user running
//! the agent) owns them and nobody else may write to them.

use std::{
    fs, io,
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
};

use crate::privilege::{Denied, NEEDS_ROOT, denied_or, euid};

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("creating {what} {path}")]
    Create {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {what} {path}")]
    Stat {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("{what} {path} belongs to root: {NEEDS_ROOT}")]
    Root { what: &'static str, path: PathBuf },
    /// Owned by neither root nor this process's user.
    #[error(
        "{what} {path} is owned by {owner}, not by {me}: another user could change what is in \
         it; remove it (`rm -r {path}`) or choose another directory"
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        owner: String,
        me: String,
    },
    #[error(
        "{what} {path} has mode {mode:04o}: other users may write to it; `chmod go-w {path}` \
         (xdp-breakout creates it 0700)"
    )]
    Writable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "{what} {path} is in {parent}, which other users may write to (mode {mode:04o}, no \
         sticky bit): they could replace it; choose a directory in one only root may change"
    )]
    Parent {
        what: &'static str,
        path: PathBuf,
        parent: PathBuf,
        mode: u32,
    },
}

/// Why a file that says what goes direct is not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} is not a regular file")]
    NotRegular { what: &'static str, path: PathBuf },
    #[error(
        "{what} {path} is owned by {owner} with mode {mode:04o}: another user could change \
         what goes direct; `chown root:root {path} && chmod go-w {path}`"
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        owner: String,
        mode: u32,
    },
    #[error(
        "{what} {path} is owned by {owner} with mode {mode:04o}: other users may write to it \
         and change what goes direct; `chmod go-w {path}`"
    )]
    Writable {
        what: &'static str,
        path: PathBuf,
        owner: String,
        mode: u32,
    },
}

/// Opens `path` to read it, and refuses it unless it is a regular file that root or this
/// process's user owns and that neither group nor others may write.
///
/// What is checked is the opened file (fstat), so the file read is the file checked, whatever
/// is renamed over the path meanwhile. A symlink is followed and its target must pass: a link
/// gains nothing its target's owner did not grant, and configuration managers keep `/etc` as
/// links (NixOS's `/etc/static`, the alternatives system), which `O_NOFOLLOW` would refuse.
pub fn open_trusted(
    path: &Path,
    what: &'static str,
) -> Result<(fs::File, fs::Metadata), FileError> {
    let io = |source| FileError::Open {
        path: path.to_owned(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        // Until the type check below refuses them: a FIFO would block the open until a
        // writer came, and a terminal could become the daemon's controlling terminal.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            what,
            path: path.to_owned(),
        });
    }
    judge_file(path, what, meta.uid(), meta.mode(), euid())?;
    Ok((file, meta))
}

/// The rule of [`open_trusted`] for a file of `owner` and `mode`, read by `me`. Root's files
/// pass for anyone; `me`'s own pass so that a developer can run the agent on a file of theirs.
fn judge_file(
    path: &Path,
    what: &'static str,
    owner: u32,
    mode: u32,
    me: u32,
) -> Result<(), FileError> {
    let mode = mode & 0o7777;
    if owner != 0 && owner != me {
        return Err(FileError::Owner {
            what,
            path: path.to_owned(),
            owner: user_name(owner),
            mode,
        });
    }
    if mode & 0o022 != 0 {
        return Err(FileError::Writable {
            what,
            path: path.to_owned(),
            owner: user_name(owner),
            mode,
        });
    }
    Ok(())
}

/// `uid 65534 (nobody)`.
#[must_use]
pub fn user_name(uid: u32) -> String {
    let mut buffer = vec![0u8; 4096];
    // SAFETY: a zeroed passwd is a valid out parameter; the buffer outlives the call and its
    // length is passed; `result` is null or points at `entry`.
    let name = unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut result = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            uid,
            &raw mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &raw mut result,
        );
        (rc == 0 && !result.is_null()).then(|| {
            std::ffi::CStr::from_ptr(entry.pw_name)
                .to_string_lossy()
                .into_owned()
        })
    };
    match name {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// Creates `path` (and missing parents) with mode 0700, then [`check`]s it.
pub fn create_private(path: &Path, what: &'static str) -> Result<(), DirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| {
            denied_or(source, format!("creating the {what}"), path, |source| {
                DirError::Create {
                    what,
                    path: path.to_owned(),
                    source,
                }
            })
        })?;
    check(path, what)
}

/// Refuses `path` unless this process's user owns it and only it may write to it, and its
/// parent is not open to others (unless sticky, as `/tmp` and bpffs are).
pub fn check(path: &Path, what: &'static str) -> Result<(), DirError> {
    let stat = |path: &Path| {
        fs::metadata(path).map_err(|source| {
            denied_or(source, format!("reading the {what}"), path, |source| {
                DirError::Stat {
                    what,
                    path: path.to_owned(),
                    source,
                }
            })
        })
    };
    let meta = stat(path)?;
    check_owner(path, what, meta.uid(), euid())?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirError::Writable {
            what,
            path: path.to_owned(),
            mode,
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let parent_meta = stat(parent)?;
        let parent_mode = parent_meta.permissions().mode() & 0o7777;
        let open = parent_mode & 0o022 != 0;
        let sticky = parent_mode & 0o1000 != 0;
        if open && !sticky {
            return Err(DirError::Parent {
                what,
                path: path.to_owned(),
                parent: parent.to_owned(),
                mode: parent_mode,
            });
        }
    }
    Ok(())
}

/// Refuses a directory `owner` has unless it is `me`. Root's is a directory only root may
/// use, not a foreign one: the advice to remove it is for a directory of neither.
fn check_owner(path: &Path, what: &'static str, owner: u32, me: u32) -> Result<(), DirError> {
    if owner == me {
        return Ok(());
    }
    if owner == 0 {
        return Err(DirError::Root {
            what,
            path: path.to_owned(),
        });
    }
    Err(DirError::Owner {
        what,
        path: path.to_owned(),
        owner: user_name(owner),
        me: user_name(me),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(what: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xdp-breakout-secure-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_directories_are_private() {
        let dir = temp("create");
        create_private(&dir.join("a/b"), "state directory").unwrap();
        let mode = fs::metadata(dir.join("a/b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn directories_others_may_write_are_refused() {
        let dir = temp("writable");
        create_private(&dir, "state directory").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let error = check(&dir, "state directory").unwrap_err().to_string();
        assert!(
            error.contains("has mode 0777: other users may write to it"),
            "{error}"
        );
        // Inside a directory open to all without the sticky bit, even a private one is not safe.
        let inner = dir.join("inner");
        fs::DirBuilder::new().mode(0o700).create(&inner).unwrap();
        let error = check(&inner, "state directory").unwrap_err().to_string();
        assert!(error.contains("which other users may write to"), "{error}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        check(&inner, "state directory").unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    /// Each row: owner, mode, who reads, and what the refusal says (empty: read).
    #[test]
    fn files_pass_when_only_root_or_their_reader_may_change_them() {
        let rows: [(&str, u32, u32, u32, &[&str]); 8] = [
            ("root's 0644, read by root", 0, 0o100_644, 0, &[]),
            ("root's 0600, read by a user", 0, 0o100_600, 1000, &[]),
            (
                "a user's own 0644, read by them",
                1000,
                0o100_644,
                1000,
                &[],
            ),
            (
                "another user's 0644, read by root",
                65534,
                0o100_644,
                0,
                &[
                    "configuration file /etc/x.toml is owned by uid 65534",
                    "with mode 0644: another user could change what goes direct",
                    "`chown root:root /etc/x.toml && chmod go-w /etc/x.toml`",
                ],
            ),
            (
                "another user's 0644, read by a third",
                1001,
                0o100_644,
                1000,
                &["is owned by uid 1001", "`chown root:root /etc/x.toml"],
            ),
            (
                "root's 0666, read by root",
                0,
                0o100_666,
                0,
                &[
                    "configuration file /etc/x.toml is owned by uid 0 (root) with mode 0666: \
                     other users may write to it and change what goes direct",
                    "; `chmod go-w /etc/x.toml`",
                ],
            ),
            (
                "root's 0620, group-writable",
                0,
                0o100_620,
                0,
                &[
                    "with mode 0620: other users may write",
                    "`chmod go-w /etc/x.toml`",
                ],
            ),
            (
                "another user's 0666: the owner comes first, with both fixes",
                65534,
                0o100_666,
                0,
                &["with mode 0666: another user could change", "&& chmod go-w"],
            ),
        ];
        for (case, owner, mode, me, parts) in rows {
            let judged = judge_file(
                Path::new("/etc/x.toml"),
                "configuration file",
                owner,
                mode,
                me,
            );
            match (judged, parts) {
                (Ok(()), []) => {}
                (Ok(()), _) => panic!("{case}: read, but should be refused"),
                (Err(error), []) => panic!("{case}: refused: {error}"),
                (Err(error), parts) => {
                    let error = error.to_string();
                    for part in parts {
                        assert!(error.contains(part), "{case}: {error:?} lacks {part:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn files_are_checked_as_opened() {
        let dir = temp("files");
        create_private(&dir, "test directory").unwrap();
        let file = dir.join("config.toml");
        fs::write(&file, "x = 1\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        open_trusted(&file, "configuration file").unwrap();
        // A symlink is judged by its target.
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        open_trusted(&link, "configuration file").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        let error = open_trusted(&link, "configuration file")
            .unwrap_err()
            .to_string();
        assert!(error.contains("link.toml is owned by"), "{error}");
        assert!(error.contains("with mode 0666"), "{error}");
        // Neither a directory nor a FIFO is read, and the FIFO does not block the open.
        let error = open_trusted(&dir, "configuration file")
            .unwrap_err()
            .to_string();
        assert!(error.ends_with("is not a regular file"), "{error}");
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let error = open_trusted(&fifo, "configuration file")
            .unwrap_err()
            .to_string();
        assert!(error.ends_with("is not a regular file"), "{error}");
        let missing = open_trusted(&dir.join("missing"), "configuration file").unwrap_err();
        let not_found = |source: &io::Error| source.kind() == io::ErrorKind::NotFound;
        assert!(
            matches!(&missing, FileError::Open { source, .. } if not_found(source)),
            "{missing:?}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn directories_of_another_user_are_refused_naming_the_owner() {
        if euid() != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = temp("owner");
        create_private(&dir, "pin directory").unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let error = check(&dir, "pin directory").unwrap_err().to_string();
        assert!(error.contains("is owned by uid 65534"), "{error}");
        assert!(error.contains("not by uid 0 (root)"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn roots_directory_tells_another_user_root_is_needed_never_to_remove_it() {
        let path = Path::new("/sys/fs/bpf/xdp-breakout");
        check_owner(path, "pin directory", 0, 0).unwrap();
        check_owner(path, "pin directory", 65534, 65534).unwrap();
        for me in [65534, 1001] {
            let error = check_owner(path, "pin directory", 0, me)
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                "pin directory /sys/fs/bpf/xdp-breakout belongs to root: xdp-breakout needs \
                 root (CAP_BPF and CAP_NET_ADMIN); run it with sudo"
            );
        }
        // A directory of neither root nor the caller is foreign: named, and to be removed.
        for (owner, me) in [(65534, 0), (65534, 1001)] {
            let error = check_owner(path, "pin directory", owner, me)
                .unwrap_err()
                .to_string();
            assert!(error.contains("is owned by uid 65534"), "{error}");
            assert!(error.contains("remove it"), "{error}");
        }
    }

    #[test]
    fn a_directory_the_kernel_hides_says_root_is_needed() {
        if euid() == 0 {
            eprintln!("skipped: root may enter any directory");
            return;
        }
        let dir = temp("hidden");
        create_private(&dir.join("pins"), "pin directory").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o000)).unwrap();
        let checked = check(&dir.join("pins"), "pin directory");
        let created = create_private(&dir.join("pins"), "pin directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        for error in [checked.unwrap_err(), created.unwrap_err()] {
            assert!(matches!(error, DirError::Denied(_)), "{error:?}");
            let error = error.to_string();
            assert!(error.starts_with("permission denied"), "{error}");
            assert!(error.contains(NEEDS_ROOT), "{error}");
        }
    }
}
