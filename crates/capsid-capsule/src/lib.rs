//! capsid's capsule layer. Today: reading and validating `Capsule.toml` manifests
//! ([`Manifest`]), finding capsules on disk ([`discover`]) and ordering them by their
//! dependencies ([`load_order`]). The wasmtime engine, host interfaces and registry build on
//! these.
//!
//! Invariants:
//! - a manifest is a request, never a grant: parsing one allows nothing;
//! - unknown keys are errors, and every error names the file, the key and the line;
//! - one broken capsule never stops the others from being discovered.
#![deny(missing_docs)]

mod discovery;
mod manifest;
mod order;

pub use discovery::{Discovery, MANIFEST_FILE, discover};
pub use manifest::{Capabilities, Component, EnvVar, Limits, Manifest, ManifestError, Tool};
pub use order::{DependencyError, load_order};
