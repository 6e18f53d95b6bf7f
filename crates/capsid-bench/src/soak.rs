//! `soak-mixed`: the real daemon (`capsid daemon --dev`, a child process) under a steady mixed
//! load for `CAPSID_SOAK_MINUTES` minutes. Every second: tool calls (`hello.greet`), calls
//! that write kv (`counter.increment`), publishes and process spawns (`runner.run`); every
//! few seconds a reload, an install (unload and install again of a copy of `hello`) and an
//! MCP session (`capsid mcp serve --no-start`: list, call, close). Each second it samples the
//! daemon's resident memory, open descriptors, threads and the audit log's size on disk
//! and entries.
//!
//! It fails when an operation fails, or when growth does not level off: the peak of memory,
//! descriptors or threads in the last third of the run above the middle third's by more
//! than a margin, the audit log growing faster or taking more room per entry in the last
//! third than in the middle one, or the daemon serving the same load more slowly (wall-clock
//! throughput). The memory trend over the last two thirds is reported, not judged. The
//! samples go to `<out>/soak-mixed.csv`, also when the run fails.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsid_core::{CapsidHome, CapsuleId};
use capsid_protocol::Client;
use capsid_protocol::methods::{
    CapsuleInstall, CapsuleParams, CapsuleReload, CapsuleUnload, EventPublish, InstallParams,
    PublishParams, ToolCall, ToolCallParams, Via,
};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use crate::density::Daemon;
use crate::report::Row;

/// The variable the run's length is read from, in minutes.
const MINUTES_VAR: &str = "CAPSID_SOAK_MINUTES";
/// `hello.greet` calls per second.
const GREETS_PER_SECOND: usize = 40;
/// `counter.increment` calls per second (each a kv compare-and-swap).
const INCREMENTS_PER_SECOND: usize = 10;
/// Publishes per second.
const PUBLISHES_PER_SECOND: usize = 20;
/// `runner.run` spawns (`echo`) per second.
const SPAWNS_PER_SECOND: usize = 2;
/// Seconds between reloads of `hello`.
const RELOAD_EVERY: u64 = 5;
/// Seconds between reinstalls of the copy of `hello`.
const INSTALL_EVERY: u64 = 10;
/// Seconds between MCP sessions.
const MCP_EVERY: u64 = 10;
/// How far the last third's peak may rise above the middle third's: memory (KiB, plus
/// [`RSS_MARGIN_RATIO`] of the middle peak), descriptors, threads.
const RSS_MARGIN_KIB: f64 = 8.0 * 1024.0;
const RSS_MARGIN_RATIO: f64 = 0.10;
const FD_MARGIN: f64 = 8.0;
const THREAD_MARGIN: f64 = 4.0;
/// How much faster the audit log may grow (entries per second, and bytes per entry) in the
/// last third than in the middle one.
const AUDIT_RATE_MARGIN: f64 = 1.25;
/// The share of the middle third's throughput the last third must keep.
const THROUGHPUT_FLOOR: f64 = 0.8;

/// The name the reinstalled copy of `hello` goes by.
const COPY: &str = "hello-soak";

/// One second's sample of the daemon.
#[derive(Debug, Clone, Copy)]
struct Sample {
    second: u64,
    /// Wall time since the load began, in seconds (a second of load may overrun).
    elapsed_s: f64,
    rss_kib: f64,
    fds: f64,
    threads: f64,
    audit_bytes: f64,
    audit_entries: f64,
    operations: u64,
}

pub fn run(out: &Path) -> Result<Vec<Row>> {
    let minutes: u64 = std::env::var(MINUTES_VAR)
        .context("CAPSID_SOAK_MINUTES is not set: run this through `cargo xtask soak mixed`")?
        .parse()
        .context("CAPSID_SOAK_MINUTES is not a number of minutes")?;
    if minutes == 0 {
        bail!("a soak lasts at least a minute");
    }
    crate::report::runtime()?.block_on(soak(out, Duration::from_mins(minutes)))
}

fn home(tmp: &Path) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let home = tmp.join("home");
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    capsid_integration_tests::trust_samples(&home);
    let built = capsid_integration_tests::capsules_dir();
    for name in ["hello", "counter", "runner"] {
        let dir = home.join("capsules").join(name);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(built.join(name))? {
            let entry = entry?;
            std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
        }
    }
    let copy = tmp.join(COPY);
    std::fs::create_dir(&copy)?;
    std::fs::copy(
        built.join("hello").join("hello.wasm"),
        copy.join("hello.wasm"),
    )?;
    let manifest = std::fs::read_to_string(built.join("hello").join("Capsule.toml"))?;
    std::fs::write(
        copy.join("Capsule.toml"),
        manifest.replacen("name = \"hello\"", &format!("name = \"{COPY}\""), 1),
    )?;
    capsid_integration_tests::sign(&copy);
    Ok((home, copy))
}

fn call(capsule: &str, tool: &str, input: Value) -> Result<ToolCallParams> {
    Ok(ToolCallParams {
        capsule: CapsuleId::new(capsule)?,
        tool: tool.into(),
        input,
        as_user: None,
        client: None,
        via: Via::Daemon,
        approvals: false,
    })
}

