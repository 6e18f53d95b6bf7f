//! `lattice`: a tool call served by another host against the same call made locally plus
//! 1.3 × a raw NATS request/reply of the same payload, all in the same run on the same
//! cluster, with the signing a call and its answer need against what that target leaves
//! beyond the local call and the raw round trip; and JetStream KV set/get through
//! `ScopedKvStore` against the raw `async-nats` KV store on the same bucket. A real 3-node
//! `nats-server` cluster on loopback, two kernels in this process. Needs the capsules built
//! and `nats-server` installed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use capsid_capabilities::Permissions;
use capsid_capsule::CallControl;
use capsid_core::CapsuleId;
use capsid_crypto::KeyPair;
use capsid_integration_tests::lattice::{LATTICE, LatticeHost, lattice_config};
use capsid_kernel::{Door, Kernel, ToolCaller};
use capsid_lattice::calls::CallMeta;
use capsid_lattice::local::LocalCluster;
use capsid_lattice::{JetStreamKvStore, Kind, Lattice, Seal};
use capsid_storage::{KvStore, Quota, ScopedKvStore};
use futures_util::StreamExt as _;

use crate::report::{Row, percentile};

/// Timed operations per side, after [`WARMUP`] untimed ones.
const CALLS: usize = 2_000;
const WARMUP: usize = 100;
const INPUT: &str = r#"{"name":"lattice"}"#;
/// The target's factor: a remote call within the local call plus this many raw round trips.
const TARGET_ROUND_TRIPS: f64 = 1.3;
/// A KV value as a capsule would keep a small record.
const VALUE: &[u8] = &[7; 256];

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(async {
        let cluster = LocalCluster::start(3).await?;
        let mut rows = calls(&cluster).await?;
        rows.extend(kv(&cluster).await?);
        Ok(rows)
    })
}

fn sorted(mut samples: Vec<Duration>) -> Vec<Duration> {
    samples.sort();
    samples
}

