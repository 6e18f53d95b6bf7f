//! What capsid's fuzzers feed, one function per target, shared by the libFuzzer binaries in
//! `fuzz/libfuzzer/` (`cargo xtask fuzz <target>`) and by the replay of every committed
//! corpus that `cargo xtask test` runs on stable (`tests/replay.rs`). Each target must never
//! panic on any input; the asserts in them are the properties a crash reports.
#![deny(missing_docs)]
// A target's asserts are its properties: a panic is exactly what the fuzzer reports.
#![allow(clippy::missing_panics_doc)]

use std::path::Path;

mod mcp;

pub use mcp::{mcp_client, mcp_server};

/// What a fuzzer feeds one input to.
pub type Target = fn(&[u8]);

/// Every target: its name (the corpus folder and libFuzzer binary) and what it runs.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("frame", frame),
    ("pattern", pattern),
    ("vfs-path", vfs_path),
    ("token", token),
    ("audit-export", audit_export),
    ("audit-db", audit_db),
    ("mcp-client", mcp_client),
    ("mcp-server", mcp_server),
];

/// A manifest as `Capsule.toml` text: parsed or refused, never a panic.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = capsid_manifest::Manifest::parse(Path::new("Capsule.toml"), text);
    }
}

thread_local! {
    /// One runtime per fuzzing thread: building one per input would cost more than it.
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
}

/// Bytes as a client would send them to the daemon: frames read as the daemon reads them
/// (hello-sized and full-sized caps), each decoded as a request, its method looked up and its
/// params decoded as that method's.
pub fn frame(data: &[u8]) {
    use capsid_core::limits::{MAX_FRAME_BYTES, MAX_HELLO_BYTES};
    use capsid_protocol::frame::read_frame_limited;
    RUNTIME.with(|rt| {
        let Some(rt) = rt else { return };
        rt.block_on(async {
            let mut hello_reader = data;
            let hello = read_frame_limited(
                &mut hello_reader,
                MAX_HELLO_BYTES,
                std::time::Duration::from_secs(1),
            )
            .await;
            if let Ok(Some(body)) = hello {
                assert!(body.len() <= MAX_HELLO_BYTES);
                let _ = serde_json::from_slice::<capsid_protocol::Hello>(&body);
            }
            let mut reader = data;
            while let Ok(Some(body)) = read_frame_limited(
                &mut reader,
                MAX_FRAME_BYTES,
                std::time::Duration::from_secs(1),
            )
            .await
            {
                assert!(body.len() <= MAX_FRAME_BYTES);
                let Ok(request) = serde_json::from_slice::<capsid_protocol::Request>(&body) else {
                    continue;
                };
                if let Some(method) = capsid_protocol::MethodId::from_name(&request.method) {
                    let _ = method.check_params(&request);
                }
            }
        });
    });
}

/// Two texts split at the first NUL: a pattern and a resource. Both parse strictly or not
/// at all; a parsed pattern parses back the same, a parsed resource prints as its text; when
/// both parse, `matches` must agree with a model of the documented grammar (`*` within a
/// segment, `**` for any number of whole segments) written as plain dynamic programming.
pub fn pattern(data: &[u8]) {
    use capsid_capabilities::{Pattern, Resource};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern_text, resource_text) = text.split_once('\0').unwrap_or((text, ""));
    let pattern = Pattern::parse(pattern_text);
    let resource = Resource::parse(resource_text);
    if let Ok(p) = &pattern {
        // A parsed pattern parses back the same.
        assert_eq!(Pattern::parse(p.as_str()).as_ref(), Ok(p));
    }
    if let Ok(r) = &resource {
        // A resource is rebuilt from its parts: they must print as what was parsed.
        assert_eq!(r.to_string(), resource_text);
    }
    let (Ok(p), Ok(r)) = (pattern, resource) else {
        return;
    };
    assert_eq!(
        p.matches(&r),
        model::matches(pattern_text, resource_text),
        "{pattern_text:?} against {resource_text:?}"
    );
}

/// A workspace path: parsed or refused. A parsed one prints exactly as the text it came
/// from, and every part of it is a plain name on the host (never `/`, `.`, `..` or a prefix):
/// nothing a capsule writes can resolve outside the workspace.
pub fn vfs_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = capsid_vfs::VfsPath::parse(text) {
        let shown = path.to_string();
        assert_eq!(shown, text);
        assert!(
            Path::new(&shown)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{shown:?}"
        );
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
}

