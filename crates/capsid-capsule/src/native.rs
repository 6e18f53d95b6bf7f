//! Native capsules (`[native] command = [...]`): programs the runtime starts in the workspace
//! and supervises ([`Supervisor`]): restarted on failure with backoff up to a cap, health,
//! restart count and a CPU/RSS history visible, memory (`limits.memory_mb`) and processes
//! (`[native] max_processes`) watched, a breach logged or killed (`[native] quota_action`).
//!
//! Starting one needs the same `process://exec/...` capability a capsule's own spawn would,
//! checked and recorded at every start, restarts included; under dev trust the manifest's
//! command is granted, otherwise an operator must have granted it. The program runs in the
//! OS sandbox where `bwrap` is installed, without network unless `uplink` is granted
//! (`process://network/<capsule>`), with the ceilings a capsule's
//! children get. It writes the workspace directly, not through the overlay.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use capsid_capabilities::{Denied, Permissions, Subject};
use capsid_core::CapsuleId;
use capsid_core::limits::{MAX_CAPSULE_CHILD_PIDS, NATIVE_OPEN_FILES};
use capsid_process::{
    Health, Quota, QuotaAction, RestartPolicy, Sample, SpawnSpec, StartGate, Supervisor,
};

use crate::error::CapsuleError;
use crate::grants::{exec_resource, network_resource};
use crate::host::HostServices;
use capsid_manifest::{Component, Manifest, NativeQuotaAction};

/// A supervised native capsule.
#[derive(Debug)]
pub struct NativeCapsule {
    pub(crate) manifest: Manifest,
    pub(crate) dir: PathBuf,
    supervisor: Arc<Supervisor>,
}

/// Checks native capsule `name`'s capability to start `resource` and records the decision
/// (every start, restarts included, is a `process.spawn` entry, through the one
/// check-and-record path); `Err` when it is denied or cannot be recorded.
async fn authorize_start(
    services: &HostServices,
    name: &CapsuleId,
    resource: &str,
    restart: bool,
) -> Result<(), CapsuleError> {
    let subject = Subject {
        principal: services.principal,
        capsule: Some(name.clone()),
        session: None,
    };
    let details = serde_json::json!({ "native": true, "restart": restart });
    match services
        .authorize(
            &subject,
            capsid_audit::action::PROCESS_SPAWN,
            Permissions::EXEC,
            resource,
            true,
            details,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(Denied::NotGranted(_)) => Err(CapsuleError::Denied {
            capsule: name.clone(),
            resource: resource.to_owned(),
        }),
        Err(Denied::Unrecorded(message)) => Err(CapsuleError::Setup {
            capsule: name.clone(),
            what: "recording the spawn",
            message,
        }),
    }
}

impl NativeCapsule {
    /// Checks the capability to run the manifest's command, then starts supervising it; every
    /// restart is checked (and recorded) again, so a revoked grant stops the restarts.
    pub(crate) async fn start(
        manifest: Manifest,
        dir: PathBuf,
        services: &HostServices,
    ) -> Result<Self, CapsuleError> {
        let Component::Native {
            command,
            restart_initial_ms,
            restart_max_ms,
            max_restarts,
            quota_action,
            max_processes,
        } = &manifest.component
        else {
            return Err(CapsuleError::NotWasm(manifest.name.clone()));
        };
        let name = manifest.name.clone();
        let (program, args) = command
            .split_first()
            .ok_or_else(|| CapsuleError::NotWasm(name.clone()))?;
        let resource = exec_resource(program);
        authorize_start(services, &name, &resource, false).await?;
        let mut spec =
            SpawnSpec::new(program.clone(), services.workspace.clone()).args(args.iter().cloned());
        // The network only when asked for and granted; a refusal is recorded, and the
        // program runs without it.
        let network = manifest.capabilities.uplink
            && authorize_start(services, &name, &network_resource(&name), false)
                .await
                .is_ok();
        spec.sandbox = crate::host::sandbox_for(manifest.capabilities.process_sandbox, network);
        spec.sandbox_identity = services.sandbox_identity;
        // The same ceilings a capsule's own children get: open files, and (where the host can
        // enforce it) tasks.
        spec.limits.open_files = Some(NATIVE_OPEN_FILES);
        if capsid_process::pids_limit_available() {
            spec.limits.pids = Some(MAX_CAPSULE_CHILD_PIDS);
        }
        let policy = RestartPolicy {
            initial_backoff: std::time::Duration::from_millis(*restart_initial_ms),
            max_backoff: std::time::Duration::from_millis(*restart_max_ms),
            max_restarts: *max_restarts,
            ..RestartPolicy::default()
        };
        let quota = Quota {
            memory_bytes: Some(manifest.limits.memory_mb << 20),
            processes: max_processes.map(|n| n as usize),
            action: match quota_action {
                NativeQuotaAction::Log => QuotaAction::Log,
                NativeQuotaAction::Kill => QuotaAction::Kill,
            },
        };
        // The first start was checked just above; every later one is checked again.
        let checked_once = Arc::new(AtomicBool::new(true));
        let (gate_services, gate_name, gate_resource) =
            (services.clone(), name.clone(), resource.clone());
        let gate: StartGate = Arc::new(move || {
            let (services, name, resource, first) = (
                gate_services.clone(),
                gate_name.clone(),
                gate_resource.clone(),
                checked_once.swap(false, Ordering::AcqRel),
            );
            Box::pin(async move {
                if first {
                    return Ok(());
                }
                authorize_start(&services, &name, &resource, true)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        let supervisor = Supervisor::start(name.as_str(), spec, policy, quota, Some(gate));
        Ok(Self {
            manifest,
            dir,
            supervisor,
        })
    }

    /// Its health.
    pub fn health(&self) -> Health {
        self.supervisor.health()
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.supervisor.restarts()
    }

    /// Its recent CPU and memory samples.
    pub fn history(&self) -> Vec<Sample> {
        self.supervisor.history()
    }

    /// Its supervisor (for the running child's output).
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    pub(crate) async fn stop(&self) {
        self.supervisor.stop().await;
    }
}
