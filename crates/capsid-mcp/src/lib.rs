//! capsid as an MCP server (DESIGN 3.10): every tool of every ready capsule, named
//! `<capsule>.<tool>`, to any MCP client, as a client of the home's daemon.
//!
//! Invariants:
//! - the bridge holds no authority of its own: each session acts as one user, and the daemon
//!   checks `tool://<capsule>/<tool>` for that user at every call and records it before and
//!   after;
//! - `tools/list` shows only what the user may call, and a tool it may not call is answered
//!   exactly as one that does not exist;
//! - only this crate speaks MCP (it alone depends on `rmcp`); stdout carries the protocol and
//!   nothing else.
#![deny(missing_docs)]

mod bridge;

pub use bridge::{Bridge, ServeError, serve_stdio};
