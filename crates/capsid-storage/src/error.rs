//! Errors of the storage layer.

use std::path::PathBuf;

/// Which quota a write would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Total bytes of keys and values.
    Bytes,
    /// Number of keys.
    Keys,
}

impl std::fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bytes => "bytes",
            Self::Keys => "keys",
        })
    }
}

/// Everything a key-value call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The key is empty or longer than the limit.
    #[error("key of {len} bytes is outside the allowed 1..={max}")]
    BadKey {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is larger than the limit.
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list limit or batch size outside what is allowed.
    #[error("{what} of {got} is outside the allowed 1..={max}")]
    OutOfRange {
        /// Which argument.
        what: &'static str,
        /// What was asked.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A namespace name that is empty or too long.
    #[error("namespace name of {len} bytes is outside the allowed 1..={max}")]
    BadNamespace {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The write would take the namespace past its quota; nothing was written.
    #[error("namespace {namespace:?} would use {would_use} {kind}, over its quota of {limit}")]
    QuotaExceeded {
        /// The namespace.
        namespace: String,
        /// Which quota.
        kind: QuotaKind,
        /// The quota.
        limit: u64,
        /// What the write would have brought it to.
        would_use: u64,
    },
    /// A link names a user that does not exist.
    #[error("no user with id {0}")]
    UnknownUser(String),
    /// The store was closed.
    #[error("the key-value store is closed")]
    Closed,
    /// The backend failed.
    #[error("key-value store at {path}: {message}")]
    Backend {
        /// The store's directory (empty for the memory backend).
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Stored data could not be decoded (identity records).
    #[error("corrupt record under key {key:?}: {reason}")]
    Corrupt {
        /// The key, lossily printed.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}
