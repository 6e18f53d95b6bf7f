//! A capability store shared with other hosts (a lattice's bucket): what another host grants
//! or revokes reaches this host's caches, and while this host cannot see the shared store
//! every check is denied, since a revocation it cannot see may have been made.
//!
//! Whoever follows the shared store calls [`CapabilityStore::changed_elsewhere`] for each key
//! changed under [`CapabilityStore::KEY_SPACE`], [`CapabilityStore::lost_sight`] when it stops
//! seeing changes, and [`CapabilityStore::resync`] once it sees them again.
//!
//! Every revocation a host sees is also kept in a store of its own: a revocation record
//! deleted from the shared store (by anyone able to write it) un-revokes nothing on a host
//! that has seen it, however often it restarts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

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

/// Whether a store is shared, whether this host sees it, and where it keeps the revocations
/// it has seen.
#[derive(Debug, Default)]
pub(crate) struct SharedView {
    state: AtomicU8,
    remembered: OnceLock<Arc<dyn KvStore>>,
}

impl SharedView {
    /// Whether the store is shared with other hosts.
    pub(crate) fn is_shared(&self) -> bool {
        self.state.load(Ordering::Acquire) != LOCAL
    }

    /// Refuses a check while the shared store is out of sight.
    pub(crate) fn check_current(&self) -> Result<(), DenyReason> {
        if self.state.load(Ordering::Acquire) == OUT_OF_SIGHT {
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

    /// Marks the store as shared with other hosts, keeping the revocations this host sees in
    /// `remember_in` (a store of its own) as well: those it kept before count again now. From
    /// now on a host that loses sight of the shared store ([`lost_sight`](Self::lost_sight))
    /// denies until it [`resync`](Self::resync)s.
    pub async fn share(&self, remember_in: Arc<dyn KvStore>) -> Result<(), CapabilityError> {
        for id in load_revoked(remember_in.as_ref()).await? {
            self.forget_revoked(id);
        }
        let _ = self.shared.remembered.set(remember_in);
        let seen: Vec<CapabilityId> = self
            .revoked
            .read()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        for id in seen {
            self.remember_revocation(id).await?;
        }
        let _ =
            self.shared
                .state
                .compare_exchange(LOCAL, CURRENT, Ordering::AcqRel, Ordering::Acquire);
        Ok(())
    }

    /// Keeps revoked `id` in this host's own store, when the store is shared.
    pub(crate) async fn remember_revocation(&self, id: CapabilityId) -> Result<(), KvError> {
        if let Some(local) = self.shared.remembered.get() {
            local.set(&revocation_key(id), &[]).await?;
        }
        Ok(())
    }

    /// Whether checks are being denied because the shared store is out of sight.
    pub fn out_of_sight(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == OUT_OF_SIGHT
    }

    /// This host no longer sees changes to the shared store: every check is denied until
    /// [`resync`](Self::resync). No effect on a store that is not shared.
    pub fn lost_sight(&self) {
        let _ = self.shared.state.compare_exchange(
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
        // Every one kept here again (writes that change nothing when kept already): one whose
        // copy failed before is kept now.
        for id in revoked.iter().copied() {
            self.remember_revocation(id).await?;
            self.forget_revoked(id);
        }
        self.grants.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut v) = self.verified.write() {
            v.clear();
        }
        let _ = self.shared.state.compare_exchange(
            OUT_OF_SIGHT,
            CURRENT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        Ok(())
    }

    /// Another host wrote or deleted `key` in the shared store: a revocation joins the
    /// revoked set at once (and this host's own store); any other change (a grant, a spent
    /// or removed one) makes the next check of every principal read its grants again.
    pub async fn changed_elsewhere(&self, key: &[u8]) -> Result<(), CapabilityError> {
        match key {
            [TAG, REVOKED, id @ ..] => {
                if let Ok(id) = Uuid::from_slice(id) {
                    self.forget_revoked(CapabilityId(id));
                    self.remember_revocation(CapabilityId(id)).await?;
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
        Ok(())
    }
}

fn revocation_key(id: CapabilityId) -> Vec<u8> {
    let mut key = vec![TAG, REVOKED];
    key.extend_from_slice(id.0.as_bytes());
    key
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

    /// Two hosts' stores on one shared key-value store, each trusting the other's key and
    /// keeping what it sees revoked in a store of its own; and B's own store.
    async fn two_hosts() -> (CapabilityStore, CapabilityStore, Arc<dyn KvStore>) {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let a = CapabilityStore::open(kv.clone(), Arc::new(ka), &[pb])
            .await
            .unwrap();
        let b = CapabilityStore::open(kv, Arc::new(kb), &[pa])
            .await
            .unwrap();
        let b_own: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        a.share(Arc::new(MemoryKvStore::new())).await.unwrap();
        b.share(b_own.clone()).await.unwrap();
        (a, b, b_own)
    }

    /// Grants `alice` every tool of `hello`, from `store`'s host.
    async fn grant_hello(store: &CapabilityStore, alice: Principal) -> crate::Capability {
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
            .unwrap()
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
        let (a, b, _) = two_hosts().await;
        let alice = Principal::User(PrincipalId::new());
        assert!(
            !allowed(&b, alice).await,
            "and B caches that alice holds nothing"
        );
        let grant = grant_hello(&a, alice).await;
        assert!(!allowed(&b, alice).await, "B's cache knows nothing yet");
        b.changed_elsewhere(&[super::TAG, b't']).await.unwrap();
        assert!(
            allowed(&b, alice).await,
            "a change elsewhere makes B read again"
        );
        a.revoke(grant.id).await.unwrap();
        b.changed_elsewhere(&super::revocation_key(grant.id))
            .await
            .unwrap();
        assert!(!allowed(&b, alice).await, "the revocation reached B's set");
    }

    #[tokio::test]
    async fn out_of_sight_every_check_denies_until_resynced() {
        let (a, b, _) = two_hosts().await;
        let alice = Principal::User(PrincipalId::new());
        let grant = grant_hello(&a, alice).await;
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
    async fn a_revocation_deleted_from_the_shared_store_stays_revoked_where_it_was_seen() {
        let shared: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let a_key = Arc::new(KeyPair::generate().unwrap());
        let a_public = [a_key.public_key()];
        let a = CapabilityStore::open(shared.clone(), a_key, &[])
            .await
            .unwrap();
        a.share(Arc::new(MemoryKvStore::new())).await.unwrap();
        let b_own: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let b_key = Arc::new(KeyPair::generate().unwrap());
        let b = CapabilityStore::open(shared.clone(), b_key.clone(), &a_public)
            .await
            .unwrap();
        b.share(b_own.clone()).await.unwrap();
        let alice = Principal::User(PrincipalId::new());
        let grant = grant_hello(&a, alice).await;
        assert!(allowed(&b, alice).await);
        a.revoke(grant.id).await.unwrap();
        let key = super::revocation_key(grant.id);
        b.changed_elsewhere(&key).await.unwrap();
        // Someone able to write the shared store deletes the record.
        assert!(shared.delete(&key).await.unwrap());
        // B restarts: a new store on the same shared store, and its own.
        let restarted = CapabilityStore::open(shared.clone(), b_key, &a_public)
            .await
            .unwrap();
        restarted.share(b_own).await.unwrap();
        assert!(!allowed(&restarted, alice).await, "and after a restart");
        // A host that never saw it is what the record's deletion can fool.
        let fresh =
            CapabilityStore::open(shared, Arc::new(KeyPair::generate().unwrap()), &a_public)
                .await
                .unwrap();
        fresh.share(Arc::new(MemoryKvStore::new())).await.unwrap();
        assert!(allowed(&fresh, alice).await);
    }

    #[tokio::test]
    async fn a_store_not_shared_never_goes_out_of_sight() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let store = CapabilityStore::open(kv, Arc::new(KeyPair::generate().unwrap()), &[])
            .await
            .unwrap();
        let alice = Principal::User(PrincipalId::new());
        grant_hello(&store, alice).await;
        store.lost_sight();
        assert!(!store.out_of_sight());
        assert!(allowed(&store, alice).await);
    }
}
