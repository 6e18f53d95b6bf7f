//! The committer: inserts prepared batches and commits them durably, one transaction each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc as sync_mpsc};

use capsid_core::limits::MAX_AUDIT_PIPELINE;
use capsid_crypto::Digest;
use rusqlite::{Connection, Transaction, params};

use super::stage::Prepared;
use super::{Head, Resync};
use crate::error::AuditError;
use crate::schema::{create_schema, sqlite_err};

const INSERT_ENTRY: &str = "INSERT INTO entries (chain, seq, time_ns, principal, capsule, action, resource,
    decision, details, prev_hash, key_id, hash, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const UPSERT_HEAD: &str =
    "INSERT INTO chains (chain, head_seq, head_hash, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (chain) DO UPDATE SET head_seq = excluded.head_seq, head_hash = excluded.head_hash,
    key_id = excluded.key_id, signature = excluded.signature";
const INSERT_KEY: &str =
    "INSERT INTO trusted_keys (key_id, public_key, introduced_by) VALUES (?1, ?2, ?3)";

fn seq_param(seq: u64) -> i64 {
    // Sequence numbers grow by one per entry; 2^63 appends are out of reach.
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Writes a new log's schema, genesis key and first entry in one transaction.
pub(super) fn commit_creation(
    conn: &mut Connection,
    path: &Path,
    key: &capsid_crypto::KeyPair,
    prepared: &Prepared,
) -> Result<(), AuditError> {
    let err = sqlite_err(path);
    let tx = conn.transaction().map_err(&err)?;
    create_schema(&tx, path)?;
    tx.execute(
        INSERT_KEY,
        params![
            key.key_id().as_bytes(),
            key.public_key().to_bytes(),
            None::<i64>
        ],
    )
    .map_err(&err)?;
    write(&tx, path, prepared)?;
    tx.commit().map_err(&err)
}

/// Inserts everything a batch holds into `tx`.
fn write(tx: &Transaction<'_>, path: &Path, p: &Prepared) -> Result<(), AuditError> {
    let err = sqlite_err(path);
    let mut insert = tx.prepare_cached(INSERT_ENTRY).map_err(&err)?;
    for row in &p.rows {
        let r = &row.record;
        insert
            .execute(params![
                row.chain,
                seq_param(row.seq),
                row.time_ns,
                row.principal,
                r.capsule.as_ref().map_or("", |c| c.as_str()),
                r.action,
                r.resource,
                r.decision.as_str(),
                r.details,
                row.prev.as_bytes(),
                row.key_id.as_bytes(),
                row.hash.as_bytes(),
                row.signature.as_bytes(),
            ])
            .map_err(&err)?;
    }
    if let Some(k) = &p.new_key {
        tx.execute(
            INSERT_KEY,
            params![
                k.key_id.as_bytes(),
                k.public_key,
                seq_param(k.introduced_by)
            ],
        )
        .map_err(&err)?;
    }
    let mut upsert = tx.prepare_cached(UPSERT_HEAD).map_err(&err)?;
    for h in &p.heads {
        upsert
            .execute(params![
                h.chain,
                seq_param(h.head.seq),
                h.head.hash.as_bytes(),
                h.key_id.as_bytes(),
                h.signature.as_bytes()
            ])
            .map_err(&err)?;
    }
    Ok(())
}

pub(super) struct Committer {
    conn: Connection,
    path: PathBuf,
    resync: Arc<Mutex<Resync>>,
    generation: u64,
}

impl Committer {
    pub fn new(conn: Connection, path: PathBuf, resync: Arc<Mutex<Resync>>) -> Self {
        Self {
            conn,
            path,
            resync,
            generation: 0,
        }
    }

    /// Commits batches in order until the stager hangs up, or until the committed heads can
    /// no longer be read back after a failure (then every later batch fails as stopped).
    /// Every batch that arrived while the previous commit ran goes into the next transaction:
    /// one `fsync` serves them all.
    pub fn run(mut self, batches: &sync_mpsc::Receiver<Prepared>) {
        while let Ok(first) = batches.recv() {
            let mut group = vec![first];
            while group.len() < MAX_AUDIT_PIPELINE {
                match batches.try_recv() {
                    Ok(p) => group.push(p),
                    Err(_) => break,
                }
            }
            let (fresh, stale): (Vec<_>, Vec<_>) = group
                .into_iter()
                .partition(|p| p.generation == self.generation);
            if !stale.is_empty() {
                // Their appends may have nobody waiting to be told (queued ones).
                tracing::error!(
                    path = %self.path.display(),
                    batches = stale.len(),
                    "audit batches dropped: an earlier batch they build on failed to commit"
                );
            }
            for prepared in stale {
                let e = AuditError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other("an earlier batch it builds on failed to commit"),
                };
                prepared.fail(&self.path, &e);
            }
            if fresh.is_empty() {
                continue;
            }
            match self.commit(&fresh) {
                Ok(()) => {
                    for prepared in fresh {
                        for (reply, entry) in prepared.replies {
                            let _ = reply.send(Ok(entry));
                        }
                        if let Some(done) = prepared.done {
                            let _ = done.send(true);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "audit batch failed to commit");
                    // Recovered before anyone is told: an append made once its caller heard
                    // of the failure builds on what was committed, and does not fail too.
                    let recovered = self.publish_committed_heads();
                    for prepared in fresh {
                        prepared.fail(&self.path, &e);
                    }
                    if !recovered {
                        return;
                    }
                }
            }
        }
    }

    fn commit(&mut self, group: &[Prepared]) -> Result<(), AuditError> {
        let err = sqlite_err(&self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        for prepared in group {
            write(&tx, &self.path, prepared)?;
        }
        tx.commit().map_err(&err)
    }

    /// After a failure: reads the committed heads and hands them to the stager under a new
    /// generation. Returns false if they cannot be read.
    fn publish_committed_heads(&mut self) -> bool {
        let heads = match read_heads(&self.conn) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "audit writer stopping: cannot read chain heads");
                return false;
            }
        };
        self.generation += 1;
        match self.resync.lock() {
            Ok(mut r) => {
                r.generation = self.generation;
                r.heads = Some(heads);
                true
            }
            Err(_) => false,
        }
    }
}

fn read_heads(conn: &Connection) -> rusqlite::Result<HashMap<String, Head>> {
    let mut stmt = conn.prepare("SELECT chain, head_seq, head_hash FROM chains")?;
    let rows = stmt.query_map([], |r| {
        let seq: i64 = r.get(1)?;
        let hash: Vec<u8> = r.get(2)?;
        Ok((r.get::<_, String>(0)?, seq, hash))
    })?;
    let mut heads = HashMap::new();
    for row in rows {
        let (chain, seq, hash) = row?;
        if let (Ok(seq), Some(hash)) = (u64::try_from(seq), Digest::from_slice(&hash)) {
            heads.insert(chain, Head { seq, hash });
        }
    }
    Ok(heads)
}
