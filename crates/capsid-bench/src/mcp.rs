//! `mcp`: a `tools/call` round trip through the real `capsid mcp serve` (a child process, an
//! rmcp client on its stdio) against the same call over the daemon's socket (`tool.call`), and
//! calls per second with 8 concurrent Streamable HTTP sessions against 8 daemon-socket
//! clients. The daemon runs in this process; the tool is `hello.greet`, granted to the `mcp`
//! user both ways go through. Then an `[mcp]` capsule's call against a bare MCP client
//! (`mcp_capsule.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsid_capabilities::Permissions;
use capsid_core::{CapsidHome, CapsuleId};
use capsid_kernel::daemon::{DaemonOptions, RunFiles, serve};
use capsid_kernel::{Kernel, KernelConfig};
use capsid_protocol::Client;
use capsid_protocol::methods::{DaemonStop, ToolCall, ToolCallParams, Via};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::report::{Row, percentile};

/// Round trips measured for latency, per side.
const LATENCY_TRIPS: usize = 3_000;
/// Calls per session in the throughput rows.
const CALLS_PER_SESSION: usize = 1_500;
/// Concurrent sessions (and daemon clients) in the throughput rows.
const SESSIONS: usize = 8;

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(rows())
}

/// The `capsid` binary `cargo xtask bench mcp` built.
pub(crate) fn capsid_bin() -> Result<PathBuf> {
    let bin = PathBuf::from(std::env::var("CAPSID_BIN").context(
        "CAPSID_BIN is not set: run this group through `cargo xtask bench <group>`, which builds capsid",
    )?);
    if !bin.is_file() {
        bail!("CAPSID_BIN {} is not a file", bin.display());
    }
    Ok(bin)
}

fn greet_params() -> Result<ToolCallParams> {
    Ok(ToolCallParams {
        capsule: CapsuleId::new("hello")?,
        tool: "greet".into(),
        input: json!({ "name": "bench" }),
        as_user: Some("mcp".into()),
        client: None,
        via: Via::Daemon,
        approvals: false,
    })
}

fn mcp_greet() -> CallToolRequestParams {
    let mut arguments = rmcp::model::JsonObject::new();
    arguments.insert("name".into(), json!("bench"));
    CallToolRequestParams::new("hello.greet").with_arguments(arguments)
}

