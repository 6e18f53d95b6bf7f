//! `process`: spawn + wait through `capsid-process` against `std::process::Command`, and a
//! child's output throughput through a ring against a raw pipe read, in the same run; the
//! pipeline rows are in `pipeline.rs`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use capsid_core::{CapsuleId, Principal};
use capsid_process::{Child, Owner, PersistentOptions, ProcessTable, RingPolicy, SpawnSpec};

use crate::report::Row;

/// Spawn + wait cycles per side.
const SPAWNS: u32 = 500;
/// Sandboxed spawn + wait cycles per side.
const SANDBOX_SPAWNS: u32 = 200;
/// Bytes the child writes for the throughput rows.
const OUTPUT_BYTES: u64 = 1 << 30;
/// Ring size for the throughput row.
const RING_BYTES: usize = 1 << 20;

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(async {
        let workspace = tempfile::tempdir()?;
        let mut rows = vec![spawn_row(workspace.path()).await?];
        rows.push(sandbox_row(workspace.path()).await?);
        rows.extend(output_rows(workspace.path()).await?);
        rows.extend(table_rows(workspace.path()).await?);
        rows.extend(crate::pipeline::rows(workspace.path()).await?);
        Ok(rows)
    })
}

#[allow(clippy::cast_precision_loss)]
fn rate(n: f64, start: Instant) -> f64 {
    n / start.elapsed().as_secs_f64()
}

async fn spawn_row(workspace: &std::path::Path) -> Result<Row> {
    let spec = SpawnSpec::new("/bin/true", workspace);
    // Interleave halves so both sides see the same machine state.
    let (mut ours, mut raw) = (0f64, 0f64);
    for _ in 0..2 {
        let start = Instant::now();
        for _ in 0..SPAWNS / 2 {
            let child = Child::spawn(&spec).await?;
            let (info, _, _) = child.wait_with_output().await;
            anyhow::ensure!(info.is_some_and(|i| i.success()), "true failed");
        }
        ours += start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..SPAWNS / 2 {
            let out = Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()?;
            anyhow::ensure!(out.status.success(), "true failed");
        }
        raw += start.elapsed().as_secs_f64();
    }
    Ok(Row::new(
        "spawn + wait /bin/true",
        f64::from(SPAWNS) / ours,
        "spawns/s",
        "std::process::Command output()",
        f64::from(SPAWNS) / raw,
    ))
}

/// Spawn + wait of `/bin/true` under `bwrap` against the same without it.
async fn sandbox_row(workspace: &std::path::Path) -> Result<Row> {
    anyhow::ensure!(
        capsid_process::bwrap_path().is_some(),
        "bwrap is not installed: install bubblewrap"
    );
    let plain = SpawnSpec::new("/bin/true", workspace);
    let mut sandboxed = plain.clone();
    sandboxed.sandbox = capsid_process::Sandbox::Required { network: false };
    let (mut with, mut without) = (0f64, 0f64);
    for _ in 0..2 {
        for (spec, total) in [(&sandboxed, &mut with), (&plain, &mut without)] {
            let start = Instant::now();
            for _ in 0..SANDBOX_SPAWNS / 2 {
                let (info, _, err) = Child::spawn(spec).await?.wait_with_output().await;
                anyhow::ensure!(
                    info.is_some_and(|i| i.success()),
                    "true failed: {}",
                    String::from_utf8_lossy(&err)
                );
            }
            *total += start.elapsed().as_secs_f64();
        }
    }
    Ok(Row::new(
        "spawn + wait /bin/true in the bwrap sandbox",
        f64::from(SANDBOX_SPAWNS) / with,
        "spawns/s",
        "the same spawn without the sandbox",
        f64::from(SANDBOX_SPAWNS) / without,
    ))
}

#[allow(clippy::cast_precision_loss)]
async fn output_rows(workspace: &std::path::Path) -> Result<Vec<Row>> {
    let count = format!("{OUTPUT_BYTES}");
    let mut spec = SpawnSpec::new("head", workspace).args(["-c", count.as_str(), "/dev/zero"]);
    spec.ring_bytes = RING_BYTES;
    spec.ring_policy = RingPolicy::Backpressure;
    let start = Instant::now();
    let child = Child::spawn(&spec).await?;
    let ring = child.stdout().clone();
    let mut total = 0u64;
    loop {
        ring.ready().await;
        let chunk = ring.drain(usize::MAX);
        if chunk.is_empty() && ring.is_closed() {
            break;
        }
        total += chunk.len() as u64;
    }
    let ours = rate(total as f64 / 1e6, start);
    anyhow::ensure!(total == OUTPUT_BYTES, "read {total} bytes");

    let name = "child output through a 1 MiB ring (backpressure)";
    Ok(vec![
        Row::new(
            name,
            ours,
            "MB/s",
            "raw pipe read, 64 KiB buffer",
            raw_read(&count, None)?,
        ),
        Row::new(
            name,
            ours,
            "MB/s",
            "raw pipe read, pipe grown to 1 MiB, 256 KiB buffer",
            raw_read(&count, Some(1 << 20))?,
        ),
    ])
}

