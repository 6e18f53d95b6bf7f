//! The call protocol on a real `nats-server`: a caller hands its call to the first serving
//! host that asks, names that host to any other (a replayed copy's host, or the same host
//! asking again), and once the call has ended answers nobody.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capsid_crypto::KeyPair;
use capsid_lattice::calls::{self, CallMeta, CallOutcome, CallQueue, IncomingCall, NotTaken};
use capsid_lattice::local::LocalCluster;
use capsid_lattice::{Lattice, LatticeConfig, Refusal, Seal};
use futures_util::StreamExt as _;

const LATTICE: &str = "calls";

/// A host: its connection and its seal, trusting `keys`.
async fn host(
    cluster: &LocalCluster,
    key: &Arc<KeyPair>,
    keys: &[Arc<KeyPair>],
) -> (Lattice, Seal) {
    let config = LatticeConfig {
        name: LATTICE.into(),
        servers: cluster.urls(),
        replicas: 1,
        credentials: None,
        trusted_hosts: Vec::new(),
        export: Vec::new(),
    };
    let lattice = Lattice::connect(&config, std::path::Path::new("/"))
        .await
        .unwrap();
    let trusted: Vec<_> = keys.iter().map(|k| k.public_key()).collect();
    (lattice, Seal::new(LATTICE, key.clone(), &trusted))
}

/// Serves `hello` as `host`; returns once the subscription reached the server.
async fn serve(host: &(Lattice, Seal)) -> CallQueue {
    let queue = calls::serve(&host.0, &host.1, "hello").await.unwrap();
    host.0.client().flush().await.unwrap();
    queue
}

async fn next_call(queue: &mut CallQueue) -> IncomingCall {
    tokio::time::timeout(Duration::from_secs(10), queue.next())
        .await
        .expect("a call arrives")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_handed_to_the_first_host_that_asks_and_to_no_other() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let keys: Vec<Arc<KeyPair>> = (0..4)
        .map(|_| Arc::new(KeyPair::generate().unwrap()))
        .collect();
    let a = host(&cluster, &keys[0], &keys).await;
    let b = host(&cluster, &keys[1], &keys).await;
    let c = host(&cluster, &keys[2], &keys).await;
    let d = host(&cluster, &keys[3], &keys).await;
    let mut spy =
        a.0.client()
            .subscribe(format!("capsid.{LATTICE}.call.hello"))
            .await
            .unwrap();
    let mut served_by_b = serve(&b).await;

    let meta = CallMeta {
        capsule: "hello".into(),
        tool: "greet".into(),
        principal: "user:someone".into(),
        client: None,
        deadline_ms: None,
        reply_to: String::new(),
    };
    let (lattice, seal) = a.clone();
    let caller = tokio::spawn(async move {
        let input = Bytes::from_static(b"{}");
        calls::call(&lattice, &seal, &meta, input, None, std::future::pending()).await
    });
    let at_b = next_call(&mut served_by_b).await;
    let copy = spy.next().await.unwrap();
    // From here on, only C hears the capsule's calls (the flush: B's unsubscribe reached the
    // server).
    drop(served_by_b);
    b.0.client().flush().await.unwrap();
    let mut served_by_c = serve(&c).await;

    at_b.replier
        .take()
        .await
        .expect("B asked first: the call is B's");
    let replay = || {
        let client = a.0.client();
        let (headers, body) = (copy.headers.clone().unwrap(), copy.payload.clone());
        let (subject, reply) = (copy.subject.clone(), copy.reply.clone().unwrap());
        async move {
            client
                .publish_with_reply_and_headers(subject, reply, headers, body)
                .await
                .unwrap();
        }
    };
    replay().await;
    let at_c = next_call(&mut served_by_c).await;
    assert_eq!(at_c.call.nonce, at_b.call.nonce, "C got the same call");
    assert_eq!(at_c.replier.take().await, Err(NotTaken::Elsewhere));
    // B asking again (as after a restart) is another request: not the one handed the call.
    assert_eq!(at_b.replier.take().await, Err(NotTaken::Elsewhere));

    at_b.replier
        .done(CallOutcome::Ok, Bytes::from_static(b"hi"))
        .await;
    let answer = caller.await.unwrap().unwrap();
    assert_eq!(answer.host, b.1.host());
    assert_eq!(answer.output, Bytes::from_static(b"hi"));

    // A copy seen before is refused on sight; one reaching a host that never saw it finds
    // nobody to hand it over: the call has ended.
    replay().await;
    let seen = tokio::time::timeout(Duration::from_secs(10), served_by_c.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.unwrap_err(), Refusal::Replayed);
    drop(served_by_c);
    c.0.client().flush().await.unwrap();
    let mut served_by_d = serve(&d).await;
    replay().await;
    let at_d = next_call(&mut served_by_d).await;
    assert!(
        matches!(at_d.replier.take().await, Err(NotTaken::Unanswered(_))),
        "nobody hands over a call that ended"
    );
}
