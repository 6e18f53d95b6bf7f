//! Checkpoints: written every `AUDIT_CHECKPOINT_INTERVAL` entries and at a clean stop after
//! more than `AUDIT_CHECKPOINT_AT_STOP`; an open verifies from the newest one, and still
//! refuses a log whose checkpoint claims do not hold or whose later entries were touched;
//! the full verification checks everything, the checkpoints' claims included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use capsid_audit::{AuditError, AuditLog, ChainId, Problem, verify_database};
use capsid_core::SessionId;
use capsid_core::limits::{AUDIT_CHECKPOINT_AT_STOP, AUDIT_CHECKPOINT_INTERVAL};
use capsid_crypto::KeyPair;
use common::{Fixture, record};

/// Appends `n` records to `chain` of `log`, concurrently (as a busy host does).
async fn append_many(log: &Arc<AuditLog>, chain: ChainId, from: u64, n: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in from..from + n {
        let log = log.clone();
        tasks.spawn(async move { log.append(chain, record(i)).await.unwrap() });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// A new log, open, and the fixture that names it.
fn new_log() -> (Fixture, Arc<AuditLog>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = KeyPair::generate().unwrap();
    let secret = *key.to_secret_bytes();
    let log = Arc::new(AuditLog::open(&path, key).unwrap());
    let fx = Fixture {
        dir,
        path,
        secret,
        session: SessionId::new(),
    };
    (fx, log)
}

/// A log with `n` entries in one session chain, stopped cleanly.
async fn fixture(n: u64) -> Fixture {
    let (fx, log) = new_log();
    append_many(&log, ChainId::Session(fx.session), 1, n).await;
    log.shutdown().await.unwrap();
    fx
}

/// Opens the log with its own key, which must succeed, and closes it.
async fn opens(fx: &Fixture) {
    AuditLog::open(&fx.path, fx.key())
        .unwrap()
        .close()
        .await
        .unwrap();
}

fn checkpoints(fx: &Fixture) -> Vec<u64> {
    let sql = fx.sql();
    let mut stmt = sql
        .prepare("SELECT seq FROM entries WHERE chain = 'system' AND action = 'audit.checkpoint' ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|s| u64::try_from(s.unwrap()).unwrap())
        .collect()
}

fn refused_with(fx: &Fixture) -> Vec<String> {
    match AuditLog::open(&fx.path, fx.key()) {
        Err(AuditError::Tampered { report, .. }) => report.problems(),
        other => panic!("a tampered log was opened: {other:?}"),
    }
}

const PAST_STOP: u64 = AUDIT_CHECKPOINT_AT_STOP + 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_checkpoints_and_the_next_open_starts_there() {
    let fx = fixture(PAST_STOP).await;
    assert_eq!(checkpoints(&fx).len(), 1);
    let report = verify_database(&fx.path).unwrap();
    assert!(report.is_valid(), "{report}");

    // Reopened from the checkpoint: appends go on from the heads, and all of it verifies.
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    let next = log
        .append(ChainId::Session(fx.session), record(PAST_STOP + 1))
        .await
        .unwrap();
    assert_eq!(next.seq, PAST_STOP + 1);
    log.close().await.unwrap();
    assert!(verify_database(&fx.path).unwrap().is_valid());
    assert_eq!(
        checkpoints(&fx).len(),
        1,
        "a stop after few entries writes none"
    );

    // An entry changed before the checkpoint, keeping every count and head: the open does
    // not read it (that is what makes it fast); the full verification finds it.
    fx.sql()
        .execute(
            "UPDATE entries SET details = '{\"i\":0}' WHERE chain = ?1 AND seq = 7",
            [fx.chain()],
        )
        .unwrap();
    let full = verify_database(&fx.path).unwrap();
    assert_eq!(
        full.chain(&fx.chain()).unwrap().problems,
        vec![Problem::ChangedField { seq: 7 }],
        "{full}"
    );
    opens(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_removed_before_a_checkpoint_is_found_by_the_full_verification() {
    let fx = fixture(PAST_STOP).await;
    fx.sql()
        .execute(
            "DELETE FROM entries WHERE chain = ?1 AND seq = 9",
            [fx.chain()],
        )
        .unwrap();
    // Every head is where the checkpoint says: the open, which reads nothing before the
    // checkpoint but the heads, passes; the full verification finds the gap.
    opens(&fx).await;
    let full = verify_database(&fx.path).unwrap();
    assert_eq!(
        full.chain(&fx.chain()).unwrap().problems,
        vec![Problem::Missing {
            first_seq: 9,
            last_seq: 9
        }],
        "{full}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_opened_after_the_checkpoint_and_deleted_is_missing_at_open() {
    let fx = fixture(PAST_STOP).await;
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    let later = ChainId::Session(SessionId::new());
    log.append(later, record(1)).await.unwrap();
    log.close().await.unwrap();
    let sql = fx.sql();
    sql.execute("DELETE FROM entries WHERE chain = ?1", [later.to_string()])
        .unwrap();
    sql.execute("DELETE FROM chains WHERE chain = ?1", [later.to_string()])
        .unwrap();
    assert_eq!(
        refused_with(&fx),
        vec![format!(
            "chain {later}: chain opened in the system chain is gone"
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_on_a_long_log_without_a_checkpoint_writes_one_at_stop() {
    // Under the stop threshold: no checkpoint yet.
    let fx = fixture(AUDIT_CHECKPOINT_AT_STOP - 10).await;
    assert!(checkpoints(&fx).is_empty());
    // A run of a few entries more: what follows the last checkpoint now passes the
    // threshold, counted across the restart.
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    for i in 0..20 {
        log.append(
            ChainId::Session(fx.session),
            record(AUDIT_CHECKPOINT_AT_STOP + i),
        )
        .await
        .unwrap();
    }
    log.close().await.unwrap();
    assert_eq!(checkpoints(&fx).len(), 1);
    assert!(verify_database(&fx.path).unwrap().is_valid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_chain_before_a_checkpoint_is_refused_at_open() {
    let fx = fixture(PAST_STOP).await;
    // The session chain's last entries go, and its head is left pointing past them.
    fx.sql()
        .execute(
            "DELETE FROM entries WHERE chain = ?1 AND seq > ?2",
            rusqlite::params![fx.chain(), i64::try_from(PAST_STOP - 3).unwrap()],
        )
        .unwrap();
    let at_open = refused_with(&fx);
    assert!(
        at_open
            .iter()
            .any(|p| p.contains("checkpoint does not match")),
        "the chain's head before the checkpoint moved: {at_open:?}"
    );
    let full = verify_database(&fx.path).unwrap();
    assert!(!full.is_valid(), "{full}");
    assert!(
        full.chain("system")
            .unwrap()
            .problems
            .iter()
            .any(|p| matches!(p, Problem::CheckpointMismatch { .. })),
        "the full verification checks the checkpoint's claim too: {full}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_after_the_checkpoint_are_verified_one_by_one_at_open() {
    let fx = fixture(PAST_STOP).await;
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    for i in 1..=5 {
        log.append(ChainId::Session(fx.session), record(PAST_STOP + i))
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    let edited = PAST_STOP + 3;
    let sql = fx.sql();
    for seq in [5, edited] {
        sql.execute(
            "UPDATE entries SET resource = 'res://forged' WHERE chain = ?1 AND seq = ?2",
            rusqlite::params![fx.chain(), i64::try_from(seq).unwrap()],
        )
        .unwrap();
    }
    // Only what follows the checkpoint is read at open (seq 5 is the full verify's).
    let at_open = refused_with(&fx);
    assert_eq!(
        at_open,
        vec![format!(
            "chain {}: seq {edited}: a field was changed after signing",
            fx.chain()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_was_changed_is_no_starting_point() {
    let fx = fixture(PAST_STOP).await;
    let seq = checkpoints(&fx)[0];
    // A claim rewritten to cover a removal: the entry's own hash no longer matches, so the
    // open verifies the whole log, and refuses it.
    fx.sql()
        .execute(
            "UPDATE entries SET details = replace(details, '\"chains\"', '\"chainz\"') WHERE chain = 'system' AND seq = ?1",
            [i64::try_from(seq).unwrap()],
        )
        .unwrap();
    let at_open = refused_with(&fx);
    assert_eq!(
        at_open,
        vec![format!(
            "chain system: seq {seq}: a field was changed after signing"
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_log_checkpoints_every_interval_without_stopping() {
    let (fx, log) = new_log();
    append_many(
        &log,
        ChainId::Session(fx.session),
        1,
        AUDIT_CHECKPOINT_INTERVAL + 5,
    )
    .await;
    // Read while the log is open (WAL readers see what committed).
    assert_eq!(checkpoints(&fx).len(), 1);
    log.shutdown().await.unwrap();
    assert!(verify_database(&fx.path).unwrap().is_valid());
    opens(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_after_a_checkpoint_opens_the_log_and_checkpoints_on() {
    let fx = fixture(PAST_STOP).await;
    let log = Arc::new(AuditLog::open(&fx.path, fx.key()).unwrap());
    let new_key = KeyPair::generate().unwrap();
    let new_secret = *new_key.to_secret_bytes();
    log.rotate_key(new_key).await.unwrap();
    append_many(&log, ChainId::Session(fx.session), PAST_STOP + 1, PAST_STOP).await;
    log.shutdown().await.unwrap();
    assert_eq!(checkpoints(&fx).len(), 2, "one signed by each key");
    // The newest checkpoint is signed by the new key: the open starts there and trusts
    // only the new key to write.
    let old = AuditLog::open(&fx.path, fx.key());
    assert!(
        matches!(old, Err(AuditError::UntrustedKey { .. })),
        "{old:?}"
    );
    AuditLog::open(&fx.path, KeyPair::from_secret_bytes(&new_secret))
        .unwrap()
        .close()
        .await
        .unwrap();
    assert!(verify_database(&fx.path).unwrap().is_valid());
}
