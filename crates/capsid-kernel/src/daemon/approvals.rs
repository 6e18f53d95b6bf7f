//! The daemon's `approval.*` methods: the operator sees and decides calls waiting for a
//! person. Decisions made here are the operator's (the kernel's principal).

use capsid_capsule::{ApprovalRequest, Verdict};
use capsid_protocol::methods::{
    ApprovalDecideParams, ApprovalDecision, ApprovalForgetParams, ApprovalShowParams, ApprovalView,
    RefusalView,
};
use capsid_protocol::{Done, WireError};

use super::server::Shared;
use super::views::kernel_error;

type Answer<T> = Result<T, WireError>;

pub(super) fn view(r: ApprovalRequest) -> ApprovalView {
    ApprovalView {
        id: r.id,
        principal: r.principal.to_string(),
        capsule: r.capsule.to_string(),
        resource: r.resource,
        permission: r.permission.to_string(),
        description: r.description,
        digest: r.digest,
        requested_ms: r.requested_ms,
        expires_ms: r.expires_ms,
        caller: r.caller.map(|c| c.to_string()),
        session: r.session.map(|s| s.to_string()),
    }
}

/// `approval.list`.
pub(super) fn list(shared: &Shared) -> Vec<ApprovalView> {
    shared.kernel.approvals().into_iter().map(view).collect()
}

/// `approval.show`.
pub(super) fn show(shared: &Shared, p: &ApprovalShowParams) -> Answer<ApprovalView> {
    shared
        .kernel
        .approval(&p.id)
        .map(view)
        .map_err(|e| kernel_error(&e))
}

/// `approval.decide`.
pub(super) async fn decide(shared: &Shared, p: ApprovalDecideParams) -> Answer<ApprovalView> {
    let verdict = match p.decision {
        ApprovalDecision::Once => Verdict::Once,
        ApprovalDecision::Session => Verdict::Session,
        ApprovalDecision::Always => Verdict::Always,
        ApprovalDecision::Deny => Verdict::Deny,
        ApprovalDecision::DenyAlways => Verdict::DenyAlways,
    };
    let kernel = &shared.kernel;
    let by = match p.as_user.as_deref() {
        None => kernel.principal(),
        Some(user) => super::methods::principal(shared, Some(user)).await?,
    };
    kernel
        .decide_approval(&p.id, verdict, by)
        .await
        .map(view)
        .map_err(|e| kernel_error(&e))
}

/// `approval.refusals`.
pub(super) async fn refusals(shared: &Shared) -> Answer<Vec<RefusalView>> {
    let all = shared
        .kernel
        .refusals()
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(all
        .into_iter()
        .map(|r| RefusalView {
            id: r.id,
            principal: r.principal,
            capsule: r.capsule,
            resource: r.resource,
            permission: r.permission,
            decided_by: r.decided_by,
            decided_ms: r.decided_ms,
        })
        .collect())
}

/// `approval.forget`.
pub(super) async fn forget(shared: &Shared, p: ApprovalForgetParams) -> Answer<Done> {
    shared
        .kernel
        .forget_refusal(&p.id)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Done {})
}
