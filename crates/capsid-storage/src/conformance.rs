//! The behaviour every [`KvStore`] backend must show, as cases a backend's own tests run
//! ([`every_case`]): the memory and SurrealKV backends here, JetStream in `capsid-lattice`.
//! Built only with the `conformance` feature; the cases panic on a failed expectation, as tests
//! do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use capsid_core::limits::{MAX_KV_KEY_BYTES, MAX_KV_LIST_LIMIT, MAX_KV_VALUE_BYTES};

use crate::{BatchOp, KvError, KvStore};

async fn set_get_delete_exists(kv: Arc<dyn KvStore>) {
    assert_eq!(kv.get(b"k").await.unwrap(), None);
    assert!(!kv.exists(b"k").await.unwrap());
    kv.set(b"k", b"v1").await.unwrap();
    kv.set(b"k", b"v2").await.unwrap();
    assert_eq!(kv.get(b"k").await.unwrap(), Some(b"v2".to_vec()));
    assert!(kv.exists(b"k").await.unwrap());
    kv.set(b"empty", b"").await.unwrap();
    assert_eq!(
        kv.get(b"empty").await.unwrap(),
        Some(Vec::new()),
        "empty value is not absence"
    );
    assert!(kv.delete(b"k").await.unwrap());
    assert!(!kv.delete(b"k").await.unwrap());
    assert_eq!(kv.get(b"k").await.unwrap(), None);
}

async fn list_pages_in_order_within_prefix(kv: Arc<dyn KvStore>) {
    for i in 0..25u8 {
        kv.set(&[b'p', i], &[i]).await.unwrap();
    }
    kv.set(b"o", b"before").await.unwrap();
    kv.set(b"q", b"after").await.unwrap();
    kv.set(&[0xff, 0xff], b"edge").await.unwrap();
    let mut all = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = kv.list(b"p", after.as_deref(), 10).await.unwrap();
        assert!(page.keys.len() <= 10);
        pages += 1;
        all.extend(page.keys);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(all, (0..25u8).map(|i| vec![b'p', i]).collect::<Vec<_>>());
    let edge = kv.list(&[0xff], None, 5).await.unwrap();
    assert_eq!(edge.keys, vec![vec![0xff, 0xff]]);
    assert_eq!(edge.next, None);
    let exact = kv.list(b"p", None, 25).await.unwrap();
    assert_eq!(exact.keys.len(), 25);
    assert_eq!(exact.next, None, "no next page when exactly full");
}

async fn compare_and_swap_is_exact(kv: Arc<dyn KvStore>) {
    assert!(kv.compare_and_swap(b"c", None, Some(b"1")).await.unwrap());
    assert!(
        !kv.compare_and_swap(b"c", None, Some(b"2")).await.unwrap(),
        "present, expected absent"
    );
    assert!(
        !kv.compare_and_swap(b"c", Some(b"0"), Some(b"2"))
            .await
            .unwrap()
    );
    assert_eq!(kv.get(b"c").await.unwrap(), Some(b"1".to_vec()));
    assert!(kv.compare_and_swap(b"c", Some(b"1"), None).await.unwrap());
    assert_eq!(kv.get(b"c").await.unwrap(), None);
}

async fn concurrent_cas_increments_lose_nothing(kv: Arc<dyn KvStore>) {
    kv.set(b"n", &0u64.to_be_bytes()).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let cur = kv.get(b"n").await.unwrap().unwrap();
                        let n = u64::from_be_bytes(cur.as_slice().try_into().unwrap());
                        if kv
                            .compare_and_swap(b"n", Some(&cur), Some(&(n + 1).to_be_bytes()))
                            .await
                            .unwrap()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        kv.get(b"n").await.unwrap().unwrap(),
        200u64.to_be_bytes().to_vec()
    );
}

