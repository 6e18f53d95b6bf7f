//! The daemon's methods: each takes its params object and answers a JSON result or a
//! [`WireError`] whose code says what kind of failure it is.

use std::path::PathBuf;
use std::time::Duration;

use capsid_capabilities::{CapabilityId, Permissions};
use capsid_capsule::{CapsuleError, CapsuleInfo, CapsuleState};
use capsid_core::CapsuleId;
use capsid_process::Stream;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::protocol::{Request, Response, WireError};
use super::server::Shared;
use crate::error::KernelError;

/// Every method the daemon answers, for `unknown-method` errors and the docs.
pub const METHODS: &[&str] = &[
    "status",
    "capsule.list",
    "capsule.show",
    "capsule.load",
    "capsule.unload",
    "capsule.reload",
    "capsule.install",
    "tool.call",
    "event.publish",
    "process.list",
    "capsule.logs",
    "process.logs",
    "audit.verify",
    "audit.tail",
    "audit.export",
    "cap.grant",
    "cap.revoke",
    "cap.list",
    "identity.list",
    "identity.link",
    "daemon.stop",
];

/// The methods that change nothing (and `daemon.stop`): all a daemon whose audit log is
/// read-only answers, since anything else would have to be recorded. `audit.export` is
/// the one read that is otherwise recorded: over a read-only log it runs unrecorded, being
/// the way to take the evidence out.
const READ_ONLY_METHODS: &[&str] = &[
    "status",
    "capsule.list",
    "capsule.show",
    "process.list",
    "capsule.logs",
    "process.logs",
    "audit.verify",
    "audit.tail",
    "audit.export",
    "cap.list",
    "identity.list",
    "daemon.stop",
];

/// Whether `method` is answered on the connection's reader rather than in a task of its own:
/// the cheap reads (no I/O, no lock held across an await), whose only wait is for room in the
/// connection's answer queue.
pub(crate) fn answered_inline(method: &str) -> bool {
    matches!(method, "status" | "capsule.list" | "capsule.show")
}

/// How often a log follow looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// Most bytes of a process's output one `process.logs` answer carries.
const PROCESS_LOG_PAGE: usize = 1 << 20;

type Answer = Result<Value, WireError>;

/// Answers `request` on `out` (several frames for a stream).
pub(crate) async fn dispatch(shared: &Shared, request: Request, out: &mpsc::Sender<Response>) {
    let id = request.id;
    if request.params["follow"].as_bool() == Some(true) {
        match request.method.as_str() {
            "capsule.logs" => return follow_logs(shared, id, &request.params, out).await,
            "process.logs" => return follow_process(shared, id, &request.params, out).await,
            _ => {}
        }
    }
    let answer = answer(shared, &request.method, &request.params).await;
    let response = match answer {
        Ok(v) => Response::ok(id, v),
        Err(e) => Response::err(Some(id), e),
    };
    let _ = out.send(response).await;
}

