//! Shared fixtures for capsid's cross-crate integration suites: a runtime over a temporary
//! home (real audit log, real overlay over a real workspace, real engine and cache) and the
//! capsules `cargo xtask build-capsules` built.
// Test fixtures: a setup step that fails should fail the test at once, loudly.
#![allow(clippy::missing_panics_doc, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsid_audit::{AuditLog, ChainId};
use capsid_capabilities::CapabilityStore;
use capsid_capsule::{CapsuleEngine, CapsuleInfo, HostServices, Registry, Trust};
use capsid_core::{CapsuleId, Principal, SessionId};
use capsid_crypto::KeyPair;
use capsid_events::EventBus;
use capsid_storage::{KvStore, MemoryKvStore};
use capsid_vfs::OverlayVfs;

pub mod lattice;
pub mod overlay_storm;
pub mod web;

/// The folder of built capsules: `$CAPSID_CAPSULES_DIR` (set by `cargo xtask test`), else
/// `target/capsules`, each capsule signed by [`samples_key`]. Panics — never skips — when it
/// is missing.
pub fn capsules_dir() -> PathBuf {
    static SIGNED: std::sync::Once = std::sync::Once::new();
    let dir = capsules_dir_unsigned();
    SIGNED.call_once(|| sign_all(&dir));
    dir
}

fn capsules_dir_unsigned() -> PathBuf {
    let dir = std::env::var_os("CAPSID_CAPSULES_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("capsules")
        },
        PathBuf::from,
    );
    assert!(
        dir.join("hello").join("hello.wasm").is_file(),
        "the sample capsules are not built in {}: run `cargo xtask build-capsules` \
         (or `cargo xtask test`, which builds them first)",
        dir.display()
    );
    dir
}

/// The publisher key the sample capsules are signed with (`.samples-publisher.key` in the
/// built capsules' folder, made on first use): the key test homes trust, as an operator
/// trusts a publisher's.
pub fn samples_key() -> KeyPair {
    let dir = capsules_dir_unsigned();
    capsid_crypto::load_or_generate_key_file(&dir.join(".samples-publisher.key"))
        .expect("the samples' publisher key")
}

/// The name test homes trust [`samples_key`] under.
pub const SAMPLES_SIGNER: &str = "samples";

/// Signs the capsule in `dir` with [`samples_key`] (after a test edited its manifest, as a
/// publisher signs a new version). A manifest that does not parse is left unsigned: loading
/// it fails on the manifest, before any signature is looked at, which is what such a test
/// checks.
pub fn sign(dir: &Path) {
    match capsid_signing::sign_capsule(dir, &samples_key()) {
        Ok(_) | Err(capsid_signing::SigningError::Manifest(_)) => {}
        Err(e) => panic!("signing {}: {e}", dir.display()),
    }
}

/// Signs every built capsule with [`samples_key`] where its signature is not already
/// exactly that (signatures are deterministic; each is written whole, so test processes
/// doing this at once agree).
fn sign_all(dir: &Path) {
    let key = capsid_crypto::load_or_generate_key_file(&dir.join(".samples-publisher.key"))
        .expect("the samples' publisher key");
    for entry in std::fs::read_dir(dir).expect("list built capsules") {
        let capsule = entry.expect("built capsule entry").path();
        if !capsule.join("Capsule.toml").is_file() {
            continue;
        }
        let contents = capsid_signing::CapsuleContents::read(&capsule)
            .unwrap_or_else(|e| panic!("reading {}: {e}", capsule.display()));
        let text = contents.sign(&key).to_text().expect("signature text");
        let file = capsule.join(capsid_signing::SIGNATURE_FILE);
        if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            capsid_core::file::write_atomic(&file, text.as_bytes(), 0o644)
                .unwrap_or_else(|e| panic!("signing {}: {e}", capsule.display()));
        }
    }
}

/// Makes the home at `home` trust [`samples_key`] (as `samples`), as `capsid trust add`
/// would, before its kernel boots.
pub fn trust_samples(home: &Path) {
    let store = capsid_signing::TrustStore::open(&home.join("trust")).expect("trust store");
    let public = hex::encode(samples_key().public_key().to_bytes());
    let key = capsid_signing::TrustedKey::new(SAMPLES_SIGNER, &public, Vec::new(), 1)
        .expect("samples key");
    store.add(key).expect("trusting the samples key");
}

