//! Helper for the closed-descriptors test: a host that closed its standard descriptors (std
//! reopens them at startup, so it closes them itself), freeing 0, 1 and 2 once its runtime is
//! up, so the descriptors `capsid-process` opens for a spawn (the cgroup's `cgroup.procs`,
//! the pipes) take the numbers a child's stdio goes to. It starts `sh` with a pids limit (a cgroup of its own) and stdin piped, feeds it
//! a line, and checks that the child ran in its cgroup and echoed the line. Exits 0 when all
//! held; otherwise writes what failed to `<workspace>/failure.txt` (it has no stderr then).
//!
//! Usage: `process-host-closed-stdio <workspace>`

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use capsid_process::{Child, SpawnSpec};

fn main() -> ExitCode {
    let Some(workspace) = std::env::args().nth(1) else {
        return ExitCode::from(2);
    };
    let outcome = run(&workspace);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::fs::write(format!("{workspace}/failure.txt"), format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(workspace: &str) -> Result<()> {
    for fd in 0..3 {
        nix::unistd::close(fd).context("closing a standard descriptor")?;
    }
    // Hold 0-2 while the runtime opens its own descriptors, then let them go.
    let holds = (0..3)
        .map(|_| File::open("/dev/null"))
        .collect::<std::io::Result<Vec<File>>>()?;
    let numbers: Vec<i32> = holds.iter().map(AsRawFd::as_raw_fd).collect();
    ensure!(
        numbers == [0, 1, 2],
        "0, 1 and 2 were not free (got {numbers:?})"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    drop(holds);
    runtime.block_on(spawn_and_check(workspace))
}

async fn spawn_and_check(workspace: &str) -> Result<()> {
    let mut spec = SpawnSpec::new("sh", workspace).args(["-c", "grep pids /proc/self/cgroup; cat"]);
    spec.stdin = true;
    spec.limits.pids = Some(16);
    let child = Child::spawn(&spec).await.context("spawning")?;
    child.write_stdin(b"through the pipe\n").await?;
    child.close_stdin().await;
    let (info, out, err) = child.wait_with_output().await;
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    ensure!(
        info.is_some_and(|i| i.success()),
        "the child failed: {info:?}, stderr {err:?}"
    );
    ensure!(out.contains("/capsid/"), "not in its own cgroup: {out:?}");
    ensure!(
        out.ends_with("through the pipe\n"),
        "its stdin was lost: {out:?}"
    );
    Ok(())
}
