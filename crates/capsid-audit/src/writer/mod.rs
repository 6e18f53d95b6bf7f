//! The write path: a two-stage pipeline behind one queue.
//!
//! The **stager** thread owns the signing key and the chain heads. It drains every queued
//! append (up to `MAX_AUDIT_BATCH`), assigns sequence numbers, hashes and signs, and hands the
//! prepared batch on. A batch of appends nobody waits on (`append_queued`) is held up to
//! `QUEUED_APPEND_WINDOW` for one somebody does, so the two share a commit. The **committer** thread owns the SQLite connection: it takes every
//! prepared batch waiting (up to `MAX_AUDIT_PIPELINE`), inserts them in one transaction,
//! commits durably, then answers every append in them. While one group waits on `fsync` the
//! next batches are being signed, so the two costs overlap instead of adding up.
//!
//! A batch is staged on top of the batches before it. If one fails to commit, the committer
//! rejects every batch staged before it learned of the failure (they chain onto entries that
//! do not exist), reloads the committed heads and hands them back to the stager, which
//! continues from there. A rotation waits for its own commit before the stager signs with the
//! new key.

mod commit;
mod stage;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc as sync_mpsc};
use std::thread::JoinHandle;

use capsid_core::limits::{MAX_AUDIT_BATCH, MAX_AUDIT_PIPELINE, QUEUED_APPEND_WINDOW};
use capsid_crypto::{Digest, KeyPair};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::entry::{ChainId, EntryRef, Record};
use crate::error::AuditError;
use commit::Committer;
use stage::{Prepared, Stager};

/// Where an append's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<EntryRef, AuditError>>;

/// A request to the write path.
pub(crate) enum Command {
    /// Append a record to a chain.
    Append {
        chain: ChainId,
        record: Record,
        reply: Reply,
    },
    /// Trust a new key from now on.
    Rotate { key: KeyPair, reply: Reply },
    /// Finish what is queued, accept nothing more, and stop (releasing the writer lock).
    Stop,
}

/// The last entry of a chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub seq: u64,
    pub hash: Digest,
}

/// Committed heads handed back by the committer after a failed batch, with the generation
/// that batches staged from them carry.
#[derive(Default)]
struct Resync {
    generation: u64,
    heads: Option<HashMap<String, Head>>,
}

/// Creates a new log synchronously: schema, genesis key and first entry in one transaction.
/// Returns the heads to start the pipeline from.
pub(crate) fn create(
    conn: &mut Connection,
    path: &Path,
    key: KeyPair,
) -> Result<(KeyPair, HashMap<String, Head>), AuditError> {
    let mut stager = Stager::new(key, HashMap::new());
    let prepared = stager.stage_creation()?;
    commit::commit_creation(conn, path, stager.key(), &prepared)?;
    Ok(stager.into_parts())
}

/// Where the write path starts from: the signing key, the chain heads, and how many entries
/// follow the last checkpoint (so the next one comes on time across restarts).
pub(crate) struct Start {
    pub key: KeyPair,
    pub heads: HashMap<String, Head>,
    pub since_checkpoint: u64,
}

/// Starts the stager and committer threads. They stop once every sender of `rx` is dropped
/// and what was queued is committed; `lock` is released then.
pub(crate) fn spawn(
    conn: Connection,
    path: PathBuf,
    start: Start,
    rx: mpsc::Receiver<Command>,
    lock: File,
) -> std::io::Result<JoinHandle<()>> {
    let resync = Arc::new(Mutex::new(Resync::default()));
    // Signed batches wait here while a commit runs; the committer takes them all at once.
    let (to_commit, committed_in) = sync_mpsc::sync_channel::<Prepared>(MAX_AUDIT_PIPELINE);
    let committer = Committer::new(conn, path.clone(), resync.clone());
    let committer = std::thread::Builder::new()
        .name("capsid-audit-commit".into())
        .spawn(move || committer.run(&committed_in))?;
    std::thread::Builder::new()
        .name("capsid-audit-stage".into())
        .spawn(move || {
            let mut stager = Stager::new(start.key, start.heads);
            stager.after_checkpoint(start.since_checkpoint);
            run_stager(stager, &path, rx, &to_commit, &resync);
            drop(to_commit);
            // The committer finishes what it holds; a panic there already failed its replies.
            let _ = committer.join();
            drop(lock);
        })
}

