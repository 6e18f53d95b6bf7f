//! JSON-lines export of a log, and verification of an exported file.
//!
//! Line 1 is a header; then one line per pinned key, per chain head, and per entry in storage
//! order. Binary fields are hex. Hashed text fields are JSON strings, or `{"hex": ".."}` when
//! the stored bytes are not UTF-8, so an export keeps tampered bytes as found. (The chain id
//! and integer columns are exported as read: a non-UTF-8 chain id or a non-integer sequence
//! is already reported as a change by the verifier that reads them.)

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::entry::StoredEntry;
use crate::error::AuditError;
use crate::verify::{HeadRow, KeyRow, Snapshot, VerifyReport, verify_snapshot};
use crate::{schema, store};

const FORMAT: &str = "capsid-audit-export";
const FORMAT_VERSION: u64 = 1;

fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "hex": hex::encode(bytes) }),
    }
}

/// Exports the log at `db` read-only — tampered or not, for forensics — to `out` (created,
/// never overwritten). Returns the number of entries written.
pub fn export_database(db: &Path, out: &Path) -> Result<u64, AuditError> {
    let existed = out.symlink_metadata().is_ok();
    let written = write_export(db, out);
    // A partial export is worse than none (it would verify as a shorter, valid log); a file
    // that was there before is never ours to remove (`create_new` refused it).
    if written.is_err() && !existed {
        let _ = std::fs::remove_file(out);
    }
    written
}

fn write_export(db: &Path, out: &Path) -> Result<u64, AuditError> {
    let conn = schema::open_ro(db)?;
    let snap = store::read_snapshot(&conn, db)?;
    let io = |source| AuditError::ExportIo {
        path: out.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        // An export is the whole log: readable by its owner only.
        .mode(0o600)
        .open(out)
        .map_err(io)?;
    let mut w = BufWriter::new(file);
    let mut line = |v: Value| writeln!(w, "{v}");
    line(json!({ "type": "header", "format": FORMAT, "version": FORMAT_VERSION })).map_err(io)?;
    for k in &snap.keys {
        line(json!({
            "type": "key",
            "key_id": hex::encode(&k.key_id),
            "public_key": hex::encode(&k.public_key),
            "introduced_by": k.introduced_by,
        }))
        .map_err(io)?;
    }
    for h in &snap.heads {
        line(json!({
            "type": "head",
            "chain": h.chain,
            "seq": h.seq,
            "hash": hex::encode(&h.hash),
            "key_id": hex::encode(&h.key_id),
            "signature": hex::encode(&h.signature),
        }))
        .map_err(io)?;
    }
    for e in &snap.entries {
        line(json!({
            "type": "entry",
            "chain": e.chain,
            "seq": e.seq,
            "time_ns": e.time_ns,
            "principal": text(&e.principal),
            "capsule": text(&e.capsule),
            "action": text(&e.action),
            "resource": text(&e.resource),
            "decision": text(&e.decision),
            "details": text(&e.details),
            "prev_hash": hex::encode(&e.prev_hash),
            "key_id": hex::encode(&e.key_id),
            "hash": hex::encode(&e.hash),
            "signature": hex::encode(&e.signature),
        }))
        .map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(snap.entries.len() as u64)
}

/// Verifies an export written by [`crate::AuditLog::export_jsonl`] exactly as a database is
/// verified. Malformed lines are an error naming the line; tampered content is reported.
pub fn verify_export(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    let path = path.as_ref();
    let io = |source| AuditError::ExportIo {
        path: path.to_owned(),
        source,
    };
    let reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut snap = Snapshot::default();
    let mut seen_header = false;
    for (n, line) in reader.lines().enumerate() {
        let line_no = n as u64 + 1;
        let bad = |reason: &str| AuditError::ExportFormat {
            path: path.to_owned(),
            line: line_no,
            reason: reason.to_owned(),
        };
        let line = line.map_err(io)?;
        let v: Value = serde_json::from_str(&line).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let f = Fields { v: &v, bad: &bad };
        match (f.str("type")?, seen_header) {
            ("header", false) => {
                if f.str("format")? != FORMAT
                    || v.get("version").and_then(Value::as_u64) != Some(FORMAT_VERSION)
                {
                    return Err(bad(
                        "not a capsid audit export of a version this build reads",
                    ));
                }
                seen_header = true;
            }
            (_, false) => return Err(bad("missing header line")),
            ("key", true) => snap.keys.push(KeyRow {
                key_id: f.hex("key_id")?,
                public_key: f.hex("public_key")?,
                introduced_by: v.get("introduced_by").and_then(Value::as_u64),
            }),
            ("head", true) => snap.heads.push(HeadRow {
                chain: f.str("chain")?.to_owned(),
                seq: f.u64("seq")?,
                hash: f.hex("hash")?,
                key_id: f.hex("key_id")?,
                signature: f.hex("signature")?,
            }),
            ("entry", true) => snap.entries.push(StoredEntry {
                position: i64::try_from(line_no).unwrap_or(i64::MAX),
                chain: f.str("chain")?.to_owned(),
                seq: f.u64("seq")?,
                time_ns: v
                    .get("time_ns")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| bad("time_ns missing"))?,
                principal: f.text("principal")?,
                capsule: f.text("capsule")?,
                action: f.text("action")?,
                resource: f.text("resource")?,
                decision: f.text("decision")?,
                details: f.text("details")?,
                prev_hash: f.hex("prev_hash")?,
                key_id: f.hex("key_id")?,
                hash: f.hex("hash")?,
                signature: f.hex("signature")?,
            }),
            _ => return Err(bad("unknown line type")),
        }
    }
    if !seen_header {
        return Err(AuditError::ExportFormat {
            path: path.to_owned(),
            line: 1,
            reason: "empty file".into(),
        });
    }
    Ok(verify_snapshot(&snap))
}

struct Fields<'a, F: Fn(&str) -> AuditError> {
    v: &'a Value,
    bad: &'a F,
}

impl<F: Fn(&str) -> AuditError> Fields<'_, F> {
    fn str(&self, key: &str) -> Result<&str, AuditError> {
        self.v
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| (self.bad)(&format!("{key} missing or not a string")))
    }
    fn u64(&self, key: &str) -> Result<u64, AuditError> {
        self.v
            .get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| (self.bad)(&format!("{key} missing or not an integer")))
    }
    fn hex(&self, key: &str) -> Result<Vec<u8>, AuditError> {
        hex::decode(self.str(key)?).map_err(|_| (self.bad)(&format!("{key} is not hex")))
    }
    fn text(&self, key: &str) -> Result<Vec<u8>, AuditError> {
        match self.v.get(key) {
            Some(Value::String(s)) => Ok(s.clone().into_bytes()),
            Some(Value::Object(o)) => o
                .get("hex")
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok())
                .ok_or_else(|| (self.bad)(&format!("{key} has a malformed hex form"))),
            _ => Err((self.bad)(&format!("{key} missing"))),
        }
    }
}
