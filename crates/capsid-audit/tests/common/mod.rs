//! Shared fixtures for the audit integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use capsid_audit::{AuditLog, ChainId, Decision, Record};
use capsid_core::{Principal, SessionId};
use capsid_crypto::KeyPair;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub secret: [u8; 32],
    pub session: SessionId,
}

impl Fixture {
    pub fn key(&self) -> KeyPair {
        KeyPair::from_secret_bytes(&self.secret)
    }

    pub fn chain(&self) -> String {
        ChainId::Session(self.session).to_string()
    }

    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).unwrap()
    }
}

pub fn record(i: u64) -> Record {
    Record::new(
        Principal::System,
        "test.op",
        &format!("res://{i}"),
        Decision::Allow,
    )
    .unwrap()
    .details(&serde_json::json!({ "i": i }))
    .unwrap()
}

/// A log with `n` entries in one session chain, closed.
pub async fn fixture(n: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = KeyPair::generate().unwrap();
    let secret = *key.to_secret_bytes();
    let session = SessionId::new();
    let log = AuditLog::open(&path, key).unwrap();
    for i in 1..=n {
        let r = log
            .append(ChainId::Session(session), record(i))
            .await
            .unwrap();
        assert_eq!(r.seq, i);
    }
    log.close().await.unwrap();
    Fixture {
        dir,
        path,
        secret,
        session,
    }
}

pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}
