//! The daemon's methods: each a handler taking its method's typed params and answering its
//! typed result or a [`WireError`] whose code says what kind of failure it is. Which method
//! a request names is decided once, by [`MethodId`].

use std::future::Future;

use super::server::Peer;
use capsid_capabilities::{CapabilityId, Permissions};
use capsid_capsule::CapsuleError;
use capsid_core::limits::{DAEMON_FOLLOW_INTERVAL, DAEMON_PROCESS_LOG_PAGE_BYTES};
use capsid_core::{CapsuleId, Principal};
use capsid_process::Stream;
use capsid_protocol::methods::{
    AnchoredView, ApprovalDecide, ApprovalForget, ApprovalList, ApprovalRefusals, ApprovalShow,
    AuditEntry, AuditExport, AuditTail, AuditVerify, AuditVerifyLattice, CapGrant, CapList,
    CapRevoke, CapsuleDetail, CapsuleInstall, CapsuleList, CapsuleLoad, CapsuleLogs,
    CapsuleLogsFollow, CapsuleParams, CapsuleReload, CapsuleReview, CapsuleReviewAccept,
    CapsuleShow, CapsuleSign, CapsuleUnload, CapsuleVerify, CapsuleView, DaemonStop, Delivery,
    EventPublish, ExportParams, ExportResult, GrantListParams, GrantParams, GrantView, Granted,
    Identities, IdentityLink, IdentityList, InstallChangeView, InstallParams, InstallResult,
    LinkParams, LinkView, LogPage, LogParams, McpTokenCheck, McpTokenCreate, McpTokenList,
    McpTokenRevoke, OutputStream, PendingToolView, PipeLinkView, ProcessList, ProcessLogParams,
    ProcessLogs, ProcessLogsFollow, ProcessOutput, ProcessStats, ProcessView, PublishParams,
    ReviewAcceptParams, ReviewAccepted, RevokeParams, StageView, Status, Stopping, TailParams,
    ToolCall, ToolChangesFollow, ToolDescription, ToolList, ToolRun, TrustAdd, TrustList,
    TrustRemove, UserView, VerifyResult, WorkspaceCommit, WorkspaceDiff, WorkspaceDiscard,
    WorkspaceStatus,
};
use capsid_protocol::{Done, ErrorCode, Method, MethodId, Request, Response, WireError};
use tokio::sync::{SemaphorePermit, mpsc};

use super::server::Shared;
use super::trust;
use super::views::{self, failed, invalid, kernel_error};
use super::workspace;
use super::{approvals, tokens, tools};

type Answer<T> = Result<T, WireError>;