async fn answer(shared: &Shared, method: &str, p: &Value) -> Answer {
    let kernel = &shared.kernel;
    if (shared.stopping() || kernel.is_closing()) && method != "status" {
        return Err(WireError::new("shutting-down", "the daemon is stopping"));
    }
    if kernel.audit().is_read_only() && !READ_ONLY_METHODS.contains(&method) {
        let refused = capsid_audit::AuditError::ReadOnly(kernel.audit().path().to_owned());
        return Err(WireError::new("read-only", refused.to_string()));
    }
    match method {
        "status" => to_value(&kernel.status()),
        "capsule.list" => Ok(Value::Array(
            kernel.capsules().iter().map(capsule_view).collect(),
        )),
        "capsule.show" => show(shared, p),
        "capsule.load" => Ok(capsule_view(
            &kernel
                .load(&capsule(p)?)
                .await
                .map_err(|e| kernel_error(&e))?,
        )),
        "capsule.unload" => {
            kernel
                .unload(&capsule(p)?)
                .await
                .map_err(|e| kernel_error(&e))?;
            Ok(json!({}))
        }
        "capsule.reload" => Ok(capsule_view(
            &kernel
                .reload(&capsule(p)?)
                .await
                .map_err(|e| kernel_error(&e))?,
        )),
        "capsule.install" => {
            let dir = PathBuf::from(text(p, "dir")?);
            if !dir.is_absolute() {
                return Err(WireError::new("invalid", "dir must be an absolute path"));
            }
            Ok(capsule_view(
                &kernel.install(&dir).await.map_err(|e| kernel_error(&e))?,
            ))
        }
        "tool.call" => {
            let input = match &p["input"] {
                Value::Null => "{}".to_owned(),
                v => v.to_string(),
            };
            let output = kernel
                .call_tool(&capsule(p)?, text(p, "tool")?, &input)
                .await
                .map_err(|e| kernel_error(&e))?;
            Ok(serde_json::from_str(&output).unwrap_or(Value::String(output)))
        }
        "event.publish" => {
            let payload = match &p["payload"] {
                Value::String(s) => s.clone().into_bytes(),
                v => v.to_string().into_bytes(),
            };
            let d = kernel
                .publish(text(p, "topic")?, payload)
                .await
                .map_err(|e| kernel_error(&e))?;
            Ok(json!({ "delivered": d.delivered, "dropped": d.dropped }))
        }
        "process.list" => Ok(processes(shared)),
        "process.logs" => {
            let (generation, stream, after) = process_params(p)?;
            process_output(shared, generation, stream, after)
        }
        "capsule.logs" => {
            let name = capsule(p)?;
            let after = p["after"].as_u64().unwrap_or(0);
            let (lines, next) = log_lines(shared, &name, after)?;
            Ok(json!({ "lines": lines, "next": next }))
        }
        "daemon.stop" => {
            let _ = shared.stop.send(true);
            Ok(json!({ "stopping": true }))
        }
        other
            if other.starts_with("audit.")
                || other.starts_with("cap.")
                || other.starts_with("identity.") =>
        {
            answer_admin(shared, other, p).await
        }
        other => Err(WireError::new(
            "unknown-method",
            format!("no method {other:?}; methods: {}", METHODS.join(", ")),
        )),
    }
}

/// The audit, capability and identity methods.
async fn answer_admin(shared: &Shared, method: &str, p: &Value) -> Answer {
    let kernel = &shared.kernel;
    let _turn = if method.starts_with("audit.") {
        Some(
            shared
                .audit_reads
                .acquire()
                .await
                .map_err(|_| WireError::new("shutting-down", "the daemon is stopping"))?,
        )
    } else {
        None
    };
    match method {
        "audit.verify" => verify(shared).await,
        "audit.tail" => {
            let n = usize::try_from(p["n"].as_u64().unwrap_or(20).min(10_000)).unwrap_or(20);
            let path = kernel.audit().path().to_owned();
            let rows = tokio::task::spawn_blocking(move || capsid_audit::tail(&path, n))
                .await
                .map_err(|e| WireError::new("failed", e.to_string()))?
                .map_err(|e| WireError::new("failed", e.to_string()))?;
            to_value(&rows)
        }
        "audit.export" => export(shared, p).await,
        "cap.grant" => grant(shared, p).await,
        "cap.revoke" => {
            let id: CapabilityId = text(p, "id")?
                .parse()
                .map_err(|_| WireError::new("invalid", "not a capability id"))?;
            kernel
                .capabilities()
                .revoke(id)
                .await
                .map_err(|e| WireError::new("failed", e.to_string()))?;
            kernel
                .note("cap.revoke", &format!("capability://{id}"), json!({}))
                .await
                .map_err(|e| kernel_error(&e))?;
            Ok(json!({}))
        }
        "cap.list" => {
            let grants = kernel
                .capabilities()
                .list(&kernel.principal())
                .await
                .map_err(|e| WireError::new("failed", e.to_string()))?;
            Ok(grants
                .iter()
                .map(|g| {
                    json!({
                        "id": g.capability.id.to_string(),
                        "capsule": g.capability.capsule.as_ref().map(CapsuleId::as_str),
                        "pattern": g.capability.pattern.as_str(),
                        "permissions": g.capability.permissions.to_string(),
                        "revoked": g.revoked,
                    })
                })
                .collect())
        }
        "identity.list" => {
            let failed = |e: capsid_storage::KvError| WireError::new("failed", e.to_string());
            let users = kernel.identity().users().await.map_err(failed)?;
            let links = kernel.identity().links(None).await.map_err(failed)?;
            Ok(json!({
                "users": users.iter().map(|u| json!({ "id": u.id.to_string(), "name": u.name })).collect::<Vec<_>>(),
                "links": links.iter().map(|l| json!({
                    "platform": l.platform, "platform_user_id": l.platform_user_id,
                    "user": l.user.to_string(),
                })).collect::<Vec<_>>(),
            }))
        }
        "identity.link" => link(shared, p).await,
        other => Err(WireError::new(
            "unknown-method",
            format!("no method {other:?}; methods: {}", METHODS.join(", ")),
        )),
    }
}

