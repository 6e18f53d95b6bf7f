//! The table's persistent pipelines and supervised entries: stages and links in status, each
//! stage's output, restarts with backoff and a cap, a refused restart, a stop during a
//! backoff, cursors across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use capsid_core::{CapsuleId, Principal};
use capsid_process::{
    Earlier, EndPolicy, EventKind, Owner, PersistentOptions, PipelineSpec, ProcessTable,
    RestartPolicy, SpawnSpec, StartGate, Status, Stream, TableError, TableEvent, UnitSpec,
};
use tokio::sync::mpsc;

fn owner() -> Owner {
    Owner {
        principal: Principal::System,
        capsule: CapsuleId::new("runner").unwrap(),
    }
}

fn sh(ws: &Path, script: &str) -> SpawnSpec {
    SpawnSpec::new("sh", ws).args(["-c", script])
}

fn pipeline(stages: Vec<SpawnSpec>, end: EndPolicy) -> UnitSpec {
    UnitSpec::Pipeline(PipelineSpec {
        stages,
        pids: None,
        end,
        grace: Duration::from_secs(1),
        taps: vec![Some(4096)],
    })
}

/// Restarts after 50 ms, then 100 ms, at most `max` in a row.
fn on_failure(max: u32) -> PersistentOptions {
    PersistentOptions {
        restart: Some(RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
            max_restarts: max,
            ..RestartPolicy::default()
        }),
        ..PersistentOptions::default()
    }
}

