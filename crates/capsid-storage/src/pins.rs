//! Pinned tool definitions of MCP capsules: what the operator (or dev trust) accepted for
//! each tool a server lists, so a server that later presents a different definition for a
//! name is noticed and held back until a person reviews it.
//!
//! Key space `0x06`: `0x06 · len(capsule) · capsule · tool` holds a [`PinnedTool`] (JSON).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::kv::{KvStore, corrupt, json_records};

const PIN_TAG: u8 = 0x06;

/// One accepted tool definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedTool {
    /// The capsule.
    pub capsule: String,
    /// The tool's name.
    pub tool: String,
    /// blake3 of its definition (name, description, schemas) in canonical form.
    pub digest: String,
    /// The definition itself, to show what changed.
    pub definition: serde_json::Value,
    /// Who accepted it: `dev` (dev trust pinned it when first seen) or `operator` (accepted
    /// after review).
    pub pinned_by: String,
    /// When, in milliseconds since the Unix epoch.
    pub pinned_ms: i64,
}

/// The pinned definitions.
#[derive(Debug, Clone)]
pub struct ToolPinStore {
    kv: Arc<dyn KvStore>,
}

fn capsule_prefix(capsule: &str) -> Vec<u8> {
    let mut k = vec![PIN_TAG];
    // Capsule names are at most 64 bytes, so one length byte keeps names apart.
    k.push(u8::try_from(capsule.len()).unwrap_or(u8::MAX));
    k.extend_from_slice(capsule.as_bytes());
    k
}

fn pin_key(capsule: &str, tool: &str) -> Vec<u8> {
    let mut k = capsule_prefix(capsule);
    k.extend_from_slice(tool.as_bytes());
    k
}

impl ToolPinStore {
    /// A store on `kv`.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv }
    }

    /// The pin of `tool` of `capsule`, if it has one.
    pub async fn get(&self, capsule: &str, tool: &str) -> Result<Option<PinnedTool>, KvError> {
        let key = pin_key(capsule, tool);
        match self.kv.get(&key).await? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt(&key, e)),
        }
    }

    /// Stores `pin`, replacing the tool's earlier one.
    pub async fn put(&self, pin: &PinnedTool) -> Result<(), KvError> {
        let key = pin_key(&pin.capsule, &pin.tool);
        let value = serde_json::to_vec(pin).map_err(|e| corrupt(&key, e))?;
        self.kv.set(&key, &value).await
    }

    /// Every pin of `capsule`, by tool name.
    pub async fn list(&self, capsule: &str) -> Result<Vec<PinnedTool>, KvError> {
        json_records(self.kv.as_ref(), &capsule_prefix(capsule)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryKvStore;

    fn pin(capsule: &str, tool: &str, digest: &str) -> PinnedTool {
        PinnedTool {
            capsule: capsule.into(),
            tool: tool.into(),
            digest: digest.into(),
            definition: serde_json::json!({ "name": tool }),
            pinned_by: "dev".into(),
            pinned_ms: 1,
        }
    }

    #[tokio::test]
    async fn pins_are_kept_per_capsule_and_replaced() {
        let store = ToolPinStore::new(Arc::new(MemoryKvStore::new()));
        let put = |p: PinnedTool| {
            let store = store.clone();
            async move { store.put(&p).await.unwrap_or_else(|e| panic!("{e}")) }
        };
        put(pin("git", "status", "a")).await;
        put(pin("git", "log", "b")).await;
        // A capsule whose name is a prefix of another's sees only its own pins.
        put(pin("gi", "tstatus", "c")).await;
        put(pin("git", "status", "d")).await;
        let got = store.get("git", "status").await.ok().flatten();
        assert_eq!(got.map(|p| p.digest), Some("d".into()));
        let tools: Vec<_> = store
            .list("git")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|p| p.tool)
            .collect();
        assert_eq!(tools, ["log", "status"]);
        assert_eq!(store.list("gi").await.map(|l| l.len()).ok(), Some(1));
        assert_eq!(store.get("git", "nope").await.ok(), Some(None));
    }
}
