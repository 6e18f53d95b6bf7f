//! Capsules calling other capsules' tools through `capsid:host/tools` (the `relay` sample):
//! granted calls run as the callee, denied ones are recorded and tell nothing, cycles and
//! chains that are too deep are refused, a callee ends by its caller's deadline without
//! being failed for it, and an MCP server's tool is called the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsid_audit::{Decision, Record};
use capsid_capsule::{CapsuleState, Trust};
use capsid_core::limits::MAX_TOOL_CALL_DEPTH;
use capsid_integration_tests::{AuditRow, Runtime, capsule_copy_with, id};
use serde_json::{Value, json};

const FIXTURE: &str = env!("CARGO_BIN_EXE_mcp-fixture");

/// A copy of `relay` named `name`, asking for exactly `tools`, with `limits` as its
/// `[limits]` table's body.
fn relay_copy(root: &Path, name: &str, tools: &str, limits: &str) -> PathBuf {
    capsule_copy_with("relay", &root.join(name), |m| {
        let m = m
            .replacen("name = \"relay\"", &format!("name = \"{name}\""), 1)
            .replace("tools = [\"hello/*\"]", &format!("tools = {tools}"));
        format!("{m}\n[limits]\n{limits}\n")
    })
}

/// What `relay.relay` answers for calling `tool` of `capsule` with `input`.
async fn relay(rt: &Runtime, via: &str, capsule: &str, tool: &str, input: Value) -> Value {
    rt.call(
        via,
        "relay",
        json!({ "capsule": capsule, "tool": tool, "input": input }),
    )
    .await
}

/// The audit log once everything queued so far is in it: a call's `tool.result` is queued,
/// in the log ahead of whatever is appended durably after it.
async fn settled(rt: &Runtime) -> Vec<AuditRow> {
    let marker = Record::new(
        rt.principal,
        "test.marker",
        "test://settled",
        Decision::Info,
    )
    .unwrap();
    rt.audit.append(rt.chain, marker).await.unwrap();
    rt.audit_entries()
}

fn records<'a>(audit: &'a [AuditRow], action: &str, resource: &str) -> Vec<&'a AuditRow> {
    audit
        .iter()
        .filter(|e| e.action == action && e.resource == resource)
        .collect()
}