/// One capsule, with its description and tools when loaded.
fn show(shared: &Shared, p: &Value) -> Answer {
    let kernel = &shared.kernel;
    let name = capsule(p)?;
    let info = kernel
        .registry()
        .info(&name)
        .ok_or_else(|| not_loaded(&name))?;
    let mut view = capsule_view(&info);
    if let Ok(loaded) = kernel.registry().get(&name) {
        view["description"] = json!(loaded.manifest().description);
        view["tool_descriptions"] = loaded
            .manifest()
            .tools
            .iter()
            .map(|t| json!({ "name": t.name, "description": t.description }))
            .collect();
    }
    Ok(view)
}

/// Verifies the audit log as committed so far.
async fn verify(shared: &Shared) -> Answer {
    let kernel = &shared.kernel;
    let path = kernel.audit().path().to_owned();
    let report = tokio::task::spawn_blocking(move || capsid_audit::verify_database(&path))
        .await
        .map_err(|e| WireError::new("failed", e.to_string()))?
        .map_err(|e| WireError::new("failed", e.to_string()))?;
    let problems = report.problems();
    Ok(json!({
        "valid": report.is_valid(),
        "entries": report.entries(),
        "chains": report.chains.len(),
        "problems": problems,
    }))
}

async fn grant(shared: &Shared, p: &Value) -> Answer {
    let kernel = &shared.kernel;
    let pattern = text(p, "pattern")?;
    let permissions: Permissions = text(p, "permissions")?
        .parse()
        .map_err(|e| WireError::new("invalid", format!("permissions: {e}")))?;
    let capsule = match p["capsule"].as_str() {
        Some(name) => Some(parse_capsule(name)?),
        None => None,
    };
    let cap = kernel
        .capabilities()
        .grant(
            kernel.principal(),
            capsule.clone(),
            pattern,
            permissions,
            None,
            false,
        )
        .await
        .map_err(|e| WireError::new("invalid", e.to_string()))?;
    let details = json!({
        "id": cap.id.to_string(),
        "capsule": capsule.as_ref().map(CapsuleId::as_str),
        "permissions": permissions.to_string(),
    });
    kernel
        .note("cap.grant", pattern, details)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(json!({ "id": cap.id.to_string() }))
}

async fn link(shared: &Shared, p: &Value) -> Answer {
    let kernel = &shared.kernel;
    let (platform, platform_user) = (text(p, "platform")?, text(p, "platform_user_id")?);
    let user = text(p, "user")?
        .parse()
        .map_err(|_| WireError::new("invalid", "user must be a user id (see `capsid who`)"))?;
    kernel
        .identity()
        .link(platform, platform_user, &user)
        .await
        .map_err(|e| WireError::new("invalid", e.to_string()))?;
    kernel
        .note(
            "identity.link",
            &format!("identity://{platform}/{platform_user}"),
            json!({ "user": user.to_string() }),
        )
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(json!({}))
}

