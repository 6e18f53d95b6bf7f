//! `process.spawn-pipeline` from a real capsule (`runner`'s `pipe`): the bytes a shell
//! pipeline gives, stdin and a tap, a stage refused by its grant refusing the whole, an end
//! policy, the shared pids limit, and every stage's start and exit audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capsid_integration_tests::Runtime;
use serde_json::{Value, json};

/// Writes 2,000 numbered lines.
const LINES: &str = "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done";

fn stage(program: &str, args: &[&str]) -> Value {
    json!({ "program": program, "args": args })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stages_give_what_the_shell_gives_and_are_audited() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt
        .call(
            "runner",
            "pipe",
            json!({ "stages": [
                stage("sh", &["-c", LINES]),
                stage("cat", &[]),
                stage("sh", &["-c", "grep 7 | tail -n 5"]),
            ] }),
        )
        .await;
    // Two `sh` stages and one `cat`, each started and ended on the record (before the shell
    // run below adds its own).
    let audit = rt.audit_entries();
    for (program, stages) in [("sh", 2), ("cat", 1)] {
        let resource = format!("process://exec/{program}");
        let count = |action: &str| {
            audit
                .iter()
                .filter(|e| e.action == action && e.resource == resource)
                .filter(|e| action != "process.spawn" || e.decision == "allow")
                .count()
        };
        assert_eq!(count("process.spawn"), stages, "{program}");
        assert_eq!(count("process.exit"), stages, "{program}");
    }
    let shell = rt
        .call(
            "runner",
            "run",
            json!({ "program": "sh", "args": ["-c", format!("{{ {LINES}; }} | cat | grep 7 | tail -n 5")] }),
        )
        .await;
    assert_eq!(shell["code"], json!(0), "{shell}");
    assert_eq!(out["stdout"], shell["stdout"], "{out}");
    assert_eq!(
        out["exits"],
        json!([{ "code": 0, "signal": null }, { "code": 0, "signal": null }, { "code": 0, "signal": null }])
    );
    let written: usize = (0..2000).map(|i| format!("line {i}\n").len()).sum();
    assert_eq!(out["links"], json!([written, written]), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_reaches_the_first_stage_and_a_tap_keeps_the_first_link() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt
        .call(
            "runner",
            "pipe",
            json!({
                "stages": [stage("cat", &[]), stage("sh", &["-c", "wc -c"])],
                "stdin": "hello, pipeline",
                "tap": 4096,
            }),
        )
        .await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "15", "{out}");
    assert_eq!(out["tap"], json!("hello, pipeline"));
    assert_eq!(out["links"], json!([15]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_refused_by_its_grant_refuses_the_whole_pipeline() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt
        .call(
            "runner",
            "pipe",
            json!({ "stages": [stage("sh", &["-c", "echo ran > marker"]), stage("ls", &[])] }),
        )
        .await;
    assert_eq!(out["error"], json!("ProcessError::Denied"), "{out}");
    // Nothing started: the first stage, which was allowed, never ran.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!rt.workspace.join("marker").exists());
    assert!(
        rt.audit_entries()
            .iter()
            .any(|e| e.action == "process.spawn"
                && e.resource == "process://exec/ls"
                && e.decision == "deny")
    );
    let many: Vec<Value> = (0..17).map(|_| stage("cat", &[])).collect();
    let out = rt.call("runner", "pipe", json!({ "stages": many })).await;
    assert!(
        out["error"].as_str().unwrap().contains("1 to 16 stages"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stage_ends_an_any_failure_pipeline() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt
        .call(
            "runner",
            "pipe",
            json!({
                "stages": [
                    stage("sh", &["-c", "while :; do echo x; sleep 0.01; done"]),
                    stage("sh", &["-c", "read line; echo middle failed >&2; exit 3"]),
                    stage("sh", &["-c", "cat >/dev/null; sleep 30"]),
                ],
                "end": "any-failure",
            }),
        )
        .await;
    assert_eq!(out["exits"][1]["code"], json!(3), "{out}");
    assert_eq!(out["exits"][2]["signal"], json!(libc::SIGTERM), "{out}");
    assert_eq!(out["stderr"][1], json!("middle failed\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelines_pids_limit_covers_every_stage() {
    assert!(
        capsid_process::pids_limit_available(),
        "this test needs a writable cgroup pids controller (/sys/fs/cgroup/pids or cgroup v2)"
    );
    let rt = Runtime::new().await;
    rt.load("runner").await;
    // Sleepers started (a line each), once the last stage is in, until a fork fails, which
    // ends that stage and, with it, its sleepers; the last stage then sees the end of its
    // input.
    let script = "while [ ! -e ready ]; do sleep 0.01; done; \
                  for i in $(seq 40); do sleep 30 & echo $i; done; exit 0";
    let out = rt
        .call(
            "runner",
            "pipe",
            json!({
                "stages": [
                    stage("sleep", &["30"]),
                    stage("sh", &["-c", script]),
                    stage("sh", &["-c", "touch ready; exec cat"]),
                ],
                "pids": 16,
            }),
        )
        .await;
    assert_ne!(out["exits"][1]["code"], json!(0), "a fork failed: {out}");
    assert!(
        out["stderr"][1].as_str().unwrap().contains("Cannot fork"),
        "{out}"
    );
    // 16 tasks in all: the three stages (each with its sandbox's own processes, where there
    // is one) and the sleepers.
    let started = out["stdout"].as_str().unwrap().lines().count();
    assert!((1..16).contains(&started), "{out}");
    assert_eq!(
        out["exits"][0]["signal"],
        json!(libc::SIGTERM),
        "stopped at the end: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_pipeline_is_fed_watched_tapped_and_awaited() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt.call("runner", "pipe-converse", json!({})).await;
    assert_eq!(
        out,
        json!({
            "between": 6,
            "code": 0,
            "links": [12],
            "stdout": "12",
            "tap": "first second",
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_background_pipeline_kills_every_stage() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt.call("runner", "pipe-orphan", json!({})).await;
    assert_eq!(out, json!({ "running": true }));
    let sleeping = || {
        capsid_integration_tests::live_processes()
            .iter()
            .filter(|p| p.cmdline.ends_with(b"1000.2468\0"))
            .count()
    };
    for _ in 0..6_000 {
        if sleeping() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the first stage outlived its dropped pipeline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_of_a_background_pipeline_counts_towards_the_cap() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let out = rt.call("runner", "pipe-cap", json!({})).await;
    assert!(
        out["third"]
            .as_str()
            .is_some_and(|e| e.contains("Unavailable") && e.contains("each stage")),
        "{out}"
    );
    assert_eq!(out["after_drop"], json!(true), "{out}");
}
