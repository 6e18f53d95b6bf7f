//! Standing refusals: what a person answered `deny --always` to, on a `KvStore`. The
//! capsule's later requests for the same resource and permission are denied without asking
//! anyone, until the operator removes the refusal.
//!
//! Key space `0x05`: `0x05 · 'r' · <id>` holds a refusal record (JSON).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::kv::{KvStore, json_records};

const REFUSAL_TAG: u8 = 0x05;
const REFUSAL: u8 = b'r';

/// One standing refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandingRefusal {
    /// Its id (the approval request it was decided on).
    pub id: String,
    /// Whose calls it refuses.
    pub principal: String,
    /// The capsule it refuses.
    pub capsule: String,
    /// The resource it refuses.
    pub resource: String,
    /// The permission it refuses (`write`, `exec`...).
    pub permission: String,
    /// Who decided it.
    pub decided_by: String,
    /// When, milliseconds since the Unix epoch.
    pub decided_ms: i64,
}

/// The standing refusals.
#[derive(Debug, Clone)]
pub struct RefusalStore {
    kv: Arc<dyn KvStore>,
}

fn refusal_key(id: &str) -> Vec<u8> {
    let mut k = vec![REFUSAL_TAG, REFUSAL];
    k.extend_from_slice(id.as_bytes());
    k
}

impl RefusalStore {
    /// A store on `kv`.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv }
    }

    /// Stores `refusal` (replacing one of the same id).
    pub async fn add(&self, refusal: &StandingRefusal) -> Result<(), KvError> {
        let value = serde_json::to_vec(refusal)
            .map_err(|e| crate::kv::corrupt(&refusal_key(&refusal.id), e))?;
        self.kv.set(&refusal_key(&refusal.id), &value).await
    }

    /// Removes refusal `id`; false when there was none.
    pub async fn remove(&self, id: &str) -> Result<bool, KvError> {
        let key = refusal_key(id);
        if !self.kv.exists(&key).await? {
            return Ok(false);
        }
        self.kv.delete(&key).await?;
        Ok(true)
    }

    /// Whether refusal `id` exists.
    pub async fn exists(&self, id: &str) -> Result<bool, KvError> {
        self.kv.exists(&refusal_key(id)).await
    }

    /// Every standing refusal that reads. A record that does not decode is left out and
    /// logged (the operator can still `remove` it by id), so one bad record cannot block
    /// every request.
    pub async fn list(&self) -> Result<Vec<StandingRefusal>, KvError> {
        let raw: Vec<serde_json::Value> =
            json_records(self.kv.as_ref(), &[REFUSAL_TAG, REFUSAL]).await?;
        Ok(raw
            .into_iter()
            .filter_map(|v| match serde_json::from_value(v) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "a standing refusal record does not read");
                    None
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryKvStore;

    #[tokio::test]
    async fn refusals_are_kept_listed_and_removed() {
        let store = RefusalStore::new(Arc::new(MemoryKvStore::new()));
        let refusal = StandingRefusal {
            id: "r1".into(),
            principal: "system".into(),
            capsule: "fetch".into(),
            resource: "net://https/example.com/443".into(),
            permission: "exec".into(),
            decided_by: "system".into(),
            decided_ms: 1,
        };
        store.add(&refusal).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.list().await.ok(), Some(vec![refusal]));
        assert_eq!(store.remove("r1").await.ok(), Some(true));
        assert_eq!(store.remove("r1").await.ok(), Some(false));
        assert_eq!(store.list().await.ok(), Some(vec![]));
    }
}
