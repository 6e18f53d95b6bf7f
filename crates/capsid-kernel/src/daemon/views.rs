//! The kernel's values as the protocol carries them, and its errors as wire errors whose
//! code keeps their kind.

use capsid_capsule::{CapsuleError, CapsuleInfo, CapsuleState, LoadKind, LogLine};
use capsid_process::Health;
use capsid_protocol::methods::{
    BootSummary, CapsuleStateView, CapsuleView, FailedLoad, HealthView, LatticeTrafficView,
    LatticeView, LoadKindView, LogLevel, LogSource, McpView, NativeView, StatusResult,
};
use capsid_protocol::{ErrorCode, WireError};

use crate::error::KernelError;
use crate::install::InstallError;
use crate::kernel::KernelStatus;
use capsid_capabilities::CapabilityError;

pub(crate) fn status(s: KernelStatus) -> StatusResult {
    StatusResult {
        version: s.version.to_owned(),
        pid: s.pid,
        home: s.home,
        workspace: s.workspace,
        dev: s.dev,
        config_fingerprint: s.config_fingerprint,
        uptime_ms: s.uptime_ms,
        boot: BootSummary {
            loaded: s.boot.loaded.len(),
            failed: s
                .boot
                .failed
                .iter()
                .map(|(name, reason)| FailedLoad {
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            timed_out: s.boot.timed_out,
            boot_ms: s.boot.boot_ms,
            audit_problems: s.boot.audit_problems.clone(),
            audit_read_only: s.boot.audit_read_only,
            unrecorded: s.boot.unrecorded.clone(),
        },
        capsules: s.capsules,
        ready: s.ready,
        failed: s.failed,
        lattice: s.lattice.map(|l| LatticeView {
            name: l.name,
            state: match l.state {
                capsid_lattice::LinkState::Connected => "connected",
                capsid_lattice::LinkState::Disconnected => "disconnected",
                capsid_lattice::LinkState::Pending => "pending",
            }
            .to_owned(),
            server: l.server,
            servers: l.servers,
            disconnects: l.disconnects,
            since_ms: l.since_ms,
            host_key: String::new(),
            traffic: s
                .lattice_traffic
                .map(|t| LatticeTrafficView {
                    calls_sent: t.calls_sent,
                    calls_served: t.calls_served,
                    calls_refused: t.calls_refused,
                    events_exported: t.events_exported,
                    events_imported: t.events_imported,
                    events_refused: t.events_refused,
                    exports_dropped: t.exports_dropped,
                    cancels_refused: t.cancels_refused,
                })
                .unwrap_or_default(),
        }),
    }
}

pub(crate) fn capsule(info: &CapsuleInfo) -> CapsuleView {
    let (state, reason) = match &info.state {
        CapsuleState::Loading => (CapsuleStateView::Loading, None),
        CapsuleState::Ready => (CapsuleStateView::Ready, None),
        CapsuleState::Failed(r) => (CapsuleStateView::Failed, Some(r.clone())),
        CapsuleState::Unloading => (CapsuleStateView::Unloading, None),
    };
    CapsuleView {
        name: info.name.clone(),
        version: info.version.as_ref().map(ToString::to_string),
        state,
        reason,
        dir: info.dir.clone(),
        tools: info.tools.clone(),
        blake3: info.blake3.clone(),
        load_kind: info.load_kind.map(|k| match k {
            LoadKind::Compiled => LoadKindView::Compiled,
            LoadKind::Cached => LoadKindView::Cached,
        }),
        native: info.native.as_ref().map(|n| NativeView {
            health: health(&n.health),
            restarts: n.restarts,
        }),
        mcp: info.mcp.as_ref().map(|m| McpView {
            connected: m.connected,
            pending_review: m.pending_review.clone(),
        }),
        signer: info.signer.as_ref().map(signer),
    }
}

/// The wire form of a capsule's signer.
pub(crate) fn signer(s: &capsid_signing::Signer) -> capsid_protocol::methods::SignerView {
    capsid_protocol::methods::SignerView {
        key_id: s.key_id.clone(),
        name: s.name.clone(),
        trusted: s.trusted,
    }
}

pub(crate) fn health(h: &Health) -> HealthView {
    match h {
        Health::Starting => HealthView::Starting,
        Health::Running { pid } => HealthView::Running { pid: *pid },
        Health::Backoff {
            attempt,
            retry_in_ms,
        } => HealthView::Backoff {
            attempt: *attempt,
            retry_in_ms: *retry_in_ms,
        },
        Health::Finished => HealthView::Finished,
        Health::Failed { reason } => HealthView::Failed {
            reason: reason.clone(),
        },
        Health::Stopped => HealthView::Stopped,
    }
}

pub(crate) fn log_line(l: &LogLine) -> capsid_protocol::methods::LogLine {
    use capsid_capsule::{LogLevel as L, LogSource as S};
    capsid_protocol::methods::LogLine {
        seq: l.seq,
        time_ms: l.time_ms,
        level: match l.level {
            L::Trace => LogLevel::Trace,
            L::Debug => LogLevel::Debug,
            L::Info => LogLevel::Info,
            L::Warn => LogLevel::Warn,
            L::Error => LogLevel::Error,
        },
        source: match l.source {
            S::Guest => LogSource::Guest,
            S::Stdout => LogSource::Stdout,
            S::Stderr => LogSource::Stderr,
            S::Host => LogSource::Host,
        },
        message: l.message.clone(),
    }
}

/// The wire form of a kernel error: its one line, and a code for its kind.
pub(crate) fn kernel_error(e: &KernelError) -> WireError {
    let code = match e {
        KernelError::NotInstalled(_)
        | KernelError::NotServed { .. }
        | KernelError::NotMcp(_)
        | KernelError::Approval(_)
        | KernelError::UnknownUser(_)
        | KernelError::UnknownToken(_)
        | KernelError::Kv(capsid_storage::KvError::UnknownUser(_)) => ErrorCode::NotFound,
        KernelError::ShuttingDown => ErrorCode::ShuttingDown,
        KernelError::Audit(capsid_audit::AuditError::ReadOnly(_)) => ErrorCode::ReadOnly,
        KernelError::Install(i) => match &**i {
            InstallError::Loaded { .. } | InstallError::NeedsAccept { .. } => ErrorCode::Conflict,
            InstallError::Io { .. }
            | InstallError::Stranded { .. }
            | InstallError::Changed { .. } => ErrorCode::Failed,
            InstallError::Manifest { .. } | InstallError::MissingComponent { .. } => {
                ErrorCode::Invalid
            }
        },
        KernelError::AlreadyLinked { .. }
        | KernelError::Vfs(
            capsid_vfs::VfsError::Conflicts(_) | capsid_vfs::VfsError::ChangedSincePlan,
        ) => ErrorCode::Conflict,
        KernelError::AmbiguousUser(_)
        | KernelError::Capabilities(
            CapabilityError::Pattern(_) | CapabilityError::InvalidGrant(_),
        )
        | KernelError::Manifest(_)
        | KernelError::Event(_)
        | KernelError::ReservedTopic { .. }
        | KernelError::TooManyPaths(_)
        | KernelError::Vfs(
            capsid_vfs::VfsError::InvalidPath { .. }
            | capsid_vfs::VfsError::ReplacedAbove { .. }
            | capsid_vfs::VfsError::Unchanged(_),
        ) => ErrorCode::Invalid,
        KernelError::Capsule(c) => capsule_error_code(c),
        KernelError::Remote {
            kind: Some(code), ..
        } => *code,
        KernelError::Signing(s) => signing_error_code(s),
        KernelError::Trust(t) => trust_error_code(t),
        _ => ErrorCode::Failed,
    };
    WireError::new(code, e.to_string())
}

/// What kind of failure a signature problem is: the capsule is not trusted, unless the
/// files could not be read (or signed) at all.
fn signing_error_code(e: &capsid_signing::SigningError) -> ErrorCode {
    use capsid_signing::SigningError;
    match e {
        SigningError::Io { .. } => ErrorCode::Failed,
        SigningError::Manifest(_) => ErrorCode::Invalid,
        _ => ErrorCode::Untrusted,
    }
}

/// What kind of failure a trust store refusal is.
fn trust_error_code(e: &capsid_signing::TrustError) -> ErrorCode {
    use capsid_signing::TrustError;
    match e {
        TrustError::NameTaken(_) | TrustError::KeyTaken(_) => ErrorCode::Conflict,
        TrustError::NotFound(_) => ErrorCode::NotFound,
        TrustError::BadName(_)
        | TrustError::Reserved
        | TrustError::BadKey(_)
        | TrustError::BadScope(_)
        | TrustError::Full(_) => ErrorCode::Invalid,
        TrustError::Io { .. } | TrustError::InsecureMode { .. } | TrustError::Malformed { .. } => {
            ErrorCode::Failed
        }
    }
}

/// What kind of failure a capsule error is, for its caller.
pub(crate) fn capsule_error_code(e: &CapsuleError) -> ErrorCode {
    match e {
        CapsuleError::NotLoaded(_) => ErrorCode::NotFound,
        CapsuleError::UnknownTool { .. } => ErrorCode::UnknownTool,
        CapsuleError::Denied { .. } => ErrorCode::Denied,
        CapsuleError::Busy { .. } | CapsuleError::RuntimeFull { .. } => ErrorCode::Busy,
        CapsuleError::TooBig { .. } | CapsuleError::TooLarge { .. } => ErrorCode::TooLarge,
        CapsuleError::NotReady { .. } | CapsuleError::ToolPendingReview { .. } => {
            ErrorCode::NotReady
        }
        CapsuleError::Timeout { .. } | CapsuleError::CallerDeadline { .. } => ErrorCode::Timeout,
        CapsuleError::MemoryLimit { .. } | CapsuleError::Trap { .. } => ErrorCode::CapsuleFailed,
        CapsuleError::Guest { .. } | CapsuleError::ToolFailed { .. } => ErrorCode::ToolError,
        CapsuleError::Cancelled { .. } => ErrorCode::Cancelled,
        CapsuleError::AlreadyLoaded(_) => ErrorCode::Conflict,
        CapsuleError::Signature(s) => signing_error_code(s),
        CapsuleError::Manifest(_)
        | CapsuleError::PinMismatch { .. }
        | CapsuleError::InvalidComponent { .. }
        | CapsuleError::WrongWorld { .. }
        | CapsuleError::BinaryMismatch { .. }
        | CapsuleError::NotWasm(_) => ErrorCode::Invalid,
        CapsuleError::Read { .. }
        | CapsuleError::Setup { .. }
        | CapsuleError::Compile { .. }
        | CapsuleError::Engine(_)
        | CapsuleError::McpServer { .. } => ErrorCode::Failed,
    }
}

/// A failure of the daemon itself (a task, storage, encoding).
pub(crate) fn failed(e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorCode::Failed, e.to_string())
}

/// A request that is well-formed but cannot be done as asked.
pub(crate) fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Invalid, message)
}
