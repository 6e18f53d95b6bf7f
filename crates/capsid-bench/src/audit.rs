//! `audit`: group-commit append throughput and verification rate, each beside its raw floor.
//!
//! Floors, measured in the same run on the same disk:
//! - append: per entry, blake3 over an entry-sized encoding, one ed25519 signature, and one
//!   insert into a SQLite table with the log's columns, committed with the log's durability
//!   settings (WAL, `synchronous=FULL`) in batches of 1 (what one closed-loop producer can
//!   reach), of [`PRODUCERS`] (the most a closed loop of that many producers can put in one
//!   commit) and of [`FLOOR_BATCH`] (the floor the issue names);
//! - verify: one strict ed25519 verification per entry.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use capsid_audit::{AuditLog, ChainId, Decision, Record, verify_database};
use capsid_core::{Principal, SessionId};
use capsid_crypto::{Domain, DomainHasher, KeyPair, domain};

use crate::report::Row;

/// Entries appended per measurement.
const ENTRIES: u64 = 40_000;
/// Entries per transaction in the append floor.
const FLOOR_BATCH: u64 = 256;
/// Producers in the concurrent measurement.
const PRODUCERS: u64 = 16;
/// Entries appended by the single producer (each is its own durable commit, so fewer).
const SINGLE_PRODUCER_ENTRIES: u64 = 4_000;

/// Entry `i` of a benchmark log: a capability decision of the usual size.
pub(crate) fn record(i: u64) -> Result<Record> {
    Ok(Record::new(
        Principal::System,
        "capability.check",
        &format!("fs://workspace/notes/{i}.md"),
        Decision::Allow,
    )?
    .details(&serde_json::json!({ "capsule": "notes", "n": i }))?)
}

pub fn run() -> Result<Vec<Row>> {
    let rt = crate::report::runtime()?;
    let dir = tempfile::tempdir()?;

    let floor_1 = append_floor(&dir.path().join("floor1.db"), 1, SINGLE_PRODUCER_ENTRIES)?;
    let floor_16 = append_floor(&dir.path().join("floor16.db"), PRODUCERS, ENTRIES)?;
    let floor_append = append_floor(&dir.path().join("floor.db"), FLOOR_BATCH, ENTRIES)?;
    let one = rt.block_on(append_rate(
        &dir.path().join("one.db"),
        1,
        SINGLE_PRODUCER_ENTRIES,
    ))?;
    let many_path = dir.path().join("many.db");
    let many = rt.block_on(append_rate(&many_path, PRODUCERS, ENTRIES))?;

    let (entries, verify) = verify_rate(&many_path)?;
    let floor_verify = verify_floor(entries)?;

    let floor = |batch: u64| format!("raw sign+blake3+insert, {batch} per commit");
    let many_name = format!("append, {PRODUCERS} producers");
    Ok(vec![
        Row::new("append, 1 producer", one, "entries/s", &floor(1), floor_1),
        Row::new(&many_name, many, "entries/s", &floor(PRODUCERS), floor_16),
        Row::new(
            &many_name,
            many,
            "entries/s",
            &floor(FLOOR_BATCH),
            floor_append,
        ),
        Row::new(
            "verify_database",
            verify,
            "entries/s",
            "raw ed25519 verify_strict",
            floor_verify,
        ),
    ])
}

async fn append_rate(path: &std::path::Path, producers: u64, entries: u64) -> Result<f64> {
    let log = Arc::new(AuditLog::open(path, KeyPair::generate()?)?);
    let chain = ChainId::Session(SessionId::new());
    let per = entries / producers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    log.append(chain, record(p * per + i)?).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(log) = Arc::into_inner(log) {
        log.close().await?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok((per * producers) as f64 / secs)
}

fn append_floor(path: &std::path::Path, batch: u64, entries: u64) -> Result<f64> {
    const ENTRY_DOMAIN: Domain = domain::AUDIT_ENTRY;
    let key = KeyPair::generate()?;
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE entries (id INTEGER PRIMARY KEY, chain TEXT, seq INTEGER, time_ns INTEGER,
         principal TEXT, capsule TEXT, action TEXT, resource TEXT, decision TEXT, details TEXT,
         prev_hash BLOB, key_id BLOB, hash BLOB, signature BLOB, UNIQUE (chain, seq))",
    )?;
    let key_id = key.key_id();
    let mut prev = [0u8; 32];
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < entries {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (chain, seq, time_ns, principal, capsule, action, resource, decision,
                 details, prev_hash, key_id, hash, signature) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
            )?;
            for _ in 0..batch {
                seq += 1;
                let resource = format!("fs://workspace/notes/{seq}.md");
                let details = serde_json::json!({ "capsule": "notes", "n": seq }).to_string();
                let hash = DomainHasher::new(ENTRY_DOMAIN)
                    .update(b"session:0190f3a2-0000-7000-8000-000000000000")
                    .update(&seq.to_be_bytes())
                    .update(b"systemcapability.check")
                    .update(resource.as_bytes())
                    .update(b"allow")
                    .update(details.as_bytes())
                    .update(&prev)
                    .update(key_id.as_bytes())
                    .finalize();
                let sig = key.sign(hash.as_bytes());
                insert.execute(rusqlite::params![
                    "session:bench",
                    i64::try_from(seq)?,
                    0i64,
                    "system",
                    "",
                    "capability.check",
                    resource,
                    "allow",
                    details,
                    &prev[..],
                    key_id.as_bytes(),
                    hash.as_bytes(),
                    sig.as_bytes()
                ])?;
                prev = hash.0;
            }
        }
        tx.commit()?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(seq as f64 / start.elapsed().as_secs_f64())
}

fn verify_rate(path: &std::path::Path) -> Result<(u64, f64)> {
    let start = Instant::now();
    let report = verify_database(path)?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(report.is_valid(), "benchmark log does not verify: {report}");
    #[allow(clippy::cast_precision_loss)]
    Ok((report.entries(), report.entries() as f64 / secs))
}

/// Strict ed25519 verifications per second over `n` signatures: the floor of a full verify.
pub(crate) fn verify_floor(n: u64) -> Result<f64> {
    let key = KeyPair::generate()?;
    let pk = key.public_key();
    let msgs: Vec<[u8; 32]> = (0..n)
        .map(|i| capsid_crypto::hash(domain::AUDIT_ENTRY, &i.to_be_bytes()).0)
        .collect();
    let sigs: Vec<_> = msgs.iter().map(|m| key.sign(m)).collect();
    let start = Instant::now();
    for (m, s) in msgs.iter().zip(&sigs) {
        pk.verify(m, s)?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
