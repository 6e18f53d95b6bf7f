//! Namespace confinement, quotas and identities.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use capsid_core::limits::MAX_SCOPED_KEY_BYTES;
use capsid_storage::{
    BatchOp, IdentityStore, KvError, KvStore, MemoryKvStore, Quota, QuotaKind, ScopedKvStore,
};

async fn scoped(kv: &Arc<dyn KvStore>, ns: &str, quota: Quota) -> ScopedKvStore {
    ScopedKvStore::open(kv.clone(), ns, quota).await.unwrap()
}

fn shared() -> Arc<dyn KvStore> {
    Arc::new(MemoryKvStore::new())
}

#[tokio::test]
async fn no_key_reaches_another_namespace() {
    let kv = shared();
    let victim = scoped(&kv, "notes", Quota::default()).await;
    victim.set(b"secret", b"s3cr3t").await.unwrap();
    // Namespaces that share a prefix, and keys that try to rebuild the victim's header.
    let tricks: Vec<Vec<u8>> = vec![
        b"secret".to_vec(),
        b"/../notes/secret".to_vec(),
        [&[0x01, 5][..], b"notes", b"secret"].concat(),
        [&b"\0"[..], b"notes\0secret"].concat(),
        b"\x01\x05notessecret".to_vec(),
        vec![b'x'; MAX_SCOPED_KEY_BYTES],
    ];
    for ns in ["note", "notes2", "n", "snoop", "notes\0"] {
        let snoop = scoped(&kv, ns, Quota::default()).await;
        for key in &tricks {
            assert_eq!(snoop.get(key).await.unwrap(), None, "{ns:?} read {key:?}");
            assert!(!snoop.exists(key).await.unwrap());
        }
        assert!(
            snoop.list(b"", None, 100).await.unwrap().keys.is_empty(),
            "{ns:?} listed another namespace"
        );
        assert!(
            snoop
                .list(b"\x01", None, 100)
                .await
                .unwrap()
                .keys
                .is_empty()
        );
        snoop.set(b"secret", b"mine").await.unwrap();
    }
    assert_eq!(
        victim.get(b"secret").await.unwrap(),
        Some(b"s3cr3t".to_vec())
    );
    assert_eq!(
        victim.list(b"", None, 100).await.unwrap().keys,
        vec![b"secret".to_vec()]
    );
}

#[tokio::test]
async fn bad_keys_and_namespaces_are_refused() {
    let kv = shared();
    let s = scoped(&kv, "a", Quota::default()).await;
    assert!(matches!(
        s.set(b"", b"v").await,
        Err(KvError::BadKey { len: 0, .. })
    ));
    let long = vec![b'k'; MAX_SCOPED_KEY_BYTES + 1];
    assert!(matches!(
        s.set(&long, b"v").await,
        Err(KvError::BadKey { .. })
    ));
    assert!(matches!(s.get(&long).await, Err(KvError::BadKey { .. })));
    let max = vec![0u8; MAX_SCOPED_KEY_BYTES];
    s.set(&max, b"ok").await.unwrap();
    assert_eq!(s.get(&max).await.unwrap(), Some(b"ok".to_vec()));
    assert!(matches!(
        ScopedKvStore::open(kv.clone(), "", Quota::default()).await,
        Err(KvError::BadNamespace { .. })
    ));
    let long_ns = "n".repeat(256);
    assert!(matches!(
        ScopedKvStore::open(kv, &long_ns, Quota::default()).await,
        Err(KvError::BadNamespace { .. })
    ));
}