/// Sweeps until `done` holds of the status (at most a minute).
async fn sweep_until(
    table: &Arc<ProcessTable>,
    id: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    for _ in 0..6_000 {
        table.sweep().await;
        let status = table.status(&owner(), id).unwrap();
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached; last: {:?}", table.status(&owner(), id));
}

fn drain(events: &mut mpsc::UnboundedReceiver<TableEvent>) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push(e.kind);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_pipeline_shows_its_stages_and_links() {
    let ws = tempfile::tempdir().unwrap();
    let table = Arc::new(ProcessTable::new(None));
    let spec = pipeline(
        vec![
            sh(ws.path(), "printf 'b\\na\\nc\\n'; echo first-err >&2"),
            SpawnSpec::new("sort", ws.path()),
            sh(ws.path(), "tr a-z A-Z; echo last-err >&2"),
        ],
        EndPolicy::LastStage,
    );
    let id = table
        .start(owner(), spec, PersistentOptions::default(), None)
        .await
        .unwrap();
    let status = sweep_until(&table, &id, |s| s.exit.is_some()).await;
    assert_eq!(status.exit.unwrap().code, Some(0));
    assert_eq!(status.stages.len(), 3);
    assert!(
        status
            .stages
            .iter()
            .all(|s| s.exit.is_some_and(|e| e.success()))
    );
    assert_eq!(
        status.pid, status.stages[0].pid,
        "its pid is its first stage's"
    );
    assert_eq!(status.links.len(), 2);
    assert_eq!(status.links[0].bytes, 6, "b a c and their newlines");
    assert_eq!(status.links[1].bytes, 6);
    let out = table
        .read_since(&owner(), &id, Stream::Stdout, None, 1 << 20)
        .unwrap();
    assert_eq!(out.bytes, b"A\nB\nC\n", "its stdout is its last stage's");
    let err = table
        .read_since(&owner(), &id, Stream::Stderr, None, 1 << 20)
        .unwrap();
    assert_eq!(err.bytes, b"last-err\n", "its stderr is its last stage's");
    let first = table
        .read_stage_since(&owner(), &id, 0, Stream::Stderr, None, 1 << 20)
        .unwrap();
    assert_eq!(first.bytes, b"first-err\n");
    assert_eq!(first.next.generation, status.generation);
    assert_eq!(
        table.read_tap(&owner(), &id, 0, 1 << 20).unwrap(),
        b"b\na\nc\n"
    );
    assert!(matches!(
        table.read_stage_since(&owner(), &id, 3, Stream::Stderr, None, 16),
        Err(TableError::Invalid(_))
    ));
    assert!(matches!(
        table.read_tap(&owner(), &id, 1, 16),
        Err(TableError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_entry_is_restarted_with_backoff_then_given_up_on() {
    let ws = tempfile::tempdir().unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let table = Arc::new(ProcessTable::new(Some(tx)));
    let spec = UnitSpec::Process(sh(ws.path(), "echo run; exit 3"));
    let id = table
        .start(owner(), spec, on_failure(2), None)
        .await
        .unwrap();
    let first = table.status(&owner(), &id).unwrap().generation;
    let status = sweep_until(&table, &id, |s| s.restart.gave_up.is_some()).await;
    assert_eq!(status.restart.restarts, 2);
    assert!(status.restart.retry_in.is_none());
    let reason = status.restart.gave_up.unwrap();
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(status.generation > first, "each run has its own generation");
    let kinds = drain(&mut events);
    let restarted = kinds
        .iter()
        .filter(|k| matches!(k, EventKind::Restarted { .. }))
        .count();
    assert_eq!(restarted, 2, "{kinds:?}");
    assert!(
        matches!(kinds.last(), Some(EventKind::GaveUp { .. })),
        "{kinds:?}"
    );
    assert!(
        !kinds.iter().any(|k| matches!(k, EventKind::Exited(_))),
        "exits of an unwatched entry are not reported: {kinds:?}"
    );
    // Over for good: it can be released, and no restart follows.
    table.sweep().await;
    assert_eq!(table.status(&owner(), &id).unwrap().restart.restarts, 2);
    assert_eq!(table.release(&owner(), &id).unwrap().code, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_exit_is_not_restarted() {
    let ws = tempfile::tempdir().unwrap();
    let table = Arc::new(ProcessTable::new(None));
    let spec = UnitSpec::Process(sh(ws.path(), "exit 0"));
    let id = table
        .start(owner(), spec, on_failure(5), None)
        .await
        .unwrap();
    let status = sweep_until(&table, &id, |s| s.exit.is_some()).await;
    for _ in 0..20 {
        table.sweep().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = table.status(&owner(), &id).unwrap();
    assert_eq!(after.restart.restarts, 0);
    assert_eq!(after.generation, status.generation);
    assert!(after.restart.gave_up.is_none());
    table.release(&owner(), &id).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pipeline_restarts_whole_and_old_cursors_read_the_new_run() {
    let ws = tempfile::tempdir().unwrap();
    let table = Arc::new(ProcessTable::new(None));
    let spec = pipeline(
        vec![
            sh(ws.path(), "echo data; sleep 30"),
            sh(ws.path(), "read line; echo got-$line; exit 4"),
        ],
        EndPolicy::AnyFailure,
    );
    let id = table
        .start(owner(), spec, on_failure(1), None)
        .await
        .unwrap();
    let first = table.status(&owner(), &id).unwrap();
    let before = sweep_until(&table, &id, |s| s.exit.is_some()).await;
    assert_eq!(
        before.exit.unwrap().code,
        Some(4),
        "pipefail: the failed stage's code"
    );
    let old = table
        .read_since(&owner(), &id, Stream::Stdout, None, 1 << 20)
        .unwrap();
    assert_eq!(old.bytes, b"got-data\n");
    let after = sweep_until(&table, &id, |s| s.restart.restarts == 1).await;
    assert_ne!(after.generation, first.generation);
    for (old, new) in first.stages.iter().zip(&after.stages) {
        assert_ne!(old.pid, new.pid, "every stage is started again");
    }
    // The cursor of the first run reads the second from its start.
    let mut seen = Vec::new();
    let mut cursor = Some(old.next);
    for _ in 0..1_000 {
        let chunk = table
            .read_since(&owner(), &id, Stream::Stdout, cursor, 1 << 20)
            .unwrap();
        seen.extend_from_slice(&chunk.bytes);
        assert_eq!(chunk.next.generation, after.generation);
        cursor = Some(chunk.next);
        if seen.ends_with(b"\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, b"got-data\n");
    let gave_up = sweep_until(&table, &id, |s| s.restart.gave_up.is_some()).await;
    assert_eq!(gave_up.restart.restarts, 1);
    assert!(
        gave_up.stages.iter().all(|s| s.exit.is_some()),
        "no stage left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restart_gives_up_and_starts_nothing() {
    let ws = tempfile::tempdir().unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let table = Arc::new(ProcessTable::new(Some(tx)));
    let asked = Arc::new(AtomicU32::new(0));
    let counter = asked.clone();
    let gate: StartGate = Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err("the grant was revoked".to_owned()) })
    });
    let marker = ws.path().join("runs");
    let script = format!("echo x >> {}; exit 1", marker.display());
    let spec = UnitSpec::Process(sh(ws.path(), &script));
    let id = table
        .start(owner(), spec, on_failure(5), Some(gate))
        .await
        .unwrap();
    let status = sweep_until(&table, &id, |s| s.restart.gave_up.is_some()).await;
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(status.restart.restarts, 0);
    let reason = status.restart.gave_up.unwrap();
    assert!(reason.contains("the grant was revoked"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "x\n",
        "it ran once"
    );
    let kinds = drain(&mut events);
    assert!(
        matches!(kinds.as_slice(), [EventKind::GaveUp { .. }]),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_backoff_ends_the_restarts() {
    let ws = tempfile::tempdir().unwrap();
    let table = Arc::new(ProcessTable::new(None));
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let gate: StartGate = Arc::new(move || {
        flag.store(true, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    });
    let mut options = on_failure(5);
    if let Some(policy) = &mut options.restart {
        policy.initial_backoff = Duration::from_secs(30);
        policy.max_backoff = Duration::from_secs(30);
    }
    let spec = UnitSpec::Process(sh(ws.path(), "exit 1"));
    let id = table
        .start(owner(), spec, options, Some(gate))
        .await
        .unwrap();
    let waiting = sweep_until(&table, &id, |s| s.restart.retry_in.is_some()).await;
    assert!(waiting.restart.retry_in.unwrap() > Duration::from_secs(20));
    assert_eq!(waiting.restart.failures, 1);
    assert!(
        matches!(table.release(&owner(), &id), Err(TableError::StillRunning)),
        "one waiting to restart is not over"
    );
    table
        .stop(&owner(), &id, Duration::from_millis(100))
        .await
        .unwrap();
    table.sweep().await;
    assert!(
        !started.load(Ordering::SeqCst),
        "never asked to start again"
    );
    assert!(matches!(
        table.status(&owner(), &id),
        Err(TableError::NoSuchProcess)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_reached_while_waiting_to_restart_ends_it() {
    let ws = tempfile::tempdir().unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let table = Arc::new(ProcessTable::new(Some(tx)));
    let mut options = on_failure(5);
    options.lifetime = Some(Duration::from_millis(300));
    if let Some(policy) = &mut options.restart {
        policy.initial_backoff = Duration::from_secs(30);
        policy.max_backoff = Duration::from_secs(30);
    }
    let spec = UnitSpec::Process(sh(ws.path(), "exit 1"));
    let id = table.start(owner(), spec, options, None).await.unwrap();
    table.watch(&owner(), &id, true).unwrap();
    sweep_until(&table, &id, |s| s.restart.retry_in.is_some()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = sweep_until(&table, &id, |s| s.restart.retry_in.is_none()).await;
    assert_eq!(status.restart.restarts, 0);
    assert_eq!(
        table.release(&owner(), &id).unwrap().code,
        Some(1),
        "over for good"
    );
    let kinds = drain(&mut events);
    assert!(kinds.contains(&EventKind::Expired), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_comes_back_under_its_id_and_reports_its_end() {
    let ws = tempfile::tempdir().unwrap();
    let spec = UnitSpec::Process(sh(ws.path(), "echo up; exec sleep 30"));
    let options = PersistentOptions {
        survive: true,
        ..PersistentOptions::default()
    };
    let before = Arc::new(ProcessTable::new(None));
    let id = before
        .start(owner(), spec.clone(), options.clone(), None)
        .await
        .unwrap();
    let old = before.status(&owner(), &id).unwrap().generation;
    let cursor = before
        .read_since(&owner(), &id, Stream::Stdout, None, 1 << 20)
        .unwrap()
        .next;
    // The runtime restarts: a new table, the old one's processes gone with it.
    drop(before);
    let (tx, mut events) = mpsc::unbounded_channel();
    let after = Arc::new(ProcessTable::new(Some(tx)));
    let hash = ProcessTable::id_hash(&id).unwrap();
    let earlier = Earlier {
        generation: old,
        age: Duration::from_secs(1),
    };
    let generation = after
        .restore(hash, owner(), spec.clone(), options.clone(), None, earlier)
        .await
        .unwrap();
    assert!(generation > old, "a new generation says it restarted");
    let status = after.status(&owner(), &id).unwrap();
    assert_eq!(status.generation, generation);
    assert!(status.exit.is_none());
    // The cursor of the run before reads the new one from its start.
    let mut seen = Vec::new();
    for _ in 0..500 {
        let chunk = after
            .read_since(&owner(), &id, Stream::Stdout, Some(cursor), 1 << 20)
            .unwrap();
        seen = chunk.bytes;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, b"up\n");
    assert!(
        matches!(
            after
                .restore(hash, owner(), spec, options, None, earlier)
                .await,
            Err(TableError::AlreadyRunning)
        ),
        "one id runs once"
    );
    after
        .stop(&owner(), &id, Duration::from_millis(100))
        .await
        .unwrap();
    let ended: Vec<TableEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert!(
        matches!(ended.as_slice(), [e] if e.kind == EventKind::Ended && e.id_hash == hash && e.survives),
        "{ended:?}"
    );
}