fn details(row: &AuditRow) -> Value {
    serde_json::from_str(&row.details).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_call_runs_as_the_callee_and_is_recorded_before_and_after() {
    let rt = Runtime::new().await;
    rt.load("hello").await;
    rt.load("counter").await;
    rt.load("relay").await;

    let out = relay(&rt, "relay", "hello", "whoami", json!({})).await;
    assert_eq!(
        out,
        json!({ "ok": { "principal": "system", "capsule": "hello" } }),
        "the callee runs as itself, not as its caller"
    );
    let out = relay(&rt, "relay", "hello", "greet", json!({ "name": "Ada" })).await;
    assert_eq!(out, json!({ "ok": { "greeting": "Hello, Ada!" } }));

    // It lists what it may call: hello's tools, not counter's, not its own.
    let listed = rt.call("relay", "list", json!({})).await;
    let listed: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["capsule"].as_str().unwrap().to_owned(),
                t["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let hello = |t: &str| ("hello".to_owned(), t.to_owned());
    assert_eq!(listed, [hello("greet"), hello("whoami"), hello("echo")]);

    let audit = settled(&rt).await;
    let calls = records(&audit, "tool.call", "tool://hello/greet");
    assert_eq!(calls.len(), 1, "{audit:#?}");
    assert_eq!(
        (calls[0].capsule.as_str(), calls[0].decision.as_str()),
        ("relay", "allow")
    );
    let input = json!({ "name": "Ada" }).to_string();
    let call = details(calls[0]);
    assert_eq!(call["door"], "capsule");
    assert_eq!(call["chain"], json!(["relay"]));
    assert_eq!(
        call["input_blake3"],
        blake3::hash(input.as_bytes()).to_hex().to_string()
    );
    assert!(
        call["grant"].is_string(),
        "the grant that allowed it: {call}"
    );
    let results = records(&audit, "tool.result", "tool://hello/greet");
    assert_eq!(results.len(), 1, "{audit:#?}");
    let result = details(results[0]);
    assert_eq!(result["outcome"], "ok");
    assert_eq!(
        result["bytes"],
        json!({ "greeting": "Hello, Ada!" }).to_string().len()
    );
    let at = |row: &AuditRow| audit.iter().position(|e| e == row).unwrap();
    assert!(at(calls[0]) < at(results[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_not_granted_is_denied_recorded_and_tells_nothing_of_what_exists() {
    let rt = Runtime::new().await;
    rt.load("hello").await;
    rt.load("counter").await;
    rt.load("relay").await;

    // counter exists, nosuch does not: the same answer for both.
    let denied = json!({ "error": "denied", "message": "" });
    assert_eq!(
        relay(&rt, "relay", "counter", "count-to", json!({ "to": 1 })).await,
        denied
    );
    assert_eq!(
        relay(&rt, "relay", "nosuch", "tool", json!({})).await,
        denied
    );
    // Granted (hello/*), but hello has no such tool.
    assert_eq!(
        relay(&rt, "relay", "hello", "nosuch", json!({})).await["error"],
        "not-found"
    );
    // Not names at all: refused before anything is checked or recorded.
    for (capsule, tool) in [("Hello World", "greet"), ("hello", "gr/eet"), ("hello", "")] {
        assert_eq!(
            relay(&rt, "relay", capsule, tool, json!({})).await["error"],
            "invalid",
            "{capsule:?} {tool:?}"
        );
    }

    let audit = settled(&rt).await;
    for resource in ["tool://counter/count-to", "tool://nosuch/tool"] {
        let calls = records(&audit, "tool.call", resource);
        assert_eq!(calls.len(), 1, "{resource}: {audit:#?}");
        assert_eq!(
            (calls[0].capsule.as_str(), calls[0].decision.as_str()),
            ("relay", "deny")
        );
        assert!(records(&audit, "tool.result", resource).is_empty());
    }
    let missing = records(&audit, "tool.result", "tool://hello/nosuch");
    assert_eq!(details(missing[0])["outcome"], "unknown-tool");
    assert!(
        !audit.iter().any(|e| e.resource.contains("gr/eet")
            || e.resource.contains("Hello World")
            || e.resource == "tool://hello/"),
        "{audit:#?}"
    );
    assert_eq!(
        rt.registry.info(&id("counter")).unwrap().state,
        CapsuleState::Ready
    );
}

/// The input that makes `chain[0]` relay through the rest of `chain` to `last`'s `tool`.
fn through(chain: &[String], last: (&str, &str)) -> (String, Value) {
    let mut input = json!({});
    let mut target = last;
    for via in chain[1..].iter().rev() {
        input = json!({ "capsule": target.0, "tool": target.1, "input": input });
        target = (via.as_str(), "relay");
    }
    (
        chain[0].clone(),
        json!({ "capsule": target.0, "tool": target.1, "input": input }),
    )
}

/// What `answer` (nested `{"ok": ...}` once per relay after the first) finally says.
fn innermost(mut answer: Value, relays: usize) -> Value {
    for _ in 1..relays {
        answer = answer["ok"].take();
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_is_refused_and_so_is_a_chain_deeper_than_the_limit() {
    let rt = Runtime::new().await;
    let root = rt.home.path().join("relays");
    let names: Vec<String> = (1..=MAX_TOOL_CALL_DEPTH).map(|i| format!("r{i}")).collect();
    for name in &names {
        let dir = relay_copy(&root, name, r#"["*/*"]"#, "");
        rt.registry.load(&dir, Trust::Dev).await.unwrap();
    }
    rt.load("hello").await;

    // r1 -> r2 -> r1: refused where it would close the loop.
    let (first, input) = through(&names[..2], ("r1", "relay"));
    let out = rt.call(&first, "relay", input).await;
    assert_eq!(
        innermost(out, 2),
        json!({ "error": "cycle", "message": "" })
    );
    // Refused after the check (only a capsule that may call r1 learns of the cycle), and
    // recorded as such.
    let audit = settled(&rt).await;
    let calls = records(&audit, "tool.call", "tool://r1/relay");
    assert_eq!(calls.len(), 1, "{audit:#?}");
    assert_eq!(
        (calls[0].capsule.as_str(), calls[0].decision.as_str()),
        ("r2", "allow")
    );
    assert_eq!(details(calls[0])["chain"], json!(["r1", "r2"]));
    let results = records(&audit, "tool.result", "tool://r1/relay");
    assert_eq!(results.len(), 1, "{audit:#?}");
    assert_eq!(details(results[0])["outcome"], "cycle");

    // Calling itself is a cycle too.
    let out = relay(&rt, "r1", "r1", "list", json!({})).await;
    assert_eq!(out["error"], "cycle");

    // r1 -> ... -> r7 -> hello: hello is capsule 8 of the chain, the deepest allowed.
    let deepest = MAX_TOOL_CALL_DEPTH - 1;
    let (first, input) = through(&names[..deepest], ("hello", "greet"));
    let out = rt.call(&first, "relay", input).await;
    assert_eq!(
        innermost(out, deepest),
        json!({ "ok": { "greeting": "Hello, world!" } })
    );
    // r1 -> ... -> r8 -> hello: one too deep, refused by r8.
    let (first, input) = through(&names, ("hello", "greet"));
    let out = rt.call(&first, "relay", input).await;
    assert_eq!(
        innermost(out, MAX_TOOL_CALL_DEPTH),
        json!({ "error": "too-deep", "message": "" })
    );
    let audit = settled(&rt).await;
    let chain = |row: &&AuditRow| details(row)["chain"].as_array().map_or(0, Vec::len);
    let greets = records(&audit, "tool.call", "tool://hello/greet");
    assert_eq!(
        greets.iter().map(chain).collect::<Vec<_>>(),
        [deepest, MAX_TOOL_CALL_DEPTH],
        "{greets:#?}"
    );
    assert_eq!(greets[1].capsule, format!("r{MAX_TOOL_CALL_DEPTH}"));
    let outcomes: Vec<Value> = records(&audit, "tool.result", "tool://hello/greet")
        .into_iter()
        .map(|r| details(r)["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [json!("ok"), json!("too-deep")]);
}

/// A runtime with `spin` (its own deadline a minute off, `spin_limits` added to its
/// `[limits]`) and `hasty`, a relay allowed spin's tools whose deadline is one second.
async fn hasty_and_spin(spin_limits: &str) -> Runtime {
    let rt = Runtime::new().await;
    let root = rt.home.path().join("copies");
    let spin = capsule_copy_with("spin", &root, |m| {
        m.replace(
            "call_timeout_ms = 200",
            &format!("call_timeout_ms = 60000\n{spin_limits}"),
        )
    });
    rt.registry.load(&spin, Trust::Dev).await.unwrap();
    let dir = relay_copy(&root, "hasty", r#"["spin/*"]"#, "call_timeout_ms = 1000");
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    rt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_ends_before_its_callers_deadline_and_is_not_failed_for_it() {
    let rt = hasty_and_spin("").await;

    let started = Instant::now();
    let out = relay(&rt, "hasty", "spin", "spin", json!({})).await;
    let took = started.elapsed();
    // spin was cut before the relay's deadline, which still had time to answer.
    assert_eq!(out, json!({ "error": "timeout", "message": "" }));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for name in ["spin", "hasty"] {
        assert_eq!(
            rt.registry.info(&id(name)).unwrap().state,
            CapsuleState::Ready,
            "{name}"
        );
    }
    let audit = settled(&rt).await;
    let results = records(&audit, "tool.result", "tool://spin/spin");
    assert_eq!(results.len(), 1, "{audit:#?}");
    assert_eq!(details(results[0])["outcome"], "timeout");
    assert!(
        !audit.iter().any(|e| e.action == "capsule.failed"),
        "{audit:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_busy_callee_ends_before_the_callers_deadline() {
    // One instance of spin, held by a client's call for as long as the test needs.
    let rt = hasty_and_spin("max_instances = 1").await;
    let holder = capsid_capsule::CallControl::new();
    let held = {
        let registry = &rt.registry;
        let holder = holder.clone();
        async move {
            registry
                .call_tool_with(&id("spin"), "spin", "{}", &holder)
                .await
        }
    };
    let waiting = async {
        // Let the holder take the one instance first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let out = relay(&rt, "hasty", "spin", "spin", json!({})).await;
        let took = started.elapsed();
        holder.cancel();
        (out, took)
    };
    let (held, (out, took)) = tokio::join!(held, waiting);
    assert!(held.is_err(), "the holder was cancelled: {held:?}");
    // The wait for spin's instance ended within the relay's time, not spin's minute.
    assert_eq!(out, json!({ "error": "timeout", "message": "" }));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for name in ["spin", "hasty"] {
        assert_eq!(
            rt.registry.info(&id(name)).unwrap().state,
            CapsuleState::Ready,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_gets_none_of_its_callers_grants() {
    let rt = Runtime::new().await;
    let root = rt.home.path().join("copies");
    // notes asks for nothing; the relay asks for notes' folder, and notes' tools.
    let notes = capsule_copy_with("notes", &root, |m| {
        m.replace("fs_read = [\"workspace://notes/**\"]\n", "")
            .replace("fs_write = [\"workspace://notes/**\"]\n", "")
    });
    rt.registry.load(&notes, Trust::Dev).await.unwrap();
    let dir = capsule_copy_with("relay", &root.join("lender"), |m| {
        m.replace(
            "tools = [\"hello/*\"]",
            "tools = [\"notes/*\"]\nfs_read = [\"workspace://notes/**\"]\nfs_write = [\"workspace://notes/**\"]",
        )
    });
    rt.registry.load(&dir, Trust::Dev).await.unwrap();

    let out = relay(
        &rt,
        "relay",
        "notes",
        "add",
        json!({ "name": "a", "text": "borrowed?" }),
    )
    .await;
    assert_eq!(out["error"], "failed", "{out}");
    assert!(out["message"].as_str().unwrap().contains("denied"), "{out}");
    let audit = settled(&rt).await;
    assert!(
        audit.iter().any(|e| e.capsule == "notes"
            && e.decision == "deny"
            && e.resource.starts_with("fs://workspace/notes")),
        "notes' own check, denied: {audit:#?}"
    );
    assert!(
        !audit
            .iter()
            .any(|e| e.decision == "allow" && e.resource.starts_with("fs://")),
        "{audit:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_calls_an_mcp_servers_tool() {
    let rt = Runtime::new().await;
    let dir = rt.home.path().join("capsules").join("fixture");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"fixture\"\nversion = \"1.0.0\"\n\n[mcp]\ncommand = [\"{FIXTURE}\", \"good\"]\n"
        ),
    )
    .unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let root = rt.home.path().join("copies");
    let relay_dir = relay_copy(&root, "caller", r#"["fixture/echo", "fixture/fail"]"#, "");
    rt.registry.load(&relay_dir, Trust::Dev).await.unwrap();

    // The first call waits for the server to be up, within its deadline.
    let out = relay(&rt, "caller", "fixture", "echo", json!({ "text": "hi" })).await;
    assert_eq!(out, json!({ "ok": "hi" }));
    let out = relay(&rt, "caller", "fixture", "fail", json!({})).await;
    assert_eq!(out["error"], "failed", "{out}");
    // Granted only echo and fail.
    let out = relay(&rt, "caller", "fixture", "add", json!({ "a": 1, "b": 2 })).await;
    assert_eq!(out["error"], "denied");

    let audit = settled(&rt).await;
    let results = records(&audit, "tool.result", "tool://fixture/echo");
    assert_eq!(results.len(), 1, "{audit:#?}");
    assert_eq!(results[0].capsule, "caller");
    assert_eq!(details(results[0])["outcome"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_be_recorded_is_refused_before_the_callee_runs() {
    let rt = Runtime::new().await;
    rt.load("hello").await;
    rt.load("relay").await;
    assert_eq!(
        relay(
            &rt,
            "relay",
            "hello",
            "greet",
            json!({ "name": "recorded" })
        )
        .await,
        json!({ "ok": { "greeting": "Hello, recorded!" } })
    );
    // The audit log stops taking entries: no call may run unrecorded.
    rt.audit.shutdown().await.unwrap();
    let out = relay(
        &rt,
        "relay",
        "hello",
        "greet",
        json!({ "name": "unrecorded" }),
    )
    .await;
    assert_eq!(out["error"], "internal", "{out}");
    let lines: Vec<String> = rt
        .registry
        .log(&id("hello"))
        .unwrap()
        .since(0)
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert!(lines.iter().any(|l| l == "greeting recorded"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("unrecorded")),
        "hello never ran: {lines:?}"
    );
}
