//! blake3 hashing with domain separation. Each purpose has its own [`Domain`]; all of them are
//! listed in [`domain`] so that no two purposes can share one by accident.
//!
//! A file's content hash (a component's `blake3` pin, its compiled-cache key) is the plain
//! blake3 of its bytes, with no domain: it must equal what `b3sum` prints, so an author can
//! pin a component with standard tools.

use std::fmt;
use std::str::FromStr;

/// A hashing purpose: a blake3 `derive_key` context string, globally unique and hard-coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain(&'static str);

impl Domain {
    /// The context string.
    pub fn context(self) -> &'static str {
        self.0
    }
}

/// Every hashing domain capsid uses. Versioned: changing an encoding means a new domain.
pub mod domain {
    use super::Domain;

    /// One audit log entry's canonical encoding.
    pub const AUDIT_ENTRY: Domain = Domain("capsid 2026-11 audit entry v1");
    /// An audit chain head (chain id, last sequence, last hash).
    pub const AUDIT_HEAD: Domain = Domain("capsid 2026-11 audit chain head v1");
    /// The `prev_hash` of the first entry of a chain.
    pub const AUDIT_GENESIS: Domain = Domain("capsid 2026-11 audit chain genesis v1");
    /// A capability token's signed bytes.
    pub const CAPABILITY: Domain = Domain("capsid 2026-11 capability token v1");
    /// A persistent process id, as the process table stores it (never the id itself).
    pub const PROCESS_ID: Domain = Domain("capsid 2026-11 persistent process id v1");
    /// The chain heads an audit checkpoint covers (sorted by chain).
    pub const AUDIT_CHECKPOINT: Domain = Domain("capsid 2026-12 audit checkpoint v1");
    /// A compiled component in the on-disk cache (what the runtime key signs).
    pub const COMPILED_COMPONENT: Domain = Domain("capsid 2026-11 compiled component v1");
    /// A capsule's signature fields (`Capsule.sig`): what its signer signs.
    pub const CAPSULE_SIGNATURE: Domain = Domain("capsid 2026-12 capsule signature v1");
    /// An MCP tool's definition (name, description, schemas) as pinned.
    pub const MCP_TOOL_DEFINITION: Domain = Domain("capsid 2026-12 mcp tool definition v1");
}

/// A 32-byte blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a digest from a slice, if it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(&self.0[..8]))
    }
}

impl FromStr for Digest {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Self(out))
    }
}

/// Incremental hashing within one domain.
#[derive(Debug, Clone)]
pub struct DomainHasher(blake3::Hasher);

impl DomainHasher {
    /// Starts a hash in `domain`.
    pub fn new(domain: Domain) -> Self {
        Self(blake3::Hasher::new_derive_key(domain.context()))
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }

    /// The digest of everything fed so far.
    pub fn finalize(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

/// Hashes `data` in `domain` in one call.
pub fn hash(domain: Domain, data: &[u8]) -> Digest {
    DomainHasher::new(domain).update(data).finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_separate_equal_inputs() {
        let a = hash(domain::AUDIT_ENTRY, b"same");
        let b = hash(domain::CAPABILITY, b"same");
        assert_ne!(a, b);
        assert_ne!(a.0, *blake3::hash(b"same").as_bytes());
        assert_eq!(a, hash(domain::AUDIT_ENTRY, b"same"));
    }

    #[test]
    fn all_domains_are_distinct() {
        let all = [
            domain::AUDIT_ENTRY,
            domain::AUDIT_HEAD,
            domain::AUDIT_GENESIS,
            domain::CAPABILITY,
            domain::COMPILED_COMPONENT,
            domain::PROCESS_ID,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.context(), b.context());
            }
        }
    }

    #[test]
    fn incremental_equals_one_shot_and_hex_round_trips() {
        let d = DomainHasher::new(domain::PROCESS_ID)
            .update(b"ab")
            .update(b"c")
            .finalize();
        assert_eq!(d, hash(domain::PROCESS_ID, b"abc"));
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
