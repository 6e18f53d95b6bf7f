//! Errors and deny reasons.

use capsid_storage::KvError;

/// A resource or pattern that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {shown:?}: {reason}")]
pub struct ParseError {
    /// "resource" or "pattern".
    pub what: &'static str,
    /// The input, truncated and with control characters escaped.
    pub shown: String,
    /// The rule it broke.
    pub reason: &'static str,
}

/// Token bytes that do not decode, or a token that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The bytes are not a well-formed token of a known version.
    #[error("malformed capability token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify under the named issuer.
    #[error("capability token signature is invalid")]
    Forged,
    /// The issuer key is not trusted by this store.
    #[error("capability token issued by an unknown key")]
    UnknownIssuer,
}

/// Why a check was denied. Recorded in the audit log; a capsule is only ever told "denied".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No token grants this action on this resource.
    NoGrant,
    /// The resource string is not a valid resource.
    BadResource(String),
    /// The only matching token is spent (single use).
    Spent,
    /// The audit sink failed, so the check fails closed.
    AuditUnavailable(String),
    /// The store could not be read.
    StoreUnavailable(String),
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoGrant => f.write_str("no capability grants it"),
            Self::BadResource(e) => write!(f, "bad resource: {e}"),
            Self::Spent => f.write_str("single-use capability already spent"),
            Self::AuditUnavailable(e) => write!(f, "audit unavailable: {e}"),
            Self::StoreUnavailable(e) => write!(f, "capability store unavailable: {e}"),
        }
    }
}

/// Errors of the capability store's management calls (grant, revoke, list).
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// A pattern that does not parse.
    #[error(transparent)]
    Pattern(#[from] ParseError),
    /// A stored token that does not decode or verify.
    #[error("stored capability {id}: {source}")]
    Token {
        /// The token id.
        id: String,
        /// What is wrong.
        source: TokenError,
    },
    /// The key-value store failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// An expiry in the past, or no permissions.
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
}

pub(crate) fn show(input: &str) -> String {
    const SHOWN: usize = 120;
    let escaped: String = input.chars().flat_map(char::escape_debug).collect();
    if escaped.len() > SHOWN {
        let mut end = SHOWN;
        while !escaped.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &escaped[..end])
    } else {
        escaped
    }
}