/// The environment variable that sets how many rounds each kill -9 suite runs (`cargo xtask
/// soak crash --rounds N` sets it).
pub const CRASH_ROUNDS_VAR: &str = "CAPSID_CRASH_ROUNDS";

/// Rounds a kill -9 suite runs: [`CRASH_ROUNDS_VAR`], else `default` (what `cargo xtask test`
/// runs). Panics on a value that is not a number, rather than run a default silently.
pub fn crash_rounds(default: usize) -> usize {
    std::env::var(CRASH_ROUNDS_VAR).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{CRASH_ROUNDS_VAR}={v:?} is not a number of rounds"))
    })
}

/// A copy of built capsule `name` in a fresh folder under `into`, so a test may edit or
/// corrupt it without touching the build output.
pub fn copy_capsule(name: &str, into: &Path) -> PathBuf {
    let from = capsules_dir().join(name);
    let to = into.join(name);
    std::fs::create_dir_all(&to).expect("create capsule copy");
    for entry in std::fs::read_dir(&from).expect("list built capsule") {
        let entry = entry.expect("read built capsule entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy capsule file");
    }
    to
}

/// A copy of built capsule `name` under `into`, its manifest passed through `edit`.
pub fn capsule_copy_with(name: &str, into: &Path, edit: impl FnOnce(&str) -> String) -> PathBuf {
    let dir = copy_capsule(name, into);
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    std::fs::write(&manifest, edit(&text)).expect("write manifest");
    sign(&dir);
    dir
}

/// A copy of the `fetch` sample under `into`, its manifest asking for exactly `origins`
/// (its `http` list rewritten) and ending with `extra`, which lands in `[limits]` (the
/// manifest's last table; a `call_timeout_ms` there replaces the manifest's).
pub fn fetch_copy(into: &Path, origins: &[String], extra: &str) -> PathBuf {
    capsule_copy_with("fetch", into, |text| {
        assert!(
            text.rsplit("\n[")
                .next()
                .is_some_and(|t| t.starts_with("limits]")),
            "fetch's manifest must end with its [limits] table"
        );
        let list: Vec<String> = origins.iter().map(|o| format!("{o:?}")).collect();
        let mut rewritten = String::new();
        for line in text.lines() {
            if line.starts_with("http = ") {
                rewritten.push_str("http = [");
                rewritten.push_str(&list.join(", "));
                rewritten.push_str("]\n");
            } else if !(line.starts_with("call_timeout_ms") && extra.contains("call_timeout_ms")) {
                rewritten.push_str(line);
                rewritten.push('\n');
            }
        }
        rewritten.push_str(extra);
        rewritten
    })
}

/// A copy of the `fetch` sample under `into` granted no origin but allowed to `ask` for
/// `resource` (`net://http/127.0.0.1/<port>`), with `limits` appended to its `[limits]`
/// (a `call_timeout_ms` there replaces the manifest's).
pub fn fetch_asking_copy(into: &Path, resource: &str, limits: &str) -> PathBuf {
    let copy = fetch_copy(into, &[], limits);
    let manifest = copy.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    let asking = text.replacen(
        "http = []\n",
        &format!("http = []\nask = [{resource:?}]\n"),
        1,
    );
    assert_ne!(asking, text, "fetch's manifest has its http list");
    std::fs::write(&manifest, asking).expect("write manifest");
    sign(&copy);
    copy
}

/// A private home for a kernel or daemon (0700, as capsid requires of a folder holding its
/// key) inside a temporary folder that goes with it.
#[allow(missing_debug_implementations)]
pub struct PrivateHome {
    _tmp: tempfile::TempDir,
    /// The home itself.
    pub path: PathBuf,
}

impl PrivateHome {
    /// A new, empty home.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("home");
        std::fs::create_dir(&path).expect("home");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("home mode");
        trust_samples(&path);
        Self { _tmp: tmp, path }
    }

    /// The home's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for PrivateHome {
    fn default() -> Self {
        Self::new()
    }
}

/// A capsule id, for tests.
pub fn id(name: &str) -> CapsuleId {
    CapsuleId::new(name).expect("valid capsule name")
}

/// `path` with `suffix` appended to its file name (`audit.db` → `audit.db-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A log's bytes on disk: the database file and its write-ahead log (empty if none).
pub fn log_files(db: &Path) -> (Vec<u8>, Vec<u8>) {
    let wal = std::fs::read(with_suffix(db, "-wal")).unwrap_or_default();
    (std::fs::read(db).unwrap(), wal)
}

