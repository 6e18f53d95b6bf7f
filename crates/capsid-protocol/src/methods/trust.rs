//! Params and results of the signing and trust-store methods.

use std::path::PathBuf;

use capsid_core::CapsuleId;
use serde::{Deserialize, Serialize};

/// Who signed a capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerView {
    /// The key's id (blake3 of the public key), hex.
    pub key_id: String,
    /// `runtime`, or the key's name in the trust store; none for a key this home does not
    /// trust.
    pub name: Option<String>,
    /// Whether this home trusts it for the capsule.
    pub trusted: bool,
}

impl std::fmt::Display for SignerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = self.key_id.get(..16).unwrap_or(&self.key_id);
        match (&self.name, self.trusted) {
            (Some(name), true) => write!(f, "{name} (key {short})"),
            (Some(name), false) => write!(f, "{name} (key {short}, not trusted for this capsule)"),
            (None, _) => write!(f, "untrusted key {short}"),
        }
    }
}

/// Params naming a capsule's directory (absolute).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleDirParams {
    /// The capsule's directory, holding its `Capsule.toml`.
    pub dir: PathBuf,
}

/// `capsule.sign`: the signature written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// The capsule.
    pub name: CapsuleId,
    /// Its version.
    pub version: String,
    /// The signing key's id (the runtime key's).
    pub key_id: String,
    /// The `Capsule.sig` written.
    pub file: PathBuf,
}

/// `capsule.verify`: the capsule passes the check a load makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The capsule.
    pub name: CapsuleId,
    /// Its version.
    pub version: String,
    /// Who signed it (none when checks are off).
    pub signer: Option<SignerView>,
    /// What this home requires (`trusted`, `any`, `off`).
    pub require: String,
}

/// `trust.add` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustAddParams {
    /// The key's name in the store (`[a-z0-9-]`).
    pub name: String,
    /// The ed25519 public key, 64 hex characters.
    pub public_key: String,
    /// The capsule names it is trusted for (`*` globs); empty: all.
    #[serde(default)]
    pub capsules: Vec<String>,
}

/// Params naming a trusted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustNameParams {
    /// Its name.
    pub name: String,
}

/// A trusted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKeyView {
    /// Its name.
    pub name: String,
    /// Its id, hex.
    pub key_id: String,
    /// The public key, hex.
    pub public_key: String,
    /// The capsule names it is trusted for; empty: all.
    pub capsules: Vec<String>,
    /// When it was added, in ms since the Unix epoch (0 for the runtime key).
    pub added_at_ms: u64,
}

/// How an install differs from what the copy before it was accepted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallChangeView {
    /// Whether the signer changed.
    pub signer_changed: bool,
    /// The signer before, when it changed (none: it was unsigned).
    pub signer_was: Option<SignerView>,
    /// Requests the new copy makes that were not accepted before.
    pub added_requests: Vec<String>,
}
