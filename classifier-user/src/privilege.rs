//! Telling an operator that xdp-breakout needs root.
//!
//! The pin and state directories are root's and 0700 ([`crate::secure`]), bpffs pins are
//! 0600, and mounting bpffs needs CAP_SYS_ADMIN. A user who is not root meets EACCES or EPERM
//! at the first of them it touches (or finds a directory root owns), and is told so in these
//! words: "no maps" or "remove it" would send the operator after a healthy directory.

use std::{
    io,
    path::{Path, PathBuf},
};

/// What a user who is not root must do.
pub const NEEDS_ROOT: &str =
    "xdp-breakout needs root (CAP_BPF and CAP_NET_ADMIN); run it with sudo";

/// The kernel refused this process: the caller is not root, or (when it is) lacks those
/// capabilities or is confined by a security module.
#[derive(Debug, thiserror::Error)]
#[error("permission denied {doing} {path}: {hint}", hint = hint())]
pub struct Denied {
    /// `reading the pin directory`, `opening the pinned map`, ...
    pub doing: String,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The effective uid, which decides what the bpffs and state files let this process do.
#[must_use]
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Root is refused only in a container without the capabilities or under SELinux or
/// AppArmor: "run it with sudo" would not help there.
fn hint() -> &'static str {
    if euid() == 0 {
        "xdp-breakout runs as root here but lacks CAP_BPF and CAP_NET_ADMIN, or a security \
         module (SELinux, AppArmor) refuses it"
    } else {
        NEEDS_ROOT
    }
}

/// Whether the kernel refused this process (EACCES, EPERM), rather than found nothing.
#[must_use]
pub fn is_denied(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// Whether `BPF_OBJ_GET` on a pin was refused to a user who is not root. bpffs answers root
/// EACCES too, for a pin that is an object of another type (a directory, a map where a link
/// is wanted): for root that is a stale pin, no permission matter.
#[must_use]
pub fn pin_denied_to_user(error: &io::Error) -> bool {
    euid() != 0 && is_denied(error)
}

/// `source` as [`Denied`] when the kernel refused `doing` on `path`, else as `other` makes
/// it.
pub fn denied_or<E: From<Denied>>(
    source: io::Error,
    doing: impl Into<String>,
    path: &Path,
    other: impl FnOnce(io::Error) -> E,
) -> E {
    if is_denied(&source) {
        Denied {
            doing: doing.into(),
            path: path.to_owned(),
            source,
        }
        .into()
    } else {
        other(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Test {
        #[error(transparent)]
        Denied(#[from] Denied),
        #[error("other")]
        Other(#[source] io::Error),
    }

    #[test]
    fn only_eacces_and_eperm_say_root_is_needed() {
        let path = Path::new("/sys/fs/bpf/xdp-breakout");
        for errno in [libc::EACCES, libc::EPERM] {
            let error = denied_or(
                io::Error::from_raw_os_error(errno),
                "reading the pin directory",
                path,
                Test::Other,
            );
            let text = error.to_string();
            assert!(
                text.starts_with(
                    "permission denied reading the pin directory /sys/fs/bpf/xdp-breakout: "
                ),
                "{text}"
            );
            assert!(text.contains(hint()), "{text}");
            assert!(!text.contains("remove"), "{text}");
        }
        for errno in [libc::ENOENT, libc::EIO, libc::EROFS] {
            let error = denied_or(io::Error::from_raw_os_error(errno), "x", path, Test::Other);
            assert!(matches!(error, Test::Other(_)), "{errno}: {error}");
        }
    }
}
