//! What the operator changes by hand: capability grants and revocations, identity links,
//! and reviewed MCP tool definitions.
//! Each is recorded durably *before* it takes effect, so no change is ever unrecorded; one
//! that then fails gets a second entry ([`action::OPERATOR_FAILED`]) saying why.

use capsid_audit::action;
use capsid_capabilities::{CapabilityId, Permissions};
use capsid_core::{CapsuleId, Principal, PrincipalId};
use serde_json::json;

use crate::error::KernelError;
use crate::kernel::Kernel;

impl Kernel {
    /// The tools of MCP capsule `name` that wait for review.
    pub fn review(
        &self,
        name: &CapsuleId,
    ) -> Result<Vec<capsid_capsule::PendingTool>, KernelError> {
        let mcp = self
            .registry()
            .mcp(name)
            .ok_or_else(|| KernelError::NotMcp(name.clone()))?;
        Ok(mcp.pending())
    }

    /// Accepts the reviewed definitions `digests` of MCP capsule `name`: the operator's
    /// acceptance is recorded (`mcp.tool.review.accept`), then each definition (its own
    /// `mcp.tool.pinned`) before it is pinned; it is callable from then on. A digest no longer
    /// pending refuses the whole acceptance before anything is pinned.
    pub async fn accept_review(
        &self,
        name: &CapsuleId,
        digests: &[String],
    ) -> Result<Vec<String>, KernelError> {
        self.open_recording()?;
        let mcp = self
            .registry()
            .mcp(name)
            .ok_or_else(|| KernelError::NotMcp(name.clone()))?;
        let details = json!({ "digests": digests });
        self.record_then(
            action::MCP_TOOL_REVIEW_ACCEPT,
            &format!("capsule://{name}"),
            details,
            async { Ok(mcp.accept(digests).await?) },
        )
        .await
    }

    /// Grants `to` (through `capsule`, or any capsule) `permissions` on `pattern`.
    pub async fn grant(
        &self,
        to: Principal,
        capsule: Option<CapsuleId>,
        pattern: &str,
        permissions: Permissions,
    ) -> Result<CapabilityId, KernelError> {
        self.open_recording()?;
        let store = self.capabilities();
        let cap = store.issue(to, capsule.clone(), pattern, permissions, None, false)?;
        let details = json!({
            "id": cap.id.to_string(),
            "to": to.to_string(),
            "capsule": capsule.as_ref().map(CapsuleId::as_str),
            "permissions": permissions.to_string(),
        });
        self.record_then(action::CAP_GRANT, pattern, details, async {
            store.persist(&cap).await.map_err(KernelError::from)
        })
        .await?;
        Ok(cap.id)
    }

    /// Revokes capability `id`: checks that start after this returns ignore it.
    pub async fn revoke(&self, id: CapabilityId) -> Result<(), KernelError> {
        self.open_recording()?;
        let store = self.capabilities();
        self.record_then(
            action::CAP_REVOKE,
            &format!("capability://{id}"),
            json!({}),
            async { store.revoke(id).await.map_err(KernelError::from) },
        )
        .await
    }

    /// Links `platform_user_id` on `platform` to `user`. A link that exists already is
    /// refused ([`KernelError::AlreadyLinked`]), never silently kept.
    pub async fn link_identity(
        &self,
        platform: &str,
        platform_user_id: &str,
        user: &PrincipalId,
    ) -> Result<(), KernelError> {
        self.open_recording()?;
        let identity = self.identity();
        // Refused before anything is recorded when it cannot be done at all.
        if identity.user(user).await?.is_none() {
            return Err(capsid_storage::KvError::UnknownUser(user.to_string()).into());
        }
        self.record_then(
            action::IDENTITY_LINK,
            &format!("identity://{platform}/{platform_user_id}"),
            json!({ "user": user.to_string() }),
            async {
                if identity.link(platform, platform_user_id, user).await? {
                    Ok(())
                } else {
                    Err(KernelError::AlreadyLinked {
                        platform: platform.to_owned(),
                        platform_user_id: platform_user_id.to_owned(),
                    })
                }
            },
        )
        .await
    }

    /// Records `action` on `resource`, then runs `effect`: nothing runs unrecorded, and an
    /// effect that fails after its record is recorded as failed (best effort: the first
    /// entry already says it was attempted).
    pub(crate) async fn record_then<T>(
        &self,
        action: &str,
        resource: &str,
        details: serde_json::Value,
        effect: impl Future<Output = Result<T, KernelError>>,
    ) -> Result<T, KernelError> {
        self.note(action, resource, details).await?;
        match effect.await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.record_failure(action, resource, &e).await;
                Err(e)
            }
        }
    }
}