/// A field of `/proc/<pid>/status` (`VmRSS`, `Threads`) as a number.
fn status_field(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[allow(clippy::cast_precision_loss)]
fn sample(
    pid: u32,
    home: &Path,
    second: u64,
    elapsed: Duration,
    operations: u64,
) -> Result<Sample> {
    let db = CapsidHome::at(home).audit_db_path();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    Ok(Sample {
        second,
        elapsed_s: elapsed.as_secs_f64(),
        rss_kib: status_field(pid, "VmRSS")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64,
        threads: status_field(pid, "Threads")?,
        audit_bytes: (size(&db) + size(Path::new(&wal))) as f64,
        audit_entries: audit_entries(&db)?,
        operations,
    })
}

/// Entries in the audit log (its last row id: entries are only ever appended).
#[allow(clippy::cast_precision_loss)]
fn audit_entries(db: &Path) -> Result<f64> {
    let sql =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let last: Option<i64> = sql.query_row("SELECT max(id) FROM entries", [], |r| r.get(0))?;
    Ok(last.unwrap_or(0) as f64)
}

/// One second's share of the steady load; the operations it made.
async fn one_second(client: &mut Client, second: u64) -> Result<u64> {
    let greet = call("hello", "greet", json!({ "name": "soak" }))?;
    for _ in 0..GREETS_PER_SECOND {
        client.call::<ToolCall>(&greet).await?;
    }
    let increment = call("counter", "increment", json!({}))?;
    for _ in 0..INCREMENTS_PER_SECOND {
        client.call::<ToolCall>(&increment).await?;
    }
    for n in 0..PUBLISHES_PER_SECOND {
        let params = PublishParams {
            topic: "soak.tick".into(),
            payload: json!({ "second": second, "n": n }),
        };
        client.call::<EventPublish>(&params).await?;
    }
    let spawn = call(
        "runner",
        "run",
        json!({ "program": "echo", "args": ["soak"] }),
    )?;
    for _ in 0..SPAWNS_PER_SECOND {
        client.call::<ToolCall>(&spawn).await?;
    }
    let mut done = GREETS_PER_SECOND + INCREMENTS_PER_SECOND + PUBLISHES_PER_SECOND;
    done += SPAWNS_PER_SECOND;
    if second.is_multiple_of(RELOAD_EVERY) {
        let hello = CapsuleParams {
            name: CapsuleId::new("hello")?,
        };
        client.call::<CapsuleReload>(&hello).await?;
        done += 1;
    }
    Ok(u64::try_from(done)?)
}

/// Unloads the copy of `hello` (after its first install) and installs it again.
async fn reinstall(client: &mut Client, copy: &Path, first: bool) -> Result<()> {
    if !first {
        let params = CapsuleParams {
            name: CapsuleId::new(COPY)?,
        };
        client.call::<CapsuleUnload>(&params).await?;
    }
    let params = InstallParams {
        dir: copy.to_owned(),
        accept: false,
    };
    client.call::<CapsuleInstall>(&params).await?;
    Ok(())
}

/// One MCP session over `capsid mcp serve`: initialize, list, one call, close.
async fn mcp_session(bin: &Path, home: &Path) -> Result<()> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--home")
        .arg(home)
        .args(["mcp", "serve", "--no-start"]);
    let session = ().serve(rmcp::transport::TokioChildProcess::new(cmd)?).await?;
    let tools = session.list_all_tools().await?;
    if !tools.iter().any(|t| t.name == "hello.greet") {
        bail!("the MCP session lists no hello.greet");
    }
    let mut arguments = rmcp::model::JsonObject::new();
    arguments.insert("name".into(), json!("soak"));
    let result = session
        .call_tool(CallToolRequestParams::new("hello.greet").with_arguments(arguments))
        .await?;
    if result.is_error == Some(true) {
        bail!("the MCP call failed: {result:?}");
    }
    session.cancel().await?;
    Ok(())
}

async fn soak(out: &Path, length: Duration) -> Result<Vec<Row>> {
    let bin = crate::mcp::capsid_bin()?;
    let tmp = tempfile::tempdir()?;
    let (home, copy) = home(tmp.path())?;
    let daemon = Daemon::start_with(&bin, &home, &["--dev"]).await?;
    let pid = daemon.pid()?;
    let mut client = daemon.client().await?;
    reinstall(&mut client, &copy, true).await?;
    let mut samples = Vec::new();
    let loaded = load(&mut client, &bin, &home, &copy, pid, length, &mut samples).await;
    // The samples are worth reading most when the load failed.
    write_csv(out, &samples)?;
    loaded?;
    daemon.stop().await?;
    verdict(&samples)
}

