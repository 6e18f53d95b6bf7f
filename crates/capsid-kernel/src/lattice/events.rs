//! Events across the lattice: this host's events on exported topics go out, signed; the
//! other hosts' come in to this host's bus (never exported again), where subscribers get
//! them under their own subscription grants and the bus's drop-and-count policy. A topic
//! reserved to the kernel (`kernel.`, `health.`, `capsules.`) is never taken from another
//! host: it could pass for this kernel's own.

use bytes::Bytes;
use capsid_core::CapsuleId;
use capsid_core::limits::LATTICE_EXPORT_QUEUE;
use capsid_events::EventOrigin;
use capsid_lattice::events::{self, EventMeta};
use tokio::task::JoinHandle;

use super::{Joined, Refused, Traffic};
use crate::error::KernelError;
use crate::kernel::{Kernel, RESERVED_TOPIC_PREFIXES};

/// Starts exporting this host's events on the exported topics, and taking the other hosts'
/// (subscribed before this returns, so nothing published after boot is missed).
pub(super) async fn exchange(
    kernel: &Kernel,
    joined: &Joined,
) -> Result<Vec<JoinHandle<()>>, KernelError> {
    let mut incoming = events::subscribe(&joined.lattice, &joined.seal)
        .await
        .map_err(|message| {
            KernelError::Lattice(capsid_lattice::LatticeError::Server {
                server: joined.lattice.config().name.clone(),
                message: format!("cannot subscribe to the lattice's events: {message}"),
            })
        })?;
    let mut tasks = Vec::new();
    let patterns = &joined.lattice.config().export;
    if !patterns.is_empty() {
        let mut exports = kernel.bus().export(patterns, LATTICE_EXPORT_QUEUE)?;
        let operator = kernel.principal().to_string();
        let joined = joined.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = exports.recv().await {
                let meta = EventMeta {
                    topic: event.topic.clone(),
                    source: event.source.as_ref().map(ToString::to_string),
                    // The kernel's events are the operator's; a capsule's are its own.
                    principal: event.source.is_none().then(|| operator.clone()),
                };
                let payload = Bytes::copy_from_slice(&event.payload);
                match events::publish(&joined.lattice, &joined.seal, &meta, payload).await {
                    Ok(()) => Traffic::count(&joined.traffic.events_exported),
                    Err(e) => {
                        tracing::warn!(topic = %event.topic, error = %e, "cannot export an event");
                    }
                }
            }
        }));
    }
    let bus = kernel.bus().clone();
    let traffic = joined.traffic.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(next) = incoming.next().await {
            let event = match next {
                Ok(event) => event,
                Err(refusal) => {
                    tracing::warn!(%refusal, "refused an event from the lattice");
                    let sender = refusal.claimed_sender();
                    traffic.refused(Refused::Event, refusal.reason(), sender);
                    continue;
                }
            };
            let topic = &event.meta.topic;
            if RESERVED_TOPIC_PREFIXES.iter().any(|p| topic.starts_with(p)) {
                traffic.refused(Refused::Event, "reserved-topic", None);
                continue;
            }
            let source = event
                .meta
                .source
                .as_deref()
                .and_then(|s| CapsuleId::new(s).ok());
            let origin = EventOrigin {
                host: event.host,
                principal: event.meta.principal,
            };
            match bus.publish_remote(topic, event.payload.to_vec(), source, origin) {
                Ok(_) => Traffic::count(&traffic.events_imported),
                Err(_) => traffic.refused(Refused::Event, "undeliverable", None),
            }
        }
    }));
    Ok(tasks)
}
