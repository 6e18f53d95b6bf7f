//! `audit-scale [N]`: how the audit log's costs grow with its history. Appends `N` entries
//! (default 1,000,000; `CAPSID_BENCH_N` sets it) from 16 closed-loop producers and reports
//! the append rate of the last tenth against the first, bytes per entry on disk, the time to
//! open the log (from its last checkpoint) against a full verification of it, and the full
//! verification's rate against raw ed25519 verification.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use capsid_audit::{AuditLog, ChainId, verify_database};
use capsid_core::SessionId;
use capsid_crypto::KeyPair;

use crate::audit::{record, verify_floor};
use crate::report::Row;

/// Entries appended when `CAPSID_BENCH_N` does not say.
const DEFAULT_ENTRIES: u64 = 1_000_000;
/// Concurrent producers.
const PRODUCERS: u64 = 16;

pub fn run() -> Result<Vec<Row>> {
    let n = match std::env::var("CAPSID_BENCH_N") {
        Ok(text) if !text.is_empty() => text
            .parse::<u64>()
            .with_context(|| format!("CAPSID_BENCH_N={text} is not a number"))?,
        _ => DEFAULT_ENTRIES,
    };
    ensure!(
        n >= PRODUCERS * 10,
        "audit-scale needs at least {} entries",
        PRODUCERS * 10
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit.db");
    let key = KeyPair::generate()?;
    let secret = *key.to_secret_bytes();
    let (first_tenth, last_tenth) = crate::report::runtime()?.block_on(append(&path, key, n))?;

    let on_disk: u64 = ["", "-wal"]
        .iter()
        .map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(std::path::PathBuf::from(name)).map_or(0, |m| m.len())
        })
        .sum();

    let start = Instant::now();
    let log = AuditLog::open(&path, KeyPair::from_secret_bytes(&secret))?;
    let open = start.elapsed();
    crate::report::runtime()?.block_on(log.close())?;

    let start = Instant::now();
    let report = verify_database(&path)?;
    let full = start.elapsed();
    ensure!(
        report.is_valid(),
        "the benchmark log does not verify: {report}"
    );
    let entries = report.entries();
    let floor = verify_floor(entries.min(200_000))?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    #[allow(clippy::cast_precision_loss)]
    let per_second = |count: u64, d: Duration| count as f64 / d.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let bytes = on_disk as f64 / entries as f64;
    let tenth = n / 10;
    Ok(vec![
        Row::new(
            &format!("append rate, last tenth of {n}"),
            per_second(tenth, last_tenth),
            "entries/s",
            "append rate, first tenth",
            per_second(tenth, first_tenth),
        ),
        Row::new("bytes per entry on disk", bytes, "B", "itself", bytes),
        Row::new(
            &format!("open, {entries} entries (from the last checkpoint)"),
            ms(open),
            "ms",
            "full verification of the same log",
            ms(full),
        ),
        Row::new(
            "full verification rate",
            per_second(entries, full),
            "entries/s",
            "raw ed25519 verifications",
            floor,
        ),
    ])
}

/// Appends `n` entries from [`PRODUCERS`] producers; the time the first tenth took, and the
/// last.
async fn append(path: &std::path::Path, key: KeyPair, n: u64) -> Result<(Duration, Duration)> {
    let log = Arc::new(AuditLog::open(path, key)?);
    let chain = ChainId::Session(SessionId::new());
    let done = Arc::new(AtomicU64::new(0));
    let marks: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let per = n / PRODUCERS;
    let total = per * PRODUCERS;
    let tenth = total / 10;
    let start = Instant::now();
    let tasks: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (log, done, marks) = (log.clone(), done.clone(), marks.clone());
            tokio::spawn(async move {
                for i in 0..per {
                    log.append(chain, record(p * per + i)?).await?;
                    let count = done.fetch_add(1, Ordering::AcqRel) + 1;
                    if count == tenth || count == total - tenth || count == total {
                        capsid_core::sync::lock(&marks).push(Instant::now());
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    if let Some(log) = Arc::into_inner(log) {
        log.close().await?;
    }
    let mut marks = capsid_core::sync::lock(&marks).clone();
    marks.sort();
    let [first, nine_tenths, end] = marks[..] else {
        anyhow::bail!("the producers did not pass every mark");
    };
    Ok((first - start, end - nine_tenths))
}
