//! Client sessions: a principal's session lasts from its first live connection to the
//! daemon (the MCP bridge connects through the daemon too) to its last one closing. An
//! approval decided `session` is a capability bound to the caller's session; the capability
//! store honours it only while the session is live, so it dies with the session, and with
//! the daemon (sessions live in memory: after a crash none is live, and boot removes what
//! was left).

use std::collections::HashMap;
use std::sync::Mutex;

use capsid_audit::action;
use capsid_core::sync::lock;
use capsid_core::{ClientSessionId, Principal};
use serde_json::json;

use crate::error::KernelError;
use crate::kernel::Kernel;

/// The live client sessions, by principal.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<Principal, Live>>,
}

#[derive(Debug)]
struct Live {
    id: ClientSessionId,
    /// Connections holding it.
    holds: usize,
}

/// Keeps a principal's client session live until dropped (one per connection acting for
/// the principal). The last hold dropped ends the session.
#[derive(Debug)]
pub struct SessionHold {
    kernel: Kernel,
    principal: Principal,
    id: ClientSessionId,
}

impl SessionHold {
    /// The session held.
    pub fn id(&self) -> ClientSessionId {
        self.id
    }
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        let ended = {
            let mut live = lock(&self.kernel.inner.sessions.live);
            match live.get_mut(&self.principal) {
                Some(session) if session.id == self.id => {
                    session.holds = session.holds.saturating_sub(1);
                    (session.holds == 0).then(|| live.remove(&self.principal))
                }
                _ => None,
            }
        };
        if ended.is_none() {
            return;
        }
        // Its grants allow nothing from here on; removing and recording them can wait.
        self.kernel.capabilities().close_session(self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (kernel, id) = (self.kernel.clone(), self.id);
            runtime.spawn(async move {
                if let Err(e) = kernel.forget_session(id).await {
                    tracing::warn!(session = %id, error = %e, "a session's grants were not removed; the next boot removes them");
                }
            });
        }
    }
}

impl Kernel {
    /// Holds `principal`'s client session (beginning one if it has none) until the hold is
    /// dropped.
    pub fn hold_session(&self, principal: Principal) -> SessionHold {
        let mut live = lock(&self.inner.sessions.live);
        let session = live.entry(principal).or_insert_with(|| {
            let id = ClientSessionId::new();
            self.capabilities().begin_session(id);
            Live { id, holds: 0 }
        });
        session.holds += 1;
        SessionHold {
            kernel: self.clone(),
            principal,
            id: session.id,
        }
    }

    /// `principal`'s live client session, if it has one.
    pub fn client_session(&self, principal: Principal) -> Option<ClientSessionId> {
        lock(&self.inner.sessions.live)
            .get(&principal)
            .map(|s| s.id)
    }

    /// Removes the grants of ended session `id`, recorded when there were any.
    async fn forget_session(&self, id: ClientSessionId) -> Result<(), KernelError> {
        let removed = self.capabilities().end_session(id).await?;
        self.record_sessions_ended(&[id.to_string()], &removed)
            .await
    }

    /// Records that sessions ended and `grants` went with them (nothing, when none did).
    pub(crate) async fn record_sessions_ended(
        &self,
        sessions: &[String],
        grants: &[capsid_capabilities::CapabilityId],
    ) -> Result<(), KernelError> {
        if grants.is_empty() || self.audit().is_read_only() {
            return Ok(());
        }
        let grants: Vec<String> = grants.iter().map(ToString::to_string).collect();
        let reason = if sessions.is_empty() {
            "left by an earlier run"
        } else {
            "the last connection closed"
        };
        let details = json!({ "sessions": sessions, "grants": grants, "reason": reason });
        self.note(action::APPROVAL_SESSION_ENDED, "kernel://sessions", details)
            .await
    }
}
