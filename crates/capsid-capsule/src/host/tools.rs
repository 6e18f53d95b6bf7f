//! `capsid:host/tools`: a capsule calling another capsule's tools, WebAssembly or MCP.
//!
//! Names that are not names and input over the limit are refused first, unrecorded. Then
//! the call is checked against `tool://<callee>/<tool>` (asking a person where the manifest
//! lets the capsule ask) and recorded before anything else is looked at, so a capsule that
//! may not call the tool learns nothing: not whether it exists, nor who is in its own chain
//! of calls. A cycle, a chain deeper than `MAX_TOOL_CALL_DEPTH` or too little time left is
//! refused after that; otherwise the callee runs with its own grants, ending
//! `TOOL_CALL_RESERVE` before its caller's deadline. Every recorded call gets its
//! `tool.result`, even one its caller abandoned.

use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Instant;

use capsid_audit::{Decision, action};
use capsid_capabilities::{Denied, Permissions};
use capsid_core::CapsuleId;
use capsid_core::limits::{MAX_TOOL_CALL_DEPTH, MAX_TOOL_INPUT_BYTES, TOOL_CALL_RESERVE};
use serde_json::json;

use super::{CapsuleContext, HostState};
use crate::bindings::capsid::host::tools::{CallError, Host, ToolInfo};
use crate::control::CallControl;
use crate::error::CapsuleError;
use crate::grants::{is_tool_name, tool_resource};
use crate::slots::{Callee, Slots};

/// The registry's capsules as capsules' host calls reach them: weakly, so a capsule does
/// not keep its registry alive.
pub(crate) type Callees = Weak<RwLock<Slots>>;

impl Host for HostState {
    async fn list(&mut self) -> Vec<ToolInfo> {
        let chain = self.control.chain().to_vec();
        self.cx.callable_tools(&chain).await
    }

    async fn call(
        &mut self,
        capsule: String,
        tool: String,
        input_json: String,
    ) -> Result<String, CallError> {
        let (control, deadline) = (self.control.clone(), self.deadline);
        call_tool(&self.cx, &control, deadline, &capsule, &tool, &input_json).await
    }
}

/// What the caller is told of a callee's failure: the tool's own error message, and of
/// anything else only what kind of failure it was (a callee's trap or log stays its own).
fn call_error(e: CapsuleError) -> CallError {
    match e {
        CapsuleError::UnknownTool { .. }
        | CapsuleError::NotLoaded(_)
        | CapsuleError::NotWasm(_)
        | CapsuleError::ToolPendingReview { .. } => CallError::NotFound,
        CapsuleError::Timeout { .. } | CapsuleError::CallerDeadline { .. } => CallError::Timeout,
        CapsuleError::Guest { error, .. } => CallError::Failed(error.to_string()),
        CapsuleError::ToolFailed { message, .. } => CallError::Failed(message),
        e @ CapsuleError::TooBig { .. } => CallError::Failed(e.to_string()),
        e @ (CapsuleError::NotReady { .. }
        | CapsuleError::Busy { .. }
        | CapsuleError::RuntimeFull { .. }
        | CapsuleError::McpServer { .. }
        | CapsuleError::Trap { .. }
        | CapsuleError::MemoryLimit { .. }
        | CapsuleError::Cancelled { .. }) => CallError::Unavailable(e.outcome().to_owned()),
        other => CallError::Internal(other.outcome().to_owned()),
    }
}

/// How a refusal after the check is recorded as the call's outcome.
fn refusal_outcome(e: &CallError) -> &'static str {
    match e {
        CallError::Cycle => "cycle",
        CallError::TooDeep => "too-deep",
        _ => "timeout",
    }
}

/// Writes a call's `tool.result`: when the call ends, or, if the caller is dropped first
/// (its own deadline or cancellation), as `abandoned` from a task of its own, so no
/// recorded call is left without an outcome. Queued in order, not waited for
/// ([`AuditLog::append_queued`](capsid_audit::AuditLog::append_queued)).
struct ResultRecord {
    cx: Arc<CapsuleContext>,
    resource: String,
    started: Instant,
    written: bool,
}

impl ResultRecord {
    fn details(&self, outcome: &str, bytes: usize) -> serde_json::Value {
        json!({
            "outcome": outcome,
            "duration_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "bytes": bytes,
        })
    }

    /// Queued, not waited for: the caller's next effects are recorded durably after it,
    /// so nothing that follows from this result is in the log without it (unless its
    /// commit fails, which the writer logs).
    async fn write(mut self, outcome: &str, bytes: usize) -> Result<(), CallError> {
        let details = self.details(outcome, bytes);
        let queued = queue_result(&self.cx, &self.resource, &details).await;
        // Only now: dropped while queueing, it is recorded as abandoned.
        self.written = true;
        queued.map_err(|_| CallError::Internal("the call's result could not be recorded".into()))
    }
}

/// Queues `tool.result` on `resource` for the capsule of `cx`.
async fn queue_result(
    cx: &CapsuleContext,
    resource: &str,
    details: &serde_json::Value,
) -> Result<(), String> {
    cx.services
        .record_queued(
            &cx.subject,
            action::TOOL_RESULT,
            resource,
            Decision::Info,
            details,
        )
        .await
}

impl Drop for ResultRecord {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let details = self.details("abandoned", 0);
        let (cx, resource) = (self.cx.clone(), std::mem::take(&mut self.resource));
        runtime.spawn(async move {
            let _ = queue_result(&cx, &resource, &details).await;
        });
    }
}

