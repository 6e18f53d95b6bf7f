//! capsid's authority: capability tokens signed by the runtime key, the resource patterns they
//! grant, and the [`CapabilityStore`] that persists them and answers every
//! `check(subject, action, resource)` (DESIGN 3.3).
//!
//! Invariants:
//! - nothing is allowed unless a valid token says so: a missing, forged, expired, revoked or
//!   spent token, a malformed resource, or a failing audit sink all deny;
//! - [`CapabilityStore::authorize`] is the one path by which the runtime checks and records
//!   a decision (capsule host calls, native capsule starts): every denial is recorded, and an
//!   allow that guards an effect is recorded durably before it is answered;
//! - resources are parsed strictly and never decoded: `..`, `.`, empty segments (doubled
//!   slashes), NUL and control characters, `%` and `\` are refused, so no spelling of a path
//!   can match a pattern it is not literally under;
//! - a token's signature is verified once, then its verdict is cached until it expires or is
//!   revoked; a revocation takes effect for every check that starts after `revoke` returns;
//! - a token bound to a session allows nothing once that session has ended, nor after a
//!   restart (sessions live in memory only);
//! - single-use tokens are spent with a compare-and-swap, so a replay under concurrency is
//!   allowed exactly once.
#![deny(missing_docs)]

mod audit;
mod error;
mod pattern;
mod shared;
mod store;
mod token;

pub use audit::{AuditLogSink, AuditSink, DecisionRecord};
pub use error::{CapabilityError, DenyReason, TokenError};
pub use pattern::{Pattern, Resource};
pub use store::{CapabilityStore, Check, Decision, Denied, Grant, RecordAllow, Subject};
pub use token::{Capability, CapabilityId, Permissions};
