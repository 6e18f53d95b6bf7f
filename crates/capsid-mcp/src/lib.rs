//! capsid as an MCP server (DESIGN 3.10): every tool of every ready capsule, named
//! `<capsule>.<tool>`, to any MCP client, as a client of the home's daemon: over stdio
//! ([`serve_stdio`], one user per session) or Streamable HTTP ([`serve_http`], each
//! request's bearer token naming its user).
//!
//! - `bridge.rs`: the MCP handler (list, call with progress and cancellation, list changes);
//! - `tools.rs`: tools and answers in MCP's shapes;
//! - `daemon.rs`: the daemon connections requests take turns on;
//! - `http.rs`: the HTTP transport and its gate (bearer token, Host, Origin, limits).
//!
//! Invariants:
//! - the bridge holds no authority of its own: each request acts as one user, and the daemon
//!   checks `tool://<capsule>/<tool>` for that user at every call and records it before and
//!   after;
//! - `tools/list` shows only what the user may call, and a tool it may not call is answered
//!   exactly as one that does not exist;
//! - an HTTP request without a live bearer token reaches nothing;
//! - only this crate serves MCP (the one other user of `rmcp`, `capsid-capsule`, is a client
//!   of `[mcp]` capsules' servers); on stdio, stdout carries the protocol and nothing else.
#![deny(missing_docs)]

mod approvals;
mod bridge;
mod calls;
mod daemon;
mod http;
mod tools;

use std::net::SocketAddr;

pub use bridge::{Acting, Bridge};

/// The bridge's handling of what clients send, reachable by `capsid-fuzz`: not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::approvals::{Answered, Binding, StateSeal, answered};
    pub use crate::tools::{CallAsked, read_call};
}
pub use daemon::Daemon;
pub use http::{HttpOptions, MCP_PATH, serve_http};
use rmcp::ServiceExt;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The MCP session could not be set up (the client's first messages were refused).
    #[error("the MCP session could not start: {0}")]
    Initialize(String),
    /// The session ended with an error.
    #[error("the MCP session failed: {0}")]
    Session(String),
    /// The HTTP address is not loopback and the operator did not allow that.
    #[error("{0} is not a loopback address; pass --public to serve MCP beyond this machine")]
    NotLoopback(SocketAddr),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The system gave no random secret to seal request states with.
    #[error("no random secret for the MCP bridge: {0}")]
    Random(getrandom::Error),
}

/// Serves MCP on stdin/stdout until the client goes away. A line over
/// `MCP_MAX_REQUEST_BYTES` is dropped unread.
pub async fn serve_stdio(bridge: Bridge) -> Result<(), ServeError> {
    // Non-blocking pipes when the client gave pipes (as MCP hosts do): no hop through the
    // blocking pool per message.
    let (read, write) = rmcp::transport::io::stdio_pipes();
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(read, write)
        .with_max_line_length(capsid_core::limits::MCP_MAX_REQUEST_BYTES);
    let running = bridge
        .serve(transport)
        .await
        .map_err(|e| ServeError::Initialize(e.to_string()))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| ServeError::Session(e.to_string()))
}
