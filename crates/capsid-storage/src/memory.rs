//! The in-memory backend: a `BTreeMap` behind a lock. For tests and embedding.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use crate::error::KvError;
use crate::kv::{BatchOp, KvStore, Page, check_batch, check_key, check_limit, check_write};

/// A `KvStore` in memory. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryKvStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    closed: AtomicBool,
}

fn poisoned() -> KvError {
    KvError::Backend {
        path: "memory".into(),
        message: "a writer panicked; store is unusable".into(),
    }
}

impl MemoryKvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read_now(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.open()?;
        check_key(key)?;
        Ok(self.map.read().map_err(|_| poisoned())?.get(key).cloned())
    }

    fn open(&self) -> Result<(), KvError> {
        if self.closed.load(Ordering::Acquire) {
            Err(KvError::Closed)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl KvStore for MemoryKvStore {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.read_now(key)
    }

    fn get_inline(&self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, KvError>> {
        Some(self.read_now(key))
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.open()?;
        check_write(key, Some(value))?;
        self.map
            .write()
            .map_err(|_| poisoned())?
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    async fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        self.open()?;
        check_key(key)?;
        Ok(self
            .map
            .write()
            .map_err(|_| poisoned())?
            .remove(key)
            .is_some())
    }

    async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, KvError> {
        self.open()?;
        check_limit(limit)?;
        let map = self.map.read().map_err(|_| poisoned())?;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let keys: Vec<Vec<u8>> = map
            .range((start, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::of_first(keys, limit))
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        self.open()?;
        check_write(key, new)?;
        let mut map = self.map.write().map_err(|_| poisoned())?;
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        match new {
            Some(v) => map.insert(key.to_vec(), v.to_vec()),
            None => map.remove(key),
        };
        Ok(true)
    }

    async fn batch(&self, ops: &[BatchOp]) -> Result<(), KvError> {
        self.open()?;
        check_batch(ops)?;
        let mut map = self.map.write().map_err(|_| poisoned())?;
        for op in ops {
            match op {
                BatchOp::Set { key, value } => map.insert(key.clone(), value.clone()),
                BatchOp::Delete { key } => map.remove(key),
            };
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), KvError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
