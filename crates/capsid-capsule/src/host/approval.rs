//! `capsid:host/approval`: asking a person ahead of an action (`ask.rs` does the asking).

use capsid_capabilities::Permissions;

use super::HostState;
use crate::approval::Verdict;
use crate::bindings::capsid::host::approval::{Decision, Host};

impl Host for HostState {
    async fn request(&mut self, resource: String, permission: String, reason: String) -> Decision {
        let Ok(permission) = permission.parse::<Permissions>() else {
            self.cx
                .record_refusal("approval.request", &resource, "not a permission")
                .await;
            return Decision::Denied;
        };
        match self.cx.ask_ahead(permission, &resource, &reason).await {
            Err(super::ask::AlreadyGranted) => Decision::AlreadyGranted,
            Ok(Verdict::Once) => Decision::Once,
            Ok(Verdict::Session) => Decision::Session,
            Ok(Verdict::Always) => Decision::Always,
            Ok(Verdict::Deny | Verdict::DenyAlways) => Decision::Denied,
        }
    }
}
