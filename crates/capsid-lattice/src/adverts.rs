//! Which host serves which capsules: each host keeps a signed advertisement of the capsules
//! and tools it serves in the lattice's `capsid_<lattice>_hosts` bucket, refreshed every
//! `LATTICE_ADVERT_INTERVAL`; the bucket forgets an entry [`LATTICE_ADVERT_TTL`] after it
//! was last written, so a host that died drops out on its own. Read to list the tools other
//! hosts serve; calls themselves are routed by NATS's queue groups (see `calls`).

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use capsid_core::limits::{LATTICE_ADVERT_TTL, MAX_KV_LIST_LIMIT};
use capsid_storage::{KvError, KvStore};
use serde::{Deserialize, Serialize};

use crate::connection::Lattice;
use crate::envelope::{ENVELOPE_HEADER, Kind, SIGNATURE_HEADER, Seal};
use crate::kv::JetStreamKvStore;

/// A tool as another host advertises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvertisedTool {
    /// Its name in the capsule.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON schema of its input.
    pub input_schema: serde_json::Value,
    /// JSON schema of its output, when it declares one.
    pub output_schema: Option<serde_json::Value>,
    /// Its annotations as MCP spells them (`readOnlyHint`, ...).
    pub annotations: serde_json::Value,
}

/// A capsule another host serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvertisedCapsule {
    /// Its name.
    pub name: String,
    /// Its tools.
    pub tools: Vec<AdvertisedTool>,
}

/// A host's advertisement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostAdvert {
    /// The capsules it serves.
    pub capsules: Vec<AdvertisedCapsule>,
}

/// An advertisement as read: whose, and since when.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenAdvert {
    /// The host (its runtime public key, hex).
    pub host: String,
    /// Unix ms it was written.
    pub issued_ms: u64,
    /// What it serves.
    pub advert: HostAdvert,
}

/// The stored form: the signed envelope (the advertisement travels in it; no body).
#[derive(Serialize, Deserialize)]
struct Stored {
    envelope: String,
    signature: String,
}

/// The lattice's advertisements.
#[derive(Debug, Clone)]
pub struct Adverts {
    kv: Arc<JetStreamKvStore>,
    seal: Seal,
}

impl Adverts {
    /// Opens the lattice's hosts bucket (creating it with entries that expire).
    pub async fn open(lattice: &Lattice, seal: &Seal) -> Result<Self, KvError> {
        let bucket = format!("capsid_{}_hosts", lattice.config().name);
        let kv = JetStreamKvStore::open_expiring(lattice, &bucket, LATTICE_ADVERT_TTL).await?;
        Ok(Self {
            kv: Arc::new(kv),
            seal: seal.clone(),
        })
    }

    /// Writes this host's advertisement.
    pub async fn publish(&self, advert: &HostAdvert) -> Result<(), KvError> {
        let sealed = self.seal.seal(Kind::Advert, advert, Bytes::new());
        let header = |name: &str| {
            sealed
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let stored = Stored {
            envelope: header(ENVELOPE_HEADER),
            signature: header(SIGNATURE_HEADER),
        };
        let value = serde_json::to_vec(&stored).unwrap_or_default();
        self.kv.set(self.seal.host().as_bytes(), &value).await
    }

    /// Takes this host's advertisement down (at shutdown).
    pub async fn withdraw(&self) -> Result<(), KvError> {
        self.kv
            .delete(self.seal.host().as_bytes())
            .await
            .map(|_| ())
    }

    /// Every live advertisement of a trusted host other than this one. One that does not
    /// open (untrusted, forged, older than [`LATTICE_ADVERT_TTL`]) is passed over.
    pub async fn read(&self) -> Result<Vec<SeenAdvert>, KvError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .kv
                .list(b"", after.as_deref(), MAX_KV_LIST_LIMIT)
                .await?;
            for key in &page.keys {
                if key.as_slice() == self.seal.host().as_bytes() {
                    continue;
                }
                let Some(value) = self.kv.get(key).await? else {
                    continue;
                };
                let Ok(stored) = serde_json::from_slice::<Stored>(&value) else {
                    continue;
                };
                let mut headers = HeaderMap::new();
                headers.insert(ENVELOPE_HEADER, stored.envelope.as_str());
                headers.insert(SIGNATURE_HEADER, stored.signature.as_str());
                match self.seal.open_record::<HostAdvert>(
                    Kind::Advert,
                    Some(&headers),
                    b"",
                    LATTICE_ADVERT_TTL,
                ) {
                    Ok((opened, issued_ms)) if opened.from.as_bytes() == key.as_slice() => {
                        out.push(SeenAdvert {
                            host: opened.from,
                            issued_ms,
                            advert: opened.meta,
                        });
                    }
                    _ => {}
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }
}
