//! Errors of key handling and signature checks.

use std::path::PathBuf;

/// A problem loading, creating or parsing a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("cannot access key file {path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file does not hold exactly one 32-byte ed25519 secret.
    #[error("key file {path} holds {found} bytes, expected 32: it is not a capsid key")]
    WrongLength {
        /// The file at fault.
        path: PathBuf,
        /// How many bytes it holds.
        found: u64,
    },
    /// The key file is readable or writable by group or others.
    #[error("key file {path} has mode {mode:04o}; it must be 0600 (run `chmod 600 {path}`)")]
    InsecureMode {
        /// The file at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key path exists but is not a regular file.
    #[error("key path {0} is not a regular file")]
    NotAFile(PathBuf),
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(getrandom::Error),
    /// Bytes that should be a public key are not a valid, strong ed25519 point.
    #[error("invalid ed25519 public key: {0}")]
    InvalidPublicKey(&'static str),
}

/// A signature did not verify.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not match the message under this key.
    #[error("signature does not verify")]
    Invalid,
    /// The inputs of a batch verification have different lengths.
    #[error("batch verification needs one key and one signature per message")]
    BatchShape,
}
