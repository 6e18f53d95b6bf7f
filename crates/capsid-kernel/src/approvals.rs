//! Deciding approval requests: the operator (through the daemon or the API) decides what a
//! capsule asked for. The request is claimed (nobody else can decide it), the decision
//! recorded naming who decided, then the waiting call hears it; a call that ended meanwhile
//! gets a second entry saying the decision changed nothing.

use capsid_audit::action;
use capsid_capsule::{ApprovalRequest, Verdict};
use capsid_core::Principal;
use serde_json::json;

use crate::error::KernelError;
use crate::kernel::Kernel;

impl Kernel {
    /// Approval requests waiting for a decision, oldest first.
    pub fn approvals(&self) -> Vec<ApprovalRequest> {
        self.registry().services().approvals.list()
    }

    /// Pending approval request `id`.
    pub fn approval(&self, id: &str) -> Result<ApprovalRequest, KernelError> {
        self.registry()
            .services()
            .approvals
            .get(id)
            .ok_or_else(|| capsid_capsule::ApprovalError::NotPending(id.to_owned()).into())
    }

    /// Decides request `id` as `by`. The request is taken first, so of concurrent decisions
    /// exactly one goes on (the others fail with
    /// [`capsid_capsule::ApprovalError::NotPending`]); that one is recorded
    /// (`approval.decided`) before the waiting call hears it. A decision that cannot be
    /// recorded is not taken: the call is denied.
    pub async fn decide_approval(
        &self,
        id: &str,
        verdict: Verdict,
        by: Principal,
    ) -> Result<ApprovalRequest, KernelError> {
        self.open_recording()?;
        let approvals = &self.registry().services().approvals;
        // Anyone but the operator decides only what their own calls asked.
        let only_for = (by != self.principal()).then_some(by);
        let claimed = approvals.claim_for(id, verdict, only_for)?;
        let request = claimed.request.clone();
        let details = json!({
            "id": id,
            "decision": verdict.as_str(),
            "by": by.to_string(),
            "capsule": request.capsule.as_str(),
            "digest": request.digest,
        });
        // Unanswered when the record fails: dropping the claim denies the call.
        self.note(action::APPROVAL_DECIDED, &request.resource, details)
            .await?;
        if verdict == Verdict::DenyAlways {
            let refusal = capsid_storage::StandingRefusal {
                id: id.to_owned(),
                principal: request.principal.to_string(),
                capsule: request.capsule.to_string(),
                resource: request.resource.clone(),
                permission: request.permission.to_string(),
                decided_by: by.to_string(),
                decided_ms: capsid_core::time::now_ms(),
            };
            if let Err(e) = approvals.refuse_always(refusal.clone()).await {
                // The call is still denied; the "always" is lost, and the operator told.
                claimed.answer(Verdict::Deny);
                let failed = json!({ "id": id, "error": e.to_string() });
                let _ = self
                    .note(action::OPERATOR_FAILED, &request.resource, failed)
                    .await;
                return Err(e.into());
            }
            // What else waits for the same thing is refused with it, unasked.
            approvals.deny_covered(&refusal);
        }
        if !claimed.answer(verdict) {
            // The call ended while the decision was being recorded: it changed nothing.
            let gone =
                json!({ "id": id, "reason": "the call had ended; the decision changed nothing" });
            let _ = self
                .note(action::OPERATOR_FAILED, &request.resource, gone)
                .await;
            return Err(capsid_capsule::ApprovalError::NotPending(id.to_owned()).into());
        }
        Ok(request)
    }
}

impl Kernel {
    /// The standing refusals (`deny-always` decisions).
    pub async fn refusals(&self) -> Result<Vec<capsid_storage::StandingRefusal>, KernelError> {
        Ok(self.registry().services().approvals.refusals().await?)
    }

    /// Removes standing refusal `id` (recorded first): the capsule may ask again.
    pub async fn forget_refusal(&self, id: &str) -> Result<(), KernelError> {
        self.open_recording()?;
        let approvals = &self.registry().services().approvals;
        if !approvals.has_refusal(id).await? {
            return Err(capsid_capsule::ApprovalError::NoSuchRefusal(id.to_owned()).into());
        }
        self.record_then(
            action::APPROVAL_REFUSAL_FORGET,
            &format!("refusal://{id}"),
            json!({}),
            async {
                approvals.forget_refusal(id).await?;
                Ok(())
            },
        )
        .await
    }
}
