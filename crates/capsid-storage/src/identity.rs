//! Users and the platform identities linked to them, on a `KvStore`.
//!
//! Key space `0x02`: `0x02 · 'u' · <16-byte user id>` holds a user record (JSON);
//! `0x02 · 'l' · len(platform) · platform · platform user id` holds the linked user id.

use std::sync::Arc;

use capsid_core::PrincipalId;
use capsid_core::limits::MAX_KV_LIST_LIMIT;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::kv::{KvStore, corrupt, json_records};

const IDENTITY_TAG: u8 = 0x02;
const USER: u8 = b'u';
const LINK: u8 = b'l';

/// Platform and platform user id of the local root user, bootstrapped on first start.
pub const LOCAL_ROOT_LINK: (&str, &str) = ("cli", "local");
/// Platform and platform user id of the user MCP sessions act as by default.
pub const MCP_USER_LINK: (&str, &str) = ("mcp", "default");
/// Longest platform name or platform user id, in bytes.
const MAX_LINK_PART: usize = capsid_core::limits::MAX_LINK_PART_BYTES;

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its id: the principal capabilities are granted to.
    pub id: PrincipalId,
    /// A display name.
    pub name: String,
}

/// A platform identity linked to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The platform ("cli", "slack", ...).
    pub platform: String,
    /// The user's id on that platform.
    pub platform_user_id: String,
    /// The linked user.
    pub user: PrincipalId,
}

/// The identity store.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    kv: Arc<dyn KvStore>,
}

fn user_key(id: &PrincipalId) -> Vec<u8> {
    let mut k = vec![IDENTITY_TAG, USER];
    k.extend_from_slice(id.as_uuid().as_bytes());
    k
}

fn link_prefix(platform: Option<&str>) -> Vec<u8> {
    let mut k = vec![IDENTITY_TAG, LINK];
    if let Some(p) = platform {
        // Callers check the length first (at most MAX_LINK_PART = 255).
        k.push(u8::try_from(p.len()).unwrap_or(u8::MAX));
        k.extend_from_slice(p.as_bytes());
    }
    k
}

fn link_key(platform: &str, platform_user_id: &str) -> Result<Vec<u8>, KvError> {
    for part in [platform, platform_user_id] {
        if part.is_empty() || part.len() > MAX_LINK_PART {
            return Err(KvError::BadKey {
                len: part.len(),
                max: MAX_LINK_PART,
            });
        }
    }
    let mut k = link_prefix(Some(platform));
    k.extend_from_slice(platform_user_id.as_bytes());
    Ok(k)
}

fn decode_link_key(key: &[u8], user: &[u8]) -> Result<Link, KvError> {
    let rest = key.get(2..).ok_or_else(|| corrupt(key, "short link key"))?;
    let (&len, rest) = rest
        .split_first()
        .ok_or_else(|| corrupt(key, "short link key"))?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(corrupt(key, "short link key"));
    }
    let (platform, platform_user_id) = rest.split_at(len);
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| corrupt(key, e));
    let user = uuid::Uuid::from_slice(user).map_err(|e| corrupt(key, e))?;
    Ok(Link {
        platform: utf8(platform)?,
        platform_user_id: utf8(platform_user_id)?,
        user: user.into(),
    })
}

impl IdentityStore {
    /// An identity store on `kv`.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv }
    }

    /// Creates a user.
    pub async fn create_user(&self, name: &str) -> Result<User, KvError> {
        let user = User {
            id: PrincipalId::new(),
            name: name.to_owned(),
        };
        let value = serde_json::to_vec(&user).map_err(|e| corrupt(b"user", e))?;
        self.kv.set(&user_key(&user.id), &value).await?;
        Ok(user)
    }

    /// The user with `id`.
    pub async fn user(&self, id: &PrincipalId) -> Result<Option<User>, KvError> {
        let key = user_key(id);
        match self.kv.get(&key).await? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| corrupt(&key, e)),
        }
    }

    /// Links a platform identity to an existing user. Fails with `Ok(false)` if that identity
    /// is already linked (to anyone): unlink it first.
    pub async fn link(
        &self,
        platform: &str,
        platform_user_id: &str,
        user: &PrincipalId,
    ) -> Result<bool, KvError> {
        if self.user(user).await?.is_none() {
            return Err(KvError::UnknownUser(user.to_string()));
        }
        let key = link_key(platform, platform_user_id)?;
        self.kv
            .compare_and_swap(&key, None, Some(user.as_uuid().as_bytes()))
            .await
    }

    /// Removes a link; returns whether it existed.
    pub async fn unlink(&self, platform: &str, platform_user_id: &str) -> Result<bool, KvError> {
        self.kv.delete(&link_key(platform, platform_user_id)?).await
    }

    /// The user a platform identity is linked to.
    pub async fn resolve(
        &self,
        platform: &str,
        platform_user_id: &str,
    ) -> Result<Option<User>, KvError> {
        let key = link_key(platform, platform_user_id)?;
        let Some(id) = self.kv.get(&key).await? else {
            return Ok(None);
        };
        let id: PrincipalId = uuid::Uuid::from_slice(&id)
            .map_err(|e| corrupt(&key, e))?
            .into();
        self.user(&id).await
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<User>, KvError> {
        json_records(self.kv.as_ref(), &[IDENTITY_TAG, USER]).await
    }

    /// Every link, optionally of one platform only.
    pub async fn links(&self, platform: Option<&str>) -> Result<Vec<Link>, KvError> {
        if let Some(p) = platform
            && (p.is_empty() || p.len() > MAX_LINK_PART)
        {
            return Err(KvError::BadKey {
                len: p.len(),
                max: MAX_LINK_PART,
            });
        }
        let prefix = link_prefix(platform);
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .kv
                .list(&prefix, after.as_deref(), MAX_KV_LIST_LIMIT)
                .await?;
            for key in &page.keys {
                if let Some(user) = self.kv.get(key).await? {
                    out.push(decode_link_key(key, &user)?);
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The local root user (linked as `cli`/`local`), created on first start.
    pub async fn bootstrap_local_root(&self) -> Result<User, KvError> {
        self.bootstrap_linked("root", LOCAL_ROOT_LINK).await
    }

    /// The user MCP sessions act as by default (linked as `mcp`/`default`), created on
    /// first start. It holds nothing until an operator grants it `tool://` capabilities.
    pub async fn bootstrap_mcp_user(&self) -> Result<User, KvError> {
        self.bootstrap_linked("mcp", MCP_USER_LINK).await
    }

    /// The user linked as `link`, created (named `name`) if there is none. Concurrent
    /// callers agree on one user.
    async fn bootstrap_linked(&self, name: &str, link: (&str, &str)) -> Result<User, KvError> {
        let (platform, id) = link;
        if let Some(user) = self.resolve(platform, id).await? {
            return Ok(user);
        }
        let user = User {
            id: PrincipalId::new(),
            name: name.into(),
        };
        let value = serde_json::to_vec(&user).map_err(|e| corrupt(b"user", e))?;
        let key = link_key(platform, id)?;
        // Write the user first; only the caller whose link wins keeps theirs.
        self.kv.set(&user_key(&user.id), &value).await?;
        if self
            .kv
            .compare_and_swap(&key, None, Some(user.id.as_uuid().as_bytes()))
            .await?
        {
            return Ok(user);
        }
        self.kv.delete(&user_key(&user.id)).await?;
        self.resolve(platform, id)
            .await?
            .ok_or_else(|| corrupt(&key, "a bootstrap link vanished during bootstrap"))
    }
}