/// Answers `request` (for `method`, already looked up) on `out`: several frames for a stream.
/// `peer` is the connection: its client going away cancels its tool calls.
pub(crate) async fn dispatch(
    shared: &Shared,
    method: Option<MethodId>,
    request: Request,
    out: &mpsc::Sender<Response>,
    peer: &Peer,
) {
    let id = request.id;
    let answer = match method {
        None => Err(WireError::new(
            ErrorCode::UnknownMethod,
            format!(
                "no method {:?}; methods: {}",
                request.method,
                MethodId::ALL
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Some(method) => {
            if let Err(e) = admit(shared, method) {
                Err(e)
            } else {
                if acts_for_operator(method) {
                    peer.acting_for_operator(&shared.kernel);
                }
                answer(shared, method, &request, out, peer).await
            }
        }
    };
    let response = match answer {
        Ok(Some(v)) => Response::ok(id, v),
        Ok(None) => return,
        Err(e) => Response::err(Some(id), e),
    };
    let _ = out.send(response).await;
}

/// Refuses what the daemon cannot do now: anything but `status` while stopping, anything
/// that would have to be recorded over a read-only audit log.
fn admit(shared: &Shared, method: MethodId) -> Answer<()> {
    let kernel = &shared.kernel;
    if (shared.stopping() || kernel.is_closing()) && method != MethodId::Status {
        return Err(WireError::new(
            ErrorCode::ShuttingDown,
            "the daemon is stopping",
        ));
    }
    if kernel.audit().is_read_only() && !method.read_only() {
        let refused = capsid_audit::AuditError::ReadOnly(kernel.audit().path().to_owned());
        return Err(WireError::new(ErrorCode::ReadOnly, refused.to_string()));
    }
    Ok(())
}

/// Whether `method` makes its connection one of the operator's (holding the operator's
/// client session until it closes): every one but the tool methods (which hold their
/// caller's session while they run), the bridge's token checks and decisions (which act
/// for no one, or for a user, on pooled connections).
fn acts_for_operator(method: MethodId) -> bool {
    !matches!(
        method,
        MethodId::ToolList
            | MethodId::ToolCall
            | MethodId::ToolRun
            | MethodId::ToolChangesFollow
            | MethodId::McpTokenCheck
            | MethodId::ApprovalDecide
    )
}

/// The one answer of a unary method (`Ok(None)`: a stream, already answered on `out`).
// The dispatch table: one arm per method, matched exhaustively, grows with the protocol.
#[allow(clippy::too_many_lines)]
async fn answer(
    shared: &Shared,
    method: MethodId,
    request: &Request,
    out: &mpsc::Sender<Response>,
    peer: &Peer,
) -> Answer<Option<serde_json::Value>> {
    let s = shared;
    let value = match method {
        MethodId::Status => run::<Status, _>(request, |_| async { Ok(status(s)) }).await,
        MethodId::CapsuleList => run::<CapsuleList, _>(request, |_| async { Ok(list(s)) }).await,
        MethodId::CapsuleShow => {
            run::<CapsuleShow, _>(request, |p| async move { show(s, &p) }).await
        }
        MethodId::CapsuleReview => {
            run::<CapsuleReview, _>(request, |p| async move { review(s, &p) }).await
        }
        MethodId::CapsuleReviewAccept => {
            run::<CapsuleReviewAccept, _>(request, |p| accept_review(s, p)).await
        }
        MethodId::CapsuleLoad => run::<CapsuleLoad, _>(request, |p| load(s, p)).await,
        MethodId::CapsuleUnload => run::<CapsuleUnload, _>(request, |p| unload(s, p)).await,
        MethodId::CapsuleReload => run::<CapsuleReload, _>(request, |p| reload(s, p)).await,
        MethodId::CapsuleInstall => run::<CapsuleInstall, _>(request, |p| install(s, p)).await,
        MethodId::CapsuleSign => run::<CapsuleSign, _>(request, |p| trust::sign(s, p)).await,
        MethodId::CapsuleVerify => run::<CapsuleVerify, _>(request, |p| trust::verify(s, p)).await,
        MethodId::TrustList => run::<TrustList, _>(request, |_| async { Ok(trust::list(s)) }).await,
        MethodId::TrustAdd => run::<TrustAdd, _>(request, |p| trust::add(s, p)).await,
        MethodId::TrustRemove => run::<TrustRemove, _>(request, |p| trust::remove(s, p)).await,
        MethodId::CapsuleLogs => {
            run::<CapsuleLogs, _>(request, |p| async move { log_page(s, &p.name, p.after) }).await
        }
        MethodId::ToolList => run::<ToolList, _>(request, |p| tools::list(s, p)).await,
        MethodId::ToolCall => run::<ToolCall, _>(request, |p| tools::call(s, p, peer)).await,
        MethodId::ToolRun => {
            let p = request.params::<ToolRun>()?;
            tools::run(s, request.id, p, peer, out).await;
            return Ok(None);
        }
        MethodId::EventPublish => run::<EventPublish, _>(request, |p| publish(s, p)).await,
        MethodId::ProcessList => {
            run::<ProcessList, _>(request, |_| async { Ok(processes(s)) }).await
        }
        MethodId::ProcessStats => {
            run::<ProcessStats, _>(request, |p| async move { super::stats::stats(s, &p) }).await
        }
        MethodId::ProcessLogs => {
            run::<ProcessLogs, _>(request, |p| async move { process_output(s, p) }).await
        }
        MethodId::AuditVerify => run::<AuditVerify, _>(request, |_| verify(s)).await,
        MethodId::AuditVerifyLattice => {
            run::<AuditVerifyLattice, _>(request, |_| verify_lattice(s)).await
        }
        MethodId::AuditTail => run::<AuditTail, _>(request, |p| tail(s, p)).await,
        MethodId::AuditExport => run::<AuditExport, _>(request, |p| export(s, p)).await,
        MethodId::CapGrant => run::<CapGrant, _>(request, |p| grant(s, p)).await,
        MethodId::CapRevoke => run::<CapRevoke, _>(request, |p| revoke(s, p)).await,
        MethodId::CapList => run::<CapList, _>(request, |p| grants(s, p)).await,
        MethodId::IdentityList => run::<IdentityList, _>(request, |_| identities(s)).await,
        MethodId::IdentityLink => run::<IdentityLink, _>(request, |p| link(s, p)).await,
        MethodId::DaemonStop => run::<DaemonStop, _>(request, |_| async { Ok(stop(s)) }).await,
        MethodId::McpTokenCreate => {
            run::<McpTokenCreate, _>(request, |p| tokens::create(s, p)).await
        }
        MethodId::McpTokenList => run::<McpTokenList, _>(request, |_| tokens::list(s)).await,
        MethodId::McpTokenRevoke => {
            run::<McpTokenRevoke, _>(request, |p| tokens::revoke(s, p)).await
        }
        MethodId::McpTokenCheck => run::<McpTokenCheck, _>(request, |p| tokens::check(s, p)).await,
        MethodId::WorkspaceStatus => {
            run::<WorkspaceStatus, _>(request, |p| workspace::status(s, p)).await
        }
        MethodId::WorkspaceDiff => {
            run::<WorkspaceDiff, _>(request, |p| workspace::diff(s, p)).await
        }
        MethodId::WorkspaceCommit => {
            run::<WorkspaceCommit, _>(request, |p| workspace::commit(s, p)).await
        }
        MethodId::WorkspaceDiscard => {
            run::<WorkspaceDiscard, _>(request, |p| workspace::discard(s, p)).await
        }
        MethodId::ApprovalList => {
            run::<ApprovalList, _>(request, |_| async { Ok(approvals::list(s)) }).await
        }
        MethodId::ApprovalShow => {
            run::<ApprovalShow, _>(request, |p| async move { approvals::show(s, &p) }).await
        }
        MethodId::ApprovalDecide => {
            run::<ApprovalDecide, _>(request, |p| approvals::decide(s, p)).await
        }
        MethodId::ApprovalRefusals => {
            run::<ApprovalRefusals, _>(request, |_| approvals::refusals(s)).await
        }
        MethodId::ApprovalForget => {
            run::<ApprovalForget, _>(request, |p| approvals::forget(s, p)).await
        }
        MethodId::CapsuleLogsFollow => {
            let p = request.params::<CapsuleLogsFollow>()?;
            follow_logs(s, request.id, p, out).await;
            return Ok(None);
        }
        MethodId::ToolChangesFollow => {
            let p = request.params::<ToolChangesFollow>()?;
            tools::follow_changes(s, request.id, p, out).await;
            return Ok(None);
        }
        MethodId::ProcessLogsFollow => {
            let p = request.params::<ProcessLogsFollow>()?;
            follow_process(s, request.id, p, out).await;
            return Ok(None);
        }
    };
    value.map(Some)
}

/// Decodes `M`'s params, runs `handler` and encodes its result.
async fn run<M: Method, F: Future<Output = Answer<M::Result>>>(
    request: &Request,
    handler: impl FnOnce(M::Params) -> F,
) -> Answer<serde_json::Value> {
    let params = request.params::<M>()?;
    let result = handler(params).await?;
    serde_json::to_value(result).map_err(failed)
}

fn status(shared: &Shared) -> capsid_protocol::methods::StatusResult {
    let mut status = views::status(shared.kernel.status());
    if let Some(lattice) = &mut status.lattice {
        lattice.host_key = hex::encode(shared.kernel.runtime_public_key().to_bytes());
    }
    status
}

fn list(shared: &Shared) -> Vec<CapsuleView> {
    shared
        .kernel
        .capsules()
        .iter()
        .map(views::capsule)
        .collect()
}

/// One capsule, with its description and tools when loaded.
fn show(shared: &Shared, p: &CapsuleParams) -> Answer<CapsuleDetail> {
    let registry = shared.kernel.registry();
    let info = registry.info(&p.name).ok_or_else(|| not_loaded(&p.name))?;
    // An MCP capsule's tools are its server's accepted ones; a wasm capsule's, its manifest's.
    let (description, tools) = match registry.mcp(&p.name) {
        Some(mcp) => (Some(mcp.manifest().description.clone()), mcp.tools()),
        None => match registry.get(&p.name) {
            Ok(c) => (
                Some(c.manifest().description.clone()),
                c.manifest().tools.clone(),
            ),
            Err(_) => (None, Vec::new()),
        },
    };
    Ok(CapsuleDetail {
        capsule: views::capsule(&info),
        description,
        tool_descriptions: tools
            .iter()
            .map(|t| ToolDescription {
                name: t.name.clone(),
                description: t.description.clone(),
            })
            .collect(),
    })
}

fn review(shared: &Shared, p: &CapsuleParams) -> Answer<Vec<PendingToolView>> {
    let pending = shared
        .kernel
        .review(&p.name)
        .map_err(|e| kernel_error(&e))?;
    Ok(pending
        .into_iter()
        .map(|t| PendingToolView {
            tool: t.tool,
            change: t.change.as_str().to_owned(),
            pinned: t.pinned,
            presented: t.presented,
            digest: t.digest,
        })
        .collect())
}

async fn accept_review(shared: &Shared, p: ReviewAcceptParams) -> Answer<ReviewAccepted> {
    let accepted = shared
        .kernel
        .accept_review(&p.name, &p.digests)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(ReviewAccepted { accepted })
}

async fn load(shared: &Shared, p: CapsuleParams) -> Answer<CapsuleView> {
    let info = shared.kernel.load(&p.name).await;
    Ok(views::capsule(&info.map_err(|e| kernel_error(&e))?))
}

async fn unload(shared: &Shared, p: CapsuleParams) -> Answer<Done> {
    shared
        .kernel
        .unload(&p.name)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Done {})
}

async fn reload(shared: &Shared, p: CapsuleParams) -> Answer<CapsuleView> {
    let info = shared.kernel.reload(&p.name).await;
    Ok(views::capsule(&info.map_err(|e| kernel_error(&e))?))
}

async fn install(shared: &Shared, p: InstallParams) -> Answer<InstallResult> {
    if !p.dir.is_absolute() {
        return Err(invalid("dir must be an absolute path"));
    }
    let installed = shared
        .kernel
        .install(&p.dir, p.accept)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(InstallResult {
        capsule: views::capsule(&installed.capsule),
        signer: installed.receipt.signer.as_ref().map(views::signer),
        requests: installed.receipt.requests,
        accepted: installed.accepted.map(|c| InstallChangeView {
            signer_changed: c.signer_changed,
            signer_was: c.signer_was.as_ref().map(views::signer),
            added_requests: c.added_requests,
        }),
        installed: installed.files,
        left_out: installed.left_out,
    })
}

/// The principal `user` names (absent: the operator).
pub(super) async fn principal(shared: &Shared, user: Option<&str>) -> Answer<Principal> {
    match user {
        None => Ok(shared.kernel.principal()),
        Some(name) => Ok(Principal::User(
            shared
                .kernel
                .find_user(name)
                .await
                .map_err(|e| kernel_error(&e))?,
        )),
    }
}

async fn publish(shared: &Shared, p: PublishParams) -> Answer<Delivery> {
    let payload = match p.payload {
        serde_json::Value::String(s) => s.into_bytes(),
        v => v.to_string().into_bytes(),
    };
    let d = shared
        .kernel
        .publish(&p.topic, payload)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Delivery {
        delivered: d.delivered,
        dropped: d.dropped,
    })
}

fn stop(shared: &Shared) -> Stopping {
    let _ = shared.stop.send(true);
    Stopping { stopping: true }
}

/// A turn at reading the audit log (`DAEMON_AUDIT_READS_AT_ONCE`).
async fn audit_turn(shared: &Shared) -> Answer<SemaphorePermit<'_>> {
    shared
        .audit_reads
        .acquire()
        .await
        .map_err(|_| WireError::new(ErrorCode::ShuttingDown, "the daemon is stopping"))
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Answer<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(failed)?
        .map_err(failed)
}

