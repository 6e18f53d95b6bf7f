//! The MCP targets: what an MCP client sends the bridge (`capsid mcp serve`), and what a
//! contained MCP server (an `[mcp]` capsule, untrusted code) sends capsid. rmcp parses the
//! JSON-RPC; these feed what capsid does with the parsed messages.

use capsid_capsule::fuzzing::{Unusable, answer_text, error_text, present, usable_name};
use capsid_core::limits::{
    MAX_MCP_TOOL_DEFINITION_BYTES, MAX_TOOL_INPUT_BYTES, MAX_TOOL_OUTPUT_BYTES,
};
use capsid_mcp::fuzzing::{Answered, Binding, StateSeal, answered, read_call};
use capsid_protocol::methods::{ApprovalDecision, ApprovalView};
use rmcp::model::{
    CallToolResult, ClientJsonRpcMessage, ClientRequest, ElicitResult, JsonRpcMessage,
    ListToolsResult, ServerJsonRpcMessage, Tool,
};
use serde_json::Value;

/// The user the bridge acts as in these inputs.
const USER: &str = "fuzz";

/// The longest message an error answer is cut to, in characters.
const ERROR_TEXT_CHARS: usize = 4096;

fn seal() -> StateSeal {
    StateSeal::with_key([5; 32])
}

/// What an MCP client sends the bridge. The first byte picks how the rest is read:
/// - even: a JSON-RPC line. A `tools/call` is read as the bridge reads it: a call it takes
///   names `<capsule>.<tool>` exactly, with arguments within `MAX_TOOL_INPUT_BYTES`, and no
///   request state the client made up opens; answers to an approval form (`inputResponses`)
///   decide only what was offered.
/// - odd: a request state sealed for a call made of the input's parts (approval id, user,
///   tool and arguments, split at NUL), then altered by `(offset, xor)` byte pairs: it
///   opens for its own call only, and only as the very text that was sealed (one state,
///   one spelling).
pub fn mcp_client(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        client_message(rest);
    } else {
        sealed_state(rest);
    }
}

fn client_message(line: &[u8]) {
    let Ok(JsonRpcMessage::Request(request)) = serde_json::from_slice::<ClientJsonRpcMessage>(line)
    else {
        return;
    };
    let ClientRequest::CallToolRequest(call) = request.request else {
        return;
    };
    let params = call.params;
    if let Ok(asked) = read_call(USER, &params) {
        assert_eq!(format!("{}.{}", asked.capsule, asked.tool), params.name);
        assert!(asked.input.to_string().len() <= MAX_TOOL_INPUT_BYTES);
        assert_eq!(
            asked.binding,
            Binding::new(USER, &params.name, &asked.input)
        );
        if let Some(state) = params.request_state.as_deref() {
            assert_eq!(
                seal().open(state, &asked.binding),
                None,
                "a made-up state opened"
            );
        }
    }
    for answer in params.input_responses.iter().flat_map(|r| r.values()) {
        if let Ok(result) = serde_json::from_value::<ElicitResult>(answer.clone()) {
            check_answer(&result);
        }
    }
}

/// An answer to the approval form decides only what was offered: `session` only to a
/// session's call asked where sessions are seen; never anything but once, session or deny.
fn check_answer(result: &ElicitResult) {
    for session in [None, Some("s1".to_owned())] {
        let view = ApprovalView {
            id: "a1".into(),
            principal: format!("user:{USER}"),
            capsule: "fetch".into(),
            resource: "net://https/example.com/443".into(),
            permission: "exec".into(),
            description: "http.request".into(),
            digest: String::new(),
            requested_ms: 0,
            expires_ms: i64::MAX,
            caller: None,
            session: session.clone(),
        };
        for sessions in [false, true] {
            if answered(&view, sessions, result) == Answered::Decide(ApprovalDecision::Session) {
                assert!(
                    sessions && session.is_some(),
                    "session decided where not offered"
                );
            }
        }
    }
}

