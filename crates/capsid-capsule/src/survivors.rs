//! Persistent processes and pipelines that survive a restart of the runtime: the record a
//! `survive-restart` start leaves in the store ([`SurvivorStore`]), kept true as it restarts
//! and removed when it ends for good, and bringing them back when their capsule is loaded,
//! each checked against the capsule's grants again and recorded.

use capsid_capabilities::Subject;
use capsid_core::CapsuleId;
use capsid_core::time::now_ms;
use capsid_process::{
    Earlier, Owner, PersistentOptions, ProcessTable, Sandbox, SpawnSpec, TableError, UnitSpec,
};
use capsid_storage::{Survivor, SurvivorStore};
use serde::{Deserialize, Serialize};

use crate::grants::persistent_resource;
use crate::host::{HostServices, restart_gate, sandbox_for};

/// What a survivor runs, as kept in its record.
#[derive(Serialize, Deserialize)]
struct Kept {
    unit: UnitSpec,
    options: PersistentOptions,
}

impl std::fmt::Debug for Kept {
    // Its environment may hold secrets: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    hex::encode(bytes)
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

fn stages(unit: &UnitSpec) -> &[SpawnSpec] {
    match unit {
        UnitSpec::Process(s) => std::slice::from_ref(s),
        UnitSpec::Pipeline(p) => p.stages.as_slice(),
    }
}

/// Keeps the record of the survivor `id` (its last run `generation`), started by `owner`.
pub(crate) async fn keep(
    services: &HostServices,
    owner: &Owner,
    id: &str,
    unit: &UnitSpec,
    options: &PersistentOptions,
    generation: u64,
) -> Result<(), String> {
    let id_hash = ProcessTable::id_hash(id).ok_or("a malformed id")?;
    let kept = Kept {
        unit: unit.clone(),
        options: options.clone(),
    };
    let survivor = Survivor {
        capsule: owner.capsule.to_string(),
        principal: owner.principal.to_string(),
        id_hash: hex(&id_hash),
        generation,
        spec: serde_json::to_value(&kept).map_err(|e| e.to_string())?,
        started_ms: u64::try_from(now_ms()).unwrap_or(0),
    };
    SurvivorStore::new(services.kv.clone())
        .put(&survivor)
        .await
        .map_err(|e| e.to_string())
}

/// Forgets the record of the survivor `id_hash` of `capsule` (it ended for good).
pub(crate) async fn forget(services: &HostServices, capsule: &CapsuleId, id_hash: &[u8; 32]) {
    let store = SurvivorStore::new(services.kv.clone());
    if let Err(e) = store.remove(capsule.as_str(), &hex(id_hash)).await {
        tracing::warn!(%capsule, error = %e, "a survivor's record could not be removed");
    }
}

/// Notes the generation of a survivor's new run in its record.
pub(crate) async fn restarted(
    services: &HostServices,
    capsule: &CapsuleId,
    id_hash: &[u8; 32],
    generation: u64,
) {
    let store = SurvivorStore::new(services.kv.clone());
    let updated = match store.get(capsule.as_str(), &hex(id_hash)).await {
        Ok(Some(mut survivor)) => {
            survivor.generation = generation;
            store.put(&survivor).await
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = updated {
        tracing::warn!(%capsule, error = %e, "a survivor's record could not be updated");
    }
}

impl crate::registry::Registry {
    /// [`bring_back`] for the capsule of `manifest`, confined as it asks now.
    pub(crate) async fn bring_back_survivors(&self, manifest: &capsid_manifest::Manifest) {
        let confinement = Confinement {
            sandbox: manifest.capabilities.process_sandbox,
            uplink: manifest.capabilities.uplink,
        };
        bring_back(
            self.services(),
            self.processes(),
            &manifest.name,
            confinement,
        )
        .await;
    }
}

/// Why a survivor was not brought back.
enum NotBack {
    /// Its grants no longer allow it, or its record cannot be read: it is forgotten.
    Refused(String),
    /// It already runs (started again meanwhile): nothing to do.
    Running,
    /// It could not start now (the store, a cap, the program): kept for the next load.
    Failed(String),
}

/// How the capsule being loaded runs its programs now: a survivor's spec takes these from
/// the current manifest and configuration, never from its record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Confinement {
    /// The manifest's `process_sandbox`.
    pub sandbox: capsid_manifest::SandboxPolicy,
    /// The manifest's `uplink`.
    pub uplink: bool,
}

/// Starts again every survivor of `capsule` whose grants still allow it, under its id; those
/// refused are forgotten. Each outcome is recorded. Runs before the capsule's `init`, so the
/// capsule finds its survivors there.
pub(crate) async fn bring_back(
    services: &HostServices,
    table: &ProcessTable,
    capsule: &CapsuleId,
    confinement: Confinement,
) {
    let store = SurvivorStore::new(services.kv.clone());
    let survivors = match store.list(capsule.as_str()).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(%capsule, error = %e, "survivors could not be listed");
            return;
        }
    };
    let principal = services.principal;
    let owner = Owner {
        principal,
        capsule: capsule.clone(),
    };
    for survivor in survivors {
        // Kept for another principal (another home's runtime on the same store): not ours.
        if survivor.principal != principal.to_string() {
            continue;
        }
        let subject = Subject {
            principal,
            capsule: Some(capsule.clone()),
            session: None,
        };
        let outcome = bring_one(services, table, &subject, &survivor, confinement).await;
        let (action, decision, details) = match &outcome {
            Ok(generation) => (
                capsid_audit::action::PROCESS_RESTORED,
                capsid_audit::Decision::Info,
                serde_json::json!({ "generation": generation, "before": survivor.generation }),
            ),
            Err(NotBack::Running) => continue,
            Err(NotBack::Refused(reason)) => (
                capsid_audit::action::PROCESS_NOT_RESTORED,
                capsid_audit::Decision::Deny,
                serde_json::json!({ "reason": reason, "before": survivor.generation }),
            ),
            Err(NotBack::Failed(reason)) => (
                capsid_audit::action::PROCESS_NOT_RESTORED,
                capsid_audit::Decision::Info,
                serde_json::json!({
                    "reason": reason, "before": survivor.generation, "kept": true,
                }),
            ),
        };
        let _ = services
            .record(
                &subject,
                action,
                &persistent_resource(capsule),
                decision,
                &details,
            )
            .await;
        match outcome {
            Ok(generation) => {
                let id_hash = survivor.id_hash.clone();
                let mut kept = survivor;
                kept.generation = generation;
                if let Err(e) = store.put(&kept).await {
                    tracing::warn!(%capsule, error = %e, "a survivor's record could not be updated");
                }
                // Ended while its record was rewritten (its end found nothing to remove).
                if unhex(&id_hash).is_some_and(|h| table.has_ended_hash(&owner, &h)) {
                    let _ = store.remove(capsule.as_str(), &id_hash).await;
                }
            }
            Err(NotBack::Refused(_)) => {
                if let Err(e) = store.remove(capsule.as_str(), &survivor.id_hash).await {
                    tracing::warn!(%capsule, error = %e, "a survivor's record could not be removed");
                }
            }
            Err(NotBack::Running | NotBack::Failed(_)) => {}
        }
    }
}

