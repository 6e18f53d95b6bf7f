//! Bearer tokens of the MCP bridge's HTTP transport: minted for a user (shown once, stored
//! hashed), listed, revoked, each change recorded before it takes effect; and resolved,
//! request by request, to the user they act as.

use capsid_audit::action;
use capsid_core::PrincipalId;
use capsid_storage::{BearerToken, BearerTokenStore, MintedToken, User};
use serde_json::json;

use crate::error::KernelError;
use crate::kernel::Kernel;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Kernel {
    fn bearer_tokens(&self) -> BearerTokenStore {
        BearerTokenStore::new(self.parts().kv.clone())
    }

    /// Mints a bearer token acting as `user`: recorded (its id and user, never the token),
    /// then stored hashed. The token in the answer is the only copy.
    pub async fn mint_token(
        &self,
        user: PrincipalId,
        label: Option<String>,
    ) -> Result<MintedToken, KernelError> {
        self.open_recording()?;
        if self.identity().user(&user).await?.is_none() {
            return Err(KernelError::UnknownUser(user.to_string()));
        }
        let minted = BearerTokenStore::mint(user, label, now_ms())?;
        let store = self.bearer_tokens();
        self.record_then(
            action::MCP_TOKEN_CREATE,
            &format!("token://{}", minted.record.id),
            json!({ "user": user.to_string(), "label": minted.record.label }),
            async { store.save(&minted.record).await.map_err(KernelError::from) },
        )
        .await?;
        Ok(minted)
    }

    /// Every live bearer token, with its user (none if the user is gone).
    pub async fn tokens(&self) -> Result<Vec<(BearerToken, Option<User>)>, KernelError> {
        let mut out = Vec::new();
        for token in self.bearer_tokens().list().await? {
            let user = self.identity().user(&token.user).await?;
            out.push((token, user));
        }
        Ok(out)
    }

    /// Revokes bearer token `id`: requests presenting it after this returns are refused.
    pub async fn revoke_token(&self, id: &str) -> Result<(), KernelError> {
        self.open_recording()?;
        let store = self.bearer_tokens();
        if store.get(id).await?.is_none() {
            return Err(KernelError::UnknownToken(id.to_owned()));
        }
        self.record_then(
            action::MCP_TOKEN_REVOKE,
            &format!("token://{id}"),
            json!({}),
            async {
                if store.revoke(id).await? {
                    Ok(())
                } else {
                    Err(KernelError::UnknownToken(id.to_owned()))
                }
            },
        )
        .await
    }

    /// The user `token` acts as: `None` for anything but a live token of an existing user.
    pub async fn resolve_token(&self, token: &str) -> Result<Option<User>, KernelError> {
        let Some(record) = self.bearer_tokens().resolve(token).await? else {
            return Ok(None);
        };
        Ok(self.identity().user(&record.user).await?)
    }
}
