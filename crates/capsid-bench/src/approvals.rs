//! `approvals`: a tool call whose write needs an approval already given for the caller's
//! session (the session-bound token answers the check; nobody is asked) against the same
//! call under a standing grant, in the same kernel, interleaved. Needs the capsules built.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use capsid_capsule::Verdict;
use capsid_core::CapsuleId;
use capsid_kernel::{Door, Kernel, KernelConfig};

use crate::report::{Row, percentile};

/// Timed calls per side, after [`WARMUP`] untimed ones.
const CALLS: usize = 2_000;
const WARMUP: usize = 100;
/// The same note each time: a session approval covers the file it was asked for.
const INPUT: &str = r#"{"name":"bench","text":"the same few bytes"}"#;

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(async {
        let tmp = tempfile::tempdir()?;
        let home = tmp.path().join("home");
        let capsules = home.join("capsules");
        std::fs::create_dir_all(&capsules)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
            capsid_integration_tests::trust_samples(&home);
        }
        // `notes` as built (a standing grant for notes/**), and a copy that must ask.
        capsid_integration_tests::copy_capsule("notes", &capsules);
        let asks = capsid_integration_tests::copy_capsule("notes", tmp.path());
        let manifest = asks.join("Capsule.toml");
        let text = std::fs::read_to_string(&manifest)?
            .replace("name = \"notes\"", "name = \"notes-asks\"")
            .replace(
                "fs_write = [\"workspace://notes/**\"]",
                "ask = [\"fs://workspace/notes/**\"]",
            );
        std::fs::write(&manifest, text)?;
        capsid_integration_tests::sign(&asks);
        std::fs::rename(&asks, capsules.join("notes-asks"))?;

        let kernel = Kernel::builder()
            .home(&home)
            .workspace(tmp.path().join("workspace"))
            .config(KernelConfig {
                dev: true,
                hot_reload: false,
                ..KernelConfig::default()
            })
            .build()
            .await?;
        let session = kernel.hold_session(kernel.principal());
        approve_for_session(&kernel).await?;
        let (standing, asking) = (CapsuleId::new("notes")?, CapsuleId::new("notes-asks")?);
        let mut granted = Vec::with_capacity(CALLS);
        let mut approved = Vec::with_capacity(CALLS);
        for i in 0..WARMUP + CALLS {
            let g = timed(&kernel, &standing).await?;
            let a = timed(&kernel, &asking).await?;
            if i >= WARMUP {
                granted.push(g);
                approved.push(a);
            }
        }
        drop(session);
        kernel.shutdown().await;
        granted.sort();
        approved.sort();
        let base = "notes.add under a standing grant";
        Ok(vec![
            Row::new(
                "notes.add under a session approval p50",
                percentile(&approved, 0.5),
                "µs",
                &format!("{base} p50"),
                percentile(&granted, 0.5),
            ),
            Row::new(
                "notes.add under a session approval p99",
                percentile(&approved, 0.99),
                "µs",
                &format!("{base} p99"),
                percentile(&granted, 0.99),
            ),
        ])
    })
}

/// Calls `notes-asks.add` once and decides every request it makes `session`.
async fn approve_for_session(kernel: &Kernel) -> Result<()> {
    let call = {
        let kernel = kernel.clone();
        tokio::spawn(async move { call(&kernel, &CapsuleId::new("notes-asks")?).await })
    };
    let until = Instant::now() + Duration::from_secs(30);
    while !call.is_finished() {
        ensure!(Instant::now() < until, "the first call never finished");
        for asked in kernel.approvals() {
            kernel
                .decide_approval(&asked.id, Verdict::Session, kernel.principal())
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.await.context("the first call")??;
    Ok(())
}

/// One `add` on `capsule`, as the daemon's operator connection calls it (from the
/// operator's client session).
async fn call(kernel: &Kernel, capsule: &CapsuleId) -> Result<()> {
    let caller = kernel.operator(Door::Daemon);
    let control = capsid_capsule::CallControl::new();
    kernel
        .call_tool_as(&caller, capsule, "add", INPUT, &control)
        .await?;
    Ok(())
}

/// How long one `add` on `capsule` takes.
async fn timed(kernel: &Kernel, capsule: &CapsuleId) -> Result<Duration> {
    let start = Instant::now();
    call(kernel, capsule).await?;
    Ok(start.elapsed())
}
