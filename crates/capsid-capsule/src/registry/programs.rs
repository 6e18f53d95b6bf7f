//! Native and MCP capsules in the registry: starting their programs under supervision,
//! stopping them, and what `info` reports of them.

use std::path::Path;
use std::sync::Arc;

use capsid_core::CapsuleId;
use capsid_manifest::{Component, Manifest};
use capsid_process::{Health, Sample, Supervisor};
use capsid_signing::Checked;

use super::{CapsuleInfo, McpStatus, NativeStatus, Registry};
use crate::capsule::CapsuleState;
use crate::error::CapsuleError;
use crate::grants::Trust;
use crate::mcp::McpCapsule;
use crate::native::NativeCapsule;
use crate::slots::Slot;

/// A native or MCP capsule's program: its samples and its quota report.
#[derive(Debug, Clone)]
pub struct ProgramStats {
    /// Restarts so far.
    pub restarts: u32,
    /// Samples that breached its quota so far.
    pub quota_breaches: u64,
    /// The last breach, named (`memory 140 MiB over 128 MiB`).
    pub last_breach: Option<String>,
    /// Its recent samples, oldest first.
    pub history: Vec<Sample>,
}

impl ProgramStats {
    fn of(supervisor: &Supervisor) -> Self {
        Self {
            restarts: supervisor.restarts(),
            quota_breaches: supervisor.quota_breaches(),
            last_breach: supervisor.last_breach(),
            history: supervisor.history(),
        }
    }
}

impl Registry {
    /// The samples and quota report of `name`'s program, when it is a native or MCP capsule.
    pub fn program_stats(&self, name: &CapsuleId) -> Option<ProgramStats> {
        match self.read_slots().get(name)? {
            Slot::Native { native } => Some(ProgramStats::of(native.supervisor())),
            Slot::Mcp { mcp } => Some(ProgramStats::of(mcp.supervisor())),
            _ => None,
        }
    }

    /// Starts a native or MCP capsule's program under supervision.
    pub(super) async fn build_program(
        &self,
        manifest: Manifest,
        dir: &Path,
        trust: Trust,
        checked: &Checked,
    ) -> Result<Slot, CapsuleError> {
        let services = &self.services;
        if trust == Trust::Dev {
            self.grant_requested(&manifest).await?;
        }
        let name = manifest.name.clone();
        let env = self.resolve_env(&manifest)?;
        let (slot, kind) = if matches!(manifest.component, Component::Mcp { .. }) {
            let mcp = McpCapsule::start(manifest, dir.to_owned(), env, trust, services).await?;
            (Slot::Mcp { mcp: Arc::new(mcp) }, "mcp")
        } else {
            let native = NativeCapsule::start(manifest, dir.to_owned(), env, services).await?;
            (
                Slot::Native {
                    native: Arc::new(native),
                },
                "native",
            )
        };
        let details = serde_json::json!({
            kind: true,
            "trust": format!("{trust:?}"),
            "signer": checked.signer,
        });
        if let Err(message) = self
            .record_lifecycle(&name, capsid_audit::action::CAPSULE_LOAD, &details)
            .await
        {
            stop_program(&slot).await;
            return Err(CapsuleError::Setup {
                capsule: name,
                what: "recording the load",
                message,
            });
        }
        Ok(slot)
    }
}

/// A supervised program's state as a capsule's.
/// A supervised program's health as a capsule state.
pub(crate) fn program_state(health: &Health) -> CapsuleState {
    match health {
        Health::Failed { reason } => CapsuleState::Failed(reason.clone()),
        Health::Stopped => CapsuleState::Unloading,
        _ => CapsuleState::Ready,
    }
}

pub(super) fn mcp_info(mcp: &McpCapsule) -> CapsuleInfo {
    let health = mcp.health();
    CapsuleInfo {
        name: mcp.manifest.name.clone(),
        version: Some(mcp.manifest.version.clone()),
        dir: mcp.dir.clone(),
        state: program_state(&health),
        tools: mcp.tools().into_iter().map(|t| t.name).collect(),
        blake3: None,
        load_kind: None,
        native: Some(NativeStatus {
            health,
            restarts: mcp.restarts(),
        }),
        mcp: Some(McpStatus {
            connected: mcp.connected(),
            pending_review: mcp.pending().into_iter().map(|p| p.tool).collect(),
        }),
        signer: None,
    }
}

pub(super) fn native_info(native: &NativeCapsule) -> CapsuleInfo {
    let health = native.health();
    let state = program_state(&health);
    CapsuleInfo {
        name: native.manifest.name.clone(),
        version: Some(native.manifest.version.clone()),
        dir: native.dir.clone(),
        state,
        tools: Vec::new(),
        blake3: None,
        load_kind: None,
        native: Some(NativeStatus {
            health,
            restarts: native.restarts(),
        }),
        mcp: None,
        signer: None,
    }
}

/// Stops a native or MCP capsule's program.
pub(super) async fn stop_program(slot: &Slot) {
    match slot {
        Slot::Native { native } => native.stop().await,
        Slot::Mcp { mcp } => mcp.stop().await,
        _ => {}
    }
}
