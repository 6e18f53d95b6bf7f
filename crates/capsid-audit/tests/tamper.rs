//! Tampering with the database behind the log's back, through SQLite directly, and asserting
//! the exact problem reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use capsid_audit::{AuditError, AuditLog, KeyProblem, Problem, VerifyReport, verify_database};
use capsid_crypto::KeyPair;
use common::{Fixture, fixture};
use rusqlite::params;

fn problems(report: &VerifyReport, chain: &str) -> Vec<Problem> {
    report
        .chain(chain)
        .expect("chain reported")
        .problems
        .clone()
}

/// Everything outside the session chain stays valid, and opening for writing is refused with
/// the same report, changing nothing.
fn assert_only_session_broken(fx: &Fixture, expected: &[Problem]) {
    let before = common::file_bytes(&fx.path);
    let report = verify_database(&fx.path).unwrap();
    assert_eq!(problems(&report, &fx.chain()), expected, "{report}");
    assert!(report.keys.is_empty(), "{report}");
    assert!(problems(&report, "system").is_empty(), "{report}");
    match AuditLog::open(&fx.path, fx.key()) {
        Err(AuditError::Tampered {
            report: at_open, ..
        }) => assert_eq!(*at_open, report),
        other => panic!("tampered log was opened: {other:?}"),
    }
    assert_eq!(
        verify_database(&fx.path).unwrap(),
        report,
        "nothing repaired"
    );
    assert_eq!(
        common::file_bytes(&fx.path),
        before,
        "the file is left exactly as found"
    );
}

#[tokio::test]
async fn untouched_log_verifies_and_reopens() {
    let fx = fixture(5).await;
    let report = verify_database(&fx.path).unwrap();
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.chain(&fx.chain()).unwrap().entries, 5);
    // system chain: log.create + chain.open
    assert_eq!(report.chain("system").unwrap().entries, 2);
    let log = AuditLog::open(&fx.path, fx.key()).unwrap();
    let next = log
        .append(
            capsid_audit::ChainId::Session(fx.session),
            common::record(6),
        )
        .await
        .unwrap();
    assert_eq!(next.seq, 6);
    log.close().await.unwrap();
    assert!(verify_database(&fx.path).unwrap().is_valid());
}

#[tokio::test]
async fn edited_field_is_reported_at_its_sequence() {
    let fx = fixture(5).await;
    fx.sql()
        .execute(
            "UPDATE entries SET decision = 'deny' WHERE chain = ?1 AND seq = 3",
            params![fx.chain()],
        )
        .unwrap();
    assert_only_session_broken(&fx, &[Problem::ChangedField { seq: 3 }]);
}

#[tokio::test]
async fn a_tampered_log_opened_read_only_is_reported_readable_and_never_written() {
    let fx = fixture(5).await;
    fx.sql()
        .execute(
            "UPDATE entries SET decision = 'deny' WHERE chain = ?1 AND seq = 2",
            params![fx.chain()],
        )
        .unwrap();
    let before = common::file_bytes(&fx.path);
    let (log, report) = AuditLog::open_read_only(&fx.path).unwrap();
    assert!(log.is_read_only());
    assert_eq!(
        problems(&report, &fx.chain()),
        [Problem::ChangedField { seq: 2 }]
    );
    let chain = capsid_audit::ChainId::Session(fx.session);
    let refused = log.append(chain, common::record(6)).await.unwrap_err();
    assert!(matches!(refused, AuditError::ReadOnly(_)), "{refused}");
    assert!(refused.to_string().contains("read-only"), "{refused}");
    let rotated = log
        .rotate_key(KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(rotated, AuditError::ReadOnly(_)), "{rotated}");
    // Still readable as it is: verify and export.
    assert_eq!(log.verify_all().unwrap(), report);
    let out = fx.path.with_extension("export.jsonl");
    assert_eq!(log.export_jsonl(&out).unwrap(), 5 + 2);
    log.shutdown().await.unwrap();
    assert_eq!(common::file_bytes(&fx.path), before, "never written");
}

#[tokio::test]
async fn a_write_ahead_log_without_its_database_is_refused_not_replaced() {
    let fx = fixture(3).await;
    let mut wal = fx.path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    // What a crash between moving the database and its WAL aside would leave.
    std::fs::write(&wal, b"frames nobody has read yet").unwrap();
    std::fs::remove_file(&fx.path).unwrap();
    let refused = AuditLog::open(&fx.path, fx.key()).unwrap_err();
    assert!(matches!(refused, AuditError::Io { .. }), "{refused}");
    assert!(refused.to_string().contains("write-ahead log"), "{refused}");
    assert_eq!(std::fs::read(&wal).unwrap(), b"frames nobody has read yet");
    assert!(!fx.path.exists(), "no new log was started over it");
}