/// Rewrites an audit log behind its back with `sql` the way a tamperer who leaves SQLite's
/// write-ahead log behind would: the change sits in `<db>-wal`, not checkpointed into the
/// database file, so anything that opens the log read-write would fold it in. Returns the
/// files' bytes, to check later that nothing wrote them.
pub fn tamper_leaving_wal(db: &Path, sql: &str) -> (Vec<u8>, Vec<u8>) {
    let wal = with_suffix(db, "-wal");
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    assert!(conn.execute(sql, []).unwrap() > 0, "{sql} changed nothing");
    let (db_bytes, wal_bytes) = (std::fs::read(db).unwrap(), std::fs::read(&wal).unwrap());
    assert!(!wal_bytes.is_empty(), "the change is in the WAL");
    // Closing checkpoints and removes the WAL: put both back as they were while open.
    drop(conn);
    std::fs::write(db, &db_bytes).unwrap();
    std::fs::write(&wal, &wal_bytes).unwrap();
    let _ = std::fs::remove_file(with_suffix(db, "-shm"));
    (db_bytes, wal_bytes)
}

/// The `mcp-fixture` MCP server (`src/bin/mcp-fixture.rs`), for suites of other crates: it
/// is built beside their test executables by `cargo test --workspace`.
pub fn mcp_fixture() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    // target/<profile>/deps/<test> -> target/<profile>/mcp-fixture
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("mcp-fixture"))
        .expect("the target directory");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p capsid-integration-tests --bin mcp-fixture` \
         (`cargo test --workspace` does)",
        path.display()
    );
    path
}

/// One runtime over a temporary home.
#[allow(missing_debug_implementations)]
pub struct Runtime {
    /// The temporary home (audit log, cache, overlay state, capsule copies).
    pub home: tempfile::TempDir,
    /// The workspace the overlay sits on.
    pub workspace: PathBuf,
    /// The registry under test.
    pub registry: Registry,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// The capability store.
    pub caps: Arc<CapabilityStore>,
    /// The bus.
    pub bus: EventBus,
    /// The overlay capsules see.
    pub overlay: Arc<OverlayVfs>,
    /// The KV store.
    pub kv: Arc<dyn KvStore>,
    /// The engine.
    pub engine: Arc<CapsuleEngine>,
    /// The principal capsules act for.
    pub principal: Principal,
    /// The session chain.
    pub chain: ChainId,
}

impl Runtime {
    /// A fresh runtime with an empty workspace.
    pub async fn new() -> Self {
        Self::with_http(capsid_capsule::OutboundHttp::new()).await
    }

    /// A fresh runtime whose capsules' outbound HTTP is `http` (a resolver of the test's
    /// own, a test CA among the roots).
    pub async fn with_http(http: capsid_capsule::OutboundHttp) -> Self {
        Self::build(http, capsid_capsule::CompileIn::ThisProcess).await
    }

    /// A fresh runtime whose engine compiles in `compile_in`.
    pub async fn with_compiler(compile_in: capsid_capsule::CompileIn) -> Self {
        Self::build(capsid_capsule::OutboundHttp::new(), compile_in).await
    }

    async fn build(
        http: capsid_capsule::OutboundHttp,
        compile_in: capsid_capsule::CompileIn,
    ) -> Self {
        let home = tempfile::tempdir().expect("temp home");
        let workspace = home.path().join("workspace");
        std::fs::create_dir_all(&workspace).expect("workspace");
        trust_samples(home.path());
        let secret = *KeyPair::generate().expect("key").to_secret_bytes();
        let key = || KeyPair::from_secret_bytes(&secret);
        let audit =
            Arc::new(AuditLog::open(home.path().join("audit.db"), key()).expect("audit log"));
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let caps = Arc::new(
            CapabilityStore::open(kv.clone(), Arc::new(key()), &[])
                .await
                .expect("capability store"),
        );
        let overlay =
            Arc::new(OverlayVfs::open(&workspace, &home.path().join("overlay")).expect("overlay"));
        let engine = Arc::new(
            CapsuleEngine::new(&home.path().join("cache"), Arc::new(key()))
                .expect("engine")
                .compile_in(compile_in),
        );
        let bus = EventBus::new();
        let principal = Principal::System;
        let chain = ChainId::Session(SessionId::new());
        let registry = Registry::new(
            engine.clone(),
            HostServices {
                capabilities: caps.clone(),
                audit: audit.clone(),
                chain,
                kv: kv.clone(),
                vfs: overlay.clone(),
                workspace: workspace.clone(),
                bus: bus.clone(),
                principal,
                sandbox_identity: capsid_process::SandboxIdentity::default(),
                http: Arc::new(http),
                approvals: Arc::new(capsid_capsule::Approvals::new(
                    std::time::Duration::from_secs(10),
                    capsid_storage::RefusalStore::new(kv.clone()),
                )),
                signatures: Arc::new(capsid_signing::SignatureCheck::new(
                    capsid_signing::Require::Trusted,
                    key().public_key(),
                    Arc::new(
                        capsid_signing::TrustStore::open(&home.path().join("trust"))
                            .expect("trust store"),
                    ),
                )),
            },
        )
        .expect("registry");
        Self {
            home,
            workspace,
            registry,
            audit,
            caps,
            bus,
            overlay,
            kv,
            engine,
            principal,
            chain,
        }
    }

    /// Loads built capsule `name` with dev trust (its requests granted).
    pub async fn load(&self, name: &str) -> CapsuleInfo {
        self.registry
            .load(&capsules_dir().join(name), Trust::Dev)
            .await
            .unwrap_or_else(|e| panic!("loading {name}: {e}"))
    }

    /// Loads a copy of the `fetch` sample ([`fetch_copy`]) with dev trust.
    pub async fn load_fetch(&self, origins: &[String], extra: &str) {
        let dir = fetch_copy(&self.home.path().join("capsule-copies"), origins, extra);
        self.registry
            .load(&dir, Trust::Dev)
            .await
            .unwrap_or_else(|e| panic!("loading fetch: {e}"));
    }

    /// Unloads `name` and loads it again from the same directory with dev trust (what the
    /// kernel's reload does, less its restart hook and count).
    pub async fn reload(&self, name: &str) -> CapsuleInfo {
        let dir = self
            .registry
            .info(&id(name))
            .unwrap_or_else(|| panic!("{name} is not known"))
            .dir;
        self.registry
            .unload(&id(name))
            .await
            .unwrap_or_else(|e| panic!("unloading {name}: {e}"));
        self.registry
            .load(&dir, Trust::Dev)
            .await
            .unwrap_or_else(|e| panic!("reloading {name}: {e}"))
    }

    /// Calls `tool` of `capsule` and parses the JSON answer.
    pub async fn call(
        &self,
        capsule: &str,
        tool: &str,
        input: serde_json::Value,
    ) -> serde_json::Value {
        let out = self
            .registry
            .call_tool(&id(capsule), tool, &input.to_string())
            .await
            .unwrap_or_else(|e| panic!("{capsule}.{tool}: {e}"));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{capsule}.{tool} answered {out:?}: {e}"))
    }

    /// Every audit entry so far as `(capsule, action, resource, decision)`, in chain order.
    pub fn audit_entries(&self) -> Vec<AuditRow> {
        audit_rows(self.audit.path())
    }
}

/// Every entry of the audit log at `db`, in the order written.
pub fn audit_rows(db: &Path) -> Vec<AuditRow> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open audit db");
    let mut stmt = conn
        .prepare("SELECT capsule, action, resource, decision, details FROM entries ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok(AuditRow {
            capsule: r.get(0)?,
            action: r.get(1)?,
            resource: r.get(2)?,
            decision: r.get(3)?,
            details: r.get(4)?,
        })
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// One audit entry, as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// The capsule (empty for none).
    pub capsule: String,
    /// The action.
    pub action: String,
    /// The resource.
    pub resource: String,
    /// `allow`, `deny` or `info`.
    pub decision: String,
    /// JSON details.
    pub details: String,
}

/// A live (not zombie) process, as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct LiveProcess {
    /// Its pid.
    pub pid: u32,
    /// Its command line, NUL-separated as in `/proc/<pid>/cmdline`.
    pub cmdline: Vec<u8>,
    /// Its working directory, if readable.
    pub cwd: Option<PathBuf>,
}

/// Every live (not zombie) process of the machine.
pub fn live_processes() -> Vec<LiveProcess> {
    std::fs::read_dir("/proc")
        .expect("list /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let zombie = stat
                .rfind(')')
                .is_some_and(|i| stat[i + 2..].starts_with('Z'));
            (!zombie).then(|| LiveProcess {
                pid,
                cmdline: std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
            })
        })
        .collect()
}
