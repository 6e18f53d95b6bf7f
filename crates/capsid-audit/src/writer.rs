//! The single writer: owns the read-write connection and the signing key, assigns sequence
//! numbers, and group-commits every append queued while the previous commit ran.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use capsid_core::Principal;
use capsid_core::limits::MAX_AUDIT_BATCH;
use capsid_crypto::{Digest, KeyId, KeyPair, Signature};
use rusqlite::{Connection, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use crate::entry::{
    ChainId, Decision, EntryFields, EntryRef, Record, entry_hash, genesis_hash, head_message,
};
use crate::error::AuditError;
use crate::schema::{create_schema, sqlite_err};
use crate::verify::{
    ACTION_CHAIN_OPEN, ACTION_KEY_ROTATE, ACTION_LOG_CREATE, KEY_RESOURCE_PREFIX, SYSTEM_CHAIN,
};

/// A request to the writer thread.
pub(crate) enum Command {
    Append {
        chain: ChainId,
        record: Record,
        reply: oneshot::Sender<Result<EntryRef, AuditError>>,
    },
    Rotate {
        key: KeyPair,
        reply: oneshot::Sender<Result<EntryRef, AuditError>>,
    },
}

/// The last entry of a chain.
#[derive(Clone, Copy)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: Digest,
}

pub(crate) struct Writer {
    conn: Connection,
    path: PathBuf,
    key: KeyPair,
    heads: HashMap<String, Head>,
}

const INSERT_ENTRY: &str = "INSERT INTO entries (chain, seq, time_ns, principal, capsule, action, resource,
    decision, details, prev_hash, key_id, hash, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const UPSERT_HEAD: &str =
    "INSERT INTO chains (chain, head_seq, head_hash, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (chain) DO UPDATE SET head_seq = excluded.head_seq, head_hash = excluded.head_hash,
    key_id = excluded.key_id, signature = excluded.signature";

fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

