//! Heads anchored off-host: a log still holding them passes; one truncated after they were
//! taken is missing them; one rewritten (the same chain and sequence numbers, other
//! entries, signed with the log's own key, verifying on its own) differs from them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use capsid_audit::{
    AnchorProblem, AuditLog, ChainId, chain_heads, check_anchored, verify_database,
};
use capsid_core::SessionId;
use capsid_crypto::KeyPair;
use common::record;

/// A log at `path` with records `from..to` in `session`'s chain, stopped cleanly.
async fn log_with(
    path: &std::path::Path,
    key: &KeyPair,
    session: SessionId,
    records: std::ops::Range<u64>,
) {
    let log = AuditLog::open(path, KeyPair::from_secret_bytes(&key.to_secret_bytes())).unwrap();
    for i in records {
        log.append(ChainId::Session(session), record(i))
            .await
            .unwrap();
    }
    log.shutdown().await.unwrap();
}

#[tokio::test]
async fn anchored_heads_catch_a_truncated_or_rewritten_log_that_verifies_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let session = SessionId::new();
    let chain = ChainId::Session(session).to_string();

    let original = dir.path().join("original.db");
    log_with(&original, &key, session, 0..6).await;
    let anchored = chain_heads(&original).unwrap();
    let head = anchored.iter().find(|h| h.chain == chain).unwrap();
    assert_eq!(head.seq, 6);
    assert!(check_anchored(&original, &anchored).unwrap().is_empty());

    // The same log cut short: only four entries were ever written to it.
    let truncated = dir.path().join("truncated.db");
    log_with(&truncated, &key, session, 0..4).await;
    assert!(verify_database(&truncated).unwrap().is_valid());
    let problems = check_anchored(&truncated, &anchored).unwrap();
    assert!(
        problems.contains(&AnchorProblem::Missing {
            chain: chain.clone(),
            seq: 6
        }),
        "{problems:?}"
    );

    // The same chain, as long, with other entries: signed by the same key, valid alone.
    let rewritten = dir.path().join("rewritten.db");
    log_with(&rewritten, &key, session, 100..106).await;
    assert!(verify_database(&rewritten).unwrap().is_valid());
    let problems = check_anchored(&rewritten, &anchored).unwrap();
    assert!(
        problems.contains(&AnchorProblem::Rewritten { chain, seq: 6 }),
        "{problems:?}"
    );
}
