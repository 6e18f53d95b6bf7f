//! The audit log: an append-only SQLite database of signed, hash-chained entries
//! (DESIGN 3.4).
//!
//! Every entry belongs to a chain (one per kernel session, plus the `system` chain), carries
//! its sequence number in that chain and the hash of its predecessor, and is hashed over a
//! canonical, versioned, domain-separated encoding ([`entry`]) and signed by the runtime key.
//! Each chain's head (last sequence and hash) is signed too, so truncation shows.
//!
//! Invariants:
//! - `append(..).await` returns only after the entry's transaction committed with
//!   `synchronous=FULL` in WAL mode: an acknowledged entry survives a crash;
//! - one writer thread owns the database connection and group-commits concurrent appends;
//! - nothing is ever repaired: a database that fails verification is refused by
//!   [`AuditLog::open`] with the full [`VerifyReport`], and can still be read by
//!   [`verify_database`] and exported for forensics;
//! - trusted keys are pinned in the database; a new key is trusted only through a rotation
//!   entry signed by a key trusted before it.
#![deny(missing_docs)]

pub mod action;
mod anchor;
mod checkpoint;
pub mod entry;
mod error;
mod export;
mod log;
mod schema;
mod store;
mod tail;
pub mod verify;
mod writer;

pub use anchor::{AnchorProblem, ChainHead, chain_heads, check_anchored};
pub use entry::{ChainId, Decision, EntryRef, Record};
pub use error::AuditError;
pub use export::{export_database, verify_export};
pub use log::{AuditLog, PendingAppend, verify_database};
pub use tail::{EntryView, tail, workspace_writers};
pub use verify::{ChainReport, KeyProblem, Problem, VerifyReport};
