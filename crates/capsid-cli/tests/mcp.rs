//! `capsid mcp serve` beyond listing and calling (in `tools.rs`): progress, cancellation,
//! the 2026 subscription form of list changes, and the HTTP transport with its bearer tokens,
//! Host and Origin checks and bad input, each driven by a real MCP client (rmcp) or raw HTTP
//! against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientRequest, ProgressNotificationParam,
    SubscriptionFilter,
};
use rmcp::service::{NotificationContext, PeerRequestOptions};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use common::{CAPSID, Home, PATIENCE, arguments};

/// Installs a copy of built capsule `name` whose manifest `edit` changed.
fn install_edited(home: &Home, name: &str, edit: impl Fn(String) -> String) {
    let to = capsid_integration_tests::copy_capsule(name, &home.path.join("edited"));
    let manifest = to.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, edit(text)).unwrap();
    capsid_integration_tests::sign(&to);
    home.ok(&["capsule", "install", to.to_str().unwrap()]);
}

/// An MCP client that keeps the progress notifications it is sent.
#[derive(Clone, Default)]
struct Listener {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Listener {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

fn serve_command(home: &Home) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(CAPSID);
    cmd.arg("--home").arg(&home.path).args(["mcp", "serve"]);
    cmd
}

/// A session that starts with `initialize` (protocol 2025-11-25).
async fn stdio_session(
    home: &Home,
    handler: Listener,
) -> rmcp::service::RunningService<RoleClient, Listener> {
    let transport = rmcp::transport::TokioChildProcess::new(serve_command(home)).unwrap();
    handler.serve(transport).await.unwrap()
}

/// A session that starts with `server/discover` (protocol 2026-07-28, no `initialize`).
async fn stdio_session_2026(home: &Home) -> rmcp::service::RunningService<RoleClient, Listener> {
    use rmcp::model::ProtocolVersion;
    use rmcp::service::{ClientLifecycleMode, serve_client_with_lifecycle};
    let transport = rmcp::transport::TokioChildProcess::new(serve_command(home)).unwrap();
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    serve_client_with_lifecycle(Listener::default(), transport, lifecycle)
        .await
        .unwrap()
}

/// A raw stdio session with `capsid mcp serve`, initialised with protocol 2025-06-18.
struct RawStdio {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl RawStdio {
    async fn open(home: &Home) -> Self {
        let mut child = serve_command(home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut raw = Self {
            _child: child,
            stdin,
            lines,
        };
        raw.line(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}).to_string()).await;
        raw.answer(0).await;
        raw.line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        raw
    }

    async fn line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// The messages the server wrote before its answer to `id`, and the answer.
    async fn answer(&mut self, id: u64) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.next_line())
                .await
                .expect("the server answers")
                .unwrap()
                .expect("the server keeps its stdout open");
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == id {
                return (before, message);
            }
            before.push(message);
        }
    }
}

/// A tools/call over a raw stdio session, with no progress token: the lines the server
/// wrote before its answer, and the answer.
async fn raw_stdio_call(home: &Home, name: &str, arguments: Value) -> (Vec<Value>, Value) {
    let mut raw = RawStdio::open(home).await;
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":name,"arguments":arguments}});
    raw.line(&call.to_string()).await;
    raw.answer(2).await
}

