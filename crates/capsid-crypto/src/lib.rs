//! capsid's cryptography: the runtime's ed25519 signing key, signatures, and blake3 hashing
//! with domain separation.
//!
//! Invariants:
//! - secret key bytes are zeroized when dropped and never appear in `Debug` output;
//! - every hash capsid computes names a [`Domain`] from [`domain`], so a digest made for one
//!   purpose can never be replayed as another;
//! - single signature checks are strict (no malleable or small-order signatures), and weak
//!   public keys are refused when parsed. [`verify_batch`] is the faster cofactored check; it
//!   may accept a malleated copy of a genuine signature that the strict check refuses, but,
//!   like it, never a signature over new content without the secret key.
#![deny(missing_docs)]

mod error;
mod hash;
mod key_file;
mod keys;

pub use error::{KeyError, SignatureError};
pub use hash::{Digest, Domain, DomainHasher, domain, hash};
pub use key_file::{
    RUNTIME_KEY_FILE, generate_key_file, load_key_file, load_or_generate_key_file,
    load_or_generate_runtime_key,
};
pub use keys::{KeyId, KeyPair, PublicKey, Signature, verify_batch};
