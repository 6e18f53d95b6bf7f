//! The `process` interface from real capsules: granted programs run, everything else is
//! refused, a fork bomb stays inside its pids limit, a flood stays inside its output limit,
//! and every start and exit is audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use capsid_integration_tests::{Runtime, id, live_processes};
use serde_json::json;

/// Live processes whose command line ends with `sh -c <script>`.
fn running(script: &str) -> usize {
    let wanted = format!("sh\0-c\0{script}\0");
    live_processes()
        .iter()
        .filter(|p| p.cmdline.ends_with(wanted.as_bytes()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_runs_what_it_is_granted_with_stdin_and_cwd() {
    let rt = Runtime::new().await;
    std::fs::create_dir_all(rt.workspace.join("sub")).unwrap();
    rt.load("runner").await;
    let out = rt
        .call(
            "runner",
            "run",
            json!({ "program": "echo", "args": ["hello", "world"] }),
        )
        .await;
    assert_eq!(out["code"], json!(0), "{out}");
    assert_eq!(out["stdout"], json!("hello world\n"));
    let out = rt
        .call(
            "runner",
            "run",
            json!({ "program": "cat", "stdin": "from stdin" }),
        )
        .await;
    assert_eq!(out["stdout"], json!("from stdin"), "{out}");
    let out = rt
        .call(
            "runner",
            "run",
            json!({ "program": "sh", "args": ["-c", "pwd; exit 4"], "cwd": "sub" }),
        )
        .await;
    assert_eq!(out["code"], json!(4), "{out}");
    assert!(
        out["stdout"].as_str().unwrap().trim_end().ends_with("/sub"),
        "{out}"
    );
    let audit = rt.audit_entries();
    assert!(audit.iter().any(|e| e.action == "process.spawn"
        && e.resource == "process://exec/echo"
        && e.decision == "allow"));
    assert!(audit.iter().any(|e| e.action == "process.exit"
        && e.resource == "process://exec/sh"
        && e.details.contains("\"code\":4")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sneak_starts_only_what_it_was_granted() {
    let rt = Runtime::new().await;
    rt.load("sneak").await;
    let out = rt.call("sneak", "sneak", json!({})).await;
    assert_eq!(
        out,
        json!({
            "granted": "ran:hi",
            "ungranted": "denied",
            "absolute": "denied",
            "relative": "denied",
            "dotdot": "denied",
            "ld-preload": "invalid",
            "cwd-up": "invalid",
            "cwd-root": "invalid",
            "cwd-etc": "invalid",
        })
    );
    assert!(rt.audit_entries().iter().any(|e| e.capsule == "sneak"
        && e.action == "process.spawn"
        && e.resource == "process://exec/cat"
        && e.decision == "deny"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_from_a_capsule_stays_inside_its_pids_limit() {
    let rt = Runtime::new().await;
    rt.load("forkbomb").await;
    let script = "sleep 1 & t=$!; b() { b & b & wait; }; b & wait $t; kill -9 0";
    let registry = &rt.registry;
    let capsule = id("forkbomb");
    let bomb = registry.call_tool(&capsule, "bomb", "{}");
    let mut bomb = std::pin::pin!(bomb);
    // Sample the bomb's size for as long as the call runs.
    let mut largest = 0;
    let answer = loop {
        tokio::select! {
            answer = &mut bomb => break answer,
            () = tokio::time::sleep(Duration::from_millis(25)) => {
                largest = largest.max(running(script));
            }
        }
    };
    let answer: serde_json::Value = serde_json::from_str(&answer.unwrap()).unwrap();
    assert!(answer.get("error").is_none(), "{answer}");
    assert!(largest > 2, "the bomb forked");
    assert!(
        largest <= 16,
        "{largest} bomb processes despite a limit of 16"
    );
    for _ in 0..6_000 {
        if running(script) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} bomb processes outlived the call", running(script));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_keeps_only_its_output_limit() {
    let rt = Runtime::new().await;
    rt.load("flood").await;
    let out = rt.call("flood", "flood", json!({})).await;
    assert_eq!(
        out,
        json!({ "code": 0, "kept": 65536, "dropped": 64 * 1024 * 1024 - 65536 })
    );
}

fn alive(pid: u64) -> bool {
    live_processes().iter().any(|p| u64::from(p.pid) == pid)
}

async fn gone(pid: u64) -> bool {
    for _ in 0..6_000 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_poll_waits_for_a_background_childs_output_and_then_its_exit() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    // The child prints, then blocks on stdin: only the output pollable may be ready, and
    // the exit pollable stays unready until the capsule writes the line the child waits for.
    assert_eq!(
        rt.call("runner", "poll", json!({})).await,
        json!({
            "first": [0],
            "before": "ready\n",
            "exited_early": false,
            "second": [0],
            "code": 3,
            "after": "got x\n",
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_children_talk_live_across_calls_and_die_with_their_handle() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    assert_eq!(
        rt.call("runner", "converse", json!({})).await,
        json!({ "code": 0, "stdout": "first\nsecond\n" })
    );

    let orphan = rt.call("runner", "orphan", json!({})).await["pid"]
        .as_u64()
        .unwrap();
    assert!(
        gone(orphan).await,
        "dropping the handle killed and reaped {orphan}"
    );

    let kept = rt.call("runner", "start", json!({})).await["pid"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(alive(kept), "a kept handle keeps its child across calls");
    assert_eq!(
        rt.call("runner", "stop-all", json!({})).await,
        json!({ "signals": [15] })
    );
    assert!(
        rt.audit_entries()
            .iter()
            .any(|e| e.action == "process.signal" && e.resource == "process://exec/sleep")
    );

    let kept = rt.call("runner", "start", json!({})).await["pid"]
        .as_u64()
        .unwrap();
    rt.registry.unload(&id("runner")).await.unwrap();
    assert!(
        gone(kept).await,
        "unloading the capsule killed its background child"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_repl_lives_across_calls_and_reports_its_exit() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let id = rt.call("runner", "repl-start", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 32);
    let out = rt
        .call("runner", "repl-eval", json!({ "id": id, "line": "x=41" }))
        .await;
    assert_eq!(out, json!({ "output": "" }));
    let out = rt
        .call(
            "runner",
            "repl-eval",
            json!({ "id": id, "line": "echo $((x+1))" }),
        )
        .await;
    assert_eq!(
        out,
        json!({ "output": "42\n" }),
        "state survived between calls"
    );
    assert_eq!(
        rt.call("runner", "repl-status", json!({ "id": id })).await,
        json!({ "label": "repl", "running": true })
    );
    let audit = rt.audit_entries();
    assert!(
        audit
            .iter()
            .all(|e| !e.details.contains(&id) && !e.resource.contains(&id)),
        "the id is never in the audit log"
    );

    // Another capsule gets `no-such-process` for this id, as for random and malformed ones.
    rt.load("guess").await;
    let guessed = rt.call("guess", "guess", json!({ "foreign": id })).await;
    assert_eq!(
        guessed,
        json!({ "answers": ["ProcessError::NoSuchProcess"], "listed": 0 })
    );
    assert_eq!(
        rt.call("runner", "repl-status", json!({ "id": id })).await,
        json!({ "label": "repl", "running": true }),
        "the guesses touched nothing"
    );

    let stopped = rt.call("runner", "repl-stop", json!({ "id": id })).await;
    assert_eq!(stopped, json!({ "signal": 15, "code": null }));
    for _ in 0..6_000 {
        let event = rt.call("runner", "last-event", json!({})).await;
        if !event.is_null() {
            assert_eq!(event["topic"], json!("process.exited"), "{event}");
            assert_eq!(event["payload"]["label"], json!("repl"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no process.exited event reached the watching capsule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_a_capsule_stops_its_persistent_processes() {
    let rt = Runtime::new().await;
    rt.load("runner").await;
    let repl = rt.call("runner", "repl-start", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    rt.call("runner", "repl-eval", json!({ "id": repl, "line": "true" }))
        .await;
    assert!(running_repls(&rt.workspace) >= 1, "the repl runs");
    rt.registry.unload(&id("runner")).await.unwrap();
    for _ in 0..6_000 {
        if running_repls(&rt.workspace) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a persistent shell outlived its capsule");
}

/// Live `sh` processes with no arguments working in `workspace` (the runner's repl shells).
fn running_repls(workspace: &std::path::Path) -> usize {
    let workspace = workspace.canonicalize().unwrap();
    live_processes()
        .iter()
        .filter(|p| {
            (p.cmdline == b"/usr/bin/sh\0" || p.cmdline == b"sh\0")
                && p.cwd.as_deref() == Some(workspace.as_path())
        })
        .count()
}

/// The network interfaces a program started by `runner` sees (one per line).
async fn interfaces_seen(rt: &Runtime) -> Vec<String> {
    let out = rt
        .call(
            "runner",
            "run",
            json!({
                "program": "sh",
                "args": ["-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"],
            }),
        )
        .await;
    assert_eq!(out["code"], 0, "{out}");
    out["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_reach_the_network_only_when_uplink_is_granted() {
    assert!(
        capsid_process::bwrap_path().is_some(),
        "bwrap is not installed: install bubblewrap (.ci/run does)"
    );
    let host_interfaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count()
        - 2;
    assert!(
        host_interfaces > 1,
        "the host has a network beyond loopback"
    );

    // Without `uplink`: loopback only, and nothing is asked.
    let rt = Runtime::new().await;
    rt.load("runner").await;
    assert_eq!(interfaces_seen(&rt).await, ["lo"]);

    // Asked for and granted (dev trust): the host's interfaces, and each spawn records it.
    let rt = Runtime::new().await;
    let dir = capsid_integration_tests::copy_capsule("runner", rt.home.path());
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("[capabilities]\n", "[capabilities]\nuplink = true\n"),
    )
    .unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry
        .load(&dir, capsid_capsule::Trust::Dev)
        .await
        .unwrap();
    assert_eq!(interfaces_seen(&rt).await.len(), host_interfaces);
    assert!(
        rt.audit_entries()
            .iter()
            .any(|e| e.action == "process.network"
                && e.resource == "process://network/runner"
                && e.decision == "allow")
    );

    // Asked for but revoked: loopback again, and the refusal is recorded.
    for grant in rt.caps.list(&rt.principal).await.unwrap() {
        if grant.capability.pattern.as_str() == "process://network/runner" {
            rt.caps.revoke(grant.capability.id).await.unwrap();
        }
    }
    assert_eq!(interfaces_seen(&rt).await, ["lo"]);
    assert!(
        rt.audit_entries()
            .iter()
            .any(|e| e.action == "process.network" && e.decision == "deny")
    );
}

/// Runs the sandbox probe under `bwrap` as `identity` (or, with `sandbox` false, plainly);
/// its lines.
async fn probe(sandbox: bool, identity: capsid_process::SandboxIdentity) -> Vec<String> {
    let ws = tempfile::tempdir().unwrap();
    let mut spec = capsid_process::SpawnSpec::new(env!("CARGO_BIN_EXE_sandbox-probe"), ws.path());
    if sandbox {
        spec.sandbox = capsid_process::Sandbox::Required { network: false };
    }
    spec.sandbox_identity = identity;
    let child = capsid_process::Child::spawn(&spec).await.unwrap();
    let (info, out, err) = child.wait_with_output().await;
    assert!(info.unwrap().success(), "{}", String::from_utf8_lossy(&err));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_child_has_no_privilege_and_the_filter_refuses_the_escape_calls() {
    let lines = probe(true, capsid_process::SandboxIdentity::default()).await;
    let field = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
            .to_owned()
    };
    assert_eq!(field("Uid"), "65534 65534 65534 65534", "nobody, not root");
    assert_eq!(field("Gid"), "65534 65534 65534 65534");
    for caps in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "a seccomp filter is loaded");
    let calls = |lines: &[String]| -> Vec<(String, i32, bool)> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("call "))
            .map(|l| {
                let mut words = l.split(' ');
                let name = words.next().unwrap().to_owned();
                let errno = words.next().unwrap().parse().unwrap();
                (name, errno, words.next() == Some("privileged"))
            })
            .collect()
    };
    let inside = calls(&lines);
    assert_eq!(inside.len(), 16, "{lines:?}");
    // The same calls outside the sandbox: none is refused with EPERM there (or this host
    // filters them itself, and the test cannot tell ours apart: it says so).
    let outside = calls(&probe(false, capsid_process::SandboxIdentity::default()).await);
    for ((name, errno, privileged), (_, plain, _)) in inside.iter().zip(&outside) {
        if *privileged {
            assert_ne!(*errno, 0, "{name} succeeded in the sandbox");
        } else {
            assert_ne!(
                *plain,
                libc::EPERM,
                "{name} is refused outside the sandbox too"
            );
            assert_eq!(*errno, libc::EPERM, "{name} was not refused by the filter");
        }
    }
    // The identity is the operator's to choose.
    let lines = probe(
        true,
        capsid_process::SandboxIdentity {
            uid: 4242,
            gid: 4343,
        },
    )
    .await;
    assert!(
        lines.contains(&"Uid: 4242 4242 4242 4242".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"Gid: 4343 4343 4343 4343".to_owned()),
        "{lines:?}"
    );
}
