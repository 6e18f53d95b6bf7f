//! Calling tools, whoever calls: the operator (through the API or the daemon), an MCP
//! session as its user, or another host of the lattice for the user it names. Every call is
//! one audit entry made durably before it runs (who, through which door and client, the
//! blake3 of its input) and one after it (outcome, duration; durable before it is told,
//! queued when another host called, which makes its own durable); an entry that cannot be
//! written refuses the call. A principal other than the operator must hold
//! `tool://<capsule>/<tool>` (permission `exec`), and a tool it may not call answers exactly
//! as a tool that does not exist: no capsule or tool name leaks.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use capsid_audit::{Decision, Record, action};
use capsid_capabilities::{AuditLogSink, Check, Denied, Permissions, RecordAllow, Subject};
use capsid_capsule::{CallControl, CapsuleError, is_tool_name, tool_resource};
use capsid_core::limits::MAX_CLIENT_NAME_BYTES;
use capsid_core::{CapsuleId, Principal, PrincipalId};
use serde_json::json;

use crate::error::KernelError;
use crate::kernel::Kernel;

/// Through which door a tool call came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The kernel's API, from an embedding program.
    Api,
    /// The daemon's `tool.call` (what `capsid call` uses).
    Daemon,
    /// The MCP bridge on stdio.
    Mcp,
    /// The MCP bridge over HTTP (a bearer token's user).
    McpHttp,
    /// Another host of the lattice, for a user it names (never as this host's operator).
    Lattice,
}

impl Door {
    /// Its name in audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Daemon => "daemon",
            Self::Mcp => "mcp",
            Self::McpHttp => "mcp-http",
            Self::Lattice => "lattice",
        }
    }
}

/// Who calls a tool, and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCaller {
    /// On whose authority.
    pub principal: Principal,
    /// Through which door.
    pub door: Door,
    /// The client's own name, when it gave one (an MCP client's `clientInfo.name`).
    pub client: Option<String>,
}

/// A tool a principal may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInfo {
    /// Its capsule.
    pub capsule: CapsuleId,
    /// Its name in the capsule.
    pub tool: String,
    /// What it does.
    pub description: String,
    /// JSON schema of its input.
    pub input_schema: serde_json::Value,
    /// JSON schema of its output, when it declares one.
    pub output_schema: Option<serde_json::Value>,
    /// What it says of itself.
    pub annotations: capsid_manifest::ToolAnnotations,
}

/// A client's name as recorded: control characters escaped, cut to
/// `MAX_CLIENT_NAME_BYTES` (a client must not be able to make its records fail).
fn client_name(name: &str) -> String {
    let escaped: String = name.chars().flat_map(char::escape_debug).collect();
    let mut end = escaped.len().min(MAX_CLIENT_NAME_BYTES);
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    escaped[..end].to_owned()
}

/// What a caller other than the operator is told of `error`: that the tool does not exist
/// (`no_such_tool`) whenever the truth would say whether a capsule exists.
fn hide_existence(error: KernelError, no_such_tool: impl FnOnce() -> KernelError) -> KernelError {
    match error {
        KernelError::NotInstalled(_)
        | KernelError::NotServed { .. }
        | KernelError::Capsule(
            CapsuleError::NotLoaded(_)
            | CapsuleError::NotWasm(_)
            | CapsuleError::UnknownTool { .. }
            | CapsuleError::ToolPendingReview { .. },
        ) => no_such_tool(),
        other => other,
    }
}

/// How a call ended, for its record.
pub(crate) fn outcome(result: &Result<String, KernelError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(KernelError::Capsule(e)) => e.outcome(),
        Err(_) => "failed",
    }
}

/// One step of a tool call by `principal`, as recorded.
fn tool_record(
    principal: Principal,
    capsule: &CapsuleId,
    action: &str,
    resource: &str,
    decision: Decision,
    details: &serde_json::Value,
) -> Result<Record, KernelError> {
    Ok(Record::new(principal, action, resource, decision)
        .and_then(|r| r.details(details))?
        .capsule(capsule.clone()))
}

/// A call another host of the lattice sent.
pub(crate) struct FromHost<'a> {
    /// The sending host's key.
    pub(crate) host: &'a str,
    /// Takes the call from its caller for this host (the caller hands each call to one host
    /// of the lattice only): `Err` names why it does not run here (`claimed-elsewhere`,
    /// `unclaimable`).
    pub(crate) handover: Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send + 'a>>,
}

impl Kernel {
    /// The operator, calling through `door`.
    pub fn operator(&self, door: Door) -> ToolCaller {
        ToolCaller {
            principal: self.principal(),
            door,
            client: None,
        }
    }