/// Verifies the audit log as committed so far.
async fn verify(shared: &Shared) -> Answer<VerifyResult> {
    let _turn = audit_turn(shared).await?;
    let path = shared.kernel.audit().path().to_owned();
    let report = blocking(move || capsid_audit::verify_database(&path)).await?;
    Ok(VerifyResult {
        valid: report.is_valid(),
        entries: report.entries(),
        chains: report.chains.len(),
        problems: report.problems(),
        anchored: None,
    })
}

async fn verify_lattice(shared: &Shared) -> Answer<VerifyResult> {
    let _turn = audit_turn(shared).await?;
    let check = shared
        .kernel
        .verify_audit_against_lattice()
        .await
        .map_err(|e| kernel_error(&e))?;
    let mut problems = check.report.problems();
    problems.extend(check.problems.iter().map(ToString::to_string));
    Ok(VerifyResult {
        valid: check.report.is_valid() && check.problems.is_empty(),
        entries: check.report.entries(),
        chains: check.report.chains.len(),
        problems,
        anchored: Some(AnchoredView {
            anchors: check.anchors,
            heads: check.heads,
        }),
    })
}

async fn tail(shared: &Shared, p: TailParams) -> Answer<Vec<AuditEntry>> {
    let _turn = audit_turn(shared).await?;
    let path = shared.kernel.audit().path().to_owned();
    let n = usize::try_from(p.n).map_err(failed)?;
    let rows = blocking(move || capsid_audit::tail(&path, n)).await?;
    Ok(rows
        .into_iter()
        .map(|r| AuditEntry {
            chain: r.chain,
            seq: r.seq,
            time_ns: r.time_ns,
            principal: r.principal,
            capsule: r.capsule,
            action: r.action,
            resource: r.resource,
            decision: r.decision,
            details: r.details,
        })
        .collect())
}

