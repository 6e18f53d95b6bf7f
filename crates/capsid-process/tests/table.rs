//! The persistent-process table: ids, ownership, cursors, deadlines, caps, events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use capsid_core::{CapsuleId, Principal, PrincipalId};
use capsid_process::{
    Cursor, EventKind, Owner, PersistentOptions, ProcessTable, SpawnSpec, Stream, TableError,
};

fn owner(capsule: &str) -> Owner {
    Owner {
        principal: Principal::System,
        capsule: CapsuleId::new(capsule).unwrap(),
    }
}

fn sh(ws: &std::path::Path, script: &str) -> SpawnSpec {
    SpawnSpec::new("sh", ws).args(["-c", script])
}

async fn read_until(table: &ProcessTable, who: &Owner, id: &str, want: &str) -> String {
    let mut seen = String::new();
    let mut cursor = None;
    for _ in 0..6_000 {
        let chunk = table
            .read_since(who, id, Stream::Stdout, cursor, 1 << 20)
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.bytes));
        cursor = Some(chunk.next);
        if seen.contains(want) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {want:?} in {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repl_stays_alive_across_calls() {
    let ws = tempfile::tempdir().unwrap();
    let table = ProcessTable::new(None);
    let me = owner("runner");
    let mut spec = SpawnSpec::new("sh", ws.path());
    spec.stdin = true;
    let id = table
        .spawn(me.clone(), &spec, PersistentOptions::default())
        .await
        .unwrap();
    assert_eq!(id.len(), 32);
    table.write_stdin(&me, &id, b"echo one\n").await.unwrap();
    read_until(&table, &me, &id, "one\n").await;
    table
        .write_stdin(&me, &id, b"x=41; echo $((x+1))\n")
        .await
        .unwrap();
    let seen = read_until(&table, &me, &id, "42\n").await;
    assert_eq!(seen, "one\n42\n", "read-since does not drain");
    assert_eq!(
        table.read_logs(&me, &id, Stream::Stdout, 4).unwrap(),
        b"one\n"
    );
    table.close_stdin(&me, &id).await.unwrap();
    table.close_stdin(&me, &id).await.unwrap();
    let exit = table
        .wait(&me, &id, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("sh exits at end of input");
    assert!(exit.success());
    assert!(table.status(&me, &id).unwrap().exit.is_some());
    table.release(&me, &id).unwrap();
    assert!(matches!(
        table.status(&me, &id),
        Err(TableError::NoSuchProcess)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_foreign_and_malformed_ids_are_all_no_such_process() {
    let ws = tempfile::tempdir().unwrap();
    let table = ProcessTable::new(None);
    let me = owner("runner");
    let id = table
        .spawn(
            me.clone(),
            &sh(ws.path(), "sleep 30"),
            PersistentOptions::default(),
        )
        .await
        .unwrap();
    let other_capsule = owner("guess");
    let other_principal = Owner {
        principal: Principal::User(PrincipalId::new()),
        capsule: me.capsule.clone(),
    };
    let unknown = "0".repeat(32);
    let answers = [
        table.status(&me, &unknown).unwrap_err().to_string(),
        table.status(&me, "not an id").unwrap_err().to_string(),
        table
            .status(&me, &id.to_uppercase())
            .unwrap_err()
            .to_string(),
        table.status(&other_capsule, &id).unwrap_err().to_string(),
        table.status(&other_principal, &id).unwrap_err().to_string(),
        table
            .signal(&other_capsule, &id, capsid_process::Signal::SIGKILL)
            .unwrap_err()
            .to_string(),
    ];
    for a in &answers {
        assert_eq!(a, "no such process");
    }
    assert!(
        table.status(&me, &id).unwrap().exit.is_none(),
        "the guesses touched nothing"
    );
    assert!(table.list(&other_capsule, None).is_empty());
    let many = table.status_many(&me, &[id.clone(), unknown]).unwrap();
    assert!(many[0].is_ok());
    assert!(matches!(many[1], Err(TableError::NoSuchProcess)));
    assert!(matches!(
        table.release(&me, &id),
        Err(TableError::StillRunning)
    ));
    table.stop(&me, &id, Duration::from_secs(5)).await.unwrap();
    assert!(table.list(&me, None).is_empty(), "stop frees the slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cursor_reports_what_it_missed_and_a_foreign_one_is_refused() {
    let ws = tempfile::tempdir().unwrap();
    let table = ProcessTable::new(None);
    let me = owner("runner");
    let mut spec = sh(ws.path(), "head -c 20000 /dev/zero | tr '\\0' a");
    spec.ring_bytes = 4096;
    let a = table
        .spawn(me.clone(), &spec, PersistentOptions::default())
        .await
        .unwrap();
    let b = table
        .spawn(me.clone(), &spec, PersistentOptions::default())
        .await
        .unwrap();
    table.wait(&me, &a, Duration::from_secs(30)).await.unwrap();
    // Exited, its last output may still be on its way into the ring (a CI flake).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let read = table
            .read_since(&me, &a, Stream::Stdout, None, 100)
            .unwrap();
        if read.missed == 20000 - 4096 || std::time::Instant::now() > until {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        first.missed,
        20000 - 4096,
        "evicted bytes are reported, not skipped silently"
    );
    assert_eq!(first.bytes, vec![b'a'; 100]);
    let foreign = Cursor {
        generation: table.status(&me, &b).unwrap().generation,
        offset: 0,
    };
    assert!(matches!(
        table.read_since(&me, &a, Stream::Stdout, Some(foreign), 100),
        Err(TableError::ForeignCursor)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_enforces_lifetime_idle_and_retention_and_reports_to_watchers() {
    let ws = tempfile::tempdir().unwrap();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let table = Arc::new(ProcessTable::new(Some(tx)));
    let _reaper = table.start_reaper();
    let me = owner("runner");
    let short = |label: &str| PersistentOptions {
        label: Some(label.into()),
        lifetime: Some(Duration::from_millis(300)),
        ..PersistentOptions::default()
    };
    let lived = table
        .spawn(me.clone(), &sh(ws.path(), "sleep 30"), short("lived"))
        .await
        .unwrap();
    table.watch(&me, &lived, true).unwrap();
    let _idle = table
        .spawn(
            me.clone(),
            &sh(ws.path(), "sleep 30"),
            PersistentOptions {
                label: Some("idle".into()),
                idle: Some(Duration::from_millis(300)),
                ..PersistentOptions::default()
            },
        )
        .await
        .unwrap();
    table
        .spawn(
            me.clone(),
            &sh(ws.path(), "true"),
            PersistentOptions {
                label: Some("kept".into()),
                retention: Duration::from_millis(300),
                ..PersistentOptions::default()
            },
        )
        .await
        .unwrap();
    let expired = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(expired.kind, EventKind::Expired);
    assert_eq!(expired.label.as_deref(), Some("lived"));
    let exited = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(exited.kind, EventKind::Exited(e) if e.signal.is_some()));
    for _ in 0..3_000 {
        // `list` does not count as activity (a `status` call would reset the idle clock).
        let idle_done = table
            .list(&me, Some("idle"))
            .first()
            .is_none_or(|s| s.exit.is_some());
        let kept_gone = table.list(&me, Some("kept")).is_empty();
        if idle_done && kept_gone {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "idle process not stopped or exited process not forgotten: {:?}",
        table.list(&me, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_principal_caps_have_distinct_errors() {
    let ws = tempfile::tempdir().unwrap();
    let table = ProcessTable::new(None);
    let me = owner("runner");
    let mut ids = Vec::new();
    for _ in 0..capsid_core::limits::MAX_PERSISTENT_RUNNING {
        ids.push(
            table
                .spawn(
                    me.clone(),
                    &sh(ws.path(), "sleep 30"),
                    PersistentOptions::default(),
                )
                .await
                .unwrap(),
        );
    }
    let err = table
        .spawn(
            me.clone(),
            &sh(ws.path(), "sleep 30"),
            PersistentOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TableError::TooManyRunning), "{err}");
    for id in &ids {
        table
            .signal(&me, id, capsid_process::Signal::SIGKILL)
            .unwrap();
        table.wait(&me, id, Duration::from_secs(30)).await.unwrap();
    }
    let err = table
        .spawn(
            me.clone(),
            &sh(ws.path(), "true"),
            PersistentOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TableError::TooManyRetained), "{err}");
    table.release(&me, &ids[0]).unwrap();
    table
        .spawn(
            me.clone(),
            &sh(ws.path(), "true"),
            PersistentOptions::default(),
        )
        .await
        .unwrap();
    table.stop_all(&me, Duration::ZERO).await;
    assert!(table.list(&me, None).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawns_racing_the_running_cap_cannot_pass_it_together() {
    let ws = tempfile::tempdir().unwrap();
    let table = Arc::new(ProcessTable::new(None));
    let me = owner("runner");
    let max = capsid_core::limits::MAX_PERSISTENT_RUNNING;
    let tasks: Vec<_> = (0..max + 8)
        .map(|_| {
            let (table, me, spec) = (table.clone(), me.clone(), sh(ws.path(), "sleep 30"));
            tokio::spawn(async move { table.spawn(me, &spec, PersistentOptions::default()).await })
        })
        .collect();
    let (mut started, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => started += 1,
            Err(TableError::TooManyRunning) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((started, refused), (max, 8));
    assert_eq!(table.list(&me, None).len(), max);
    table.stop_all(&me, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_owner_starts_nothing_until_reopened() {
    let ws = tempfile::tempdir().unwrap();
    let table = ProcessTable::new(None);
    let (me, other) = (owner("runner"), owner("other"));
    let spec = sh(ws.path(), "sleep 30");
    table.close(&me);
    let err = table
        .spawn(me.clone(), &spec, PersistentOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TableError::OwnerClosed), "{err}");
    // Other capsules are not affected.
    table
        .spawn(other.clone(), &spec, PersistentOptions::default())
        .await
        .unwrap();
    table.reopen(&me);
    table
        .spawn(me.clone(), &spec, PersistentOptions::default())
        .await
        .unwrap();
    // `stop_all` closes as it stops.
    table.stop_all(&me, Duration::ZERO).await;
    assert!(table.list(&me, None).is_empty());
    let err = table
        .spawn(me.clone(), &spec, PersistentOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TableError::OwnerClosed), "{err}");
    table.stop_all(&other, Duration::ZERO).await;
}
