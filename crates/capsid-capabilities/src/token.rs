//! Capability tokens and their canonical, versioned, length-prefixed binary encoding:
//!
//! ```text
//! "CPCT" u8 version=1
//! [16] id                     u32-length-prefixed: principal, capsule (empty = any), pattern
//! u32  permissions            i64 issued_at (unix ms)
//! u8   has_expiry (0|1)       i64 expires_at (unix ms; present only if has_expiry)
//! u8   single_use (0|1)       [32] issuer key id
//! [16] session id             (version 2 only: a token that lives only as long as a session)
//! [64] ed25519 signature over blake3_derive_key("capsid 2026-11 capability token v1", all of the above)
//! ```
//!
//! A token bound to no session is written as version 1, so tokens issued before sessions
//! existed keep their bytes; one bound to a session is version 2.
//!
//! Decoding is strict: unknown versions, flags other than 0 or 1, non-canonical patterns,
//! trailing bytes and truncation are all refused.

use capsid_core::{CapsuleId, ClientSessionId, Principal};
use capsid_crypto::{Digest, KeyId, KeyPair, PublicKey, Signature, domain, hash};
use uuid::Uuid;

use crate::error::TokenError;
use crate::pattern::Pattern;

const MAGIC: &[u8; 4] = b"CPCT";
const VERSION: u8 = 1;
const VERSION_SESSION: u8 = 2;

/// A capability's id (UUID v7: time ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapabilityId(pub Uuid);

impl std::fmt::Display for CapabilityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a capability lets its holder do to the resources its pattern names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u32);