/// `audit.export`: the log as JSON lines into a new file (recorded, unless the log is
/// read-only: then it is exported to be inspected, and cannot record that).
async fn export(shared: &Shared, p: ExportParams) -> Answer<ExportResult> {
    let _turn = audit_turn(shared).await?;
    let kernel = &shared.kernel;
    if !p.path.is_absolute() {
        return Err(invalid("path must be an absolute path"));
    }
    let audit = kernel.audit().clone();
    let target = p.path.clone();
    let entries = blocking(move || audit.export_jsonl(&target)).await?;
    if !kernel.audit().is_read_only() {
        kernel
            .note(
                capsid_audit::action::EXPORT,
                "audit://log",
                serde_json::json!({ "path": p.path, "entries": entries }),
            )
            .await
            .map_err(|e| kernel_error(&e))?;
    }
    Ok(ExportResult { entries })
}

async fn grant(shared: &Shared, p: GrantParams) -> Answer<Granted> {
    let permissions: Permissions = p
        .permissions
        .parse()
        .map_err(|e| invalid(format!("permissions: {e}")))?;
    let to = principal(shared, p.user.as_deref()).await?;
    let id = shared
        .kernel
        .grant(to, p.capsule, &p.pattern, permissions)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Granted { id: id.to_string() })
}

