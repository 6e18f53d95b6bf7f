//! ed25519 key pairs, public keys, key ids and signatures.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::{KeyError, SignatureError};

/// The id of a public key: the blake3 hash of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a key id from a slice, if it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex::encode(&self.0[..8]))
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Builds a signature from a slice, if it is exactly 64 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..8]))
    }
}

/// An ed25519 public key (strong: small-order points are refused).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes, refusing encodings that are not points or are weak (small order).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::InvalidPublicKey("expected 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&arr)
            .map_err(|_| KeyError::InvalidPublicKey("not a curve point"))?;
        if key.is_weak() {
            return Err(KeyError::InvalidPublicKey("small-order point"));
        }
        Ok(Self(key))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// `blake3(public key bytes)`.
    pub fn key_id(&self) -> KeyId {
        KeyId(*blake3::hash(self.0.as_bytes()).as_bytes())
    }

    /// Checks `signature` over `message`, strictly.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(message, &sig)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0.as_bytes()))
    }
}

/// Verifies many signatures at once, about twice as fast as one by one. Succeeds only if every
/// signature is valid; on failure, check individually to learn which one is bad.
pub fn verify_batch(
    messages: &[&[u8]],
    signatures: &[Signature],
    keys: &[PublicKey],
) -> Result<(), SignatureError> {
    if messages.len() != signatures.len() || messages.len() != keys.len() {
        return Err(SignatureError::BatchShape);
    }
    let sigs: Vec<_> = signatures
        .iter()
        .map(|s| ed25519_dalek::Signature::from_bytes(&s.0))
        .collect();
    let keys: Vec<_> = keys.iter().map(|k| k.0).collect();
    ed25519_dalek::verify_batch(messages, &sigs, &keys).map_err(|_| SignatureError::Invalid)
}

/// An ed25519 signing key. Its secret is zeroized on drop and never printed.
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).map_err(KeyError::Random)?;
        Ok(Self::from_secret_bytes(&secret))
    }

    /// Rebuilds a key from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The 32 secret bytes, in a buffer that zeroizes itself on drop.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// The id of the public half.
    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature(self.signing.sign(message).to_bytes())
    }

    /// Checks a signature against this key's public half.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        self.public_key().verify(message, signature)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("key_id", &self.key_id())
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject_tampering() {
        let k = KeyPair::generate().unwrap();
        let sig = k.sign(b"hello");
        assert_eq!(k.verify(b"hello", &sig), Ok(()));
        assert_eq!(k.verify(b"hellO", &sig), Err(SignatureError::Invalid));
        let mut bad = sig;
        bad.0[3] ^= 1;
        assert_eq!(k.verify(b"hello", &bad), Err(SignatureError::Invalid));
        let other = KeyPair::generate().unwrap();
        assert_eq!(other.verify(b"hello", &sig), Err(SignatureError::Invalid));
    }

    #[test]
    fn secret_round_trips_and_key_id_is_blake3_of_public_key() {
        let k = KeyPair::generate().unwrap();
        let again = KeyPair::from_secret_bytes(&k.to_secret_bytes());
        assert_eq!(again.public_key(), k.public_key());
        assert_eq!(
            k.key_id().0,
            *blake3::hash(&k.public_key().to_bytes()).as_bytes()
        );
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode(*k.to_secret_bytes())));
    }

    #[test]
    fn public_keys_must_be_strong_points() {
        assert!(PublicKey::from_bytes(&[0u8; 31]).is_err());
        // The identity point encodes as 1 followed by zeros: small order, refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity),
            Err(KeyError::InvalidPublicKey(_))
        ));
        let k = KeyPair::generate().unwrap();
        assert_eq!(
            PublicKey::from_bytes(&k.public_key().to_bytes()).unwrap(),
            k.public_key()
        );
    }

    #[test]
    fn batch_verification_accepts_good_and_rejects_one_bad() {
        let keys: Vec<_> = (0..8).map(|_| KeyPair::generate().unwrap()).collect();
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 40]).collect();
        let mut sigs: Vec<_> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        let pks: Vec<_> = keys.iter().map(KeyPair::public_key).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        assert_eq!(verify_batch(&refs, &sigs, &pks), Ok(()));
        sigs[5].0[0] ^= 0x80;
        assert_eq!(
            verify_batch(&refs, &sigs, &pks),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_batch(&refs[..2], &sigs, &pks),
            Err(SignatureError::BatchShape)
        );
    }
}
