//! `Capsule.sig`: the detached signature of a capsule, as TOML an operator can read.
//!
//! ```toml
//! format = 1
//! algorithm = "ed25519"
//! key_id = "<blake3 of the public key, hex>"
//! public_key = "<hex>"
//! name = "hello"
//! version = "0.1.0"
//! manifest_blake3 = "<hex>"
//! component_blake3 = "<hex>"   # absent for a native or MCP program that is not pinned
//! signature = "<hex>"
//! ```
//!
//! What is signed is not the text but a length-prefixed encoding of the fields (format,
//! algorithm, key id, name, version, both hashes), hashed in the
//! [`domain::CAPSULE_SIGNATURE`] domain: the text's layout, comments and key order carry no
//! meaning, and a signature made for any other purpose can never pass for one of these.

use capsid_crypto::{Digest, KeyPair, PublicKey, Signature, domain, hash};
use serde::{Deserialize, Serialize};

use crate::error::SigningError;

/// The signature file's name, beside `Capsule.toml`.
pub const SIGNATURE_FILE: &str = "Capsule.sig";

/// The format this version writes and reads.
pub const SIGNATURE_FORMAT: u32 = 1;

/// The one algorithm there is.
pub const SIGNATURE_ALGORITHM: &str = "ed25519";

/// A capsule's signature: who signed which package, and the hashes of what it is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleSignature {
    /// The signer's public key (its id is derived, never trusted from the file).
    pub public_key: PublicKey,
    /// The package name signed.
    pub name: String,
    /// The package version signed.
    pub version: String,
    /// blake3 of `Capsule.toml`, as `b3sum` prints it.
    pub manifest_blake3: Digest,
    /// blake3 of the component, or of the pinned program of a native or MCP capsule.
    pub component_blake3: Option<Digest>,
    /// The ed25519 signature over the fields.
    pub signature: Signature,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureText {
    format: u32,
    algorithm: String,
    key_id: String,
    public_key: String,
    name: String,
    version: String,
    manifest_blake3: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    component_blake3: Option<String>,
    signature: String,
}

impl CapsuleSignature {
    /// Signs the fields with `key`.
    pub fn sign(
        key: &KeyPair,
        name: &str,
        version: &str,
        manifest_blake3: Digest,
        component_blake3: Option<Digest>,
    ) -> Self {
        let public_key = key.public_key();
        let message = message(
            &public_key,
            name,
            version,
            &manifest_blake3,
            component_blake3,
        );
        Self {
            public_key,
            name: name.to_owned(),
            version: version.to_owned(),
            manifest_blake3,
            component_blake3,
            signature: key.sign(message.as_bytes()),
        }
    }

    /// Whether the signature verifies under the key it names (strict ed25519).
    pub fn verify(&self) -> bool {
        let message = message(
            &self.public_key,
            &self.name,
            &self.version,
            &self.manifest_blake3,
            self.component_blake3,
        );
        self.public_key
            .verify(message.as_bytes(), &self.signature)
            .is_ok()
    }

    /// The signer's key id, hex.
    pub fn key_id(&self) -> String {
        self.public_key.key_id().to_string()
    }

    /// Parses `Capsule.sig` text. The signature itself is not checked here
    /// ([`CapsuleSignature::verify`]); everything else is: the format and algorithm, every
    /// hex field's length, the public key's strength, and that the key id is the key's.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: SignatureText = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if raw.format != SIGNATURE_FORMAT {
            return Err(format!(
                "format {} is not one this capsid reads (it reads {SIGNATURE_FORMAT})",
                raw.format
            ));
        }
        if raw.algorithm != SIGNATURE_ALGORITHM {
            return Err(format!("algorithm `{}` is not ed25519", raw.algorithm));
        }
        let bytes = |field: &str, text: &str, len: usize| -> Result<Vec<u8>, String> {
            let b = hex::decode(text).map_err(|_| format!("{field} is not hex"))?;
            if b.len() != len {
                return Err(format!("{field} is not {len} bytes"));
            }
            Ok(b)
        };
        let digest = |field: &str, text: &str| -> Result<Digest, String> {
            Digest::from_slice(&bytes(field, text, 32)?).ok_or_else(|| format!("{field} length"))
        };
        let public_key = PublicKey::from_bytes(&bytes("public_key", &raw.public_key, 32)?)
            .map_err(|e| format!("public_key: {e}"))?;
        if public_key.key_id().to_string() != raw.key_id {
            return Err("key_id is not the id of public_key".into());
        }
        let signature = Signature::from_slice(&bytes("signature", &raw.signature, 64)?)
            .ok_or("signature length")?;
        Ok(Self {
            public_key,
            name: raw.name,
            version: raw.version,
            manifest_blake3: digest("manifest_blake3", &raw.manifest_blake3)?,
            component_blake3: raw
                .component_blake3
                .as_deref()
                .map(|c| digest("component_blake3", c))
                .transpose()?,
            signature,
        })
    }

    /// The file's text.
    pub fn to_text(&self) -> Result<String, SigningError> {
        let raw = SignatureText {
            format: SIGNATURE_FORMAT,
            algorithm: SIGNATURE_ALGORITHM.into(),
            key_id: self.key_id(),
            public_key: hex::encode(self.public_key.to_bytes()),
            name: self.name.clone(),
            version: self.version.clone(),
            manifest_blake3: self.manifest_blake3.to_string(),
            component_blake3: self.component_blake3.map(|d| d.to_string()),
            signature: hex::encode(self.signature.as_bytes()),
        };
        let body = toml::to_string(&raw).map_err(|e| SigningError::Encode(e.to_string()))?;
        Ok(format!(
            "# capsid capsule signature: `capsid capsule verify <dir>` checks it.\n{body}"
        ))
    }
}