async fn revoke(shared: &Shared, p: RevokeParams) -> Answer<Done> {
    let id: CapabilityId =
        p.id.parse()
            .map_err(|_| invalid(format!("{:?} is not a capability id", p.id)))?;
    shared
        .kernel
        .revoke(id)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Done {})
}

async fn grants(shared: &Shared, p: GrantListParams) -> Answer<Vec<GrantView>> {
    let kernel = &shared.kernel;
    let whose = principal(shared, p.user.as_deref()).await?;
    let grants = kernel.capabilities().list(&whose).await.map_err(failed)?;
    Ok(grants
        .iter()
        .map(|g| GrantView {
            id: g.capability.id.to_string(),
            capsule: g.capability.capsule.clone(),
            pattern: g.capability.pattern.as_str().to_owned(),
            permissions: g.capability.permissions.to_string(),
            revoked: g.revoked,
            approval: g.approval.clone(),
            session: g.capability.session.map(|s| s.to_string()),
        })
        .collect())
}

async fn identities(shared: &Shared) -> Answer<Identities> {
    let identity = shared.kernel.identity();
    let users = identity.users().await.map_err(failed)?;
    let links = identity.links(None).await.map_err(failed)?;
    Ok(Identities {
        users: users
            .into_iter()
            .map(|u| UserView {
                id: u.id.to_string(),
                name: u.name,
            })
            .collect(),
        links: links
            .into_iter()
            .map(|l| LinkView {
                platform: l.platform,
                platform_user_id: l.platform_user_id,
                user: l.user.to_string(),
            })
            .collect(),
    })
}