fn seq_param(seq: u64) -> i64 {
    // Sequence numbers grow by one per entry; 2^63 appends are out of reach.
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl Writer {
    /// Initialises a new log in one transaction: creates the schema, pins `key` as the
    /// genesis key and writes the system chain's first entry, signed by it.
    pub(crate) fn create(conn: Connection, path: &Path, key: KeyPair) -> Result<Self, AuditError> {
        let mut writer = Self {
            conn,
            path: path.to_owned(),
            key,
            heads: HashMap::new(),
        };
        let record = Record::new(
            Principal::System,
            ACTION_LOG_CREATE,
            &format!("{KEY_RESOURCE_PREFIX}{}", writer.key.key_id()),
            Decision::Info,
        )?;
        let key_id = writer.key.key_id();
        let public_key = writer.key.public_key().to_bytes();
        writer.transact(None, |ctx, tx| {
            create_schema(tx, ctx.path)?;
            tx.execute(
                "INSERT INTO trusted_keys (key_id, public_key, introduced_by) VALUES (?1, ?2, NULL)",
                params![key_id.as_bytes(), public_key],
            )
            .map_err(ctx.err())?;
            ctx.append(SYSTEM_CHAIN, record);
            Ok(())
        })?;
        Ok(writer)
    }

    /// Resumes an existing, verified log.
    pub(crate) fn resume(
        conn: Connection,
        path: &Path,
        key: KeyPair,
        heads: HashMap<String, Head>,
    ) -> Self {
        Self {
            conn,
            path: path.to_owned(),
            key,
            heads,
        }
    }

    /// Serves commands until every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_AUDIT_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_AUDIT_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
    }

    /// Commits consecutive appends together; a rotation gets a transaction of its own so the
    /// signing key changes only once it is durable.
    fn process(&mut self, batch: &mut Vec<Command>) {
        let mut appends = Vec::new();
        let mut replies = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Append {
                    chain,
                    record,
                    reply,
                } => {
                    appends.push((chain, record));
                    replies.push(reply);
                }
                Command::Rotate { key, reply } => {
                    self.flush(&mut appends, &mut replies);
                    let _ = reply.send(self.rotate(key));
                }
            }
        }
        self.flush(&mut appends, &mut replies);
    }

    fn flush(
        &mut self,
        appends: &mut Vec<(ChainId, Record)>,
        replies: &mut Vec<oneshot::Sender<Result<EntryRef, AuditError>>>,
    ) {
        if appends.is_empty() {
            return;
        }
        match self.commit_appends(std::mem::take(appends)) {
            Ok(refs) => {
                for (reply, r) in replies.drain(..).zip(refs) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "audit batch failed to commit");
                let reason = e.to_string();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(AuditError::CommitFailed {
                        path: self.path.clone(),
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    /// Appends `records` in one transaction.
    fn commit_appends(
        &mut self,
        records: Vec<(ChainId, Record)>,
    ) -> Result<Vec<EntryRef>, AuditError> {
        self.transact(None, |ctx, _| {
            let mut out = Vec::with_capacity(records.len());
            for (chain, record) in records {
                let name = chain.to_string();
                if chain != ChainId::System && !ctx.heads.contains_key(&name) {
                    let open =
                        Record::new(Principal::System, ACTION_CHAIN_OPEN, &name, Decision::Info)?;
                    ctx.append(SYSTEM_CHAIN, open);
                }
                let (seq, hash) = ctx.append(&name, record);
                out.push(EntryRef { chain, seq, hash });
            }
            Ok(out)
        })
    }

    /// Records the rotation in the system chain (signed by the current key), pins the new key
    /// as introduced by that entry, re-signs every chain head with the new key (heads must be
    /// signed by the current key, so a retired key cannot extend any chain), and switches to
    /// the new key once the transaction is durable.
    fn rotate(&mut self, new_key: KeyPair) -> Result<EntryRef, AuditError> {
        let resource = format!("{KEY_RESOURCE_PREFIX}{}", new_key.key_id());
        let details =
            serde_json::json!({ "public_key": hex::encode(new_key.public_key().to_bytes()) });
        let record = Record::new(
            Principal::System,
            ACTION_KEY_ROTATE,
            &resource,
            Decision::Info,
        )?
        .details(&details)?;
        let entry = self.transact(Some(&new_key), |ctx, tx| {
            let (seq, hash) = ctx.append(SYSTEM_CHAIN, record);
            let all: Vec<String> = ctx.heads.keys().cloned().collect();
            for chain in all {
                if !ctx.touched.contains(&chain) {
                    ctx.touched.push(chain);
                }
            }
            tx.execute(
                "INSERT INTO trusted_keys (key_id, public_key, introduced_by) VALUES (?1, ?2, ?3)",
                params![
                    new_key.key_id().as_bytes(),
                    new_key.public_key().to_bytes(),
                    seq_param(seq)
                ],
            )
            .map_err(ctx.err())?;
            Ok(EntryRef {
                chain: ChainId::System,
                seq,
                hash,
            })
        })?;
        self.key = new_key;
        Ok(entry)
    }

    /// Runs `body`, which stages entries; then signs every staged entry (with the current
    /// key) and every touched chain head (with `head_key`, by default the current key),
    /// inserts them, and commits, all in one transaction. On any failure nothing is kept, in
    /// memory or on disk.
    fn transact<T>(
        &mut self,
        head_key: Option<&KeyPair>,
        body: impl FnOnce(&mut Ctx<'_>, &Transaction<'_>) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        let saved = self.heads.clone();
        let path = self.path.as_path();
        let err = sqlite_err(path);
        let key_id = self.key.key_id();
        let result = (|| {
            let tx = self.conn.transaction().map_err(&err)?;
            let mut ctx = Ctx {
                path,
                heads: &mut self.heads,
                key_id,
                staged: Vec::new(),
                touched: Vec::new(),
                now: now_ns(),
            };
            let out = body(&mut ctx, &tx)?;
            let Ctx {
                staged, touched, ..
            } = ctx;

            let heads: Vec<(&String, Head)> = touched
                .iter()
                .filter_map(|c| self.heads.get(c).map(|h| (c, *h)))
                .collect();
            let head_key = head_key.unwrap_or(&self.key);
            let head_key_id = head_key.key_id();
            let sigs: Vec<Signature> = staged
                .iter()
                .map(|s| self.key.sign(s.hash.as_bytes()))
                .collect();
            let head_sigs: Vec<Signature> = heads
                .iter()
                .map(|(c, h)| head_key.sign(head_message(c, h.seq, h.hash.as_bytes()).as_bytes()))
                .collect();

            let mut insert = tx.prepare_cached(INSERT_ENTRY).map_err(&err)?;
            for (s, sig) in staged.iter().zip(&sigs) {
                let r = &s.record;
                insert
                    .execute(params![
                        s.chain,
                        seq_param(s.seq),
                        s.time_ns,
                        s.principal,
                        r.capsule.as_ref().map_or("", |c| c.as_str()),
                        r.action,
                        r.resource,
                        r.decision.as_str(),
                        r.details,
                        s.prev.as_bytes(),
                        key_id.as_bytes(),
                        s.hash.as_bytes(),
                        sig.as_bytes(),
                    ])
                    .map_err(&err)?;
            }
            let mut upsert = tx.prepare_cached(UPSERT_HEAD).map_err(&err)?;
            for ((chain, head), sig) in heads.iter().zip(&head_sigs) {
                upsert
                    .execute(params![
                        chain,
                        seq_param(head.seq),
                        head.hash.as_bytes(),
                        head_key_id.as_bytes(),
                        sig.as_bytes()
                    ])
                    .map_err(&err)?;
            }
            drop(insert);
            drop(upsert);
            tx.commit().map_err(&err)?;
            Ok(out)
        })();
        if result.is_err() {
            self.heads = saved;
        }
        result
    }
}

/// An entry hashed and chained, waiting for its signature.
struct Staged {
    chain: String,
    seq: u64,
    time_ns: i64,
    prev: Digest,
    hash: Digest,
    principal: String,
    record: Record,
}

/// What staging entries inside one transaction needs.
struct Ctx<'a> {
    path: &'a Path,
    heads: &'a mut HashMap<String, Head>,
    key_id: KeyId,
    staged: Vec<Staged>,
    touched: Vec<String>,
    now: i64,
}

impl Ctx<'_> {
    fn err(&self) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
        sqlite_err(self.path)
    }

    /// Assigns the next sequence number of `chain` to `record` and hashes it.
    fn append(&mut self, chain: &str, record: Record) -> (u64, Digest) {
        let (seq, prev) = match self.heads.get(chain) {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, genesis_hash(chain)),
        };
        let principal = record.principal.to_string();
        let hash = entry_hash(&EntryFields {
            chain: chain.as_bytes(),
            seq,
            time_ns: self.now,
            principal: principal.as_bytes(),
            capsule: record
                .capsule
                .as_ref()
                .map_or("", |c| c.as_str())
                .as_bytes(),
            action: record.action.as_bytes(),
            resource: record.resource.as_bytes(),
            decision: record.decision.as_str().as_bytes(),
            details: record.details.as_bytes(),
            prev_hash: prev.as_bytes(),
            key_id: self.key_id.as_bytes(),
        });
        self.heads.insert(chain.to_owned(), Head { seq, hash });
        if !self.touched.iter().any(|c| c == chain) {
            self.touched.push(chain.to_owned());
        }
        self.staged.push(Staged {
            chain: chain.to_owned(),
            seq,
            time_ns: self.now,
            prev,
            hash,
            principal,
            record,
        });
        (seq, hash)
    }
}
