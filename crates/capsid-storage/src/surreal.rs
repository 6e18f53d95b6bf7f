//! The durable backend: SurrealKV, an LSM tree with a write-ahead log.
//!
//! Every write is one transaction. Writes through one store are serialised: SurrealKV's
//! optimistic transactions make concurrent writers to one key fail each other, and under
//! contention retries alone can starve. A write that still meets a conflict (from a
//! transaction the engine had in flight) is retried from a fresh read, so compare-and-swap
//! re-evaluates its expectation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use capsid_core::limits::{KV_MEMTABLE_BYTES, MAX_KV_CONFLICT_RETRIES, MAX_KV_KEY_BYTES};
use surrealkv::{LSMIterator as _, Mode, Transaction, Tree, TreeBuilder};

use crate::error::KvError;
use crate::kv::{
    BatchOp, KvStore, Page, check_batch, check_key, check_limit, check_write, prefix_end,
};

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A write returns once its log record is fsynced: it survives power loss. The default.
    #[default]
    Synced,
    /// A write returns once its log record reached the operating system: it survives a crash
    /// of the process, not of the machine.
    Buffered,
}

/// A `KvStore` in a SurrealKV directory.
pub struct SurrealKvStore {
    tree: Tree,
    path: PathBuf,
    durability: Durability,
    closed: AtomicBool,
    writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SurrealKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tree and the writer lock have nothing useful to print.
        f.debug_struct("SurrealKvStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// What a read-modify-write decided: write the transaction, or stop with a value and write
/// nothing.
enum Step<T> {
    Commit(T),
    Stop(T),
}

impl SurrealKvStore {
    /// Opens (creating if missing) the store in `dir`. Must run inside a tokio runtime. A
    /// corrupt or locked directory is an error naming it; nothing in it is changed.
    pub async fn open(dir: &Path, durability: Durability) -> Result<Self, KvError> {
        let tree = TreeBuilder::new()
            .with_path(dir.to_owned())
            .with_max_memtable_size(KV_MEMTABLE_BYTES)
            .build_async()
            .await
            .map_err(|e| KvError::Backend {
                path: dir.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            tree,
            path: dir.to_owned(),
            durability,
            closed: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: &surrealkv::Error) -> KvError {
        KvError::Backend {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn check_open(&self) -> Result<(), KvError> {
        if self.closed.load(Ordering::Acquire) {
            Err(KvError::Closed)
        } else {
            Ok(())
        }
    }

    fn read_now(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        let txn = self.read_txn()?;
        txn.get(key).map_err(|e| self.err(&e))
    }

    fn read_txn(&self) -> Result<Transaction, KvError> {
        self.check_open()?;
        self.tree
            .begin_with_mode(Mode::ReadOnly)
            .map_err(|e| self.err(&e))
    }

    /// Runs `body` in a read-write transaction and commits it, retrying on conflict.
    async fn write<T>(
        &self,
        mut body: impl FnMut(&mut Transaction) -> Result<Step<T>, surrealkv::Error>,
    ) -> Result<T, KvError> {
        let _serial = self.writer.lock().await;
        for _ in 0..MAX_KV_CONFLICT_RETRIES {
            self.check_open()?;
            let mut txn = self.tree.begin().map_err(|e| self.err(&e))?;
            let out = match body(&mut txn).map_err(|e| self.err(&e))? {
                Step::Stop(out) => return Ok(out),
                Step::Commit(out) => out,
            };
            txn.set_durability(match self.durability {
                Durability::Synced => surrealkv::Durability::Immediate,
                Durability::Buffered => surrealkv::Durability::Eventual,
            });
            match txn.commit().await {
                Ok(()) => return Ok(out),
                Err(
                    surrealkv::Error::TransactionWriteConflict | surrealkv::Error::TransactionRetry,
                ) => {}
                Err(e) => return Err(self.err(&e)),
            }
        }
        Err(KvError::Backend {
            path: self.path.clone(),
            message: format!("write still conflicting after {MAX_KV_CONFLICT_RETRIES} attempts"),
        })
    }
}

#[async_trait]
impl KvStore for SurrealKvStore {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.read_now(key)
    }

    fn get_inline(&self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, KvError>> {
        Some(self.read_now(key))
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        check_write(key, Some(value))?;
        self.write(|txn| txn.set(key, value).map(Step::Commit))
            .await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        check_key(key)?;
        self.write(|txn| {
            if txn.get_for_update(key)?.is_none() {
                return Ok(Step::Stop(false));
            }
            txn.delete(key)?;
            Ok(Step::Commit(true))
        })
        .await
    }

    async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, KvError> {
        check_limit(limit)?;
        let txn = self.read_txn()?;
        let start = match after {
            Some(a) if a >= prefix => {
                let mut s = a.to_vec();
                s.push(0);
                s
            }
            _ => prefix.to_vec(),
        };
        let mut keys = Vec::with_capacity(limit.min(64) + 1);
        {
            // No key is longer than MAX_KV_KEY_BYTES, so this bound is above every key.
            let end = prefix_end(prefix).unwrap_or_else(|| vec![0xff; MAX_KV_KEY_BYTES + 1]);
            let mut it = txn
                .range(start.as_slice(), end.as_slice())
                .map_err(|e| self.err(&e))?;
            let mut valid = it.seek_first().map_err(|e| self.err(&e))?;
            while valid && keys.len() <= limit {
                let key = it.key().user_key().to_vec();
                if !key.starts_with(prefix) {
                    break;
                }
                keys.push(key);
                valid = it.next().map_err(|e| self.err(&e))?;
            }
        }
        Ok(Page::of_first(keys, limit))
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        check_write(key, new)?;
        self.write(|txn| {
            if txn.get_for_update(key)?.as_deref() != expected {
                return Ok(Step::Stop(false));
            }
            match new {
                Some(v) => txn.set(key, v)?,
                None => txn.delete(key)?,
            }
            Ok(Step::Commit(true))
        })
        .await
    }

    async fn batch(&self, ops: &[BatchOp]) -> Result<(), KvError> {
        check_batch(ops)?;
        if ops.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            for op in ops {
                match op {
                    BatchOp::Set { key, value } => txn.set(key.as_slice(), value.as_slice())?,
                    BatchOp::Delete { key } => txn.delete(key.as_slice())?,
                }
            }
            Ok(Step::Commit(()))
        })
        .await
    }

    async fn close(&self) -> Result<(), KvError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.tree.close().await.map_err(|e| self.err(&e))
    }
}
