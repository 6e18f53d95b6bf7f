//! The public handle: open (verifying first), append, rotate, verify, export, close.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use capsid_core::limits::AUDIT_QUEUE_DEPTH;
use capsid_core::sync::lock;
use capsid_crypto::{Digest, KeyPair};
use tokio::sync::{mpsc, oneshot};

use crate::entry::{ChainId, EntryRef, Record};
use crate::error::AuditError;
use crate::verify::{HeadRow, VerifyReport, verify_snapshot};
use crate::writer::{self, Command, Head};
use crate::{checkpoint, schema, store};

/// An open audit log with its writer thread (none when opened read-only).
///
/// Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// `None`: opened with [`AuditLog::open_read_only`].
    tx: Option<mpsc::Sender<Command>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer lock, held here when there is no writer thread to hold it (read-only).
    read_only_lock: Mutex<Option<std::fs::File>>,
}

impl AuditLog {
    /// Opens the log at `path`, creating it (with `key` pinned as its genesis key) if the file
    /// does not exist or is an empty database.
    ///
    /// An existing log is verified first: from its newest checkpoint on when it has one (the
    /// checkpoint's signature and claims, then every entry after it), in full otherwise.
    /// [`verify_all`](Self::verify_all) always checks everything. If anything is wrong the
    /// log is refused with [`AuditError::Tampered`] carrying the report, and nothing is
    /// written; if `key` is not
    /// the log's current key (its genesis key, or the key it was last rotated to) it is
    /// refused with [`AuditError::UntrustedKey`]. This call
    /// blocks (SQLite I/O and verification); from async code, run it on a blocking thread.
    pub fn open(path: impl AsRef<Path>, key: KeyPair) -> Result<Self, AuditError> {
        let path = path.as_ref().to_owned();
        let lock = lock_writer(&path)?;
        // Verified through a read-only connection before any read-write one exists: a log
        // that is refused is left exactly as found, its WAL included.
        let existing = match schema::open_existing_ro(&path)? {
            Some(ro) => {
                let verified = if let Some(v) = checkpoint::verify_from_checkpoint(&ro, &path)? {
                    v
                } else {
                    let snap = store::read_snapshot(&ro, &path)?;
                    checkpoint::Verified {
                        report: verify_snapshot(&snap),
                        since_checkpoint: snap.entries.len() as u64,
                        heads: snap.heads,
                    }
                };
                let report = verified.report;
                if !report.is_valid() {
                    return Err(AuditError::Tampered {
                        path,
                        report: Box::new(report),
                    });
                }
                if report.current_key() != Some(key.key_id()) {
                    return Err(AuditError::UntrustedKey {
                        path,
                        key_id: key.key_id().to_string(),
                    });
                }
                // The heads read with what was verified, and how far the last checkpoint is.
                Some((verified.heads, verified.since_checkpoint))
            }
            None => None,
        };
        let (mut conn, is_new) = schema::open_rw(&path)?;
        let (key, heads, since_checkpoint) = match existing {
            // Unchanged since it was verified: the writer lock keeps other capsids out.
            Some((heads, since)) if !is_new => (key, heads_of(&heads), since),
            None if is_new => {
                let (key, heads) = writer::create(&mut conn, &path, key)?;
                (key, heads, 0)
            }
            // Something other than capsid changed the file between the two opens.
            _ => {
                return Err(AuditError::Io {
                    path,
                    source: std::io::Error::other(
                        "the file changed while it was being opened; try again",
                    ),
                });
            }
        };
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE_DEPTH);
        let start = writer::Start {
            key,
            heads,
            since_checkpoint,
        };
        let handle = writer::spawn(conn, path.clone(), start, rx, lock).map_err(|source| {
            AuditError::Io {
                path: path.clone(),
                source,
            }
        })?;
        Ok(Self {
            path,
            tx: Some(tx),
            writer: Mutex::new(Some(handle)),
            read_only_lock: Mutex::new(None),
        })
    }

    /// Opens the existing log at `path` for reading only, tampered or not, and returns it
    /// with its verification report. It is never written: every append or rotation fails
    /// with [`AuditError::ReadOnly`], while verify, export and tail read it as it is. This is
    /// how a host inspects a log that failed verification without changing it. It holds the
    /// writer lock like a writer does (until [`shutdown`](Self::shutdown)), so no other
    /// capsid writes or moves the log meanwhile. Blocking.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<(Self, VerifyReport), AuditError> {
        let path = path.as_ref().to_owned();
        let lock = lock_writer(&path)?;
        let report = verify_database(&path)?;
        let log = Self {
            path,
            tx: None,
            writer: Mutex::new(None),
            read_only_lock: Mutex::new(Some(lock)),
        };
        Ok((log, report))
    }

    /// Whether the log was opened read-only (see [`AuditLog::open_read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.tx.is_none()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` to `chain` and returns once the entry is durable. A chain's first
    /// append also records its opening in the system chain, in the same transaction.
    pub async fn append(&self, chain: ChainId, record: Record) -> Result<EntryRef, AuditError> {
        self.append_pending(chain, record).await?.durable().await
    }

    /// Queues `record` for `chain` and returns once it is queued, with the means to wait
    /// until it is durable. For work that may start while the entry commits but must not be
    /// answered before it has: the entry is in the log ahead of every entry appended after
    /// it, and [`PendingAppend::durable`] says whether it made it.
    pub async fn append_pending(
        &self,
        chain: ChainId,
        record: Record,
    ) -> Result<PendingAppend, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append {
            chain,
            record,
            reply,
        })
        .await?;
        Ok(PendingAppend {
            answer,
            path: self.path.clone(),
        })
    }

    /// Queues `record` for `chain` and returns once it is queued, not once it is durable.
    /// The writer commits in order, so once committed it is in the log ahead of every entry
    /// appended after it, and it is durable with the next commit. For a record whose
    /// consequences are recorded after it (a tool's result, handed to a capsule whose next
    /// effects are checked and recorded durably): a crash can lose it only with nothing
    /// that followed from it. If its batch fails to commit it is lost and the writer logs
    /// the failure (nobody waits to be told); entries appended after the writer has
    /// recovered from the failure commit without it.
    pub async fn append_queued(&self, chain: ChainId, record: Record) -> Result<(), AuditError> {
        // Nobody listens, and the writer sees that before it sees the record.
        let (reply, unheard) = oneshot::channel();
        drop(unheard);
        self.send(Command::Append {
            chain,
            record,
            reply,
        })
        .await
    }

    /// Trusts `new_key` from now on: records the rotation in the system chain, signed by the
    /// current key, and signs every later entry with `new_key`.
    pub async fn rotate_key(&self, new_key: KeyPair) -> Result<EntryRef, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Rotate {
            key: new_key,
            reply,
        })
        .await?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Verifies every chain as committed so far. Blocking, like [`verify_database`].
    pub fn verify_all(&self) -> Result<VerifyReport, AuditError> {
        verify_database(&self.path)
    }

    /// Writes every key, head and entry as JSON lines to `out` (created, never overwritten).
    /// Returns the number of entries written. Blocking.
    pub fn export_jsonl(&self, out: &Path) -> Result<u64, AuditError> {
        crate::export::export_database(&self.path, out)
    }

    /// Stops accepting appends, lets the writer finish what is queued, and waits for it.
    pub async fn close(self) -> Result<(), AuditError> {
        self.shutdown().await
    }

    /// Like [`close`](Self::close) for a shared log: every append after it fails with
    /// [`AuditError::WriterStopped`], and once it returns the writer lock is released (the
    /// log may be opened again). Calling it twice is fine.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        // A closed queue means a stop is already under way or done.
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Stop).await;
        }
        lock(&self.read_only_lock).take();
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|_| AuditError::WriterStopped(path.clone()))?
                .map_err(|_| AuditError::WriterStopped(path))?;
        }
        Ok(())
    }

    async fn send(&self, cmd: Command) -> Result<(), AuditError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| AuditError::ReadOnly(self.path.clone()))?;
        tx.send(cmd).await.map_err(|_| self.stopped())
    }

    fn stopped(&self) -> AuditError {
        AuditError::WriterStopped(self.path.clone())
    }
}

