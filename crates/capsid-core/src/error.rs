//! Errors shared across crates: malformed ids and problems with the home directory.

use std::path::PathBuf;

/// A textual id that failed validation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct IdError {
    /// Which kind of id was being parsed ("capsule name", "session id", ...).
    pub kind: &'static str,
    /// The rejected input, truncated to a printable length.
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

impl IdError {
    pub(crate) fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        const SHOWN: usize = 80;
        let value = if value.len() > SHOWN {
            let mut end = SHOWN;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &value[..end])
        } else {
            value.to_owned()
        };
        Self {
            kind,
            value,
            reason,
        }
    }
}

/// A problem resolving or preparing `$CAPSID_HOME`.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// Neither `$CAPSID_HOME` nor `$HOME` is set, so there is nowhere to put state.
    #[error("cannot locate the capsid home: set CAPSID_HOME or HOME")]
    NoHome,
    /// `$CAPSID_HOME` is set but is not an absolute path.
    #[error("CAPSID_HOME must be an absolute path, got {0}")]
    NotAbsolute(PathBuf),
    /// A directory of the layout could not be created or inspected.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The directory at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A path of the layout exists but is not a directory.
    #[error("{0} exists but is not a directory")]
    NotADirectory(PathBuf),
    /// A secret-holding directory is readable or writable by group or others.
    #[error("{path} has mode {mode:04o} but holds secrets; run `chmod 700 {path}`")]
    InsecureMode {
        /// The directory at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}
