//! The registry of capsules: load (manifest, grants, compile, instantiate, subscribe),
//! unload, reload, and calls by name. One capsule failing — at load or at a call — never
//! affects the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use capsid_capabilities::Subject;
use capsid_core::CapsuleId;
use capsid_core::limits::DEFAULT_STOP_GRACE;
use capsid_process::{Owner, ProcessTable};
use capsid_signing::{Checked, Signer};
use capsid_storage::{Quota, ScopedKvStore};
use wasmtime::component::Linker;

use crate::bindings::{CapsulePre, link_capsid_host};
use crate::capsule::{CapsuleState, LoadedCapsule, Restart};
use crate::dispatch;
use crate::engine::CapsuleEngine;
use crate::error::CapsuleError;
use crate::grants::{GrantChange, Trust, kv_resource, plan_grants};
use crate::host::{CapsuleContext, HostServices, HostState};
use crate::logbuf::CapsuleLog;
use crate::mcp::McpCapsule;
use crate::slots::{Callee, CapsuleWaker, Slot, Slots};
use crate::warmth::Warmth;
pub use programs::ProgramStats;
pub(crate) use programs::program_state;
use programs::stop_program;

mod info;
mod process_events;
mod programs;
use capsid_manifest::{Component, MANIFEST_FILE, Manifest};
use info::slot_info;
pub use info::{CapsuleCounts, CapsuleInfo, McpStatus, NativeStatus};

/// Capsules by name, and the engine and services they run on.
pub struct Registry {
    engine: Arc<CapsuleEngine>,
    linker: Linker<HostState>,
    services: HostServices,
    slots: Arc<RwLock<Slots>>,
    processes: Arc<ProcessTable>,
    /// The operator's values for capsules' `[env]` keys, by capsule (never logged).
    operator_env: RwLock<BTreeMap<CapsuleId, BTreeMap<String, String>>>,
    /// Loaded capsules' idle instances, taken back when the instance pool is full.
    warmth: Arc<Warmth>,
    /// Who signed each loaded capsule, as its load's check found.
    signers: RwLock<BTreeMap<CapsuleId, Signer>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry running capsules on `engine` with `services`. Called inside a tokio
    /// runtime, it also starts the persistent-process reaper and the delivery of process
    /// lifecycle events to the capsules that watch them.
    pub fn new(engine: Arc<CapsuleEngine>, services: HostServices) -> Result<Self, CapsuleError> {
        let mut linker = Linker::new(engine.engine());
        let link =
            |e: wasmtime::Error| CapsuleError::Engine(format!("linking host interfaces: {e}"));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
        link_capsid_host(&mut linker).map_err(link)?;
        let (events, received) = tokio::sync::mpsc::unbounded_channel();
        let processes = Arc::new(ProcessTable::new(Some(events)));
        let slots: Arc<RwLock<Slots>> = Arc::default();
        if tokio::runtime::Handle::try_current().is_ok() {
            processes.start_reaper();
            tokio::spawn(process_events::deliver_process_events(
                Arc::downgrade(&slots),
                services.clone(),
                received,
            ));
        }
        Ok(Self {
            engine,
            linker,
            services,
            slots,
            processes,
            operator_env: RwLock::default(),
            warmth: Arc::default(),
            signers: RwLock::default(),
        })
    }

