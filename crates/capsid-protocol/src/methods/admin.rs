//! Params and results of the audit, capability, identity and daemon methods.

use std::path::PathBuf;

use capsid_core::CapsuleId;
use capsid_core::limits::MAX_AUDIT_TAIL;
use serde::{Deserialize, Deserializer, Serialize};

/// `audit.verify`: whether the log verifies, and what is wrong when it does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Whether every chain and signature verified.
    pub valid: bool,
    /// Entries read.
    pub entries: u64,
    /// Chains read.
    pub chains: usize,
    /// Each problem, in one line naming its chain and sequence.
    pub problems: Vec<String>,
    /// For `audit.verify.lattice`: what was checked against the heads anchored off-host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchored: Option<AnchoredView>,
}

/// What `audit.verify.lattice` checked against the lattice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchoredView {
    /// Anchors this host published, read back.
    pub anchors: usize,
    /// Distinct heads they anchor, each checked against the log.
    pub heads: usize,
}

/// `audit.tail` params.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailParams {
    /// How many entries (at most `MAX_AUDIT_TAIL`).
    #[serde(default = "default_tail", deserialize_with = "tail_count")]
    pub n: u32,
}

impl Default for TailParams {
    fn default() -> Self {
        Self { n: default_tail() }
    }
}

fn default_tail() -> u32 {
    20
}

fn tail_count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n > MAX_AUDIT_TAIL {
        return Err(serde::de::Error::custom(format!(
            "n is {n}, over the limit of {MAX_AUDIT_TAIL}"
        )));
    }
    Ok(n)
}

/// One audit entry as stored (a view for people, not evidence: `audit.verify` is the check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its chain.
    pub chain: String,
    /// Its sequence number in the chain.
    pub seq: i64,
    /// When it was recorded, in ns since the Unix epoch.
    pub time_ns: i64,
    /// On whose authority.
    pub principal: String,
    /// The capsule involved (empty for none).
    pub capsule: String,
    /// What was done or asked.
    pub action: String,
    /// On what.
    pub resource: String,
    /// `allow`, `deny` or `info`.
    pub decision: String,
    /// Its details, as JSON text.
    pub details: String,
}

/// `audit.export` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// The file to create (absolute; it must not exist).
    pub path: PathBuf,
}

/// `audit.export`: how many entries were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportResult {
    /// Entries written.
    pub entries: u64,
}

/// `cap.grant` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantParams {
    /// The resource pattern, e.g. `fs://workspace/notes/**`.
    pub pattern: String,
    /// Comma-separated permissions: read, write, exec, publish, subscribe.
    pub permissions: String,
    /// Only for this capsule (absent: every capsule acting for the user).
    #[serde(default)]
    pub capsule: Option<CapsuleId>,
    /// The user granted (absent: the local user).
    #[serde(default)]
    pub user: Option<String>,
}

/// `cap.list` params.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantListParams {
    /// Whose capabilities (absent: the local user's).
    #[serde(default)]
    pub user: Option<String>,
}

/// `cap.grant`: the new capability's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// The capability's id (for `cap.revoke`).
    pub id: String,
}

/// `cap.revoke` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeParams {
    /// The capability's id.
    pub id: String,
}

/// A capability of the local user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// Its id.
    pub id: String,
    /// The capsule it is for (absent: any).
    pub capsule: Option<CapsuleId>,
    /// Its resource pattern.
    pub pattern: String,
    /// Its permissions, comma-separated.
    pub permissions: String,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The approval request a person made it by (`capsid approve --always` or
    /// `--session`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// The client session it ends with, if it was approved for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// `identity.list`: users and platform links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identities {
    /// Every user.
    pub users: Vec<UserView>,
    /// Every platform link.
    pub links: Vec<LinkView>,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// Its id (the principal capabilities are granted to).
    pub id: String,
    /// Its display name.
    pub name: String,
}

/// A platform account linked to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// The platform ("cli", "slack", ...).
    pub platform: String,
    /// The account's id on that platform.
    pub platform_user_id: String,
    /// The user's id.
    pub user: String,
}

/// `identity.link` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkParams {
    /// The platform.
    pub platform: String,
    /// The account's id on that platform.
    pub platform_user_id: String,
    /// The user's id (see `identity.list`).
    pub user: String,
}

/// `mcp.token.create` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateParams {
    /// The user the token's requests act as (a name or id).
    pub user: String,
    /// What to call it (shown by `mcp.token.list`).
    #[serde(default)]
    pub label: Option<String>,
}

/// `mcp.token.create`: the token, shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Its id, for `mcp.token.revoke`.
    pub id: String,
    /// The token: `Authorization: Bearer <token>`. Only its hash is kept.
    pub token: String,
    /// The user's id.
    pub user: String,
}

/// A live bearer token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Its id.
    pub id: String,
    /// Its user's id.
    pub user: String,
    /// Its user's name (absent if the user is gone).
    pub user_name: Option<String>,
    /// When it was minted, ms since the Unix epoch.
    pub created_ms: u64,
    /// Its label.
    pub label: Option<String>,
}

/// `mcp.token.revoke` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevokeParams {
    /// The token's id.
    pub id: String,
}

/// `mcp.token.check` params.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCheckParams {
    /// The token a request presented.
    pub token: String,
}

// The token is a secret: never in `Debug` output, so never in a log line.
impl std::fmt::Debug for TokenCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCreated")
            .field("id", &self.id)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TokenCheckParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCheckParams").finish_non_exhaustive()
    }
}

/// `mcp.token.check`: the user a live token acts as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenOwner {
    /// The user's id (what `as_user` takes).
    pub user: String,
}

/// `daemon.stop`: the stop has begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    /// Always true.
    pub stopping: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show_in_debug_output() {
        let created = TokenCreated {
            id: "0123".into(),
            token: "capsid_0123_secret".into(),
            user: "u".into(),
        };
        let check = TokenCheckParams {
            token: "capsid_0123_secret".into(),
        };
        assert!(!format!("{created:?} {check:?}").contains("secret"));
    }

    #[test]
    fn a_tail_over_the_limit_is_refused_not_cut() {
        let ok: Result<TailParams, _> = serde_json::from_str("{}");
        assert_eq!(ok.ok().map(|p| p.n), Some(20));
        let over = format!(r#"{{"n":{}}}"#, MAX_AUDIT_TAIL + 1);
        let refused = serde_json::from_str::<TailParams>(&over);
        assert!(refused.is_err_and(|e| e.to_string().contains("over the limit")));
    }
}
