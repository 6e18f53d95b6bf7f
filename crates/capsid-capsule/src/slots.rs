//! The registry's capsules by name, with live counts of how many are ready and failed, kept
//! as slots come and go and as their capsules' states move, so `status` reads them at once
//! however many capsules there are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use capsid_core::CapsuleId;
use capsid_core::tally::{Standing, Tally};

use crate::capsule::{CapsuleState, LoadedCapsule};
use crate::control::CallControl;
use crate::error::CapsuleError;
use crate::mcp::McpCapsule;
use crate::native::NativeCapsule;
use crate::registry::CapsuleCounts;

/// Where one capsule of the registry stands.
pub(crate) enum Slot {
    Loading { dir: PathBuf },
    Loaded { capsule: Arc<LoadedCapsule> },
    Native { native: Arc<NativeCapsule> },
    Mcp { mcp: Arc<McpCapsule> },
    LoadFailed { dir: PathBuf, reason: String },
}

/// A capsule whose tools can be called: a WebAssembly capsule or an MCP server.
#[derive(Clone)]
pub(crate) enum Callee {
    Wasm(Arc<LoadedCapsule>),
    Mcp(Arc<McpCapsule>),
}

impl Callee {
    /// Runs `tool` on `input_json` for a caller holding `control`.
    pub(crate) async fn call(
        &self,
        tool: &str,
        input_json: &str,
        control: &CallControl,
    ) -> Result<String, CapsuleError> {
        match self {
            Self::Wasm(capsule) => capsule.call_tool_with(tool, input_json, control).await,
            Self::Mcp(mcp) => mcp.call(tool, input_json, control).await,
        }
    }
}

/// Capsules by name. Reads go through `Deref` to the map; every change goes through
/// [`insert`](Self::insert) and [`remove`](Self::remove), which keep the counts.
#[derive(Default)]
pub(crate) struct Slots {
    map: BTreeMap<CapsuleId, Slot>,
    tally: Arc<Tally>,
    /// What loads a capsule its host unloaded while idle, for a capsule calling its tools.
    pub(crate) waker: Option<Arc<dyn CapsuleWaker>>,
}

/// Brings back a capsule that its host unloaded while it was idle (the kernel's idle
/// monitor), when another capsule calls one of its tools: the host's own way of waking it,
/// as for a call from a client.
pub trait CapsuleWaker: Send + Sync {
    /// Loads `name` again if its host unloaded it while idle; does nothing otherwise.
    fn wake<'a>(
        &'a self,
        name: &'a CapsuleId,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

impl std::ops::Deref for Slots {
    type Target = BTreeMap<CapsuleId, Slot>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Slots {
    /// Puts `slot` at `name`; the slot it replaced.
    pub(crate) fn insert(&mut self, name: CapsuleId, slot: Slot) -> Option<Slot> {
        // Leave before joining: the new slot may hold the same capsule as the old.
        let old = self.remove(&name);
        self.count(&slot);
        self.map.insert(name, slot);
        old
    }

    /// Takes the slot at `name` out.
    pub(crate) fn remove(&mut self, name: &CapsuleId) -> Option<Slot> {
        let old = self.map.remove(name)?;
        match &old {
            Slot::Loaded { capsule } => capsule.leave_tally(),
            Slot::Native { native } => native.supervisor().leave_tally(),
            Slot::Mcp { mcp } => mcp.supervisor().leave_tally(),
            Slot::LoadFailed { .. } => self.tally.remove(Standing::Failed),
            Slot::Loading { .. } => {}
        }
        Some(old)
    }

    fn count(&self, slot: &Slot) {
        match slot {
            Slot::Loaded { capsule } => capsule.join_tally(self.tally.clone()),
            Slot::Native { native } => native.supervisor().join_tally(self.tally.clone()),
            Slot::Mcp { mcp } => mcp.supervisor().join_tally(self.tally.clone()),
            Slot::LoadFailed { .. } => self.tally.add(Standing::Failed),
            Slot::Loading { .. } => {}
        }
    }

    /// Capsule `name`, to call its tools; why not, when it cannot be (not loaded, not
    /// ready, native).
    pub(crate) fn callee(&self, name: &CapsuleId) -> Result<Callee, CapsuleError> {
        match self.map.get(name) {
            Some(Slot::Loaded { capsule }) => Ok(Callee::Wasm(capsule.clone())),
            Some(Slot::Mcp { mcp }) => Ok(Callee::Mcp(mcp.clone())),
            Some(Slot::Native { .. }) => Err(CapsuleError::NotWasm(name.clone())),
            Some(Slot::Loading { .. }) => Err(CapsuleError::NotReady {
                capsule: name.clone(),
                state: CapsuleState::Loading.to_string(),
            }),
            Some(Slot::LoadFailed { reason, .. }) => Err(CapsuleError::NotReady {
                capsule: name.clone(),
                state: CapsuleState::Failed(reason.clone()).to_string(),
            }),
            None => Err(CapsuleError::NotLoaded(name.clone())),
        }
    }

    /// The tools capsule `name` offers now: its manifest's, or for an MCP capsule the
    /// server's accepted ones. None for a capsule that is not ready.
    pub(crate) fn tools(&self, name: &CapsuleId) -> Vec<capsid_manifest::Tool> {
        match self.map.get(name) {
            Some(Slot::Loaded { capsule }) if capsule.state() == CapsuleState::Ready => {
                capsule.manifest.tools.clone()
            }
            Some(Slot::Mcp { mcp })
                if crate::registry::program_state(&mcp.health()) == CapsuleState::Ready =>
            {
                mcp.tools()
            }
            _ => Vec::new(),
        }
    }

    /// How many capsules there are, ready and failed.
    pub(crate) fn counts(&self) -> CapsuleCounts {
        CapsuleCounts {
            known: self.map.len(),
            ready: self.tally.ready(),
            failed: self.tally.failed(),
        }
    }
}