/// Checks and starts one survivor; its new generation, or why not.
async fn bring_one(
    services: &HostServices,
    table: &ProcessTable,
    subject: &Subject,
    survivor: &Survivor,
    confinement: Confinement,
) -> Result<u64, NotBack> {
    let capsule = subject
        .capsule
        .clone()
        .ok_or_else(|| NotBack::Refused("no capsule".into()))?;
    let id_hash = unhex(&survivor.id_hash)
        .ok_or_else(|| NotBack::Refused("its record names no id hash".into()))?;
    let mut kept: Kept = serde_json::from_value(survivor.spec.clone())
        .map_err(|_| NotBack::Refused("its record cannot be read".into()))?;
    confine(&mut kept.unit, services, confinement);
    // The same checks as every restart: persistent processes, each program, the network.
    let gate = restart_gate(
        services.clone(),
        subject.clone(),
        &capsule,
        stages(&kept.unit),
    );
    gate().await.map_err(NotBack::Refused)?;
    let owner = Owner {
        principal: subject.principal,
        capsule,
    };
    let age_ms = u64::try_from(now_ms())
        .unwrap_or(0)
        .saturating_sub(survivor.started_ms);
    let earlier = Earlier {
        generation: survivor.generation,
        age: std::time::Duration::from_millis(age_ms),
    };
    let restart_gate = kept.options.restart.map(|_| gate);
    table
        .restore(
            id_hash,
            owner,
            kept.unit,
            kept.options,
            restart_gate,
            earlier,
        )
        .await
        .map_err(|e| match e {
            TableError::AlreadyRunning => NotBack::Running,
            other => NotBack::Failed(other.to_string()),
        })
}

/// Puts the capsule's confinement of today on every stage: its sandbox and network as the
/// current manifest says (the network only where it had it and `uplink` still asks for it;
/// the gate checks the grant), who it runs as and the workspace as configured now.
fn confine(unit: &mut UnitSpec, services: &HostServices, confinement: Confinement) {
    let stages: &mut [SpawnSpec] = match unit {
        UnitSpec::Process(s) => std::slice::from_mut(s),
        UnitSpec::Pipeline(p) => p.stages.as_mut_slice(),
    };
    for stage in stages {
        let had_network = matches!(
            stage.sandbox,
            Sandbox::Auto { network: true } | Sandbox::Required { network: true }
        );
        stage.sandbox = sandbox_for(confinement.sandbox, had_network && confinement.uplink);
        stage.sandbox_identity = services.sandbox_identity;
        stage.workspace.clone_from(&services.workspace);
    }
}