/// Persistent processes and native capsules' programs, as the operator sees them (never
/// the processes' ids: those belong to the capsules that started them).
fn processes(shared: &Shared) -> Value {
    let kernel = &shared.kernel;
    let mut out: Vec<Value> = kernel
        .registry()
        .processes()
        .list_all()
        .into_iter()
        .map(|(owner, s)| {
            json!({
                "kind": "persistent",
                "capsule": owner.capsule.as_str(),
                "label": s.label,
                "pid": s.pid,
                "generation": s.generation,
                "started_ms": s.started_ms,
                "running": s.exit.is_none(),
                "exit_code": s.exit.and_then(|e| e.code),
            })
        })
        .collect();
    for info in kernel.capsules() {
        if let Some(native) = info.native {
            out.push(json!({
                "kind": "native",
                "capsule": info.name.as_str(),
                "health": format!("{:?}", native.health),
                "restarts": native.restarts,
            }));
        }
    }
    Value::Array(out)
}

/// A capsule's log lines after `after`, and where to continue from.
fn log_lines(
    shared: &Shared,
    name: &CapsuleId,
    after: u64,
) -> Result<(Vec<Value>, u64), WireError> {
    let capsule = shared.kernel.registry().get(name).map_err(|e| match e {
        CapsuleError::NotLoaded(_) => not_loaded(name),
        other => WireError::new("invalid", other.to_string()),
    })?;
    let lines = capsule.log().since(after);
    let next = lines.last().map_or(after, |l| l.seq);
    let view = lines
        .iter()
        .map(|l| {
            json!({
                "seq": l.seq, "time_ms": l.time_ms,
                "level": format!("{:?}", l.level).to_lowercase(),
                "source": format!("{:?}", l.source).to_lowercase(),
                "message": l.message,
            })
        })
        .collect();
    Ok((view, next))
}

