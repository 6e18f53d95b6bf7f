//! What the registry reports about its capsules: counts, and each capsule's state as the
//! operator sees it.

use std::path::{Path, PathBuf};

use capsid_core::CapsuleId;
use capsid_process::Health;
use capsid_signing::Signer;

use super::programs::{mcp_info, native_info};
use crate::capsule::{CapsuleState, LoadedCapsule};
use crate::engine::LoadKind;
use crate::slots::Slot;

/// How many capsules a registry knows, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleCounts {
    /// Every capsule, whatever its state.
    pub known: usize,
    /// Ready to serve.
    pub ready: usize,
    /// Failed (to load, or since).
    pub failed: usize,
}

/// What the registry reports about a capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsuleInfo {
    /// Its name.
    pub name: CapsuleId,
    /// Its version, when its manifest could be read.
    pub version: Option<semver::Version>,
    /// Its directory.
    pub dir: PathBuf,
    /// Its state.
    pub state: CapsuleState,
    /// Its tools' names.
    pub tools: Vec<String>,
    /// blake3 of its component, once loaded.
    pub blake3: Option<String>,
    /// Whether the component was compiled or read from the cache, once loaded.
    pub load_kind: Option<LoadKind>,
    /// For a native or MCP capsule: its supervisor's view of the program.
    pub native: Option<NativeStatus>,
    /// For an MCP capsule: its connection and review.
    pub mcp: Option<McpStatus>,
    /// Who signed it, once loaded (none when signature checks are off).
    pub signer: Option<Signer>,
}

/// How an MCP capsule's server stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpStatus {
    /// Whether a server is connected and its tools listed.
    pub connected: bool,
    /// Tools waiting for the operator's review.
    pub pending_review: Vec<String>,
}

/// How a native capsule's supervision stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeStatus {
    /// Its health.
    pub health: Health,
    /// Restarts so far.
    pub restarts: u32,
}

pub(super) fn slot_info(name: &CapsuleId, slot: &Slot) -> CapsuleInfo {
    match slot {
        Slot::Loaded { capsule, .. } => info(capsule),
        Slot::Native { native, .. } => native_info(native),
        Slot::Mcp { mcp } => mcp_info(mcp),
        Slot::Loading { dir } => bare(name, dir, CapsuleState::Loading),
        Slot::LoadFailed { dir, reason, .. } => {
            bare(name, dir, CapsuleState::Failed(reason.clone()))
        }
    }
}

fn info(capsule: &LoadedCapsule) -> CapsuleInfo {
    CapsuleInfo {
        name: capsule.name().clone(),
        version: Some(capsule.manifest.version.clone()),
        dir: capsule.dir.clone(),
        state: capsule.state(),
        tools: capsule
            .manifest
            .tools
            .iter()
            .map(|t| t.name.clone())
            .collect(),
        blake3: Some(capsule.blake3.clone()),
        load_kind: Some(capsule.load_kind),
        native: None,
        mcp: None,
        signer: None,
    }
}

fn bare(name: &CapsuleId, dir: &Path, state: CapsuleState) -> CapsuleInfo {
    CapsuleInfo {
        name: name.clone(),
        version: None,
        dir: dir.to_owned(),
        state,
        tools: Vec::new(),
        blake3: None,
        load_kind: None,
        native: None,
        mcp: None,
        signer: None,
    }
}
