//! `capsid:host/tools`: a capsule calling another capsule's tools, WebAssembly or MCP.
//!
//! A call is refused before anything else when its names are not names, its input is too
//! large, the callee is already in the chain of calls (a cycle) or the chain would be
//! deeper than `MAX_TOOL_CALL_DEPTH`; then it is checked against `tool://<callee>/<tool>`
//! (asking a person where the manifest lets the capsule ask) and recorded before it runs,
//! run with the callee's own grants and a deadline no later than the caller's, and recorded
//! after. A denial is answered before the callee is looked up, so it tells nothing of what
//! exists.

use std::sync::{PoisonError, RwLock, Weak};
use std::time::Instant;

use capsid_audit::{Decision, action};
use capsid_capabilities::{Denied, Permissions};
use capsid_core::CapsuleId;
use capsid_core::limits::{MAX_TOOL_CALL_DEPTH, MAX_TOOL_INPUT_BYTES};
use serde_json::json;

use super::{CapsuleContext, HostState};
use crate::bindings::capsid::host::tools::{CallError, Host, ToolInfo};
use crate::control::CallControl;
use crate::error::CapsuleError;
use crate::grants::{is_tool_name, tool_resource};
use crate::slots::Slots;

/// The registry's capsules as capsules' host calls reach them: weakly, so a capsule does
/// not keep its registry alive.
pub(crate) type Callees = Weak<RwLock<Slots>>;

impl Host for HostState {
    async fn list(&mut self) -> Vec<ToolInfo> {
        self.cx.callable_tools().await
    }

    async fn call(
        &mut self,
        capsule: String,
        tool: String,
        input_json: String,
    ) -> Result<String, CallError> {
        let (control, deadline) = (self.control.clone(), self.deadline);
        self.cx
            .call_tool(&control, deadline, &capsule, &tool, &input_json)
            .await
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

impl CapsuleContext {
    /// The ready tools this capsule may call (not its own: calling itself is a cycle).
    async fn callable_tools(&self) -> Vec<ToolInfo> {
        let Some(slots) = self.callees.upgrade() else {
            return Vec::new();
        };
        let offered: Vec<_> = {
            let slots = slots.read().unwrap_or_else(PoisonError::into_inner);
            slots
                .keys()
                .filter(|name| **name != self.name)
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

    /// Runs `tool` of `capsule` for this capsule, whose current call is `control` and must
    /// end by `deadline` (not counting time suspended).
    async fn call_tool(
        &self,
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
        chain.push(self.name.as_str());
        if chain.contains(&callee.as_str()) {
            let why = format!("a cycle: {} -> {callee}", chain.join(" -> "));
            self.record_refusal(action::TOOL_CALL, &resource, &why)
                .await;
            return Err(CallError::Cycle);
        }
        // The callee would be this deep, counting the first capsule called as 1.
        if chain.len() + 1 > MAX_TOOL_CALL_DEPTH {
            let why = format!("deeper than {MAX_TOOL_CALL_DEPTH} capsules");
            self.record_refusal(action::TOOL_CALL, &resource, &why)
                .await;
            return Err(CallError::TooDeep);
        }
        let details = json!({
            "door": "capsule",
            "chain": chain,
            "input_blake3": blake3::hash(input.as_bytes()).to_hex().to_string(),
        });
        match self
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
        let started = Instant::now();
        let found = match self.callees.upgrade() {
            Some(slots) => slots
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .callee(&callee),
            None => Err(CapsuleError::NotLoaded(callee.clone())),
        };
        let result = match found {
            Ok(found) => {
                let nested = control.nested(&self.name, deadline);
                found.call(tool, input, &nested).await
            }
            Err(e) => Err(e),
        };
        let details = json!({
            "outcome": result.as_ref().map_or_else(CapsuleError::outcome, |_| "ok"),
            "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "bytes": result.as_ref().map_or(0, String::len),
        });
        self.note(action::TOOL_RESULT, &resource, Decision::Info, &details)
            .await
            .map_err(|_| CallError::Internal("the call's result could not be recorded".into()))?;
        result.map_err(call_error)
    }
}