/// Sends `page(after)` frames (`more: true`) while they have something new, until the
/// client goes away or the daemon stops (then one last frame with `next` alone).
async fn follow(
    shared: &Shared,
    id: u64,
    out: &mpsc::Sender<Response>,
    mut after: u64,
    page: impl Fn(u64) -> Result<(Value, u64, bool), WireError>,
) {
    loop {
        match page(after) {
            Ok((value, next, fresh)) => {
                after = next;
                if fresh {
                    let mut frame = Response::ok(id, value);
                    frame.more = true;
                    if out.send(frame).await.is_err() {
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
            let _ = out.send(Response::ok(id, json!({ "next": after }))).await;
            return;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Streams a capsule's log: what is there, then new lines as they come.
async fn follow_logs(shared: &Shared, id: u64, p: &Value, out: &mpsc::Sender<Response>) {
    let name = match capsule(p) {
        Ok(n) => n,
        Err(e) => {
            let _ = out.send(Response::err(Some(id), e)).await;
            return;
        }
    };
    let after = p["after"].as_u64().unwrap_or(0);
    follow(shared, id, out, after, |after| {
        let (lines, next) = log_lines(shared, &name, after)?;
        let fresh = !lines.is_empty();
        Ok((json!({ "lines": lines, "next": next }), next, fresh))
    })
    .await;
}

/// `generation` (from `process.list`), `stream` (`stdout`, the default, or `stderr`) and
/// `after` (an offset; 0 for the start of what is kept).
fn process_params(p: &Value) -> Result<(u64, Stream, u64), WireError> {
    let generation = p["generation"]
        .as_u64()
        .ok_or_else(|| WireError::new("invalid", "missing number param \"generation\""))?;
    let stream = match p["stream"].as_str().unwrap_or("stdout") {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        other => return Err(WireError::new("invalid", format!("no stream {other:?}"))),
    };
    Ok((generation, stream, p["after"].as_u64().unwrap_or(0)))
}

/// A persistent process's output after `after`: text, where to continue, bytes missed.
fn process_output(shared: &Shared, generation: u64, stream: Stream, after: u64) -> Answer {
    let chunk = shared
        .kernel
        .registry()
        .processes()
        .read_by_generation(generation, stream, after, PROCESS_LOG_PAGE)
        .map_err(|_| {
            WireError::new(
                "not-found",
                format!("no process of generation {generation}"),
            )
        })?;
    Ok(json!({
        "text": String::from_utf8_lossy(&chunk.bytes),
        "next": chunk.next.offset,
        "missed": chunk.missed,
    }))
}

/// Streams a persistent process's output until it is forgotten, the client goes away or
/// the daemon stops.
async fn follow_process(shared: &Shared, id: u64, p: &Value, out: &mpsc::Sender<Response>) {
    let (generation, stream, after) = match process_params(p) {
        Ok(v) => v,
        Err(e) => {
            let _ = out.send(Response::err(Some(id), e)).await;
            return;
        }
    };
    follow(shared, id, out, after, |after| {
        let page = process_output(shared, generation, stream, after)?;
        let next = page["next"].as_u64().unwrap_or(after);
        let fresh = page["text"].as_str().is_some_and(|t| !t.is_empty()) || page["missed"] != 0;
        Ok((page, next, fresh))
    })
    .await;
}

/// `audit.export`: the log as JSON lines into a new file (recorded, unless the log is
/// read-only: then it is exported to be inspected, and cannot record that).
async fn export(shared: &Shared, p: &Value) -> Answer {
    let kernel = &shared.kernel;
    let out = PathBuf::from(text(p, "path")?);
    if !out.is_absolute() {
        return Err(WireError::new("invalid", "path must be an absolute path"));
    }
    let audit = kernel.audit().clone();
    let target = out.clone();
    let entries = tokio::task::spawn_blocking(move || audit.export_jsonl(&target))
        .await
        .map_err(|e| WireError::new("failed", e.to_string()))?
        .map_err(|e| WireError::new("failed", e.to_string()))?;
    if !kernel.audit().is_read_only() {
        kernel
            .note(
                "audit.export",
                "audit://log",
                json!({ "path": out, "entries": entries }),
            )
            .await
            .map_err(|e| kernel_error(&e))?;
    }
    Ok(json!({ "entries": entries }))
}

fn capsule_view(info: &CapsuleInfo) -> Value {
    let (state, reason) = match &info.state {
        CapsuleState::Failed(r) => ("failed".to_owned(), Some(r.clone())),
        s => (s.to_string(), None),
    };
    json!({
        "name": info.name.as_str(),
        "version": info.version.as_ref().map(ToString::to_string),
        "state": state,
        "reason": reason,
        "dir": info.dir,
        "tools": info.tools,
        "blake3": info.blake3,
        "load_kind": info.load_kind.map(|k| format!("{k:?}").to_lowercase()),
        "native": info.native.as_ref().map(|n| json!({
            "health": format!("{:?}", n.health), "restarts": n.restarts,
        })),
    })
}

fn text<'a>(p: &'a Value, key: &str) -> Result<&'a str, WireError> {
    p[key]
        .as_str()
        .ok_or_else(|| WireError::new("invalid", format!("missing string param {key:?}")))
}

fn parse_capsule(name: &str) -> Result<CapsuleId, WireError> {
    CapsuleId::new(name).map_err(|e| WireError::new("invalid", e.to_string()))
}

fn capsule(p: &Value) -> Result<CapsuleId, WireError> {
    parse_capsule(text(p, "name").or_else(|_| text(p, "capsule"))?)
}

fn not_loaded(name: &CapsuleId) -> WireError {
    WireError::new("not-found", format!("capsule {name} is not loaded"))
}

fn to_value<T: serde::Serialize>(v: &T) -> Answer {
    serde_json::to_value(v).map_err(|e| WireError::new("failed", e.to_string()))
}

/// The wire form of a kernel error: its one line, and a code for its kind.
fn kernel_error(e: &KernelError) -> WireError {
    let code = match e {
        KernelError::NotInstalled(_) => "not-found",
        KernelError::ShuttingDown => "shutting-down",
        KernelError::Manifest(_)
        | KernelError::Install { .. }
        | KernelError::Event(_)
        | KernelError::ReservedTopic { .. } => "invalid",
        KernelError::Capsule(c) => match c {
            CapsuleError::NotLoaded(_) => "not-found",
            CapsuleError::Denied { .. } => "denied",
            CapsuleError::AlreadyLoaded(_) | CapsuleError::Manifest(_) => "invalid",
            _ => "failed",
        },
        _ => "failed",
    };
    WireError::new(code, e.to_string())
}
