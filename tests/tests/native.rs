//! Native capsules (`[native] command`): supervised, restarted with backoff up to a cap,
//! gated by the `process://exec/...` capability, stopped on unload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use capsid_capsule::{CapsuleError, CapsuleState, Trust};
use capsid_integration_tests::{Runtime, id};
use capsid_process::Health;

fn native_capsule(root: &Path, name: &str, command: &str, extra: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"1.0.0\"\n\n[native]\ncommand = {command}\n{extra}"
        ),
    )
    .unwrap();
    capsid_integration_tests::sign(&dir);
    dir
}

async fn health_until(rt: &Runtime, name: &str, done: impl Fn(&Health) -> bool) -> Health {
    for _ in 0..3_000 {
        let info = rt.registry.info(&id(name)).unwrap();
        let health = info.native.unwrap().health;
        if done(&health) {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never reached the expected health");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_native_capsule_is_restarted_then_marked_failed() {
    let rt = Runtime::new().await;
    let dir = native_capsule(
        rt.home.path(),
        "crashy",
        r#"["sh", "-c", "exit 3"]"#,
        "restart_initial_ms = 10\nrestart_max_ms = 40\nmax_restarts = 3\n",
    );
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    health_until(&rt, "crashy", |h| matches!(h, Health::Failed { .. })).await;
    let info = rt.registry.info(&id("crashy")).unwrap();
    assert!(
        matches!(info.state, CapsuleState::Failed(ref r) if r.contains("code 3")),
        "{info:?}"
    );
    assert_eq!(info.native.unwrap().restarts, 3);
    assert!(matches!(
        rt.registry.call_tool(&id("crashy"), "x", "{}").await,
        Err(CapsuleError::NotWasm(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_service_runs_until_unloaded() {
    let rt = Runtime::new().await;
    let dir = native_capsule(rt.home.path(), "server", r#"["sleep", "600"]"#, "");
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let Health::Running { pid } =
        health_until(&rt, "server", |h| matches!(h, Health::Running { .. })).await
    else {
        unreachable!()
    };
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    rt.registry.unload(&id("server")).await.unwrap();
    for _ in 0..6_000 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "unload stopped and reaped it"
    );
    assert!(rt.registry.info(&id("server")).is_none());
    let audit = rt.audit_entries();
    assert!(audit.iter().any(|e| e.action == "process.spawn"
        && e.resource == "process://exec/sleep"
        && e.decision == "allow"));
    assert!(
        audit
            .iter()
            .any(|e| e.action == "capsule.unload" && e.capsule == "server")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_grant_a_native_capsule_does_not_start() {
    let rt = Runtime::new().await;
    let dir = native_capsule(rt.home.path(), "sneaky", r#"["/bin/sleep", "600"]"#, "");
    let err = rt.registry.load(&dir, Trust::Granted).await.unwrap_err();
    assert!(
        matches!(err, CapsuleError::Denied { ref resource, .. } if resource == "process://exec-path/bin/sleep"),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("capsule sneaky:"), "{err}");
    assert!(
        rt.audit_entries()
            .iter()
            .any(|e| e.action == "process.spawn" && e.capsule == "sneaky" && e.decision == "deny")
    );
    assert!(matches!(
        rt.registry.info(&id("sneaky")).unwrap().state,
        CapsuleState::Failed(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_restart_is_checked_and_a_revoked_grant_stops_them() {
    let rt = Runtime::new().await;
    let dir = native_capsule(
        rt.home.path(),
        "flaky",
        r#"["sh", "-c", "sleep 0.2; exit 1"]"#,
        "restart_initial_ms = 200\nrestart_max_ms = 200\nmax_restarts = 1000\n",
    );
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let spawns = |rt: &Runtime, decision: &str| {
        rt.audit_entries()
            .iter()
            .filter(|e| {
                e.action == "process.spawn" && e.capsule == "flaky" && e.decision == decision
            })
            .count()
    };
    // Wait for one restart's start to be checked and recorded again (the restart count
    // moves before the restarted start is checked, so the record is what is waited for).
    for _ in 0..3_000 {
        if spawns(&rt, "allow") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spawns(&rt, "allow") >= 2, "the restart was checked too");
    for grant in rt.caps.list(&rt.principal).await.unwrap() {
        if grant.capability.pattern.as_str() == "process://exec/sh" && !grant.revoked {
            rt.caps.revoke(grant.capability.id).await.unwrap();
        }
    }
    let health = health_until(&rt, "flaky", |h| matches!(h, Health::Failed { .. })).await;
    let Health::Failed { reason } = health else {
        unreachable!()
    };
    assert!(reason.contains("process://exec/sh"), "{reason}");
    assert_eq!(spawns(&rt, "deny"), 1, "the refused restart is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_quota_with_kill_stops_the_program() {
    let rt = Runtime::new().await;
    let dir = native_capsule(
        rt.home.path(),
        "spawner",
        r#"["sh", "-c", "sleep 600 & sleep 600 & sleep 600 & wait"]"#,
        "restart_initial_ms = 10\nrestart_max_ms = 10\nmax_restarts = 1\nquota_action = \"kill\"\nmax_processes = 2\n",
    );
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let health = health_until(&rt, "spawner", |h| matches!(h, Health::Failed { .. })).await;
    let Health::Failed { reason } = health else {
        unreachable!()
    };
    assert!(reason.contains("signal 9"), "{reason}");
    let info = rt.registry.info(&id("spawner")).unwrap();
    assert_eq!(info.native.unwrap().restarts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_quota_action_is_refused_with_its_key() {
    let rt = Runtime::new().await;
    let dir = native_capsule(
        rt.home.path(),
        "odd",
        r#"["sleep", "1"]"#,
        "quota_action = \"shrug\"\n",
    );
    let err = rt.registry.load(&dir, Trust::Dev).await.unwrap_err();
    assert!(err.to_string().contains("native.quota_action"), "{err}");
}