async fn calls(cluster: &LocalCluster) -> Result<Vec<Row>> {
    let (a_host, b_host) = (LatticeHost::new(&[]), LatticeHost::new(&["hello"]));
    // A and B on different nodes, as hosts on two machines would be, and the raw floor
    // between the same two nodes: every run measures the same path.
    let a = a_host.boot_with(pinned(cluster, &a_host, &b_host, 0)).await;
    let b = b_host.boot_with(pinned(cluster, &b_host, &a_host, 1)).await;
    // One user, granted on A (B trusts A): the same checks on both sides.
    let user = ToolCaller {
        principal: a.mcp_principal(),
        door: Door::McpHttp,
        client: None,
    };
    a.grant(
        user.principal,
        None,
        "tool://hello/greet",
        Permissions::EXEC,
    )
    .await?;
    let hello = CapsuleId::new("hello")?;
    let answer = wait_served(&a, &user, &hello).await?;

    // The raw floor: a requester on A's node and a responder on B's, answering with as many
    // bytes; and, as the floor was first measured, one connection answering itself (no hop
    // between nodes).
    let home = a_host.home.path();
    let on = |node: usize| lattice_config(vec![cluster.url(node)]);
    let asking = Lattice::connect(&on(0), home).await?;
    let serving = Lattice::connect(&on(1), home).await?;
    let reply = Bytes::from(answer.into_bytes());
    let routed = format!("capsid.{LATTICE}.bench.echo");
    let looped = format!("capsid.{LATTICE}.bench.echo-here");
    let echoes = [
        echo(&serving, &routed, reply.clone()).await?,
        echo(&asking, &looped, reply).await?,
    ];

    let signatures = Signatures::new()?;
    let mut samples: [Vec<Duration>; 5] = Default::default();
    for i in 0..WARMUP + CALLS {
        let start = Instant::now();
        a.call_tool_as(&user, &hello, "greet", INPUT, &CallControl::new())
            .await?;
        let took_remote = start.elapsed();
        let start = Instant::now();
        b.call_tool_as(&user, &hello, "greet", INPUT, &CallControl::new())
            .await?;
        let took_local = start.elapsed();
        let mut raw = [Duration::ZERO; 2];
        for (took, subject) in raw.iter_mut().zip([&routed, &looped]) {
            let start = Instant::now();
            asking
                .client()
                .request(subject.clone(), Bytes::from_static(INPUT.as_bytes()))
                .await?;
            *took = start.elapsed();
        }
        let took_signing = signatures.time_one_call()?;
        if i >= WARMUP {
            for (kept, took) in
                samples
                    .iter_mut()
                    .zip([took_remote, took_local, raw[0], raw[1], took_signing])
            {
                kept.push(took);
            }
        }
    }
    for echo in echoes {
        echo.abort();
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(call_rows(samples))
}

/// The call rows from the samples of each round: remote, local, raw between the nodes, raw
/// on one connection, signing.
fn call_rows(samples: [Vec<Duration>; 5]) -> Vec<Row> {
    let [remote, local, routed, looped, signing] = samples.map(sorted);
    let mut rows = Vec::new();
    for (label, p, raw, floor) in [
        (
            "p50",
            0.5,
            &routed,
            "raw NATS request/reply between the two nodes",
        ),
        (
            "p99",
            0.99,
            &routed,
            "raw NATS request/reply between the two nodes",
        ),
        (
            "p50",
            0.5,
            &looped,
            "raw NATS request/reply on one connection",
        ),
    ] {
        let (local_p, raw_p) = (percentile(&local, p), percentile(raw, p));
        rows.push(Row::new(
            &format!("hello.greet served by another host {label}"),
            percentile(&remote, p),
            "µs",
            &format!(
                "local call {label} ({local_p:.0}) + {TARGET_ROUND_TRIPS} × {floor} {label} \
                 ({raw_p:.0})"
            ),
            local_p + TARGET_ROUND_TRIPS * raw_p,
        ));
    }
    // What the target leaves a remote call beyond the local call and the raw round trip, and
    // what the signatures of its call and its answer alone take of it.
    let raw_p50 = percentile(&routed, 0.5);
    let allowance = TARGET_ROUND_TRIPS - 1.0;
    rows.push(Row::new(
        "a call and its answer signed and checked (Ed25519, in sequence) p50",
        percentile(&signing, 0.5),
        "µs",
        &format!(
            "the target's allowance beyond local + raw: {allowance:.1} × raw NATS \
             request/reply between the two nodes p50 ({raw_p50:.0})"
        ),
        allowance * raw_p50,
    ));
    rows
}

/// The signing a remote call cannot do without: A seals the call, B opens it, B seals the
/// answer, A opens it (each host's own seal, trusting the other, as on the lattice).
struct Signatures {
    a: Seal,
    b: Seal,
}

impl Signatures {
    fn new() -> Result<Self> {
        let (a_key, b_key) = (
            Arc::new(KeyPair::generate()?),
            Arc::new(KeyPair::generate()?),
        );
        Ok(Self {
            a: Seal::new(LATTICE, a_key.clone(), &[b_key.public_key()]),
            b: Seal::new(LATTICE, b_key, &[a_key.public_key()]),
        })
    }

    fn time_one_call(&self) -> Result<Duration> {
        let meta = CallMeta {
            capsule: "hello".into(),
            tool: "greet".into(),
            principal: "user:0123456789abcdef0123456789abcdef".into(),
            client: None,
            deadline_ms: None,
            reply_to: "_INBOX.0123456789abcdefghijkl.0123456789abcdefghijkl".into(),
        };
        let start = Instant::now();
        let call = self
            .a
            .seal(Kind::Call, &meta, Bytes::from_static(INPUT.as_bytes()));
        let opened = self
            .b
            .open::<CallMeta>(Kind::Call, Some(&call.headers), &call.body)
            .map_err(|e| anyhow!("the call did not open: {e}"))?;
        let done = serde_json::json!({
            "state": "done", "call": opened.nonce, "outcome": { "outcome": "ok" },
        });
        let answer = self
            .b
            .seal(Kind::Reply, &done, Bytes::from_static(b"Hello, lattice!"));
        self.a
            .open::<serde_json::Value>(Kind::Reply, Some(&answer.headers), &answer.body)
            .map_err(|e| anyhow!("the answer did not open: {e}"))?;
        Ok(start.elapsed())
    }
}

/// `host`'s configuration trusting `trusted`, connecting to `node` only.
fn pinned(
    cluster: &LocalCluster,
    host: &LatticeHost,
    trusted: &LatticeHost,
    node: usize,
) -> capsid_kernel::KernelConfig {
    let mut config = host.config(cluster, &[trusted], &[]);
    if let Some(lattice) = config.lattice.as_mut() {
        lattice.servers = vec![cluster.url(node)];
    }
    config
}

/// Answers every request on `subject` with `reply`, on `lattice`'s connection.
async fn echo(
    lattice: &Lattice,
    subject: &str,
    reply: Bytes,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut requests = lattice.client().subscribe(subject.to_owned()).await?;
    // The subscription reaches every node before the first request is timed.
    lattice.client().flush().await?;
    let responder = lattice.client().clone();
    Ok(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(to) = request.reply {
                let _ = responder.publish(to, reply.clone()).await;
            }
        }
    }))
}