/// The steady load for `length`, sampling each second into `samples`.
async fn load(
    client: &mut Client,
    bin: &Path,
    home: &Path,
    copy: &Path,
    pid: u32,
    length: Duration,
    samples: &mut Vec<Sample>,
) -> Result<()> {
    let begun = Instant::now();
    let mut operations = 0;
    for second in 1.. {
        let tick = begun + Duration::from_secs(second);
        operations += one_second(client, second)
            .await
            .with_context(|| format!("second {second}"))?;
        if second.is_multiple_of(INSTALL_EVERY) {
            reinstall(client, copy, false)
                .await
                .with_context(|| format!("reinstalling {COPY} at second {second}"))?;
            operations += 2;
        }
        if second.is_multiple_of(MCP_EVERY) {
            mcp_session(bin, home)
                .await
                .with_context(|| format!("the MCP session at second {second}"))?;
            operations += 1;
        }
        tokio::time::sleep_until(tick.into()).await;
        samples.push(sample(pid, home, second, begun.elapsed(), operations)?);
        if begun.elapsed() >= length {
            return Ok(());
        }
    }
    Ok(())
}

fn write_csv(out: &Path, samples: &[Sample]) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut csv =
        String::from("second,elapsed_s,rss_kib,fds,threads,audit_bytes,audit_entries,operations\n");
    for s in samples {
        writeln!(
            csv,
            "{},{:.3},{},{},{},{},{},{}",
            s.second,
            s.elapsed_s,
            s.rss_kib,
            s.fds,
            s.threads,
            s.audit_bytes,
            s.audit_entries,
            s.operations
        )?;
    }
    let path = out.join("soak-mixed.csv");
    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))
}

/// The peak of `f` over `samples`.
fn peak(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(f).fold(f64::MIN, f64::max)
}

/// How fast `f` grew per second of wall time over `samples` (first to last).
fn rate(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) if b.elapsed_s > a.elapsed_s => {
            (f(b) - f(a)) / (b.elapsed_s - a.elapsed_s)
        }
        _ => 0.0,
    }
}

/// The least-squares slope of `f` against wall time over `samples`, per minute.
fn slope_per_minute(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.elapsed_s).sum::<f64>() / n;
    let mean_y = samples.iter().map(&f).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        num += (s.elapsed_s - mean_t) * (f(s) - mean_y);
        den += (s.elapsed_s - mean_t).powi(2);
    }
    if den > 0.0 { num / den * 60.0 } else { 0.0 }
}

fn verdict(samples: &[Sample]) -> Result<Vec<Row>> {
    if samples.len() < 30 {
        bail!(
            "a soak needs at least 30 samples to judge growth, not {}",
            samples.len()
        );
    }
    let third = samples.len() / 3;
    let (middle, last) = (&samples[third..2 * third], &samples[2 * third..]);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut level = |name: &str, unit: &str, f: fn(&Sample) -> f64, margin: f64| {
        let (before, after) = (peak(middle, f), peak(last, f));
        rows.push(Row::new(
            &format!("{name}, peak of the last third"),
            after,
            unit,
            &format!("{name}, peak of the middle third"),
            before,
        ));
        if after > before + margin {
            failures.push(format!("{name} still grows: {before} then {after} {unit}"));
        }
    };
    let rss_margin = RSS_MARGIN_KIB + RSS_MARGIN_RATIO * peak(middle, |s| s.rss_kib);
    level("daemon memory", "KiB", |s| s.rss_kib, rss_margin);
    level("open descriptors", "fds", |s| s.fds, FD_MARGIN);
    level("threads", "threads", |s| s.threads, THREAD_MARGIN);
    let (before, after) = (
        rate(middle, |s| s.audit_entries),
        rate(last, |s| s.audit_entries),
    );
    rows.push(Row::new(
        "audit entries appended per second, last third",
        after,
        "entries/s",
        "the same, middle third",
        before,
    ));
    if after > before.max(1.0) * AUDIT_RATE_MARGIN {
        failures.push(format!(
            "the audit log grows faster: {before:.0} then {after:.0} entries/s"
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    let ops = |s: &Sample| s.operations as f64;
    let (before, after) = (rate(middle, ops), rate(last, ops));
    rows.push(Row::new(
        "operations per wall-clock second, last third",
        after,
        "ops/s",
        "the same, middle third",
        before,
    ));
    if after < before * THROUGHPUT_FLOOR {
        failures.push(format!(
            "the daemon slowed down: {before:.1} then {after:.1} operations/s"
        ));
    }
    let per_entry =
        |s: Option<&Sample>| s.map_or(0.0, |s| s.audit_bytes / s.audit_entries.max(1.0));
    let (before, after) = (per_entry(middle.last()), per_entry(last.last()));
    rows.push(Row::new(
        "audit log bytes on disk per entry (with its WAL), at the end",
        after,
        "B",
        "the same, at the end of the middle third",
        before,
    ));
    if after > before * AUDIT_RATE_MARGIN {
        failures.push(format!(
            "the audit log takes more room per entry: {before:.0} then {after:.0} bytes"
        ));
    }
    rows.push(Row::new(
        "daemon memory trend over the last two thirds",
        slope_per_minute(&samples[third..], |s| s.rss_kib),
        "KiB/min",
        "none (reported, not judged: allocator noise)",
        0.0,
    ));
    if !failures.is_empty() {
        crate::report::print_table("soak-mixed", &rows);
        bail!(
            "the soak found growth that does not level off: {}",
            failures.join("; ")
        );
    }
    Ok(rows)
}
