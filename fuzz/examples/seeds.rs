//! Writes the seeds that need capsid to make them: signed capability tokens (both encoding
//! versions) and a small audit log's export. `cargo run -p capsid-fuzz --example seeds`
//! writes them into `fuzz/corpus/`; they are committed, so this runs only to remake them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use capsid_audit::{AuditLog, ChainId, Decision, Record};
use capsid_capabilities::{Capability, CapabilityId, Pattern, Permissions};
use capsid_core::{CapsuleId, ClientSessionId, Principal, SessionId};
use capsid_crypto::KeyPair;

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let key = KeyPair::from_secret_bytes(&[7; 32]);
    let token =
        |session: Option<ClientSessionId>, single_use: bool, expires: Option<i64>| Capability {
            id: CapabilityId(uuid::Uuid::now_v7()),
            principal: Principal::System,
            capsule: Some(CapsuleId::new("notes").unwrap()),
            pattern: Pattern::parse("fs://workspace/notes/**").unwrap(),
            permissions: Permissions::READ.union(Permissions::WRITE),
            issued_at: 1_764_000_000_000,
            expires_at: expires,
            single_use,
            issuer: key.key_id(),
            session,
        };
    let tokens = corpus.join("token");
    let mut user = token(None, false, None);
    user.principal = Principal::User(capsid_core::PrincipalId::new());
    let signed = user.sign(&key);
    std::fs::write(tokens.join("v1-user"), &signed).unwrap();
    // The same token with its principal's UUID in capitals: another spelling of the same
    // token, which decoding must refuse (found by the canonical-encoding property).
    let text = user.principal.to_string();
    let at = signed
        .windows(text.len())
        .position(|w| w == text.as_bytes())
        .unwrap();
    let mut shouted = signed.clone();
    shouted[at..at + text.len()]
        .copy_from_slice(format!("user:{}", text["user:".len()..].to_uppercase()).as_bytes());
    std::fs::write(tokens.join("v1-user-uppercase-uuid"), shouted).unwrap();
    std::fs::write(tokens.join("v1"), token(None, false, None).sign(&key)).unwrap();
    std::fs::write(
        tokens.join("v1-single-use-expiring"),
        token(None, true, Some(1_800_000_000_000)).sign(&key),
    )
    .unwrap();
    std::fs::write(
        tokens.join("v2-session"),
        token(Some(ClientSessionId::new()), false, None).sign(&key),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = AuditLog::open(&db, KeyPair::from_secret_bytes(&[7; 32])).unwrap();
        let chain = ChainId::Session(SessionId::new());
        for i in 0..4 {
            let record = Record::new(
                Principal::System,
                "fs.write",
                &format!("fs://workspace/notes/{i}.md"),
                Decision::Allow,
            )
            .unwrap()
            .details(&serde_json::json!({ "i": i }))
            .unwrap();
            log.append(chain, record).await.unwrap();
        }
        let out = dir.path().join("export.jsonl");
        log.export_jsonl(&out).unwrap();
        log.close().await.unwrap();
        std::fs::copy(&out, corpus.join("audit-export").join("small-log.jsonl")).unwrap();
    });
}
