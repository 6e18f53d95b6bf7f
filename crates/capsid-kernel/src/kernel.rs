//! The booted kernel: a cheap, cloneable handle over the registry and the services, with the
//! run-time lifecycle (load, unload, reload, install), calls, events and shutdown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use capsid_audit::{AuditLog, ChainId, Decision, Record};
use capsid_capabilities::CapabilityStore;
use capsid_capsule::{
    CallControl, CapsuleError, CapsuleInfo, CapsuleState, Registry, Restart, RestartCause,
};
use capsid_core::limits::SHUTDOWN_UNLOAD_TIMEOUT;
use capsid_core::{CapsidHome, CapsuleId, Principal};
use capsid_events::{Delivery, EventBus};
use capsid_manifest::MANIFEST_FILE;
use capsid_storage::{IdentityStore, KvStore};
use capsid_vfs::OverlayVfs;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::boot::KernelBuilder;
use crate::config::KernelConfig;
use crate::error::KernelError;

/// Topic of the event published when shutdown begins.
pub const SHUTDOWN_TOPIC: &str = capsid_audit::action::KERNEL_SHUTDOWN;

/// Topic prefixes only the kernel publishes on: an operator's event could otherwise pass
/// for the kernel's (`kernel.shutdown`, `health.failed`, `capsules.loaded`).
pub const RESERVED_TOPIC_PREFIXES: &[&str] = &["kernel.", "health.", "capsules."];

/// What boot loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootReport {
    /// Capsules loaded, in load order.
    pub loaded: Vec<String>,
    /// Capsules (or capsule folders, with an empty name) that failed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Whether a phase ran past the boot timeout.
    pub timed_out: bool,
    /// Boot time, from the builder's start to the `capsules.loaded` event, in ms.
    pub boot_ms: u64,
    /// What verification found wrong with the audit log at boot (empty when it verified).
    pub audit_problems: Vec<String>,
    /// Whether the audit log is open read-only (it failed verification and
    /// `audit_tamper = "read-only"`): no capsule was loaded and nothing audited can run.
    pub audit_read_only: bool,
    /// What boot did that it could not record (the audit log is read-only): the sweep of
    /// processes dead hosts left behind, with what it killed.
    pub unrecorded: Vec<String>,
}

/// The kernel's state at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct KernelStatus {
    /// capsid's version.
    pub version: &'static str,
    /// The process id.
    pub pid: u32,
    /// The home directory.
    pub home: PathBuf,
    /// The workspace.
    pub workspace: PathBuf,
    /// Whether dev mode is on.
    pub dev: bool,
    /// The config's fingerprint.
    pub config_fingerprint: String,
    /// Milliseconds since boot began.
    pub uptime_ms: u64,
    /// What boot loaded (shared: a status does not copy it).
    pub boot: Arc<BootReport>,
    /// Capsules known, and how many are ready.
    pub capsules: usize,
    /// Capsules ready to serve.
    pub ready: usize,
    /// Capsules failed.
    pub failed: usize,
    /// The lattice's connection, when the host joined one.
    pub lattice: Option<capsid_lattice::LatticeStatus>,
    /// What crossed the lattice since boot, when the host joined one.
    pub lattice_traffic: Option<crate::LatticeTraffic>,
}

pub(crate) struct KernelParts {
    pub home: CapsidHome,
    pub config: KernelConfig,
    pub workspace: PathBuf,
    pub registry: Registry,
    pub audit: Arc<AuditLog>,
    pub capabilities: Arc<CapabilityStore>,
    pub kv: Arc<dyn KvStore>,
    pub identity: IdentityStore,
    pub bus: EventBus,
    pub overlay: Arc<OverlayVfs>,
    pub chain: ChainId,
    pub principal: Principal,
    /// The user MCP sessions act as by default.
    pub mcp_principal: Principal,
    /// The runtime key: what `capsule.sign` signs reviewed capsules with.
    pub runtime_key: Arc<capsid_crypto::KeyPair>,
    /// The lattice joined at boot (`[lattice]`), if any.
    pub lattice: Option<crate::lattice::Joined>,
}

