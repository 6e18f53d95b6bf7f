//! The SQLite schema and the checks made before a file is trusted as an audit log.

use std::path::Path;

use capsid_core::limits::AUDIT_BUSY_TIMEOUT;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::AuditError;

/// `PRAGMA application_id` of a capsid audit log ("CPAU").
const APPLICATION_ID: i64 = 0x4350_4155;
/// `PRAGMA user_version`: the schema version this build reads and writes.
pub(crate) const SCHEMA_VERSION: i64 = 1;

const CREATE: &str = "
CREATE TABLE trusted_keys (
    key_id        BLOB PRIMARY KEY,
    public_key    BLOB NOT NULL,
    introduced_by INTEGER            -- system-chain seq of the rotation entry; NULL = genesis
);
CREATE TABLE chains (
    chain     TEXT PRIMARY KEY,
    head_seq  INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    key_id    BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE entries (
    id        INTEGER PRIMARY KEY,  -- storage order
    chain     TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    time_ns   INTEGER NOT NULL,
    principal TEXT NOT NULL,
    capsule   TEXT NOT NULL,
    action    TEXT NOT NULL,
    resource  TEXT NOT NULL,
    decision  TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    key_id    BLOB NOT NULL,
    hash      BLOB NOT NULL,
    signature BLOB NOT NULL,
    UNIQUE (chain, seq)
);
";

pub(crate) fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |source| match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => AuditError::NotADatabase(path.to_owned()),
        _ => AuditError::Sqlite {
            path: path.to_owned(),
            source,
        },
    }
}

/// Opens `path` for writing. Returns the connection and whether the log is new (an empty
/// database: the caller creates the schema with [`create_schema`] in its first transaction,
/// so a crash mid-creation leaves an empty database, never a half-made log). A file that is not an empty database, a foreign database or
/// a different schema version is refused untouched.
pub(crate) fn open_rw(path: &Path) -> Result<(Connection, bool), AuditError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite_err(path))?;
    conn.busy_timeout(AUDIT_BUSY_TIMEOUT)
        .map_err(sqlite_err(path))?;
    let is_new = check(&conn, path)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite_err(path))?;
    // FULL: a commit is durable when it returns, which is what `append` promises.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite_err(path))?;
    Ok((conn, is_new))
}

/// Stamps the database as a capsid audit log and creates its tables. Both pragmas live in the
/// database header and, like the DDL, roll back with the surrounding transaction.
pub(crate) fn create_schema(tx: &rusqlite::Transaction<'_>, path: &Path) -> Result<(), AuditError> {
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; {CREATE}"
    ))
    .map_err(sqlite_err(path))
}

/// Opens the log at `path` read-only if there is one: `None` when the file is missing, empty
/// or an empty database (a log still to be created). Nothing is written, so a log about to
/// be refused is never touched (a read-write connection could checkpoint its WAL into it).
pub(crate) fn open_existing_ro(path: &Path) -> Result<Option<Connection>, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let size = |p: &Path| match std::fs::metadata(p) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io(e)),
    };
    if size(path)? == 0 {
        // Opening it read-write would delete a WAL beside it: entries no one has seen.
        if size(&sibling(path, "-wal"))? > 0 {
            return Err(io(std::io::Error::other(
                "there is a write-ahead log (-wal) but no database beside it; refusing to start a new log over it (restore the database, or move the -wal away)",
            )));
        }
        return Ok(None);
    }
    // A hot rollback journal is left only by a crash while a new log was being created; a
    // read-only connection cannot roll it back, so the read-write open does (and finds the
    // log new, or refuses it).
    if size(&sibling(path, "-journal"))? > 0 {
        return Ok(None);
    }
    let conn = read_only(path)?;
    if check(&conn, path)? {
        return Ok(None);
    }
    Ok(Some(conn))
}

/// `path` with `suffix` added to its file name (`audit.db` → `audit.db-wal`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn read_only(path: &Path) -> Result<Connection, AuditError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite_err(path))?;
    conn.busy_timeout(AUDIT_BUSY_TIMEOUT)
        .map_err(sqlite_err(path))?;
    Ok(conn)
}

/// Opens an existing log read-only (verification, export).
pub(crate) fn open_ro(path: &Path) -> Result<Connection, AuditError> {
    let conn = read_only(path)?;
    if check(&conn, path)? {
        return Err(AuditError::Foreign(path.to_owned()));
    }
    Ok(conn)
}

/// `Ok(true)` for an empty database, `Ok(false)` for a capsid log of this schema version.
fn check(conn: &Connection, path: &Path) -> Result<bool, AuditError> {
    let err = sqlite_err(path);
    let app_id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(&err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&err)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(&err)?;
    if app_id == 0 && version == 0 && objects == 0 {
        return Ok(true);
    }
    if app_id != APPLICATION_ID {
        return Err(AuditError::Foreign(path.to_owned()));
    }
    if version != SCHEMA_VERSION {
        return Err(AuditError::SchemaVersion {
            path: path.to_owned(),
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(false)
}