/// The digest signed: the fields, each length-prefixed, in the signature domain.
fn message(
    public_key: &PublicKey,
    name: &str,
    version: &str,
    manifest: &Digest,
    component: Option<Digest>,
) -> Digest {
    hash(
        domain::CAPSULE_SIGNATURE,
        &encoded(public_key, name, version, manifest, component),
    )
}

/// The fields, each length-prefixed.
fn encoded(
    public_key: &PublicKey,
    name: &str,
    version: &str,
    manifest: &Digest,
    component: Option<Digest>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(&SIGNATURE_FORMAT.to_be_bytes());
    field(SIGNATURE_ALGORITHM.as_bytes());
    field(public_key.key_id().as_bytes());
    field(name.as_bytes());
    field(version.as_bytes());
    field(manifest.as_bytes());
    match component {
        Some(c) => field(c.as_bytes()),
        None => field(&[]),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> (KeyPair, CapsuleSignature) {
        let key = KeyPair::generate().unwrap();
        let sig = CapsuleSignature::sign(
            &key,
            "hello",
            "0.1.0",
            Digest([1; 32]),
            Some(Digest([2; 32])),
        );
        (key, sig)
    }

    #[test]
    fn a_signature_round_trips_through_its_text_and_verifies() {
        let (_, sig) = signed();
        let back = CapsuleSignature::parse(&sig.to_text().unwrap()).unwrap();
        assert_eq!(back, sig);
        assert!(back.verify());
        let unpinned = CapsuleSignature::sign(
            &KeyPair::generate().unwrap(),
            "tool",
            "1.0.0",
            Digest([3; 32]),
            None,
        );
        let back = CapsuleSignature::parse(&unpinned.to_text().unwrap()).unwrap();
        assert!(back.verify() && back.component_blake3.is_none());
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let (_, sig) = signed();
        let mut changed = vec![sig.clone(); 5];
        changed[0].name = "hellp".into();
        changed[1].version = "0.1.1".into();
        changed[2].manifest_blake3 = Digest([9; 32]);
        changed[3].component_blake3 = None;
        changed[4].public_key = KeyPair::generate().unwrap().public_key();
        for c in changed {
            assert!(!c.verify(), "{c:?}");
            let text = c.to_text().unwrap();
            assert!(!CapsuleSignature::parse(&text).unwrap().verify());
        }
    }

    #[test]
    fn malformed_text_is_refused_with_the_field_named() {
        let (_, sig) = signed();
        let text = sig.to_text().unwrap();
        let cases = [
            (text.replace("format = 1", "format = 2"), "format 2"),
            (text.replace("\"ed25519\"", "\"rsa\""), "algorithm"),
            (
                text.replace(&sig.key_id(), &"0".repeat(64)),
                "key_id is not the id",
            ),
            (
                text.replace(&sig.manifest_blake3.to_string(), "abc"),
                "manifest_blake3",
            ),
            (format!("{text}extra = 1\n"), "unknown field"),
            ("not toml at all [".into(), ""),
        ];
        for (bad, says) in cases {
            let err = CapsuleSignature::parse(&bad).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn the_same_fields_signed_for_another_purpose_do_not_pass() {
        let (key, sig) = signed();
        let fields = encoded(
            &sig.public_key,
            &sig.name,
            &sig.version,
            &sig.manifest_blake3,
            sig.component_blake3,
        );
        // Exactly these fields, hashed in another domain, or signed as they are.
        for message in [
            hash(domain::CAPABILITY, &fields).as_bytes().to_vec(),
            fields.clone(),
        ] {
            let mut other = sig.clone();
            other.signature = key.sign(&message);
            assert!(!other.verify());
        }
        let mut same = sig.clone();
        same.signature = key.sign(hash(domain::CAPSULE_SIGNATURE, &fields).as_bytes());
        assert!(same.verify(), "the control: the right domain verifies");
    }
}
