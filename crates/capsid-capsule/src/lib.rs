//! capsid's capsule layer: everything between a capsule directory on disk and a call into
//! its WebAssembly component.
//!
//! - Manifests come from `capsid-manifest`: this crate takes a [`capsid_manifest::Manifest`]
//!   and makes it run.
//! - [`CapsuleEngine`] is the one wasmtime engine (component model, async, pooling allocator,
//!   epoch deadlines) with its signed compiled-component cache.
//! - The host side of `wit/host.wit` lives in one module per interface (`host/`), generated
//!   bindings in `bindings.rs`; outbound `wasi:http` requests are checked and sent by `http/`.
//! - [`Registry`] loads capsules (grants per [`Trust`], compile, instantiate, subscribe),
//!   calls their tools and unloads them; `dispatch.rs` delivers bus events to them.
//!
//! Invariants:
//! - a manifest is a request, never a grant: only [`Trust::Dev`] turns requests into grants;
//! - a capsule has no ambient authority: WASI is linked with nothing granted, and every
//!   effect is a host call checked against its capabilities; denials and effectful allows
//!   are in the audit log before the call returns (an effect only after its record is durable);
//! - a trap, deadline or memory limit is a typed error and a `failed` capsule, never a panic,
//!   and never affects another capsule;
//! - compiled code is loaded from the cache only when the runtime key's signature over it
//!   verifies.
#![deny(missing_docs)]

mod approval;
mod bindings;
mod capsule;
mod control;
mod dispatch;
mod engine;
mod error;
mod grants;
mod host;
mod http;
mod logbuf;
mod mcp;
mod native;
mod registry;
mod slots;
mod survivors;
mod warmth;

pub use approval::{ApprovalError, ApprovalRequest, Approvals, Claimed, Verdict};
pub use capsule::{CapsuleState, LoadedCapsule, Restart, RestartCause};
pub use control::{CallControl, Progress};
pub use engine::{
    CapsuleEngine, CompileHelper, CompileIn, LoadKind, LoadedComponent, serve_compile_helper,
};
pub use error::{CapsuleError, GuestError};
pub use grants::{
    GrantChange, Request, Trust, exec_resource, is_tool_name, kv_resource, network_resource,
    persistent_resource, plan_grants, requested, tool_resource,
};
pub use host::{APPROVAL_REQUESTED_TOPIC, HostServices};
pub use http::{HttpSetupError, OutboundHttp, Resolve, SystemResolver};
pub use logbuf::{CapsuleLog, LogLevel, LogLine, LogSource};
pub use mcp::{McpCapsule, PendingTool, ToolChange};
pub use native::NativeCapsule;
pub use registry::{CapsuleCounts, CapsuleInfo, McpStatus, NativeStatus, ProgramStats, Registry};
pub use slots::CapsuleWaker;

/// How a contained MCP server's messages are read, reachable by `capsid-fuzz`: not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::mcp::definition::{
        Presented, Unusable, answer_text, error_text, present, usable_name,
    };
}
