//! The registry's capsules by name, with live counts of how many are ready and failed, kept
//! as slots come and go and as their capsules' states move, so `status` reads them at once
//! however many capsules there are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use capsid_core::CapsuleId;
use capsid_core::tally::{Standing, Tally};

use crate::capsule::LoadedCapsule;
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

/// Capsules by name. Reads go through `Deref` to the map; every change goes through
/// [`insert`](Self::insert) and [`remove`](Self::remove), which keep the counts.
#[derive(Default)]
pub(crate) struct Slots {
    map: BTreeMap<CapsuleId, Slot>,
    tally: Arc<Tally>,
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

    /// How many capsules there are, ready and failed.
    pub(crate) fn counts(&self) -> CapsuleCounts {
        CapsuleCounts {
            known: self.map.len(),
            ready: self.tally.ready(),
            failed: self.tally.failed(),
        }
    }
}
