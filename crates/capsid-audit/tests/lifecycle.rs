//! Concurrency, key rotation, export and bad-input behaviour of the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use capsid_audit::{AuditError, AuditLog, ChainId, Problem, verify_database, verify_export};
use capsid_core::SessionId;
use capsid_crypto::KeyPair;
use common::{file_bytes, fixture, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_tasks_keep_order_and_chain() {
    const TASKS: u64 = 64;
    const PER_TASK: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = Arc::new(AuditLog::open(&path, KeyPair::generate().unwrap()).unwrap());
    let chain = ChainId::Session(SessionId::new());
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..PER_TASK {
                    seqs.push(log.append(chain, record(t * 1000 + i)).await.unwrap().seq);
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let seqs = h.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a task's appends keep its order"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=TASKS * PER_TASK).collect::<Vec<_>>(),
        "dense, no duplicates"
    );
    Arc::into_inner(log).unwrap().close().await.unwrap();
    let report = verify_database(&path).unwrap();
    assert!(report.is_valid(), "{report}");
    assert_eq!(
        report.chain(&chain.to_string()).unwrap().entries,
        TASKS * PER_TASK
    );
}

#[tokio::test]
async fn rotation_trusts_the_new_key_and_retires_the_old() {
    let fx = fixture(3).await;
    let new_key = KeyPair::generate().unwrap();
    let new_secret = *new_key.to_secret_bytes();
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    let rotation = log.rotate_key(new_key).await.unwrap();
    assert_eq!(rotation.chain, ChainId::System);
    let after = log
        .append(ChainId::Session(fx.session), record(4))
        .await
        .unwrap();
    assert_eq!(after.seq, 4);
    log.close().await.unwrap();

    let report = verify_database(&fx.path).unwrap();
    assert!(report.is_valid(), "{report}");
    let new_key = KeyPair::from_secret_bytes(&new_secret);
    assert_eq!(report.current_key(), Some(new_key.key_id()));
    assert!(
        report.trusts(&fx.key().key_id()),
        "old entries still verify"
    );
    assert!(matches!(
        AuditLog::open(&fx.path, fx.key()),
        Err(AuditError::UntrustedKey { .. })
    ));
    let log = AuditLog::open(&fx.path, new_key).unwrap();
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_retired_key_can_no_longer_sign_a_chain_head() {
    let fx = fixture(3).await;
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    log.rotate_key(KeyPair::generate().unwrap()).await.unwrap();
    log.close().await.unwrap();
    assert!(verify_database(&fx.path).unwrap().is_valid());

    // The holder of the old key re-signs the session head, as extending the chain needs.
    let old = fx.key();
    let sql = fx.sql();
    let (seq, hash): (i64, Vec<u8>) = sql
        .query_row(
            "SELECT head_seq, head_hash FROM chains WHERE chain = ?1",
            [fx.chain()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(&u32::try_from(fx.chain().len()).unwrap().to_be_bytes());
    msg.extend_from_slice(fx.chain().as_bytes());
    msg.extend_from_slice(&u64::try_from(seq).unwrap().to_be_bytes());
    msg.extend_from_slice(&32u32.to_be_bytes());
    msg.extend_from_slice(&hash);
    let digest = capsid_crypto::hash(capsid_crypto::domain::AUDIT_HEAD, &msg);
    sql.execute(
        "UPDATE chains SET key_id = ?2, signature = ?3 WHERE chain = ?1",
        rusqlite::params![
            fx.chain(),
            old.key_id().as_bytes(),
            old.sign(digest.as_bytes()).as_bytes()
        ],
    )
    .unwrap();
    let report = verify_database(&fx.path).unwrap();
    assert_eq!(
        report.chain(&fx.chain()).unwrap().problems,
        vec![Problem::HeadInvalid],
        "{report}"
    );
}

#[tokio::test]
async fn an_unrelated_key_cannot_append() {
    let fx = fixture(1).await;
    let err = AuditLog::open(&fx.path, KeyPair::generate().unwrap()).unwrap_err();
    assert!(matches!(err, AuditError::UntrustedKey { .. }));
    assert!(err.to_string().contains(&fx.path.display().to_string()));
}

#[tokio::test]
async fn export_round_trips_and_shows_tampering() {
    let fx = fixture(4).await;
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    let out = fx.dir.path().join("audit.jsonl");
    assert_eq!(log.export_jsonl(&out).unwrap(), 6);
    assert!(
        matches!(log.export_jsonl(&out), Err(AuditError::ExportIo { .. })),
        "never overwrites"
    );
    log.close().await.unwrap();
    assert!(verify_export(&out).unwrap().is_valid());

    let text = std::fs::read_to_string(&out).unwrap();
    let tampered = text.replacen("res://2", "res://9", 1);
    assert_ne!(tampered, text);
    let bad = fx.dir.path().join("tampered.jsonl");
    std::fs::write(&bad, tampered).unwrap();
    let report = verify_export(&bad).unwrap();
    assert_eq!(
        report.chain(&fx.chain()).unwrap().problems,
        vec![Problem::ChangedField { seq: 2 }]
    );

    let broken = fx.dir.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        text.replacen("\"type\":\"entry\"", "\"type\":\"bogus\"", 1),
    )
    .unwrap();
    match verify_export(&broken) {
        Err(AuditError::ExportFormat { line, .. }) => assert!(line > 1),
        other => panic!("malformed export accepted: {other:?}"),
    }
}

#[tokio::test]
async fn bad_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let key = || KeyPair::generate().unwrap();

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0xA5u8; 8192]).unwrap();
    let err = AuditLog::open(&garbage, key()).unwrap_err();
    assert!(
        matches!(err, AuditError::NotADatabase(ref p) if *p == garbage),
        "{err}"
    );
    assert_eq!(file_bytes(&garbage), vec![0xA5u8; 8192]);

    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let before = file_bytes(&foreign);
    assert!(matches!(
        AuditLog::open(&foreign, key()),
        Err(AuditError::Foreign(_))
    ));
    assert!(matches!(
        verify_database(&foreign),
        Err(AuditError::Foreign(_))
    ));
    assert_eq!(file_bytes(&foreign), before);

    let fx = fixture(1).await;
    fx.sql().pragma_update(None, "user_version", 7).unwrap();
    let before = file_bytes(&fx.path);
    let err = AuditLog::open(&fx.path, fx.key()).unwrap_err();
    assert_eq!(
        file_bytes(&fx.path),
        before,
        "a newer schema is left untouched"
    );
    assert!(
        matches!(
            err,
            AuditError::SchemaVersion {
                found: 7,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("audit.db"));

    let missing_dir = dir.path().join("no-such-dir").join("audit.db");
    let err = AuditLog::open(&missing_dir, key()).unwrap_err();
    assert!(err.to_string().contains("no-such-dir"), "{err}");
    assert!(!missing_dir.exists());
}

#[tokio::test]
async fn verifying_a_missing_file_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    assert!(verify_database(&path).is_err());
    assert!(!path.exists());
}

#[tokio::test]
async fn a_second_writer_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = KeyPair::generate().unwrap();
    let secret = *key.to_secret_bytes();
    let log = AuditLog::open(&path, key).unwrap();
    let err = AuditLog::open(&path, KeyPair::from_secret_bytes(&secret)).unwrap_err();
    assert!(
        matches!(err, AuditError::Locked(ref p) if *p == path),
        "{err}"
    );
    // Readers are not writers: verification still works while the log is open.
    assert!(log.verify_all().unwrap().is_valid());
    log.close().await.unwrap();
    let again = AuditLog::open(&path, KeyPair::from_secret_bytes(&secret)).unwrap();
    again.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_commit_loses_nothing_acknowledged_and_the_writer_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path, KeyPair::generate().unwrap()).unwrap();
    let chain = ChainId::Session(SessionId::new());
    for i in 1..=3 {
        assert_eq!(log.append(chain, record(i)).await.unwrap().seq, i);
    }
    // Someone occupies the next sequence number behind the writer's back.
    let sql = rusqlite::Connection::open(&path).unwrap();
    sql.execute(
        "INSERT INTO entries (chain, seq, time_ns, principal, capsule, action, resource, decision,
            details, prev_hash, key_id, hash, signature)
         VALUES (?1, 4, 0, 'x', '', 'x', 'x', 'x', '{}', x'00', x'00', x'00', x'00')",
        [chain.to_string()],
    )
    .unwrap();
    let err = log.append(chain, record(4)).await.unwrap_err();
    assert!(
        matches!(err, AuditError::CommitFailed { ref path, .. } if *path == dir.path().join("audit.db")),
        "{err}"
    );
    sql.execute("DELETE FROM entries WHERE action = 'x'", [])
        .unwrap();
    // The writer continues from what is committed: seq 4 again, chained onto seq 3.
    assert_eq!(log.append(chain, record(4)).await.unwrap().seq, 4);
    assert_eq!(log.append(chain, record(5)).await.unwrap().seq, 5);
    log.close().await.unwrap();
    let report = verify_database(&path).unwrap();
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.chain(&chain.to_string()).unwrap().entries, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_are_committed_in_order_ahead_of_the_next_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path, KeyPair::generate().unwrap()).unwrap();
    let chain = ChainId::Session(SessionId::new());
    for i in 1..=5 {
        log.append_queued(chain, record(i)).await.unwrap();
    }
    // Once a later append is durable, every queued one is in the log before it.
    assert_eq!(log.append(chain, record(6)).await.unwrap().seq, 6);
    let sql = rusqlite::Connection::open(&path).unwrap();
    let resources: Vec<String> = sql
        .prepare("SELECT resource FROM entries WHERE chain = ?1 ORDER BY seq")
        .unwrap()
        .query_map([chain.to_string()], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<String> = (1..=6).map(|i| format!("res://{i}")).collect();
    assert_eq!(resources, expected);
    log.close().await.unwrap();
    assert!(verify_database(&path).unwrap().is_valid());
    // A closed log refuses a queued append as it refuses any.
    let (read_only, _) = AuditLog::open_read_only(&path).unwrap();
    assert!(matches!(
        read_only.append_queued(chain, record(7)).await,
        Err(AuditError::ReadOnly(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_append_is_ordered_when_queued_and_says_when_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path, KeyPair::generate().unwrap()).unwrap();
    let chain = ChainId::Session(SessionId::new());
    let first = log.append_pending(chain, record(1)).await.unwrap();
    // Appended after it and awaited first: still after it in the chain.
    assert_eq!(log.append(chain, record(2)).await.unwrap().seq, 2);
    let durable = first.durable().await.unwrap();
    assert_eq!(durable.seq, 1);
    let sql = rusqlite::Connection::open(&path).unwrap();
    let seq: i64 = sql
        .query_row(
            "SELECT seq FROM entries WHERE chain = ?1 AND resource = 'res://1'",
            [chain.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(seq, 1);
    // One the writer never commits says so.
    log.close().await.unwrap();
    let (read_only, _) = AuditLog::open_read_only(&path).unwrap();
    assert!(matches!(
        read_only.append_pending(chain, record(3)).await,
        Err(AuditError::ReadOnly(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_append_is_committed_with_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path, KeyPair::generate().unwrap()).unwrap();
    let chain = ChainId::Session(SessionId::new());
    log.append_queued(chain, record(1)).await.unwrap();
    let sql = rusqlite::Connection::open(&path).unwrap();
    let count = || -> i64 {
        sql.query_row(
            "SELECT COUNT(*) FROM entries WHERE chain = ?1",
            [chain.to_string()],
            |r| r.get(0),
        )
        .unwrap()
    };
    for _ in 0..200 {
        if count() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(count(), 1, "committed once the window passed, unasked");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_append_whose_commit_fails_says_so_and_the_log_goes_on_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = AuditLog::open(&path, KeyPair::generate().unwrap()).unwrap();
    let chain = ChainId::Session(SessionId::new());
    log.append(chain, record(1)).await.unwrap();
    // Another connection holds the write lock past the writer's busy timeout: the commit
    // of what is queued meanwhile fails, as a full disk or a failing device would fail it.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let pending = log.append_pending(chain, record(2)).await.unwrap();
    let err = pending.durable().await.unwrap_err();
    assert!(err.to_string().contains("audit.db"), "{err}");
    blocker.execute_batch("ROLLBACK").unwrap();
    // The log goes on from what was committed: the lost entry left no gap.
    let next = log.append(chain, record(3)).await.unwrap();
    assert_eq!(next.seq, 2);
    log.close().await.unwrap();
    let report = verify_database(&path).unwrap();
    assert!(report.is_valid(), "{report:?}");
    let resources: Vec<String> = blocker
        .prepare("SELECT resource FROM entries WHERE chain = ?1 ORDER BY seq")
        .unwrap()
        .query_map([chain.to_string()], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(resources, ["res://1", "res://3"]);
}
