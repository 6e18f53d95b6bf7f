//! `kernel`: a `status` round trip over the daemon's socket against a raw Unix-socket echo
//! of the same frame sizes (latency with one client, throughput with 1 and 32), event bus
//! publish → deliver against a bare tokio channel, and boot to ready with the sample
//! capsules, cold and with a warm compile cache.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capsid_core::CapsidHome;
use capsid_kernel::daemon::{DaemonOptions, RunFiles, serve};
use capsid_kernel::{Kernel, KernelConfig};
use capsid_protocol::frame::{read_frame, write_frame};
use capsid_protocol::methods::{DaemonStop, Status};
use capsid_protocol::{Hello, Method, NoParams, Request};
use tokio::net::{UnixListener, UnixStream};

use crate::report::{Row, percentile};

/// Round trips measured for latency, per side.
const LATENCY_TRIPS: usize = 20_000;
/// Requests per client in the throughput rows.
const REQUESTS_PER_CLIENT: usize = 4_000;
/// Events in the bus rows.
const EVENTS: usize = 2_000_000;
/// The subscriber's queue (the bus's largest), and the raw channel's.
const BUS_QUEUE: usize = 4096;
/// The sample capsules booted.
const SAMPLES: &[&str] = &["hello", "counter", "notes", "echo", "runner"];

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(async {
        let mut rows = socket_rows().await?;
        rows.extend(bus_rows().await?);
        rows.extend(boot_rows().await?);
        Ok(rows)
    })
}

/// A fresh 0700 home in `tmp`.
fn new_home(tmp: &Path) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let home = tmp.join("home");
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    capsid_integration_tests::trust_samples(&home);
    Ok(home)
}

/// The frame body of request `id` for `M`, which takes no params.
fn request_body<M: Method<Params = NoParams>>(id: u64) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&Request::new::<M>(id, &NoParams {})?)?)
}

async fn hello(socket: &Path, token: &str) -> Result<UnixStream> {
    let mut s = UnixStream::connect(socket).await?;
    let hello = Hello {
        protocol: capsid_core::limits::DAEMON_PROTOCOL_VERSION,
        token: token.to_owned(),
        fingerprint: String::new(),
    };
    write_frame(&mut s, &serde_json::to_vec(&hello)?).await?;
    read_frame(&mut s).await?.context("no welcome")?;
    Ok(s)
}

/// One request/response on `s`; the response's size.
async fn trip(s: &mut UnixStream, request: &[u8]) -> Result<usize> {
    write_frame(s, request).await?;
    Ok(read_frame(s).await?.context("closed")?.len())
}

