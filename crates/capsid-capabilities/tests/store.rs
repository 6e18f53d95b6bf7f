//! The capability store end to end: grants, checks, revocation, single use, forged tokens,
//! audited decisions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use capsid_audit::{AuditLog, ChainId};
use capsid_capabilities::{
    AuditLogSink, Capability, CapabilityStore, Check, Decision, Denied, DenyReason, Permissions,
    RecordAllow, Subject, TokenError,
};
use capsid_core::{CapsuleId, ClientSessionId, Principal, PrincipalId, SessionId};
use capsid_crypto::KeyPair;
use capsid_storage::{KvStore, MemoryKvStore};
use proptest::prelude::*;

struct Fx {
    kv: Arc<dyn KvStore>,
    key: Arc<KeyPair>,
    store: CapabilityStore,
    alice: Principal,
}

async fn fx() -> Fx {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
    let key = Arc::new(KeyPair::generate().unwrap());
    let store = CapabilityStore::open(kv.clone(), key.clone(), &[])
        .await
        .unwrap();
    Fx {
        kv,
        key,
        store,
        alice: Principal::User(PrincipalId::new()),
    }
}

fn via(p: Principal, capsule: &str) -> Subject {
    Subject {
        principal: p,
        capsule: Some(CapsuleId::new(capsule).unwrap()),
        session: None,
    }
}

#[tokio::test]
async fn grants_allow_exactly_what_they_name() {
    let f = fx().await;
    let notes = CapsuleId::new("notes").unwrap();
    let cap = f
        .store
        .grant(
            f.alice,
            Some(notes),
            "fs://workspace/notes/**",
            Permissions::READ.union(Permissions::WRITE),
            None,
            false,
        )
        .await
        .unwrap();
    let s = via(f.alice, "notes");
    assert_eq!(
        f.store
            .check(&s, Permissions::READ, "fs://workspace/notes/a.md")
            .await,
        Decision::Allow { grant: cap.id }
    );
    assert!(
        f.store
            .check(&s, Permissions::WRITE, "fs://workspace/notes")
            .await
            .is_allowed()
    );
    let no = Decision::Deny(DenyReason::NoGrant);
    assert_eq!(
        f.store
            .check(&s, Permissions::EXEC, "fs://workspace/notes/a.md")
            .await,
        no
    );
    assert_eq!(
        f.store
            .check(&s, Permissions::READ, "fs://workspace/other")
            .await,
        no
    );
    assert_eq!(
        f.store
            .check(
                &via(f.alice, "snoop"),
                Permissions::READ,
                "fs://workspace/notes/a"
            )
            .await,
        no
    );
    let bob = Principal::User(PrincipalId::new());
    assert_eq!(
        f.store
            .check(
                &via(bob, "notes"),
                Permissions::READ,
                "fs://workspace/notes/a"
            )
            .await,
        no
    );
    for tricky in [
        "fs://workspace/notes/../secrets",
        "fs://workspace/notes/%2e%2e/x",
        "fs://workspace/notes//x",
    ] {
        assert!(matches!(
            f.store.check(&s, Permissions::READ, tricky).await,
            Decision::Deny(DenyReason::BadResource(_))
        ));
    }
}