pub(crate) struct Inner {
    parts: KernelParts,
    fingerprint: String,
    started: Instant,
    boot: Mutex<Arc<BootReport>>,
    closing: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Capsules the idle monitor unloaded: loaded again at their next call.
    idled: Mutex<HashMap<CapsuleId, Vec<capsid_manifest::Tool>>>,
    /// Serialises waking idle capsules, so concurrent calls load one once.
    waking: tokio::sync::Mutex<()>,
    /// Serialises installs.
    pub(crate) installing: tokio::sync::Mutex<()>,
    /// The source hash (manifest + component) each capsule was loaded from, in dev mode:
    /// what hot reload compares a change with.
    sources: Mutex<HashMap<CapsuleId, [u8; 32]>>,
    /// How many times each capsule has been reloaded: what its `restart` hook is told.
    restarts: Mutex<HashMap<CapsuleId, u32>>,
    /// The live client sessions.
    pub(crate) sessions: crate::sessions::Sessions,
}

/// Wakes capsules the idle monitor unloaded, for capsules calling their tools.
struct IdleWaker(std::sync::Weak<Inner>);

impl capsid_capsule::CapsuleWaker for IdleWaker {
    fn wake<'a>(
        &'a self,
        name: &'a CapsuleId,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Some(inner) = self.0.upgrade() {
                let kernel = Kernel { inner };
                if let Err(e) = kernel.wake(name).await {
                    tracing::warn!(capsule = %name, error = %e, "waking an idle capsule failed");
                }
            }
        })
    }
}

/// A booted kernel. Clones share it; [`Kernel::shutdown`] ends it for all of them.
#[derive(Clone)]
pub struct Kernel {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("home", &self.inner.parts.home)
            .field("workspace", &self.inner.parts.workspace)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// A builder: home, workspace and config, each optional.
    pub fn builder() -> KernelBuilder {
        KernelBuilder::default()
    }

    pub(crate) fn assemble(parts: KernelParts) -> Self {
        let fingerprint = parts.config.fingerprint();
        let kernel = Self {
            inner: Arc::new(Inner {
                parts,
                fingerprint,
                started: Instant::now(),
                boot: Mutex::default(),
                closing: AtomicBool::new(false),
                tasks: Mutex::default(),
                idled: Mutex::default(),
                waking: tokio::sync::Mutex::new(()),
                installing: tokio::sync::Mutex::new(()),
                sources: Mutex::default(),
                restarts: Mutex::default(),
                sessions: crate::sessions::Sessions::default(),
            }),
        };
        // A capsule calling an idle capsule's tool wakes it as a client's call does.
        let waker = IdleWaker(Arc::downgrade(&kernel.inner));
        kernel.registry().set_waker(Arc::new(waker));
        kernel
    }

    /// Keeps `task`, if any, until shutdown, which aborts it.
    pub(crate) fn keep_task_if(&self, task: Option<JoinHandle<()>>) {
        let Some(task) = task else { return };
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// Tells the lattice's server and advertiser that the capsules here changed.
    pub(crate) fn capsules_changed(&self) {
        if let Some(joined) = &self.parts().lattice {
            // One permit each: a change made while a loop is busy wakes it when it waits.
            joined.serve_now.notify_one();
            joined.advertise_now.notify_one();
        }
    }

    pub(crate) fn finish_boot(&self, report: BootReport) {
        self.capsules_changed();
        *self
            .inner
            .boot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(report);
        let monitors = crate::monitor::start(self);
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(monitors);
    }

    pub(crate) fn parts(&self) -> &KernelParts {
        &self.inner.parts
    }

    /// The home directory.
    pub fn home(&self) -> &CapsidHome {
        &self.parts().home
    }

    /// The configuration it booted with.
    pub fn config(&self) -> &KernelConfig {
        &self.parts().config
    }

    /// The configuration's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The workspace capsules see (through the overlay).
    pub fn workspace(&self) -> &Path {
        &self.parts().workspace
    }

    /// The capsule registry.
    pub fn registry(&self) -> &Registry {
        &self.parts().registry
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.parts().audit
    }

    /// The capability store.
    pub fn capabilities(&self) -> &Arc<CapabilityStore> {
        &self.parts().capabilities
    }

    /// Users and their platform links.
    pub fn identity(&self) -> &IdentityStore {
        &self.parts().identity
    }

    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        &self.parts().bus
    }

