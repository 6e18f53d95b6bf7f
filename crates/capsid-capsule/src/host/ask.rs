//! Asking instead of denying: a check that fails on a resource the capsule may `ask` for
//! becomes an approval request ([`crate::approval`]), and the call waits for a person with
//! its deadline suspended. Each step is recorded: the request (`approval.requested`), a
//! grant an `always` makes (`cap.grant`, naming the approval), and a request that ended
//! undecided (`approval.expired`); the decision itself is recorded by whoever decides.

use capsid_audit::{Decision, action};
use capsid_capabilities::{DenyReason, Permissions, Resource};

use super::{CapsuleContext, audit_text};
use crate::approval::{ApprovalRequest, Outcome, Refused, Verdict};
use crate::control::CURRENT_CALL;

/// The bus topic each new approval request is published on (JSON: id, capsule, resource,
/// permission, description, expiry).
pub const APPROVAL_REQUESTED_TOPIC: &str = "kernel.approval.requested";

/// What asking came to.
pub(crate) enum Asked {
    /// The resource is not askable, or is granted already: check it as usual.
    Unasked,
    /// A person allowed it (`once` or `always`), approval `id`.
    Approved { id: String },
    /// Refused: denied, timed out, withdrawn, or too many waiting.
    Refused,
}

impl CapsuleContext {
    /// Whether the manifest lets this capsule ask for `resource`.
    fn may_ask(&self, resource: &str) -> bool {
        !self.ask.is_empty()
            && Resource::parse(resource).is_ok_and(|r| self.ask.iter().any(|p| p.matches(&r)))
    }

    /// Asks a person for `permission` on `resource` when the capsule may ask for it and
    /// holds no grant for it; [`Asked::Unasked`] otherwise. `op` is the host function
    /// (its audit action).
    pub(crate) async fn ask_if_needed(
        &self,
        op: &str,
        permission: Permissions,
        resource: &str,
    ) -> Asked {
        if !self.may_ask(resource) {
            return Asked::Unasked;
        }
        let services = &self.services;
        match services
            .capabilities
            .check(&self.subject, permission, resource)
            .await
        {
            capsid_capabilities::Decision::Deny(DenyReason::NoGrant) => {}
            _ => return Asked::Unasked,
        }
        let now = now_ms();
        let timeout = services.approvals.timeout();
        let description = format!("{op}: {permission} {}", audit_text(resource));
        let digest = blake3::hash(format!("{op}\0{permission}\0{resource}").as_bytes());
        let request = ApprovalRequest {
            id: uuid::Uuid::now_v7().to_string(),
            principal: self.subject.principal,
            capsule: self.name.clone(),
            resource: resource.to_owned(),
            permission,
            description,
            digest: digest.to_hex().to_string(),
            requested_ms: now,
            expires_ms: now.saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
        };
        let waiting = match services.approvals.open(request) {
            Ok(w) => w,
            Err(Refused::TooMany { first }) => {
                if first {
                    let details =
                        serde_json::json!({ "reason": "too many approval requests waiting" });
                    let _ = self
                        .note(action::APPROVAL_REFUSED, resource, Decision::Deny, &details)
                        .await;
                }
                return Asked::Refused;
            }
        };
        let id = waiting.request.id.clone();
        let details = serde_json::json!({
            "id": id,
            "description": waiting.request.description,
            "digest": waiting.request.digest,
            "permission": permission.to_string(),
            "expires_ms": waiting.request.expires_ms,
        });
        if self
            .note(
                action::APPROVAL_REQUESTED,
                resource,
                Decision::Info,
                &details,
            )
            .await
            .is_err()
        {
            // Unrecorded, it may not wait for anyone: withdrawn, and so denied.
            let _ = services.approvals.decide(&id, Verdict::Deny);
            return Asked::Refused;
        }
        let mut event = details;
        event["capsule"] = self.name.to_string().into();
        event["resource"] = resource.into();
        let _ = services.bus.publish(
            APPROVAL_REQUESTED_TOPIC,
            event.to_string().into_bytes(),
            None,
        );
        let suspended = CURRENT_CALL.try_with(crate::CallControl::suspend).ok();
        let outcome = services.approvals.wait(waiting).await;
        drop(suspended);
        match outcome {
            Outcome::Decided(Verdict::Once) => Asked::Approved { id },
            Outcome::Decided(Verdict::Always) => {
                match self.grant_approved(&id, permission, resource).await {
                    Ok(()) => Asked::Approved { id },
                    Err(()) => Asked::Refused,
                }
            }
            Outcome::Decided(Verdict::Deny) => Asked::Refused,
            Outcome::TimedOut | Outcome::Withdrawn => {
                let reason = if outcome == Outcome::TimedOut {
                    "nobody decided in time"
                } else {
                    "withdrawn: the capsule went away"
                };
                let details = serde_json::json!({ "id": id, "reason": reason });
                let _ = self
                    .note(action::APPROVAL_EXPIRED, resource, Decision::Deny, &details)
                    .await;
                Asked::Refused
            }
        }
    }

    /// An `always` decision: the resource granted to this capsule, recorded (naming the
    /// approval) before it is stored.
    async fn grant_approved(
        &self,
        approval: &str,
        permission: Permissions,
        resource: &str,
    ) -> Result<(), ()> {
        let store = &self.services.capabilities;
        let cap = store
            .issue(
                self.subject.principal,
                Some(self.name.clone()),
                resource,
                permission,
                None,
                false,
            )
            .map_err(|_| ())?;
        let details = serde_json::json!({
            "id": cap.id.to_string(),
            "pattern": cap.pattern.as_str(),
            "permissions": cap.permissions.to_string(),
            "approval": approval,
        });
        self.note(action::CAP_GRANT, resource, Decision::Allow, &details)
            .await
            .map_err(|_| ())?;
        store.persist(&cap).await.map_err(|_| ())
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