async fn link(shared: &Shared, p: LinkParams) -> Answer<Done> {
    let user = p
        .user
        .parse()
        .map_err(|_| invalid("user must be a user id (see `capsid who`)"))?;
    shared
        .kernel
        .link_identity(&p.platform, &p.platform_user_id, &user)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Done {})
}

/// Persistent processes and native capsules' programs, as the operator sees them (never
/// the processes' ids: those belong to the capsules that started them).
fn processes(shared: &Shared) -> Vec<ProcessView> {
    let kernel = &shared.kernel;
    let mut out: Vec<ProcessView> = kernel
        .registry()
        .processes()
        .list_all()
        .into_iter()
        .map(|(owner, s)| ProcessView::Persistent {
            capsule: owner.capsule,
            label: s.label,
            pid: s.pid,
            generation: s.generation,
            started_ms: s.started_ms,
            running: s.exit.is_none(),
            exit_code: s.exit.and_then(|e| e.code),
            restarts: s.restart.restarts,
            gave_up: s.restart.gave_up,
            stages: s
                .stages
                .iter()
                .map(|st| StageView {
                    pid: st.pid,
                    running: st.exit.is_none(),
                    exit_code: st.exit.and_then(|e| e.code),
                })
                .collect(),
            links: s
                .links
                .iter()
                .map(|l| PipeLinkView {
                    bytes: l.bytes,
                    rate: l.rate,
                    ended: l.ended,
                })
                .collect(),
        })
        .collect();
    for info in kernel.capsules() {
        if let Some(native) = info.native {
            out.push(ProcessView::Native {
                capsule: info.name,
                health: views::health(&native.health),
                restarts: native.restarts,
            });
        }
    }
    out
}