fn run_stager(
    mut stager: Stager,
    path: &Path,
    mut rx: mpsc::Receiver<Command>,
    to_commit: &sync_mpsc::SyncSender<Prepared>,
    resync: &Mutex<Resync>,
) {
    let mut batch = Vec::with_capacity(MAX_AUDIT_BATCH);
    // Without it, queued appends are committed at once, as any other.
    let clock = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_AUDIT_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        if let Some(clock) = &clock
            && only_queued(&batch)
        {
            wait_for_a_waiter(clock, &mut rx, &mut batch);
        }
        let mut appends = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Append {
                    chain,
                    record,
                    reply,
                } => appends.push((chain, record, reply)),
                Command::Rotate { key, reply } => {
                    send(
                        &mut stager,
                        path,
                        std::mem::take(&mut appends),
                        to_commit,
                        resync,
                    );
                    rotate(&mut stager, path, key, reply, to_commit, resync);
                }
                // Commands already queued are still received (and served); new sends fail.
                Command::Stop => rx.close(),
            }
        }
        send(&mut stager, path, appends, to_commit, resync);
    }
    // A clean stop: the next open verifies from here.
    take_resync(&mut stager, resync);
    if let Some(prepared) = stager.stage_checkpoint()
        && let Err(sync_mpsc::SendError(prepared)) = to_commit.send(prepared)
    {
        prepared.fail(path, &AuditError::WriterStopped(path.to_owned()));
    }
}

/// Whether every command of `batch` is an append nobody waits on.
fn only_queued(batch: &[Command]) -> bool {
    batch.iter().all(|cmd| match cmd {
        Command::Append { reply, .. } => reply.is_closed(),
        _ => false,
    })
}

/// Waits up to `QUEUED_APPEND_WINDOW` for a command to join a batch of queued appends, so
/// an append someone waits on shares their commit rather than waiting behind it. `clock` is
/// the stager's own small runtime, for a wait that ends the moment a command arrives.
fn wait_for_a_waiter(
    clock: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Command>,
    batch: &mut Vec<Command>,
) {
    let until = tokio::time::Instant::now() + QUEUED_APPEND_WINDOW;
    while batch.len() < MAX_AUDIT_BATCH {
        // The timer is made inside the runtime, whose clock it needs.
        match clock.block_on(async { tokio::time::timeout_at(until, rx.recv()).await }) {
            Ok(Some(cmd)) => {
                batch.push(cmd);
                if !only_queued(batch) {
                    return;
                }
            }
            // Closed, or the window is over.
            Ok(None) | Err(_) => return,
        }
    }
}

fn take_resync(stager: &mut Stager, resync: &Mutex<Resync>) {
    let mut r = capsid_core::sync::lock(resync);
    if r.generation != stager.generation() {
        let generation = r.generation;
        if let Some(heads) = r.heads.take() {
            stager.resync(generation, heads);
        }
    }
}

fn send(
    stager: &mut Stager,
    path: &Path,
    appends: Vec<(ChainId, Record, Reply)>,
    to_commit: &sync_mpsc::SyncSender<Prepared>,
    resync: &Mutex<Resync>,
) {
    if appends.is_empty() {
        return;
    }
    take_resync(stager, resync);
    let prepared = stager.stage_appends(appends);
    if let Err(sync_mpsc::SendError(prepared)) = to_commit.send(prepared) {
        prepared.fail(path, &AuditError::WriterStopped(path.to_owned()));
    }
}

fn rotate(
    stager: &mut Stager,
    path: &Path,
    key: KeyPair,
    reply: Reply,
    to_commit: &sync_mpsc::SyncSender<Prepared>,
    resync: &Mutex<Resync>,
) {
    take_resync(stager, resync);
    let (done, committed) = sync_mpsc::channel();
    let prepared = match stager.stage_rotation(&key, reply, done) {
        Ok(p) => p,
        Err((e, reply)) => {
            let _ = reply.send(Err(e));
            return;
        }
    };
    if let Err(sync_mpsc::SendError(prepared)) = to_commit.send(prepared) {
        prepared.fail(path, &AuditError::WriterStopped(path.to_owned()));
        return;
    }
    // Sign nothing more until the rotation is durable: then switch, or keep the old key.
    if committed.recv().unwrap_or(false) {
        stager.switch_key(key);
    }
}