#[allow(clippy::cast_precision_loss)]
fn per_second(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// A daemon in this process on a fresh home with `hello` installed and granted to `mcp`.
async fn daemon(
    tmp: &Path,
) -> Result<(
    PathBuf,
    Kernel,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    use std::os::unix::fs::PermissionsExt;
    let home = tmp.join("home");
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    capsid_integration_tests::trust_samples(&home);
    capsid_integration_tests::copy_capsule("hello", &home.join("capsules"));
    crate::mcp_capsule::install_fixture(&home)?;
    let files = RunFiles::acquire(&CapsidHome::at(&home))?;
    let kernel = Kernel::builder()
        .home(&home)
        .config(KernelConfig::default())
        .build()
        .await?;
    kernel
        .grant(
            kernel.mcp_principal(),
            None,
            "tool://hello/*",
            Permissions::EXEC,
        )
        .await?;
    let server = tokio::spawn(serve(kernel.clone(), files, DaemonOptions::default()));
    while !CapsidHome::at(&home).ready_path().exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((home, kernel, server))
}

async fn connect(home: &Path) -> Result<Client> {
    Ok(Client::connect(&CapsidHome::at(home), String::new()).await?)
}

async fn daemon_latencies(home: &Path) -> Result<Vec<Duration>> {
    let mut client = connect(home).await?;
    let params = greet_params()?;
    client.call::<ToolCall>(&params).await?;
    let mut out = Vec::with_capacity(LATENCY_TRIPS);
    for _ in 0..LATENCY_TRIPS {
        let t = Instant::now();
        client.call::<ToolCall>(&params).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

async fn stdio_latencies(home: &Path, bin: &Path) -> Result<Vec<Duration>> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--home")
        .arg(home)
        .args(["mcp", "serve", "--no-start"]);
    let session = ().serve(rmcp::transport::TokioChildProcess::new(cmd)?).await?;
    let check = session.call_tool(mcp_greet()).await?;
    if check.is_error == Some(true) {
        bail!("the MCP call failed: {check:?}");
    }
    let mut out = Vec::with_capacity(LATENCY_TRIPS);
    for _ in 0..LATENCY_TRIPS {
        let t = Instant::now();
        session.call_tool(mcp_greet()).await?;
        out.push(t.elapsed());
    }
    session.cancel().await?;
    out.sort();
    Ok(out)
}

async fn daemon_throughput(home: &Path) -> Result<f64> {
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        clients.push(connect(home).await?);
    }
    let params = greet_params()?;
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let params = params.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS_PER_SESSION {
                    client.call::<ToolCall>(&params).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(per_second(SESSIONS * CALLS_PER_SESSION, start.elapsed()))
}

/// `capsid mcp serve --http` on a free loopback port, with a token for `mcp`.
async fn http_server(home: &Path, bin: &Path) -> Result<(tokio::process::Child, String, String)> {
    let out = tokio::process::Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(["mcp", "token", "create", "--as", "mcp"])
        .output()
        .await?;
    if !out.status.success() {
        bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let mut child = tokio::process::Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(["mcp", "serve", "--no-start", "--http", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().context("no stderr")?).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_mins(1), lines.next_line())
            .await
            .context("the HTTP server did not say where it serves")??
            .context("the HTTP server ended before it served")?;
        if let Some(url) = line.strip_prefix("capsid mcp: serving ") {
            break url.to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url, token))
}

/// Which lifecycle an HTTP session follows.
#[derive(Clone, Copy)]
enum Protocol {
    /// 2026-07-28: `server/discover`, each request self-contained (served without a session).
    Current,
    /// `initialize` (2025-11-25): a session, its answers on SSE streams.
    Initialize,
}

async fn http_throughput(url: &str, token: &str, protocol: Protocol) -> Result<f64> {
    use rmcp::model::ProtocolVersion;
    use rmcp::service::{ClientLifecycleMode, serve_client_with_lifecycle};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
        let transport = StreamableHttpClientTransport::from_config(config);
        let lifecycle = match protocol {
            Protocol::Current => ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
            Protocol::Initialize => ClientLifecycleMode::Initialize,
        };
        let session = serve_client_with_lifecycle((), transport, lifecycle).await?;
        session.call_tool(mcp_greet()).await?;
        sessions.push(session);
    }
    let start = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            tokio::spawn(async move {
                for _ in 0..CALLS_PER_SESSION {
                    let r = session.call_tool(mcp_greet()).await?;
                    if r.is_error == Some(true) {
                        bail!("an HTTP call failed: {r:?}");
                    }
                }
                session.cancel().await?;
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(per_second(SESSIONS * CALLS_PER_SESSION, start.elapsed()))
}

async fn rows() -> Result<Vec<Row>> {
    let bin = capsid_bin()?;
    let tmp = tempfile::tempdir()?;
    let (home, kernel, server) = daemon(tmp.path()).await?;

    let ours = stdio_latencies(&home, &bin).await?;
    let floor = daemon_latencies(&home).await?;
    let mut rows = Vec::new();
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row::new(
            &format!("tools/call over stdio through the bridge {label}"),
            percentile(&ours, p),
            "µs",
            &format!("tool.call over the daemon socket {label}"),
            percentile(&floor, p),
        ));
    }

    let (mut child, url, token) = http_server(&home, &bin).await?;
    let current = http_throughput(&url, &token, Protocol::Current).await?;
    let legacy = http_throughput(&url, &token, Protocol::Initialize).await?;
    child.kill().await?;
    let direct = daemon_throughput(&home).await?;
    for (label, http) in [("2026-07-28", current), ("2025-11-25 sessions", legacy)] {
        rows.push(Row::new(
            &format!("tools/call, {SESSIONS} HTTP clients, {label}"),
            http,
            "calls/s",
            &format!("tool.call, {SESSIONS} daemon-socket clients"),
            direct,
        ));
    }

    rows.extend(crate::mcp_capsule::rows(&kernel, tmp.path()).await?);

    let mut stop = connect(&home).await?;
    stop.ask::<DaemonStop>().await?;
    server.await??;
    Ok(rows)
}
