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
        let claimed = self.registry().services().approvals.claim(id)?;
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
