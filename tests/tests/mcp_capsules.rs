//! `[mcp]` capsules: an MCP server (`src/bin/mcp-fixture.rs`, built with rmcp) run as a
//! capsule: supervised and sandboxed, its tools pinned and reviewed, its calls bounded, and
//! hostile servers contained (rewritten descriptions, floods, huge answers, garbage, silence,
//! exits mid-call, snooping).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use capsid_capsule::{CallControl, CapsuleError, CapsuleState, ToolChange, Trust};
use capsid_integration_tests::{Runtime, id};
use capsid_process::Health;

const FIXTURE: &str = env!("CARGO_BIN_EXE_mcp-fixture");

/// Writes an `[mcp]` capsule running the fixture in `mode`; `extra` goes into `[mcp]`, and
/// `tail` after it (other tables).
fn mcp_capsule(root: &Path, name: &str, mode: &str, extra: &str, tail: &str) -> PathBuf {
    let dir = root.join("capsules").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\n\n[mcp]\ncommand = [\"{FIXTURE}\", \"{mode}\"]\nrestart_initial_ms = 20\nrestart_max_ms = 100\n{extra}\n{tail}"
        ),
    )
    .unwrap();
    capsid_integration_tests::sign(&dir);
    dir
}

/// Waits until `name`'s server is connected with its tools listed.
async fn connected(rt: &Runtime, name: &str) {
    for _ in 0..1_000 {
        if rt.registry.mcp(&id(name)).is_some_and(|m| m.connected()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log: Vec<String> = rt
        .registry
        .log(&id(name))
        .map(|l| l.since(0).into_iter().map(|l| l.message).collect())
        .unwrap_or_default();
    panic!("{name} never connected; its log: {log:#?}");
}

/// Waits (up to 10 s) until `name`'s server is given up on; its health then, whatever it is.
async fn given_up(rt: &Runtime, name: &str) -> Health {
    let mut health = Health::Starting;
    for _ in 0..1_000 {
        health = rt.registry.info(&id(name)).unwrap().native.unwrap().health;
        if matches!(health, Health::Failed { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    health
}

async fn call(rt: &Runtime, name: &str, tool: &str, input: &str) -> Result<String, CapsuleError> {
    rt.registry.call_tool(&id(name), tool, input).await
}

fn actions(rt: &Runtime) -> Vec<String> {
    rt.audit_entries().into_iter().map(|e| e.action).collect()
}

/// Whatever a server did, the audit log still verifies whole.
fn log_verifies(rt: &Runtime) {
    let report = capsid_audit::verify_database(rt.audit.path()).unwrap();
    let problems = report.problems();
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_server_is_pinned_listed_and_called() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(rt.home.path(), "fixture", "good", "", "");
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "fixture").await;
    let info = rt.registry.info(&id("fixture")).unwrap();
    assert_eq!(info.state, CapsuleState::Ready);
    assert!(info.tools.contains(&"echo".to_owned()), "{info:?}");
    assert!(
        info.mcp
            .as_ref()
            .is_some_and(|m| m.connected && m.pending_review.is_empty())
    );

    assert_eq!(
        call(&rt, "fixture", "echo", r#"{"text":"hi"}"#)
            .await
            .unwrap(),
        "hi"
    );
    let sum: serde_json::Value = serde_json::from_str(
        &call(&rt, "fixture", "add", r#"{"a":2,"b":3}"#)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sum["sum"], 5.0);
    let failed = call(&rt, "fixture", "fail", "{}").await.unwrap_err();
    assert!(
        matches!(&failed, CapsuleError::ToolFailed { message, .. } if message.contains("as asked")),
        "{failed}"
    );
    assert!(matches!(
        call(&rt, "fixture", "nope", "{}").await,
        Err(CapsuleError::UnknownTool { .. })
    ));
    assert!(matches!(
        call(&rt, "fixture", "echo", "[1]").await,
        Err(CapsuleError::ToolFailed { .. })
    ));

    // Dev trust pinned every tool it was shown, each on the record; the start was checked
    // and recorded as a spawn.
    let acts = actions(&rt);
    let pinned = acts.iter().filter(|a| *a == "mcp.tool.pinned").count();
    assert_eq!(pinned, info.tools.len(), "{acts:?}");
    assert!(acts.iter().any(|a| a == "process.spawn"), "{acts:?}");
    // The server's stderr is the capsule's log.
    let log = rt.registry.log(&id("fixture")).unwrap().since(0);
    assert!(
        log.iter()
            .any(|l| l.message.contains("mcp-fixture starting")),
        "{log:?}"
    );

    rt.registry.unload(&id("fixture")).await.unwrap();
    assert!(rt.registry.info(&id("fixture")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_progress_reaches_the_caller() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(rt.home.path(), "fixture", "good", "", "");
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "fixture").await;
    let mut control = CallControl::new();
    let mut progress = control.watch_progress();
    let answer = rt
        .registry
        .call_tool_with(&id("fixture"), "progress", r#"{"steps":5}"#, &control)
        .await
        .unwrap();
    assert_eq!(answer, "5 steps");
    let last = progress
        .borrow_and_update()
        .clone()
        .expect("no progress passed on");
    assert_eq!((last.done, last.total), (5, Some(5)));
    assert_eq!(last.message.as_deref(), Some("step 5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_their_deadline_or_over_the_size_cap_are_refused_and_the_server_serves_on() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(
        rt.home.path(),
        "fixture",
        "good",
        "",
        "[limits]\ncall_timeout_ms = 700\n",
    );
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "fixture").await;
    assert!(matches!(
        call(&rt, "fixture", "silent", "{}").await,
        Err(CapsuleError::Timeout {
            timeout_ms: 700,
            ..
        })
    ));
    // The request was cancelled on the server, not left running there.
    let mut cancelled = String::new();
    for _ in 0..200 {
        cancelled = call(&rt, "fixture", "cancelled", "{}").await.unwrap();
        if cancelled == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cancelled, "1", "the server never heard of the cancellation");
    assert!(matches!(
        call(&rt, "fixture", "slow", r#"{"ms":5000}"#).await,
        Err(CapsuleError::Timeout { .. })
    ));
    // Over the result cap, under the message cap: read, then refused.
    let cap = capsid_core::limits::MAX_TOOL_OUTPUT_BYTES;
    let over = format!(r#"{{"bytes":{}}}"#, cap + 1);
    assert!(matches!(
        call(&rt, "fixture", "huge", &over).await,
        Err(CapsuleError::TooBig { len, .. }) if len == cap + 1
    ));
    // Over the message cap: dropped unread, so the call ends at its deadline.
    let way_over = format!(
        r#"{{"bytes":{}}}"#,
        capsid_core::limits::MCP_MAX_MESSAGE_BYTES + 1
    );
    assert!(matches!(
        call(&rt, "fixture", "huge", &way_over).await,
        Err(CapsuleError::Timeout { .. })
    ));
    assert_eq!(
        call(&rt, "fixture", "echo", r#"{"text":"still"}"#)
            .await
            .unwrap(),
        "still"
    );
    assert_eq!(
        rt.registry
            .info(&id("fixture"))
            .unwrap()
            .native
            .unwrap()
            .restarts,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_exits_mid_call_is_restarted_and_serves_again() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(rt.home.path(), "fixture", "good", "", "");
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "fixture").await;
    let err = call(&rt, "fixture", "exit", "{}").await.unwrap_err();
    assert!(matches!(err, CapsuleError::McpServer { .. }), "{err}");
    // The next call waits for the restarted server.
    assert_eq!(
        call(&rt, "fixture", "echo", r#"{"text":"back"}"#)
            .await
            .unwrap(),
        "back"
    );
    assert!(
        rt.registry
            .info(&id("fixture"))
            .unwrap()
            .native
            .unwrap()
            .restarts
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_a_restart_ends_when_the_capsule_is_unloaded() {
    let rt = Runtime::new().await;
    // After its first failure the server waits 30 s to restart.
    let dir = mcp_capsule(
        rt.home.path(),
        "fixture",
        "good",
        "restart_initial_ms = 30000\nrestart_max_ms = 30000\n",
        "[limits]\ncall_timeout_ms = 120000\n",
    );
    // `mcp_capsule` already wrote restart keys: this capsule's are the later, longer ones.
    let manifest = std::fs::read_to_string(dir.join("Capsule.toml")).unwrap();
    let manifest = manifest.replace("restart_initial_ms = 20\nrestart_max_ms = 100\n", "");
    std::fs::write(dir.join("Capsule.toml"), manifest).unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "fixture").await;
    assert!(call(&rt, "fixture", "exit", "{}").await.is_err());
    let registry = std::sync::Arc::new(rt);
    let waiting = {
        let rt = registry.clone();
        tokio::spawn(async move { call(&rt, "fixture", "echo", r#"{"text":"x"}"#).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the call should wait for the restart"
    );
    let started = std::time::Instant::now();
    registry.registry.unload(&id("fixture")).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call ended with the unload")
        .unwrap();
    assert!(
        matches!(ended, Err(CapsuleError::McpServer { .. })),
        "{ended:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_description_hides_its_tool_until_the_operator_accepts_it() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(rt.home.path(), "fixture", "rewrite", "", "");
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "fixture").await;
    let mcp = rt.registry.mcp(&id("fixture")).unwrap();
    // The server rewrites `echo` 300 ms after its first list.
    for _ in 0..500 {
        if !mcp.pending().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending = mcp.pending();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let echo = &pending[0];
    assert_eq!(
        (echo.tool.as_str(), echo.change),
        ("echo", ToolChange::Changed)
    );
    assert_eq!(echo.pinned.as_ref().unwrap()["description"], "Echo text.");
    assert!(
        echo.presented["description"]
            .as_str()
            .unwrap()
            .contains("id_rsa")
    );
    // Hidden: not listed, not callable; the new tool was pinned under dev trust.
    let tools: Vec<String> = rt
        .registry
        .tools(&id("fixture"))
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        !tools.contains(&"echo".to_owned()) && tools.contains(&"steal".to_owned()),
        "{tools:?}"
    );
    assert!(matches!(
        call(&rt, "fixture", "echo", r#"{"text":"x"}"#).await,
        Err(CapsuleError::ToolPendingReview { why: "changed", .. })
    ));
    assert_eq!(
        actions(&rt)
            .iter()
            .filter(|a| *a == "mcp.tool.changed")
            .count(),
        1
    );

    // A digest that is not pending accepts nothing.
    assert!(mcp.accept(&["00".repeat(32)]).await.is_err());
    assert_eq!(mcp.pending().len(), 1);
    assert_eq!(
        mcp.accept(std::slice::from_ref(&echo.digest))
            .await
            .unwrap(),
        ["echo"]
    );
    assert!(mcp.pending().is_empty());
    assert_eq!(
        call(&rt, "fixture", "echo", r#"{"text":"ok"}"#)
            .await
            .unwrap(),
        "ok"
    );
    let accepted = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.action == "mcp.tool.pinned" && e.details.contains("operator"))
        .count();
    assert_eq!(accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_a_restarted_server_changed_is_not_called() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(rt.home.path(), "fixture", "restart-rewrites", "", "");
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "fixture").await;
    assert_eq!(
        call(&rt, "fixture", "echo", r#"{"text":"first"}"#)
            .await
            .unwrap(),
        "first"
    );
    assert!(call(&rt, "fixture", "exit", "{}").await.is_err());
    // This call passes the check against the first start's list, waits for the second start,
    // whose list changed `echo`: it is refused, not run.
    let err = call(&rt, "fixture", "echo", r#"{"text":"second"}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CapsuleError::ToolPendingReview { why: "changed", .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dev_trust_every_new_tool_waits_for_review() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(rt.home.path(), "fixture", "good", "", "");
    let exec = capsid_capsule::exec_resource(FIXTURE);
    rt.caps
        .grant(
            rt.principal,
            Some(id("fixture")),
            &exec,
            capsid_capabilities::Permissions::EXEC,
            None,
            false,
        )
        .await
        .unwrap();
    rt.registry.load(&dir, Trust::Granted).await.unwrap();
    connected(&rt, "fixture").await;
    let mcp = rt.registry.mcp(&id("fixture")).unwrap();
    assert!(mcp.tools().is_empty());
    let pending = mcp.pending();
    assert!(
        pending
            .iter()
            .all(|p| p.change == ToolChange::New && p.pinned.is_none())
    );
    assert!(matches!(
        call(&rt, "fixture", "echo", "{}").await,
        Err(CapsuleError::ToolPendingReview { why: "new", .. })
    ));
    let digests: Vec<String> = pending.iter().map(|p| p.digest.clone()).collect();
    mcp.accept(&digests).await.unwrap();
    assert_eq!(
        call(&rt, "fixture", "echo", r#"{"text":"ok"}"#)
            .await
            .unwrap(),
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_notifications_and_garbage_on_stdout_cost_only_their_own_lines() {
    let rt = Runtime::new().await;
    for (name, mode) in [("flood", "flood"), ("garbage", "garbage")] {
        let dir = mcp_capsule(rt.home.path(), name, mode, "", "");
        rt.registry.load(&dir, Trust::Dev).await.unwrap();
        connected(&rt, name).await;
    }
    for i in 0..20 {
        for name in ["flood", "garbage"] {
            let text = format!("{name} {i}");
            let input = serde_json::json!({ "text": text }).to_string();
            assert_eq!(call(&rt, name, "echo", &input).await.unwrap(), text);
        }
    }
    for name in ["flood", "garbage"] {
        let info = rt.registry.info(&id(name)).unwrap();
        assert_eq!(info.native.unwrap().restarts, 0, "{name}");
        assert!(info.mcp.unwrap().pending_review.is_empty(), "{name}");
    }
    // The flood's log lines reached the capsule's log ring, bounded, under their level.
    let flood_log = rt.registry.log(&id("flood")).unwrap().since(0);
    assert!(
        flood_log
            .iter()
            .any(|l| l.message.starts_with("flood line")
                && l.level == capsid_capsule::LogLevel::Error),
        "no MCP log line kept"
    );
    assert!(flood_log.len() <= capsid_core::limits::CAPSULE_LOG_LINES);
    log_verifies(&rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_shakes_hands_is_restarted_then_failed() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(
        rt.home.path(),
        "mute",
        "mute",
        "startup_timeout_ms = 200\nmax_restarts = 1\n",
        "",
    );
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let health = given_up(&rt, "mute").await;
    assert!(matches!(health, Health::Failed { .. }), "{health:?}");
    assert!(matches!(
        rt.registry.info(&id("mute")).unwrap().state,
        CapsuleState::Failed(_)
    ));
    assert!(matches!(
        call(&rt, "mute", "echo", "{}").await,
        Err(CapsuleError::McpServer { .. })
    ));
    let log = rt.registry.log(&id("mute")).unwrap().since(0);
    assert!(
        log.iter().any(|l| l.message.contains("handshake")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_holds_an_mcp_server_and_its_env_stays_out_of_the_log() {
    let rt = Runtime::new().await;
    let secret_file = rt.home.path().join("outside-the-workspace");
    std::fs::write(&secret_file, "private").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = mcp_capsule(
        rt.home.path(),
        "snoop",
        "good",
        "",
        "[capabilities]\nprocess_sandbox = \"required\"\n[env.FIXTURE_TOKEN]\ndefault = \"tok-sekrit-4711\"\n",
    );
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "snoop").await;
    let input = serde_json::json!({ "read": secret_file, "port": port }).to_string();
    let seen: serde_json::Value =
        serde_json::from_str(&call(&rt, "snoop", "snoop", &input).await.unwrap()).unwrap();
    assert!(
        seen["file"].as_str().unwrap().starts_with("error"),
        "{seen}"
    );
    assert!(seen["ssh"].as_str().unwrap().starts_with("error"), "{seen}");
    assert!(seen["net"].as_str().unwrap().starts_with("error"), "{seen}");
    assert_eq!(seen["home"], capsid_core::limits::PROCESS_HOME);
    assert!(
        listener.accept().is_err(),
        "the sandboxed server reached the host's loopback"
    );
    // The declared variable reached the server (the fixture's snoop reports it), and its
    // value is nowhere in the audit log.
    assert_eq!(seen["token"], "tok-sekrit-4711");
    assert!(
        rt.audit_entries()
            .iter()
            .all(|e| !e.details.contains("tok-sekrit") && !e.resource.contains("tok-sekrit"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_uplink_granted_the_sandboxed_server_shares_the_hosts_network() {
    let rt = Runtime::new().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Dev trust grants what the manifest asks: `process://network/net`.
    let dir = mcp_capsule(
        rt.home.path(),
        "net",
        "good",
        "",
        "[capabilities]\nprocess_sandbox = \"required\"\nuplink = true\n",
    );
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "net").await;
    let input = serde_json::json!({ "read": "/nonexistent", "port": port }).to_string();
    let seen: serde_json::Value =
        serde_json::from_str(&call(&rt, "net", "snoop", &input).await.unwrap()).unwrap();
    assert_eq!(seen["net"], "connected", "{seen}");
    assert!(listener.accept().is_ok());
    // Still in the sandbox: only the network was added.
    assert!(seen["ssh"].as_str().unwrap().starts_with("error"), "{seen}");
    let network_checks = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.resource == "process://network/net" && e.decision == "allow")
        .count();
    assert_eq!(network_checks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_does_not_match_its_pin_never_starts() {
    let rt = Runtime::new().await;
    let dir = mcp_capsule(
        rt.home.path(),
        "pinned",
        "good",
        &format!("binary_blake3 = \"{}\"\n", "ab".repeat(32)),
        "",
    );
    let err = rt.registry.load(&dir, Trust::Dev).await.unwrap_err();
    assert!(matches!(err, CapsuleError::BinaryMismatch { .. }), "{err}");
    let denied = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.action == "process.spawn" && e.decision == "deny")
        .count();
    assert_eq!(denied, 1);

    // With the right pin it starts; a program changed behind its back is refused at the
    // next start (the restart after a crash), recorded, and the capsule fails.
    let program = rt.home.path().join("fixture-copy");
    std::fs::copy(FIXTURE, &program).unwrap();
    let right = blake3::hash(&std::fs::read(&program).unwrap())
        .to_hex()
        .to_string();
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"pinned\"\nversion = \"1.0.0\"\n\n[mcp]\ncommand = [\"{}\", \"good\"]\nbinary_blake3 = \"{right}\"\nrestart_initial_ms = 20\n",
            program.display()
        ),
    )
    .unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry.unload(&id("pinned")).await.unwrap();
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "pinned").await;
    // One byte more: the same program to the loader, another file to the pin.
    // (Renamed over it: a running program's file cannot be written.)
    let mut bytes = std::fs::read(&program).unwrap();
    bytes.push(0);
    let changed = rt.home.path().join("fixture-changed");
    std::fs::write(&changed, bytes).unwrap();
    std::fs::set_permissions(&changed, std::fs::metadata(&program).unwrap().permissions()).unwrap();
    std::fs::rename(&changed, &program).unwrap();
    assert!(call(&rt, "pinned", "exit", "{}").await.is_err());
    let health = given_up(&rt, "pinned").await;
    assert!(
        matches!(&health, Health::Failed { reason } if reason.contains("binary_blake3")),
        "{health:?}"
    );
    let denied = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.action == "process.spawn" && e.decision == "deny")
        .count();
    assert_eq!(denied, 2);
}

/// The Python MCP server in `tests/fixtures/mcp-python` (the official SDK, nothing of
/// capsid) needs the system Python with the `mcp` package, as `.ci/run` installs it.
fn system_python_with_mcp() -> &'static str {
    const PYTHON: &str = "/usr/bin/python3";
    let found = std::process::Command::new(PYTHON)
        .args(["-I", "-c", "import mcp.server.mcpserver"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{PYTHON} cannot import the `mcp` package: install it as .ci/run does \
         ({PYTHON} -m pip install --break-system-packages mcp==2.3.0)"
    );
    PYTHON
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_server_written_with_the_official_sdk_runs_unchanged() {
    let python = system_python_with_mcp();
    let rt = Runtime::new().await;
    // The server's file goes into the workspace: the only place of the host's beyond the
    // system directories that its sandbox shows it.
    let script = rt.workspace.join("words_server.py");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mcp-python/server.py"),
        &script,
    )
    .unwrap();
    let dir = rt.home.path().join("capsules").join("words");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"words\"\nversion = \"1.0.0\"\n\n[mcp]\ncommand = [\"{python}\", \"-I\", \"{}\"]\nstartup_timeout_ms = 30000\n\n[capabilities]\nprocess_sandbox = \"required\"\n\n[limits]\ncall_timeout_ms = 30000\n",
            script.display()
        ),
    )
    .unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    connected(&rt, "words").await;
    let tools: Vec<String> = rt
        .registry
        .tools(&id("words"))
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(tools, ["word_count", "shout"]);
    let counted: serde_json::Value = serde_json::from_str(
        &call(&rt, "words", "word_count", r#"{"text":"one two three"}"#)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(counted["result"], 3);
    let shouted = call(&rt, "words", "shout", r#"{"text":"quiet"}"#)
        .await
        .unwrap();
    assert!(shouted.contains("QUIET"), "{shouted}");
    // Missing arguments are the server's to refuse: an error answer, not a failure.
    assert!(matches!(
        call(&rt, "words", "shout", "{}").await,
        Err(CapsuleError::ToolFailed { .. })
    ));
    assert_eq!(
        rt.registry
            .info(&id("words"))
            .unwrap()
            .native
            .unwrap()
            .restarts,
        0
    );
}

/// Through the kernel, as the daemon and `capsid mcp serve` reach it: an MCP capsule's tools
/// are listed and called like any capsule's, checked for anyone but the operator, and
/// recorded before and after (the input's blake3; the outcome, duration and bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_kernel_mcp_tools_are_listed_checked_and_recorded() {
    use capsid_kernel::{Door, Kernel, KernelConfig, KernelError, ToolCaller};
    let home = capsid_integration_tests::PrivateHome::new();
    mcp_capsule(home.path(), "fixture", "good", "", "");
    let kernel = Kernel::builder()
        .home(home.path())
        .config(KernelConfig {
            dev: true,
            hot_reload: false,
            ..KernelConfig::default()
        })
        .build()
        .await
        .unwrap();
    for _ in 0..1_000 {
        if kernel
            .registry()
            .mcp(&id("fixture"))
            .is_some_and(|m| m.connected())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = kernel.tools_for(kernel.principal(), Door::Daemon).await;
    let echo = listed
        .iter()
        .find(|t| t.capsule == id("fixture") && t.tool == "echo")
        .expect("echo listed");
    assert_eq!(echo.description, "Echo text.");
    assert_eq!(echo.input_schema["properties"]["text"]["type"], "string");

    let out = kernel
        .call_tool(&id("fixture"), "echo", r#"{"text":"through"}"#)
        .await
        .unwrap();
    assert_eq!(out, "through");
    let entries = capsid_audit::tail(kernel.audit().path(), 10_000).unwrap();
    let call = entries
        .iter()
        .rev()
        .find(|e| e.action == "tool.call")
        .unwrap();
    let input_blake3 = blake3::hash(br#"{"text":"through"}"#).to_hex().to_string();
    assert!(call.details.contains(&input_blake3), "{}", call.details);
    let result = entries
        .iter()
        .rev()
        .find(|e| e.action == "tool.result")
        .unwrap();
    let details: serde_json::Value = serde_json::from_str(&result.details).unwrap();
    assert_eq!(
        (details["outcome"].as_str(), details["bytes"].as_u64()),
        (Some("ok"), Some(7))
    );

    // A user (over HTTP, where dev trust never applies) sees and calls only what it holds.
    let user = ToolCaller {
        principal: kernel.mcp_principal(),
        door: Door::McpHttp,
        client: Some("agent".into()),
    };
    assert!(kernel.tools_for(user.principal, user.door).await.is_empty());
    let control = CallControl::new();
    assert!(matches!(
        kernel
            .call_tool_as(&user, &id("fixture"), "echo", r#"{"text":"x"}"#, &control)
            .await,
        Err(KernelError::Capsule(CapsuleError::UnknownTool { .. }))
    ));
    kernel
        .grant(
            user.principal,
            None,
            "tool://fixture/echo",
            capsid_capabilities::Permissions::EXEC,
        )
        .await
        .unwrap();
    let out = kernel
        .call_tool_as(
            &user,
            &id("fixture"),
            "echo",
            r#"{"text":"granted"}"#,
            &control,
        )
        .await
        .unwrap();
    assert_eq!(out, "granted");
    let mine: Vec<String> = kernel
        .tools_for(user.principal, user.door)
        .await
        .into_iter()
        .map(|t| t.tool)
        .collect();
    assert_eq!(mine, ["echo"]);
    kernel.shutdown().await;
}
