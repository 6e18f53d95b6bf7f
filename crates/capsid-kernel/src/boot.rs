//! Boot: from a home directory to a kernel whose capsules are ready.
//!
//! Order: home layout → config → runtime key → audit log (verified; a tampered one refused or
//! quarantined per config) → KV → capability store → overlay over the workspace → identity
//! (the local root user, linked to `cli`/`local`) → process containment (subreaper, sweep of
//! what a killed host left) → engine and registry → capsule discovery → load order → capsules
//! that need the network (`uplink`) and what they require first → the rest → the
//! `capsules.loaded` event → monitors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsid_audit::{AuditLog, ChainId, Decision, Record};
use capsid_capsule::{CapsuleEngine, HostServices, Registry};
use capsid_core::limits::MAX_RECOVERED_PATHS_RECORDED;
use capsid_core::{CapsidHome, CapsuleId, Principal, SessionId};
use capsid_crypto::KeyPair;
use capsid_events::EventBus;
use capsid_manifest::{Manifest, discover, load_order};
use capsid_signing::{SignatureCheck, TrustStore};
use capsid_storage::{Durability, KvStore, SurrealKvStore};
use capsid_vfs::OverlayVfs;

use crate::config::{KernelConfig, TamperPolicy};
use crate::error::{KernelError, io};
use crate::kernel::{BootReport, Kernel, KernelParts};

/// Topic of the event published once boot has loaded every capsule it could.
pub const CAPSULES_LOADED_TOPIC: &str = "capsules.loaded";

/// Builds a [`Kernel`]. Every setting is optional.
#[derive(Debug, Default)]
pub struct KernelBuilder {
    home: Option<PathBuf>,
    workspace: Option<PathBuf>,
    config: Option<KernelConfig>,
    bus: Option<EventBus>,
    resolver: Option<Arc<dyn capsid_capsule::Resolve>>,
    compile_in: capsid_capsule::CompileIn,
}

/// The home (laid out), its config (validated) and the workspace (created), each from the
/// builder if given, else from the home.
fn settle(
    home: Option<PathBuf>,
    config: Option<KernelConfig>,
    workspace: Option<PathBuf>,
) -> Result<(CapsidHome, KernelConfig, PathBuf), KernelError> {
    let home = match home {
        Some(root) => CapsidHome::at(root),
        None => CapsidHome::resolve()?,
    };
    home.ensure_layout()?;
    let config = match config {
        Some(c) => c,
        None => KernelConfig::load(&home.config_path())?,
    };
    config.validate().map_err(|message| KernelError::Config {
        path: home.config_path(),
        message,
    })?;
    let workspace = workspace
        .or_else(|| config.workspace.clone())
        .unwrap_or_else(|| home.root().join("workspace"));
    std::fs::create_dir_all(&workspace).map_err(io(&workspace))?;
    Ok((home, config, workspace))
}

/// Capsules' outbound HTTP: the operator's extra roots (relative to the home) and the
/// embedder's resolver, if any.
fn outbound_http(
    home: &CapsidHome,
    config: &KernelConfig,
    resolver: Option<Arc<dyn capsid_capsule::Resolve>>,
) -> Result<capsid_capsule::OutboundHttp, KernelError> {
    let roots: Vec<PathBuf> = config
        .http
        .extra_roots
        .iter()
        .map(|p| home.root().join(p))
        .collect();
    let http = capsid_capsule::OutboundHttp::new()
        .with_extra_roots(&roots)
        .map_err(|e| KernelError::Config {
            path: home.config_path(),
            message: format!("[http] extra_roots: {e}"),
        })?;
    Ok(match resolver {
        Some(resolver) => http.with_resolver(resolver),
        None => http,
    })
}

