//! Reading a log's rows exactly as stored, whatever their types: a tampered column yields
//! bytes to hash, never a read error that would hide the tampering.

use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::entry::StoredEntry;
use crate::error::AuditError;
use crate::schema::sqlite_err;
use crate::verify::{HeadRow, KeyRow, Snapshot};

fn bytes(v: ValueRef<'_>) -> Vec<u8> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
        ValueRef::Integer(i) => i.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
        ValueRef::Null => Vec::new(),
    }
}

fn int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    }
}

/// A sequence number as stored; a non-integer or negative one reads as 0, which no genuine
/// entry has, so it is reported rather than silently dropped.
fn seq(v: ValueRef<'_>) -> u64 {
    int(v).and_then(|i| u64::try_from(i).ok()).unwrap_or(0)
}

/// The columns [`read_entries`] selects, in order.
const ENTRY_COLUMNS: &str = "id, chain, seq, time_ns, principal, capsule, action, resource, \
    decision, details, prev_hash, key_id, hash, signature";

/// The entries `tail` selects (`WHERE ... ORDER BY ...`, the rest of the query), as stored.
pub(crate) fn read_entries<P: rusqlite::Params>(
    conn: &Connection,
    path: &Path,
    tail: &str,
    params: P,
) -> Result<Vec<StoredEntry>, AuditError> {
    let err = sqlite_err(path);
    let mut stmt = conn
        .prepare(&format!("SELECT {ENTRY_COLUMNS} FROM entries {tail}"))
        .map_err(&err)?;
    let mut rows = stmt.query(params).map_err(&err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(&err)? {
        let col = |i| r.get_ref(i).map_err(&err);
        out.push(StoredEntry {
            position: int(col(0)?).unwrap_or(0),
            chain: String::from_utf8_lossy(&bytes(col(1)?)).into_owned(),
            seq: seq(col(2)?),
            time_ns: int(col(3)?).unwrap_or(i64::MIN),
            principal: bytes(col(4)?),
            capsule: bytes(col(5)?),
            action: bytes(col(6)?),
            resource: bytes(col(7)?),
            decision: bytes(col(8)?),
            details: bytes(col(9)?),
            prev_hash: bytes(col(10)?),
            key_id: bytes(col(11)?),
            hash: bytes(col(12)?),
            signature: bytes(col(13)?),
        });
    }
    Ok(out)
}

/// The pinned keys, as stored.
pub(crate) fn read_keys(conn: &Connection, path: &Path) -> Result<Vec<KeyRow>, AuditError> {
    let err = sqlite_err(path);
    let mut stmt = conn
        .prepare("SELECT key_id, public_key, introduced_by FROM trusted_keys ORDER BY rowid")
        .map_err(&err)?;
    let mut rows = stmt.query([]).map_err(&err)?;
    let mut keys = Vec::new();
    while let Some(r) = rows.next().map_err(&err)? {
        keys.push(KeyRow {
            key_id: bytes(r.get_ref(0).map_err(&err)?),
            public_key: bytes(r.get_ref(1).map_err(&err)?),
            introduced_by: int(r.get_ref(2).map_err(&err)?).and_then(|i| u64::try_from(i).ok()),
        });
    }
    Ok(keys)
}

/// The chain heads, as stored.
pub(crate) fn read_heads(conn: &Connection, path: &Path) -> Result<Vec<HeadRow>, AuditError> {
    let err = sqlite_err(path);
    let mut stmt = conn
        .prepare("SELECT chain, head_seq, head_hash, key_id, signature FROM chains")
        .map_err(&err)?;
    let mut rows = stmt.query([]).map_err(&err)?;
    let mut heads = Vec::new();
    while let Some(r) = rows.next().map_err(&err)? {
        heads.push(HeadRow {
            chain: String::from_utf8_lossy(&bytes(r.get_ref(0).map_err(&err)?)).into_owned(),
            seq: seq(r.get_ref(1).map_err(&err)?),
            hash: bytes(r.get_ref(2).map_err(&err)?),
            key_id: bytes(r.get_ref(3).map_err(&err)?),
            signature: bytes(r.get_ref(4).map_err(&err)?),
        });
    }
    Ok(heads)
}

/// Reads keys, heads and entries in one read transaction, so they are mutually consistent.
pub(crate) fn read_snapshot(conn: &Connection, path: &Path) -> Result<Snapshot, AuditError> {
    let err = sqlite_err(path);
    let tx = conn.unchecked_transaction().map_err(&err)?;
    let mut snap = Snapshot {
        keys: read_keys(&tx, path)?,
        heads: read_heads(&tx, path)?,
        entries: Vec::new(),
    };
    snap.entries = read_entries(&tx, path, "ORDER BY id", [])?;
    Ok(snap)
}
