//! Bearer tokens for the MCP bridge's HTTP transport, on a `KvStore`: each names the user
//! its requests act as. Only the blake3 of a token's secret is stored; the token itself is
//! shown once, when it is minted.
//!
//! Key space `0x04`: `0x04 · 't' · <8-byte token id>` holds a token record (JSON).
//! A token reads `capsid_<16 hex id>_<64 hex secret>`: the id finds the record, the secret
//! is compared by hash (in constant time).

use std::sync::Arc;

use capsid_core::PrincipalId;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::kv::{KvStore, corrupt, json_records};

const BEARER_TAG: u8 = 0x04;
const TOKEN: u8 = b't';
const PREFIX: &str = "capsid_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A stored token: who it acts as, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BearerToken {
    /// Its id (16 hex digits), shown by `token ls` and named by `token revoke`.
    pub id: String,
    /// The user its requests act as.
    pub user: PrincipalId,
    /// When it was minted, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// What the operator called it, if anything.
    #[serde(default)]
    pub label: Option<String>,
    /// blake3 of the secret, hex.
    secret_blake3: String,
}

/// A token just minted: the record to store, and the token to show once.
pub struct MintedToken {
    /// The record.
    pub record: BearerToken,
    /// The token, for the operator to hand to the client. Never stored nor logged.
    pub token: String,
}

impl std::fmt::Debug for MintedToken {
    /// The record only: the token is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct MintError(String);

/// The bearer token store.
#[derive(Debug, Clone)]
pub struct BearerTokenStore {
    kv: Arc<dyn KvStore>,
}

fn token_key(id: [u8; ID_BYTES]) -> Vec<u8> {
    let mut k = vec![BEARER_TAG, TOKEN];
    k.extend_from_slice(&id);
    k
}

fn parse_id(id: &str) -> Option<[u8; ID_BYTES]> {
    let mut out = [0u8; ID_BYTES];
    hex::decode_to_slice(id, &mut out).ok()?;
    Some(out)
}

impl BearerTokenStore {
    /// A store on `kv`.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv }
    }

    /// A new token for `user`, not yet stored ([`BearerTokenStore::save`] stores it, so the
    /// caller can record the minting first).
    pub fn mint(
        user: PrincipalId,
        label: Option<String>,
        created_ms: u64,
    ) -> Result<MintedToken, MintError> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id).map_err(|e| MintError(e.to_string()))?;
        getrandom::fill(&mut secret).map_err(|e| MintError(e.to_string()))?;
        let id = hex::encode(id);
        let secret = hex::encode(secret);
        Ok(MintedToken {
            token: format!("{PREFIX}{id}_{secret}"),
            record: BearerToken {
                id,
                user,
                created_ms,
                label,
                secret_blake3: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            },
        })
    }

    /// Stores a minted token's record.
    pub async fn save(&self, record: &BearerToken) -> Result<(), KvError> {
        let id = parse_id(&record.id).ok_or_else(|| corrupt(b"token", "bad id"))?;
        let value = serde_json::to_vec(record).map_err(|e| corrupt(b"token", e))?;
        self.kv.set(&token_key(id), &value).await
    }

    /// The token record `id` names.
    pub async fn get(&self, id: &str) -> Result<Option<BearerToken>, KvError> {
        let Some(id) = parse_id(id) else {
            return Ok(None);
        };
        let key = token_key(id);
        match self.kv.get(&key).await? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt(&key, e)),
        }
    }

    /// The record of `token`, if it is a live token: malformed, unknown, revoked and wrong
    /// secrets are all `None` alike.
    pub async fn resolve(&self, token: &str) -> Result<Option<BearerToken>, KvError> {
        let Some((id, secret)) = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
        else {
            return Ok(None);
        };
        let Some(record) = self.get(id).await? else {
            return Ok(None);
        };
        let Ok(stored) = blake3::Hash::from_hex(&record.secret_blake3) else {
            return Err(corrupt(id.as_bytes(), "bad secret hash"));
        };
        // `blake3::Hash` compares in constant time.
        Ok((blake3::hash(secret.as_bytes()) == stored).then_some(record))
    }

    /// Removes token `id`; whether it existed.
    pub async fn revoke(&self, id: &str) -> Result<bool, KvError> {
        match parse_id(id) {
            Some(id) => self.kv.delete(&token_key(id)).await,
            None => Ok(false),
        }
    }

    /// Every live token.
    pub async fn list(&self) -> Result<Vec<BearerToken>, KvError> {
        json_records(self.kv.as_ref(), &[BEARER_TAG, TOKEN]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryKvStore;

    fn store() -> BearerTokenStore {
        BearerTokenStore::new(Arc::new(MemoryKvStore::new()))
    }

    #[tokio::test]
    async fn a_saved_token_resolves_to_its_user_and_nothing_else_does() {
        let store = store();
        let user = PrincipalId::new();
        let minted = BearerTokenStore::mint(user, Some("laptop".into()), 7)
            .unwrap_or_else(|e| panic!("{e}"));
        // Not stored yet: not a token.
        assert_eq!(store.resolve(&minted.token).await.ok().flatten(), None);
        store
            .save(&minted.record)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let found = store.resolve(&minted.token).await.ok().flatten();
        assert_eq!(found.map(|r| r.user), Some(user));
        // The secret is not stored.
        let listed = store.list().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.len(), 1);
        let secret = minted.token.rsplit('_').next().unwrap_or_default();
        assert!(
            !serde_json::to_string(&listed)
                .unwrap_or_default()
                .contains(secret)
        );
        // A wrong secret, a wrong id, garbage: none resolves.
        let mut wrong = minted.token.clone();
        let last = wrong.pop().unwrap_or('0');
        wrong.push(if last == '0' { '1' } else { '0' });
        for bad in [
            wrong.as_str(),
            "capsid_0000000000000000_00",
            "capsid_",
            "",
            "Bearer x",
        ] {
            assert_eq!(store.resolve(bad).await.ok().flatten(), None, "{bad}");
        }
        // Revoked: gone.
        assert!(store.revoke(&minted.record.id).await.unwrap_or(false));
        assert_eq!(store.resolve(&minted.token).await.ok().flatten(), None);
        assert!(!store.revoke(&minted.record.id).await.unwrap_or(true));
    }
}
