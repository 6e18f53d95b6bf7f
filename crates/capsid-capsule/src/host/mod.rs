//! The host side of the capsule WIT, one module per interface (`log`, `sys`, `kv`, `fs`,
//! `ipc`, `tools`, ...), plus the per-instance state and the one place capability checks and their audit
//! entries are made ([`CapsuleContext::authorize`]).
//!
//! Audit policy: every denial is recorded; an allow is recorded when the call has an effect
//! (a write, a publish) and the record is durable before the effect happens. If the record
//! cannot be written the call is denied. Reads that are allowed are not recorded: they change
//! nothing, and recording them would put an `fsync` on every `kv.get`.

mod approval;
mod ask;
mod fs;
mod ipc;
mod kv;
mod log;
mod persistent;
mod pipeline;
mod process;
mod progress;

pub use ask::APPROVAL_REQUESTED_TOPIC;
pub(crate) use ask::Asked;
pub(crate) use persistent::restart_gate;
pub use pipeline::BackgroundPipeline;
pub use process::BackgroundChild;
pub(crate) use process::sandbox_for;
mod stdio;
mod sys;
mod tools;

pub(crate) use tools::Callees;

use std::sync::Arc;
use std::time::Instant;

use capsid_audit::{AuditLog, ChainId, Record};
use capsid_capabilities::{
    AuditLogSink, CapabilityId, CapabilityStore, Check, Denied, Permissions, RecordAllow, Subject,
};
use capsid_core::limits::MAX_AUDIT_FIELD_BYTES;
use capsid_core::{CapsuleId, Principal};
use capsid_events::EventBus;
use capsid_storage::{KvStore, ScopedKvStore};
use capsid_vfs::Vfs;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::WitError;
use crate::logbuf::{CapsuleLog, LogSource, sanitize};

/// What every capsule of a runtime shares: authority, audit, storage, files, events.
#[derive(Clone)]
pub struct HostServices {
    /// Answers every capability check.
    pub capabilities: Arc<CapabilityStore>,
    /// Where decisions and effects are recorded.
    pub audit: Arc<AuditLog>,
    /// The audit chain of this runtime session.
    pub chain: ChainId,
    /// The key-value store capsule namespaces live in.
    pub kv: Arc<dyn KvStore>,
    /// The workspace as capsules see it (normally an overlay).
    pub vfs: Arc<dyn Vfs>,
    /// The workspace directory itself, where native programs run.
    pub workspace: std::path::PathBuf,
    /// The event bus.
    pub bus: EventBus,
    /// The principal capsules act for.
    pub principal: Principal,
    /// Who sandboxed programs are inside their sandbox (`[sandbox]` in `config.toml`).
    pub sandbox_identity: capsid_process::SandboxIdentity,
    /// How capsules' outbound HTTP requests resolve names and verify TLS.
    pub http: Arc<crate::http::OutboundHttp>,
    /// Calls waiting for a person's approval.
    pub approvals: Arc<crate::approval::Approvals>,
    /// Who may sign the capsules loaded: checked at every load, before anything is
    /// compiled or read from the compiled cache.
    pub signatures: Arc<capsid_signing::SignatureCheck>,
}

impl std::fmt::Debug for HostServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServices")
            .field("chain", &self.chain)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// The audit form of a capsule-supplied string: escaped and cut when it is hostile or long.
pub(crate) fn audit_text(s: &str) -> String {
    if s.len() <= MAX_AUDIT_FIELD_BYTES && !s.chars().any(char::is_control) {
        s.to_owned()
    } else {
        sanitize(s, MAX_AUDIT_FIELD_BYTES)
    }
}

impl HostServices {
    /// Where capability decisions are recorded: this session's chain.
    pub(crate) fn sink(&self) -> AuditLogSink {
        AuditLogSink::new(self.audit.clone(), self.chain)
    }

    /// Checks `permission` on `resource` for `subject` and records the decision, through
    /// the one check-and-record path ([`CapabilityStore::authorize`]); allows are recorded
    /// (durably, before this returns) when `effectful`.
    pub(crate) async fn authorize(
        &self,
        subject: &Subject,
        action: &str,
        permission: Permissions,
        resource: &str,
        effectful: bool,
        details: serde_json::Value,
    ) -> Result<CapabilityId, Denied> {
        let check = Check {
            subject,
            action,
            permission,
            resource,
            record_allow: if effectful {
                RecordAllow::Before
            } else {
                RecordAllow::Never
            },
            details,
        };
        self.capabilities.authorize(check, &self.sink()).await
    }

    /// Appends one durable audit entry for `subject`; `Err` when it could not be written.
    pub(crate) async fn record(
        &self,
        subject: &Subject,
        action: &str,
        resource: &str,
        decision: capsid_audit::Decision,
        details: &serde_json::Value,
    ) -> Result<(), String> {
        let record = entry(subject, action, resource, decision, details)?;
        let appended = self.audit.append(self.chain, record).await.map(|_| ());
        logged(action, appended, "audit append failed; denying")
    }