/// An echo server answering each frame with `reply` (the daemon's answer's size).
fn echo_server(path: &Path, reply: Vec<u8>) -> Result<()> {
    let listener = UnixListener::bind(path)?;
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                while let Ok(Some(_)) = read_frame(&mut s).await {
                    if write_frame(&mut s, &reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(())
}

async fn latencies(s: &mut UnixStream, request: &[u8]) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(LATENCY_TRIPS);
    for _ in 0..LATENCY_TRIPS {
        let t = Instant::now();
        trip(s, request).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// Requests per second with `clients` connections each sending `REQUESTS_PER_CLIENT`.
async fn throughput(
    connect: impl Fn() -> tokio::task::JoinHandle<Result<UnixStream>>,
    clients: usize,
    request: &[u8],
) -> Result<f64> {
    let mut streams = Vec::new();
    for _ in 0..clients {
        streams.push(connect().await??);
    }
    let start = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let request = request.to_vec();
            tokio::spawn(async move {
                for _ in 0..REQUESTS_PER_CLIENT {
                    trip(&mut s, &request).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok((clients * REQUESTS_PER_CLIENT) as f64 / start.elapsed().as_secs_f64())
}

async fn socket_rows() -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let home = new_home(tmp.path())?;
    let files = RunFiles::acquire(&CapsidHome::at(&home))?;
    let token = files.token().to_owned();
    let socket = files.socket().to_owned();
    let kernel = Kernel::builder()
        .home(&home)
        .config(KernelConfig::default())
        .build()
        .await?;
    let server = tokio::spawn(serve(kernel, files, DaemonOptions::default()));
    while !CapsidHome::at(&home).ready_path().exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let request = request_body::<Status>(1)?;
    let mut s = hello(&socket, &token).await?;
    let reply_len = trip(&mut s, &request).await?;
    let echo_path = tmp.path().join("echo.sock");
    echo_server(&echo_path, vec![b' '; reply_len])?;
    let mut raw = UnixStream::connect(&echo_path).await?;

    let ours = latencies(&mut s, &request).await?;
    let floor = latencies(&mut raw, &request).await?;
    let mut rows = Vec::new();
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row::new(
            &format!("status round trip over the socket {label}"),
            percentile(&ours, p),
            "µs",
            &format!("raw Unix-socket echo, same frame sizes, {label}"),
            percentile(&floor, p),
        ));
    }
    for clients in [1, 32] {
        let (socket2, token2) = (socket.clone(), token.clone());
        let ours = throughput(
            || {
                let (socket, token) = (socket2.clone(), token2.clone());
                tokio::spawn(async move { hello(&socket, &token).await })
            },
            clients,
            &request,
        )
        .await?;
        let echo = echo_path.clone();
        let floor = throughput(
            || {
                let echo = echo.clone();
                tokio::spawn(async move { Ok(UnixStream::connect(&echo).await?) })
            },
            clients,
            &request,
        )
        .await?;
        rows.push(Row::new(
            &format!("status requests, {clients} clients"),
            ours,
            "requests/s",
            &format!("raw Unix-socket echo, {clients} clients"),
            floor,
        ));
    }
    drop((s, raw));
    let mut stop = hello(&socket, &token).await?;
    trip(&mut stop, &request_body::<DaemonStop>(2)?).await?;
    server.await??;
    Ok(rows)
}

async fn bus_rows() -> Result<Vec<Row>> {
    let bus = capsid_events::EventBus::new();
    let mut sub = bus.subscribe("bench.*", BUS_QUEUE)?;
    let payload = b"{\"n\":1}".to_vec();
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while n < EVENTS {
            if sub.recv().await.is_none() {
                break;
            }
            n += 1;
        }
        n
    });
    let mut sent = 0;
    while sent < EVENTS {
        let d = bus.publish("bench.tick", payload.clone(), None)?;
        if d.delivered == 1 {
            sent += 1;
        } else {
            // The subscriber's queue is full: let it catch up (nothing is counted as sent).
            tokio::task::yield_now().await;
        }
    }
    let got = consumer.await?;
    anyhow::ensure!(got == EVENTS, "delivered {got} of {EVENTS}");
    #[allow(clippy::cast_precision_loss)]
    let ours = EVENTS as f64 / start.elapsed().as_secs_f64();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Vec<u8>>>(BUS_QUEUE);
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while n < EVENTS && rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    for _ in 0..EVENTS {
        tx.send(Arc::new(payload.clone())).await?;
    }
    let got = consumer.await?;
    anyhow::ensure!(got == EVENTS, "raw delivered {got}");
    #[allow(clippy::cast_precision_loss)]
    let floor = EVENTS as f64 / start.elapsed().as_secs_f64();
    Ok(vec![Row::new(
        "event bus publish → deliver, 1 subscriber",
        ours,
        "events/s",
        "tokio mpsc send → recv of the same payload",
        floor,
    )])
}

async fn boot_once(home: &Path) -> Result<(f64, usize)> {
    let config = KernelConfig {
        dev: true,
        ..KernelConfig::default()
    };
    let start = Instant::now();
    let kernel = Kernel::builder().home(home).config(config).build().await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let ready = kernel.status().ready;
    kernel.shutdown().await;
    Ok((ms, ready))
}

async fn boot_rows() -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let home = new_home(tmp.path())?;
    let capsules = home.join("capsules");
    std::fs::create_dir_all(&capsules)?;
    for name in SAMPLES {
        capsid_integration_tests::copy_capsule(name, &capsules);
    }
    let (cold, ready) = boot_once(&home).await?;
    anyhow::ensure!(ready == SAMPLES.len(), "cold boot: {ready} capsules ready");
    let (hot, ready) = boot_once(&home).await?;
    anyhow::ensure!(ready == SAMPLES.len(), "warm boot: {ready} capsules ready");

    // The floor of the cold boot: wasmtime compiling the same components, nothing else.
    let engine = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    for name in SAMPLES {
        let wasm = std::fs::read(
            capsid_integration_tests::capsules_dir()
                .join(name)
                .join(format!("{name}.wasm")),
        )?;
        wasmtime::component::Component::new(&engine, &wasm).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let compile = start.elapsed().as_secs_f64() * 1e3;
    Ok(vec![
        Row::new(
            "boot to ready, 5 samples, cold compile cache",
            cold,
            "ms",
            "raw wasmtime compile of the 5 components",
            compile,
        ),
        Row::new(
            "boot to ready, 5 samples, warm compile cache",
            hot,
            "ms",
            "boot to ready, cold compile cache",
            cold,
        ),
    ])
}
