//! What an audit entry holds and how it is hashed.
//!
//! The signed bytes are a canonical, versioned, length-prefixed encoding, never JSON:
//!
//! ```text
//! u16  ENCODING_VERSION
//! lp   chain            lp = u32 big-endian length, then the bytes
//! u64  seq
//! i64  time (unix nanoseconds)
//! lp   principal
//! lp   capsule          (empty: no capsule)
//! lp   action
//! lp   resource
//! lp   decision         ("allow" | "deny" | "info")
//! lp   details          (JSON text, opaque to the hash)
//! [32] prev_hash
//! [32] key_id           (the signer, bound into the hash)
//! ```
//!
//! `hash = blake3_derive_key("capsid 2026-11 audit entry v1", encoding)` and the signature is
//! ed25519 over the 32 hash bytes.

use std::fmt;
use std::str::FromStr;

use capsid_core::limits::{MAX_AUDIT_DETAILS_BYTES, MAX_AUDIT_FIELD_BYTES};
use capsid_core::{CapsuleId, Principal, SessionId};
use capsid_crypto::{Digest, DomainHasher, KeyId, domain, hash};

use crate::error::AuditError;

/// Version of the canonical entry encoding. A new encoding needs a new version and domain.
pub const ENCODING_VERSION: u16 = 1;

/// A chain of entries: the `system` chain or one kernel session's chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum ChainId {
    /// Kernel-wide events: log creation, chain opening, key rotation.
    System,
    /// Everything one kernel session did.
    Session(SessionId),
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::Session(id) => write!(f, "session:{id}"),
        }
    }
}

impl FromStr for ChainId {
    type Err = capsid_core::IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "system" {
            return Ok(Self::System);
        }
        s.strip_prefix("session:")
            .unwrap_or(s)
            .parse()
            .map(Self::Session)
    }
}

/// The outcome an entry records.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Decision {
    /// A capability check or operation that was allowed.
    Allow,
    /// A capability check or operation that was refused.
    Deny,
    /// An event with no decision (lifecycle, process exit, key rotation).
    Info,
}

impl Decision {
    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Info => "info",
        }
    }
}

/// What a caller asks the log to record. The log adds chain, sequence, time, hashes, signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub(crate) principal: Principal,
    pub(crate) capsule: Option<CapsuleId>,
    pub(crate) action: String,
    pub(crate) resource: String,
    pub(crate) decision: Decision,
    pub(crate) details: String,
}

impl Record {
    /// A record of `action` on `resource` by `principal` with `decision`.
    ///
    /// Fails if `action` is empty or a field is longer than the limits in
    /// [`capsid_core::limits`].
    pub fn new(
        principal: Principal,
        action: &str,
        resource: &str,
        decision: Decision,
    ) -> Result<Self, AuditError> {
        check_field("action", action)?;
        check_field("resource", resource)?;
        if action.is_empty() {
            return Err(AuditError::InvalidRecord("action must not be empty".into()));
        }
        Ok(Self {
            principal,
            capsule: None,
            action: action.to_owned(),
            resource: resource.to_owned(),
            decision,
            details: String::from("{}"),
        })
    }

    /// Attributes the record to a capsule.
    #[must_use]
    pub fn capsule(mut self, capsule: CapsuleId) -> Self {
        self.capsule = Some(capsule);
        self
    }

    /// Attaches structured details, stored as JSON text.
    pub fn details(mut self, details: &serde_json::Value) -> Result<Self, AuditError> {
        let text = details.to_string();
        if text.len() > MAX_AUDIT_DETAILS_BYTES {
            return Err(AuditError::InvalidRecord(format!(
                "details are {} bytes, the limit is {MAX_AUDIT_DETAILS_BYTES}",
                text.len()
            )));
        }
        self.details = text;
        Ok(self)
    }
}