#[tokio::test]
async fn edited_details_and_type_confusion_are_reported() {
    let fx = fixture(5).await;
    let sql = fx.sql();
    sql.execute(
        "UPDATE entries SET details = '{\"i\":99}' WHERE chain = ?1 AND seq = 2",
        params![fx.chain()],
    )
    .unwrap();
    // Same text, stored as a blob with a non-UTF-8 byte: still a change.
    sql.execute(
        "UPDATE entries SET action = x'ff' WHERE chain = ?1 AND seq = 4",
        params![fx.chain()],
    )
    .unwrap();
    assert_only_session_broken(
        &fx,
        &[
            Problem::ChangedField { seq: 2 },
            Problem::ChangedField { seq: 4 },
        ],
    );
}

#[tokio::test]
async fn deleted_row_is_missing() {
    let fx = fixture(5).await;
    fx.sql()
        .execute(
            "DELETE FROM entries WHERE chain = ?1 AND seq = 3",
            params![fx.chain()],
        )
        .unwrap();
    assert_only_session_broken(
        &fx,
        &[Problem::Missing {
            first_seq: 3,
            last_seq: 3,
        }],
    );
}

#[tokio::test]
async fn truncated_tail_is_missing_against_the_signed_head() {
    let fx = fixture(5).await;
    fx.sql()
        .execute(
            "DELETE FROM entries WHERE chain = ?1 AND seq >= 4",
            params![fx.chain()],
        )
        .unwrap();
    assert_only_session_broken(
        &fx,
        &[Problem::Missing {
            first_seq: 4,
            last_seq: 5,
        }],
    );
}

#[tokio::test]
async fn lowering_the_head_to_hide_truncation_breaks_its_signature() {
    let fx = fixture(5).await;
    let sql = fx.sql();
    sql.execute(
        "DELETE FROM entries WHERE chain = ?1 AND seq = 5",
        params![fx.chain()],
    )
    .unwrap();
    let h4: Vec<u8> = sql
        .query_row(
            "SELECT hash FROM entries WHERE chain = ?1 AND seq = 4",
            params![fx.chain()],
            |r| r.get(0),
        )
        .unwrap();
    sql.execute(
        "UPDATE chains SET head_seq = 4, head_hash = ?2 WHERE chain = ?1",
        params![fx.chain(), h4],
    )
    .unwrap();
    assert_only_session_broken(&fx, &[Problem::HeadInvalid]);
}

#[tokio::test]
async fn swapped_rows_are_reordered() {
    let fx = fixture(5).await;
    let sql = fx.sql();
    let ids: Vec<i64> = {
        let mut stmt = sql
            .prepare("SELECT id FROM entries WHERE chain = ?1 AND seq IN (3, 4) ORDER BY seq")
            .unwrap();
        stmt.query_map(params![fx.chain()], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // Give each row the other's storage position.
    sql.execute_batch(&format!(
        "UPDATE entries SET id = -1 WHERE id = {a};
         UPDATE entries SET id = {a} WHERE id = {b};
         UPDATE entries SET id = {b} WHERE id = -1;",
        a = ids[0],
        b = ids[1]
    ))
    .unwrap();
    assert_only_session_broken(
        &fx,
        &[Problem::Reordered {
            seq: 3,
            after_seq: 4,
        }],
    );
}

#[tokio::test]
async fn forged_row_past_the_head_is_inserted() {
    let fx = fixture(5).await;
    let attacker = KeyPair::generate().unwrap();
    let sql = fx.sql();
    sql.execute(
        "INSERT INTO entries (chain, seq, time_ns, principal, capsule, action, resource, decision, details,
            prev_hash, key_id, hash, signature)
         SELECT chain, 6, time_ns, principal, capsule, 'test.op', 'res://forged', decision, details,
            hash, ?2, hash, ?3 FROM entries WHERE chain = ?1 AND seq = 5",
        params![fx.chain(), attacker.key_id().as_bytes(), attacker.sign(b"forged").as_bytes()],
    )
    .unwrap();
    assert_only_session_broken(&fx, &[Problem::Inserted { seq: 6 }]);
}

#[tokio::test]
async fn forged_duplicate_in_the_middle_is_inserted_and_the_genuine_row_kept() {
    let fx = fixture(5).await;
    let sql = fx.sql();
    // An attacker with raw access can drop the uniqueness constraint by rebuilding the table.
    sql.execute_batch(
        "CREATE TABLE e2 AS SELECT * FROM entries; DROP TABLE entries; ALTER TABLE e2 RENAME TO entries;",
    )
    .unwrap();
    sql.execute(
        "INSERT INTO entries (id, chain, seq, time_ns, principal, capsule, action, resource, decision, details,
            prev_hash, key_id, hash, signature)
         SELECT 1000, chain, seq, time_ns, principal, capsule, action, 'res://other', decision, details,
            prev_hash, key_id, hash, signature FROM entries WHERE chain = ?1 AND seq = 3",
        params![fx.chain()],
    )
    .unwrap();
    assert_only_session_broken(&fx, &[Problem::Inserted { seq: 3 }]);
}

