//! capsid's key-value storage: the [`KvStore`] trait every backend implements, the durable
//! SurrealKV backend and the in-memory one, [`ScopedKvStore`] that confines a capsule to one
//! namespace under a quota, and the [`IdentityStore`] of users and platform links.
//!
//! Invariants:
//! - keys and values are bytes; every limit is checked before anything is written, and a
//!   refused call changes nothing;
//! - a scoped store can only ever address keys inside its own namespace: the namespace is a
//!   length-prefixed header no user key can forge, and listing is bounded to it;
//! - `batch` and `compare_and_swap` are atomic; after `close` every call fails with
//!   [`KvError::Closed`].
#![deny(missing_docs)]

mod bearer;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod identity;
mod kv;
mod memory;
mod pins;
mod refusal;
mod scoped;
mod surreal;
mod survivors;

pub use bearer::{BearerToken, BearerTokenStore, MintError, MintedToken};
pub use error::{KvError, QuotaKind};
pub use identity::{IdentityStore, Link, User};
pub use kv::{
    BatchOp, KvStore, Page, check_batch, check_key, check_limit, check_value, check_write,
};
pub use memory::MemoryKvStore;
pub use pins::{PinnedTool, ToolPinStore};
pub use refusal::{RefusalStore, StandingRefusal};
pub use scoped::{Quota, ScopedKvStore};
pub use surreal::{Durability, SurrealKvStore};
pub use survivors::{Survivor, SurvivorStore};
