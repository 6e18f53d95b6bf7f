//! Tools through every door of the real binary: the daemon's typed `tool.call` and
//! `tool.list` (results tagged JSON or text, errors that keep their kind, users who call only
//! what they were granted, every call recorded before and after) and `capsid mcp serve`
//! driven by a real MCP client (rmcp) over stdio.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use capsid_core::CapsidHome;
use capsid_core::limits::MAX_TOOL_INPUT_BYTES;
use capsid_protocol::methods::{
    CapsuleLoad, CapsuleParams, CapsuleShow, Status, ToolCall, ToolCallParams, ToolOutput, Via,
};
use capsid_protocol::{Client, ErrorCode, Method, NoParams};
use serde_json::{Value, json};

use common::{CAPSID, Home, arguments, frame, next, welcomed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_answer_typed_results_and_errors_keep_their_kind() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("hello");
    let mut client = Client::connect(&CapsidHome::at(&home.path), String::new())
        .await
        .unwrap();
    let hello = capsid_core::CapsuleId::new("hello").unwrap();
    let call = |tool: &str, input: Value| ToolCallParams {
        capsule: hello.clone(),
        tool: tool.into(),
        input,
        as_user: None,
        client: None,
        via: Via::Daemon,
        approvals: false,
    };

    let greeted = client
        .call::<ToolCall>(&call("greet", json!({ "name": "typed" })))
        .await
        .unwrap();
    assert_eq!(
        greeted,
        ToolOutput::Json(json!({ "greeting": "Hello, typed!" }))
    );
    // A JSON string answer stays a JSON string; it is not confused with text.
    let quoted = client
        .call::<ToolCall>(&call("echo", json!("x")))
        .await
        .unwrap();
    assert_eq!(quoted, ToolOutput::Json(json!("x")));

    let code = |r: Result<ToolOutput, capsid_protocol::ClientError>| r.unwrap_err().code();
    let unknown = client.call::<ToolCall>(&call("nosuch", json!({}))).await;
    assert_eq!(code(unknown), Some(ErrorCode::UnknownTool));
    let huge = json!("x".repeat(MAX_TOOL_INPUT_BYTES + 1));
    let over = client.call::<ToolCall>(&call("echo", huge)).await;
    assert_eq!(code(over), Some(ErrorCode::TooLarge));
    let missing = ToolCallParams {
        capsule: capsid_core::CapsuleId::new("nosuch").unwrap(),
        ..call("greet", json!({}))
    };
    assert_eq!(
        code(client.call::<ToolCall>(&missing).await),
        Some(ErrorCode::NotFound)
    );
    let not_installed = client
        .call::<CapsuleLoad>(&CapsuleParams {
            name: capsid_core::CapsuleId::new("nosuch").unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_installed.code(), Some(ErrorCode::NotFound));
    let loaded = client
        .call::<CapsuleLoad>(&CapsuleParams {
            name: hello.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(loaded.code(), Some(ErrorCode::Conflict));

    // Params are checked against the method's type: the old `capsule` alias and unknown
    // fields are refused, never guessed at.
    let id = client.send::<Status>(&NoParams {}).await.unwrap();
    client.receive(id).await.unwrap();
    let mut s = welcomed(&home).await;
    let alias = json!({ "id": 1, "method": CapsuleShow::NAME, "params": { "capsule": "hello" } });
    frame(&mut s, alias.to_string().as_bytes()).await;
    let answer = next(&mut s).await.unwrap();
    assert_eq!(answer["error"]["code"], "invalid-params", "{answer}");
    home.ok(&["stop"]);
}

/// The denied call, the granted MCP call and the operator's, each recorded before and after.
fn tool_calls_are_recorded_before_and_after(home: &Home) {
    let tail = home.json(&["audit", "tail", "-n", "50"]);
    let entries: Vec<&Value> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"] == "tool://hello/greet")
        .collect();
    let steps: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("tool.call", "deny"),
            ("tool.call", "allow"),
            ("tool.result", "info"),
            ("tool.call", "info"),
            ("tool.result", "info"),
        ],
        "the denied call, the granted MCP call and the operator's, each before and after"
    );
    let mcp_call: Value = serde_json::from_str(entries[1]["details"].as_str().unwrap()).unwrap();
    assert_eq!(mcp_call["door"], "mcp");
    assert_eq!(mcp_call["client"], "test-agent");
    assert_eq!(mcp_call["input_blake3"].as_str().unwrap().len(), 64);
    let op_call: Value = serde_json::from_str(entries[3]["details"].as_str().unwrap()).unwrap();
    assert_eq!(op_call["door"], "daemon");
    let result: Value = serde_json::from_str(entries[4]["details"].as_str().unwrap()).unwrap();
    assert_eq!(result["outcome"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_calls_only_the_tools_granted_and_every_call_is_recorded_whichever_door() {
    let home = Home::new();
    // Not dev: the `mcp` user holds nothing until the operator grants it.
    home.ok(&["start"]);
    home.install("hello");
    let names = |tools: Value| -> Vec<String> {
        tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}.{}",
                    t["capsule"].as_str().unwrap(),
                    t["tool"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert!(names(home.json(&["tools"])).contains(&"hello.greet".to_owned()));
    assert!(names(home.json(&["tools", "--as", "mcp"])).is_empty());

    let mut client = Client::connect(&CapsidHome::at(&home.path), String::new())
        .await
        .unwrap();
    let as_mcp = |capsule: &str, tool: &str| ToolCallParams {
        capsule: capsid_core::CapsuleId::new(capsule).unwrap(),
        tool: tool.into(),
        input: json!({ "name": "agent" }),
        as_user: Some("mcp".into()),
        client: Some("test-agent".into()),
        via: Via::Mcp,
        approvals: false,
    };
    // Not granted and not there answer alike: no oracle for what is installed.
    let denied = client
        .call::<ToolCall>(&as_mcp("hello", "greet"))
        .await
        .unwrap_err();
    let absent = client
        .call::<ToolCall>(&as_mcp("nosuch", "greet"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some(ErrorCode::UnknownTool));
    assert_eq!(absent.code(), Some(ErrorCode::UnknownTool));
    assert_eq!(
        denied.to_string().replace("hello", "X"),
        absent.to_string().replace("nosuch", "X"),
        "the same answer, the names aside"
    );
    let nobody = ToolCallParams {
        as_user: Some("nobody-at-all".into()),
        ..as_mcp("hello", "greet")
    };
    assert_eq!(
        client.call::<ToolCall>(&nobody).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );

    home.ok(&["cap", "grant", "tool://hello/*", "exec", "--user", "mcp"]);
    assert_eq!(
        names(home.json(&["tools", "--as", "mcp"])),
        ["hello.greet", "hello.whoami", "hello.echo"]
    );
    let greeted = client
        .call::<ToolCall>(&as_mcp("hello", "greet"))
        .await
        .unwrap();
    assert_eq!(
        greeted,
        ToolOutput::Json(json!({ "greeting": "Hello, agent!" }))
    );
    home.ok(&["call", "hello", "greet", "--input", r#"{"name":"op"}"#]);

    tool_calls_are_recorded_before_and_after(&home);
    assert!(home.ok(&["audit", "verify"]).contains("verified"));
    home.ok(&["stop"]);
}

/// An MCP client session with `capsid mcp serve` in `home`, as `user`.
async fn mcp_session(
    home: &Home,
    user: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::ServiceExt;
    let mut cmd = tokio::process::Command::new(CAPSID);
    cmd.arg("--home")
        .arg(&home.path)
        .args(["mcp", "serve", "--as", user]);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    ().serve(transport).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_lists_and_calls_only_what_its_user_was_granted() {
    use rmcp::model::CallToolRequestParams;
    let home = Home::new();
    home.ok(&["start"]);
    home.install("hello");
    home.install("counter");

    let session = mcp_session(&home, "mcp").await;
    let info = session.peer_info().unwrap();
    assert_eq!(
        info.server_info.as_ref().map(|i| i.name.as_str()),
        Some("capsid")
    );
    assert!(
        session.list_all_tools().await.unwrap().is_empty(),
        "nothing granted yet"
    );
    let greet = CallToolRequestParams::new("hello.greet")
        .with_arguments(arguments(json!({ "name": "agent" })));
    let refused = session
        .call_tool(greet.clone())
        .await
        .unwrap_err()
        .to_string();
    let absent = session
        .call_tool(CallToolRequestParams::new("nosuch.greet"))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("unknown tool"), "{refused}");
    assert_eq!(
        refused.replace("hello", "X"),
        absent.replace("nosuch", "X"),
        "not granted answers as not there"
    );

    home.ok(&["cap", "grant", "tool://hello/*", "exec", "--user", "mcp"]);
    assert_eq!(
        common::tool_names(&session).await,
        ["hello.echo", "hello.greet", "hello.whoami"]
    );
    let greeted = session.call_tool(greet).await.unwrap();
    assert_eq!(greeted.is_error, Some(false));
    assert_eq!(
        greeted.structured_content,
        Some(json!({ "greeting": "Hello, agent!" }))
    );
    // counter was not granted: still unknown, even though it is installed and ready.
    let counted = session
        .call_tool(CallToolRequestParams::new("counter.get"))
        .await;
    assert!(counted.is_err());
    session.cancel().await.unwrap();

    let tail = home.json(&["audit", "tail", "-n", "50"]);
    let mcp_calls: Vec<Value> = tail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "tool.call" && e["decision"] == "allow")
        .map(|e| serde_json::from_str(e["details"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(mcp_calls.len(), 1, "{tail}");
    assert_eq!(mcp_calls[0]["door"], "mcp");
    assert!(
        mcp_calls[0]["client"].is_string(),
        "the client's name is recorded"
    );
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_serve_starts_the_daemon_when_none_runs_unless_told_not_to() {
    let home = Home::new();
    let refused = home.run(&["mcp", "serve", "--no-start"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("capsid start"));
    assert!(refused.stdout.is_empty(), "stdout is the protocol's alone");
    let session = mcp_session(&home, "mcp").await;
    assert!(session.list_all_tools().await.unwrap().is_empty());
    session.cancel().await.unwrap();
    assert!(
        home.pid().is_some(),
        "a daemon was started and keeps serving"
    );
    home.ok(&["stop"]);
}

/// An MCP client that counts `notifications/tools/list_changed`.
struct Watcher(std::sync::Arc<tokio::sync::Notify>);

impl rmcp::ClientHandler for Watcher {
    async fn on_tool_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.0.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_is_told_when_the_tools_it_may_call_change() {
    use rmcp::ServiceExt;
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("hello");
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut cmd = tokio::process::Command::new(CAPSID);
    cmd.arg("--home").arg(&home.path).args(["mcp", "serve"]);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    let session = Watcher(changed.clone()).serve(transport).await.unwrap();
    let before = session.list_all_tools().await.unwrap().len();

    home.install("counter");
    tokio::time::timeout(common::PATIENCE, changed.notified())
        .await
        .expect("told of the new capsule's tools");
    let after = session.list_all_tools().await.unwrap();
    assert!(after.len() > before);
    assert!(after.iter().any(|t| t.name == "counter.increment"));

    home.ok(&["capsule", "unload", "counter"]);
    tokio::time::timeout(common::PATIENCE, changed.notified())
        .await
        .expect("told the tools went");
    assert_eq!(session.list_all_tools().await.unwrap().len(), before);
    session.cancel().await.unwrap();
    home.ok(&["stop"]);
}
