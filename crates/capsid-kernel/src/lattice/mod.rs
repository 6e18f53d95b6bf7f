//! Joining a lattice (`[lattice]`): the connection, grants kept in the lattice's bucket
//! instead of this host's store, and the follower that brings what other hosts grant and
//! revoke into this host's caches (denying while it cannot see them). Tool calls between
//! hosts are in [`calls`], events in [`events`], what each host serves in [`adverts`].

mod adverts;
mod anchors;
mod calls;
mod events;
mod refusals;
mod served;

pub use anchors::AnchorCheck;
pub(crate) use refusals::Refused;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use capsid_capabilities::CapabilityStore;
use capsid_core::CapsidHome;
use capsid_crypto::{KeyPair, PublicKey};
use capsid_lattice::adverts::{Adverts, SeenAdvert};
use capsid_lattice::anchors::Anchors;
use capsid_lattice::{JetStreamKvStore, KeyChanges, Lattice, LinkState, Seal};
use capsid_storage::{IdentityStore, KvStore};
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::config::KernelConfig;
use crate::error::KernelError;

/// How long the follower waits before watching again after it could not.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// A lattice this host joined: the bucket it shares, its seal, and what it knows of the
/// other hosts.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub lattice: Lattice,
    pub kv: Arc<JetStreamKvStore>,
    pub seal: Seal,
    pub adverts: Adverts,
    /// The other hosts' advertisements, as last read.
    pub others: Arc<RwLock<Vec<SeenAdvert>>>,
    pub traffic: Arc<Traffic>,
    /// Wakes the server to serve the capsules loaded now (after boot, a load or an unload).
    pub serve_now: Arc<tokio::sync::Notify>,
    /// Wakes the advertiser likewise.
    pub advertise_now: Arc<tokio::sync::Notify>,
    /// Where this host anchors its audit heads.
    pub anchors: Anchors,
    /// The sequence of each chain's head as last anchored.
    pub anchored: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// Calls from other hosts served here.
    pub served: served::Served,
}

/// What crossed the lattice since boot, counted.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    calls_sent: AtomicU64,
    calls_served: AtomicU64,
    calls_refused: AtomicU64,
    events_exported: AtomicU64,
    events_imported: AtomicU64,
    events_refused: AtomicU64,
    cancels_refused: AtomicU64,
    /// The refusals, to be audited.
    refusals: refusals::Refusals,
}

/// What crossed the lattice since boot, as `status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatticeTraffic {
    /// Calls this host sent to capsules on other hosts.
    pub calls_sent: u64,
    /// Calls from other hosts this host served.
    pub calls_served: u64,
    /// Calls from other hosts refused before they ran (unsigned, untrusted, forged,
    /// replayed or stale envelopes, or copies of a call another host took).
    pub calls_refused: u64,
    /// Events published here on exported topics, sent to the lattice.
    pub events_exported: u64,
    /// Events from other hosts delivered to this host's bus.
    pub events_imported: u64,
    /// Events from other hosts refused (their envelope, or a topic reserved to the kernel).
    pub events_refused: u64,
    /// Events on exported topics dropped because the export queue was full.
    pub exports_dropped: u64,
    /// Cancels from other hosts refused (their envelope).
    pub cancels_refused: u64,
}

impl Traffic {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message refused, and has it audited.
    fn refused(&self, what: Refused, reason: &'static str, sender: Option<&str>) {
        match what {
            Refused::Call => Self::count(&self.calls_refused),
            Refused::Event => Self::count(&self.events_refused),
            Refused::Cancel => Self::count(&self.cancels_refused),
        }
        self.refusals.refused(what, reason, sender);
    }

    pub(crate) fn snapshot(&self, exports_dropped: u64) -> LatticeTraffic {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LatticeTraffic {
            calls_sent: get(&self.calls_sent),
            calls_served: get(&self.calls_served),
            calls_refused: get(&self.calls_refused),
            events_exported: get(&self.events_exported),
            events_imported: get(&self.events_imported),
            events_refused: get(&self.events_refused),
            exports_dropped,
            cancels_refused: get(&self.cancels_refused),
        }
    }
}

