//! `capsid:host/ipc`: publishing on the event bus, checked against `ipc://publish/<topic>`.

use capsid_capabilities::Permissions;
use capsid_core::limits::MAX_EVENT_PAYLOAD_BYTES;

use crate::bindings::WitError;
use crate::bindings::capsid::host::ipc::Host;

use super::HostState;

impl Host for HostState {
    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), WitError> {
        if payload.len() > MAX_EVENT_PAYLOAD_BYTES {
            return Err(WitError::Invalid(format!(
                "payload of {} bytes is over the limit of {MAX_EVENT_PAYLOAD_BYTES}",
                payload.len()
            )));
        }
        // Topic syntax is public knowledge: a malformed topic is `invalid`, not a denial.
        capsid_events::validate_topic(&topic).map_err(|e| WitError::Invalid(e.to_string()))?;
        let cx = &self.cx;
        cx.authorize(
            capsid_audit::action::IPC_PUBLISH,
            Permissions::PUBLISH,
            &format!("ipc://publish/{topic}"),
            true,
        )
        .await?;
        cx.services
            .bus
            .publish(&topic, payload, Some(cx.name.clone()))
            .map(|_| ())
            .map_err(|e| WitError::Invalid(e.to_string()))
    }
}