impl KernelBuilder {
    /// The event bus (default: a new one). Giving one lets the embedding program subscribe
    /// before boot, to the `capsules.loaded` event for one.
    #[must_use]
    pub fn bus(mut self, bus: EventBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// How capsules' outbound HTTP requests resolve host names (default: the operating
    /// system's). Every address is vetted before it is connected to, whoever answers.
    #[must_use]
    pub fn resolver(mut self, resolver: Arc<dyn capsid_capsule::Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Where components are compiled (default: in this process). The `capsid` daemon
    /// compiles in a helper process, `capsid compile-component`, so that no compile's memory
    /// stays in it.
    #[must_use]
    pub fn compile_in(mut self, compile_in: capsid_capsule::CompileIn) -> Self {
        self.compile_in = compile_in;
        self
    }

    /// The home directory (default: `$CAPSID_HOME`, else `~/.capsid`).
    #[must_use]
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// The workspace capsules see (default: the config's, else `<home>/workspace`).
    #[must_use]
    pub fn workspace(mut self, workspace: impl Into<PathBuf>) -> Self {
        self.workspace = Some(workspace.into());
        self
    }

    /// The configuration (default: `<home>/config.toml`, else the defaults).
    #[must_use]
    pub fn config(mut self, config: KernelConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Boots. Must run inside a multi-threaded tokio runtime.
    pub async fn build(self) -> Result<Kernel, KernelError> {
        let started = Instant::now();
        let (home, config, workspace) = settle(self.home, self.config, self.workspace)?;
        let key = {
            let dir = home.keys_dir();
            blocking(move || capsid_crypto::load_or_generate_runtime_key(&dir)).await??
        };
        let secret = key.to_secret_bytes();
        let copy = || KeyPair::from_secret_bytes(&secret);
        let (audit, found) = open_audit(&home, copy(), config.audit_tamper).await?;
        let audit = Arc::new(audit);
        let kv: Arc<dyn KvStore> =
            Arc::new(SurrealKvStore::open(&home.kv_dir(), Durability::Synced).await?);
        // Boxed: joining a lattice is a large future, and most hosts join none.
        let stores = Box::pin(crate::lattice::open_grant_stores(
            &home,
            &config,
            &kv,
            copy(),
        ))
        .await?;
        let (capabilities, identity) = (stores.capabilities, stores.identity);
        let overlay_dir = home.state_dir().join("overlay");
        let overlay = {
            let (lower, work) = (workspace.clone(), overlay_dir);
            Arc::new(blocking(move || OverlayVfs::open(&lower, &work)).await??)
        };
        let root = identity.bootstrap_local_root().await?;
        let principal = Principal::User(root.id);
        let mcp_principal = Principal::User(identity.bootstrap_mcp_user().await?.id);
        let chain = ChainId::Session(SessionId::new());
        if let AuditFinding::Quarantined { kept, problems } = &found {
            let details = serde_json::json!({ "kept": kept, "problems": problems });
            let record = boot_record(capsid_audit::action::TAMPERED, &details)?;
            audit.append(chain, record).await?;
        }
        let mut unrecorded = record_recovered_commit(&audit, chain, &overlay).await?;
        unrecorded.extend(contain_processes(&audit, &chain).await?);
        let engine = Arc::new(
            CapsuleEngine::new(&home.compiled_cache_dir(), Arc::new(copy()))?
                .compile_in(self.compile_in),
        );
        let bus = self.bus.unwrap_or_default();
        let http = outbound_http(&home, &config, self.resolver)?;
        let signatures = signature_check(&home, &config, &key).await?;
        let services = HostServices {
            capabilities: capabilities.clone(),
            audit: audit.clone(),
            chain,
            kv: kv.clone(),
            vfs: overlay.clone(),
            workspace: workspace.clone(),
            bus: bus.clone(),
            principal,
            sandbox_identity: capsid_process::SandboxIdentity {
                uid: config.sandbox.uid,
                gid: config.sandbox.gid,
            },
            http: Arc::new(http),
            approvals: Arc::new(capsid_capsule::Approvals::new(
                std::time::Duration::from_millis(config.approval_timeout_ms),
                capsid_storage::RefusalStore::new(kv.clone()),
            )),
            signatures,
        };
        let registry = Registry::new(engine, services)?;
        apply_operator_env(&registry, &config);
        record_boot(&audit, chain, &home, &workspace, &config).await?;
        // No session is live yet: grants a run left bound to its sessions go.
        let ended =
            crate::lattice::forget_ended_sessions(&capabilities, stores.joined.as_ref()).await?;
        let kernel = Kernel::assemble(KernelParts {
            home,
            config,
            workspace,
            registry,
            audit,
            capabilities,
            kv,
            identity,
            bus,
            overlay,
            chain,
            principal,
            mcp_principal,
            runtime_key: Arc::new(key),
            lattice: stores.joined,
        });
        let rest = async {
            Box::pin(kernel.join_lattice(stores.first)).await?;
            kernel.record_sessions_ended(&[], &ended).await?;
            announce(&kernel, &found, unrecorded, started).await
        };
        if let Err(e) = rest.await {
            // A boot that fails leaves nothing of it running.
            kernel.stop_tasks().await;
            return Err(e);
        }
        Ok(kernel)
    }
}

/// Records the boot: where, in which mode, with which configuration (unless the log is
/// read-only).
async fn record_boot(
    audit: &AuditLog,
    chain: ChainId,
    home: &CapsidHome,
    workspace: &std::path::Path,
    config: &KernelConfig,
) -> Result<(), KernelError> {
    if audit.is_read_only() {
        return Ok(());
    }
    let details = serde_json::json!({
        "home": home.root(),
        "workspace": workspace,
        "dev": config.dev,
        "config": config.fingerprint(),
        "lattice": config.lattice.as_ref().map(|l| &l.name),
    });
    let record = boot_record(capsid_audit::action::KERNEL_BOOT, &details)?;
    audit.append(chain, record).await?;
    Ok(())
}

/// The check every load makes: what the config requires, the runtime key, the trust store
/// (a store file that is malformed or open to others stops the boot, naming it).
async fn signature_check(
    home: &CapsidHome,
    config: &KernelConfig,
    key: &KeyPair,
) -> Result<Arc<SignatureCheck>, KernelError> {
    let dir = home.trust_dir();
    let trust = Arc::new(blocking(move || TrustStore::open(&dir)).await??);
    Ok(Arc::new(SignatureCheck::new(
        config.signing.require,
        key.public_key(),
        trust,
    )))
}

/// Loads the capsules (none over a read-only audit log), then publishes and keeps the
/// report.
async fn announce(
    kernel: &Kernel,
    found: &AuditFinding,
    unrecorded: Vec<String>,
    started: Instant,
) -> Result<(), KernelError> {
    let mut report = if kernel.audit().is_read_only() {
        BootReport::default()
    } else {
        load_capsules(kernel).await?
    };
    report.audit_read_only = kernel.audit().is_read_only();
    report.audit_problems = found.problems();
    report.unrecorded = unrecorded;
    report.boot_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let payload = serde_json::to_vec(&report).unwrap_or_default();
    kernel.bus().publish(CAPSULES_LOADED_TOPIC, payload, None)?;
    kernel.finish_boot(report);
    Ok(())
}

/// Hands the operator's `[capsules.<name>.env]` values to the registry (names were checked
/// when the config was validated).
fn apply_operator_env(registry: &Registry, config: &KernelConfig) {
    for (name, settings) in &config.capsules {
        if let Ok(id) = CapsuleId::new(name.as_str()) {
            registry.set_operator_env(&id, settings.env.clone());
        }
    }
}

/// Runs blocking setup off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, KernelError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KernelError::Io {
            path: PathBuf::from("<setup task>"),
            source: std::io::Error::other(e.to_string()),
        })
}

