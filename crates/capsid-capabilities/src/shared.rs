//! A capability store shared with other hosts (a lattice's bucket): what another host grants
//! or revokes reaches this host's caches, and while this host cannot see the shared store
//! every check is denied, since a revocation it cannot see may have been made.
//!
//! Whoever follows the shared store calls [`CapabilityStore::changed_elsewhere`] for each key
//! changed under [`CapabilityStore::KEY_SPACE`], [`CapabilityStore::lost_sight`] when it stops
//! seeing changes, and [`CapabilityStore::resync`] once it sees them again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};

use capsid_storage::{KvError, KvStore};
use uuid::Uuid;

use crate::error::{CapabilityError, DenyReason};
use crate::store::{CapabilityStore, REVOKED, TAG, list_all};
use crate::token::CapabilityId;

/// Only this host writes the store.
const LOCAL: u8 = 0;
/// Shared, and this host sees every change.
const CURRENT: u8 = 1;
/// Shared, and this host may be missing changes: checks deny.
const OUT_OF_SIGHT: u8 = 2;

/// Whether a store is shared, and whether this host sees it.
#[derive(Debug, Default)]
pub(crate) struct SharedView(AtomicU8);

impl SharedView {
    /// Whether the store is shared with other hosts.
    pub(crate) fn is_shared(&self) -> bool {
        self.0.load(Ordering::Acquire) != LOCAL
    }

    /// Refuses a check while the shared store is out of sight.
    pub(crate) fn check_current(&self) -> Result<(), DenyReason> {
        if self.0.load(Ordering::Acquire) == OUT_OF_SIGHT {
            return Err(DenyReason::StoreUnavailable(
                "the lattice's grants cannot be seen from this host now".into(),
            ));
        }
        Ok(())
    }
}

impl CapabilityStore {
    /// The key prefix every capability record is stored under: what a host sharing the
    /// store follows.
    pub const KEY_SPACE: &'static [u8] = &[TAG];

    /// Marks the store as shared with other hosts: from now on a host that loses sight of
    /// it ([`lost_sight`](Self::lost_sight)) denies until it [`resync`](Self::resync)s.
    pub fn share(&self) {
        let _ = self
            .shared
            .0
            .compare_exchange(LOCAL, CURRENT, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether checks are being denied because the shared store is out of sight.
    pub fn out_of_sight(&self) -> bool {
        self.shared.0.load(Ordering::Acquire) == OUT_OF_SIGHT
    }

    /// This host no longer sees changes to the shared store: every check is denied until
    /// [`resync`](Self::resync). No effect on a store that is not shared.
    pub fn lost_sight(&self) {
        let _ = self.shared.0.compare_exchange(
            CURRENT,
            OUT_OF_SIGHT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Reads every revocation again and forgets every cached grant, then lets checks run:
    /// called once changes are followed again, so nothing made meanwhile is missed.
    pub async fn resync(&self) -> Result<(), CapabilityError> {
        let revoked = load_revoked(self.kv.as_ref()).await?;
        for id in revoked.iter().copied() {
            self.forget_revoked(id);
        }
        self.grants.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut v) = self.verified.write() {
            v.clear();
        }
        let _ = self.shared.0.compare_exchange(
            OUT_OF_SIGHT,
            CURRENT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        Ok(())
    }

    /// Another host wrote or deleted `key` in the shared store: a revocation joins the
    /// revoked set at once; any other change (a grant, a spent or removed one) makes the
    /// next check of every principal read its grants again.
    pub fn changed_elsewhere(&self, key: &[u8]) {
        match key {
            [TAG, REVOKED, id @ ..] => {
                if let Ok(id) = Uuid::from_slice(id) {
                    self.forget_revoked(CapabilityId(id));
                }
            }
            [TAG, ..] => {
                // A load under way sees the counter move and does not cache what it read.
                self.grants.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut v) = self.verified.write() {
                    v.clear();
                }
            }
            _ => {}
        }
    }
}

/// Every revoked capability id stored in `kv`.
pub(crate) async fn load_revoked(kv: &dyn KvStore) -> Result<HashSet<CapabilityId>, KvError> {
    let mut revoked = HashSet::new();
    for k in list_all(kv, &[TAG, REVOKED]).await? {
        if let Ok(id) = Uuid::from_slice(&k[2..]) {
            revoked.insert(CapabilityId(id));
        }
    }
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use capsid_core::{Principal, PrincipalId};
    use capsid_crypto::KeyPair;
    use capsid_storage::{KvStore, MemoryKvStore};

    use crate::store::{CapabilityStore, Decision, Subject};
    use crate::token::Permissions;

    /// Two hosts' stores on one shared key-value store, each trusting the other's key.
    async fn two_hosts() -> (CapabilityStore, CapabilityStore) {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let a = CapabilityStore::open(kv.clone(), Arc::new(ka), &[pb])
            .await
            .unwrap();
        let b = CapabilityStore::open(kv, Arc::new(kb), &[pa])
            .await
            .unwrap();
        a.share();
        b.share();
        (a, b)
    }

    async fn allowed(store: &CapabilityStore, principal: Principal) -> bool {
        let subject = Subject {
            principal,
            capsule: None,
            session: None,
        };
        matches!(
            store
                .check(&subject, Permissions::EXEC, "tool://hello/greet")
                .await,
            Decision::Allow { .. }
        )
    }

    #[tokio::test]
    async fn what_another_host_grants_and_revokes_reaches_this_one() {
        let (a, b) = two_hosts().await;
        let alice = Principal::User(PrincipalId::new());
        assert!(
            !allowed(&b, alice).await,
            "and B caches that alice holds nothing"
        );
        let grant = a
            .grant(
                alice,
                None,
                "tool://hello/*",
                Permissions::EXEC,
                None,
                false,
            )
            .await
            .unwrap();
        assert!(!allowed(&b, alice).await, "B's cache knows nothing yet");
        b.changed_elsewhere(&[super::TAG, b't']);
        assert!(
            allowed(&b, alice).await,
            "a change elsewhere makes B read again"
        );
        a.revoke(grant.id).await.unwrap();
        let mut revoked = vec![super::TAG, super::REVOKED];
        revoked.extend_from_slice(grant.id.0.as_bytes());
        b.changed_elsewhere(&revoked);
        assert!(!allowed(&b, alice).await, "the revocation reached B's set");
    }

    #[tokio::test]
    async fn out_of_sight_every_check_denies_until_resynced() {
        let (a, b) = two_hosts().await;
        let alice = Principal::User(PrincipalId::new());
        let grant = a
            .grant(
                alice,
                None,
                "tool://hello/*",
                Permissions::EXEC,
                None,
                false,
            )
            .await
            .unwrap();
        assert!(allowed(&b, alice).await);
        b.lost_sight();
        assert!(b.out_of_sight());
        assert!(!allowed(&b, alice).await, "B may be missing a revocation");
        // Revoked while B could not see it: resync reads it.
        a.revoke(grant.id).await.unwrap();
        b.resync().await.unwrap();
        assert!(!b.out_of_sight());
        assert!(!allowed(&b, alice).await);
    }

    #[tokio::test]
    async fn a_store_not_shared_never_goes_out_of_sight() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let store = CapabilityStore::open(kv, Arc::new(KeyPair::generate().unwrap()), &[])
            .await
            .unwrap();
        let alice = Principal::User(PrincipalId::new());
        store
            .grant(
                alice,
                None,
                "tool://hello/*",
                Permissions::EXEC,
                None,
                false,
            )
            .await
            .unwrap();
        store.lost_sight();
        assert!(!store.out_of_sight());
        assert!(allowed(&store, alice).await);
    }
}
