//! Instance slots are shared by every capsule (the pooling allocator holds
//! `MAX_LIVE_INSTANCES`), and each capsule keeps instances warm for its next call. A warm
//! instance must never keep another capsule from running: when an instantiation finds the
//! pool full, the least recently used idle instance of any capsule is dropped and the
//! instantiation tried again. So idle capsules pin no slots, and any number of them load.
//! An instance that holds background children is never taken: dropping it would kill them.

use std::sync::{Mutex, Weak};

use capsid_core::sync::lock;

use crate::capsule::LoadedCapsule;

/// The registry's loaded capsules, for taking back their idle instances.
#[derive(Debug, Default)]
pub(crate) struct Warmth {
    capsules: Mutex<Vec<Weak<LoadedCapsule>>>,
}

impl Warmth {
    /// Counts `capsule`'s idle instances as reclaimable (forgotten once it is dropped).
    pub(crate) fn register(&self, capsule: Weak<LoadedCapsule>) {
        let mut capsules = lock(&self.capsules);
        capsules.retain(|c| c.strong_count() > 0);
        capsules.push(capsule);
    }

    /// Frees one instance slot: the idle instance of the least recently used capsule that
    /// can give one up (an instance holding background children is never taken). Whether one
    /// was freed.
    pub(crate) async fn reclaim(&self) -> bool {
        let mut live: Vec<_> = lock(&self.capsules)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.has_releasable())
            .collect();
        live.sort_by_key(|c| c.last_used());
        for capsule in live {
            // Another call may have taken its idle instance meanwhile: try the next one.
            if capsule.release_idle().await {
                return true;
            }
        }
        false
    }
}
