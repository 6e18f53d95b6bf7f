//! Asking instead of denying: a check that fails on a resource the capsule may `ask` for
//! becomes an approval request ([`crate::approval`]), and the call waits for a person with
//! its deadline suspended. Each step is recorded: the request (`approval.requested`), a
//! grant an `always` makes (`cap.grant`, naming the approval), and a request that ended
//! undecided (`approval.expired`); the decision itself is recorded by whoever decides.

use std::fmt::Write as _;

use capsid_audit::{Decision, action};
use capsid_capabilities::{Permissions, Resource};

use capsid_core::ClientSessionId;
use capsid_core::limits::MAX_APPROVAL_REASON_BYTES;

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
    /// A person allowed it, approval `id`.
    Approved { id: String, verdict: Verdict },
    /// Refused: denied, timed out, withdrawn, or too many waiting.
    Refused,
}

/// What the person is shown of a call, and its digest: blake3 of the description, the
/// resource and (for a write) the whole content, so an approval of one write's bytes is
/// never taken for another's.
fn describe(
    op: &str,
    permission: Permissions,
    resource: &str,
    note: Option<&str>,
    carries: Option<&[&[u8]]>,
) -> (String, String) {
    let mut description = format!("{op}: {permission} {}", audit_text(resource));
    if let Some(why) = note {
        let _ = write!(description, " ({})", audit_text(why));
    }
    let content = carries.map(|parts| {
        let mut hash = blake3::Hasher::new();
        for part in parts {
            hash.update(&(part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        (
            parts.iter().map(|p| p.len()).sum::<usize>(),
            hash.finalize(),
        )
    });
    if let Some((len, hash)) = &content {
        let hex = hash.to_hex();
        let _ = write!(description, " [{len} bytes, blake3 {}…]", &hex[..16]);
    }
    let mut digest = blake3::Hasher::new();
    for part in [description.as_bytes(), resource.as_bytes()] {
        digest.update(&(part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    if let Some((_, hash)) = &content {
        digest.update(hash.as_bytes());
    }
    (description, digest.finalize().to_hex().to_string())
}

/// A request that was waited on, for [`CapsuleContext::settle`].
struct Asking<'a> {
    id: String,
    permission: Permissions,
    resource: &'a str,
    /// The host function that asked.
    op: &'a str,
    /// Asked ahead (`approval.request`), not by a failed check.
    ahead: bool,
    session: Option<ClientSessionId>,
}

/// How long an approved grant lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lasting {
    /// One use.
    Once,
    /// Until the client session ends.
    Session(ClientSessionId),
    /// Until revoked.
    Always,
}

/// The audit action of a capsule asking ahead (`approval.request`).
const ASK_AHEAD: &str = "approval.request";

/// `approval.request` found nothing to ask: the capsule holds a grant already.
pub(crate) struct AlreadyGranted;

impl CapsuleContext {
    /// Whether the manifest lets this capsule ask for `resource`.
    fn may_ask(&self, resource: &str) -> bool {
        !self.ask.is_empty()
            && Resource::parse(resource).is_ok_and(|r| self.ask.iter().any(|p| p.matches(&r)))
    }

    /// Asks a person for `permission` on `resource` when the capsule may ask for it and
    /// holds no grant for it; [`Asked::Unasked`] otherwise. `op` is the host function
    /// (its audit action); `note` says what the call does, `carries` the bytes it would
    /// write (counted and hashed into the request's digest, never shown).
    pub(crate) async fn ask_if_needed(
        &self,
        op: &str,
        permission: Permissions,
        resource: &str,
        note: Option<&str>,
        carries: Option<&[&[u8]]>,
    ) -> Asked {
        if !self.may_ask(resource) {
            return Asked::Unasked;
        }
        // Deciding nothing: a single-use grant is spent by the check that follows.
        if self
            .services
            .capabilities
            .would_allow(&self.subject_now(), permission, resource)
            .await
        {
            return Asked::Unasked;
        }
        self.ask(op, permission, resource, note, carries, false)
            .await
    }

    /// `approval.request`: asks ahead for `permission` on `resource`, telling the person
    /// `reason`. Not askable is denied at once (recorded); held already is said so.
    pub(crate) async fn ask_ahead(
        &self,
        permission: Permissions,
        resource: &str,
        reason: &str,
    ) -> Result<Verdict, AlreadyGranted> {
        if !self.may_ask(resource) {
            self.record_refusal(ASK_AHEAD, resource, "not listed under [capabilities] ask")
                .await;
            return Ok(Verdict::Deny);
        }
        let capabilities = &self.services.capabilities;
        if capabilities
            .would_allow(&self.subject_now(), permission, resource)
            .await
        {
            return Err(AlreadyGranted);
        }
        let mut end = reason.len().min(MAX_APPROVAL_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        match self
            .ask(
                ASK_AHEAD,
                permission,
                resource,
                Some(&reason[..end]),
                None,
                true,
            )
            .await
        {
            Asked::Approved { verdict, .. } => Ok(verdict),
            Asked::Refused | Asked::Unasked => Ok(Verdict::Deny),
        }
    }

    /// Parks a request for `permission` on `resource` made by host function `op` (with
    /// `note` for the person: a reason, or what the call carries) and waits for its
    /// decision. A `once` asked `ahead` becomes a single-use grant, so the action it was
    /// asked for passes its check; asked by a failed check it lets that call through itself.
    async fn ask(
        &self,
        op: &str,
        permission: Permissions,
        resource: &str,
        note: Option<&str>,
        carries: Option<&[&[u8]]>,
        ahead: bool,
    ) -> Asked {
        let services = &self.services;
        // Only a tool call or an event may wait for a person, and not past its budget.
        let Some((suspended, (caller, session))) = CURRENT_CALL
            .try_with(|call| call.suspend().map(|s| (s, call.caller())))
            .ok()
            .flatten()
        else {
            let why = "this call may not wait for a person (not a tool call or event, or it \
                       has waited long enough)";
            self.record_refusal(op, resource, why).await;
            return Asked::Refused;
        };
        let now = capsid_core::time::now_ms();
        let timeout = services.approvals.timeout();
        let (description, digest) = describe(op, permission, resource, note, carries);
        let request = ApprovalRequest {
            id: uuid::Uuid::now_v7().to_string(),
            principal: self.subject.principal,
            capsule: self.name.clone(),
            resource: resource.to_owned(),
            permission,
            description,
            digest,
            requested_ms: now,
            expires_ms: now.saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
            caller,
            session,
        };
        if let Some(refusal) = services.approvals.refused(&request).await {
            let why = format!("a standing refusal ({refusal})");
            self.record_refusal(op, resource, &why).await;
            return Asked::Refused;
        }
        let waiting = match services.approvals.open(request) {
            Ok(w) => w,
            Err(Refused::Closed) => return Asked::Refused,
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
            // Unrecorded, it may not wait for anyone: dropping it withdraws it, unseen.
            return Asked::Refused;
        }
        waiting.reveal();
        // A standing refusal made while this was being recorded covers it too.
        if let Some(refusal) = services.approvals.refused(&waiting.request).await {
            let why = format!("a standing refusal ({refusal})");
            self.record_refusal(op, resource, &why).await;
            return Asked::Refused;
        }
        let _ = CURRENT_CALL.try_with(|call| call.announce(&waiting.request));
        let mut event = details;
        event["capsule"] = self.name.to_string().into();
        event["resource"] = resource.into();
        let _ = services.bus.publish(
            APPROVAL_REQUESTED_TOPIC,
            event.to_string().into_bytes(),
            None,
        );
        let outcome = services.approvals.wait(waiting, timeout).await;
        drop(suspended);
        let asked = Asking {
            id,
            permission,
            resource,
            op,
            ahead,
            session,
        };
        self.settle(outcome, asked).await
    }

    /// What a decision (or none) comes to for the call, recorded where it refuses or
    /// grants.
    async fn settle(&self, outcome: Outcome, asked: Asking<'_>) -> Asked {
        let Asking {
            id,
            permission,
            resource,
            op,
            ahead,
            session,
        } = asked;
        match outcome {
            Outcome::Decided(Verdict::Once) if !ahead => Asked::Approved {
                id,
                verdict: Verdict::Once,
            },
            Outcome::Decided(verdict @ (Verdict::Once | Verdict::Session | Verdict::Always)) => {
                let lasting = match verdict {
                    Verdict::Once => Lasting::Once,
                    Verdict::Session => match session {
                        Some(session) => Lasting::Session(session),
                        // Refused when decided (`claim_for`): no session, nothing to bind.
                        None => return Asked::Refused,
                    },
                    _ => Lasting::Always,
                };
                match self
                    .grant_approved(&id, permission, resource, lasting)
                    .await
                {
                    Ok(()) => Asked::Approved { id, verdict },
                    Err(()) => Asked::Refused,
                }
            }
            Outcome::Decided(Verdict::Deny | Verdict::DenyAlways) => {
                let why = format!("a person denied it (approval {id})");
                self.record_refusal(op, resource, &why).await;
                Asked::Refused
            }
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

    /// A `session` or `always` decision (or a `once` asked ahead): the resource granted to
    /// this capsule, recorded (naming the approval) before it is stored.
    async fn grant_approved(
        &self,
        approval: &str,
        permission: Permissions,
        resource: &str,
        lasting: Lasting,
    ) -> Result<(), ()> {
        let store = &self.services.capabilities;
        let single_use = lasting == Lasting::Once;
        let mut cap = store
            .issue(
                self.subject.principal,
                Some(self.name.clone()),
                resource,
                permission,
                None,
                single_use,
            )
            .map_err(|_| ())?;
        if let Lasting::Session(session) = lasting {
            cap.session = Some(session);
        }
        let details = serde_json::json!({
            "id": cap.id.to_string(),
            "pattern": cap.pattern.as_str(),
            "permissions": cap.permissions.to_string(),
            "single_use": single_use,
            "session": cap.session.map(|s| s.to_string()),
            "approval": approval,
        });
        self.note(action::CAP_GRANT, resource, Decision::Allow, &details)
            .await
            .map_err(|_| ())?;
        store.persist_approved(&cap, approval).await.map_err(|_| ())
    }
}
