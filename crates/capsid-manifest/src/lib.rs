//! A capsule's `Capsule.toml` (DESIGN 3.2) and what is read from folders of them, with no
//! engine in sight: [`Manifest`] parses and validates one (every error names the file, the
//! key and the line); [`discover`] finds the capsules of a folder; [`load_order`] orders
//! them by their `requires`.
//!
//! Invariants:
//! - a manifest is a request, never a grant: nothing here grants anything;
//! - unknown keys are errors, and a manifest is read only from a regular file, at most
//!   `MAX_MANIFEST_BYTES` long;
//! - capability patterns are validated with the capability layer's own parser, so a
//!   manifest cannot ask for a resource no grant could express.
#![deny(missing_docs)]

mod discovery;
mod manifest;
mod order;

pub use discovery::{Discovery, MANIFEST_FILE, discover};
pub use manifest::{
    Capabilities, Component, EnvVar, Limits, Manifest, ManifestError, NativeProgram,
    NativeQuotaAction, SandboxPolicy, Tool, ToolAnnotations, net_resource,
};
pub use order::{DependencyError, load_order};
