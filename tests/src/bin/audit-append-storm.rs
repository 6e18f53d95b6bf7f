//! Helper for the audit crash test: appends from many tasks until killed, printing
//! `ack <seq> <hash>` for every append that has returned (and is therefore durable).
//!
//! Usage: `audit-append-storm <db> <key-dir> <session-id> <tasks>`

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use capsid_audit::{AuditLog, ChainId, Decision, Record};
use capsid_core::{Principal, SessionId};
use capsid_crypto::load_or_generate_runtime_key;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, key_dir, session, tasks] = args.as_slice() else {
        anyhow::bail!("usage: audit-append-storm <db> <key-dir> <session-id> <tasks>");
    };
    let key = load_or_generate_runtime_key(key_dir.as_ref())?;
    let session: SessionId = session.parse()?;
    let tasks: usize = tasks.parse().context("tasks")?;
    let log = Arc::new(AuditLog::open(db, key)?);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let log = log.clone();
        let out = out.clone();
        handles.push(tokio::spawn(async move {
            for i in 0u64.. {
                let record = Record::new(
                    Principal::System,
                    "storm.append",
                    &format!("task/{task}/{i}"),
                    Decision::Info,
                )?;
                let entry = log.append(ChainId::Session(session), record).await?;
                let mut out = out
                    .lock()
                    .map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
                writeln!(out, "ack {} {}", entry.seq, entry.hash)?;
                out.flush()?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}
