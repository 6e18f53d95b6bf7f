//! `density`: the real daemon (`capsid daemon`, a child process) on homes with 10, 100 and
//! 1,000 copies of `hello` installed under different names, compile cache warm. Per size: boot
//! to ready, the daemon's resident memory, `status` and `hello-0.greet` p50 over its socket.
//! Each size is compared with the smallest, scaled linearly (boot and memory) or not at all
//! (latencies), so any growth faster than linear shows as a ratio above 1. The memory of an
//! idle capsule and of a warm instance are solved from the growth between sizes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsid_core::{CapsidHome, CapsuleId};
use capsid_protocol::Client;
use capsid_protocol::methods::{DaemonStop, Status, ToolCall, ToolCallParams, Via};
use serde_json::json;

use crate::report::Row;

/// The sizes measured, smallest first (the others are compared with it).
const SIZES: [usize; 3] = [10, 100, 1_000];
/// Round trips per latency figure.
const TRIPS: usize = 2_000;

pub fn run() -> Result<Vec<Row>> {
    crate::report::runtime()?.block_on(rows())
}

/// A home with `count` copies of `hello`, named `hello-<n>`.
fn home_with(tmp: &Path, count: usize) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let home = tmp.join(format!("home-{count}"));
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    capsid_integration_tests::trust_samples(&home);
    let built = capsid_integration_tests::capsules_dir().join("hello");
    let manifest = std::fs::read_to_string(built.join("Capsule.toml"))?;
    for n in 0..count {
        let name = format!("hello-{n}");
        let dir = home.join("capsules").join(&name);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(built.join("hello.wasm"), dir.join("hello.wasm"))?;
        let renamed = manifest.replacen("name = \"hello\"", &format!("name = \"{name}\""), 1);
        std::fs::write(dir.join("Capsule.toml"), renamed)?;
        capsid_integration_tests::sign(&dir);
    }
    Ok(home)
}

/// CPU time process `pid` has used (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces), from the third: utime is the 14th.
    let after = stat.rsplit_once(')').context("no command in /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field =
        |n: usize| -> Result<u64> { Ok(fields.get(n - 3).context("short /proc stat")?.parse()?) };
    Ok(field(14)? + field(15)?)
}

/// Waits until process `pid` is idle (at most 2 clock ticks of CPU over 250 ms), up to a
/// minute: ready is not quiet, and latency measured while the daemon still works through
/// what boot queued measures that work. How long it took.
pub(crate) async fn settle(pid: u32) -> Result<Duration> {
    let begun = Instant::now();
    let mut last = cpu_ticks(pid)?;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cpu_ticks(pid)?;
        if now - last <= 2 {
            return Ok(begun.elapsed());
        }
        if begun.elapsed() > Duration::from_mins(1) {
            bail!("the daemon stayed busy for a minute after it was ready");
        }
        last = now;
    }
}

/// Resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no VmRSS")?;
    Ok(kib)
}

/// The real daemon, a child process on its own home (killed if dropped running).
pub(crate) struct Daemon {
    child: tokio::process::Child,
    home: PathBuf,
    boot_ms: f64,
}

impl Daemon {
    pub(crate) async fn start(bin: &Path, home: &Path) -> Result<Self> {
        Self::start_with(bin, home, &[]).await
    }

