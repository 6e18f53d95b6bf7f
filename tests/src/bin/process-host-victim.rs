//! Helper for the no-orphans test: starts children through `capsid-process` — a plain
//! `sleep <a>`; inside the OS sandbox, a shell that forks `sleep <b>`; outside it, a shell
//! that forks `sleep <c>` and one that forks `setsid sleep <d>` (which leaves its group) —
//! prints `ready`, then waits to be killed.
//!
//! Usage: `process-host-victim <workspace> <a> <b> <c> <d>`

use std::io::Write;

use anyhow::{Context, Result};
use capsid_process::{Child, Sandbox, SpawnSpec};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [workspace, a, b, c, d] = args.as_slice() else {
        anyhow::bail!("usage: process-host-victim <workspace> <a> <b> <c> <d>");
    };
    let _plain = Child::spawn(&SpawnSpec::new("sleep", workspace).args([a.as_str()])).await?;
    let mut sandboxed = SpawnSpec::new("sh", workspace).args(["-c", &format!("sleep {b} & wait")]);
    sandboxed.sandbox = Sandbox::Required { network: false };
    let _tree = Child::spawn(&sandboxed).await.context("sandboxed spawn")?;
    let mut trees = Vec::new();
    for script in [
        format!("sleep {c} & wait"),
        format!("setsid sleep {d} & wait"),
    ] {
        let plain = SpawnSpec::new("sh", workspace).args(["-c", &script]);
        trees.push(Child::spawn(&plain).await.context("unsandboxed spawn")?);
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    tokio::time::sleep(std::time::Duration::from_hours(1)).await;
    Ok(())
}