thread_local! {
    /// The key the token seeds are signed with, and one that signed nothing.
    static KEYS: (capsid_crypto::KeyPair, capsid_crypto::KeyPair) = (
        capsid_crypto::KeyPair::from_secret_bytes(&[7; 32]),
        capsid_crypto::KeyPair::from_secret_bytes(&[9; 32]),
    );
}

/// Token bytes: decoded strictly or refused. A decoded token's signed part is its canonical
/// encoding (re-encoding gives the same bytes); it verifies under the seeds' key exactly when
/// its bytes are what that key signs (ed25519 signatures are deterministic and checked
/// strictly), and never under a key that signed nothing.
pub fn token(data: &[u8]) {
    use capsid_capabilities::Capability;
    let Ok((cap, _)) = Capability::decode(data) else {
        return;
    };
    KEYS.with(|(key, stranger)| {
        let again = cap.sign(key);
        let body = data.len().saturating_sub(64);
        assert_eq!(&again[..again.len() - 64], &data[..body], "not canonical");
        assert_eq!(
            Capability::verify(data, &key.public_key()).is_ok(),
            again == data,
            "verified a token the key did not sign, or refused one it did"
        );
        assert!(Capability::verify(data, &stranger.public_key()).is_err());
    });
}

/// An audit log export (JSON lines) as found in a file: verified or refused, never a panic.
pub fn audit_export(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("audit.jsonl");
    if std::fs::write(&path, data).is_ok() {
        let _ = capsid_audit::verify_export(&path);
    }
}

/// The `entries` columns an `audit-db` input may overwrite, with how its bytes become a value.
const ENTRY_COLUMNS: &[(&str, ColumnKind)] = &[
    ("chain", ColumnKind::Text),
    ("seq", ColumnKind::Integer),
    ("time_ns", ColumnKind::Integer),
    ("principal", ColumnKind::Text),
    ("capsule", ColumnKind::Text),
    ("action", ColumnKind::Text),
    ("resource", ColumnKind::Text),
    ("decision", ColumnKind::Text),
    ("details", ColumnKind::Text),
    ("prev_hash", ColumnKind::Blob),
    ("key_id", ColumnKind::Blob),
    ("hash", ColumnKind::Blob),
    ("signature", ColumnKind::Blob),
];

#[derive(Clone, Copy)]
enum ColumnKind {
    Text,
    Integer,
    Blob,
}

/// A small signed audit log (two chains), made once per process: the database file's bytes
/// after a clean close.
// The harness's own setup: without its seed log no input can be judged, so it stops loudly.
#[allow(clippy::expect_used)]
fn audit_db_image() -> &'static [u8] {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = dir.path().join("audit.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let key = capsid_crypto::KeyPair::from_secret_bytes(&[7; 32]);
            let log = capsid_audit::AuditLog::open(&db, key).expect("a new audit log");
            let session = capsid_audit::ChainId::Session(capsid_core::SessionId::new());
            for (chain, n) in [
                (session, 0),
                (capsid_audit::ChainId::System, 1),
                (session, 2),
            ] {
                let record = capsid_audit::Record::new(
                    capsid_core::Principal::System,
                    "fuzz.seed",
                    &format!("kv://fuzz/{n}"),
                    capsid_audit::Decision::Allow,
                )
                .expect("a record");
                log.append(chain, record).await.expect("an append");
            }
            log.close().await.expect("a clean close");
        });
        std::fs::read(&db).expect("the audit database")
    })
}

/// An audit database changed behind the log's back, then verified in full. The first byte
/// picks how: odd, bytes of the file are flipped (`offset`, `xor` pairs: the verifier must
/// refuse or accept, never panic); even, one field of one entry is overwritten through SQL,
/// and a field that really changed must be found (every field is covered by an entry's hash,
/// signature or place in its chain).
pub fn audit_db(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let db = dir.path().join("audit.db");
    if mode % 2 == 1 {
        let mut image = audit_db_image().to_vec();
        let len = image.len().max(1);
        for pair in rest.chunks_exact(3) {
            let offset = usize::from(u16::from_le_bytes([pair[0], pair[1]]));
            if let Some(byte) = image.get_mut(offset % len) {
                *byte ^= pair[2];
            }
        }
        if std::fs::write(&db, &image).is_ok() {
            let _ = capsid_audit::verify_database(&db);
        }
        return;
    }
    let image = audit_db_image();
    let Some(changed) = overwrite_entry(&db, image, rest) else {
        return;
    };
    let Ok(report) = capsid_audit::verify_database(&db) else {
        return;
    };
    if changed {
        assert!(
            !report.is_valid(),
            "a field of an entry changed and the log verified"
        );
    } else {
        assert!(
            report.is_valid(),
            "an untouched log failed to verify: {report}"
        );
    }
}

