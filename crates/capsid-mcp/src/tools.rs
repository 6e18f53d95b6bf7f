//! capsid's tools and answers as MCP shows them: names `<capsule>.<tool>`, schemas and hints
//! from the manifest, results and failures in the form MCP clients expect.

use std::sync::Arc;

use capsid_core::CapsuleId;
use capsid_core::limits::MAX_TOOL_INPUT_BYTES;
use capsid_protocol::methods::{ToolDef, ToolOutput};
use capsid_protocol::{ClientError, ErrorCode};
use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations,
};
use serde_json::Value;

use crate::approvals::Binding;

/// The MCP name of a tool: `<capsule>.<tool>`.
fn mcp_name(t: &ToolDef) -> String {
    format!("{}.{}", t.capsule, t.tool)
}

/// A tool as MCP lists it.
pub(crate) fn mcp_tool(t: ToolDef) -> Tool {
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
    let mut tool = Tool::new(name, t.description, Arc::new(schema));
    if let Some(Value::Object(output)) = t.output_schema {
        tool = tool.with_raw_output_schema(Arc::new(output));
    }
    let hints = t.annotations;
    if hints != capsid_protocol::methods::ToolHints::default() {
        tool = tool.with_annotations(ToolAnnotations::from_raw(
            None,
            hints.read_only,
            hints.destructive,
            hints.idempotent,
            hints.open_world,
        ));
    }
    tool
}

/// The answer for a tool name that is not, or may not be, called: the same either way.
pub(crate) fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(format!("unknown tool {name:?}"), None)
}

/// What a `tools/call` asks for, read from its params.
#[derive(Debug, Clone)]
pub struct CallAsked {
    /// The capsule named before the first `.`.
    pub capsule: CapsuleId,
    /// The tool named after it.
    pub tool: String,
    /// The arguments, as the tool's input (`{}` when there are none).
    pub input: Value,
    /// What a sealed request state for this call is bound to.
    pub binding: Binding,
}

/// What `request`, made by `user`, asks for; refused as an unknown tool when its name is not
/// `<capsule>.<tool>` with a valid capsule name, or as invalid params when its arguments are
/// over `MAX_TOOL_INPUT_BYTES`.
pub fn read_call(user: &str, request: &CallToolRequestParams) -> Result<CallAsked, ErrorData> {
    let name = request.name.as_ref();
    let Some((capsule, tool)) = name.split_once('.') else {
        return Err(unknown_tool(name));
    };
    let Ok(capsule) = CapsuleId::new(capsule) else {
        return Err(unknown_tool(name));
    };
    let input = Value::Object(request.arguments.clone().unwrap_or_default());
    // Refused here: a frame too big for the daemon would end this request's connection.
    let len = input.to_string().len();
    if len > MAX_TOOL_INPUT_BYTES {
        return Err(ErrorData::invalid_params(
            format!("the arguments are {len} bytes, over the limit of {MAX_TOOL_INPUT_BYTES}"),
            None,
        ));
    }
    Ok(CallAsked {
        binding: Binding::new(user, name, &input),
        capsule,
        tool: tool.to_owned(),
        input,
    })
}

fn text(message: impl Into<String>) -> Vec<ContentBlock> {
    vec![ContentBlock::text(message.into())]
}

/// A daemon answer as MCP sees it: results and tool failures are results (the model reads
/// them), requests that cannot be served are protocol errors.
pub(crate) fn answer(
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
            ErrorCode::Cancelled => Ok(CallToolResult::error(text(format!(
                "the call was cancelled: {}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use capsid_core::CapsuleId;
    use capsid_protocol::WireError;
    use capsid_protocol::methods::ToolHints;

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
        for code in [
            ErrorCode::ToolError,
            ErrorCode::Timeout,
            ErrorCode::Cancelled,
            ErrorCode::CapsuleFailed,
        ] {
            let failed = answer("c.t", daemon(code)).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(failed.is_error, Some(true), "{code}");
        }
        // Refused and absent are one answer, naming only what the client asked for.
        let refused = answer("c.t", daemon(ErrorCode::UnknownTool)).err();
        let absent = answer("c.t", daemon(ErrorCode::NotFound)).err();
        assert!(refused.is_some());
        assert_eq!(refused, absent);
    }

    fn def(output_schema: Option<Value>, annotations: ToolHints) -> ToolDef {
        ToolDef {
            capsule: CapsuleId::new("c").unwrap_or_else(|e| panic!("{e}")),
            tool: "t".into(),
            description: "d".into(),
            input_schema: Value::Null,
            output_schema,
            annotations,
        }
    }

    #[test]
    fn a_tool_without_a_schema_takes_any_object_and_has_no_hints() {
        let tool = mcp_tool(def(None, ToolHints::default()));
        assert_eq!(tool.name, "c.t");
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&Value::String("object".into()))
        );
        assert!(tool.annotations.is_none() && tool.output_schema.is_none());
    }

    #[test]
    fn output_schemas_and_hints_reach_the_client() {
        let hints = ToolHints {
            read_only: Some(true),
            destructive: Some(false),
            idempotent: None,
            open_world: Some(false),
        };
        let schema =
            serde_json::json!({ "type": "object", "properties": { "n": { "type": "integer" } } });
        let tool = mcp_tool(def(Some(schema.clone()), hints));
        assert_eq!(
            tool.output_schema.map(|s| Value::Object((*s).clone())),
            Some(schema)
        );
        let annotations = tool.annotations.unwrap_or_default();
        assert_eq!(annotations.read_only_hint, Some(true));
        assert_eq!(annotations.destructive_hint, Some(false));
        assert_eq!(annotations.idempotent_hint, None);
        assert_eq!(annotations.open_world_hint, Some(false));
    }
}