/// What boot found opening the audit log.
enum AuditFinding {
    /// It verified.
    Sound,
    /// It failed verification and was set aside at `kept`; the new log records it.
    Quarantined {
        kept: PathBuf,
        problems: Vec<String>,
    },
    /// It failed verification and is open read-only.
    ReadOnly { problems: Vec<String> },
}

impl AuditFinding {
    fn problems(&self) -> Vec<String> {
        match self {
            Self::Sound => Vec::new(),
            Self::Quarantined { problems, .. } | Self::ReadOnly { problems } => problems.clone(),
        }
    }
}

/// Opens the audit log. A tampered one is refused, set aside and reported in a new log, or
/// kept open read-only, per `policy`.
async fn open_audit(
    home: &CapsidHome,
    key: KeyPair,
    policy: TamperPolicy,
) -> Result<(AuditLog, AuditFinding), KernelError> {
    let path = home.audit_db_path();
    let secret = key.to_secret_bytes();
    let first = {
        let path = path.clone();
        blocking(move || AuditLog::open(&path, key)).await?
    };
    let report = match first {
        Ok(log) => return Ok((log, AuditFinding::Sound)),
        Err(capsid_audit::AuditError::Tampered { report, .. })
            if policy != TamperPolicy::Refuse =>
        {
            report
        }
        Err(e) => return Err(e.into()),
    };
    // Bounded: the record must fit the audit's details limit.
    let problems: Vec<String> = report.problems().into_iter().take(64).collect();
    if policy == TamperPolicy::ReadOnly {
        let (log, _) = {
            let path = path.clone();
            blocking(move || AuditLog::open_read_only(&path)).await??
        };
        tracing::error!(
            log = %path.display(),
            problems = problems.len(),
            "the audit log failed verification; it is open read-only, no capsule is loaded and nothing audited can run"
        );
        for problem in &problems {
            tracing::error!(log = %path.display(), "{problem}");
        }
        return Ok((log, AuditFinding::ReadOnly { problems }));
    }
    let kept = set_aside(&path)?;
    tracing::error!(
        log = %path.display(),
        kept = %kept.display(),
        "the audit log failed verification; it was set aside and a new log started"
    );
    let key = KeyPair::from_secret_bytes(&secret);
    let log = blocking(move || AuditLog::open(&path, key)).await??;
    Ok((log, AuditFinding::Quarantined { kept, problems }))
}