/// The details of the audit entries for `action`, newest last.
fn recorded(home: &Home, action: &str) -> Vec<Value> {
    home.json(&["audit", "tail", "-n", "200"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| serde_json::from_str(e["details"].as_str().unwrap_or("null")).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_stdio_bad_messages_are_answered_or_dropped_and_the_session_goes_on() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("hello");
    let mut raw = RawStdio::open(&home).await;
    // Not JSON: dropped (answering unparsable input invites an error storm).
    raw.line("{this is not json").await;
    // Over the line limit: dropped unread.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{{"x":"{}"}}}}"#,
        "x".repeat(capsid_core::limits::MCP_MAX_REQUEST_BYTES)
    );
    raw.line(&huge).await;
    raw.line(r#"{"jsonrpc":"2.0","id":4,"method":"no/such/method"}"#)
        .await;
    let (_, unknown) = raw.answer(4).await;
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    raw.line(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"hello.greet","arguments":"not an object"}}"#).await;
    let (_, malformed) = raw.answer(5).await;
    assert!(malformed["error"].is_object(), "{malformed}");
    raw.line(r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#)
        .await;
    let (before, listed) = raw.answer(6).await;
    assert!(
        before.iter().all(|m| m["id"] != 3),
        "the oversized request was not served: {before:?}"
    );
    assert_eq!(listed["result"]["tools"].as_array().map(Vec::len), Some(3));
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_progress_is_told_it_and_one_that_does_not_is_not() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("counter");
    let listener = Listener::default();
    let session = stdio_session(&home, listener.clone()).await;
    let tools = session.list_all_tools().await.unwrap();
    let get = tools.iter().find(|t| t.name == "counter.get").unwrap();
    assert_eq!(
        get.annotations.as_ref().and_then(|a| a.read_only_hint),
        Some(true),
        "manifest annotations reach the client"
    );
    assert!(get.output_schema.is_some());

    let input = json!({ "to": 8, "step_ms": 30 });
    let (before, quiet) = raw_stdio_call(&home, "counter.count-to", input.clone()).await;
    assert_eq!(
        quiet["result"]["structuredContent"],
        json!({ "counted": 8 })
    );
    assert!(
        before
            .iter()
            .all(|m| m["method"] != "notifications/progress"),
        "no token, no progress: {before:?}"
    );

    // rmcp's client sends a progress token of its own with every request.
    let params = CallToolRequestParams::new("counter.count-to").with_arguments(arguments(input));
    let counted = session.call_tool(params).await.unwrap();
    assert_eq!(counted.structured_content, Some(json!({ "counted": 8 })));
    let progress = listener.progress.lock().unwrap().clone();
    assert!(!progress.is_empty(), "progress was reported");
    let token = &progress[0].progress_token;
    assert!(progress.iter().all(|p| &p.progress_token == token));
    assert!(progress.iter().all(|p| p.total == Some(8.0)));
    assert!(
        progress.windows(2).all(|w| w[0].progress <= w[1].progress),
        "progress only grows: {progress:?}"
    );
    let last = progress.last().unwrap();
    assert!(
        last.message
            .as_deref()
            .unwrap_or("")
            .starts_with("counted ")
    );
    session.cancel().await.unwrap();
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_stops_the_guest_and_leaves_its_capsule_ready() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    // Its deadline far away, so only the cancellation can stop it.
    install_edited(&home, "spin", |m| {
        m.replace("call_timeout_ms = 200", "call_timeout_ms = 60000")
    });
    let session = stdio_session(&home, Listener::default()).await;
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new(
        "spin.spin",
    )));
    let handle = session
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    common::until("the call runs", || recorded(&home, "tool.call").len() == 1);
    handle.cancel(Some("enough".into())).await.unwrap();
    common::until("the call is recorded as cancelled", || {
        recorded(&home, "tool.result")
            .iter()
            .any(|d| d["outcome"] == "cancelled")
    });
    let shown = home.json(&["capsule", "show", "spin"]);
    assert_eq!(shown["state"], "ready", "{shown}");

    // A call that is sending progress when it is cancelled is recorded as cancelled too.
    home.install("counter");
    let slow = CallToolRequestParams::new("counter.count-to")
        .with_arguments(arguments(json!({ "to": 1000, "step_ms": 100 })));
    let handle = session
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(slow)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    common::until("the slow call runs", || {
        recorded(&home, "tool.call").len() == 2
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    handle.cancel(None).await.unwrap();
    common::until("both calls are recorded as cancelled", || {
        recorded(&home, "tool.result")
            .iter()
            .filter(|d| d["outcome"] == "cancelled")
            .count()
            == 2
    });
    assert!(
        recorded(&home, "capsule.failed").is_empty(),
        "a cancelled call is not a failure"
    );
    session.cancel().await.unwrap();
    assert!(home.ok(&["audit", "verify"]).contains("verified"));
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_subscribes_to_tool_list_changes() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    let session = stdio_session_2026(&home).await;
    let mut filter = SubscriptionFilter::new();
    filter.tools_list_changed = Some(true);
    let mut subscription = session.listen(filter).await.unwrap();
    assert_eq!(subscription.acknowledged().tools_list_changed, Some(true));
    home.install("hello");
    let note = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("told of the new tools")
        .unwrap();
    assert!(
        matches!(
            note,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{note:?}"
    );
    subscription.cancel().await.unwrap();
    session.cancel().await.unwrap();
    home.ok(&["stop"]);
}

/// `capsid mcp serve --http` on a free loopback port: the child, and its URL.
async fn http_server(home: &Home, extra: &[&str]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(CAPSID)
        .arg("--home")
        .arg(&home.path)
        .args(["mcp", "serve", "--http", "127.0.0.1:0"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("capsid mcp: serving ") {
                return url.to_owned();
            }
        }
        panic!("the server ended before it served");
    })
    .await
    .expect("the server says where it serves");
    // Keep draining its stderr so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

async fn http_session(url: &str, token: &str) -> rmcp::service::RunningService<RoleClient, ()> {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let transport = StreamableHttpClientTransport::from_config(config);
    ().serve(transport).await.unwrap()
}

/// One raw HTTP/1.1 request to `url`'s host and port; the status code, head and body.
async fn raw_http(url: &str, request: &str) -> (u16, String, String) {
    let authority = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

fn post(authority: &str, headers: &str, body: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_only_a_live_bearer_token_reaches_tools_and_it_acts_as_its_user() {
    let home = Home::new();
    home.ok(&["start"]);
    home.install("hello");
    home.install("counter");
    home.ok(&["cap", "grant", "tool://hello/*", "exec", "--user", "mcp"]);
    let token = home.ok(&["mcp", "token", "create", "--as", "mcp", "--label", "test"]);
    let token = token.trim().to_owned();
    assert!(token.starts_with("capsid_"), "{token}");
    let listed = home.json(&["mcp", "token", "ls"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["user_name"], "mcp");
    assert!(
        !listed[0]
            .to_string()
            .contains(token.rsplit('_').next().unwrap())
    );
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    let (mut server, url) = http_server(&home, &[]).await;
    let session = http_session(&url, &token).await;
    assert_eq!(
        common::tool_names(&session).await,
        ["hello.echo", "hello.greet", "hello.whoami"]
    );
    let greeted = session
        .call_tool(
            CallToolRequestParams::new("hello.greet")
                .with_arguments(arguments(json!({ "name": "http" }))),
        )
        .await
        .unwrap();
    assert_eq!(
        greeted.structured_content,
        Some(json!({ "greeting": "Hello, http!" }))
    );
    // Not granted to the token's user: as if it were not there.
    let refused = session
        .call_tool(CallToolRequestParams::new("counter.get"))
        .await
        .unwrap_err()
        .to_string();
    let absent = session
        .call_tool(CallToolRequestParams::new("nosuch.get"))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        refused.replace("counter", "X"),
        absent.replace("nosuch", "X")
    );
    session.cancel().await.unwrap();

    let authority = url.trim_start_matches("http://").split('/').next().unwrap();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let (status, ..) = raw_http(&url, &post(authority, "", INITIALIZE)).await;
    assert_eq!(status, 401, "no token");
    let wrong = format!("Authorization: Bearer {token}0\r\n");
    let (status, ..) = raw_http(&url, &post(authority, &wrong, INITIALIZE)).await;
    assert_eq!(status, 401, "a wrong token");
    let (status, ..) = raw_http(&url, &post(authority, &bearer, INITIALIZE)).await;
    assert_eq!(status, 200, "the token, raw");
    // DNS rebinding: a page on another origin, or a name that resolves here.
    let origin = format!("{bearer}Origin: http://evil.example\r\n");
    let (status, ..) = raw_http(&url, &post(authority, &origin, INITIALIZE)).await;
    assert_eq!(status, 403, "a foreign Origin");
    let rebound = post("evil.example", &bearer, INITIALIZE);
    let (status, ..) = raw_http(&url, &rebound).await;
    assert_eq!(status, 403, "a foreign Host");

    home.ok(&["mcp", "token", "revoke", &id]);
    // The bridge trusts a checked token for MCP_TOKEN_CHECK_TTL, no longer.
    tokio::time::sleep(capsid_core::limits::MCP_TOKEN_CHECK_TTL).await;
    let (status, ..) = raw_http(&url, &post(authority, &bearer, INITIALIZE)).await;
    assert_eq!(status, 401, "a revoked token");

    let created = recorded(&home, "mcp.token.create");
    assert_eq!(created.len(), 1);
    assert_eq!(recorded(&home, "mcp.token.revoke").len(), 1);
    let log = home.ok(&["audit", "tail", "-n", "200", "--json"]);
    assert!(
        !log.contains(token.rsplit('_').next().unwrap()),
        "the token is never recorded"
    );
    let calls = recorded(&home, "tool.call");
    assert!(calls.iter().any(|d| d["door"] == "mcp-http"), "{calls:?}");
    server.kill().await.unwrap();
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_bad_input_gets_the_protocols_error_and_the_server_keeps_serving() {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    home.install("hello");
    let token = home.ok(&["mcp", "token", "create", "--as", "mcp"]);
    let token = token.trim().to_owned();
    let (mut server, url) = http_server(&home, &[]).await;
    let authority = url.trim_start_matches("http://").split('/').next().unwrap();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let pid = server.id().unwrap();
    let at_start = fds(pid);

    // Dev trust lets a local `mcp` session call everything; it never reaches a token.
    let session = http_session(&url, &token).await;
    assert!(session.list_all_tools().await.unwrap().is_empty());
    session.cancel().await.unwrap();
    home.ok(&["cap", "grant", "tool://hello/*", "exec", "--user", "mcp"]);

    let (status, ..) = raw_http(&url, &post(authority, &bearer, "{not json")).await;
    assert!((400..500).contains(&status), "malformed JSON: {status}");
    let batch = format!("[{INITIALIZE}]");
    let (status, ..) = raw_http(&url, &post(authority, &bearer, &batch)).await;
    assert!((400..500).contains(&status), "a batch: {status}");
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"x":"{}"}}}}"#,
        "x".repeat(capsid_core::limits::MCP_MAX_REQUEST_BYTES)
    );
    let (status, ..) = raw_http(&url, &post(authority, &bearer, &huge)).await;
    assert_eq!(status, 413, "over the body limit");
    let elsewhere =
        format!("GET /other HTTP/1.1\r\nHost: {authority}\r\n{bearer}Connection: close\r\n\r\n");
    assert_eq!(raw_http(&url, &elsewhere).await.0, 404);

    // A session, then a method nobody serves: the protocol's error, the session goes on.
    let (status, head, _) = raw_http(&url, &post(authority, &bearer, INITIALIZE)).await;
    assert_eq!(status, 200);
    let session_id = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("mcp-session-id:")
                .map(|v| v.trim().to_owned())
        })
        .expect("a session id");
    let in_session = format!("{bearer}Mcp-Session-Id: {session_id}\r\n");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, ..) = raw_http(&url, &post(authority, &in_session, initialized)).await;
    assert_eq!(status, 202);
    let unknown = r#"{"jsonrpc":"2.0","id":7,"method":"no/such/method"}"#;
    let (status, _, body) = raw_http(&url, &post(authority, &in_session, unknown)).await;
    assert_eq!(status, 200);
    assert!(body.contains("-32601"), "method not found: {body}");

    // A client that sends a call with a large answer and never reads it.
    let big = json!({"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"hello.echo","arguments":{"x":"y".repeat(512 * 1024)}}}).to_string();
    let mut stuck = tokio::net::TcpStream::connect(authority).await.unwrap();
    stuck
        .write_all(post(authority, &in_session, &big).as_bytes())
        .await
        .unwrap();

    // Many sessions at once, each served.
    let mut sessions = Vec::new();
    for _ in 0..32 {
        let url = url.clone();
        let token = token.clone();
        sessions.push(tokio::spawn(async move {
            let session = http_session(&url, &token).await;
            let tools = session.list_all_tools().await.unwrap();
            session.cancel().await.unwrap();
            tools.len()
        }));
    }
    for session in sessions {
        assert_eq!(session.await.unwrap(), 3);
    }
    let session = http_session(&url, &token).await;
    let unknown = session
        .call_tool(CallToolRequestParams::new("hello.nosuch"))
        .await
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("unknown tool"), "{unknown}");
    session.cancel().await.unwrap();
    drop(stuck);

    // 200 sessions at once, each initialised; once they are gone the server holds no more
    // descriptors than at the start, but for the daemon connections it keeps idle.
    let mut opened = Vec::new();
    for _ in 0..200 {
        let (url, token) = (url.clone(), token.clone());
        opened.push(tokio::spawn(async move {
            let session = http_session(&url, &token).await;
            session.cancel().await.unwrap();
        }));
    }
    for session in opened {
        session.await.unwrap();
    }
    let bound = at_start + capsid_core::limits::MCP_IDLE_DAEMON_CONNECTIONS;
    common::until("the server's descriptors are back", || fds(pid) <= bound);
    server.kill().await.unwrap();
    home.ok(&["stop"]);
}

#[test]
fn http_refuses_an_address_that_is_not_loopback_unless_told() {
    let home = Home::new();
    home.ok(&["start"]);
    let out = home.run(&["mcp", "serve", "--http", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--public"),
        "{err}"
    );
    home.ok(&["stop"]);
}