    /// Runs `tool` of capsule `name` on JSON `input` as the operator (door `api`), recorded
    /// before and after.
    pub async fn call_tool(
        &self,
        name: &CapsuleId,
        tool: &str,
        input: &str,
    ) -> Result<String, KernelError> {
        self.call_tool_as(
            &self.operator(Door::Api),
            name,
            tool,
            input,
            &CallControl::default(),
        )
        .await
    }

    /// Runs `tool` of capsule `name` on JSON `input` for `caller`: checked (unless the caller
    /// is the operator), recorded before, run, recorded after. `control` cancels it (the
    /// record after says `cancelled`) and receives its progress. A capsule this host does
    /// not have, on a lattice, is called on a host that serves it (the record after names
    /// that host).
    pub async fn call_tool_as(
        &self,
        caller: &ToolCaller,
        name: &CapsuleId,
        tool: &str,
        input: &str,
        control: &CallControl,
    ) -> Result<String, KernelError> {
        self.call_tool_from(caller, None, name, tool, input, control)
            .await
    }

    /// [`call_tool_as`](Self::call_tool_as), for a call another host of the lattice sent
    /// (`from`: that host, recorded with the call, and its handover, which lets it run here).
    pub(crate) async fn call_tool_from(
        &self,
        caller: &ToolCaller,
        from: Option<FromHost<'_>>,
        name: &CapsuleId,
        tool: &str,
        input: &str,
        control: &CallControl,
    ) -> Result<String, KernelError> {
        self.open()?;
        let no_such_tool = || {
            KernelError::Capsule(CapsuleError::UnknownTool {
                capsule: name.clone(),
                tool: tool.to_owned(),
            })
        };
        if !is_tool_name(tool) {
            return Err(no_such_tool());
        }
        let resource = tool_resource(name, tool);
        let (origin, handover) = match from {
            Some(from) => (Some(from.host), Some(from.handover)),
            None => (None, None),
        };
        // A call from the lattice is never sent on: no call goes round in circles.
        let elsewhere = caller.door != Door::Lattice && self.served_elsewhere(name);
        // The serving host records the call durably before it runs it; this host's record
        // commits while the call travels and is durable before its outcome is told.
        let sink = if elsewhere {
            AuditLogSink::deferring(self.audit().clone(), self.parts().chain)
        } else {
            AuditLogSink::new(self.audit().clone(), self.parts().chain)
        };
        let dev_trust = self.dev_trusts(caller.principal, caller.door);
        let details = json!({
            "door": caller.door.as_str(),
            "client": caller.client.as_deref().map(client_name),
            "input_blake3": blake3::hash(input.as_bytes()).to_hex().to_string(),
            "trust": if dev_trust { Some("dev") } else { None },
            "from_host": origin,
        });
        // Another host's call is asked of its caller while its check is recorded; it runs
        // once both hold.
        let handed = async move {
            match handover {
                Some(handover) => handover.await,
                None => Ok(()),
            }
        };
        let checked = self.check_call(caller, name, &resource, details, &sink, no_such_tool);
        let (checked, handed) = tokio::join!(checked, handed);
        if let Err(reason) = handed {
            if checked.is_ok() {
                // Its check is in the log: so is why it did not run.
                let details = json!({ "outcome": reason, "duration_ms": 0, "bytes": 0 });
                self.record_result(caller, name, &resource, details, origin.is_some())
                    .await?;
            }
            return Err(KernelError::NotHandedOver(reason));
        }
        checked?;
        let started = Instant::now();
        // What the capsule asks a person for may be granted for this caller's session; the
        // embedding program's calls come from no client session.
        let session = match caller.door {
            Door::Api | Door::Lattice => None,
            _ => self.client_session(caller.principal),
        };
        let control = control.called_by(caller.principal, session);
        let (mut result, served_by) = if elsewhere {
            self.call_elsewhere(caller, name, tool, input, &control, &sink)
                .await?
        } else {
            (self.run_tool(name, tool, input, &control).await, None)
        };
        let details = json!({
            "outcome": outcome(&result),
            "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "bytes": result.as_ref().map_or(0, String::len),
            "served_by": served_by,
        });
        self.record_result(caller, name, &resource, details, origin.is_some())
            .await?;
        if !self.is_operator(caller) {
            result = result.map_err(|e| hide_existence(e, no_such_tool));
        }
        result
    }

    /// Whether `caller` is this host's operator (never so through the lattice: another
    /// host's call has only the grants of the user it names).
    fn is_operator(&self, caller: &ToolCaller) -> bool {
        caller.door != Door::Lattice && caller.principal == self.principal()
    }