/// Moves a tampered log (and its SQLite side files) to `<log>.tampered-<ns>[-n]`, never over
/// an earlier one; returns where the log went.
fn set_aside(path: &std::path::Path) -> Result<PathBuf, KernelError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let named = |n: u32, suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".tampered-{stamp}"));
        if n > 0 {
            p.push(format!("-{n}"));
        }
        p.push(suffix);
        PathBuf::from(p)
    };
    let n = (0..1000)
        .find(|n| !named(*n, "").exists())
        .ok_or_else(|| KernelError::Io {
            path: path.to_owned(),
            source: std::io::Error::other("too many tampered logs kept aside"),
        })?;
    let aside = named(n, "");
    std::fs::hard_link(path, &aside).map_err(io(&aside))?;
    std::fs::remove_file(path).map_err(io(path))?;
    for side in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(side);
        let from = PathBuf::from(from);
        if from.exists() {
            std::fs::rename(&from, named(n, side)).map_err(io(&from))?;
        }
    }
    Ok(aside)
}

/// Becomes the reaper of capsule children's orphans and kills what a host that died without
/// cleaning up left in its cgroups (recorded when it found anything; returned, to be
/// reported instead, when the audit log is read-only).
async fn contain_processes(audit: &AuditLog, chain: &ChainId) -> Result<Vec<String>, KernelError> {
    if let Err(e) = capsid_process::become_subreaper() {
        tracing::warn!(error = %e, "cannot become the subreaper of capsule children");
    }
    let swept = blocking(capsid_process::sweep_stale_cgroups).await?;
    if swept.killed > 0 || swept.stuck > 0 {
        let details = serde_json::json!({
            "killed": swept.killed, "removed": swept.removed, "stuck": swept.stuck,
        });
        let record = boot_record(capsid_audit::action::PROCESS_SWEPT, &details)?;
        if audit.is_read_only() {
            tracing::error!(%details, "killed what dead hosts left behind; not recorded (the audit log is read-only)");
            return Ok(vec![format!("process.swept {details}")]);
        }
        audit.append(*chain, record).await?;
    }
    Ok(Vec::new())
}