/// Whether `data`, as an SQL-mode `audit-db` input, really changes a field of an entry (for
/// the replay's check that the seeds exercise the property).
pub fn audit_db_changes_an_entry(data: &[u8]) -> bool {
    let (Some((&mode, rest)), Ok(dir)) = (data.split_first(), tempfile::tempdir()) else {
        return false;
    };
    mode % 2 == 0
        && overwrite_entry(&dir.path().join("audit.db"), audit_db_image(), rest) == Some(true)
}

/// Writes `image` to `db` and overwrites one field of one entry as `input` says
/// (`row`, `column`, value bytes); whether the field changed, or `None` when the input is too
/// short or the file cannot be written.
fn overwrite_entry(db: &Path, image: &[u8], input: &[u8]) -> Option<bool> {
    let [row, column, value @ ..] = input else {
        return None;
    };
    std::fs::write(db, image).ok()?;
    let (name, kind) = ENTRY_COLUMNS[usize::from(*column) % ENTRY_COLUMNS.len()];
    let sql = rusqlite::Connection::open(db).ok()?;
    let rows: i64 = sql
        .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .ok()?;
    let id = 1 + i64::from(*row) % rows.max(1);
    let query = format!("UPDATE entries SET {name} = ?1 WHERE id = ?2 AND {name} IS NOT ?1");
    let changed = match kind {
        ColumnKind::Text => sql.execute(
            &query,
            rusqlite::params![String::from_utf8_lossy(value), id],
        ),
        ColumnKind::Integer => {
            let mut n = [0u8; 8];
            for (to, from) in n.iter_mut().zip(value) {
                *to = *from;
            }
            sql.execute(&query, rusqlite::params![i64::from_le_bytes(n), id])
        }
        ColumnKind::Blob => sql.execute(&query, rusqlite::params![value, id]),
    };
    // Refused by the schema (a duplicate `(chain, seq)`, say): nothing changed.
    Some(changed.is_ok_and(|n| n > 0))
}

/// A model of pattern matching, written from the grammar alone.
mod model {
    /// Whether `pattern` matches `resource` (both already known to parse).
    pub fn matches(pattern: &str, resource: &str) -> bool {
        let (Some((ps, pa, pp)), Some((rs, ra, rp))) = (split(pattern), split(resource)) else {
            return false;
        };
        ps == rs && glob(pa.as_bytes(), ra.as_bytes()) && segments(&pp, &rp)
    }

    fn split(text: &str) -> Option<(&str, &str, Vec<&str>)> {
        let (scheme, rest) = text.split_once("://")?;
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, None), |(a, p)| (a, Some(p)));
        Some((
            scheme,
            authority,
            path.map(|p| p.split('/').collect()).unwrap_or_default(),
        ))
    }

    /// Whether the segments of `pattern` match those of `resource`: `table[i][j]` says
    /// whether `pattern[i..]` matches `resource[j..]`.
    fn segments(pattern: &[&str], resource: &[&str]) -> bool {
        let (p, r) = (pattern.len(), resource.len());
        let mut table = vec![vec![false; r + 1]; p + 1];
        table[p][r] = true;
        for i in (0..p).rev() {
            for j in (0..=r).rev() {
                table[i][j] = if pattern[i] == "**" {
                    table[i + 1][j] || (j < r && table[i][j + 1])
                } else {
                    j < r
                        && glob(pattern[i].as_bytes(), resource[j].as_bytes())
                        && table[i + 1][j + 1]
                };
            }
        }
        table[0][0]
    }

    /// Whether `pattern` (`*` for any run of bytes) matches all of `text`, the same way.
    fn glob(pattern: &[u8], text: &[u8]) -> bool {
        let (p, t) = (pattern.len(), text.len());
        let mut table = vec![vec![false; t + 1]; p + 1];
        table[p][t] = true;
        for i in (0..p).rev() {
            for j in (0..=t).rev() {
                table[i][j] = if pattern[i] == b'*' {
                    table[i + 1][j] || (j < t && table[i][j + 1])
                } else {
                    j < t && pattern[i] == text[j] && table[i + 1][j + 1]
                };
            }
        }
        table[0][0]
    }
}
