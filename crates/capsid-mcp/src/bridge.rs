//! The MCP server handler: `tools/list` and `tools/call` answered through the daemon's
//! `tool.list` and `tool.call`, as one user.

use std::sync::Arc;

use capsid_core::CapsuleId;
use capsid_core::limits::MAX_TOOL_INPUT_BYTES;
use capsid_protocol::methods::{
    ToolCall, ToolCallParams, ToolChangesFollow, ToolDef, ToolList, ToolListParams, ToolOutput, Via,
};
use capsid_protocol::{Client, ClientError, ErrorCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::Value;
use tokio::sync::Mutex;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The MCP session could not be set up (the client's first messages were refused).
    #[error("the MCP session could not start: {0}")]
    Initialize(String),
    /// The session ended with an error.
    #[error("the MCP session failed: {0}")]
    Session(String),
}

/// An MCP server over a daemon connection, acting as one user.
#[derive(Debug)]
pub struct Bridge {
    // One connection; requests take turns on it.
    client: Arc<Mutex<Client>>,
    user: String,
    /// A second connection, following the user's tool set once the session is initialised.
    watch: std::sync::Mutex<Option<Client>>,
}

impl Bridge {
    /// A bridge answering through `client`, as `user` (e.g. `mcp`).
    pub fn new(client: Client, user: String) -> Self {
        Self {
            client: Arc::new(Mutex::new(client)),
            user,
            watch: std::sync::Mutex::new(None),
        }
    }

    /// Sends `notifications/tools/list_changed` whenever the tools the user may call change
    /// (a capsule loaded, unloaded, reloaded or installed, a grant made or revoked), learnt
    /// through `watch`, a connection of its own.
    #[must_use]
    pub fn notify_changes(self, watch: Client) -> Self {
        *capsid_core::sync::lock(&self.watch) = Some(watch);
        self
    }
}

/// Follows the tool set of `user` on `watch` and tells `peer` of each change after the
/// first, until either side goes away.
async fn announce_changes(mut watch: Client, user: String, peer: rmcp::Peer<RoleServer>) {
    let params = ToolListParams {
        as_user: Some(user),
    };
    let Ok(mut changes) = watch.follow::<ToolChangesFollow>(&params).await else {
        return;
    };
    // The first frame is the set the client was shown, or is about to be.
    if !matches!(changes.next().await, Ok(Some(_))) {
        return;
    }
    while let Ok(Some(_)) = changes.next().await {
        if let Err(e) = peer.notify_tool_list_changed().await {
            tracing::debug!(error = %e, "the MCP client is gone");
            return;
        }
    }
}

/// Serves MCP on stdin/stdout until the client goes away.
pub async fn serve_stdio(bridge: Bridge) -> Result<(), ServeError> {
    let running = bridge
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ServeError::Initialize(e.to_string()))?;
    running
        .waiting()
        .await
        .map(|_| ())
        .map_err(|e| ServeError::Session(e.to_string()))
}

/// The MCP name of a tool: `<capsule>.<tool>`.
fn mcp_name(t: &ToolDef) -> String {
    format!("{}.{}", t.capsule, t.tool)
}

fn mcp_tool(t: ToolDef) -> Tool {
    let name = mcp_name(&t);
    let schema: JsonObject = match t.input_schema {
        Value::Object(map) if !map.is_empty() => map,
        // A tool that declares no schema takes any object.
        _ => {
            let mut any = JsonObject::new();
            any.insert("type".into(), Value::String("object".into()));
            any
        }
    };
    Tool::new(name, t.description, Arc::new(schema))
}

/// The answer for a tool name that is not, or may not be, called: the same either way.
fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(format!("unknown tool {name:?}"), None)
}

fn text(message: impl Into<String>) -> Vec<ContentBlock> {
    vec![ContentBlock::text(message.into())]
}

