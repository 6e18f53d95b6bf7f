//! The JetStream KV backend on a real three-node JetStream cluster on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capsid_lattice::local::LocalCluster;
use capsid_lattice::{JetStreamKvStore, Lattice, LatticeConfig};
use capsid_storage::conformance::every_case;
use capsid_storage::{KvError, KvStore, Quota, QuotaKind, ScopedKvStore};

async fn lattice(cluster: &LocalCluster, replicas: usize) -> Lattice {
    let config = LatticeConfig {
        name: "test".into(),
        servers: cluster.urls(),
        replicas,
        credentials: None,
        trusted_hosts: Vec::new(),
        export: Vec::new(),
    };
    Lattice::connect(&config, std::path::Path::new("/"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_backend_conforms_on_a_replicated_bucket() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    let n = AtomicUsize::new(0);
    every_case(|| {
        // A bucket per case, so each starts empty.
        let bucket = format!("conformance_{}", n.fetch_add(1, Ordering::Relaxed));
        let lattice = lattice.clone();
        async move {
            Arc::new(JetStreamKvStore::open(&lattice, &bucket).await.unwrap()) as Arc<dyn KvStore>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_on_a_replicated_bucket_and_count_what_it_already_holds() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    let kv: Arc<dyn KvStore> = Arc::new(JetStreamKvStore::open(&lattice, "quota").await.unwrap());
    let quota = Quota {
        max_bytes: Some(100),
        max_keys: Some(3),
    };
    let scoped = ScopedKvStore::open(kv.clone(), "capsule-a", quota)
        .await
        .unwrap();
    scoped.set(b"k1", &[1; 40]).await.unwrap();
    scoped.set(b"k2", &[2; 40]).await.unwrap();
    // 84 bytes held: 20 more would pass 100.
    over_quota(scoped.set(b"k3", &[3; 20]).await, QuotaKind::Bytes);
    assert_eq!(
        scoped.get(b"k3").await.unwrap(),
        None,
        "nothing was written"
    );
    scoped.set(b"k3", &[3; 10]).await.unwrap();
    over_quota(scoped.set(b"k4", b"").await, QuotaKind::Keys);
    // Opened again (as after a restart), the namespace counts what the bucket holds.
    let reopened = ScopedKvStore::open(kv, "capsule-a", quota).await.unwrap();
    assert_eq!(reopened.usage().await, (96, 3));
    over_quota(reopened.set(b"k1", &[1; 60]).await, QuotaKind::Bytes);
    assert_eq!(reopened.get(b"k1").await.unwrap(), Some(vec![1; 40]));
}

/// Asserts `written` was refused for passing the `kind` quota.
fn over_quota(written: Result<(), KvError>, kind: QuotaKind) {
    match written {
        Err(KvError::QuotaExceeded { kind: over, .. }) if over == kind => {}
        other => panic!("expected the {kind} quota refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_hold_under_contention_on_three_replicas() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    // Two stores on two connections: two hosts.
    let other = self::lattice(&cluster, 3).await;
    let stores: Vec<Arc<dyn KvStore>> = vec![
        Arc::new(
            JetStreamKvStore::open(&lattice, "contention")
                .await
                .unwrap(),
        ),
        Arc::new(JetStreamKvStore::open(&other, "contention").await.unwrap()),
    ];
    stores[0].set(b"n", &0u64.to_be_bytes()).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let kv = stores[t % 2].clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let cur = kv.get(b"n").await.unwrap().unwrap();
                        let n = u64::from_be_bytes(cur.as_slice().try_into().unwrap());
                        let next = (n + 1).to_be_bytes();
                        if kv
                            .compare_and_swap(b"n", Some(&cur), Some(&next))
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
    let total = stores[1].get(b"n").await.unwrap().unwrap();
    assert_eq!(
        total,
        400u64.to_be_bytes(),
        "every acknowledged increment is there"
    );

    stores[0].set(b"once", b"x").await.unwrap();
    let deletes: Vec<_> = (0..8)
        .map(|t| {
            let kv = stores[t % 2].clone();
            tokio::spawn(async move { kv.delete(b"once").await.unwrap() })
        })
        .collect();
    let mut found = 0;
    for d in deletes {
        found += usize::from(d.await.unwrap());
    }
    assert_eq!(found, 1, "exactly one of the racing deletes found the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_batches_each_apply_whole_or_not_at_all() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    // Two stores on two connections (two hosts): batches on one store run one at a time,
    // across them they race.
    let other = self::lattice(&cluster, 3).await;
    let kv: Arc<dyn KvStore> = Arc::new(JetStreamKvStore::open(&lattice, "batches").await.unwrap());
    let kv2: Arc<dyn KvStore> = Arc::new(JetStreamKvStore::open(&other, "batches").await.unwrap());
    let long_key = vec![b'k'; 300];
    let tasks: Vec<_> = (0..6u8)
        .map(|t| {
            let kv = if t % 2 == 0 { kv.clone() } else { kv2.clone() };
            let long_key = long_key.clone();
            tokio::spawn(async move {
                for round in 0..5u8 {
                    let v = vec![t, round];
                    kv.batch(&[
                        capsid_storage::BatchOp::Set {
                            key: b"a".to_vec(),
                            value: v.clone(),
                        },
                        capsid_storage::BatchOp::Set {
                            key: long_key.clone(),
                            value: v.clone(),
                        },
                        capsid_storage::BatchOp::Set {
                            key: b"c".to_vec(),
                            value: v,
                        },
                    ])
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let a = kv.get(b"a").await.unwrap().unwrap();
    assert_eq!(kv.get(&long_key).await.unwrap().unwrap(), a);
    assert_eq!(kv.get(b"c").await.unwrap().unwrap(), a);
    let page = kv.list(b"", None, 10).await.unwrap();
    assert_eq!(
        page.keys,
        vec![b"a".to_vec(), b"c".to_vec(), long_key],
        "no intent is listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_killed_node() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    let kv = JetStreamKvStore::open(&lattice, "survive").await.unwrap();
    // The bucket's leader is the node to kill: its followers must elect another and lose
    // nothing the old one acknowledged.
    let mut stream = lattice.jetstream().get_stream("KV_survive").await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .unwrap()
        .leader
        .clone();
    let leader: usize = leader.unwrap().trim_start_matches('n').parse().unwrap();
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for i in 0..300u32 {
        if i == 100 {
            cluster.kill(leader);
        }
        if i == 200 {
            cluster.restart(leader).await.unwrap();
        }
        let key = format!("k{i}");
        match kv.set(key.as_bytes(), &i.to_be_bytes()).await {
            Ok(()) => acknowledged.push(i),
            Err(e) => refused.push(format!("k{i}: {e}")),
        }
    }
    // A write waits out the election of a new leader; on a loaded machine one taking longer
    // than that may refuse a few, never acknowledge and lose them.
    assert!(
        acknowledged
            .iter()
            .filter(|&&i| (100..200).contains(&i))
            .count()
            >= 90
            && acknowledged.iter().filter(|&&i| i >= 200).count() >= 90,
        "writes go on with the leader down and after it is back: refused {refused:?}"
    );
    for i in &acknowledged {
        let value = kv.get(format!("k{i}").as_bytes()).await.unwrap();
        assert_eq!(value, Some(i.to_be_bytes().to_vec()), "acknowledged k{i}");
    }
    assert!(lattice.status().state == capsid_lattice::LinkState::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_at_once_loses_nothing_acknowledged() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    let kv = JetStreamKvStore::open(&lattice, "crash").await.unwrap();
    // Overwrites (the bucket drops older values), deletions and batches (their intents
    // written and removed) before the crash.
    for round in 0..3u8 {
        for i in 0..10u8 {
            kv.set(&[b'k', i], &[round]).await.unwrap();
        }
        kv.batch(&[
            capsid_storage::BatchOp::Set {
                key: b"b1".to_vec(),
                value: vec![round],
            },
            capsid_storage::BatchOp::Set {
                key: b"b2".to_vec(),
                value: vec![round],
            },
        ])
        .await
        .unwrap();
    }
    assert!(kv.delete(&[b'k', 9]).await.unwrap());
    for n in 0..3 {
        cluster.kill(n);
    }
    cluster.restart_all().await.unwrap();
    let mut keys = Vec::new();
    for _ in 0..100 {
        // Until a leader is elected the bucket may not answer.
        if let Ok(page) = kv.list(b"", None, 100).await {
            keys = page.keys;
            if !keys.is_empty() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut expected: Vec<Vec<u8>> = (0..9u8).map(|i| vec![b'k', i]).collect();
    expected.extend([b"b1".to_vec(), b"b2".to_vec()]);
    expected.sort();
    assert_eq!(keys, expected);
    for key in &expected {
        assert_eq!(kv.get(key).await.unwrap(), Some(vec![2]), "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_jetstream_cannot_place_is_waited_for_then_refused_saying_why() {
    // Three replicas on a cluster of two: JetStream has no suitable peers, as while a cluster
    // forms; the open tries again until the failover wait is over.
    let cluster = LocalCluster::start(2).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    let started = std::time::Instant::now();
    let Err(err) = JetStreamKvStore::open(&lattice, "unplaced").await else {
        panic!("three replicas cannot be placed on two nodes");
    };
    let err = err.to_string();
    assert!(
        started.elapsed() >= capsid_core::limits::LATTICE_FAILOVER_WAIT,
        "refused before the wait was over: {err}"
    );
    assert!(
        err.contains("jetstream:unplaced")
            && err.contains("no suitable peers")
            && err.contains("are 3 JetStream nodes of the cluster up?"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_is_made_once_the_forming_cluster_it_waits_for_has_formed() {
    // Two of three nodes up, the third never seen yet: three replicas cannot be placed until
    // it joins, and the open waits for it.
    let mut cluster = LocalCluster::start_forming(3, 2).await.unwrap();
    let lattice = lattice(&cluster, 3).await;
    let opening = tokio::spawn(async move {
        let store = JetStreamKvStore::open(&lattice, "formed").await?;
        Ok::<_, capsid_storage::KvError>((store, lattice))
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !opening.is_finished(),
        "the open ended before the cluster formed: {:?}",
        opening.await.unwrap().map(|_| ())
    );
    cluster.restart(2).await.unwrap();
    let (store, _lattice) = opening
        .await
        .unwrap()
        .expect("the bucket is made once the third node joined");
    store.set(b"k", b"v").await.unwrap();
    assert_eq!(store.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
}