    /// Queues one audit entry for `subject` ([`AuditLog::append_queued`]): in the log ahead
    /// of anything recorded after it, durable with the next commit.
    pub(crate) async fn record_queued(
        &self,
        subject: &Subject,
        action: &str,
        resource: &str,
        decision: capsid_audit::Decision,
        details: &serde_json::Value,
    ) -> Result<(), String> {
        let record = entry(subject, action, resource, decision, details)?;
        let queued = self.audit.append_queued(self.chain, record).await;
        logged(action, queued, "audit append failed")
    }
}

/// An append's failure, logged (`what`) and as text.
fn logged(
    action: &str,
    result: Result<(), capsid_audit::AuditError>,
    what: &str,
) -> Result<(), String> {
    result.map_err(|e| {
        tracing::error!(action, error = %e, "{what}");
        e.to_string()
    })
}

/// The audit entry of `action` on `resource` by `subject`.
fn entry(
    subject: &Subject,
    action: &str,
    resource: &str,
    decision: capsid_audit::Decision,
    details: &serde_json::Value,
) -> Result<Record, String> {
    let mut record = Record::new(subject.principal, action, &audit_text(resource), decision)
        .and_then(|r| r.details(details))
        .map_err(|e| e.to_string())?;
    if let Some(c) = &subject.capsule {
        record = record.capsule(c.clone());
    }
    Ok(record)
}

/// What the host knows about one loaded capsule; shared by its instances.
pub(crate) struct CapsuleContext {
    pub name: CapsuleId,
    pub subject: Subject,
    pub services: HostServices,
    pub kv: ScopedKvStore,
    /// `kv://capsule/<name>`, the resource every KV call is checked against.
    pub kv_resource: String,
    /// Resolved `[env]` configuration (secrets included: never log it).
    pub config: Vec<(String, String)>,
    pub log: CapsuleLog,
    pub started: Instant,
    /// Whether its programs must run in the OS sandbox.
    pub process_sandbox: capsid_manifest::SandboxPolicy,
    /// Whether its manifest asks for the network (`uplink`); granted or not is checked at
    /// each spawn.
    pub uplink: bool,
    /// The runtime's persistent processes (this capsule sees only its own).
    pub processes: Arc<capsid_process::ProcessTable>,
    /// Its outbound HTTP requests open at once, over all its instances
    /// (`MAX_HTTP_INFLIGHT`).
    pub http_inflight: Arc<tokio::sync::Semaphore>,
    /// Its outbound HTTP requests made and not yet ended, connected or not
    /// (`MAX_HTTP_QUEUED`).
    pub http_queued: Arc<tokio::sync::Semaphore>,
    /// What its manifest lets it ask a person for (`[capabilities] ask`).
    pub ask: Vec<capsid_capabilities::Pattern>,
    /// The capsules whose tools it may call (`capsid:host/tools`), as grants allow.
    pub callees: Callees,
}

impl CapsuleContext {
    /// Checks `permission` on `resource` for this capsule ([`HostServices::authorize`]),
    /// asking a person first when the capsule may ask for it and holds no grant
    /// (`ask.rs`). Denials are audited; allows are audited (durably, before returning) when
    /// `effectful`. A failed audit write denies.
    pub(crate) async fn authorize(
        &self,
        op: &str,
        permission: Permissions,
        resource: &str,
        effectful: bool,
    ) -> Result<(), WitError> {
        self.authorize_writing(op, permission, resource, effectful, None)
            .await
    }

    /// [`authorize`](Self::authorize) for a call that writes `carries`: a person asked
    /// about it approves those bytes (their blake3 is in the request's digest).
    pub(crate) async fn authorize_writing(
        &self,
        op: &str,
        permission: Permissions,
        resource: &str,
        effectful: bool,
        carries: Option<&[&[u8]]>,
    ) -> Result<(), WitError> {
        self.authorize_detailed(
            op,
            permission,
            resource,
            effectful,
            carries,
            serde_json::json!({}),
        )
        .await
        .map_err(|_| WitError::Denied)
    }

    /// [`authorize_writing`](Self::authorize_writing) with `details` (a JSON object) in its
    /// record; why it refused: denied, or the record could not be written.
    pub(crate) async fn authorize_detailed(
        &self,
        op: &str,
        permission: Permissions,
        resource: &str,
        effectful: bool,
        carries: Option<&[&[u8]]>,
        mut details: serde_json::Value,
    ) -> Result<(), Denied> {
        match self
            .ask_if_needed(op, permission, resource, None, carries)
            .await
        {
            Asked::Unasked => {}
            Asked::Refused => {
                return Err(Denied::NotGranted(capsid_capabilities::DenyReason::NoGrant));
            }
            Asked::Approved { id, .. } => {
                if effectful {
                    if let Some(fields) = details.as_object_mut() {
                        fields.insert("approval".into(), serde_json::json!(id));
                    }
                    self.note(op, resource, capsid_audit::Decision::Allow, &details)
                        .await
                        .map_err(Denied::Unrecorded)?;
                }
                return Ok(());
            }
        }
        self.services
            .authorize(
                &self.subject_now(),
                op,
                permission,
                resource,
                effectful,
                details,
            )
            .await
            .map(|_| ())
    }

