//! A capsule's view of the store: one namespace, under a quota.
//!
//! A stored key is `0x01 · len(namespace) · namespace · user key` (one length byte; names are
//! at most 255 bytes). The header is fixed by the namespace alone, so no user key — whatever
//! bytes it holds, separators, NUL, `..` — can produce a stored key in another namespace, and
//! every list is bounded to the header.

use std::collections::HashMap;
use std::sync::Arc;

use capsid_core::limits::{MAX_KV_LIST_LIMIT, MAX_KV_NAMESPACE_BYTES, MAX_SCOPED_KEY_BYTES};
use tokio::sync::Mutex;

use crate::error::{KvError, QuotaKind};
use crate::kv::{BatchOp, KvStore, Page, check_value};

/// First byte of every scoped key; other key spaces (identity, capabilities) use others.
const SCOPED_TAG: u8 = 0x01;

/// A stored key, kept inline when it fits.
type FullKey = smallvec::SmallVec<[u8; 96]>;

/// Limits on one namespace. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Total bytes of keys (as the capsule sees them) and values.
    pub max_bytes: Option<u64>,
    /// Number of keys.
    pub max_keys: Option<u64>,
}

/// What a namespace uses, with the size of every key's entry so a write can be costed
/// without reading the old value back.
#[derive(Debug, Default)]
struct Usage {
    bytes: u64,
    sizes: HashMap<Vec<u8>, u64>,
}

/// A `KvStore` view confined to one namespace. Clones share the same usage accounting; create
/// one per namespace and clone it, rather than opening the same namespace twice.
#[derive(Debug, Clone)]
pub struct ScopedKvStore {
    inner: Arc<dyn KvStore>,
    namespace: String,
    header: Arc<[u8]>,
    quota: Quota,
    usage: Arc<Mutex<Usage>>,
}