#[tokio::test]
async fn revocation_takes_effect_at_once_and_persists() {
    let f = fx().await;
    let cap = f
        .store
        .grant(
            f.alice,
            None,
            "ipc://publish/notes.*",
            Permissions::PUBLISH,
            None,
            false,
        )
        .await
        .unwrap();
    let s = via(f.alice, "echo");
    assert!(
        f.store
            .check(&s, Permissions::PUBLISH, "ipc://publish/notes.new")
            .await
            .is_allowed(),
        "warm the cache"
    );
    f.store.revoke(cap.id).await.unwrap();
    assert_eq!(
        f.store
            .check(&s, Permissions::PUBLISH, "ipc://publish/notes.new")
            .await,
        Decision::Deny(DenyReason::NoGrant)
    );
    let reopened = CapabilityStore::open(f.kv.clone(), f.key.clone(), &[])
        .await
        .unwrap();
    assert!(
        !reopened
            .check(&s, Permissions::PUBLISH, "ipc://publish/notes.new")
            .await
            .is_allowed()
    );
    let listed = reopened.list(&f.alice).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_capability_allows_exactly_once_under_concurrency() {
    let f = fx().await;
    f.store
        .grant(
            f.alice,
            None,
            "process://exec/git",
            Permissions::EXEC,
            None,
            true,
        )
        .await
        .unwrap();
    let store = Arc::new(f.store);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            let s = via(f.alice, "runner");
            tokio::spawn(async move {
                store
                    .check(&s, Permissions::EXEC, "process://exec/git")
                    .await
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Decision::Allow { .. } => allowed += 1,
            Decision::Deny(DenyReason::Spent | DenyReason::NoGrant) => {}
            Decision::Deny(other) => panic!("unexpected denial {other:?}"),
        }
    }
    assert_eq!(allowed, 1);
}

#[tokio::test]
async fn expired_grants_are_refused_at_issue() {
    let f = fx().await;
    let past = Some(1);
    assert!(
        f.store
            .grant(
                f.alice,
                None,
                "kv://capsule/notes",
                Permissions::READ,
                past,
                false
            )
            .await
            .is_err()
    );
    assert!(
        f.store
            .grant(
                f.alice,
                None,
                "kv://capsule/notes",
                Permissions::default(),
                None,
                false
            )
            .await
            .is_err()
    );
    assert!(
        f.store
            .grant(
                f.alice,
                None,
                "kv://capsule/../x",
                Permissions::READ,
                None,
                false
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn forged_and_foreign_tokens_do_not_verify() {
    let f = fx().await;
    let cap = f
        .store
        .grant(
            f.alice,
            None,
            "fs://workspace/notes/**",
            Permissions::READ,
            None,
            false,
        )
        .await
        .unwrap();
    let genuine = cap.sign(&f.key);
    assert_eq!(f.store.verify(&genuine).unwrap(), cap);
    let other = KeyPair::generate().unwrap();
    let mut foreign = cap.clone();
    foreign.issuer = other.key_id();
    assert_eq!(
        f.store.verify(&foreign.sign(&other)),
        Err(TokenError::UnknownIssuer)
    );
    // Widening the pattern without the key: same bytes, different pattern, old signature.
    let mut widened = cap.clone();
    widened.pattern = capsid_capabilities::Pattern::parse("fs://workspace/**").unwrap();
    widened.permissions = Permissions::READ.union(Permissions::WRITE);
    let mut forged = widened.sign(&other);
    let sig_at = forged.len() - 64;
    forged[sig_at..].copy_from_slice(&genuine[genuine.len() - 64..]);
    assert_eq!(f.store.verify(&forged), Err(TokenError::Forged));
    let mut truncated = genuine.clone();
    truncated.pop();
    assert!(matches!(
        f.store.verify(&truncated),
        Err(TokenError::Malformed(_))
    ));
    let mut trailing = genuine;
    trailing.push(0);
    assert!(matches!(
        f.store.verify(&trailing),
        Err(TokenError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_corrupted_stored_token_fails_closed() {
    let f = fx().await;
    let cap = f
        .store
        .grant(
            f.alice,
            None,
            "fs://workspace/**",
            Permissions::READ,
            None,
            false,
        )
        .await
        .unwrap();
    // Find the stored token and flip one byte of its pattern.
    let page = f.kv.list(&[0x03, b't'], None, 10).await.unwrap();
    let mut bytes = f.kv.get(&page.keys[0]).await.unwrap().unwrap();
    let at = bytes.windows(9).position(|w| w == b"workspace").unwrap();
    bytes[at] = b'W';
    f.kv.set(&page.keys[0], &bytes).await.unwrap();
    let fresh = CapabilityStore::open(f.kv.clone(), f.key.clone(), &[])
        .await
        .unwrap();
    let d = fresh
        .check(
            &via(f.alice, "notes"),
            Permissions::READ,
            "fs://workspace/a",
        )
        .await;
    assert!(
        matches!(d, Decision::Deny(DenyReason::StoreUnavailable(ref e)) if e.contains(&cap.id.to_string())),
        "{d:?}"
    );
}

#[tokio::test]
async fn audited_checks_record_allows_and_denies() {
    let f = fx().await;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        AuditLog::open(dir.path().join("audit.db"), KeyPair::generate().unwrap()).unwrap(),
    );
    let chain = ChainId::Session(SessionId::new());
    let sink = AuditLogSink::new(log.clone(), chain);
    f.store
        .grant(
            f.alice,
            None,
            "kv://capsule/notes",
            Permissions::READ,
            None,
            false,
        )
        .await
        .unwrap();
    let s = via(f.alice, "notes");
    let check = |permission, resource, record_allow| Check {
        subject: &s,
        action: "kv.get",
        permission,
        resource,
        record_allow,
        details: serde_json::json!({ "why": "test" }),
    };
    let read = check(Permissions::READ, "kv://capsule/notes", RecordAllow::Before);
    assert!(f.store.authorize(read, &sink).await.is_ok());
    // An allowed read that is not recorded: allowed, and nothing written.
    let unrecorded = check(Permissions::READ, "kv://capsule/notes", RecordAllow::Never);
    assert!(f.store.authorize(unrecorded, &sink).await.is_ok());
    let write = check(Permissions::WRITE, "kv://capsule/notes", RecordAllow::Never);
    assert!(matches!(
        f.store.authorize(write, &sink).await,
        Err(Denied::NotGranted(DenyReason::NoGrant))
    ));
    let hostile = check(
        Permissions::READ,
        "kv://capsule/../x\n",
        RecordAllow::Before,
    );
    assert!(f.store.authorize(hostile, &sink).await.is_err());
    // A sink that cannot write turns an allow into a denial.
    let broken = Broken;
    let read = check(Permissions::READ, "kv://capsule/notes", RecordAllow::Before);
    assert!(matches!(
        f.store.authorize(read, &broken).await,
        Err(Denied::Unrecorded(_))
    ));
    drop(sink);
    Arc::into_inner(log).unwrap().close().await.unwrap();
    let report = capsid_audit::verify_database(dir.path().join("audit.db")).unwrap();
    assert!(report.is_valid(), "{report}");
    let decisions = decisions_in(&dir.path().join("audit.db"), &chain.to_string());
    assert_eq!(decisions, vec!["allow", "deny", "deny"]);
}

#[tokio::test]
async fn a_deferring_sink_keeps_its_records_in_order_and_says_when_they_are_durable() {
    let f = fx().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = Arc::new(AuditLog::open(&db, KeyPair::generate().unwrap()).unwrap());
    let chain = ChainId::Session(SessionId::new());
    f.store
        .grant(
            f.alice,
            None,
            "tool://hello/greet",
            Permissions::EXEC,
            None,
            false,
        )
        .await
        .unwrap();
    let s = via(f.alice, "notes");
    let check = |resource| Check {
        subject: &s,
        action: "tool.call",
        permission: Permissions::EXEC,
        resource,
        record_allow: RecordAllow::Before,
        details: serde_json::json!({}),
    };
    let sink = AuditLogSink::deferring(log.clone(), chain);
    assert!(
        f.store
            .authorize(check("tool://hello/greet"), &sink)
            .await
            .is_ok()
    );
    assert!(
        f.store
            .authorize(check("tool://hello/other"), &sink)
            .await
            .is_err()
    );
    // Appended after both and durable: both are ahead of it.
    let after = capsid_audit::Record::new(
        f.alice,
        "tool.result",
        "tool://hello/greet",
        capsid_audit::Decision::Info,
    )
    .unwrap();
    assert_eq!(log.append(chain, after).await.unwrap().seq, 3);
    assert_eq!(sink.durable().await, Ok(()));
    // Nothing left to wait for.
    assert_eq!(sink.durable().await, Ok(()));
    drop(sink);
    Arc::into_inner(log).unwrap().close().await.unwrap();
    assert_eq!(
        decisions_in(&db, &chain.to_string()),
        vec!["allow", "deny", "info"]
    );
    // A log that takes nothing: the allow is refused as unrecorded, as with a durable sink.
    let (read_only, _) = AuditLog::open_read_only(&db).unwrap();
    let sink = AuditLogSink::deferring(Arc::new(read_only), chain);
    assert!(matches!(
        f.store.authorize(check("tool://hello/greet"), &sink).await,
        Err(Denied::Unrecorded(_))
    ));
}

/// A sink whose every write fails.
struct Broken;

#[async_trait::async_trait]
impl capsid_capabilities::AuditSink for Broken {
    async fn record(&self, _: capsid_capabilities::DecisionRecord<'_>) -> Result<(), String> {
        Err("the disk is gone".into())
    }
}

/// The decisions recorded in a chain, in order, read from an export.
fn decisions_in(db: &std::path::Path, chain: &str) -> Vec<String> {
    let out = db.with_extension("jsonl");
    capsid_audit::export_database(db, &out).unwrap();
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "entry" && v["chain"] == chain)
        .map(|v| v["decision"].as_str().unwrap().to_owned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_and_never_verify(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let key = KeyPair::generate().unwrap();
        prop_assert!(Capability::verify(&bytes, &key.public_key()).is_err());
    }

    #[test]
    fn any_single_bit_flip_of_a_token_is_refused(bit in 0usize..(8 * 200)) {
        let key = KeyPair::generate().unwrap();
        let cap = Capability {
            id: capsid_capabilities::CapabilityId(uuid::Uuid::now_v7()),
            principal: Principal::System,
            capsule: None,
            pattern: capsid_capabilities::Pattern::parse("fs://workspace/notes/**").unwrap(),
            permissions: Permissions::READ,
            issued_at: 1,
            expires_at: Some(2),
            single_use: false,
            issuer: key.key_id(),
            session: (bit % 2 == 0).then(ClientSessionId::new),
        };
        let mut bytes = cap.sign(&key);
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Capability::verify(&bytes, &key.public_key()).is_err());
    }
}

#[tokio::test]
async fn showing_what_is_allowed_never_spends_a_single_use_grant() {
    let f = fx().await;
    f.store
        .grant(
            f.alice,
            None,
            "tool://hello/greet",
            Permissions::EXEC,
            None,
            true,
        )
        .await
        .unwrap();
    let s = via(f.alice, "notes");
    for _ in 0..3 {
        assert!(
            f.store
                .would_allow(&s, Permissions::EXEC, "tool://hello/greet")
                .await
        );
    }
    assert!(
        f.store
            .check(&s, Permissions::EXEC, "tool://hello/greet")
            .await
            .is_allowed(),
        "still there to be spent once"
    );
    assert!(
        !f.store
            .would_allow(&s, Permissions::EXEC, "tool://hello/greet")
            .await
    );
}

/// A session grant of `pattern` to alice through capsule `notes`, persisted.
async fn session_grant(f: &Fx, session: ClientSessionId, pattern: &str) -> Capability {
    let mut cap = f
        .store
        .issue(
            f.alice,
            Some(CapsuleId::new("notes").unwrap()),
            pattern,
            Permissions::WRITE,
            None,
            false,
        )
        .unwrap();
    cap.session = Some(session);
    f.store.persist(&cap).await.unwrap();
    cap
}

#[tokio::test]
async fn a_session_grant_allows_only_while_its_session_lives() {
    let f = fx().await;
    let (mine, other) = (ClientSessionId::new(), ClientSessionId::new());
    let from = |session| Subject {
        session: Some(session),
        ..via(f.alice, "notes")
    };
    let s = from(mine);
    let mut unborn = f
        .store
        .issue(
            f.alice,
            None,
            "kv://capsule/x",
            Permissions::WRITE,
            None,
            false,
        )
        .unwrap();
    unborn.session = Some(mine);
    assert!(
        f.store.persist(&unborn).await.is_err(),
        "a grant for a session not begun is refused"
    );
    f.store.begin_session(mine);
    f.store.begin_session(other);
    let cap = session_grant(&f, mine, "kv://capsule/notes").await;
    let kept = session_grant(&f, other, "kv://capsule/other").await;
    let listed = f.store.list(&f.alice).await.unwrap();
    assert!(
        listed.iter().any(|g| g.capability == cap),
        "listed with its session"
    );
    assert!(
        f.store
            .check(&s, Permissions::WRITE, "kv://capsule/notes")
            .await
            .is_allowed()
    );
    // A session's grant serves only calls from that session.
    for stranger in [from(other), via(f.alice, "notes")] {
        assert!(
            !f.store
                .check(&stranger, Permissions::WRITE, "kv://capsule/notes")
                .await
                .is_allowed(),
            "{stranger:?}"
        );
    }
    assert_eq!(f.store.end_session(mine).await.unwrap(), vec![cap.id]);
    assert_eq!(
        f.store
            .check(&s, Permissions::WRITE, "kv://capsule/notes")
            .await,
        Decision::Deny(DenyReason::NoGrant)
    );
    assert!(
        f.store
            .list(&f.alice)
            .await
            .unwrap()
            .iter()
            .all(|g| g.capability.id != cap.id)
    );
    assert!(
        f.store
            .check(&from(other), Permissions::WRITE, "kv://capsule/other")
            .await
            .is_allowed(),
        "another session's grant is untouched"
    );
    // A restart: sessions live in memory only, so nothing from before is honoured, and the
    // leftovers are removed.
    let reopened = CapabilityStore::open(f.kv.clone(), f.key.clone(), &[])
        .await
        .unwrap();
    assert!(
        !reopened
            .check(&from(other), Permissions::WRITE, "kv://capsule/other")
            .await
            .is_allowed()
    );
    assert_eq!(
        reopened.forget_ended_sessions().await.unwrap(),
        vec![kept.id]
    );
    assert!(reopened.list(&f.alice).await.unwrap().is_empty());
}