    /// Checks `caller`'s call of `resource` and records it to `sink` (the operator's, and a
    /// dev-trusted MCP user's, recorded without a check). A caller refused is told that no
    /// such tool exists (`no_such_tool`), once the refusal is recorded.
    async fn check_call(
        &self,
        caller: &ToolCaller,
        name: &CapsuleId,
        resource: &str,
        details: serde_json::Value,
        sink: &AuditLogSink,
        no_such_tool: impl FnOnce() -> KernelError,
    ) -> Result<(), KernelError> {
        let operator = self.is_operator(caller);
        if operator || self.dev_trusts(caller.principal, caller.door) {
            let decision = if operator {
                Decision::Info
            } else {
                Decision::Allow
            };
            let record = tool_record(
                caller.principal,
                name,
                action::TOOL_CALL,
                resource,
                decision,
                &details,
            )?;
            self.audit().append(self.parts().chain, record).await?;
            return Ok(());
        }
        let subject = Subject {
            principal: caller.principal,
            capsule: None,
            session: None,
        };
        let check = Check {
            subject: &subject,
            action: action::TOOL_CALL,
            permission: Permissions::EXEC,
            resource,
            record_allow: RecordAllow::Before,
            details,
        };
        match self.capabilities().authorize(check, sink).await {
            Ok(_) => Ok(()),
            Err(Denied::NotGranted(_)) => {
                // Recorded before the caller hears it; failing or not, it is a denial.
                let _ = sink.durable().await;
                Err(no_such_tool())
            }
            // Allowed, but not recorded: the audit log's failure, not the caller's.
            Err(Denied::Unrecorded(why)) => Err(KernelError::Unrecorded(why)),
        }
    }

    /// Records how `caller`'s call of a tool of `capsule` ended: durably before it is told,
    /// unless the call came from another host (`for_another_host`), which records the
    /// outcome durably before it tells it; this record is then queued (in the log ahead of
    /// what follows, durable with the next commit).
    async fn record_result(
        &self,
        caller: &ToolCaller,
        capsule: &CapsuleId,
        resource: &str,
        details: serde_json::Value,
        for_another_host: bool,
    ) -> Result<(), KernelError> {
        let record = tool_record(
            caller.principal,
            capsule,
            action::TOOL_RESULT,
            resource,
            Decision::Info,
            &details,
        )?;
        let chain = self.parts().chain;
        if for_another_host {
            self.audit().append_queued(chain, record).await?;
        } else {
            self.audit().append(chain, record).await?;
        }
        Ok(())
    }

    /// Whether dev trust lets `principal` call every tool through `door`: only the MCP
    /// user, only from a local door (never HTTP, whose tokens may be anyone's), decided at
    /// each call (never a stored grant that would outlive the dev session).
    fn dev_trusts(&self, principal: Principal, door: Door) -> bool {
        self.config().dev
            && principal == self.mcp_principal()
            && !matches!(door, Door::McpHttp | Door::Lattice)
    }

    /// The tools of capsules ready or idle that `principal` may call through `door` (every
    /// one, for the operator), in capsule then manifest order; then, on a lattice, those other hosts
    /// serve for capsules this host does not have, that `principal` holds a grant for (the
    /// serving host checks again). Listing decides nothing and records nothing: each call
    /// is still checked.
    pub async fn tools_for(&self, principal: Principal, door: Door) -> Vec<ToolInfo> {
        let operator = principal == self.principal() || self.dev_trusts(principal, door);
        let subject = Subject {
            principal,
            capsule: None,
            session: None,
        };
        let mut out = Vec::new();
        for (capsule, tools) in self.offered_tools() {
            for tool in &tools {
                let allowed = operator
                    || self
                        .capabilities()
                        .would_allow(
                            &subject,
                            Permissions::EXEC,
                            &tool_resource(&capsule, &tool.name),
                        )
                        .await;
                if allowed {
                    out.push(ToolInfo {
                        capsule: capsule.clone(),
                        tool: tool.name.clone(),
                        description: tool.description.clone(),
                        input_schema: tool.input_schema.clone(),
                        output_schema: tool.output_schema.clone(),
                        annotations: tool.annotations,
                    });
                }
            }
        }
        for tool in self.tools_elsewhere() {
            let granted = self
                .capabilities()
                .would_allow(
                    &subject,
                    Permissions::EXEC,
                    &tool_resource(&tool.capsule, &tool.tool),
                )
                .await;
            if granted && matches!(principal, Principal::User(_)) {
                out.push(tool);
            }
        }
        out
    }

    /// The user whose id `name` is, else the one named `name` (exactly one must be).
    pub async fn find_user(&self, name: &str) -> Result<PrincipalId, KernelError> {
        if let Ok(id) = name.parse::<PrincipalId>()
            && self.identity().user(&id).await?.is_some()
        {
            return Ok(id);
        }
        let users = self.identity().users().await?;
        let mut named = users.into_iter().filter(|u| u.name == name);
        match (named.next(), named.next()) {
            (Some(user), None) => Ok(user.id),
            (None, _) => Err(KernelError::UnknownUser(name.to_owned())),
            (Some(_), Some(_)) => Err(KernelError::AmbiguousUser(name.to_owned())),
        }
    }
}
