//! Persistent processes and pipelines that survive a restart of the runtime: the record a
//! `survive-restart` start leaves in the store ([`SurvivorStore`]), kept true as it restarts
//! and removed when it ends for good, and bringing them back when their capsule is loaded,
//! each checked against the capsule's grants again and recorded.

use capsid_capabilities::Subject;
use capsid_core::CapsuleId;
use capsid_core::time::now_ms;
use capsid_process::{Owner, PersistentOptions, ProcessTable, SpawnSpec, UnitSpec};
use capsid_storage::{Survivor, SurvivorStore};
use serde::{Deserialize, Serialize};

use crate::grants::persistent_resource;
use crate::host::{HostServices, restart_gate};

/// What a survivor runs, as kept in its record.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    unit: UnitSpec,
    options: PersistentOptions,
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

/// Starts again every survivor of `capsule` whose grants still allow it, under its id; the
/// others are not started, and their records removed. Each outcome is recorded.
pub(crate) async fn bring_back(services: &HostServices, table: &ProcessTable, capsule: &CapsuleId) {
    let store = SurvivorStore::new(services.kv.clone());
    let survivors = match store.list(capsule.as_str()).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(%capsule, error = %e, "survivors could not be listed");
            return;
        }
    };
    let principal = services.principal;
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
        let outcome = bring_one(services, table, capsule, &subject, &survivor).await;
        let (action, details) = match &outcome {
            Ok(generation) => (
                capsid_audit::action::PROCESS_RESTORED,
                serde_json::json!({ "generation": generation, "before": survivor.generation }),
            ),
            Err(reason) => (
                capsid_audit::action::PROCESS_NOT_RESTORED,
                serde_json::json!({ "reason": reason, "before": survivor.generation }),
            ),
        };
        let decision = if outcome.is_ok() {
            capsid_audit::Decision::Info
        } else {
            capsid_audit::Decision::Deny
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
                let mut kept = survivor;
                kept.generation = generation;
                if let Err(e) = store.put(&kept).await {
                    tracing::warn!(%capsule, error = %e, "a survivor's record could not be updated");
                }
            }
            Err(_) => {
                if let Err(e) = store.remove(capsule.as_str(), &survivor.id_hash).await {
                    tracing::warn!(%capsule, error = %e, "a survivor's record could not be removed");
                }
            }
        }
    }
}

/// Checks and starts one survivor; its new generation, or why not.
async fn bring_one(
    services: &HostServices,
    table: &ProcessTable,
    capsule: &CapsuleId,
    subject: &Subject,
    survivor: &Survivor,
) -> Result<u64, String> {
    let id_hash = unhex(&survivor.id_hash).ok_or("its record names no id hash")?;
    let kept: Kept = serde_json::from_value(survivor.spec.clone())
        .map_err(|e| format!("its record cannot be read: {e}"))?;
    // The same checks as every restart: persistent processes, each program, the network.
    let gate = restart_gate(
        services.clone(),
        subject.clone(),
        capsule,
        stages(&kept.unit),
    );
    gate().await?;
    let owner = Owner {
        principal: subject.principal,
        capsule: capsule.clone(),
    };
    let restart_gate = kept.options.restart.map(|_| gate);
    table
        .restore(
            id_hash,
            owner,
            kept.unit,
            kept.options,
            restart_gate,
            survivor.generation,
        )
        .await
        .map_err(|e| e.to_string())
}