/// Where grants live (this host's store, or the lattice's bucket), and the identities.
pub(crate) struct GrantStores {
    pub capabilities: Arc<CapabilityStore>,
    pub identity: IdentityStore,
    pub joined: Option<Joined>,
    /// The lattice's grant changes, watched from before the first read ([`follow`] them).
    pub first: Option<KeyChanges>,
}

/// Opens the capability store on `local`, or, with `[lattice]`, on the lattice's bucket,
/// honouring grants issued by this host's `key` and the trusted hosts, and starts following
/// it. Identities stay in `local` either way: their links are not signed, so in a shared
/// bucket anyone who can write it could make themselves any user, the operator included.
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
            first: None,
        });
    };
    let hosts = trusted_hosts(&lattice_config.trusted_hosts)?;
    for pattern in &lattice_config.export {
        capsid_events::validate_pattern(pattern).map_err(|e| {
            KernelError::Lattice(capsid_lattice::LatticeError::Config(format!("export: {e}")))
        })?;
    }
    let key = Arc::new(key);
    let lattice = Lattice::connect(lattice_config, home.root()).await?;
    let seal = Seal::new(&lattice_config.name, key.clone(), &hosts);
    let adverts = Adverts::open(&lattice, &seal).await?;
    let anchors = Anchors::open(&lattice, &seal).await?;
    // This host's key names its batches' intents: one subject per host, however often it boots.
    let writer = hex::encode(&key.key_id().as_bytes()[..16]);
    let bucket = lattice_config.kv_bucket();
    let kv = Arc::new(JetStreamKvStore::open_as(&lattice, &bucket, &writer).await?);
    let shared: Arc<dyn KvStore> = kv.clone();
    let capabilities = Arc::new(CapabilityStore::open(shared, key, &hosts).await?);
    capabilities.share(local.clone()).await?;
    // Watch first, then read: a change made in between is seen by one or the other. Done
    // here, so boot starts current.
    let first = kv.watch(CapabilityStore::KEY_SPACE).await?;
    capabilities.resync().await?;
    Ok(GrantStores {
        capabilities,
        identity: IdentityStore::new(local.clone()),
        joined: Some(Joined {
            lattice,
            kv,
            seal,
            adverts,
            others: Arc::default(),
            traffic: Arc::default(),
            serve_now: Arc::default(),
            advertise_now: Arc::default(),
            anchors,
            anchored: Arc::default(),
            served: served::Served::default(),
        }),
        first: Some(first),
    })
}

