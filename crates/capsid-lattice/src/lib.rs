//! capsid hosts joined into one lattice over NATS JetStream. This crate is the only one that
//! speaks NATS: the [`Lattice`] connection (credentials, reconnection, the state `status`
//! shows) and [`JetStreamKvStore`], a `KvStore` on a JetStream KV bucket shared by every host.
//! Hosts speak to each other in signed envelopes ([`Seal`]): tool [`calls`] to a host that
//! serves the capsule, [`events`] on exported topics, and [`adverts`] of what each serves.
//! [`local`] runs `nats-server` on loopback for tests, benchmarks and trying a lattice.
//!
//! Invariants:
//! - a host without `[lattice]` never loads any of this;
//! - the KV backend passes the same conformance suite as the SurrealKV and memory ones; a
//!   conditional write never overwrites a change it did not read;
//! - credentials stay in their files: the configuration names files, never secrets;
//! - a message from another host is acted on only when signed by a host this one trusts,
//!   fresh, and not seen before.
#![deny(missing_docs)]

pub mod adverts;
pub mod anchors;
pub mod calls;
mod config;
mod connection;
mod envelope;
mod error;
pub mod events;
mod kv;
pub mod local;

/// NATS message headers, as [`Sealed`] messages carry them.
pub use async_nats::HeaderMap;
pub use config::{Credentials, LatticeConfig};
pub use connection::{Lattice, LatticeStatus, LinkState};
pub use envelope::{Kind, Opened, Refusal, Seal, Sealed};
pub use error::LatticeError;
pub use kv::{JetStreamKvStore, KeyChanges};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
