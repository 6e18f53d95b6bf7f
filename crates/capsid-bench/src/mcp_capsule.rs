//! `mcp` (continued): a tool call to an `[mcp]` capsule's server (`mcp-fixture good`, an
//! rmcp server) through the kernel, as a user holding `tool://fixture/*` (the grant check,
//! the durable records before and after, the supervised server's connection), against the
//! same call from a bare rmcp client to its own copy of the same server; and one durable
//! audit append on the same disk, the part of the difference the records cost.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsid_audit::{AuditLog, ChainId, Decision, Record};
use capsid_capabilities::Permissions;
use capsid_capsule::{CallControl, exec_resource};
use capsid_core::{CapsuleId, Principal, SessionId};
use capsid_crypto::KeyPair;
use capsid_kernel::{Door, Kernel, ToolCaller};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::json;

use crate::report::{Row, percentile};

/// Round trips measured per side.
const TRIPS: usize = 2_000;
/// Appends timed for the audit part.
const APPENDS: usize = 500;

/// The fixture server `cargo xtask bench mcp` built.
fn fixture_bin() -> Result<PathBuf> {
    let bin = PathBuf::from(std::env::var("CAPSID_MCP_FIXTURE").context(
        "CAPSID_MCP_FIXTURE is not set: run this group through `cargo xtask bench mcp`",
    )?);
    if !bin.is_file() {
        bail!("CAPSID_MCP_FIXTURE {} is not a file", bin.display());
    }
    Ok(bin)
}

/// Writes the `fixture` capsule into `home`'s capsules.
pub(crate) fn install_fixture(home: &Path) -> Result<()> {
    let bin = fixture_bin()?;
    let dir = home.join("capsules").join("fixture");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("Capsule.toml"),
        format!(
            "[package]\nname = \"fixture\"\nversion = \"1.0.0\"\n\n[mcp]\ncommand = [\"{}\", \"good\"]\n",
            bin.display()
        ),
    )?;
    capsid_integration_tests::sign(&dir);
    Ok(())
}

fn echo_params() -> CallToolRequestParams {
    let mut arguments = rmcp::model::JsonObject::new();
    arguments.insert("text".into(), json!("bench"));
    CallToolRequestParams::new("echo").with_arguments(arguments)
}

async fn bare_latencies() -> Result<Vec<Duration>> {
    let mut cmd = tokio::process::Command::new(fixture_bin()?);
    cmd.arg("good");
    let session = ().serve(rmcp::transport::TokioChildProcess::new(cmd)?).await?;
    session.call_tool(echo_params()).await?;
    let mut out = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        let t = Instant::now();
        session.call_tool(echo_params()).await?;
        out.push(t.elapsed());
    }
    session.cancel().await?;
    out.sort();
    Ok(out)
}

/// Grants the fixture's program, loads it, accepts its tools and grants them to `mcp`.
async fn ready_fixture(kernel: &Kernel) -> Result<CapsuleId> {
    let name = CapsuleId::new("fixture")?;
    let bin = fixture_bin()?;
    let program = bin.to_str().context("fixture path is not UTF-8")?;
    kernel
        .grant(
            kernel.principal(),
            Some(name.clone()),
            &exec_resource(program),
            Permissions::EXEC,
        )
        .await?;
    kernel.load(&name).await?;
    let mut waited = 0;
    loop {
        let pending: Vec<String> = kernel
            .review(&name)?
            .into_iter()
            .map(|p| p.digest)
            .collect();
        if !pending.is_empty() {
            kernel.accept_review(&name, &pending).await?;
            break;
        }
        waited += 1;
        if waited > 2_000 {
            bail!("the fixture never listed its tools");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kernel
        .grant(
            kernel.mcp_principal(),
            None,
            "tool://fixture/*",
            Permissions::EXEC,
        )
        .await?;
    Ok(name)
}

async fn capsid_latencies(kernel: &Kernel, name: &CapsuleId) -> Result<Vec<Duration>> {
    let caller = ToolCaller {
        principal: kernel.mcp_principal(),
        door: Door::McpHttp,
        client: Some("bench".into()),
    };
    let control = CallControl::new();
    let input = r#"{"text":"bench"}"#;
    kernel
        .call_tool_as(&caller, name, "echo", input, &control)
        .await?;
    let mut out = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        let t = Instant::now();
        kernel
            .call_tool_as(&caller, name, "echo", input, &control)
            .await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// One durable append at a time on a fresh log beside the home.
async fn append_latencies(dir: &Path) -> Result<Vec<Duration>> {
    let log = AuditLog::open(dir.join("append-floor.db"), KeyPair::generate()?)?;
    let chain = ChainId::Session(SessionId::new());
    let mut out = Vec::with_capacity(APPENDS);
    for i in 0..APPENDS {
        let record = Record::new(
            Principal::System,
            "bench.append",
            "bench://mcp",
            Decision::Info,
        )?
        .details(&json!({ "i": i }))?;
        let t = Instant::now();
        log.append(chain, record).await?;
        out.push(t.elapsed());
    }
    log.close().await?;
    out.sort();
    Ok(out)
}

/// The rows: through capsid against the bare client (p50, p99), the append, and the target.
pub(crate) async fn rows(kernel: &Kernel, tmp: &Path) -> Result<Vec<Row>> {
    let name = ready_fixture(kernel).await?;
    let ours = capsid_latencies(kernel, &name).await?;
    let bare = bare_latencies().await?;
    let append = append_latencies(tmp).await?;
    let mut rows = Vec::new();
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row::new(
            &format!("[mcp] capsule tool call through the kernel {label}"),
            percentile(&ours, p),
            "µs",
            &format!("the same call, bare rmcp client to the same server {label}"),
            percentile(&bare, p),
        ));
    }
    let append_p50 = percentile(&append, 0.5);
    rows.push(Row::new(
        "one durable audit append p50 (same disk)",
        append_p50,
        "µs",
        "none (the part of the target the records cost)",
        0.0,
    ));
    rows.push(Row::new(
        "[mcp] capsule tool call through the kernel p50",
        percentile(&ours, 0.5),
        "µs",
        "target: 1.3 x bare p50 + one durable append",
        1.3 * percentile(&bare, 0.5) + append_p50,
    ));
    // Every tool call is recorded durably before it runs and again before its caller hears
    // the outcome: two appends in sequence, the second after the call.
    rows.push(Row::new(
        "[mcp] capsule tool call through the kernel p50",
        percentile(&ours, 0.5),
        "µs",
        "1.3 x bare p50 + the two durable appends a call makes",
        1.3 * percentile(&bare, 0.5) + 2.0 * append_p50,
    ));
    Ok(rows)
}