/// An entry queued by [`AuditLog::append_pending`], not yet known to be durable.
#[derive(Debug)]
#[must_use = "an entry's durability is only known once awaited"]
pub struct PendingAppend {
    answer: oneshot::Receiver<Result<EntryRef, AuditError>>,
    path: PathBuf,
}

impl PendingAppend {
    /// Waits until the entry is durable; the error its commit met otherwise.
    pub async fn durable(self) -> Result<EntryRef, AuditError> {
        self.answer
            .await
            .map_err(|_| AuditError::WriterStopped(self.path))?
    }
}

/// Takes the exclusive writer lock: an advisory lock on `<db>.lock`, held by the writer
/// thread until it stops, so two writers can never interleave sequence numbers.
fn lock_writer(db: &Path) -> Result<std::fs::File, AuditError> {
    let lock_path = schema::sibling(db, ".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| AuditError::Io {
            path: lock_path,
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked(db.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(AuditError::Io {
            path: db.to_owned(),
            source,
        }),
    }
}

fn heads_of(heads: &[HeadRow]) -> HashMap<String, Head> {
    heads
        .iter()
        .filter_map(|h| {
            Some((
                h.chain.clone(),
                Head {
                    seq: h.seq,
                    hash: Digest::from_slice(&h.hash)?,
                },
            ))
        })
        .collect()
}

/// Verifies the log at `path` read-only, tampered or not, and reports every problem.
/// Fails only if the file cannot be read as a capsid audit log at all.
pub fn verify_database(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    let path = path.as_ref();
    let conn = schema::open_ro(path)?;
    let snap = store::read_snapshot(&conn, path)?;
    Ok(verify_snapshot(&snap))
}
