//! Lifecycle events of capsules' persistent processes: restarts and give-ups recorded in the
//! audit log as their capsule's, survivors' records kept, and each event of a watched
//! process handed to its capsule's `handle-event`.

use std::sync::{PoisonError, RwLock};

use capsid_capabilities::Subject;
use capsid_process::{EventKind, TableEvent};

use crate::host::HostServices;
use crate::slots::{Slot, Slots};

/// Records each restart and give-up of a persistent process in the audit log (as its
/// capsule's), and hands each lifecycle event of a watched one to its capsule's
/// `handle-event` (topic `process.<kind>`), in order, until the registry is gone.
pub(super) async fn deliver_process_events(
    slots: std::sync::Weak<RwLock<Slots>>,
    services: HostServices,
    mut events: tokio::sync::mpsc::UnboundedReceiver<TableEvent>,
) {
    use capsid_audit::action;
    while let Some(event) = events.recv().await {
        let (capsule, id_hash) = (&event.owner.capsule, &event.id_hash);
        match event.kind {
            EventKind::Ended => {
                crate::survivors::forget(&services, capsule, id_hash).await;
                continue;
            }
            EventKind::Restarted { .. } if event.survives => {
                crate::survivors::restarted(&services, capsule, id_hash, event.generation).await;
            }
            _ => {}
        }
        let (label, generation) = (&event.label, event.generation);
        let (topic, payload) = match &event.kind {
            EventKind::Exited(e) => (
                action::PROCESS_EXITED,
                serde_json::json!({
                    "label": label, "generation": generation,
                    "code": e.code, "signal": e.signal, "cpu_ms": e.cpu_ms,
                }),
            ),
            EventKind::Expired => (
                action::PROCESS_EXPIRED,
                serde_json::json!({ "label": label, "generation": generation }),
            ),
            EventKind::Forgotten => (
                action::PROCESS_FORGOTTEN,
                serde_json::json!({ "label": label, "generation": generation }),
            ),
            EventKind::Restarted { restarts } => (
                action::PROCESS_RESTARTED,
                serde_json::json!({
                    "label": label, "generation": generation, "restarts": restarts,
                }),
            ),
            EventKind::GaveUp { reason } => (
                action::PROCESS_GAVE_UP,
                serde_json::json!({
                    "label": label, "generation": generation, "reason": reason,
                }),
            ),
            EventKind::Ended => continue,
        };
        if matches!(
            event.kind,
            EventKind::Restarted { .. } | EventKind::GaveUp { .. }
        ) {
            let subject = Subject {
                principal: event.owner.principal,
                capsule: Some(event.owner.capsule.clone()),
                session: None,
            };
            let resource = crate::grants::persistent_resource(&event.owner.capsule);
            // A failed write is logged by `record`; the restart already happened.
            let _ = services
                .record(
                    &subject,
                    topic,
                    &resource,
                    capsid_audit::Decision::Info,
                    &payload,
                )
                .await;
        }
        if !event.watched {
            continue;
        }
        let Some(slots) = slots.upgrade() else { return };
        let capsule = match slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&event.owner.capsule)
        {
            Some(Slot::Loaded { capsule, .. }) => capsule.clone(),
            _ => continue,
        };
        drop(slots);
        if let Err(e) = capsule
            .handle_event(topic, payload.to_string().as_bytes())
            .await
        {
            capsule.log().push(
                crate::logbuf::LogLevel::Warn,
                crate::logbuf::LogSource::Host,
                &format!("{topic}: {e}"),
            );
        }
    }
}