fn entry_size(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl ScopedKvStore {
    /// Opens `namespace` of `inner` under `quota`, counting what it already holds.
    pub async fn open(
        inner: Arc<dyn KvStore>,
        namespace: &str,
        quota: Quota,
    ) -> Result<Self, KvError> {
        if namespace.is_empty() || namespace.len() > MAX_KV_NAMESPACE_BYTES {
            return Err(KvError::BadNamespace {
                len: namespace.len(),
                max: MAX_KV_NAMESPACE_BYTES,
            });
        }
        let mut header = Vec::with_capacity(namespace.len() + 2);
        header.push(SCOPED_TAG);
        header.push(
            u8::try_from(namespace.len()).map_err(|_| KvError::BadNamespace {
                len: namespace.len(),
                max: MAX_KV_NAMESPACE_BYTES,
            })?,
        );
        header.extend_from_slice(namespace.as_bytes());
        let store = Self {
            inner,
            namespace: namespace.to_owned(),
            header: header.into(),
            quota,
            usage: Arc::default(),
        };
        store.recount().await?;
        Ok(store)
    }

    /// The namespace name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Bytes and keys currently used.
    pub async fn usage(&self) -> (u64, u64) {
        let u = self.usage.lock().await;
        (u.bytes, u.sizes.len() as u64)
    }

    async fn recount(&self) -> Result<(), KvError> {
        let mut usage = Usage::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .inner
                .list(&self.header, after.as_deref(), MAX_KV_LIST_LIMIT)
                .await?;
            for full in &page.keys {
                let Some(value) = self.inner.get(full).await? else {
                    continue;
                };
                let user = &full[self.header.len()..];
                let size = entry_size(user, &value);
                usage.bytes += size;
                usage.sizes.insert(user.to_vec(), size);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        *self.usage.lock().await = usage;
        Ok(())
    }

    /// The stored key: on the stack for the common short key, so a read allocates nothing.
    fn full_key(&self, key: &[u8]) -> Result<FullKey, KvError> {
        if key.is_empty() || key.len() > MAX_SCOPED_KEY_BYTES {
            return Err(KvError::BadKey {
                len: key.len(),
                max: MAX_SCOPED_KEY_BYTES,
            });
        }
        let mut full = FullKey::with_capacity(self.header.len() + key.len());
        full.extend_from_slice(&self.header);
        full.extend_from_slice(key);
        Ok(full)
    }

    /// Checks that replacing the entries in `changes` (key, new size or `None` for delete)
    /// stays within quota, and returns the usage it would lead to.
    fn cost(&self, usage: &Usage, changes: &[(&[u8], Option<u64>)]) -> Result<(u64, u64), KvError> {
        let mut bytes = usage.bytes;
        let mut keys = usage.sizes.len() as u64;
        let mut seen: HashMap<&[u8], Option<u64>> = HashMap::new();
        for (key, new) in changes {
            let old = seen
                .get(key)
                .copied()
                .unwrap_or_else(|| usage.sizes.get(*key).copied());
            bytes = bytes - old.unwrap_or(0) + new.unwrap_or(0);
            keys = keys - u64::from(old.is_some()) + u64::from(new.is_some());
            seen.insert(key, *new);
        }
        let over = |kind, limit: Option<u64>, would_use: u64| match limit {
            Some(limit) if would_use > limit => Err(KvError::QuotaExceeded {
                namespace: self.namespace.clone(),
                kind,
                limit,
                would_use,
            }),
            _ => Ok(()),
        };
        // Only growth is refused: a namespace already over a lowered quota may still shrink.
        if bytes > usage.bytes {
            over(QuotaKind::Bytes, self.quota.max_bytes, bytes)?;
        }
        if keys > usage.sizes.len() as u64 {
            over(QuotaKind::Keys, self.quota.max_keys, keys)?;
        }
        Ok((bytes, keys))
    }

    /// The value under `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let full = self.full_key(key)?;
        match self.inner.get_inline(&full) {
            Some(answer) => answer,
            None => self.inner.get(&full).await,
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &[u8]) -> Result<bool, KvError> {
        self.inner.exists(&self.full_key(key)?).await
    }

    /// Sets `key` to `value`, within quota.
    pub async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let full = self.full_key(key)?;
        check_value(value)?;
        let size = entry_size(key, value);
        let mut usage = self.usage.lock().await;
        let (bytes, _) = self.cost(&usage, &[(key, Some(size))])?;
        self.inner.set(&full, value).await?;
        usage.bytes = bytes;
        usage.sizes.insert(key.to_vec(), size);
        Ok(())
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        let full = self.full_key(key)?;
        let mut usage = self.usage.lock().await;
        let existed = self.inner.delete(&full).await?;
        if let Some(size) = usage.sizes.remove(key) {
            usage.bytes -= size;
        }
        Ok(existed)
    }

    /// Keys of this namespace starting with `prefix`, as the capsule named them.
    pub async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, KvError> {
        let mut full_prefix = self.header.to_vec();
        full_prefix.extend_from_slice(prefix);
        let after = after.map(|a| self.full_key(a)).transpose()?;
        let page = self
            .inner
            .list(&full_prefix, after.as_deref(), limit)
            .await?;
        let strip = |mut k: Vec<u8>| {
            k.drain(..self.header.len());
            k
        };
        Ok(Page {
            keys: page.keys.into_iter().map(strip).collect(),
            next: page.next.map(strip),
        })
    }

    /// Compare-and-swap within the namespace (see [`KvStore::compare_and_swap`]), within quota.
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        let full = self.full_key(key)?;
        if let Some(v) = new {
            check_value(v)?;
        }
        let size = new.map(|v| entry_size(key, v));
        let mut usage = self.usage.lock().await;
        let (bytes, _) = self.cost(&usage, &[(key, size)])?;
        if !self.inner.compare_and_swap(&full, expected, new).await? {
            return Ok(false);
        }
        usage.bytes = bytes;
        match size {
            Some(s) => usage.sizes.insert(key.to_vec(), s),
            None => usage.sizes.remove(key),
        };
        Ok(true)
    }

    /// Applies `ops` atomically within the namespace, within quota.
    pub async fn batch(&self, ops: &[BatchOp]) -> Result<(), KvError> {
        let mut full_ops = Vec::with_capacity(ops.len());
        let mut changes: Vec<(&[u8], Option<u64>)> = Vec::with_capacity(ops.len());
        for op in ops {
            let full = self.full_key(op.key())?;
            match op {
                BatchOp::Set { key, value } => {
                    check_value(value)?;
                    changes.push((key, Some(entry_size(key, value))));
                    full_ops.push(BatchOp::Set {
                        key: full.into_vec(),
                        value: value.clone(),
                    });
                }
                BatchOp::Delete { key } => {
                    changes.push((key, None));
                    full_ops.push(BatchOp::Delete {
                        key: full.into_vec(),
                    });
                }
            }
        }
        let mut usage = self.usage.lock().await;
        let (bytes, _) = self.cost(&usage, &changes)?;
        self.inner.batch(&full_ops).await?;
        usage.bytes = bytes;
        for (key, size) in changes {
            match size {
                Some(s) => usage.sizes.insert(key.to_vec(), s),
                None => usage.sizes.remove(key),
            };
        }
        Ok(())
    }
}
