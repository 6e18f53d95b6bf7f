//! The audit log survives SIGKILL of its process mid-append-storm: the reopened log verifies
//! and holds every append that had returned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use capsid_audit::{AuditLog, ChainId, verify_database};
use capsid_core::SessionId;
use capsid_crypto::load_or_generate_runtime_key;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Acknowledgements to wait for before the kill: enough for many group commits.
const ACKS_BEFORE_KILL: usize = 3000;

#[test]
fn sigkill_mid_storm_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let session = SessionId::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-append-storm"))
        .args([
            db.to_str().unwrap(),
            keys.to_str().unwrap(),
            &session.to_string(),
            "16",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut lines = stdout.lines();
    while acked.len() < ACKS_BEFORE_KILL {
        let line = lines.next().expect("storm ended early").unwrap();
        let mut parts = line.split(' ').skip(1);
        acked.insert(
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().to_owned(),
        );
    }
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    // Acks already in the pipe were printed after their append returned: they count too.
    for line in lines {
        let Ok(line) = line else { break };
        let mut parts = line.split(' ').skip(1);
        if let (Some(seq), Some(hash)) = (parts.next(), parts.next())
            && let Ok(seq) = seq.parse()
        {
            acked.insert(seq, hash.to_owned());
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the storm was killed, not finished");

    let report = verify_database(&db).unwrap();
    assert!(report.is_valid(), "{report}");
    let chain = ChainId::Session(session).to_string();
    let sql = rusqlite::Connection::open(&db).unwrap();
    let stored: HashMap<u64, String> = {
        let mut stmt = sql
            .prepare("SELECT seq, hash FROM entries WHERE chain = ?1")
            .unwrap();
        stmt.query_map([&chain], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap()
        .map(|r| {
            let (seq, hash) = r.unwrap();
            (
                u64::try_from(seq).unwrap(),
                capsid_crypto::Digest::from_slice(&hash)
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
    };
    for (seq, hash) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(hash),
            "acknowledged seq {seq} lost or changed"
        );
    }
    assert!(stored.len() >= acked.len());

    // And the log reopens for writing with the same key, continuing the chain.
    let key = load_or_generate_runtime_key(&keys).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = AuditLog::open(&db, key).unwrap();
        let record = capsid_audit::Record::new(
            capsid_core::Principal::System,
            "after.crash",
            "x",
            capsid_audit::Decision::Info,
        )
        .unwrap();
        let next = log.append(ChainId::Session(session), record).await.unwrap();
        assert_eq!(next.seq, stored.len() as u64 + 1);
        log.close().await.unwrap();
    });
}
