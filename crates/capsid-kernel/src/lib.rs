//! The capsid kernel: boots a home directory into a running runtime and keeps it running.
//!
//! [`Kernel::builder`] boots (see [`boot`](crate::boot) for the order): the audit log is
//! verified first, the capsules are discovered, ordered by their `requires`, and loaded —
//! those that need the network first — and a `capsules.loaded` event announces the end.
//! A booted [`Kernel`] loads, unloads, reloads and installs capsules at run time, calls
//! tools, publishes events, and shuts down cleanly. The [`daemon`] serves it on a Unix
//! socket to the `capsid` CLI.
//!
//! Invariants:
//! - a tampered audit log never boots silently: it is refused, or (by config) set aside
//!   unmodified and reported as the first entry of a new log;
//! - every operator action (install, publish) and every boot and shutdown is audited;
//! - failed capsules are reloaded with doubling backoff up to a cap, never in a tight loop;
//! - hot reload (dev mode only) reloads a capsule only when the blake3 of its manifest and
//!   component changed;
//! - shutdown unloads every capsule, which stops their persistent processes, and leaves no
//!   daemon file behind.
#![deny(missing_docs)]

mod approvals;
mod bearer;
pub mod boot;
mod config;
pub mod daemon;
mod error;
mod install;
mod kernel;
mod lattice;
mod monitor;
mod operator;
mod receipts;
mod sessions;
mod tool;
mod trust;
mod watch;
mod workspace;
mod workspace_diff;

pub use boot::{CAPSULES_LOADED_TOPIC, KernelBuilder};
pub use capsid_capsule::{CompileHelper, CompileIn, serve_compile_helper, tool_resource};
pub use config::{
    CapsuleConfig, HealthConfig, HttpConfig, KernelConfig, SandboxConfig, SigningConfig,
    TamperPolicy,
};
pub use error::KernelError;
pub use install::{InstallError, Installed};
pub use kernel::{BootReport, Kernel, KernelStatus, RESERVED_TOPIC_PREFIXES, SHUTDOWN_TOPIC};
pub use lattice::{AnchorCheck, LatticeTraffic};
pub use monitor::{HEALTH_FAILED_TOPIC, HEALTH_GAVE_UP_TOPIC};
pub use receipts::{Receipt, ReceiptChange};
pub use sessions::SessionHold;
pub use tool::{Door, ToolCaller, ToolInfo};
pub use workspace::WorkspaceChange;
pub use workspace_diff::FileDiff;
