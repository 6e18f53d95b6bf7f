//! `http`: a capsule's outbound GET (the `fetch` sample, `wstd` over `wasi:http`, through
//! capsid's checks and audit) against a native hyper client doing the same request to the
//! same loopback server in the same run, plus the durable audit append each allowed request
//! waits for. Needs the capsules built (`cargo xtask bench http` builds them first).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use capsid_audit::{Decision, Record};
use capsid_core::Principal;
use capsid_integration_tests::Runtime;
use capsid_integration_tests::web::WebServer;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::report::{Row, percentile};

/// Timed requests of the small body, after [`WARMUP`] untimed ones.
const REQUESTS: usize = 400;
const WARMUP: usize = 40;
/// Downloads of the large body; the median is kept.
const DOWNLOADS: usize = 5;
const SMALL: u64 = 1024;
const LARGE: u64 = 16 << 20;

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(async {
        let web = WebServer::start().await;
        let rt = Runtime::new().await;
        rt.load_fetch(&[web.url("http", "")], "").await;
        let small = web.url("http", &format!("/bytes/{SMALL}"));
        let large = web.url("http", &format!("/bytes/{LARGE}"));

        let mut capsule = Vec::with_capacity(REQUESTS);
        let mut native = Vec::with_capacity(REQUESTS);
        let mut append = Vec::with_capacity(REQUESTS);
        for i in 0..WARMUP + REQUESTS {
            // Interleaved, so both sides see the same machine.
            let c = timed(capsule_get(&rt, &small, SMALL)).await?;
            let n = timed(native_get(&small, SMALL)).await?;
            let a = timed(durable_append(&rt)).await?;
            if i >= WARMUP {
                capsule.push(c);
                native.push(n);
                append.push(a);
            }
        }
        for v in [&mut capsule, &mut native, &mut append] {
            v.sort();
        }
        let (c50, n50, a50) = (
            percentile(&capsule, 0.5),
            percentile(&native, 0.5),
            percentile(&append, 0.5),
        );
        let floor = "native hyper GET + durable audit append p50";
        let mut rows = vec![
            Row::new("fetch.get 1 KiB p50", c50, "µs", floor, n50 + a50),
            Row::new(
                "fetch.get 1 KiB p99",
                percentile(&capsule, 0.99),
                "µs",
                "native hyper GET + durable audit append p99",
                percentile(&native, 0.99) + percentile(&append, 0.99),
            ),
            Row::new("native hyper GET 1 KiB p50", n50, "µs", "itself", n50),
            Row::new("durable audit append p50", a50, "µs", "itself", a50),
        ];

        let mut capsule = Vec::with_capacity(DOWNLOADS);
        let mut native = Vec::with_capacity(DOWNLOADS);
        for _ in 0..DOWNLOADS {
            capsule.push(timed(capsule_get(&rt, &large, LARGE)).await?);
            native.push(timed(native_get(&large, LARGE)).await?);
        }
        capsule.sort();
        native.sort();
        let mib_per_s = |d: Duration| {
            #[allow(clippy::cast_precision_loss)]
            let mib = LARGE as f64 / f64::from(1 << 20);
            mib / d.as_secs_f64()
        };
        rows.push(Row::new(
            "fetch.get 16 MiB throughput",
            mib_per_s(capsule[DOWNLOADS / 2]),
            "MiB/s",
            "native hyper GET 16 MiB",
            mib_per_s(native[DOWNLOADS / 2]),
        ));
        Ok(rows)
    })
}

async fn timed(work: impl Future<Output = Result<()>>) -> Result<Duration> {
    let start = Instant::now();
    work.await?;
    Ok(start.elapsed())
}

/// The capsule fetches `url`, reading the whole body (and keeping none of it).
async fn capsule_get(rt: &Runtime, url: &str, want: u64) -> Result<()> {
    let input = serde_json::json!({ "url": url, "keep": 0 }).to_string();
    let out = rt
        .registry
        .call_tool(&capsid_integration_tests::id("fetch"), "get", &input)
        .await?;
    let answer: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        answer["status"] == 200 && answer["bytes"] == want,
        "fetch answered {answer}"
    );
    Ok(())
}

/// What the capsule's request costs the host at the least: a new connection, one HTTP/1.1
/// exchange, the body read to its end.
async fn native_get(url: &str, want: u64) -> Result<()> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri.authority().context("no authority")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, authority.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    ensure!(response.status() == 200, "status {}", response.status());
    let mut body = response.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            got += data.len() as u64;
        }
    }
    ensure!(got == want, "read {got} bytes");
    drop(sender);
    conn.await??;
    Ok(())
}

/// One durable append to the runtime's audit log, as each allowed request makes.
async fn durable_append(rt: &Runtime) -> Result<()> {
    let record = Record::new(
        Principal::System,
        capsid_audit::action::HTTP_REQUEST,
        "net://http/127.0.0.1/1",
        Decision::Allow,
    )?;
    rt.audit.append(rt.chain, record).await?;
    Ok(())
}