impl Permissions {
    /// Read a file, a key, a process's output.
    pub const READ: Self = Self(1);
    /// Write, create, delete.
    pub const WRITE: Self = Self(1 << 1);
    /// Start a process.
    pub const EXEC: Self = Self(1 << 2);
    /// Publish to a topic.
    pub const PUBLISH: Self = Self(1 << 3);
    /// Subscribe to a topic.
    pub const SUBSCRIBE: Self = Self(1 << 4);
    const ALL: u32 = (1 << 5) - 1;

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every permission in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    /// Whether no permission is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bits, as encoded.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

/// The permissions by name, in the order `Display` writes them.
const PERMISSION_NAMES: [(&str, Permissions); 5] = [
    ("read", Permissions::READ),
    ("write", Permissions::WRITE),
    ("exec", Permissions::EXEC),
    ("publish", Permissions::PUBLISH),
    ("subscribe", Permissions::SUBSCRIBE),
];

impl std::fmt::Display for Permissions {
    /// Comma-separated names: `read,write`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = PERMISSION_NAMES
            .iter()
            .filter(|(_, p)| self.contains(*p))
            .map(|(n, _)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl std::str::FromStr for Permissions {
    type Err = String;

    /// Comma-separated names (`read`, `write`, `exec`, `publish`, `subscribe`); at least one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Self::default();
        for name in s.split(',').map(str::trim) {
            let (_, p) = PERMISSION_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| {
                    format!(
                        "unknown permission {name:?}: use read, write, exec, publish, subscribe"
                    )
                })?;
            out = out.union(*p);
        }
        Ok(out)
    }
}

impl std::str::FromStr for CapabilityId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A signed grant of `permissions` on `pattern` to `principal` (optionally only when acting
/// through `capsule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Its id.
    pub id: CapabilityId,
    /// Who holds it.
    pub principal: Principal,
    /// The capsule it is limited to; `None` for any capsule acting for the principal.
    pub capsule: Option<CapsuleId>,
    /// What it grants.
    pub pattern: Pattern,
    /// How.
    pub permissions: Permissions,
    /// When it was issued (unix ms).
    pub issued_at: i64,
    /// When it stops being valid (unix ms), if ever.
    pub expires_at: Option<i64>,
    /// Whether it allows one action only.
    pub single_use: bool,
    /// The issuing key.
    pub issuer: KeyId,
    /// The session it lives for, if it ends with one (an approval given `--session`).
    pub session: Option<ClientSessionId>,
}

fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded by the pattern and id limits, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Capability {
    /// The signed part of the encoding.
    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.pattern.as_str().len());
        out.extend_from_slice(MAGIC);
        out.push(if self.session.is_some() {
            VERSION_SESSION
        } else {
            VERSION
        });
        out.extend_from_slice(self.id.0.as_bytes());
        lp(&mut out, self.principal.to_string().as_bytes());
        lp(
            &mut out,
            self.capsule
                .as_ref()
                .map_or("", CapsuleId::as_str)
                .as_bytes(),
        );
        lp(&mut out, self.pattern.as_str().as_bytes());
        out.extend_from_slice(&self.permissions.0.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        match self.expires_at {
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_be_bytes());
            }
            None => out.push(0),
        }
        out.push(u8::from(self.single_use));
        out.extend_from_slice(self.issuer.as_bytes());
        if let Some(session) = self.session {
            out.extend_from_slice(session.as_uuid().as_bytes());
        }
        out
    }

    fn digest(body: &[u8]) -> Digest {
        hash(domain::CAPABILITY, body)
    }

    /// Encodes and signs with `key` (which must be the issuer).
    pub fn sign(&self, key: &KeyPair) -> Vec<u8> {
        let mut out = self.body();
        let sig = key.sign(Self::digest(&out).as_bytes());
        out.extend_from_slice(sig.as_bytes());
        out
    }

    /// Decodes token bytes without checking the signature.
    pub fn decode(bytes: &[u8]) -> Result<(Self, Signature), TokenError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(TokenError::Malformed("not a capability token"));
        }
        let version = r.u8()?;
        if version != VERSION && version != VERSION_SESSION {
            return Err(TokenError::Malformed("unknown token version"));
        }
        let id = CapabilityId(
            Uuid::from_slice(r.take(16)?).map_err(|_| TokenError::Malformed("bad id"))?,
        );
        let principal_text = r.text()?;
        let principal: Principal = principal_text
            .parse()
            .map_err(|_| TokenError::Malformed("bad principal"))?;
        // One token, one encoding: a principal spelled otherwise (an uppercase or braced
        // UUID) is refused, as every other non-canonical field is.
        if principal.to_string() != principal_text {
            return Err(TokenError::Malformed("non-canonical principal"));
        }
        let capsule = match r.text()? {
            "" => None,
            name => Some(CapsuleId::new(name).map_err(|_| TokenError::Malformed("bad capsule"))?),
        };
        let pattern =
            Pattern::parse(r.text()?).map_err(|_| TokenError::Malformed("bad pattern"))?;
        let permissions = u32::from_be_bytes(r.array()?);
        if permissions == 0 || permissions & !Permissions::ALL != 0 {
            return Err(TokenError::Malformed("bad permissions"));
        }
        let issued_at = i64::from_be_bytes(r.array()?);
        let expires_at = match r.u8()? {
            0 => None,
            1 => Some(i64::from_be_bytes(r.array()?)),
            _ => return Err(TokenError::Malformed("bad expiry flag")),
        };
        let single_use = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(TokenError::Malformed("bad single-use flag")),
        };
        let issuer = KeyId(r.array()?);
        let session = if version == VERSION_SESSION {
            Some(ClientSessionId::from(Uuid::from_bytes(r.array()?)))
        } else {
            None
        };
        let signature = Signature(r.array()?);
        if r.at != bytes.len() {
            return Err(TokenError::Malformed("trailing bytes"));
        }
        let cap = Self {
            id,
            principal,
            capsule,
            pattern,
            permissions: Permissions(permissions),
            issued_at,
            expires_at,
            single_use,
            issuer,
            session,
        };
        Ok((cap, signature))
    }

    /// Decodes and verifies the signature against `issuer`'s public key.
    pub fn verify(bytes: &[u8], issuer: &PublicKey) -> Result<Self, TokenError> {
        let (cap, sig) = Self::decode(bytes)?;
        if cap.issuer != issuer.key_id() {
            return Err(TokenError::UnknownIssuer);
        }
        let body = &bytes[..bytes.len() - 64];
        issuer
            .verify(Self::digest(body).as_bytes(), &sig)
            .map_err(|_| TokenError::Forged)?;
        Ok(cap)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(TokenError::Malformed("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        self.take(N)?
            .try_into()
            .map_err(|_| TokenError::Malformed("truncated"))
    }
    fn text(&mut self) -> Result<&'a str, TokenError> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| TokenError::Malformed("text is not UTF-8"))
    }
}
