//! Who built a capsule, and whether this home trusts them.
//!
//! A capsule is signed by a detached `Capsule.sig` beside its `Capsule.toml`
//! ([`CapsuleSignature`]): the signer's ed25519 key, the package's name and version, and the
//! blake3 of the manifest and of the component (or of the pinned native program), signed
//! under the [`capsid_crypto::domain::CAPSULE_SIGNATURE`] domain. The home's [`TrustStore`]
//! (`trust/`, one file per key) names the keys the operator trusts, each optionally limited
//! to capsule names; the runtime key is always trusted. [`SignatureCheck`] is what every load
//! asks, before anything is compiled or read from the compiled cache.
//!
//! Invariants:
//! - a signature never grants anything: it says who built the capsule, and grants stay the
//!   operator's;
//! - nothing is repaired: an unsigned, tampered, wrongly named or untrusted capsule is
//!   refused with one line that says what to run, and a trust store file that is malformed
//!   or open to others stops the store from opening;
//! - the component's signed hash is handed to the engine as the pin it checks on the bytes
//!   it compiles, so the component is hashed once per load and never checked apart from
//!   what runs.
#![deny(missing_docs)]

mod check;
mod contents;
mod error;
mod signature;
mod trust;

pub use check::{Checked, Require, SignatureCheck, Signer};
pub use contents::{CapsuleContents, sign_capsule};
pub use error::{SigningError, TrustError};
pub use signature::{CapsuleSignature, SIGNATURE_ALGORITHM, SIGNATURE_FILE, SIGNATURE_FORMAT};
pub use trust::{RUNTIME_SIGNER, TrustStore, TrustedKey};
