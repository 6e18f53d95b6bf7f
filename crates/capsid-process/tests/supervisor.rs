//! Supervised programs: restart with backoff up to a cap, clean exits, stop, quotas, stats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use capsid_process::{Health, Quota, QuotaAction, RestartPolicy, SpawnSpec, Supervisor};

fn fast() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
        max_restarts: 3,
        healthy_after: Duration::from_mins(1),
        sample_every: Duration::from_millis(50),
        clean_exit_is_final: true,
    }
}

async fn until(sup: &Supervisor, what: &str, done: impl Fn(&Health) -> bool) -> Health {
    for _ in 0..1_500 {
        let h = sup.health();
        if done(&h) {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never reached {what}: {:?}", sup.health());
}

fn sh(ws: &std::path::Path, script: &str) -> SpawnSpec {
    SpawnSpec::new("sh", ws).args(["-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_program_is_restarted_with_backoff_then_given_up() {
    let ws = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let sup = Supervisor::start(
        "crashy",
        sh(ws.path(), "exit 7"),
        fast(),
        Quota::default(),
        None,
    );
    let health = until(&sup, "failed", |h| matches!(h, Health::Failed { .. })).await;
    assert!(
        matches!(&health, Health::Failed { reason } if reason.contains("exited with code 7")),
        "{health:?}"
    );
    assert_eq!(sup.restarts(), 3);
    // Waits of 20, 40 and 80 ms (the last capped at max_backoff) came before giving up.
    assert!(start.elapsed() >= Duration::from_millis(140));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_exit_is_final() {
    let ws = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(
        "once",
        sh(ws.path(), "echo done"),
        fast(),
        Quota::default(),
        None,
    );
    until(&sup, "finished", |h| *h == Health::Finished).await;
    assert_eq!(sup.restarts(), 0);
    let child = sup.current().unwrap();
    let (_, out, _) = child.wait_with_output().await;
    assert_eq!(out, b"done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_exit_is_a_failure_when_the_policy_says_so() {
    let ws = tempfile::tempdir().unwrap();
    let policy = RestartPolicy {
        clean_exit_is_final: false,
        ..fast()
    };
    let sup = Supervisor::start(
        "server",
        sh(ws.path(), "exit 0"),
        policy,
        Quota::default(),
        None,
    );
    let health = until(&sup, "failed", |h| matches!(h, Health::Failed { .. })).await;
    assert!(
        matches!(&health, Health::Failed { reason } if reason.contains("code 0")),
        "{health:?}"
    );
    assert_eq!(sup.restarts(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_program_and_ends_supervision() {
    let ws = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(
        "server",
        sh(ws.path(), "sleep 600"),
        fast(),
        Quota::default(),
        None,
    );
    until(&sup, "running", |h| matches!(h, Health::Running { .. })).await;
    let child = sup.current().unwrap();
    sup.stop().await;
    assert_eq!(sup.health(), Health::Stopped);
    assert!(
        child.try_exit().is_some(),
        "the child was killed and reaped"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sup.health(), Health::Stopped, "no restart after a stop");
    assert_eq!(sup.restarts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_show_cpu_and_memory() {
    let ws = tempfile::tempdir().unwrap();
    let sup = Supervisor::start(
        "busy",
        sh(ws.path(), "while :; do :; done"),
        fast(),
        Quota::default(),
        None,
    );
    for _ in 0..200 {
        if sup.history().len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let history = sup.history();
    assert!(history.len() >= 4, "{history:?}");
    let last = history.last().unwrap();
    assert!(last.rss_bytes > 0 && last.processes == 1, "{last:?}");
    assert!(
        history.iter().any(|s| s.cpu_percent > 10.0),
        "a busy loop shows CPU use: {history:?}"
    );
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_is_logged_or_enforced() {
    let ws = tempfile::tempdir().unwrap();
    let script = "sleep 0.2 & sleep 0.2 & sleep 600";
    let logged = Supervisor::start(
        "logged",
        sh(ws.path(), script),
        fast(),
        Quota {
            processes: Some(1),
            action: QuotaAction::Log,
            ..Quota::default()
        },
        None,
    );
    let killed: Arc<Supervisor> = Supervisor::start(
        "killed",
        sh(ws.path(), script),
        fast(),
        Quota {
            processes: Some(1),
            action: QuotaAction::Kill,
            ..Quota::default()
        },
        None,
    );
    until(&killed, "a restart after a quota kill", |_| {
        killed.restarts() >= 1
    })
    .await;
    assert!(killed.quota_breaches() >= 1);
    for _ in 0..100 {
        if logged.quota_breaches() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged.quota_breaches() >= 1);
    let breach = logged.last_breach().unwrap();
    assert!(
        breach.ends_with("processes over 1"),
        "the breach is named: {breach}"
    );
    assert!(
        matches!(logged.health(), Health::Running { .. }),
        "logging does not kill"
    );
    assert_eq!(logged.restarts(), 0);
    logged.stop().await;
    killed.stop().await;
}