    /// Starts `capsid --home <home> daemon <extra>` and waits until it is ready.
    pub(crate) async fn start_with(bin: &Path, home: &Path, extra: &[&str]) -> Result<Self> {
        let begun = Instant::now();
        let mut child = tokio::process::Command::new(bin)
            .arg("--home")
            .arg(home)
            .arg("daemon")
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let ready = CapsidHome::at(home).ready_path();
        while !ready.exists() {
            if let Some(status) = child.try_wait()? {
                bail!("the daemon exited before it was ready: {status}");
            }
            if begun.elapsed() > Duration::from_mins(10) {
                bail!("the daemon was not ready within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            child,
            home: home.to_owned(),
            boot_ms: begun.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Its pid.
    pub(crate) fn pid(&self) -> Result<u32> {
        self.child.id().context("the daemon is gone")
    }

    /// A client of it.
    pub(crate) async fn client(&self) -> Result<Client> {
        Ok(Client::connect(&CapsidHome::at(&self.home), String::new()).await?)
    }

    fn rss_kib(&self) -> Result<f64> {
        rss_kib(self.child.id().context("the daemon is gone")?)
    }

    /// Asks it to stop and waits until it has.
    pub(crate) async fn stop(mut self) -> Result<()> {
        self.client().await?.ask::<DaemonStop>().await?;
        self.child.wait().await?;
        Ok(())
    }
}

/// A call of `greet` on `capsule` (a copy of `hello`, or `hello-py`).
pub(crate) fn greet(capsule: &str) -> Result<ToolCallParams> {
    Ok(ToolCallParams {
        capsule: CapsuleId::new(capsule)?,
        tool: "greet".into(),
        input: json!({ "name": "density" }),
        as_user: None,
        client: None,
        via: Via::Daemon,
        approvals: false,
    })
}

fn p50(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// One size's figures.
struct Measured {
    boot_ms: f64,
    rss_kib: f64,
    status_us: f64,
    call_us: f64,
}

/// Batches of `TRIPS` round trips per latency figure: a figure is the median of the
/// batches' p50s, so one batch the 2-vCPU VM disturbed does not make it.
const BATCHES: usize = 5;

/// The median over [`BATCHES`] of the p50 of `TRIPS` round trips of `trip`.
async fn latency_us<F: Future<Output = Result<()>>>(mut trip: impl FnMut() -> F) -> Result<f64> {
    let mut p50s = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let mut samples = Vec::with_capacity(TRIPS);
        for _ in 0..TRIPS {
            let t = Instant::now();
            trip().await?;
            samples.push(t.elapsed());
        }
        p50s.push(p50(samples));
    }
    p50s.sort_by(f64::total_cmp);
    Ok(p50s[BATCHES / 2])
}

async fn measure(bin: &Path, tmp: &Path, count: usize) -> Result<Measured> {
    let home = home_with(tmp, count)?;
    // The first boot fills the compile cache; the one measured reads it back.
    Daemon::start(bin, &home).await?.stop().await?;
    let daemon = Daemon::start(bin, &home).await?;
    let rss_kib = daemon.rss_kib()?;
    let mut client = daemon.client().await?;
    let status = client.ask::<Status>().await?;
    if status.ready != count {
        bail!("{} of {count} capsules are ready", status.ready);
    }
    settle(daemon.pid()?).await?;
    // Shared by the closures that measure; only one runs at a time.
    let client = tokio::sync::Mutex::new(client);
    let status_us = latency_us(|| async {
        client.lock().await.ask::<Status>().await?;
        Ok(())
    })
    .await?;
    let params = greet("hello-0")?;
    client.lock().await.call::<ToolCall>(&params).await?;
    let call_us = latency_us(|| async {
        client.lock().await.call::<ToolCall>(&params).await?;
        Ok(())
    })
    .await?;
    let measured = Measured {
        boot_ms: daemon.boot_ms,
        rss_kib,
        status_us,
        call_us,
    };
    daemon.stop().await?;
    Ok(measured)
}

async fn rows() -> Result<Vec<Row>> {
    let bin = crate::mcp::capsid_bin()?;
    let tmp = tempfile::tempdir()?;
    // First, so a missing componentize-py fails the group before the long part.
    let python = crate::density_large::build(tmp.path())?;
    let mut measured = Vec::new();
    for count in SIZES {
        measured.push((count, measure(&bin, tmp.path(), count).await?));
    }
    let (smallest, base) = &measured[0];
    #[allow(clippy::cast_precision_loss)]
    let scale = |count: usize| count as f64 / *smallest as f64;
    let mut rows = Vec::new();
    for (count, m) in &measured {
        rows.push(Row::new(
            &format!("boot to ready, {count} capsules, warm cache"),
            m.boot_ms,
            "ms",
            &format!("boot with {smallest}, scaled x{}", scale(*count)),
            base.boot_ms * scale(*count),
        ));
    }
    // Up to MAX_LIVE_INSTANCES capsules each keep a warm instance; past that, a newly loaded
    // capsule takes an idle one's slot. So 10 → 100 adds 90 capsules and 90 instances, and
    // 100 → 1000 adds 900 capsules and (256 - 100) instances: two equations for the memory
    // of a capsule (c) and of a warm instance (w).
    #[allow(clippy::cast_precision_loss)]
    let (c, w) = {
        let slots = f64::from(capsid_core::limits::MAX_LIVE_INSTANCES);
        let rss = |i: usize| measured[i].1.rss_kib;
        let (n0, n1, n2) = (SIZES[0] as f64, SIZES[1] as f64, SIZES[2] as f64);
        let a = (rss(1) - rss(0)) / (n1 - n0);
        let b = rss(2) - rss(1);
        let c = (b - (slots - n1) * a) / (n2 - n1 - (slots - n1));
        (c, a - c)
    };
    rows.push(Row::new(
        "daemon memory per idle loaded capsule (no warm instance)",
        c,
        "KiB",
        "target",
        256.0,
    ));
    rows.push(Row::new(
        "daemon memory per warm instance",
        w,
        "KiB",
        "daemon memory per idle loaded capsule",
        c,
    ));
    for (count, m) in &measured {
        rows.push(Row::new(
            &format!("daemon memory, {count} capsules"),
            m.rss_kib / 1024.0,
            "MiB",
            &format!("{smallest} capsules, scaled x{}", scale(*count)),
            base.rss_kib / 1024.0 * scale(*count),
        ));
    }
    for (count, m) in &measured {
        rows.push(Row::new(
            &format!("status p50, {count} capsules"),
            m.status_us,
            "µs",
            &format!("status p50, {smallest} capsules"),
            base.status_us,
        ));
    }
    for (count, m) in &measured {
        rows.push(Row::new(
            &format!("hello-0.greet p50, {count} capsules"),
            m.call_us,
            "µs",
            &format!("hello-0.greet p50, {smallest} capsules"),
            base.call_us,
        ));
    }
    rows.extend(crate::density_large::rows(&bin, tmp.path(), &python).await?);
    Ok(rows)
}