/// Loads the installed capsules in dependency order: those that need the network (and what
/// they require) first, then the rest. Each phase is bounded by the boot timeout; a capsule
/// that fails is reported and left failed (the health monitor may retry it).
async fn load_capsules(kernel: &Kernel) -> Result<BootReport, KernelError> {
    let found = {
        let dir = kernel.home().capsules_dir();
        blocking(move || discover(&dir)).await??
    };
    let mut report = BootReport::default();
    for e in &found.errors {
        tracing::error!(error = %e, "capsule not loaded");
        report.failed.push((String::new(), e.to_string()));
    }
    let mut manifests = found.manifests;
    // A capsule whose requirements cannot be met fails alone; the rest still boot.
    let order = loop {
        match load_order(&manifests) {
            Ok(order) => break order,
            Err(e) => {
                let culprits: Vec<CapsuleId> = match &e {
                    capsid_manifest::DependencyError::Missing { capsule, .. } => {
                        vec![capsule.clone()]
                    }
                    capsid_manifest::DependencyError::Cycle { cycle } => cycle.clone(),
                };
                tracing::error!(error = %e, "capsules not loaded");
                for c in &culprits {
                    report.failed.push((c.to_string(), e.to_string()));
                }
                let before = manifests.len();
                manifests.retain(|m| !culprits.contains(&m.name));
                if manifests.len() == before {
                    return Err(e.into());
                }
            }
        }
    };
    let by_name = |name: &CapsuleId| manifests.iter().find(|m| &m.name == name);
    let first = uplink_closure(&manifests);
    let timeout = Duration::from_millis(kernel.config().boot_timeout_ms);
    for phase in [true, false] {
        let names: Vec<&CapsuleId> = order
            .iter()
            .filter(|n| first.contains(*n) == phase)
            .collect();
        let attempted = std::sync::Mutex::new(Vec::new());
        let load = async {
            for name in names.iter().copied() {
                capsid_core::sync::lock(&attempted).push(name.clone());
                let Some(manifest) = by_name(name) else {
                    continue;
                };
                let dir = manifest
                    .file
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default();
                match kernel.load_dir(&dir, None).await {
                    Ok(_) => report.loaded.push(name.to_string()),
                    Err(e) => {
                        tracing::error!(capsule = %name, error = %e, "capsule failed to load");
                        report.failed.push((name.to_string(), e.to_string()));
                    }
                }
            }
        };
        if tokio::time::timeout(timeout, load).await.is_err() {
            report.timed_out = true;
            tracing::error!(?timeout, "capsules were not ready within the boot timeout");
            let attempted = attempted.into_inner().unwrap_or_default();
            for name in names
                .iter()
                .filter(|n| !report.loaded.contains(&n.to_string()))
            {
                let why = if attempted.contains(name) {
                    "still loading at the boot timeout (cancelled)"
                } else {
                    "not loaded: the boot timeout passed first"
                };
                report.failed.push((name.to_string(), why.into()));
            }
        }
    }
    Ok(report)
}

/// The capsules that need the network (`uplink = true`) and, transitively, what they require.
fn uplink_closure(manifests: &[Manifest]) -> Vec<CapsuleId> {
    let mut out: Vec<CapsuleId> = manifests
        .iter()
        .filter(|m| m.capabilities.uplink)
        .map(|m| m.name.clone())
        .collect();
    let mut i = 0;
    while i < out.len() {
        if let Some(m) = manifests.iter().find(|m| m.name == out[i]) {
            for r in &m.requires {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        i += 1;
    }
    out
}

/// Records what opening the overlay finished of a commit or discard a killed kernel left
/// half done, if anything: the workspace (or what capsules see) changed at boot, and the
/// log must say so (or, when it is read-only, the boot report: what could not be recorded).
async fn record_recovered_commit(
    audit: &AuditLog,
    chain: ChainId,
    overlay: &OverlayVfs,
) -> Result<Vec<String>, KernelError> {
    let limited_to = |scope: &[capsid_vfs::VfsPath]| -> Vec<String> {
        scope.iter().map(ToString::to_string).collect()
    };
    let mut finished = Vec::new();
    let changes = overlay.recovered_commit();
    if let Some(scope) = overlay.recovered_commit_scope() {
        let paths: Vec<String> = changes
            .iter()
            .take(MAX_RECOVERED_PATHS_RECORDED)
            .map(|c| c.path.to_string())
            .collect();
        let details = serde_json::json!({
            "changes": changes.len(),
            "paths": paths,
            "limited_to": limited_to(scope),
        });
        finished.push((capsid_audit::action::WORKSPACE_COMMIT_RECOVERED, details));
    }
    if let Some(scope) = overlay.recovered_discard() {
        let details = serde_json::json!({ "limited_to": limited_to(scope) });
        finished.push((capsid_audit::action::WORKSPACE_DISCARD_RECOVERED, details));
    }
    let mut unrecorded = Vec::new();
    for (action, details) in finished {
        if audit.is_read_only() {
            tracing::error!(%details, action, "finished an interrupted workspace review; not recorded (the audit log is read-only)");
            unrecorded.push(format!("{action} {details}"));
            continue;
        }
        audit.append(chain, boot_record(action, &details)?).await?;
    }
    Ok(unrecorded)
}

/// A record of what boot did: the system's, on `kernel://boot`, for information.
fn boot_record(
    action: &str,
    details: &serde_json::Value,
) -> Result<Record, capsid_audit::AuditError> {
    Record::new(Principal::System, action, "kernel://boot", Decision::Info)
        .and_then(|r| r.details(details))
}
