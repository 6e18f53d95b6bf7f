//! Errors of the capsule runtime. Every variant names the capsule at fault.

use std::fmt;
use std::path::PathBuf;

use capsid_core::CapsuleId;

/// The error a capsule returned through the WIT `error` variant (or a host call refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestError {
    /// No capability allows what was asked.
    Denied,
    /// An argument was malformed or outside a limit.
    Invalid(String),
    /// The thing asked for does not exist.
    NotFound,
    /// A quota would be exceeded.
    QuotaExceeded,
    /// Something failed inside the capsule or the host.
    Internal(String),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied => f.write_str("denied"),
            Self::Invalid(m) => write!(f, "invalid: {m}"),
            Self::NotFound => f.write_str("not found"),
            Self::QuotaExceeded => f.write_str("quota exceeded"),
            Self::Internal(m) => write!(f, "internal: {m}"),
        }
    }
}

/// Everything loading or calling a capsule can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CapsuleError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] capsid_manifest::ManifestError),
    /// A file of the capsule cannot be read.
    #[error("capsule {capsule}: cannot read {}: {source}", path.display())]
    Read {
        /// The capsule.
        capsule: CapsuleId,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The component file is over the size limit.
    #[error("capsule {capsule}: {} is over the limit of {max} bytes (read {len})", path.display())]
    TooLarge {
        /// The capsule.
        capsule: CapsuleId,
        /// The file.
        path: PathBuf,
        /// How much of it was read before the limit stopped the read.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The component does not match the blake3 the manifest pins.
    #[error(
        "capsule {capsule}: {} has blake3 {actual} but the manifest pins {expected}; \
         rebuild it or update component.blake3",
        path.display()
    )]
    PinMismatch {
        /// The capsule.
        capsule: CapsuleId,
        /// The file.
        path: PathBuf,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// The file is not a valid WebAssembly component.
    #[error("capsule {capsule}: {} is not a valid WebAssembly component: {reason}", path.display())]
    InvalidComponent {
        /// The capsule.
        capsule: CapsuleId,
        /// The file.
        path: PathBuf,
        /// What wasmtime said.
        reason: String,
    },
    /// The runtime could not compile a component (its compile helper failed, or the result
    /// could not be adopted); the component itself may be fine.
    #[error("capsule {capsule}: cannot compile {}: {message}", path.display())]
    Compile {
        /// The capsule.
        capsule: CapsuleId,
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The component was not built for the `capsid:host` `capsule` world.
    #[error(
        "capsule {capsule}: the component does not target the capsid:host/capsule world \
         (build it against wit/): {reason}"
    )]
    WrongWorld {
        /// The capsule.
        capsule: CapsuleId,
        /// What is missing or mismatched.
        reason: String,
    },
    /// A WebAssembly call was made to a native capsule, which has no guest exports.
    #[error("capsule {0}: is a [native] capsule; it has no tools to call")]
    NotWasm(CapsuleId),
    /// A capability the capsule needs to start is not granted.
    #[error("capsule {capsule}: {resource} is not granted")]
    Denied {
        /// The capsule.
        capsule: CapsuleId,
        /// What was refused.
        resource: String,
    },
    /// A call ran past its deadline (`limits.call_timeout_ms`).
    #[error("capsule {capsule}: call exceeded its deadline of {timeout_ms} ms")]
    Timeout {
        /// The capsule.
        capsule: CapsuleId,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The instance tried to grow its memory past `limits.memory_mb`.
    #[error("capsule {capsule}: exceeded its memory limit of {memory_mb} MiB")]
    MemoryLimit {
        /// The capsule.
        capsule: CapsuleId,
        /// The limit.
        memory_mb: u64,
    },
    /// The instance trapped.
    #[error("capsule {capsule}: trapped: {reason}")]
    Trap {
        /// The capsule.
        capsule: CapsuleId,
        /// The trap.
        reason: String,
    },
    /// The capsule returned an error.
    #[error("capsule {capsule}: {call} failed: {error}")]
    Guest {
        /// The capsule.
        capsule: CapsuleId,
        /// Which export (`init`, `call-tool`, `handle-event`).
        call: &'static str,
        /// What it returned.
        error: GuestError,
    },
    /// The capsule is not ready (loading, failed or unloading).
    #[error("capsule {capsule} is {state}")]
    NotReady {
        /// The capsule.
        capsule: CapsuleId,
        /// Its state.
        state: String,
    },
    /// Every instance the capsule may have is busy and none came free within the deadline.
    #[error("capsule {capsule}: all {max_instances} instances are busy; try again")]
    Busy {
        /// The capsule.
        capsule: CapsuleId,
        /// Its `limits.max_instances`.
        max_instances: u32,
    },
    /// The engine's instance pool is full (every slot is in use across all capsules); the
    /// call can be retried. Not the capsule's fault: it is not marked failed.
    #[error("capsule {capsule}: the runtime has no free instance slot; try again")]
    RuntimeFull {
        /// The capsule.
        capsule: CapsuleId,
    },
    /// The call's caller cancelled it (an MCP client's `notifications/cancelled`, or its
    /// connection closing). Not the capsule's fault: it is not marked failed.
    #[error("capsule {capsule}: the call was cancelled by its caller")]
    Cancelled {
        /// The capsule.
        capsule: CapsuleId,
    },
    /// A call another capsule made ran out of that caller's time (the caller's deadline
    /// came before the capsule's own). Not the capsule's fault: its instance is dropped,
    /// and it is not marked failed.
    #[error("capsule {capsule}: the calling capsule's deadline passed")]
    CallerDeadline {
        /// The capsule called.
        capsule: CapsuleId,
    },
    /// No such tool is declared in the manifest.
    #[error("capsule {capsule} has no tool named {tool:?}")]
    UnknownTool {
        /// The capsule.
        capsule: CapsuleId,
        /// The tool asked for.
        tool: String,
    },
    /// An input is over its limit.
    #[error("capsule {capsule}: {what} of {len} bytes exceeds the limit of {max}")]
    TooBig {
        /// The capsule.
        capsule: CapsuleId,
        /// What was too big.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A native or MCP capsule's program file does not have the blake3 its manifest pins.
    #[error(
        "capsule {capsule}: {program} has blake3 {found} but the manifest pins {expected}; \
         check what changed it, then update binary_blake3"
    )]
    BinaryMismatch {
        /// The capsule.
        capsule: CapsuleId,
        /// The program file.
        program: String,
        /// The pin.
        expected: String,
        /// What the file hashes to (or why it could not be read).
        found: String,
    },
    /// An MCP capsule's server cannot answer: not connected yet, restarting, or it broke
    /// the protocol or the connection during the call.
    #[error("capsule {capsule}: its MCP server {message}")]
    McpServer {
        /// The capsule.
        capsule: CapsuleId,
        /// What went wrong.
        message: String,
    },
    /// An MCP capsule's tool answered with an error (`isError`, or a JSON-RPC error).
    #[error("capsule {capsule}: tool {tool} failed: {message}")]
    ToolFailed {
        /// The capsule.
        capsule: CapsuleId,
        /// The tool.
        tool: String,
        /// What it said.
        message: String,
    },
    /// An MCP capsule's tool is new or changed its definition, and waits for the operator's
    /// review before it can be called.
    #[error(
        "capsule {capsule}: tool {tool} is {why} and waits for review: \
         run `capsid capsule review {capsule}`"
    )]
    ToolPendingReview {
        /// The capsule.
        capsule: CapsuleId,
        /// The tool.
        tool: String,
        /// "new" or "changed".
        why: &'static str,
    },
    /// No capsule of that name is loaded.
    #[error("no capsule named {0} is loaded")]
    NotLoaded(CapsuleId),
    /// A capsule of that name is already loaded.
    #[error("capsule {0} is already loaded; unload or reload it")]
    AlreadyLoaded(CapsuleId),
    /// Setting up the capsule's storage, grants or audit failed.
    #[error("capsule {capsule}: {what}: {message}")]
    Setup {
        /// The capsule.
        capsule: CapsuleId,
        /// Which step.
        what: &'static str,
        /// What failed.
        message: String,
    },
    /// The engine itself failed.
    #[error("engine: {0}")]
    Engine(String),
    /// The capsule's signature is missing, wrong, or by a key not trusted for it.
    #[error(transparent)]
    Signature(Box<capsid_signing::SigningError>),
}

impl From<capsid_signing::SigningError> for CapsuleError {
    fn from(e: capsid_signing::SigningError) -> Self {
        Self::Signature(Box::new(e))
    }
}

impl CapsuleError {
    /// Whether this error leaves the capsule `failed`: a trap, deadline or memory limit means
    /// its instance can no longer be trusted.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::MemoryLimit { .. } | Self::Trap { .. }
        )
    }

    /// How a tool call that ended in this error is recorded (`outcome` of `tool.result`).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Guest { .. } | Self::ToolFailed { .. } => "tool-error",
            Self::ToolPendingReview { .. } => "pending-review",
            Self::McpServer { .. } => "server-failed",
            Self::Timeout { .. } | Self::CallerDeadline { .. } => "timeout",
            Self::Trap { .. } | Self::MemoryLimit { .. } => "capsule-failed",
            Self::Busy { .. } | Self::RuntimeFull { .. } => "busy",
            Self::TooBig { .. } => "too-large",
            Self::UnknownTool { .. } => "unknown-tool",
            Self::NotReady { .. } => "not-ready",
            Self::Cancelled { .. } => "cancelled",
            _ => "failed",
        }
    }
}
