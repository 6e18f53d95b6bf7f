//! Errors of the audit log.

use std::path::PathBuf;

use crate::verify::VerifyReport;

/// Everything that can go wrong opening, appending to or verifying an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite failed on this database.
    #[error("audit database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// Another writer (in this or another process) has the log open.
    #[error("audit database {0} is already open for writing by another capsid")]
    Locked(PathBuf),
    /// The file exists but is not a SQLite database.
    #[error("{0} is not a SQLite database; refusing to touch it")]
    NotADatabase(PathBuf),
    /// The file is a SQLite database belonging to something else.
    #[error("{0} is a SQLite database but not a capsid audit log; refusing to touch it")]
    Foreign(PathBuf),
    /// The audit log was written by a different schema version.
    #[error(
        "audit database {path} has schema version {found}; this capsid reads version {expected}"
    )]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
        /// The version this build understands.
        expected: i64,
    },
    /// The log failed verification at open. Nothing was changed; see the report.
    #[error("audit database {path} failed verification: {report}")]
    Tampered {
        /// The database file.
        path: PathBuf,
        /// What is wrong, per chain.
        report: Box<VerifyReport>,
    },
    /// The key this runtime signs with is not the log's current key.
    #[error(
        "audit database {path} is not signed by runtime key {key_id}: it belongs to another key, or that key was rotated out"
    )]
    UntrustedKey {
        /// The database file.
        path: PathBuf,
        /// The runtime key's id.
        key_id: String,
    },
    /// The batch holding this append failed to commit; nothing of it was kept.
    #[error("audit database {path}: commit failed, entry not recorded: {reason}")]
    CommitFailed {
        /// The database file.
        path: PathBuf,
        /// Why the commit failed.
        reason: String,
    },
    /// A file or thread operation failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The database or file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A record was refused before it reached the log.
    #[error("invalid audit record: {0}")]
    InvalidRecord(String),
    /// The log was opened read-only (it failed verification and the operator chose to
    /// inspect it rather than refuse to start): nothing can be recorded.
    #[error(
        "audit database {0} is open read-only because it failed verification; nothing can be recorded, so nothing that must be audited can run (inspect it with `capsid audit verify`/`export`, then quarantine or restore it)"
    )]
    ReadOnly(PathBuf),
    /// The writer thread has stopped (after `close`, or after a fatal error it already
    /// reported); nothing more can be appended.
    #[error("the audit writer for {0} has stopped")]
    WriterStopped(PathBuf),
    /// Reading or writing an export file failed.
    #[error("audit export {path}: {source}")]
    ExportIo {
        /// The export file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An export file is not well formed.
    #[error("audit export {path}, line {line}: {reason}")]
    ExportFormat {
        /// The export file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
}