/// A capsule's log lines after `after`, and where to continue from.
fn log_page(shared: &Shared, name: &CapsuleId, after: u64) -> Answer<LogPage> {
    let log = shared.kernel.registry().log(name).map_err(|e| match e {
        CapsuleError::NotLoaded(_) => not_loaded(name),
        other => WireError::new(views::capsule_error_code(&other), other.to_string()),
    })?;
    let lines = log.since(after);
    let next = lines.last().map_or(after, |l| l.seq);
    Ok(LogPage {
        lines: lines.iter().map(views::log_line).collect(),
        next,
    })
}

/// A persistent process's output after `p.after`.
fn process_output(shared: &Shared, p: ProcessLogParams) -> Answer<ProcessOutput> {
    let stream = match p.stream {
        OutputStream::Stdout => Stream::Stdout,
        OutputStream::Stderr => Stream::Stderr,
    };
    let generation = p.generation;
    let chunk = shared
        .kernel
        .registry()
        .processes()
        .read_by_generation(generation, stream, p.after, DAEMON_PROCESS_LOG_PAGE_BYTES)
        .map_err(|_| {
            WireError::new(
                ErrorCode::NotFound,
                format!("no process of generation {generation}"),
            )
        })?;
    Ok(ProcessOutput {
        text: String::from_utf8_lossy(&chunk.bytes).into_owned(),
        next: chunk.next.offset,
        missed: chunk.missed,
    })
}

/// Sends `page(after)` frames (`more: true`) while they have something new, until the
/// client goes away or the daemon stops (then one last frame, `last(after)`).
async fn follow<T: serde::Serialize>(
    shared: &Shared,
    id: u64,
    out: &mpsc::Sender<Response>,
    mut after: u64,
    page: impl Fn(u64) -> Answer<(T, u64, bool)>,
    last: impl Fn(u64) -> T,
) {
    let frame = |value: &T| serde_json::to_value(value).map_err(failed);
    loop {
        match page(after).and_then(|(value, next, fresh)| Ok((frame(&value)?, next, fresh))) {
            Ok((value, next, fresh)) => {
                after = next;
                if fresh {
                    let mut response = Response::ok(id, value);
                    response.more = true;
                    if out.send(response).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = out.send(Response::err(Some(id), e)).await;
                return;
            }
        }
        if shared.stopping() || shared.kernel.is_closing() || out.is_closed() {
            let response = match frame(&last(after)) {
                Ok(v) => Response::ok(id, v),
                Err(e) => Response::err(Some(id), e),
            };
            let _ = out.send(response).await;
            return;
        }
        tokio::time::sleep(DAEMON_FOLLOW_INTERVAL).await;
    }
}

/// Streams a capsule's log: what is there, then new lines as they come.
async fn follow_logs(shared: &Shared, id: u64, p: LogParams, out: &mpsc::Sender<Response>) {
    let page = |after| {
        let page = log_page(shared, &p.name, after)?;
        let (next, fresh) = (page.next, !page.lines.is_empty());
        Ok((page, next, fresh))
    };
    let last = |next| LogPage {
        lines: Vec::new(),
        next,
    };
    follow(shared, id, out, p.after, page, last).await;
}

/// Streams a persistent process's output until it is forgotten, the client goes away or
/// the daemon stops.
async fn follow_process(
    shared: &Shared,
    id: u64,
    p: ProcessLogParams,
    out: &mpsc::Sender<Response>,
) {
    let page = |after| {
        let page = process_output(shared, ProcessLogParams { after, ..p })?;
        let (next, fresh) = (page.next, !page.text.is_empty() || page.missed != 0);
        Ok((page, next, fresh))
    };
    let last = |next| ProcessOutput {
        text: String::new(),
        next,
        missed: 0,
    };
    follow(shared, id, out, p.after, page, last).await;
}

fn not_loaded(name: &CapsuleId) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("capsule {name} is not loaded"))
}
