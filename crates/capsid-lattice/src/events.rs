//! Events across hosts: an event on an exported topic is published, signed, to
//! `capsid.<lattice>.evt.<topic>`; every host hears the lattice's events and takes those
//! signed by a host it trusts, never its own (no event comes back to where it began).
//! Delivery is NATS's: at most once, no history. What a host does with them (the local bus,
//! its subscription grants and drop-and-count) is the kernel's.

use async_nats::Subscriber;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::connection::Lattice;
use crate::envelope::{Kind, Refusal, Seal};

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// Its topic.
    pub topic: String,
    /// The capsule that published it, if one did.
    pub source: Option<String>,
    /// On whose authority it was published, when a person's (`user:<id>`).
    pub principal: Option<String>,
}

/// An event another host published.
#[derive(Debug, Clone)]
pub struct RemoteEvent {
    /// The publishing host (its runtime public key, hex).
    pub host: String,
    /// Topic, source and principal.
    pub meta: EventMeta,
    /// The payload.
    pub payload: Bytes,
}

/// Publishes an event to the lattice, signed by this host.
pub async fn publish(
    lattice: &Lattice,
    seal: &Seal,
    meta: &EventMeta,
    payload: Bytes,
) -> Result<(), String> {
    let subject = format!("capsid.{}.evt.{}", lattice.config().name, meta.topic);
    let sealed = seal.seal(Kind::Event, meta, payload);
    lattice
        .client()
        .publish_with_headers(subject, sealed.headers, sealed.body)
        .await
        .map_err(|e| e.to_string())
}

/// The lattice's events as this host hears them.
#[derive(Debug)]
pub struct RemoteEvents {
    seal: Seal,
    subscriber: Subscriber,
    /// `capsid.<lattice>.evt.`
    prefix: String,
}

/// Starts hearing the lattice's events: the subscription has reached the server when this
/// returns, so an event published after it is heard.
pub async fn subscribe(lattice: &Lattice, seal: &Seal) -> Result<RemoteEvents, String> {
    let subject = format!("capsid.{}.evt.>", lattice.config().name);
    let client = lattice.client();
    let subscriber = client.subscribe(subject).await.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    Ok(RemoteEvents {
        seal: seal.clone(),
        subscriber,
        prefix: format!("capsid.{}.evt.", lattice.config().name),
    })
}

impl RemoteEvents {
    /// The next event from another trusted host, or why one was refused; `None` once the
    /// subscription ends. This host's own events are passed over.
    pub async fn next(&mut self) -> Option<Result<RemoteEvent, Refusal>> {
        loop {
            let message = self.subscriber.next().await?;
            let opened = self.seal.open::<EventMeta>(
                Kind::Event,
                message.headers.as_ref(),
                &message.payload,
            );
            match opened {
                Ok(e) if e.from == self.seal.host() => {}
                // The subject must say what the signed envelope says.
                Ok(e) if message.subject.as_str() != format!("{}{}", self.prefix, e.meta.topic) => {
                    return Some(Err(Refusal::Misdirected));
                }
                Ok(e) => {
                    return Some(Ok(RemoteEvent {
                        host: e.from,
                        meta: e.meta,
                        payload: message.payload,
                    }));
                }
                Err(refusal) => return Some(Err(refusal)),
            }
        }
    }
}
