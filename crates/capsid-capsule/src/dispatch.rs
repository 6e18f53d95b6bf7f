//! Delivers bus events to the capsules that subscribe to them.
//!
//! Each capsule gets one delivery task fed by one bus subscription per `ipc_subscribe`
//! pattern of its manifest. Events reach `handle-event` one at a time, in bus order for each
//! pattern; an event matched by two patterns is delivered once. Before each delivery the capsule's
//! `ipc://subscribe/<topic>` capability is checked, so a revocation stops delivery at the next
//! event; a denial is audited. Only patterns a grant names are subscribed at all, and a
//! capsule never receives its own events. Only patterns a grant names are subscribed at all, and a
//! capsule never receives its own events. Queues are bounded (`CAPSULE_EVENT_QUEUE`): a capsule that
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

/// The manifest's subscription patterns that a live grant of this capsule names exactly. An
/// ungranted pattern is not subscribed at all, so publishers cannot make the runtime write a
/// denial record per event for it.
async fn granted_patterns(capsule: &LoadedCapsule) -> Vec<String> {
    let cx = &capsule.cx;
    let grants = match cx.services.capabilities.list(&cx.subject.principal).await {
        Ok(g) => g,
        Err(e) => {
            cx.log.push(
                LogLevel::Warn,
                LogSource::Host,
                &format!("cannot list grants; subscribing to nothing: {e}"),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for wanted in &capsule.manifest.capabilities.ipc_subscribe {
        let granted = grants.iter().any(|g| {
            let c = &g.capability;
            !g.revoked
                && c.capsule.as_ref().is_none_or(|n| n == capsule.name())
                && c.permissions.contains(Permissions::SUBSCRIBE)
                && c.pattern.as_str() == wanted.as_str()
        });
        match wanted.as_str().strip_prefix("ipc://subscribe/") {
            Some(topic) if granted => out.push(topic.to_owned()),
            _ => cx.log.push(
                LogLevel::Warn,
                LogSource::Host,
                &format!("{} is not granted: not subscribed", wanted.as_str()),
            ),
        }
    }
    out
}

/// Subscribes `capsule` to its granted manifest patterns and starts its delivery task.
pub(crate) async fn start(
    capsule: &Arc<LoadedCapsule>,
) -> Result<Vec<JoinHandle<()>>, CapsuleError> {
    let patterns = granted_patterns(capsule).await;
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let bus = &capsule.cx.services.bus;
    let (tx, rx) = mpsc::channel::<Arc<Event>>(CAPSULE_EVENT_QUEUE);
    let mut tasks = Vec::with_capacity(patterns.len() + 1);
    for pattern in patterns {
        let mut sub = match bus.subscribe(&pattern, CAPSULE_EVENT_QUEUE) {
            Ok(sub) => sub,
            Err(e) => {
                for task in &tasks {
                    JoinHandle::abort(task);
                }
                return Err(CapsuleError::Setup {
                    capsule: capsule.name().clone(),
                    what: "subscribing",
                    message: e.to_string(),
                });
            }
        };
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
        // Its own events never come back to it: no capsule can loop on itself.
        if capsule.state() != CapsuleState::Ready || event.source.as_ref() == Some(capsule.name()) {
            continue;
        }
        let cx = &capsule.cx;
        let resource = format!("ipc://subscribe/{}", event.topic);
        if cx
            .authorize(
                capsid_audit::action::IPC_DELIVER,
                Permissions::SUBSCRIBE,
                &resource,
                false,
            )
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