    /// The overlay over the workspace.
    pub fn overlay(&self) -> &Arc<OverlayVfs> {
        &self.parts().overlay
    }

    /// The principal capsules act for (the local root user).
    pub fn principal(&self) -> Principal {
        self.parts().principal
    }

    /// The user MCP sessions act as by default (`mcp`, linked as `mcp`/`default`).
    pub fn mcp_principal(&self) -> Principal {
        self.parts().mcp_principal
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    pub(crate) fn open(&self) -> Result<(), KernelError> {
        if self.is_closing() {
            Err(KernelError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// [`Kernel::open`], and refused at once when the audit log is read-only: a capsule
    /// could not load or install without recording it anyway.
    pub(crate) fn open_recording(&self) -> Result<(), KernelError> {
        self.open()?;
        if self.audit().is_read_only() {
            return Err(capsid_audit::AuditError::ReadOnly(self.audit().path().to_owned()).into());
        }
        Ok(())
    }

    /// The kernel's state at a glance.
    pub fn status(&self) -> KernelStatus {
        let counts = self.registry().counts();
        KernelStatus {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            home: self.home().root().to_owned(),
            workspace: self.workspace().to_owned(),
            dev: self.config().dev,
            config_fingerprint: self.inner.fingerprint.clone(),
            uptime_ms: u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            boot: self
                .inner
                .boot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            capsules: counts.known,
            ready: counts.ready,
            failed: counts.failed,
            lattice_traffic: self.lattice_traffic(),
            lattice: self
                .inner
                .parts
                .lattice
                .as_ref()
                .map(|j| j.lattice.status()),
        }
    }

    /// Every capsule the kernel knows, by name.
    pub fn capsules(&self) -> Vec<CapsuleInfo> {
        self.registry().list()
    }

    /// The directory installed capsule `name` lives in.
    pub fn capsule_dir(&self, name: &CapsuleId) -> PathBuf {
        self.home().capsule_dir(name)
    }

    /// Loads installed capsule `name` (from `<home>/capsules/<name>`).
    pub async fn load(&self, name: &CapsuleId) -> Result<CapsuleInfo, KernelError> {
        let dir = self.capsule_dir(name);
        if !dir.join(MANIFEST_FILE).is_file() {
            return Err(KernelError::NotInstalled(name.clone()));
        }
        self.load_dir(&dir, None).await
    }

    pub(crate) async fn load_dir(
        &self,
        dir: &Path,
        restart: Option<Restart>,
    ) -> Result<CapsuleInfo, KernelError> {
        self.open_recording()?;
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| CapsuleId::new(n).ok());
        // Hashed before the load: a change made while it loads is then seen as one.
        let source = if self.config().dev && self.config().hot_reload {
            let dir = dir.to_owned();
            tokio::task::spawn_blocking(move || crate::watch::source_hash(&dir))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let trust = self.config().trust();
        let info = match restart {
            Some(restart) => self.registry().load_restarted(dir, trust, restart).await?,
            None => self.registry().load(dir, trust).await?,
        };
        // Idle until loaded: its tools stay offered while it wakes.
        if let Some(name) = &name {
            self.idled().remove(name);
        }
        if let Some(hash) = source {
            self.inner
                .sources
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(info.name.clone(), hash);
        }
        self.capsules_changed();
        Ok(info)
    }

    /// The source hash capsule `name` was last loaded from (dev mode with hot reload only).
    pub(crate) fn loaded_source(&self, name: &CapsuleId) -> Option<[u8; 32]> {
        self.inner
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
    }

    /// Unloads capsule `name` (its persistent processes are stopped).
    pub async fn unload(&self, name: &CapsuleId) -> Result<(), KernelError> {
        self.idled().remove(name);
        self.registry().unload(name).await?;
        self.capsules_changed();
        Ok(())
    }

    /// The capsules the idle monitor unloaded, with their tools as they were then.
    pub(crate) fn idled(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CapsuleId, Vec<capsid_manifest::Tool>>> {
        self.inner
            .idled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The capsules whose tools this host offers, by name, with their tools: those ready,
    /// and those the idle monitor unloaded (a call wakes them), so a client's list of tools
    /// does not change while a capsule sleeps.
    pub(crate) fn offered_tools(&self) -> Vec<(CapsuleId, Vec<capsid_manifest::Tool>)> {
        let ready = || {
            self.capsules()
                .into_iter()
                .filter(|c| c.state == CapsuleState::Ready)
                .map(|c| {
                    let tools = self.registry().tools(&c.name);
                    (c.name, tools)
                })
                .collect::<Vec<_>>()
        };
        // Ready, idle, ready again: a capsule is marked idle before it unloads and unmarked
        // only once loaded again, so one going either way is in one of the three reads.
        let mut offered = ready();
        offered.extend(
            self.idled()
                .iter()
                .map(|(name, tools)| (name.clone(), tools.clone())),
        );
        offered.extend(ready());
        // Stable: where a capsule is both, its ready tools (read first) are kept.
        offered.sort_by(|a, b| a.0.cmp(&b.0));
        offered.dedup_by(|a, b| a.0 == b.0);
        offered
    }

    /// The idle monitor's unload: recorded, and undone by the next call.
    pub(crate) async fn unload_idle(&self, name: &CapsuleId) {
        // Marked first, so a call that arrives while it unloads loads it again.
        let tools = self.registry().tools(name);
        self.idled().insert(name.clone(), tools);
        if self.registry().unload(name).await.is_err() {
            self.idled().remove(name);
        } else {
            tracing::info!(capsule = %name, "unloaded while idle");
            let _ = self
                .note(
                    capsid_audit::action::CAPSULE_IDLE_UNLOAD,
                    &format!("capsule://{name}"),
                    serde_json::json!({}),
                )
                .await;
        }
    }

    /// Unloads and loads capsule `name` again from its directory, clearing a failed state.
    /// A capsule that exports `lifecycle.restart` is told (cause `reload`).
    pub async fn reload(&self, name: &CapsuleId) -> Result<CapsuleInfo, KernelError> {
        self.reload_because(name, RestartCause::Reload).await
    }

    /// [`Kernel::reload`], telling the capsule `cause`.
    pub(crate) async fn reload_because(
        &self,
        name: &CapsuleId,
        cause: RestartCause,
    ) -> Result<CapsuleInfo, KernelError> {
        // Before the unload: over a read-only audit log it could not be loaded back.
        self.open_recording()?;
        let dir = self
            .registry()
            .info(name)
            .map(|i| i.dir)
            .ok_or_else(|| CapsuleError::NotLoaded(name.clone()))?;
        self.registry().unload(name).await?;
        let restarts = || {
            self.inner
                .restarts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        // Counted once the capsule is back: a reload that failed never reached it.
        let count = restarts().get(name).copied().unwrap_or(0).saturating_add(1);
        let info = self.load_dir(&dir, Some(Restart { cause, count })).await?;
        restarts().insert(name.clone(), count);
        Ok(info)
    }

    /// Runs `tool` of capsule `name` on JSON `input`, waking it if the idle monitor unloaded
    /// it: the call itself, unchecked and unrecorded ([`Kernel::call_tool_as`] does both).
    pub(crate) async fn run_tool(
        &self,
        name: &CapsuleId,
        tool: &str,
        input: &str,
        control: &CallControl,
    ) -> Result<String, KernelError> {
        self.open()?;
        self.wake(name).await?;
        Ok(self
            .registry()
            .call_tool_with(name, tool, input, control)
            .await?)
    }

    /// Loads capsule `name` again if the idle monitor unloaded it.
    async fn wake(&self, name: &CapsuleId) -> Result<(), KernelError> {
        if self.idled().contains_key(name) {
            let _waking = self.inner.waking.lock().await;
            if self.idled().contains_key(name) && self.registry().info(name).is_none() {
                self.load(name).await?;
            }
            self.idled().remove(name);
        }
        Ok(())
    }

    /// Publishes an event as the operator (recorded in the audit log). Topics under
    /// [`RESERVED_TOPIC_PREFIXES`] are refused.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<Delivery, KernelError> {
        self.open_recording()?;
        capsid_events::validate_topic(topic)?;
        if let Some(prefix) = RESERVED_TOPIC_PREFIXES
            .iter()
            .find(|p| topic.starts_with(*p))
        {
            return Err(KernelError::ReservedTopic {
                topic: topic.to_owned(),
                prefix,
            });
        }
        let bytes = payload.len();
        self.note(
            capsid_audit::action::EVENT_PUBLISH,
            &format!("ipc://publish/{topic}"),
            serde_json::json!({ "bytes": bytes }),
        )
        .await?;
        Ok(self.bus().publish(topic, payload, None)?)
    }

    /// Records an operator action on `resource` (an `info` entry of the local root user).
    pub(crate) async fn note(
        &self,
        action: &str,
        resource: &str,
        details: serde_json::Value,
    ) -> Result<(), KernelError> {
        let record = Record::new(self.principal(), action, resource, Decision::Info)
            .and_then(|r| r.details(&details))?;
        self.audit().append(self.parts().chain, record).await?;
        Ok(())
    }

    /// Stops every task the kernel keeps (monitors, the lattice's), and waits for them, so
    /// none holds the kernel (or reloads a capsule) past this point.
    pub(crate) async fn stop_tasks(&self) {
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Shuts down: publishes `kernel.shutdown`, stops the monitors, unloads every capsule
    /// (retrying while calls in flight hold one up, for a bounded time; that stops their
    /// persistent processes), records the shutdown, closes the KV store and stops the audit
    /// writer (releasing the home for another kernel). Later calls answer
    /// [`KernelError::ShuttingDown`]; calling it again does nothing.
    pub async fn shutdown(&self) {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.bus().publish(SHUTDOWN_TOPIC, b"{}".to_vec(), None);
        self.stop_tasks().await;
        self.leave_lattice().await;
        let deadline = Instant::now() + SHUTDOWN_UNLOAD_TIMEOUT;
        loop {
            let names: Vec<CapsuleId> = self.capsules().into_iter().map(|c| c.name).collect();
            if names.is_empty() {
                break;
            }
            for name in &names {
                match self.registry().unload(name).await {
                    Ok(()) | Err(CapsuleError::NotLoaded(_)) => {}
                    Err(e) => tracing::debug!(capsule = %name, error = %e, "unload retried"),
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!("capsules still busy at shutdown: {names:?}");
                // Their calls may still be running, but their processes stop now.
                let processes = self.registry().processes();
                for (owner, _) in processes.list_all() {
                    processes.stop_all(&owner, std::time::Duration::ZERO).await;
                }
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Calls served for other hosts answer (and record their results) before the end.
        self.finish_served_calls(deadline.into()).await;
        // Refusals counted up to here (a served call's claim among them) are recorded.
        self.record_refusals().await;
        if !self.audit().is_read_only()
            && let Err(e) = self
                .note(
                    capsid_audit::action::KERNEL_SHUTDOWN,
                    "kernel://shutdown",
                    serde_json::json!({}),
                )
                .await
        {
            tracing::warn!(error = %e, "recording the shutdown");
        }
        if let Err(e) = self.parts().kv.close().await {
            tracing::warn!(error = %e, "closing the KV store");
        }
        // Everything recorded is durable; the writer stops and releases the log.
        if let Err(e) = self.audit().shutdown().await {
            tracing::warn!(error = %e, "closing the audit log");
        }
        self.anchor_last_heads().await;
    }
}
