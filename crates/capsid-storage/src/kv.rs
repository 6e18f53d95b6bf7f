//! The `KvStore` trait and the checks every backend applies.

use async_trait::async_trait;
use capsid_core::limits::{
    MAX_KV_BATCH_OPS, MAX_KV_KEY_BYTES, MAX_KV_LIST_LIMIT, MAX_KV_VALUE_BYTES,
};

use crate::error::KvError;

/// One page of keys from [`KvStore::list`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Keys in ascending byte order.
    pub keys: Vec<Vec<u8>>,
    /// Pass as `after` to get the next page; `None` when there is no more.
    pub next: Option<Vec<u8>>,
}

impl Page {
    /// The page holding the first `limit` of `keys` (ascending, and read one or more past
    /// `limit`, so that a next page is known to exist when it does).
    #[must_use]
    pub fn of_first(mut keys: Vec<Vec<u8>>, limit: usize) -> Self {
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        Self { keys, next }
    }
}

/// One operation of an atomic [`KvStore::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete `key` (absent is fine).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Set { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// An ordered byte-key, byte-value store.
#[async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    /// The value under `key`, if any.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// [`get`](Self::get) answered inline, for backends whose reads never wait (the memory
    /// map; SurrealKV, whose reads are synchronous). Spares the boxed future of a dynamic
    /// async call on the hottest path. `None` means "use `get`".
    fn get_inline(&self, key: &[u8]) -> Option<Result<Option<Vec<u8>>, KvError>> {
        let _ = key;
        None
    }
    /// Sets `key` to `value`.
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &[u8]) -> Result<bool, KvError>;
    /// Whether `key` exists.
    async fn exists(&self, key: &[u8]) -> Result<bool, KvError> {
        Ok(self.get(key).await?.is_some())
    }
    /// Keys starting with `prefix`, ascending, strictly after `after` if given, at most
    /// `limit` (1..=`MAX_KV_LIST_LIMIT`).
    async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, KvError>;
    /// Atomically: if the value under `key` equals `expected` (`None`: absent), replace it
    /// with `new` (`None`: delete) and return true; otherwise change nothing, return false.
    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError>;
    /// Applies every operation, in order, atomically: all or none.
    async fn batch(&self, ops: &[BatchOp]) -> Result<(), KvError>;
    /// Flushes and closes; later calls fail with [`KvError::Closed`].
    async fn close(&self) -> Result<(), KvError>;
}

/// Checks a key against the raw store limit.
pub fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KV_KEY_BYTES {
        return Err(KvError::BadKey {
            len: key.len(),
            max: MAX_KV_KEY_BYTES,
        });
    }
    Ok(())
}

/// Checks a write against the store limits: its key, and its value unless it deletes.
pub fn check_write(key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
    check_key(key)?;
    value.map_or(Ok(()), check_value)
}

/// Checks a value against the store limit.
pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_KV_VALUE_BYTES {
        return Err(KvError::ValueTooLarge {
            len: value.len(),
            max: MAX_KV_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a list limit against `MAX_KV_LIST_LIMIT`.
pub fn check_limit(limit: usize) -> Result<(), KvError> {
    if limit == 0 || limit > MAX_KV_LIST_LIMIT {
        return Err(KvError::OutOfRange {
            what: "list limit",
            got: limit,
            max: MAX_KV_LIST_LIMIT,
        });
    }
    Ok(())
}

/// Checks a batch's size and each of its keys and values.
pub fn check_batch(ops: &[BatchOp]) -> Result<(), KvError> {
    if ops.len() > MAX_KV_BATCH_OPS {
        return Err(KvError::OutOfRange {
            what: "batch size",
            got: ops.len(),
            max: MAX_KV_BATCH_OPS,
        });
    }
    for op in ops {
        check_key(op.key())?;
        if let BatchOp::Set { value, .. } = op {
            check_value(value)?;
        }
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (the prefix is all `0xff`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A stored record that does not decode: the error naming its key.
pub(crate) fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> KvError {
    KvError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

/// Every JSON record stored under `prefix`, in key order, page by page.
pub(crate) async fn json_records<T: serde::de::DeserializeOwned>(
    kv: &dyn KvStore,
    prefix: &[u8],
) -> Result<Vec<T>, KvError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = kv
            .list(
                prefix,
                after.as_deref(),
                capsid_core::limits::MAX_KV_LIST_LIMIT,
            )
            .await?;
        for key in &page.keys {
            if let Some(v) = kv.get(key).await? {
                out.push(serde_json::from_slice(&v).map_err(|e| corrupt(key, e))?);
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}