/// Calls until B serves `hello` (it subscribes a moment after boot); the answer.
async fn wait_served(a: &Kernel, user: &ToolCaller, hello: &CapsuleId) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match a
            .call_tool_as(user, hello, "greet", INPUT, &CallControl::new())
            .await
        {
            Ok(answer) => return Ok(answer),
            Err(e) if Instant::now() > until => return Err(anyhow!("B never served hello: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn kv(cluster: &LocalCluster) -> Result<Vec<Row>> {
    let home = tempfile::tempdir()?;
    let bucket = "capsid_bench_kv";
    // Where the bucket's stream leader sits decides what a read costs (capsid reads through
    // it; async-nats's client reads the nearest replica): measured from its node, and from
    // another.
    let made = kv_client(cluster, None, home.path()).await?;
    JetStreamKvStore::open(&made, bucket).await?;
    let info = made
        .jetstream()
        .get_stream(format!("KV_{bucket}"))
        .await
        .context("async-nats cannot open the bucket's stream")?
        .get_info()
        .await?;
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .and_then(|name| name.strip_prefix('n').and_then(|n| n.parse::<usize>().ok()))
        .context("the bucket's stream has no leader named as LocalCluster names nodes")?;
    let mut rows = Vec::new();
    for (node, placed) in [
        (leader, "client on the leader's node"),
        (
            (leader + 1) % cluster.urls().len(),
            "client on another node",
        ),
    ] {
        let lattice = kv_client(cluster, Some(node), home.path()).await?;
        rows.extend(kv_from(&lattice, bucket, placed).await?);
    }
    Ok(rows)
}

/// A lattice connection with three replicas, to `node` or to any.
async fn kv_client(
    cluster: &LocalCluster,
    node: Option<usize>,
    home: &std::path::Path,
) -> Result<Lattice> {
    let servers = node.map_or_else(|| cluster.urls(), |n| vec![cluster.url(n)]);
    let mut config = lattice_config(servers);
    config.replicas = 3;
    Ok(Lattice::connect(&config, home).await?)
}

/// KV set and get on `bucket` through capsid and raw, from `lattice`'s node (`placed`).
async fn kv_from(lattice: &Lattice, bucket: &str, placed: &str) -> Result<Vec<Row>> {
    let store: Arc<dyn KvStore> = Arc::new(JetStreamKvStore::open(lattice, bucket).await?);
    let quota = Quota {
        max_bytes: Some(1 << 20),
        max_keys: Some(1024),
    };
    let scoped = ScopedKvStore::open(store, "bench", quota).await?;
    // The raw floor: async-nats's own KV client on the same bucket (a JetStream KV bucket,
    // as `nats kv` sees it).
    let raw = lattice
        .jetstream()
        .get_key_value(bucket)
        .await
        .context("async-nats cannot open the bucket")?;
    // The same read capsid makes, raw: the stream leader's last message on the key's
    // subject (async-nats's KV client reads from any replica instead, which may be behind).
    let stream = lattice
        .jetstream()
        .get_stream(format!("KV_{bucket}"))
        .await
        .context("async-nats cannot open the bucket's stream")?;
    let (mut ours_set, mut raw_set, mut ours_get, mut raw_get) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut leader_get = Vec::new();
    for i in 0..WARMUP + CALLS {
        let key = format!("k{}", i % 64);
        let start = Instant::now();
        scoped.set(key.as_bytes(), VALUE).await?;
        let s = start.elapsed();
        let start = Instant::now();
        raw.put(format!("raw.{key}"), Bytes::from_static(VALUE))
            .await?;
        let rs = start.elapsed();
        let start = Instant::now();
        let got = scoped.get(key.as_bytes()).await?;
        let g = start.elapsed();
        anyhow::ensure!(got.as_deref() == Some(VALUE), "read back another value");
        let start = Instant::now();
        let got = raw.get(format!("raw.{key}")).await?;
        let rg = start.elapsed();
        anyhow::ensure!(got.as_deref() == Some(VALUE), "raw read back another value");
        let start = Instant::now();
        let got = stream
            .get_last_raw_message_by_subject(&format!("$KV.{bucket}.raw.{key}"))
            .await?;
        let lg = start.elapsed();
        anyhow::ensure!(got.payload == VALUE, "the leader read back another value");
        if i >= WARMUP {
            leader_get.push(lg);
            ours_set.push(s);
            raw_set.push(rs);
            ours_get.push(g);
            raw_get.push(rg);
        }
    }
    let mut rows = Vec::new();
    for (op, ours, raw) in [
        ("set", ours_set, raw_set),
        ("get", ours_get.clone(), raw_get),
    ] {
        let (ours, raw) = (sorted(ours), sorted(raw));
        rows.push(Row::new(
            &format!("KV {op} via ScopedKvStore on JetStream p50 (R3, 256 B, {placed})"),
            percentile(&ours, 0.5),
            "µs",
            &format!("raw async-nats KV {op} p50"),
            percentile(&raw, 0.5),
        ));
    }
    let (ours, leader) = (sorted(ours_get), sorted(leader_get));
    rows.push(Row::new(
        &format!("KV get via ScopedKvStore on JetStream p50 (R3, 256 B, {placed})"),
        percentile(&ours, 0.5),
        "µs",
        "raw async-nats read through the stream leader p50 (the read capsid makes)",
        percentile(&leader, 0.5),
    ));
    Ok(rows)
}
