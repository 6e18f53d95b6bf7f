//! Joining a lattice (`[lattice]`): the connection, grants and identities kept in the
//! lattice's bucket instead of this host's store, and the follower that brings what other
//! hosts grant and revoke into this host's caches (denying while it cannot see them).

use std::sync::Arc;
use std::time::Duration;

use capsid_capabilities::CapabilityStore;
use capsid_core::CapsidHome;
use capsid_crypto::{KeyPair, PublicKey};
use capsid_lattice::{JetStreamKvStore, Lattice, LinkState};
use capsid_storage::{IdentityStore, KvStore};
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;

use crate::config::KernelConfig;
use crate::error::KernelError;

/// How long the follower waits before watching again after it could not.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// A lattice this host joined, with the bucket it shares.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub lattice: Lattice,
    pub kv: Arc<JetStreamKvStore>,
}

/// Where grants and identities live: this host's store, or the lattice's bucket.
pub(crate) struct GrantStores {
    pub capabilities: Arc<CapabilityStore>,
    pub identity: IdentityStore,
    pub joined: Option<Joined>,
}

/// Opens the capability and identity stores: on `local` alone, or, with `[lattice]`, on
/// the lattice's bucket, honouring grants issued by this host's `key` and the trusted hosts.
pub(crate) async fn open_grant_stores(
    home: &CapsidHome,
    config: &KernelConfig,
    local: &Arc<dyn KvStore>,
    key: KeyPair,
) -> Result<GrantStores, KernelError> {
    let Some(lattice_config) = &config.lattice else {
        let capabilities = CapabilityStore::open(local.clone(), Arc::new(key), &[]).await?;
        return Ok(GrantStores {
            capabilities: Arc::new(capabilities),
            identity: IdentityStore::new(local.clone()),
            joined: None,
        });
    };
    let hosts = trusted_hosts(&lattice_config.trusted_hosts)?;
    let lattice = Lattice::connect(lattice_config, home.root()).await?;
    let kv = Arc::new(JetStreamKvStore::open(&lattice, &lattice_config.kv_bucket()).await?);
    let shared: Arc<dyn KvStore> = kv.clone();
    let capabilities = CapabilityStore::open(shared.clone(), Arc::new(key), &hosts).await?;
    capabilities.share();
    Ok(GrantStores {
        capabilities: Arc::new(capabilities),
        identity: IdentityStore::new(shared),
        joined: Some(Joined { lattice, kv }),
    })
}

fn trusted_hosts(keys: &[String]) -> Result<Vec<PublicKey>, KernelError> {
    keys.iter()
        .map(|k| {
            hex::decode(k)
                .ok()
                .and_then(|b| PublicKey::from_bytes(&b).ok())
                .ok_or_else(|| {
                    KernelError::Lattice(capsid_lattice::LatticeError::Config(format!(
                        "trusted_hosts entry {k:?} is not an ed25519 public key"
                    )))
                })
        })
        .collect()
}

/// Follows the shared grants for as long as the host runs: every change another host makes
/// reaches `capabilities`; while the lattice is out of reach, or the watch broken, checks
/// are denied, and once it is back every revocation is read again before they run.
pub(crate) fn follow(joined: &Joined, capabilities: Arc<CapabilityStore>) -> JoinHandle<()> {
    let (lattice, kv) = (joined.lattice.clone(), joined.kv.clone());
    tokio::spawn(async move {
        let mut states = lattice.link_states();
        loop {
            if states
                .wait_for(|s| *s == LinkState::Connected)
                .await
                .is_err()
            {
                return;
            }
            // Watch first, then read: a change made in between is seen by one or the other.
            let mut changes = match kv.watch(CapabilityStore::KEY_SPACE).await {
                Ok(changes) => changes,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the lattice's grants");
                    capabilities.lost_sight();
                    tokio::time::sleep(FOLLOW_RETRY).await;
                    continue;
                }
            };
            if let Err(e) = capabilities.resync().await {
                tracing::warn!(error = %e, "cannot read the lattice's revocations");
                capabilities.lost_sight();
                tokio::time::sleep(FOLLOW_RETRY).await;
                continue;
            }
            loop {
                tokio::select! {
                    change = changes.next() => match change {
                        Some(Ok(key)) => capabilities.changed_elsewhere(&key),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "following the lattice's grants broke");
                            break;
                        }
                        None => break,
                    },
                    lost = states.wait_for(|s| *s != LinkState::Connected) => {
                        if lost.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
            capabilities.lost_sight();
        }
    })
}
