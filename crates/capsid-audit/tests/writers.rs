//! `workspace_writers`: who changed each workspace path since the last review that took
//! effect, read from a real log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use capsid_audit::{AuditLog, ChainId, Decision, Record, action, workspace_writers};
use capsid_core::{CapsuleId, Principal, SessionId};
use capsid_crypto::KeyPair;
use serde_json::json;

const PATH: &str = "fs://workspace/notes/a.md";
const OTHER: &str = "fs://workspace/notes/b.md";

async fn write(log: &AuditLog, chain: ChainId, capsule: &str, resource: &str, decision: Decision) {
    let r = Record::new(Principal::System, action::FS_WRITE, resource, decision)
        .unwrap()
        .capsule(CapsuleId::new(capsule).unwrap());
    log.append(chain, r).await.unwrap();
}

async fn operator(log: &AuditLog, chain: ChainId, act: &str, details: serde_json::Value) {
    let r = Record::new(Principal::System, act, "fs://workspace", Decision::Info)
        .unwrap()
        .details(&details)
        .unwrap();
    log.append(chain, r).await.unwrap();
}

fn writers(log: &AuditLog) -> Vec<String> {
    let wanted: BTreeSet<String> = [PATH.to_owned()].into();
    workspace_writers(log.path(), &wanted)
        .unwrap()
        .remove(PATH)
        .map(|s| s.into_iter().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reviews_that_took_effect_start_attribution_over() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path().join("audit.db"), KeyPair::generate().unwrap()).unwrap();
    let chain = ChainId::Session(SessionId::new());
    write(&log, chain, "alpha", PATH, Decision::Allow).await;
    write(&log, chain, "spy", PATH, Decision::Deny).await;
    write(
        &log,
        chain,
        "other",
        "fs://workspace/elsewhere",
        Decision::Allow,
    )
    .await;
    assert_eq!(
        writers(&log),
        ["alpha"],
        "denied and other paths do not count"
    );

    // A commit recorded in two parts that then failed: nobody's writes are forgotten.
    let part = |n: u32| json!({ "part": n, "parts": 2, "paths": [] });
    operator(&log, chain, action::WORKSPACE_COMMIT, part(1)).await;
    operator(&log, chain, action::WORKSPACE_COMMIT, part(2)).await;
    operator(
        &log,
        chain,
        action::OPERATOR_FAILED,
        json!({ "action": action::WORKSPACE_COMMIT }),
    )
    .await;
    write(&log, chain, "beta", PATH, Decision::Allow).await;
    assert_eq!(writers(&log), ["alpha", "beta"]);

    // One that took effect: only what came after it.
    operator(
        &log,
        chain,
        action::WORKSPACE_DISCARD,
        json!({ "part": 1, "parts": 1 }),
    )
    .await;
    assert!(writers(&log).is_empty());
    write(&log, chain, "gamma", PATH, Decision::Allow).await;
    assert_eq!(writers(&log), ["gamma"]);

    // A commit finished at boot counts too.
    operator(
        &log,
        chain,
        action::WORKSPACE_COMMIT_RECOVERED,
        json!({ "changes": 1 }),
    )
    .await;
    assert!(writers(&log).is_empty());
    log.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_of_some_paths_starts_attribution_over_there_only() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path().join("audit.db"), KeyPair::generate().unwrap()).unwrap();
    let chain = ChainId::Session(SessionId::new());
    let both = || -> Vec<(String, Vec<String>)> {
        let wanted: BTreeSet<String> = [PATH.to_owned(), OTHER.to_owned()].into();
        workspace_writers(log.path(), &wanted)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    };
    write(&log, chain, "alpha", PATH, Decision::Allow).await;
    write(&log, chain, "alpha", OTHER, Decision::Allow).await;
    // `notes/a` is not above `notes/a.md`.
    let limited = |paths: &[&str]| json!({ "part": 1, "parts": 1, "limited_to": paths });
    operator(&log, chain, action::WORKSPACE_COMMIT, limited(&["notes/a"])).await;
    assert_eq!(both().len(), 2);
    operator(
        &log,
        chain,
        action::WORKSPACE_COMMIT,
        limited(&["notes/a.md"]),
    )
    .await;
    assert_eq!(both(), [(OTHER.to_owned(), vec!["alpha".to_owned()])]);
    write(&log, chain, "beta", PATH, Decision::Allow).await;
    assert_eq!(writers(&log), ["beta"]);
    // A discard finished at boot, limited to the folder, covers both.
    operator(
        &log,
        chain,
        action::WORKSPACE_DISCARD_RECOVERED,
        json!({ "limited_to": ["notes"] }),
    )
    .await;
    assert!(both().is_empty());
    // A scoped review that failed starts nothing over.
    write(&log, chain, "gamma", OTHER, Decision::Allow).await;
    operator(
        &log,
        chain,
        action::WORKSPACE_DISCARD,
        limited(&["notes/b.md"]),
    )
    .await;
    operator(
        &log,
        chain,
        action::OPERATOR_FAILED,
        json!({ "action": action::WORKSPACE_DISCARD }),
    )
    .await;
    assert_eq!(both(), [(OTHER.to_owned(), vec!["gamma".to_owned()])]);
    // A whole one starts everything over.
    operator(&log, chain, action::WORKSPACE_DISCARD, limited(&[])).await;
    write(&log, chain, "delta", OTHER, Decision::Allow).await;
    assert_eq!(both(), [(OTHER.to_owned(), vec!["delta".to_owned()])]);
    log.shutdown().await.unwrap();
}
