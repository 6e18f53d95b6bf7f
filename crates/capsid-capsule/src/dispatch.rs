//! Delivers bus events to the capsules that subscribe to them.
//!
//! Each capsule gets one delivery task fed by one bus subscription per `ipc_subscribe`
//! pattern of its manifest. Events reach `handle-event` one at a time, in bus order for each
//! pattern; an event matched by two patterns is delivered once. Before each delivery the capsule's
//! `ipc://subscribe/<topic>` capability is checked, so a revocation stops delivery at the next
//! event; a denial is audited. Queues are bounded (`CAPSULE_EVENT_QUEUE`): a capsule that
//! falls behind loses events, counted by the bus, rather than slowing publishers.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};

use capsid_capabilities::Permissions;
use capsid_core::limits::CAPSULE_EVENT_QUEUE;
use capsid_events::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::capsule::{CapsuleState, LoadedCapsule};
use crate::error::CapsuleError;
use crate::logbuf::{LogLevel, LogSource};

/// How many recent event numbers are remembered to deliver an event once.
const SEEN_WINDOW: usize = 4 * CAPSULE_EVENT_QUEUE;

/// Subscribes `capsule` to its manifest's patterns and starts its delivery task.
pub(crate) fn start(capsule: &Arc<LoadedCapsule>) -> Result<Vec<JoinHandle<()>>, CapsuleError> {
    let patterns: Vec<String> = capsule
        .manifest
        .capabilities
        .ipc_subscribe
        .iter()
        .filter_map(|p| {
            p.as_str()
                .strip_prefix("ipc://subscribe/")
                .map(str::to_owned)
        })
        .collect();
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let bus = &capsule.cx.services.bus;
    let (tx, rx) = mpsc::channel::<Arc<Event>>(CAPSULE_EVENT_QUEUE);
    let mut tasks = Vec::with_capacity(patterns.len() + 1);
    for pattern in patterns {
        let mut sub =
            bus.subscribe(&pattern, CAPSULE_EVENT_QUEUE)
                .map_err(|e| CapsuleError::Setup {
                    capsule: capsule.name().clone(),
                    what: "subscribing",
                    message: e.to_string(),
                })?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = sub.recv().await {
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        }));
    }
    tasks.push(tokio::spawn(deliver(Arc::downgrade(capsule), rx)));
    Ok(tasks)
}

async fn deliver(capsule: Weak<LoadedCapsule>, mut rx: mpsc::Receiver<Arc<Event>>) {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut order: VecDeque<u64> = VecDeque::new();
    while let Some(event) = rx.recv().await {
        if !seen.insert(event.seq) {
            continue;
        }
        order.push_back(event.seq);
        if order.len() > SEEN_WINDOW
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        let Some(capsule) = capsule.upgrade() else {
            return;
        };
        if capsule.state() != CapsuleState::Ready {
            continue;
        }
        let cx = &capsule.cx;
        let resource = format!("ipc://subscribe/{}", event.topic);
        if cx
            .authorize("ipc.deliver", Permissions::SUBSCRIBE, &resource, false)
            .await
            .is_err()
        {
            continue;
        }
        if let Err(e) = capsule.handle_event(&event.topic, &event.payload).await {
            cx.log.push(
                LogLevel::Warn,
                LogSource::Host,
                &format!("event {} on {}: {e}", event.seq, event.topic),
            );
        }
    }
}
