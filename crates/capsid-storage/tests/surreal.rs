//! What only the durable backend has to show: data outlives the process's handle, a damaged
//! or busy directory is refused without being touched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use capsid_storage::{Durability, KvError, KvStore, Quota, ScopedKvStore, SurrealKvStore};

fn tree_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen_with_quota_recounted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    {
        let kv: Arc<dyn KvStore> = Arc::new(
            SurrealKvStore::open(&path, Durability::Synced)
                .await
                .unwrap(),
        );
        let s = ScopedKvStore::open(kv.clone(), "counter", Quota::default())
            .await
            .unwrap();
        s.set(b"n", b"41").await.unwrap();
        s.set(b"m", b"x").await.unwrap();
        kv.close().await.unwrap();
    }
    let kv: Arc<dyn KvStore> = Arc::new(
        SurrealKvStore::open(&path, Durability::Synced)
            .await
            .unwrap(),
    );
    let s = ScopedKvStore::open(kv.clone(), "counter", Quota::default())
        .await
        .unwrap();
    assert_eq!(s.get(b"n").await.unwrap(), Some(b"41".to_vec()));
    assert_eq!(s.usage().await, (3 + 2, 2));
    kv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_a_live_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    let first = SurrealKvStore::open(&path, Durability::Synced)
        .await
        .unwrap();
    let err = SurrealKvStore::open(&path, Durability::Synced)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KvError::Backend { ref path, .. } if path.ends_with("kv")),
        "{err}"
    );
    first.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_directory_is_refused_and_left_as_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    {
        let kv = SurrealKvStore::open(&path, Durability::Synced)
            .await
            .unwrap();
        for i in 0..100u32 {
            kv.set(&i.to_be_bytes(), b"value").await.unwrap();
        }
        kv.close().await.unwrap();
    }
    // Scribble over every manifest file.
    let mut damaged = 0;
    for (p, bytes) in tree_bytes(&path) {
        if p.to_string_lossy().contains("manifest") {
            std::fs::write(&p, vec![0xAB; bytes.len().max(64)]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "expected manifest files in {}", path.display());
    let before = tree_bytes(&path);
    let err = SurrealKvStore::open(&path, Durability::Synced)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let after: Vec<_> = tree_bytes(&path)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("LOCK"))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(p, _)| !p.ends_with("LOCK"))
        .collect();
    assert_eq!(after, before, "nothing repaired or removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_stay_confined_on_the_durable_backend() {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn KvStore> = Arc::new(
        SurrealKvStore::open(&dir.path().join("kv"), Durability::Buffered)
            .await
            .unwrap(),
    );
    let victim = ScopedKvStore::open(kv.clone(), "notes", Quota::default())
        .await
        .unwrap();
    victim.set(b"secret", b"s").await.unwrap();
    let quota = Quota {
        max_bytes: None,
        max_keys: Some(1),
    };
    let snoop = ScopedKvStore::open(kv.clone(), "note", quota)
        .await
        .unwrap();
    for key in [&b"ssecret"[..], b"\x01\x05notessecret", b"\0notes\0secret"] {
        assert_eq!(snoop.get(key).await.unwrap(), None);
    }
    assert!(snoop.list(b"", None, 100).await.unwrap().keys.is_empty());
    snoop.set(b"a", b"1").await.unwrap();
    assert!(matches!(
        snoop.set(b"b", b"1").await,
        Err(KvError::QuotaExceeded { .. })
    ));
    assert_eq!(snoop.get(b"b").await.unwrap(), None);
    kv.close().await.unwrap();
}