/// MB/s of reading `head -c count /dev/zero` straight from its pipe, optionally grown.
#[allow(clippy::cast_precision_loss)]
fn raw_read(count: &str, pipe_bytes: Option<i32>) -> Result<f64> {
    let start = Instant::now();
    let mut child = Command::new("head")
        .args(["-c", count, "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdout.take().context("no stdout")?;
    if let Some(size) = pipe_bytes {
        nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size))?;
    }
    let mut buf = vec![
        0u8;
        if pipe_bytes.is_some() {
            256 << 10
        } else {
            64 << 10
        }
    ];
    let mut total = 0u64;
    loop {
        let n = pipe.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    child.wait()?;
    Ok(rate(total as f64 / 1e6, start))
}

/// Persistent children for the table rows.
const PERSISTENT: usize = 256;
/// `status-many` calls over all of them.
const STATUS_ROUNDS: u32 = 200;

/// Resident memory of this process, in bytes (`VmRSS`).
fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

#[allow(clippy::cast_precision_loss)]
async fn table_rows(workspace: &std::path::Path) -> Result<Vec<Row>> {
    let table = ProcessTable::new(None);
    let owner = Owner {
        principal: Principal::System,
        capsule: CapsuleId::new("bench")?,
    };
    let mut spec = SpawnSpec::new("sleep", workspace).args(["600"]);
    spec.ring_bytes = capsid_core::limits::MIN_OUTPUT_RING_BYTES;
    // Warm up the allocator and the runtime's first spawn before measuring memory.
    let warm = table
        .spawn(owner.clone(), &spec, PersistentOptions::default())
        .await?;
    let before = rss_bytes()?;
    let mut ids = vec![warm];
    // The per-principal cap is below 256: spread the children over principals of their own.
    let mut owners = Vec::new();
    for i in 0..PERSISTENT - 1 {
        let who = Owner {
            principal: Principal::User(capsid_core::PrincipalId::new()),
            capsule: CapsuleId::new(&format!("bench-{}", i % 4))?,
        };
        ids.push(
            table
                .spawn(who.clone(), &spec, PersistentOptions::default())
                .await?,
        );
        owners.push(who);
    }
    let per_process = (rss_bytes()?.saturating_sub(before)) as f64 / (PERSISTENT - 1) as f64;
    // status-many over 256 of one owner's ids (known and unknown alike cost a lookup).
    let mine: Vec<String> = std::iter::repeat_n(ids[0].clone(), PERSISTENT).collect();
    let start = Instant::now();
    for _ in 0..STATUS_ROUNDS {
        let answers = table.status_many(&owner, &mine)?;
        anyhow::ensure!(answers.iter().all(Result::is_ok), "status-many failed");
    }
    let per_status =
        start.elapsed().as_nanos() as f64 / f64::from(STATUS_ROUNDS) / PERSISTENT as f64;
    let start = Instant::now();
    for _ in 0..STATUS_ROUNDS {
        for id in &mine {
            std::hint::black_box(id.parse::<capsid_core::ProcessId>()?);
        }
    }
    let per_parse =
        start.elapsed().as_nanos() as f64 / f64::from(STATUS_ROUNDS) / PERSISTENT as f64;
    table.stop_all(&owner, std::time::Duration::ZERO).await;
    for who in &owners {
        table.stop_all(who, std::time::Duration::ZERO).await;
    }
    let raw_per_process = raw_child_memory(workspace)?;
    Ok(vec![
        Row::new(
            "host memory per idle persistent process (4 KiB rings)",
            per_process / 1024.0,
            "KiB",
            "std::process::Child with piped stdout and stderr",
            raw_per_process / 1024.0,
        ),
        Row::new(
            "status-many over 256 ids, per id",
            per_status,
            "ns",
            "parsing the id alone",
            per_parse,
        ),
    ])
}

/// Host memory per idle `std::process::Child` kept with its pipes, in bytes.
#[allow(clippy::cast_precision_loss)]
fn raw_child_memory(workspace: &std::path::Path) -> Result<f64> {
    let spawn = || {
        Command::new("sleep")
            .arg("600")
            .current_dir(workspace)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let mut children = vec![spawn()?];
    let before = rss_bytes()?;
    for _ in 0..PERSISTENT - 1 {
        children.push(spawn()?);
    }
    let per = (rss_bytes()?.saturating_sub(before)) as f64 / (PERSISTENT - 1) as f64;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(per)
}