async fn batch_is_all_or_nothing(kv: Arc<dyn KvStore>) {
    kv.set(b"a", b"old").await.unwrap();
    let ok = [
        BatchOp::Set {
            key: b"a".to_vec(),
            value: b"new".to_vec(),
        },
        BatchOp::Set {
            key: b"b".to_vec(),
            value: b"1".to_vec(),
        },
        BatchOp::Delete {
            key: b"gone".to_vec(),
        },
    ];
    kv.batch(&ok).await.unwrap();
    assert_eq!(kv.get(b"a").await.unwrap(), Some(b"new".to_vec()));
    let bad = [
        BatchOp::Set {
            key: b"a".to_vec(),
            value: b"newer".to_vec(),
        },
        BatchOp::Set {
            key: vec![b'x'; MAX_KV_KEY_BYTES + 1],
            value: b"1".to_vec(),
        },
    ];
    assert!(matches!(kv.batch(&bad).await, Err(KvError::BadKey { .. })));
    assert_eq!(
        kv.get(b"a").await.unwrap(),
        Some(b"new".to_vec()),
        "nothing of a refused batch applied"
    );
}

async fn limits_are_typed_errors_and_write_nothing(kv: Arc<dyn KvStore>) {
    assert!(matches!(
        kv.set(b"", b"v").await,
        Err(KvError::BadKey { len: 0, .. })
    ));
    let long = vec![b'k'; MAX_KV_KEY_BYTES + 1];
    assert!(matches!(
        kv.set(&long, b"v").await,
        Err(KvError::BadKey { .. })
    ));
    assert!(matches!(kv.get(&long).await, Err(KvError::BadKey { .. })));
    let big = vec![0u8; MAX_KV_VALUE_BYTES + 1];
    assert!(matches!(
        kv.set(b"big", &big).await,
        Err(KvError::ValueTooLarge { .. })
    ));
    assert_eq!(kv.get(b"big").await.unwrap(), None);
    assert!(matches!(
        kv.list(b"", None, 0).await,
        Err(KvError::OutOfRange { .. })
    ));
    assert!(matches!(
        kv.list(b"", None, MAX_KV_LIST_LIMIT + 1).await,
        Err(KvError::OutOfRange { .. })
    ));
    let max_key = vec![b'k'; MAX_KV_KEY_BYTES];
    kv.set(&max_key, b"ok").await.unwrap();
    assert_eq!(kv.get(&max_key).await.unwrap(), Some(b"ok".to_vec()));
}

async fn binary_keys_are_just_bytes(kv: Arc<dyn KvStore>) {
    for key in [&b"\0"[..], b"a\0b", b"\xff\xfe", b"../etc", b"/"] {
        kv.set(key, key).await.unwrap();
        assert_eq!(kv.get(key).await.unwrap(), Some(key.to_vec()));
    }
    assert_eq!(
        kv.list(b"a", None, 10).await.unwrap().keys,
        vec![b"a\0b".to_vec()]
    );
}

async fn closed_store_refuses_everything(kv: Arc<dyn KvStore>) {
    kv.set(b"k", b"v").await.unwrap();
    kv.close().await.unwrap();
    assert!(matches!(kv.get(b"k").await, Err(KvError::Closed)));
    assert!(matches!(kv.set(b"k", b"v").await, Err(KvError::Closed)));
    assert!(matches!(kv.list(b"", None, 1).await, Err(KvError::Closed)));
}

/// Runs every case, each on a fresh store from `open`, naming each on stderr as it starts
/// (so a failure says which).
///
/// # Panics
///
/// When the backend does not behave as a `KvStore` must: that is the test failing.
pub async fn every_case<F, Fut>(mut open: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn KvStore>>,
{
    macro_rules! run {
        ($($case:ident),* $(,)?) => {
            $(
                eprintln!("kv conformance: {}", stringify!($case));
                $case(open().await).await;
            )*
        };
    }
    run!(
        set_get_delete_exists,
        list_pages_in_order_within_prefix,
        compare_and_swap_is_exact,
        concurrent_cas_increments_lose_nothing,
        batch_is_all_or_nothing,
        limits_are_typed_errors_and_write_nothing,
        binary_keys_are_just_bytes,
        closed_store_refuses_everything,
    );
}