/// A daemon answer as MCP sees it: results and tool failures are results (the model reads
/// them), requests that cannot be served are protocol errors.
fn answer(
    name: &str,
    result: Result<ToolOutput, ClientError>,
) -> Result<CallToolResult, ErrorData> {
    match result {
        Ok(ToolOutput::Json(value @ Value::Object(_))) => Ok(CallToolResult::structured(value)),
        Ok(ToolOutput::Json(value)) => Ok(CallToolResult::success(text(value.to_string()))),
        Ok(ToolOutput::Text(t)) => Ok(CallToolResult::success(text(t))),
        Err(ClientError::Daemon(e)) => match e.code {
            ErrorCode::UnknownTool | ErrorCode::NotFound => Err(unknown_tool(name)),
            ErrorCode::InvalidParams | ErrorCode::TooLarge | ErrorCode::Invalid => {
                Err(ErrorData::invalid_params(e.message, None))
            }
            ErrorCode::ToolError => Ok(CallToolResult::error(text(e.message))),
            ErrorCode::Timeout => Ok(CallToolResult::error(text(format!(
                "the tool ran past its deadline and was stopped: {}",
                e.message
            )))),
            ErrorCode::CapsuleFailed => Ok(CallToolResult::error(text(format!(
                "the tool's capsule failed: {}",
                e.message
            )))),
            ErrorCode::Busy | ErrorCode::NotReady => Ok(CallToolResult::error(text(format!(
                "{}; try again",
                e.message
            )))),
            _ => Err(ErrorData::internal_error(e.message, None)),
        },
        Err(other) => Err(ErrorData::internal_error(other.to_string(), None)),
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("capsid", env!("CARGO_PKG_VERSION")))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let watch = capsid_core::sync::lock(&self.watch).take();
        if let Some(watch) = watch {
            tokio::spawn(announce_changes(watch, self.user.clone(), context.peer));
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let params = ToolListParams {
            as_user: Some(self.user.clone()),
        };
        let tools = self
            .client
            .lock()
            .await
            .call::<ToolList>(&params)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(ListToolsResult::with_all_items(
            tools.into_iter().map(mcp_tool).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        let Some((capsule, tool)) = name.split_once('.') else {
            return Err(unknown_tool(name));
        };
        let Ok(capsule) = CapsuleId::new(capsule) else {
            return Err(unknown_tool(name));
        };
        let input = Value::Object(request.arguments.clone().unwrap_or_default());
        // Refused here: a frame too big for the daemon would end this session's connection.
        let len = input.to_string().len();
        if len > MAX_TOOL_INPUT_BYTES {
            return Err(ErrorData::invalid_params(
                format!("the arguments are {len} bytes, over the limit of {MAX_TOOL_INPUT_BYTES}"),
                None,
            ));
        }
        let params = ToolCallParams {
            capsule,
            tool: tool.to_owned(),
            input,
            as_user: Some(self.user.clone()),
            client: context.peer.peer_info().map(|p| p.client_info.name.clone()),
            via: Via::Mcp,
        };
        let result = self.client.lock().await.call::<ToolCall>(&params).await;
        answer(name, result).map(CallToolResponse::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsid_protocol::WireError;

    fn daemon(code: ErrorCode) -> Result<ToolOutput, ClientError> {
        Err(ClientError::Daemon(WireError::new(code, "why")))
    }

    #[test]
    fn results_failures_and_refusals_map_to_what_mcp_clients_expect() {
        let object = answer("c.t", Ok(ToolOutput::Json(serde_json::json!({ "n": 1 }))));
        let object = object.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            object.structured_content,
            Some(serde_json::json!({ "n": 1 }))
        );
        assert_eq!(object.is_error, Some(false));
        let failed =
            answer("c.t", daemon(ErrorCode::ToolError)).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(failed.is_error, Some(true));
        let timed_out =
            answer("c.t", daemon(ErrorCode::Timeout)).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(timed_out.is_error, Some(true));
        // Refused and absent are one answer, naming only what the client asked for.
        let refused = answer("c.t", daemon(ErrorCode::UnknownTool)).err();
        let absent = answer("c.t", daemon(ErrorCode::NotFound)).err();
        assert!(refused.is_some());
        assert_eq!(refused, absent);
    }

    #[test]
    fn a_tool_without_a_schema_takes_any_object() {
        let tool = mcp_tool(ToolDef {
            capsule: CapsuleId::new("c").unwrap_or_else(|e| panic!("{e}")),
            tool: "t".into(),
            description: "d".into(),
            input_schema: Value::Null,
        });
        assert_eq!(tool.name, "c.t");
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&Value::String("object".into()))
        );
    }
}
