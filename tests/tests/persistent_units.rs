//! Persistent pipelines and supervised persistent programs from a real capsule (`runner`'s
//! `pipe-persist` and `persist-*`): a pipeline's stages, links and streams through its id;
//! restarts with backoff, each checked and recorded, then giving up, recorded; a grant
//! revoked during the backoff means no restart, recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use capsid_capabilities::Permissions;
use capsid_integration_tests::Runtime;
use serde_json::{Value, json};

fn stage(program: &str, args: &[&str]) -> Value {
    json!({ "program": program, "args": args })
}

/// Asks `persist-status` until `done` holds (at most a minute).
async fn status_until(rt: &Runtime, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let status = rt
            .call("runner", "persist-status", json!({ "id": id }))
            .await;
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never reached");
}

/// Starts `script` under `sh` (it appends a line to `runs` first), restarted on failure;
/// its id.
async fn supervised(rt: &Runtime, script: &str, max: u32, initial_ms: u32) -> String {
    let out = rt
        .call(
            "runner",
            "persist-restart",
            json!({
                "program": "sh", "args": ["-c", format!("echo run >> runs; {script}")],
                "max_restarts": max, "initial_backoff_ms": initial_ms, "max_backoff_ms": 200.max(initial_ms),
            }),
        )
        .await;
    out["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_pipeline_is_reached_by_its_id() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt
        .call(
            "runner",
            "pipe-persist",
            json!({
                "stages": [
                    stage("sh", &["-c", "printf 'b\\na\\nc\\n'; echo first >&2"]),
                    stage("cat", &[]),
                    stage("sh", &["-c", "sort -r"]),
                ],
                "tap": 4096,
            }),
        )
        .await;
    assert_eq!(out["code"], json!(0), "{out}");
    assert_eq!(out["stdout"], json!("c\nb\na\n"), "{out}");
    assert_eq!(out["first_stderr"], json!("first\n"));
    assert_eq!(out["tap"], json!("b\na\nc\n"));
    assert_eq!(out["links"], json!([6, 6]));
    assert_eq!(out["stage_codes"], json!([0, 0, 0]));
    assert_eq!(out["pid_is_first_stage"], json!(true));
    assert!(
        out["missing_stage"]
            .as_str()
            .unwrap()
            .contains("no stage 99"),
        "{out}"
    );
    let audit = rt.audit_entries();
    let spawned = audit
        .iter()
        .filter(|e| e.action == "process.spawn" && e.decision == "allow")
        .count();
    assert_eq!(spawned, 3, "each stage checked and recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_program_is_restarted_then_given_up_on_and_all_is_recorded() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let id = supervised(&rt, "exit 3", 2, 100).await;
    let status = status_until(&rt, &id, |s| !s["gave_up"].is_null()).await;
    assert_eq!(status["restarts"], json!(2), "{status}");
    assert_eq!(status["code"], json!(3));
    assert!(status["retry_in_ms"].is_null());
    assert!(
        status["gave_up"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{status}"
    );
    let runs = std::fs::read_to_string(rt.workspace.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 3, "the first run and two restarts");
    // The give-up is recorded by the event delivery, a moment after the status shows it.
    let mut audit = rt.audit_entries();
    for _ in 0..100 {
        if audit.iter().any(|e| e.action == "process.gave-up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        audit = rt.audit_entries();
    }
    let count = |action: &str, decision: &str| {
        audit
            .iter()
            .filter(|e| e.action == action && e.decision == decision)
            .filter(|e| e.capsule == "runner")
            .count()
    };
    assert_eq!(count("process.restarted", "info"), 2);
    assert_eq!(count("process.gave-up", "info"), 1);
    assert_eq!(
        count("process.spawn", "allow"),
        3,
        "each start checked and recorded"
    );
    let restart_checks = audit
        .iter()
        .filter(|e| e.action == "process.spawn" && e.details.contains("\"restart\":true"))
        .count();
    assert_eq!(restart_checks, 2);
    let asked = |max: u32, initial: u32| json!({ "program": "sh", "args": ["-c", "exit 1"], "max_restarts": max, "initial_backoff_ms": initial });
    let out = rt.call("runner", "persist-restart", asked(101, 100)).await;
    assert!(
        out["error"].as_str().unwrap().contains("max-restarts"),
        "{out}"
    );
    let out = rt.call("runner", "persist-restart", asked(1, 10)).await;
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("initial-backoff-ms"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_during_the_backoff_means_no_restart() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let id = supervised(&rt, "exit 1", 5, 3000).await;
    let waiting = status_until(&rt, &id, |s| !s["retry_in_ms"].is_null()).await;
    assert_eq!(waiting["restarts"], json!(0), "{waiting}");
    for grant in rt.caps.list(&rt.principal).await.unwrap() {
        if grant.capability.permissions.contains(Permissions::EXEC)
            && grant.capability.pattern.as_str() == "process://exec/sh"
        {
            rt.caps.revoke(grant.capability.id).await.unwrap();
        }
    }
    let status = status_until(&rt, &id, |s| !s["gave_up"].is_null()).await;
    assert_eq!(status["restarts"], json!(0), "{status}");
    let reason = status["gave_up"].as_str().unwrap();
    assert!(reason.contains("restart refused"), "{reason}");
    assert!(reason.contains("process://exec/sh"), "{reason}");
    let runs = std::fs::read_to_string(rt.workspace.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "never started again");
    let audit = rt.audit_entries();
    assert!(audit.iter().any(|e| e.action == "process.spawn"
        && e.resource == "process://exec/sh"
        && e.decision == "deny"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_process_is_sampled_into_its_history() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let id = supervised(&rt, "exec sleep 30", 1, 100).await;
    let status = status_until(&rt, &id, |s| {
        s["history"].as_array().is_some_and(|h| h.len() >= 2)
    })
    .await;
    // `sleep`, and the sandbox's own processes where it runs in one.
    let tasks = status["latest_tasks"].as_u64().unwrap();
    assert!((1..=4).contains(&tasks), "{status}");
    let history = status["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .all(|s| s["rss"].as_u64().unwrap() > 0 && s["tasks"] == tasks),
        "{status}"
    );
    rt.call("runner", "repl-stop", json!({ "id": id })).await;
}