/// Runs `tool` of `capsule` for the capsule of `cx`, whose current call is `control` and
/// must end by `deadline` (not counting time suspended).
async fn call_tool(
    cx: &Arc<CapsuleContext>,
    control: &CallControl,
    deadline: Instant,
    capsule: &str,
    tool: &str,
    input: &str,
) -> Result<String, CallError> {
    let Ok(callee) = CapsuleId::new(capsule) else {
        return Err(CallError::Invalid(format!(
            "{capsule:?} is not a capsule name"
        )));
    };
    if !is_tool_name(tool) {
        return Err(CallError::Invalid(format!("{tool:?} is not a tool name")));
    }
    if input.len() > MAX_TOOL_INPUT_BYTES {
        return Err(CallError::Invalid(format!(
            "input of {} bytes exceeds the limit of {MAX_TOOL_INPUT_BYTES}",
            input.len()
        )));
    }
    let resource = tool_resource(&callee, tool);
    let mut chain: Vec<&str> = control.chain().iter().map(CapsuleId::as_str).collect();
    chain.push(cx.name.as_str());
    let details = json!({
        "door": "capsule",
        "chain": chain,
        "input_blake3": blake3::hash(input.as_bytes()).to_hex().to_string(),
    });
    // Checked first: what follows (a cycle, the chain's depth, whether the callee exists)
    // is told only to a capsule that may call it.
    match cx
        .authorize_detailed(
            action::TOOL_CALL,
            Permissions::EXEC,
            &resource,
            true,
            Some(&[input.as_bytes()]),
            details,
        )
        .await
    {
        Ok(()) => {}
        Err(Denied::NotGranted(_)) => return Err(CallError::Denied),
        Err(Denied::Unrecorded(_)) => {
            return Err(CallError::Internal("the call could not be recorded".into()));
        }
    }
    let record = ResultRecord {
        cx: cx.clone(),
        resource,
        started: Instant::now(),
        written: false,
    };
    // The callee ends `TOOL_CALL_RESERVE` before its caller must.
    let not_after = deadline.checked_sub(TOOL_CALL_RESERVE);
    let refused = if chain.contains(&callee.as_str()) {
        Some(CallError::Cycle)
    } else if chain.len() >= MAX_TOOL_CALL_DEPTH {
        Some(CallError::TooDeep)
    } else if not_after.is_none_or(|n| n + control.deadline_moved().0 <= Instant::now()) {
        Some(CallError::Timeout)
    } else {
        None
    };
    if let Some(refused) = refused {
        record.write(refusal_outcome(&refused), 0).await?;
        return Err(refused);
    }
    let not_after = not_after.unwrap_or(deadline);
    let result = match find(cx, &callee, control, not_after).await {
        Ok(found) => {
            let nested = control.nested(&cx.name, not_after);
            found.call(tool, input, &nested).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(answer) => {
            record.write("ok", answer.len()).await?;
            Ok(answer)
        }
        Err(e) => {
            record.write(e.outcome(), 0).await?;
            Err(call_error(e))
        }
    }
}

/// The capsule called `name`, woken first (by `not_after`, for `control`'s chain) if its
/// host unloaded it while idle.
async fn find(
    cx: &CapsuleContext,
    name: &CapsuleId,
    control: &CallControl,
    not_after: Instant,
) -> Result<Callee, CapsuleError> {
    let Some(slots) = cx.callees.upgrade() else {
        return Err(CapsuleError::NotLoaded(name.clone()));
    };
    let (found, waker) = {
        let slots = slots.read().unwrap_or_else(PoisonError::into_inner);
        (slots.callee(name), slots.waker.clone())
    };
    match (found, waker) {
        (Err(CapsuleError::NotLoaded(_)), Some(waker)) => {
            // Bounded by the callee's deadline, so the caller keeps its reserve.
            let until = tokio::time::Instant::from_std(not_after + control.deadline_moved().0);
            if tokio::time::timeout_at(until, waker.wake(name))
                .await
                .is_err()
            {
                return Err(CapsuleError::CallerDeadline {
                    capsule: name.clone(),
                });
            }
            slots
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .callee(name)
        }
        (found, _) => found,
    }
}

impl CapsuleContext {
    /// The ready tools this capsule may call: not its own, nor those of a capsule already
    /// in `chain` (calling either is a cycle).
    async fn callable_tools(&self, chain: &[CapsuleId]) -> Vec<ToolInfo> {
        let Some(slots) = self.callees.upgrade() else {
            return Vec::new();
        };
        let offered: Vec<_> = {
            let slots = slots.read().unwrap_or_else(PoisonError::into_inner);
            slots
                .keys()
                .filter(|name| **name != self.name && !chain.contains(name))
                .map(|name| (name.clone(), slots.tools(name)))
                .collect()
        };
        let subject = self.subject_now();
        let mut out = Vec::new();
        for (capsule, tools) in offered {
            for tool in tools {
                let resource = tool_resource(&capsule, &tool.name);
                if self
                    .services
                    .capabilities
                    .would_allow(&subject, Permissions::EXEC, &resource)
                    .await
                {
                    out.push(ToolInfo {
                        capsule: capsule.to_string(),
                        name: tool.name,
                        description: tool.description,
                        input_schema: tool.input_schema.to_string(),
                    });
                }
            }
        }
        out
    }
}