fn check_field(name: &str, value: &str) -> Result<(), AuditError> {
    if value.len() > MAX_AUDIT_FIELD_BYTES {
        return Err(AuditError::InvalidRecord(format!(
            "{name} is {} bytes, the limit is {MAX_AUDIT_FIELD_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// Where an appended entry landed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EntryRef {
    /// Its chain.
    pub chain: ChainId,
    /// Its sequence number in the chain, from 1.
    pub seq: u64,
    /// Its hash.
    pub hash: Digest,
}

/// One stored entry, field by field as found in storage. Text fields are kept as raw bytes so
/// that a tampered, non-UTF-8 value is hashed exactly as stored rather than "repaired".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// Storage position (SQLite rowid, or line number of an export).
    pub position: i64,
    /// The chain, as stored.
    pub chain: String,
    /// Sequence number in the chain.
    pub seq: u64,
    /// Unix nanoseconds.
    pub time_ns: i64,
    /// Principal text.
    pub principal: Vec<u8>,
    /// Capsule name, empty for none.
    pub capsule: Vec<u8>,
    /// Action text.
    pub action: Vec<u8>,
    /// Resource text.
    pub resource: Vec<u8>,
    /// Decision text.
    pub decision: Vec<u8>,
    /// Details JSON text.
    pub details: Vec<u8>,
    /// Hash of the previous entry of the chain (the chain's genesis hash for seq 1).
    pub prev_hash: Vec<u8>,
    /// Id of the signing key.
    pub key_id: Vec<u8>,
    /// This entry's hash, as stored.
    pub hash: Vec<u8>,
    /// The signature over `hash`, as stored.
    pub signature: Vec<u8>,
}

impl StoredEntry {
    /// Recomputes the entry hash from the stored fields. `None` if a fixed-size field has the
    /// wrong length (which is itself tampering).
    pub fn computed_hash(&self) -> Option<Digest> {
        let prev: &[u8; 32] = self.prev_hash.as_slice().try_into().ok()?;
        let key: &[u8; 32] = self.key_id.as_slice().try_into().ok()?;
        Some(entry_hash(&EntryFields {
            chain: self.chain.as_bytes(),
            seq: self.seq,
            time_ns: self.time_ns,
            principal: &self.principal,
            capsule: &self.capsule,
            action: &self.action,
            resource: &self.resource,
            decision: &self.decision,
            details: &self.details,
            prev_hash: prev,
            key_id: key,
        }))
    }

    /// The signer's key id, if well formed.
    pub fn signer(&self) -> Option<KeyId> {
        KeyId::from_slice(&self.key_id)
    }
}

/// The fields covered by an entry's hash, borrowed.
pub(crate) struct EntryFields<'a> {
    pub chain: &'a [u8],
    pub seq: u64,
    pub time_ns: i64,
    pub principal: &'a [u8],
    pub capsule: &'a [u8],
    pub action: &'a [u8],
    pub resource: &'a [u8],
    pub decision: &'a [u8],
    pub details: &'a [u8],
    pub prev_hash: &'a [u8; 32],
    pub key_id: &'a [u8; 32],
}

/// The hash of an entry's canonical encoding.
pub(crate) fn entry_hash(f: &EntryFields<'_>) -> Digest {
    let mut h = DomainHasher::new(domain::AUDIT_ENTRY);
    h.update(&ENCODING_VERSION.to_be_bytes());
    lp(&mut h, f.chain);
    h.update(&f.seq.to_be_bytes());
    h.update(&f.time_ns.to_be_bytes());
    for field in [
        f.principal,
        f.capsule,
        f.action,
        f.resource,
        f.decision,
        f.details,
    ] {
        lp(&mut h, field);
    }
    h.update(f.prev_hash);
    h.update(f.key_id);
    h.finalize()
}

fn lp(h: &mut DomainHasher, bytes: &[u8]) {
    // Field sizes are capped far below 4 GiB by `Record`; a longer stored (tampered) field
    // still hashes deterministically because the length saturates and the bytes follow.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    h.update(&len.to_be_bytes());
    h.update(bytes);
}

/// The `prev_hash` of a chain's first entry.
pub fn genesis_hash(chain: &str) -> Digest {
    hash(domain::AUDIT_GENESIS, chain.as_bytes())
}

/// The bytes a chain head's signature covers.
pub(crate) fn head_message(chain: &str, seq: u64, head_hash: &[u8]) -> Digest {
    let mut h = DomainHasher::new(domain::AUDIT_HEAD);
    h.update(&ENCODING_VERSION.to_be_bytes());
    lp(&mut h, chain.as_bytes());
    h.update(&seq.to_be_bytes());
    lp(&mut h, head_hash);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(chain: &'a [u8], action: &'a [u8], resource: &'a [u8]) -> EntryFields<'a> {
        EntryFields {
            chain,
            seq: 1,
            time_ns: 5,
            principal: b"system",
            capsule: b"",
            action,
            resource,
            decision: b"allow",
            details: b"{}",
            prev_hash: &[0; 32],
            key_id: &[1; 32],
        }
    }

    #[test]
    fn length_prefixes_prevent_field_boundary_shifts() {
        let a = entry_hash(&fields(b"system", b"ab", b"c"));
        let b = entry_hash(&fields(b"system", b"a", b"bc"));
        assert_ne!(a, b);
    }

    #[test]
    fn every_field_is_covered() {
        let base = entry_hash(&fields(b"system", b"a", b"r"));
        let changes: Vec<fn(&mut EntryFields<'static>)> = vec![
            |f| f.chain = b"systen",
            |f| f.seq = 2,
            |f| f.time_ns = 6,
            |f| f.principal = b"user:x",
            |f| f.capsule = b"notes",
            |f| f.action = b"b",
            |f| f.resource = b"s",
            |f| f.decision = b"deny",
            |f| f.details = b"{ }",
            |f| f.prev_hash = &[9; 32],
            |f| f.key_id = &[2; 32],
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut f = fields(b"system", b"a", b"r");
            change(&mut f);
            assert_ne!(entry_hash(&f), base, "change #{i} not covered by the hash");
        }
    }

    #[test]
    fn chain_ids_round_trip() {
        let s = ChainId::Session(SessionId::new());
        for c in [ChainId::System, s] {
            assert_eq!(c.to_string().parse::<ChainId>().unwrap(), c);
        }
        assert!("session:nope".parse::<ChainId>().is_err());
    }

    #[test]
    fn oversized_records_are_refused() {
        let big = "x".repeat(MAX_AUDIT_FIELD_BYTES + 1);
        assert!(Record::new(Principal::System, &big, "r", Decision::Info).is_err());
        assert!(Record::new(Principal::System, "", "r", Decision::Info).is_err());
        let details = serde_json::json!({ "blob": "y".repeat(MAX_AUDIT_DETAILS_BYTES) });
        let r = Record::new(Principal::System, "a", "r", Decision::Info).unwrap();
        assert!(r.details(&details).is_err());
    }
}
