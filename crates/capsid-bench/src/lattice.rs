//! `lattice`: a tool call served by another host against the same call made locally plus
//! 1.3 × a raw NATS request/reply of the same payload, all in the same run on the same
//! cluster; and JetStream KV set/get through `ScopedKvStore` against the raw `async-nats` KV
//! store on the same bucket. A real 3-node `nats-server` cluster on loopback, two kernels
//! in this process. Needs the capsules built and `nats-server` installed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use capsid_capabilities::Permissions;
use capsid_capsule::CallControl;
use capsid_core::CapsuleId;
use capsid_integration_tests::lattice::{LATTICE, LatticeHost, lattice_config};
use capsid_kernel::{Door, Kernel, ToolCaller};
use capsid_lattice::local::LocalCluster;
use capsid_lattice::{JetStreamKvStore, Lattice};
use capsid_storage::{KvStore, Quota, ScopedKvStore};
use futures_util::StreamExt as _;

use crate::report::{Row, percentile};

/// Timed operations per side, after [`WARMUP`] untimed ones.
const CALLS: usize = 2_000;
const WARMUP: usize = 100;
const INPUT: &str = r#"{"name":"lattice"}"#;
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

    let mut samples: [Vec<Duration>; 4] = Default::default();
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
        if i >= WARMUP {
            for (kept, took) in samples
                .iter_mut()
                .zip([took_remote, took_local, raw[0], raw[1]])
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
    let [remote, local, routed, looped] = samples.map(sorted);
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
            &format!("local call {label} ({local_p:.0}) + 1.3 × {floor} {label} ({raw_p:.0})"),
            local_p + 1.3 * raw_p,
        ));
    }
    Ok(rows)
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
    let mut config = lattice_config(cluster.urls());
    config.replicas = 3;
    let lattice = Lattice::connect(&config, home.path()).await?;
    let bucket = "capsid_bench_kv";
    let store: Arc<dyn KvStore> = Arc::new(JetStreamKvStore::open(&lattice, bucket).await?);
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
            &format!("KV {op} via ScopedKvStore on JetStream p50 (R3, 256 B)"),
            percentile(&ours, 0.5),
            "µs",
            &format!("raw async-nats KV {op} p50"),
            percentile(&raw, 0.5),
        ));
    }
    let (ours, leader) = (sorted(ours_get), sorted(leader_get));
    rows.push(Row::new(
        "KV get via ScopedKvStore on JetStream p50 (R3, 256 B)",
        percentile(&ours, 0.5),
        "µs",
        "raw async-nats read through the stream leader p50 (the read capsid makes)",
        percentile(&leader, 0.5),
    ));
    Ok(rows)
}