    /// Sets the operator's values for capsule `name`'s `[env]` keys, used from its next
    /// load on: they take the place of the manifest's defaults (and give secrets their
    /// value). A key its manifest does not declare makes that load fail, naming the key.
    pub fn set_operator_env(&self, name: &CapsuleId, values: BTreeMap<String, String>) {
        self.operator_env
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), values);
    }

    // The slot map is never held across an await, so a plain lock serves (and a dropped load
    // can fix its slot synchronously).
    fn read_slots(&self) -> RwLockReadGuard<'_, Slots> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_slots(&self) -> RwLockWriteGuard<'_, Slots> {
        self.slots.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A capsule's configuration: each declared `[env]` key with the operator's value, else
    /// its default; keys with neither are absent.
    fn resolve_env(&self, manifest: &Manifest) -> Result<Vec<(String, String)>, CapsuleError> {
        let operator = self
            .operator_env
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&manifest.name)
            .cloned()
            .unwrap_or_default();
        if let Some(key) = operator
            .keys()
            .find(|k| !manifest.env.iter().any(|v| &v.name == *k))
        {
            return Err(CapsuleError::Setup {
                capsule: manifest.name.clone(),
                what: "applying the operator's configuration",
                message: format!("{key} is set, but its manifest declares no [env.{key}]"),
            });
        }
        Ok(manifest
            .env
            .iter()
            .filter_map(|v| {
                let value = operator
                    .get(&v.name)
                    .cloned()
                    .or_else(|| v.default.clone())?;
                Some((v.name.clone(), value))
            })
            .collect())
    }

    /// Who owns the persistent processes capsule `name` starts.
    fn owner(&self, name: &CapsuleId) -> Owner {
        Owner {
            principal: self.services.principal,
            capsule: name.clone(),
        }
    }

    /// The persistent processes capsules started.
    pub fn processes(&self) -> &Arc<ProcessTable> {
        &self.processes
    }

    /// Sets what wakes a capsule the host unloaded while idle when another capsule calls
    /// one of its tools (`capsid:host/tools`); without one, such a capsule is not found.
    pub fn set_waker(&self, waker: Arc<dyn CapsuleWaker>) {
        self.write_slots().waker = Some(waker);
    }

    /// The services capsules run with.
    pub fn services(&self) -> &HostServices {
        &self.services
    }

    /// Loads the capsule in `dir` (its `Capsule.toml`), granting its requests if `trust` is
    /// [`Trust::Dev`]. On failure the capsule is listed as failed with the reason, and the
    /// error is returned.
    pub async fn load(&self, dir: &Path, trust: Trust) -> Result<CapsuleInfo, CapsuleError> {
        let loaded = self.load_as(dir, trust, None).await;
        self.forget_unused_components();
        loaded
    }

    /// Lets the engine drop the compiled components no loaded capsule uses any more.
    fn forget_unused_components(&self) {
        let slots = self.read_slots();
        let in_use = slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Loaded { capsule } => Some(capsule.blake3.as_str()),
                _ => None,
            })
            .collect();
        self.engine.keep_shared(&in_use);
    }

    /// [`Registry::load`] of a capsule being loaded again: once its first instance is
    /// initialised, its `lifecycle.restart` (if it exports one) is told `restart`, and an
    /// error there fails the load. A native capsule has no hook; it simply loads.
    pub async fn load_restarted(
        &self,
        dir: &Path,
        trust: Trust,
        restart: Restart,
    ) -> Result<CapsuleInfo, CapsuleError> {
        let loaded = self.load_as(dir, trust, Some(restart)).await;
        self.forget_unused_components();
        loaded
    }

    async fn load_as(
        &self,
        dir: &Path,
        trust: Trust,
        restart: Option<Restart>,
    ) -> Result<CapsuleInfo, CapsuleError> {
        let file = dir.join(MANIFEST_FILE);
        let source = Manifest::read_source(&file)?;
        let manifest = Manifest::parse(&file, &source)?;
        let name = manifest.name.clone();
        {
            let mut slots = self.write_slots();
            if matches!(
                slots.get(&name),
                Some(
                    Slot::Loading { .. }
                        | Slot::Loaded { .. }
                        | Slot::Native { .. }
                        | Slot::Mcp { .. }
                )
            ) {
                return Err(CapsuleError::AlreadyLoaded(name));
            }
            slots.insert(
                name.clone(),
                Slot::Loading {
                    dir: dir.to_owned(),
                },
            );
        }
        // A capsule loaded anew may start persistent processes and ask for approvals again
        // (unload or a failure closed it).
        self.processes.reopen(&self.owner(&name));
        self.services.approvals.reopen(&name);
        // If this future is dropped mid-load, the slot must not stay `Loading` forever.
        let guard = LoadingGuard {
            registry: self,
            name: Some(name.clone()),
            dir: dir.to_owned(),
        };
        let checked =
            self.services
                .signatures
                .check(dir, &manifest, source.as_bytes(), trust == Trust::Dev);
        capsid_core::sync::write(&self.signers).remove(&name);
        let loaded = match (checked, &manifest.component) {
            (Err(e), _) => Err(e.into()),
            (Ok(checked), Component::Native(_) | Component::Mcp { .. }) => self
                .build_program(manifest, dir, trust, &checked)
                .await
                .map(|slot| (slot, checked)),
            (Ok(checked), Component::Wasm { .. }) => self
                .build(manifest, dir, trust, restart, &checked)
                .await
                .map(|capsule| (Slot::Loaded { capsule }, checked)),
        };
        guard.disarm();
        if loaded.is_err() {
            // What `init` started must not outlive the load that failed, nor come back at
            // the next (what was brought back keeps its record).
            let owner = self.owner(&name);
            let fresh = self.processes.fresh_survivors(&owner);
            self.processes.close(&owner);
            for id_hash in fresh {
                crate::survivors::forget(&self.services, &name, &id_hash).await;
            }
            self.processes.stop_all(&owner, Duration::ZERO).await;
        }
        // Never held with the slots' lock: `list` takes the two in the other order.
        if let Ok((
            _,
            Checked {
                signer: Some(signer),
                ..
            },
        )) = &loaded
        {
            capsid_core::sync::write(&self.signers).insert(name.clone(), signer.clone());
        }
        let mut slots = self.write_slots();
        match loaded {
            Ok((slot, checked)) => {
                let mut info = slot_info(&name, &slot);
                info.signer = checked.signer;
                slots.insert(name, slot);
                Ok(info)
            }
            Err(e) => {
                slots.insert(
                    name,
                    Slot::LoadFailed {
                        dir: dir.to_owned(),
                        reason: e.to_string(),
                    },
                );
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        manifest: Manifest,
        dir: &Path,
        trust: Trust,
        restart: Option<Restart>,
        checked: &Checked,
    ) -> Result<Arc<LoadedCapsule>, CapsuleError> {
        let name = manifest.name.clone();
        let (wasm, pin) = match &manifest.component {
            Component::Wasm { path, blake3 } => (dir.join(path), blake3.clone()),
            Component::Native(_) | Component::Mcp { .. } => {
                return Err(CapsuleError::NotWasm(name));
            }
        };
        let services = &self.services;
        let component = self
            .load_component(&name, &wasm, pin.as_deref(), checked)
            .await?;
        let wrong_world = |e: wasmtime::Error| CapsuleError::WrongWorld {
            capsule: name.clone(),
            reason: format!("{e:#}"),
        };
        let pre = self
            .linker
            .instantiate_pre(&component.component)
            .map_err(wrong_world)?;
        let pre = CapsulePre::new(pre).map_err(wrong_world)?;
        // Only a component that passed its pin, compiled and links against our world gets
        // anything granted.
        if trust == Trust::Dev {
            self.grant_requested(&manifest).await?;
        }
        let kv = ScopedKvStore::open(
            services.kv.clone(),
            name.as_str(),
            Quota {
                max_bytes: Some(manifest.capabilities.kv_quota_bytes),
                max_keys: None,
            },
        )
        .await
        .map_err(|e| CapsuleError::Setup {
            capsule: name.clone(),
            what: "opening its KV namespace",
            message: e.to_string(),
        })?;
        let config = self.resolve_env(&manifest)?;
        let cx = Arc::new(CapsuleContext {
            name: name.clone(),
            subject: Subject {
                principal: services.principal,
                capsule: Some(name.clone()),
                session: None,
            },
            services: services.clone(),
            kv,
            kv_resource: kv_resource(&name),
            config,
            log: CapsuleLog::new(name.clone()),
            started: Instant::now(),
            process_sandbox: manifest.capabilities.process_sandbox,
            uplink: manifest.capabilities.uplink,
            processes: self.processes.clone(),
            http_inflight: Arc::new(tokio::sync::Semaphore::new(
                capsid_core::limits::MAX_HTTP_INFLIGHT,
            )),
            http_queued: Arc::new(tokio::sync::Semaphore::new(
                capsid_core::limits::MAX_HTTP_QUEUED,
            )),
            ask: manifest.capabilities.ask.clone(),
            callees: Arc::downgrade(&self.slots),
        });
        let capsule = Arc::new(LoadedCapsule::new(
            manifest,
            dir.to_owned(),
            component,
            pre,
            cx,
            self.warmth.clone(),
        ));
        self.warmth.register(Arc::downgrade(&capsule));
        capsule.set_state(CapsuleState::Ready);
        // What survives restarts is back before `init` runs, so the capsule finds it there.
        self.bring_back_survivors(&capsule.manifest).await;
        if let Err(e) = capsule.warm_up(restart).await {
            capsule.set_state(CapsuleState::Failed(e.to_string()));
            return Err(e);
        }
        let tasks = dispatch::start(&capsule).await?;
        capsid_core::sync::lock(&capsule.dispatchers).extend(tasks);
        let details = serde_json::json!({
            "blake3": capsule.blake3,
            "version": capsule.manifest.version.to_string(),
            "trust": format!("{trust:?}"),
            "signer": checked.signer,
            "restart": restart.map(|r| serde_json::json!({
                "cause": r.cause.as_str(), "count": r.count,
            })),
        });
        self.record_lifecycle(&name, capsid_audit::action::CAPSULE_LOAD, &details)
            .await
            .map_err(|message| CapsuleError::Setup {
                capsule: name.clone(),
                what: "recording the load",
                message,
            })?;
        Ok(capsule)
    }

    /// The compiled component in `wasm`. The signed hash, when there is one, is the pin: the
    /// bytes compiled are the bytes signed, hashed once, and a difference is tampering.
    async fn load_component(
        &self,
        name: &CapsuleId,
        wasm: &Path,
        manifest_pin: Option<&str>,
        checked: &Checked,
    ) -> Result<crate::engine::LoadedComponent, CapsuleError> {
        let (Some(signed_hash), Some(signer)) = (&checked.component_pin, &checked.signer) else {
            return self.engine.load(name, wasm, manifest_pin).await;
        };
        self.engine
            .load(name, wasm, Some(signed_hash))
            .await
            .map_err(|e| match e {
                CapsuleError::PinMismatch {
                    capsule,
                    path,
                    expected,
                    actual,
                } => capsid_signing::SigningError::Tampered {
                    capsule,
                    file: path,
                    signer: signer.to_string(),
                    expected,
                    actual,
                }
                .into(),
                other => other,
            })
    }

    /// Makes the grant changes `manifest` asks for (dev trust), each recorded on its own
    /// before it is made.
    async fn grant_requested(&self, manifest: &Manifest) -> Result<(), CapsuleError> {
        let services = &self.services;
        let store = &services.capabilities;
        let name = &manifest.name;
        let setup = |message: String| CapsuleError::Setup {
            capsule: name.clone(),
            what: "granting requested capabilities",
            message,
        };
        for change in plan_grants(store, services.principal, manifest).await? {
            let cap = change.capability();
            let action = match change {
                GrantChange::Revoke(_) => capsid_audit::action::CAP_REVOKE_MANIFEST,
                GrantChange::Grant(_) => capsid_audit::action::CAP_GRANT_MANIFEST,
            };
            let details = serde_json::json!({
                "id": cap.id.to_string(),
                "pattern": cap.pattern.as_str(),
                "permissions": cap.permissions.to_string(),
            });
            self.record_lifecycle(name, action, &details)
                .await
                .map_err(setup)?;
            match &change {
                GrantChange::Revoke(c) => store.revoke(c.id).await,
                GrantChange::Grant(c) => store.persist(c).await,
            }
            .map_err(|e| setup(e.to_string()))?;
        }
        Ok(())
    }

    /// Records a lifecycle `action` of capsule `name` (an `info` entry on `capsule://name`).
    async fn record_lifecycle(
        &self,
        name: &CapsuleId,
        action: &str,
        details: &serde_json::Value,
    ) -> Result<(), String> {
        let subject = Subject {
            principal: self.services.principal,
            capsule: Some(name.clone()),
            session: None,
        };
        self.services
            .record(
                &subject,
                action,
                &format!("capsule://{name}"),
                capsid_audit::Decision::Info,
                details,
            )
            .await
    }

    /// Takes what `unload` must shut down: a native capsule leaves the map at once, a wasm
    /// one is marked unloading and stays listed until its instances are shut down.
    fn take_for_unload(&self, name: &CapsuleId) -> Result<Unloaded, CapsuleError> {
        let mut slots = self.write_slots();
        match slots.get(name) {
            None => Err(CapsuleError::NotLoaded(name.clone())),
            Some(Slot::Loading { .. }) => Err(CapsuleError::NotReady {
                capsule: name.clone(),
                state: CapsuleState::Loading.to_string(),
            }),
            Some(Slot::LoadFailed { .. }) => {
                slots.remove(name);
                Ok(Unloaded::Nothing)
            }
            Some(Slot::Native { .. } | Slot::Mcp { .. }) => {
                let Some(slot) = slots.remove(name) else {
                    return Err(CapsuleError::NotLoaded(name.clone()));
                };
                Ok(Unloaded::Program(slot))
            }
            Some(Slot::Loaded { capsule, .. }) => {
                if capsule.state() == CapsuleState::Unloading {
                    return Err(CapsuleError::NotReady {
                        capsule: name.clone(),
                        state: CapsuleState::Unloading.to_string(),
                    });
                }
                capsule.set_state(CapsuleState::Unloading);
                Ok(Unloaded::Wasm(capsule.clone()))
            }
        }
    }

    /// Unloads a capsule: its dispatchers stop, its idle instances get `shutdown`. While that
    /// happens it is listed as `unloading` and its name cannot be loaded again.
    pub async fn unload(&self, name: &CapsuleId) -> Result<(), CapsuleError> {
        let unloading = self.take_for_unload(name)?;
        capsid_core::sync::write(&self.signers).remove(name);
        let capsule = match unloading {
            Unloaded::Wasm(capsule) => capsule,
            Unloaded::Program(slot) => {
                stop_program(&slot).await;
                let kind = if matches!(slot, Slot::Mcp { .. }) {
                    "mcp"
                } else {
                    "native"
                };
                let _ = self
                    .record_lifecycle(
                        name,
                        capsid_audit::action::CAPSULE_UNLOAD,
                        &serde_json::json!({ kind: true }),
                    )
                    .await;
                return Ok(());
            }
            Unloaded::Nothing => return Ok(()),
        };
        // Closed first: an instance still busy in a call cannot start a persistent process
        // after the stop below.
        let owner = self.owner(name);
        self.processes.close(&owner);
        self.services.approvals.withdraw_capsule(name);
        capsule.shut_down().await;
        self.processes.stop_all(&owner, DEFAULT_STOP_GRACE).await;
        self.write_slots().remove(name);
        self.forget_unused_components();
        let _ = self
            .record_lifecycle(
                name,
                capsid_audit::action::CAPSULE_UNLOAD,
                &serde_json::json!({}),
            )
            .await;
        Ok(())
    }

    /// The loaded capsule called `name`.
    pub fn get(&self, name: &CapsuleId) -> Result<Arc<LoadedCapsule>, CapsuleError> {
        match self.read_slots().callee(name)? {
            Callee::Wasm(capsule) => Ok(capsule),
            Callee::Mcp(_) => Err(CapsuleError::NotWasm(name.clone())),
        }
    }

    /// The MCP capsule called `name`, if that is what it is.
    pub fn mcp(&self, name: &CapsuleId) -> Option<Arc<McpCapsule>> {
        match self.read_slots().get(name) {
            Some(Slot::Mcp { mcp }) => Some(mcp.clone()),
            _ => None,
        }
    }

    /// The tools capsule `name` offers now: its manifest's, or for an MCP capsule the
    /// server's accepted ones. Empty for a capsule that is not ready.
    pub fn tools(&self, name: &CapsuleId) -> Vec<capsid_manifest::Tool> {
        self.read_slots().tools(name)
    }

    /// The log of capsule `name` (a WebAssembly or MCP capsule; a native capsule's output is
    /// its process's).
    pub fn log(&self, name: &CapsuleId) -> Result<CapsuleLog, CapsuleError> {
        if let Some(mcp) = self.mcp(name) {
            return Ok(mcp.log().clone());
        }
        Ok(self.get(name)?.log().clone())
    }

    /// Runs `tool` of capsule `name` on `input_json`.
    pub async fn call_tool(
        &self,
        name: &CapsuleId,
        tool: &str,
        input_json: &str,
    ) -> Result<String, CapsuleError> {
        self.call_tool_with(name, tool, input_json, &crate::CallControl::default())
            .await
    }

    /// Runs `tool` of capsule `name` on `input_json` for a caller holding `control`.
    pub async fn call_tool_with(
        &self,
        name: &CapsuleId,
        tool: &str,
        input_json: &str,
        control: &crate::CallControl,
    ) -> Result<String, CapsuleError> {
        let callee = self.read_slots().callee(name)?;
        callee.call(tool, input_json, control).await
    }

    /// How many capsules the registry knows and how many are ready or failed, read without
    /// copying anything (what a `status` asks, as often as clients like).
    pub fn counts(&self) -> CapsuleCounts {
        self.read_slots().counts()
    }

    /// Every capsule the registry knows, by name.
    pub fn list(&self) -> Vec<CapsuleInfo> {
        // One lock at a time (a load takes them in the other order).
        let mut infos: Vec<CapsuleInfo> = self
            .read_slots()
            .iter()
            .map(|(name, slot)| slot_info(name, slot))
            .collect();
        let signers = capsid_core::sync::read(&self.signers);
        for info in &mut infos {
            info.signer = signers.get(&info.name).cloned();
        }
        infos
    }

    /// What the registry knows about `name`.
    pub fn info(&self, name: &CapsuleId) -> Option<CapsuleInfo> {
        self.list().into_iter().find(|i| &i.name == name)
    }
}

/// What `unload` found to shut down, taken out of the slot map under its lock.
enum Unloaded {
    Wasm(Arc<LoadedCapsule>),
    /// A native or MCP capsule's slot.
    Program(Slot),
    Nothing,
}

/// Marks a load that never finished (its future was dropped) as failed.
struct LoadingGuard<'a> {
    registry: &'a Registry,
    name: Option<CapsuleId>,
    dir: PathBuf,
}

impl LoadingGuard<'_> {
    fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let mut slots = self.registry.write_slots();
        if matches!(slots.get(&name), Some(Slot::Loading { .. })) {
            slots.insert(
                name,
                Slot::LoadFailed {
                    dir: self.dir.clone(),
                    reason: "the load was cancelled".into(),
                },
            );
        }
    }
}