#[tokio::test]
async fn byte_quota_is_enforced_and_writes_nothing_when_exceeded() {
    let kv = shared();
    let q = Quota {
        max_bytes: Some(100),
        max_keys: None,
    };
    let s = scoped(&kv, "q", q).await;
    s.set(b"k1", &[0; 48]).await.unwrap(); // 50 bytes
    s.set(b"k2", &[0; 48]).await.unwrap(); // 100 bytes
    let err = s.set(b"k3", b"x").await.unwrap_err();
    assert!(
        matches!(
            err,
            KvError::QuotaExceeded {
                kind: QuotaKind::Bytes,
                limit: 100,
                would_use: 103,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.get(b"k3").await.unwrap(), None);
    // Overwriting costs only the difference; shrinking is always allowed.
    s.set(b"k1", &[0; 10]).await.unwrap();
    s.set(b"k3", &[0; 30]).await.unwrap();
    assert_eq!(s.usage().await, (12 + 50 + 32, 3));
    assert!(s.delete(b"k2").await.unwrap());
    assert_eq!(s.usage().await, (44, 2));
    // A refused batch writes nothing.
    let ops = [
        BatchOp::Set {
            key: b"b1".to_vec(),
            value: vec![0; 20],
        },
        BatchOp::Set {
            key: b"b2".to_vec(),
            value: vec![0; 60],
        },
    ];
    assert!(matches!(
        s.batch(&ops).await,
        Err(KvError::QuotaExceeded { .. })
    ));
    assert_eq!(s.get(b"b1").await.unwrap(), None);
    // Reopening recounts what is stored.
    let again = scoped(&kv, "q", q).await;
    assert_eq!(again.usage().await, (44, 2));
}

#[tokio::test]
async fn key_count_quota_is_enforced() {
    let kv = shared();
    let s = scoped(
        &kv,
        "q",
        Quota {
            max_bytes: None,
            max_keys: Some(2),
        },
    )
    .await;
    s.set(b"a", b"1").await.unwrap();
    s.set(b"b", b"1").await.unwrap();
    s.set(b"a", b"2").await.unwrap();
    let err = s.set(b"c", b"1").await.unwrap_err();
    assert!(matches!(
        err,
        KvError::QuotaExceeded {
            kind: QuotaKind::Keys,
            limit: 2,
            would_use: 3,
            ..
        }
    ));
    assert!(matches!(
        s.compare_and_swap(b"c", None, Some(b"1")).await,
        Err(KvError::QuotaExceeded {
            kind: QuotaKind::Keys,
            ..
        })
    ));
    assert!(s.compare_and_swap(b"a", Some(b"2"), None).await.unwrap());
    s.set(b"c", b"1").await.unwrap();
}

#[tokio::test]
async fn scoped_paging_hides_the_namespace() {
    let kv = shared();
    let s = scoped(&kv, "p", Quota::default()).await;
    for i in 0..5u8 {
        s.set(&[b'k', i], b"v").await.unwrap();
    }
    let first = s.list(b"k", None, 2).await.unwrap();
    assert_eq!(first.keys, vec![vec![b'k', 0], vec![b'k', 1]]);
    let second = s.list(b"k", first.next.as_deref(), 10).await.unwrap();
    assert_eq!(second.keys.len(), 3);
    assert_eq!(second.next, None);
}

#[tokio::test]
async fn identities_link_resolve_and_unlink() {
    let ids = IdentityStore::new(shared());
    let alice = ids.create_user("alice").await.unwrap();
    assert!(ids.link("slack", "U123", &alice.id).await.unwrap());
    assert!(
        !ids.link("slack", "U123", &alice.id).await.unwrap(),
        "already linked"
    );
    assert_eq!(
        ids.resolve("slack", "U123").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(ids.resolve("slack", "U999").await.unwrap(), None);
    assert_eq!(ids.users().await.unwrap(), vec![alice.clone()]);
    assert!(matches!(
        ids.links(Some(&"p".repeat(300))).await,
        Err(KvError::BadKey { .. })
    ));
    let links = ids.links(Some("slack")).await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].user, alice.id);
    assert!(ids.unlink("slack", "U123").await.unwrap());
    assert_eq!(ids.resolve("slack", "U123").await.unwrap(), None);
    assert!(matches!(
        ids.link("slack", "", &alice.id).await,
        Err(KvError::BadKey { len: 0, .. })
    ));
    let ghost = capsid_core::PrincipalId::new();
    assert!(matches!(
        ids.link("slack", "U5", &ghost).await,
        Err(KvError::UnknownUser(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrapping_the_local_root_is_idempotent_under_concurrency() {
    let ids = IdentityStore::new(shared());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let ids = ids.clone();
            tokio::spawn(async move { ids.bootstrap_local_root().await.unwrap() })
        })
        .collect();
    let mut roots = Vec::new();
    for t in tasks {
        roots.push(t.await.unwrap());
    }
    assert!(
        roots.windows(2).all(|w| w[0] == w[1]),
        "one root for everyone"
    );
    assert_eq!(ids.bootstrap_local_root().await.unwrap(), roots[0]);
    assert_eq!(ids.links(Some("cli")).await.unwrap().len(), 1);
}
