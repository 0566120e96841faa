//! What a refresh can end in: applied, unchanged, held, or an error that says which source,
//! which file and why; and where the maps' content came from at start.

use std::time::Duration;

use crate::{
    client::FetchError,
    compile::CompileError,
    datapath::{ApplyReport, DatapathError},
    gate::GateError,
    sources::SourceError,
    state::StateError,
};

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The fetch failed; the error's whole chain is in the message, for `sources`.
    #[error("source {name}: {}", chain(error))]
    Fetch { name: String, error: FetchError },
    /// A file came but is refused: nothing of it was applied and no other source changed.
    #[error("source {name}: refused {what} from {from}: {reason}")]
    Refused {
        name: String,
        /// `feed VERSION` or `file VERSION`.
        what: String,
        from: String,
        reason: Box<Reason>,
    },
    #[error("updating the maps")]
    Maps(#[from] DatapathError),
    /// A write failed after the gate passed (the kernel's ENOSPC or ENOMEM, another writer):
    /// the maps were rolled back, or say so when they could not be.
    #[error("updating the maps failed ({}); {rolled_back}", chain(cause.as_ref()))]
    Write {
        rolled_back: String,
        cause: Box<DatapathError>,
    },
    #[error("recording what the maps hold")]
    State(#[from] StateError),
    #[error("no source is named {name:?} (configured: {known})")]
    NoSuchSource { name: String, known: String },
}

/// Why a file was refused.
#[derive(Debug)]
pub enum Reason {
    /// It does not parse, or a prefix or a port of it is refused.
    Parse(SourceError),
    /// The gate refused what it changes.
    Gate(GateError),
    /// The union with it does not compile.
    Compile(CompileError),
    NothingLeft,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Parse(error) => f.write_str(&chain(error)),
            Self::Gate(error) => write!(f, "{error}"),
            Self::Compile(error) => f.write_str(&chain(error)),
            Self::NothingLeft => f.write_str("no prefix is left after the filter"),
        }
    }
}

/// An error and its causes, `: `-separated.
pub(super) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

impl RefreshError {
    /// How long the server asked us to wait, for a 429.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Fetch { error, .. } => error.retry_after(),
            _ => None,
        }
    }

    /// Whether the gate refused it (a dry run's verdict).
    #[must_use]
    pub const fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

/// What a refresh of a source did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Nothing new: a 304, the same content, or the same version.
    Unchanged {
        version: Option<String>,
        why: &'static str,
    },
    /// The new file is kept; the maps change once the `m365` source has a file (the maps
    /// hold entries of unknown origin until then).
    Held { version: Option<String> },
    Applied {
        version: Option<String>,
        report: ApplyReport,
    },
}

/// Where the maps' content came from at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Every source's last good file, recompiled with the current configuration; `version`
    /// is the `m365` source's.
    LastFeed {
        version: String,
        report: ApplyReport,
    },
    /// Pinned entries of unknown origin (an `attach` before), kept.
    Pinned { prefixes: usize },
    /// The snapshot built into the binary, as the `m365` source's file.
    Embedded { report: ApplyReport },
}