fn sealed_state(rest: &[u8]) {
    let mut parts = rest.splitn(5, |&b| b == 0);
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (id, user, tool, arguments) = (text(), text(), text(), text());
    let alterations = parts.next().unwrap_or_default();
    let input = serde_json::from_str::<Value>(&arguments).unwrap_or(Value::String(arguments));
    let binding = Binding::new(&user, &tool, &input);
    let seal = seal();
    let expires = capsid_core::time::now_ms() + 60_000;
    let state = seal.seal(&id, expires, &binding);
    assert_eq!(
        seal.open(&state, &binding),
        Some(id),
        "a sealed state did not open"
    );
    for other in [
        Binding::new(&format!("{user}'"), &tool, &input),
        Binding::new(&user, &format!("{tool}'"), &input),
        Binding::new(&user, &tool, &Value::Array(vec![input.clone()])),
    ] {
        assert_eq!(seal.open(&state, &other), None, "opened for another call");
    }
    let mut altered = state.clone().into_bytes();
    for pair in alterations.chunks_exact(3) {
        let offset = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % altered.len();
        altered[offset] ^= pair[2];
    }
    if let Ok(altered) = String::from_utf8(altered)
        && seal.open(&altered, &binding).is_some()
    {
        assert_eq!(altered, state, "an altered state opened");
    }
}

/// What a contained MCP server sends capsid. The first byte picks what the rest is read as:
/// a `tools/list` result, a `tools/call` result, one tool, or a whole JSON-RPC message (whose
/// result is read as both). A tool taken has a usable name and a definition within its
/// limit whose digest is the hash of its canonical bytes, and the tool written out and read
/// back presents the same digest; an answer is within `MAX_TOOL_OUTPUT_BYTES`, and an error
/// answer always says something.
pub fn mcp_server(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(list) = serde_json::from_slice::<ListToolsResult>(rest) {
                list.tools.iter().for_each(check_tool);
            }
        }
        1 => {
            if let Ok(result) = serde_json::from_slice::<CallToolResult>(rest) {
                check_result(&result);
            }
        }
        2 => {
            if let Ok(tool) = serde_json::from_slice::<Tool>(rest) {
                check_tool(&tool);
            }
        }
        _ => {
            let Ok(JsonRpcMessage::Response(response)) =
                serde_json::from_slice::<ServerJsonRpcMessage>(rest)
            else {
                return;
            };
            let Ok(result) = serde_json::to_value(&response.result) else {
                return;
            };
            if let Ok(list) = serde_json::from_value::<ListToolsResult>(result.clone()) {
                list.tools.iter().for_each(check_tool);
            }
            if let Ok(result) = serde_json::from_value::<CallToolResult>(result) {
                check_result(&result);
            }
        }
    }
}

fn check_tool(tool: &Tool) {
    let presented = match present(tool) {
        Ok(presented) => presented,
        Err(Unusable::Name(_)) => {
            assert!(!usable_name(&tool.name), "a usable name was refused");
            return;
        }
        Err(Unusable::TooBig(len)) => {
            assert!(
                len == 0 || len > MAX_MCP_TOOL_DEFINITION_BYTES,
                "{len} bytes refused"
            );
            return;
        }
    };
    assert!(usable_name(&presented.tool.name));
    let bytes = serde_json::to_vec(&presented.definition).unwrap_or_default();
    assert!(!bytes.is_empty() && bytes.len() <= MAX_MCP_TOOL_DEFINITION_BYTES);
    assert_eq!(
        presented.digest,
        capsid_crypto::hash(capsid_crypto::domain::MCP_TOOL_DEFINITION, &bytes).to_string()
    );
    // What is pinned survives rmcp's model: the tool written out and read back presents the
    // same digest (a field lost or changed on the way would re-pin, or hide, a tool). Not
    // for a tool with a fractional number: serde_json reads those fast rather than exactly
    // (within a unit in the last place), so one can differ once written out and read again,
    // though the same text always reads the same (found by this target).
    let Ok(written) = serde_json::to_value(tool) else {
        return;
    };
    if has_fraction(&written) {
        return;
    }
    let Ok(written) = serde_json::to_vec(&written) else {
        return;
    };
    let Ok(again) = serde_json::from_slice::<Tool>(&written) else {
        panic!("a tool written out does not read back");
    };
    assert_eq!(
        present(&again).map(|p| p.digest),
        Ok(presented.digest),
        "the digest changed when the tool was written out and read back"
    );
}

/// Whether `value` holds a number that is not an integer.
fn has_fraction(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_fraction),
        Value::Object(map) => map.values().any(has_fraction),
        _ => false,
    }
}

fn check_result(result: &CallToolResult) {
    match answer_text(result) {
        Ok(text) => assert!(text.len() <= MAX_TOOL_OUTPUT_BYTES),
        Err(len) => assert!(len > MAX_TOOL_OUTPUT_BYTES),
    }
    let error = error_text(result);
    assert!(!error.is_empty() && error.chars().count() <= ERROR_TEXT_CHARS);
}
