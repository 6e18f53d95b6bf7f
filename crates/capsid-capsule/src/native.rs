//! Native capsules (`[native] command = [...]`): programs the runtime starts in the workspace
//! and supervises ([`Supervisor`]): restarted on failure with backoff up to a cap, health,
//! restart count and a CPU/RSS history visible, memory watched against `limits.memory_mb`.
//!
//! Starting one needs the same `process://exec/...` capability a capsule's own spawn would;
//! under dev trust the manifest's command is granted, otherwise an operator must have granted
//! it. The program runs in the OS sandbox where `bwrap` is installed, without network.

use std::path::PathBuf;
use std::sync::Arc;

use capsid_capabilities::{Decision, Permissions, Subject};
use capsid_process::{Health, Quota, QuotaAction, RestartPolicy, Sample, SpawnSpec, Supervisor};

use crate::error::CapsuleError;
use crate::grants::exec_resource;
use crate::host::HostServices;
use crate::manifest::{Component, Manifest};

/// A supervised native capsule.
#[derive(Debug)]
pub struct NativeCapsule {
    pub(crate) manifest: Manifest,
    pub(crate) dir: PathBuf,
    supervisor: Arc<Supervisor>,
}

impl NativeCapsule {
    /// Checks the capability to run the manifest's command, then starts supervising it.
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
        } = &manifest.component
        else {
            return Err(CapsuleError::NotWasm(manifest.name.clone()));
        };
        let name = manifest.name.clone();
        let (program, args) = command
            .split_first()
            .ok_or_else(|| CapsuleError::NotWasm(name.clone()))?;
        let resource = exec_resource(program);
        let subject = Subject {
            principal: services.principal,
            capsule: Some(name.clone()),
        };
        let decision = services
            .capabilities
            .check(&subject, Permissions::EXEC, &resource)
            .await;
        let (verdict, details) = match &decision {
            Decision::Allow { grant } => (
                capsid_audit::Decision::Allow,
                serde_json::json!({ "grant": grant.to_string(), "native": true }),
            ),
            Decision::Deny(reason) => (
                capsid_audit::Decision::Deny,
                serde_json::json!({ "reason": reason.to_string(), "native": true }),
            ),
        };
        services
            .record(&subject, "process.spawn", &resource, verdict, &details)
            .await
            .map_err(|message| CapsuleError::Setup {
                capsule: name.clone(),
                what: "recording the spawn",
                message,
            })?;
        if !decision.is_allowed() {
            return Err(CapsuleError::Denied {
                capsule: name,
                resource,
            });
        }
        let mut spec =
            SpawnSpec::new(program.clone(), services.workspace.clone()).args(args.iter().cloned());
        spec.sandbox = crate::host::sandbox_for(manifest.capabilities.process_sandbox);
        let policy = RestartPolicy {
            initial_backoff: std::time::Duration::from_millis(*restart_initial_ms),
            max_backoff: std::time::Duration::from_millis(*restart_max_ms),
            max_restarts: *max_restarts,
            ..RestartPolicy::default()
        };
        let quota = Quota {
            memory_bytes: Some(manifest.limits.memory_mb << 20),
            processes: None,
            action: QuotaAction::Log,
        };
        let supervisor = Supervisor::start(name.as_str(), spec, policy, quota);
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