#[tokio::test]
async fn flipped_signature_is_a_bad_signature() {
    let fx = fixture(5).await;
    let sql = fx.sql();
    let mut sig: Vec<u8> = sql
        .query_row(
            "SELECT signature FROM entries WHERE chain = ?1 AND seq = 2",
            params![fx.chain()],
            |r| r.get(0),
        )
        .unwrap();
    sig[10] ^= 0x01;
    sql.execute(
        "UPDATE entries SET signature = ?2 WHERE chain = ?1 AND seq = 2",
        params![fx.chain(), sig],
    )
    .unwrap();
    assert_only_session_broken(&fx, &[Problem::BadSignature { seq: 2 }]);
}

#[tokio::test]
async fn replaced_key_leaves_every_entry_signed_by_an_unknown_key() {
    let fx = fixture(3).await;
    let attacker = KeyPair::generate().unwrap();
    let sql = fx.sql();
    sql.execute(
        "UPDATE trusted_keys SET key_id = ?1, public_key = ?2",
        params![
            attacker.key_id().as_bytes(),
            attacker.public_key().to_bytes()
        ],
    )
    .unwrap();
    let report = verify_database(&fx.path).unwrap();
    let old = fx.key().key_id().to_string();
    let unknown = |seq| Problem::UnknownKey {
        seq,
        key_id: old.clone(),
    };
    assert!(
        report.keys.is_empty(),
        "the attacker's key is now the only pinned one: {report}"
    );
    assert_eq!(
        problems(&report, &fx.chain()),
        vec![Problem::HeadInvalid, unknown(1), unknown(2), unknown(3)]
    );
    assert_eq!(
        problems(&report, "system"),
        vec![Problem::HeadInvalid, unknown(1), unknown(2)]
    );
    assert!(matches!(
        AuditLog::open(&fx.path, fx.key()),
        Err(AuditError::Tampered { .. })
    ));
}

#[tokio::test]
async fn a_pinned_key_without_a_signed_rotation_is_not_trusted() {
    let fx = fixture(2).await;
    let attacker = KeyPair::generate().unwrap();
    fx.sql()
        .execute(
            "INSERT INTO trusted_keys (key_id, public_key, introduced_by) VALUES (?1, ?2, 2)",
            params![
                attacker.key_id().as_bytes(),
                attacker.public_key().to_bytes()
            ],
        )
        .unwrap();
    let report = verify_database(&fx.path).unwrap();
    assert_eq!(
        report.keys,
        vec![KeyProblem::Unintroduced {
            key_id: attacker.key_id().to_string()
        }]
    );
    assert!(!report.trusts(&attacker.key_id()));
    assert!(matches!(
        AuditLog::open(&fx.path, attacker),
        Err(AuditError::Tampered { .. })
    ));
}

#[tokio::test]
async fn a_deleted_chain_is_missing() {
    let fx = fixture(3).await;
    let sql = fx.sql();
    sql.execute("DELETE FROM entries WHERE chain = ?1", params![fx.chain()])
        .unwrap();
    sql.execute("DELETE FROM chains WHERE chain = ?1", params![fx.chain()])
        .unwrap();
    assert_only_session_broken(&fx, &[Problem::ChainMissing]);
}

#[tokio::test]
async fn an_edited_sequence_number_is_a_changed_field_at_the_true_position() {
    for new_seq in ["9", "'three'", "NULL", "-1"] {
        let fx = fixture(5).await;
        let sql = fx.sql();
        if new_seq == "NULL" {
            // NOT NULL forbids it; an attacker rebuilds the table without the constraint.
            sql.execute_batch(
                "CREATE TABLE e2 AS SELECT * FROM entries; DROP TABLE entries; ALTER TABLE e2 RENAME TO entries;",
            )
            .unwrap();
        }
        sql.execute(
            &format!("UPDATE entries SET seq = {new_seq} WHERE chain = ?1 AND seq = 3"),
            params![fx.chain()],
        )
        .unwrap();
        drop(sql);
        assert_only_session_broken(&fx, &[Problem::ChangedField { seq: 3 }]);
    }
}
