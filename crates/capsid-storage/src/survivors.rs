//! Persistent processes and pipelines that come back after a restart of the runtime: what
//! each was started as (its spec, opaque here), whose it is, and the hash of its id, so it is
//! started again under the same id once its capsule is loaded. The id itself is never kept.
//!
//! Key space `0x07`: `0x07 · len(capsule) · capsule · id hash (64 hex characters)` holds a
//! [`Survivor`] (JSON).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::kv::{KvStore, corrupt, json_records};

const SURVIVOR_TAG: u8 = 0x07;

/// One persistent process or pipeline to bring back. Its `Debug` leaves out the spec (its
/// environment may hold secrets).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survivor {
    /// The capsule that started it.
    pub capsule: String,
    /// On whose authority it runs (`Principal`'s display form).
    pub principal: String,
    /// The hash of its id (domain `PROCESS_ID`), hex.
    pub id_hash: String,
    /// The generation of its last run (its next run's is greater).
    pub generation: u64,
    /// What it runs and its options (the process host's own form).
    pub spec: serde_json::Value,
    /// When it was first started, in ms since the Unix epoch.
    pub started_ms: u64,
}

impl std::fmt::Debug for Survivor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Survivor")
            .field("capsule", &self.capsule)
            .field("principal", &self.principal)
            .field("id_hash", &self.id_hash)
            .field("generation", &self.generation)
            .field("started_ms", &self.started_ms)
            .finish_non_exhaustive()
    }
}

/// The survivors, per capsule.
#[derive(Debug, Clone)]
pub struct SurvivorStore {
    kv: Arc<dyn KvStore>,
}

fn capsule_prefix(capsule: &str) -> Vec<u8> {
    let mut k = vec![SURVIVOR_TAG];
    // Capsule names are at most 64 bytes, so one length byte keeps names apart.
    k.push(u8::try_from(capsule.len()).unwrap_or(u8::MAX));
    k.extend_from_slice(capsule.as_bytes());
    k
}

fn survivor_key(capsule: &str, id_hash: &str) -> Vec<u8> {
    let mut k = capsule_prefix(capsule);
    k.extend_from_slice(id_hash.as_bytes());
    k
}

impl SurvivorStore {
    /// A store on `kv`.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv }
    }

    /// Stores `survivor`, replacing what was kept under its id hash.
    pub async fn put(&self, survivor: &Survivor) -> Result<(), KvError> {
        let key = survivor_key(&survivor.capsule, &survivor.id_hash);
        let value = serde_json::to_vec(survivor).map_err(|e| corrupt(&key, e))?;
        self.kv.set(&key, &value).await
    }

    /// The survivor `id_hash` of `capsule`, if there is one.
    pub async fn get(&self, capsule: &str, id_hash: &str) -> Result<Option<Survivor>, KvError> {
        let key = survivor_key(capsule, id_hash);
        match self.kv.get(&key).await? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt(&key, e)),
        }
    }

    /// Forgets the survivor `id_hash` of `capsule`; whether there was one.
    pub async fn remove(&self, capsule: &str, id_hash: &str) -> Result<bool, KvError> {
        self.kv.delete(&survivor_key(capsule, id_hash)).await
    }

    /// Every survivor of `capsule`.
    pub async fn list(&self, capsule: &str) -> Result<Vec<Survivor>, KvError> {
        json_records(self.kv.as_ref(), &capsule_prefix(capsule)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryKvStore;

    fn survivor(capsule: &str, id_hash: &str, generation: u64) -> Survivor {
        Survivor {
            capsule: capsule.into(),
            principal: "system".into(),
            id_hash: id_hash.into(),
            generation,
            spec: serde_json::json!({ "program": "sleep" }),
            started_ms: 1,
        }
    }

    #[tokio::test]
    async fn survivors_are_kept_per_capsule_replaced_and_removed() {
        let store = SurvivorStore::new(Arc::new(MemoryKvStore::new()));
        for s in [
            survivor("runner", "aa", 1),
            survivor("runner", "bb", 2),
            // A capsule whose name is a prefix of another's sees only its own.
            survivor("run", "nerbb", 3),
            survivor("runner", "aa", 4),
        ] {
            store.put(&s).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let mine = store.list("runner").await.unwrap_or_else(|e| panic!("{e}"));
        let generations: Vec<u64> = mine.iter().map(|s| s.generation).collect();
        assert_eq!(generations, vec![4, 2]);
        let got = store
            .get("runner", "bb")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.map(|s| s.generation), Some(2));
        assert!(
            store
                .remove("runner", "aa")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            !store
                .remove("runner", "aa")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
        let left = store.list("runner").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(left.len(), 1);
        assert_eq!(
            store
                .list("run")
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .len(),
            1
        );
    }
}
