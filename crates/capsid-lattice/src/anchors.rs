//! Audit heads anchored off-host: each host publishes its audit chains' heads, signed, to the
//! lattice's `capsid_<lattice>_anchors` stream (`capsid.<lattice>.anchor.<host>`), where
//! JetStream keeps them, replicated, apart from the host. What a host published can later be
//! read back and checked against its log: a host whose log was truncated or rewritten after
//! it published is caught even if its own chains verify.

use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::stream;
use bytes::Bytes;
use capsid_audit::ChainHead;
use capsid_core::limits::LATTICE_STREAM_READ_STALL;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::connection::Lattice;
use crate::envelope::{Kind, Seal};
use crate::error::LatticeError;

/// What one anchor says: the heads of the chains that moved since the host's last anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorMeta {
    /// The audit log's chain heads.
    pub heads: Vec<ChainHead>,
}

/// What a host anchored, read back: how many anchors, and every distinct head they anchor.
/// Each is checked: a lower head is not implied by a higher one of the same chain, since the
/// chain may have been cut and written again between the two anchors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnchoredHeads {
    /// Anchors read back.
    pub anchors: usize,
    /// The heads they anchor, each once.
    pub heads: Vec<ChainHead>,
}

/// The lattice's anchors stream.
#[derive(Debug, Clone)]
pub struct Anchors {
    lattice: Lattice,
    seal: Seal,
    stream: stream::Stream,
}

fn server_error(lattice: &Lattice, what: &str, e: impl std::fmt::Display) -> LatticeError {
    LatticeError::Server {
        server: lattice.config().name.clone(),
        message: format!("{what}: {e}"),
    }
}

impl Anchors {
    /// Opens (or creates, with the lattice's replicas) the anchors stream.
    pub async fn open(lattice: &Lattice, seal: &Seal) -> Result<Self, LatticeError> {
        let name = format!("capsid_{}_anchors", lattice.config().name);
        let config = stream::Config {
            name,
            description: Some("capsid audit chain heads, anchored off-host".into()),
            subjects: vec![format!("capsid.{}.anchor.>", lattice.config().name)],
            storage: stream::StorageType::File,
            num_replicas: lattice.config().replicas,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        let stream = lattice
            .open_stream(config)
            .await
            .map_err(|e| server_error(lattice, "cannot create the anchors stream", e))?;
        Ok(Self {
            lattice: lattice.clone(),
            seal: seal.clone(),
            stream,
        })
    }

    fn subject(&self, host: &str) -> String {
        format!("capsid.{}.anchor.{host}", self.lattice.config().name)
    }

    /// Publishes `heads` as this host's anchor, and waits for the stream to store it.
    pub async fn publish(&self, heads: Vec<ChainHead>) -> Result<(), LatticeError> {
        let sealed = self
            .seal
            .seal(Kind::Anchor, &AnchorMeta { heads }, Bytes::new());
        let ack = self
            .lattice
            .jetstream()
            .publish_with_headers(self.subject(self.seal.host()), sealed.headers, sealed.body)
            .await
            .map_err(|e| server_error(&self.lattice, "cannot publish an audit anchor", e))?;
        ack.await
            .map_err(|e| server_error(&self.lattice, "an audit anchor was not stored", e))?;
        Ok(())
    }

    /// What this host anchored, read from every anchor it published. Only those signed by
    /// this host's own key count; anything else on its subject is passed over. It reads what
    /// the stream held when it began, however long that history, for as long as the stream
    /// keeps sending; it fails if the stream stops for [`LATTICE_STREAM_READ_STALL`].
    pub async fn mine(&self) -> Result<AnchoredHeads, LatticeError> {
        let failed = |e: &dyn std::fmt::Display| {
            server_error(&self.lattice, "cannot read the audit anchors", e)
        };
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.lattice.client().new_inbox(),
                filter_subject: self.subject(self.seal.host()),
                deliver_policy: DeliverPolicy::All,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let mut anchored = AnchoredHeads::default();
        // Read up to what was there when the read began: whatever is published meanwhile
        // (by this host, or by anyone flooding its subject) cannot keep the read going.
        let there = consumer.cached_info().num_pending;
        if there == 0 {
            return Ok(anchored);
        }
        let mut read = 0;
        let mut heads = std::collections::BTreeSet::new();
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        loop {
            let next = tokio::time::timeout(LATTICE_STREAM_READ_STALL, messages.next())
                .await
                .map_err(|_| failed(&"the stream stopped sending"))?;
            let Some(message) = next else { break };
            let message = message.map_err(|e| failed(&e))?;
            let pending = message.info().map_err(|e| failed(&e))?.pending;
            let opened = self.seal.open_record::<AnchorMeta>(
                Kind::Anchor,
                message.headers.as_ref(),
                &message.payload,
                Duration::MAX,
            );
            if let Ok((opened, _issued_ms)) = opened
                && opened.from == self.seal.host()
            {
                anchored.anchors += 1;
                heads.extend(opened.meta.heads);
            }
            read += 1;
            if pending == 0 || read >= there {
                break;
            }
        }
        anchored.heads = heads.into_iter().collect();
        Ok(anchored)
    }
}
