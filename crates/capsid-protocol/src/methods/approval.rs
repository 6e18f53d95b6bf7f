//! Params and results of the `approval.*` methods: calls waiting for a person's decision.

use serde::{Deserialize, Serialize};

/// One call waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Its id: what `approval.decide` takes.
    pub id: String,
    /// On whose authority the call runs.
    pub principal: String,
    /// The capsule asking.
    pub capsule: String,
    /// The resource it needs.
    pub resource: String,
    /// What it needs to do to it (`read`, `write`, `exec`...).
    pub permission: String,
    /// The call: host function, permission and resource.
    pub description: String,
    /// blake3 (hex) of the call as described.
    pub digest: String,
    /// When it was asked, ms since the Unix epoch.
    pub requested_ms: i64,
    /// When it is denied if nobody decides, ms since the Unix epoch.
    pub expires_ms: i64,
    /// Who called the tool that asks, when a client did (`user:<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The caller's client session, when it has one: only then may it be decided `session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// `approval.show` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalShowParams {
    /// The request's id.
    pub id: String,
}

/// A decision on an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalDecision {
    /// Allow this one call.
    Once,
    /// Allow it and grant the resource to the capsule until the caller's client session
    /// ends (its last connection to the daemon closes, or the daemon stops).
    Session,
    /// Allow it and grant the resource to the capsule from now on (revocable with
    /// `cap.revoke`).
    Always,
    /// Refuse it.
    Deny,
    /// Refuse it, and the capsule's later requests for the same resource and permission
    /// without asking, until `approval.forget` removes the refusal.
    DenyAlways,
}

/// `approval.decide` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecideParams {
    /// The request's id.
    pub id: String,
    /// The decision.
    pub decision: ApprovalDecision,
    /// Deciding as this user (name or id) rather than the operator: only a request whose
    /// call that user made may be decided so (the MCP bridge asking its client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_user: Option<String>,
}

/// A standing refusal (a `deny-always` decision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalView {
    /// Its id (the request it was decided on): what `approval.forget` takes.
    pub id: String,
    /// Whose calls it refuses.
    pub principal: String,
    /// The capsule it refuses.
    pub capsule: String,
    /// The resource it refuses.
    pub resource: String,
    /// The permission it refuses.
    pub permission: String,
    /// Who decided it.
    pub decided_by: String,
    /// When, ms since the Unix epoch.
    pub decided_ms: i64,
}

/// `approval.forget` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalForgetParams {
    /// The refusal's id.
    pub id: String,
}