    /// Who acts now: this capsule, from the client session of the tool call it runs, if a
    /// client made it (only then does a grant approved for that session apply).
    pub(crate) fn subject_now(&self) -> std::borrow::Cow<'_, Subject> {
        let session = crate::control::CURRENT_CALL
            .try_with(|call| call.caller().1)
            .ok()
            .flatten();
        match session {
            Some(session) => std::borrow::Cow::Owned(Subject {
                session: Some(session),
                ..self.subject.clone()
            }),
            None => std::borrow::Cow::Borrowed(&self.subject),
        }
    }

    /// Records a refusal: a denied check, or an effect the host refused after the check (a
    /// symlink leading out of the workspace). The caller is refusing already, so a failed
    /// record changes nothing for it (and is logged by [`HostServices::record`]).
    pub(crate) async fn record_refusal(&self, op: &str, resource: &str, why: &str) {
        let details = serde_json::json!({ "reason": why });
        let _ = self
            .note(op, resource, capsid_audit::Decision::Deny, &details)
            .await;
    }

    /// Records `op` on `resource` by this capsule.
    pub(crate) async fn note(
        &self,
        op: &str,
        resource: &str,
        decision: capsid_audit::Decision,
        details: &serde_json::Value,
    ) -> Result<(), String> {
        self.services
            .record(&self.subject, op, resource, decision, details)
            .await
    }
}

/// Denies memory growth that would take the instance's memories, together, past the
/// capsule's limit, and remembers that it did, so the trap that follows is reported as a
/// memory limit rather than a generic trap.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// Bytes of linear memory the instance has, over all its memories.
    total: usize,
    pub hit: bool,
}

/// The error a refused memory growth traps the instance with.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {0} bytes reached")]
pub(crate) struct MemoryLimitHit(usize);

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryLimitHit(self.max_bytes)));
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The pool bounds tables too; this keeps a hostile guest from asking for the pool's
        // whole slot.
        Ok(desired <= capsid_core::limits::MAX_INSTANCE_TABLE_ELEMENTS)
    }
}

/// The data of one instance's store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http_ctx: WasiHttpCtx,
    http: crate::http::HttpHooks,
    /// Background children this instance holds.
    backgrounds: usize,
    pub limiter: MemoryLimiter,
    pub cx: Arc<CapsuleContext>,
    /// When the current call must end; checked at every epoch tick.
    pub deadline: Instant,
    /// The current call's caller: its cancellation (checked at every epoch tick too) and
    /// where its progress reports go.
    pub control: crate::CallControl,
}

impl HostState {
    /// Whether this instance holds background children (they die with it).
    pub(crate) fn holds_children(&self) -> bool {
        self.backgrounds > 0
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // Requests sent during a call are bounded by that call's deadline.
        self.http.deadline = self.deadline + self.control.deadline_moved().0;
        self.http.control = self.control.clone();
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl crate::bindings::capsid::host::types::Host for HostState {}

/// A store for one new instance of the capsule in `cx`: WASI with nothing granted (no
/// preopened directories, no environment, no arguments, no sockets, stdin closed; stdout and
/// stderr go to the capsule's log), outbound HTTP only as its `net://` grants allow, and
/// memory limited to `memory_mb`.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    cx: Arc<CapsuleContext>,
    memory_mb: u64,
) -> Store<HostState> {
    let wasi = WasiCtx::builder()
        .stdout(stdio::GuestOutput::new(cx.log.clone(), LogSource::Stdout))
        .stderr(stdio::GuestOutput::new(cx.log.clone(), LogSource::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let max_bytes = usize::try_from(memory_mb << 20).unwrap_or(usize::MAX);
    let mut store = Store::new(
        engine,
        HostState {
            wasi,
            table: ResourceTable::new(),
            http_ctx: WasiHttpCtx::new(),
            http: crate::http::HttpHooks::new(cx.clone()),
            backgrounds: 0,
            limiter: MemoryLimiter {
                max_bytes,
                total: 0,
                hit: false,
            },
            cx,
            deadline: Instant::now(),
            control: crate::CallControl::default(),
        },
    );
    store.limiter(|s| &mut s.limiter);
    // At every epoch tick the guest yields to the async runtime (so a spinning capsule never
    // holds a worker thread) and is interrupted once its call's deadline has passed or its
    // caller has cancelled it.
    store.epoch_deadline_callback(|cx| {
        let data = cx.data();
        let (moved, _) = data.control.deadline_moved();
        Ok(
            if Instant::now() >= data.deadline + moved || data.control.is_cancelled() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            },
        )
    });
    store
}
