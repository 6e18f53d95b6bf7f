//! The shared vocabulary of capsid: typed ids, the principal model, the `$CAPSID_HOME` layout,
//! the named limits, and the error types every crate can return.
//!
//! Invariants:
//! - an id value that exists has been validated: parsing is the only way in from text;
//! - every limit the runtime enforces is a named constant in [`limits`], nowhere else;
//! - [`CapsidHome::ensure_layout`] never loosens the mode of a directory that holds secrets.
#![deny(missing_docs)]

pub mod error;
pub mod file;
pub mod glob;
pub mod home;
pub mod ids;
pub mod limits;
pub mod principal;
pub mod sync;
pub mod tally;
pub mod text;
pub mod time;

pub use error::{HomeError, IdError};
pub use home::CapsidHome;
pub use ids::{CapsuleId, ClientSessionId, PrincipalId, ProcessId, SessionId};
pub use principal::Principal;