/// At boot, forgets the grants bound to sessions that ended with the last run: none is live
/// on this host yet; but on a lattice's shared store other hosts' sessions may be, so there
/// nothing is forgotten (such grants allow only on their own host).
pub(crate) async fn forget_ended_sessions(
    capabilities: &CapabilityStore,
    joined: Option<&Joined>,
) -> Result<Vec<capsid_capabilities::CapabilityId>, KernelError> {
    match joined {
        None => Ok(capabilities.forget_ended_sessions().await?),
        Some(_) => Ok(Vec::new()),
    }
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

/// Follows the shared grants for as long as the host runs, from `first` (see
/// [`open_grant_stores`]): every change another host makes reaches `capabilities`; while the
/// lattice is out of reach, or the watch broken, checks are denied, and once it is back every
/// revocation is read again before they run. Started once the kernel holds the task, so a
/// boot that fails leaves nothing running.
fn follow(
    joined: Option<&Joined>,
    capabilities: Arc<CapabilityStore>,
    first: Option<KeyChanges>,
) -> Option<JoinHandle<()>> {
    let (joined, first) = (joined?, first?);
    let (lattice, kv) = (joined.lattice.clone(), joined.kv.clone());
    Some(tokio::spawn(async move {
        follow_from(&lattice, &kv, &capabilities, first).await;
        // Nothing follows the grants any more: deny rather than trust a stale cache.
        capabilities.lost_sight();
    }))
}

impl crate::Kernel {
    /// When the host joined a lattice: starts following its grants from `first`, serving
    /// this host's capsules to the other hosts and advertising them, and exchanging events
    /// on exported topics.
    pub(crate) async fn join_lattice(&self, first: Option<KeyChanges>) -> Result<(), KernelError> {
        let Some(joined) = self.parts().lattice.clone() else {
            return Ok(());
        };
        // What can fail comes first: a boot that fails here leaves nothing running.
        let exchange = events::exchange(self, &joined).await?;
        let capabilities = self.capabilities().clone();
        self.keep_task_if(follow(Some(&joined), capabilities, first));
        self.keep_task_if(Some(calls::serve(self, &joined)));
        self.keep_task_if(Some(adverts::advertise(self, &joined)));
        self.keep_task_if(Some(anchors::anchor(self, &joined)));
        self.keep_task_if(Some(refusals::record(self, &joined)));
        for task in exchange {
            self.keep_task_if(Some(task));
        }
        Ok(())
    }

    /// The lattice's traffic since boot, when the host joined one.
    pub fn lattice_traffic(&self) -> Option<LatticeTraffic> {
        let joined = self.parts().lattice.as_ref()?;
        Some(joined.traffic.snapshot(self.bus().export_dropped()))
    }

    /// Takes this host's advertisement down (at shutdown, once nothing serves calls).
    pub(crate) async fn leave_lattice(&self) {
        if let Some(joined) = &self.parts().lattice
            && let Err(e) = joined.adverts.withdraw().await
        {
            tracing::warn!(error = %e, "cannot withdraw this host's advertisement");
        }
    }

    /// Waits until `deadline` for calls served to other hosts to answer, then cancels
    /// those still running (at shutdown, once no call is taken).
    pub(crate) async fn finish_served_calls(&self, deadline: tokio::time::Instant) {
        if let Some(joined) = &self.parts().lattice {
            joined.served.finish(deadline).await;
        }
    }

    /// Anchors the audit heads once more (at shutdown, after the log's last entry).
    pub(crate) async fn anchor_last_heads(&self) {
        if let Some(joined) = &self.parts().lattice {
            anchors::anchor_now(self.audit().path().to_owned(), joined).await;
        }
    }
}

async fn follow_from(
    lattice: &Lattice,
    kv: &JetStreamKvStore,
    capabilities: &CapabilityStore,
    first: KeyChanges,
) {
    let mut states = lattice.link_states();
    let mut changes = Some(first);
    loop {
        if let Some(mut watching) = changes.take() {
            loop {
                // The link's state is read and let go here: its guard must not live on
                // across the awaits below.
                let next = tokio::select! {
                    change = watching.next() => Some(change),
                    lost = states.wait_for(|s| *s != LinkState::Connected) => {
                        if lost.is_err() {
                            return;
                        }
                        None
                    }
                };
                match next {
                    Some(Some(Ok(key))) => {
                        if let Err(e) = capabilities.changed_elsewhere(&key).await {
                            // Revoked in memory, but not kept here: deny until a resync keeps
                            // every revocation again.
                            tracing::warn!(error = %e, "cannot keep a revocation here");
                            break;
                        }
                    }
                    Some(Some(Err(e))) => {
                        tracing::warn!(error = %e, "following the lattice's grants broke");
                        break;
                    }
                    Some(None) | None => break,
                }
            }
        }
        capabilities.lost_sight();
        if states
            .wait_for(|s| *s == LinkState::Connected)
            .await
            .is_err()
        {
            return;
        }
        // Watch first, then read: a change made in between is seen by one or the other.
        match kv.watch(CapabilityStore::KEY_SPACE).await {
            Ok(watching) => match capabilities.resync().await {
                Ok(()) => changes = Some(watching),
                Err(e) => tracing::warn!(error = %e, "cannot read the lattice's revocations"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot follow the lattice's grants"),
        }
        if changes.is_none() {
            tokio::time::sleep(FOLLOW_RETRY).await;
        }
    }
}
