//! Where check decisions are recorded.

use std::sync::Arc;

use async_trait::async_trait;
use capsid_audit::{AuditLog, ChainId, Record};
use capsid_core::limits::MAX_AUDIT_FIELD_BYTES;

use crate::error::show;
use crate::store::{Decision, Subject};
use crate::token::Permissions;

/// Receives every decision of [`CapabilityStore::check_audited`](crate::CapabilityStore::check_audited).
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Records one decision durably; an error makes the check deny.
    async fn record(
        &self,
        subject: &Subject,
        action: Permissions,
        resource: &str,
        decision: &Decision,
    ) -> Result<(), String>;
}

/// An [`AuditSink`] writing `capability.check` entries to one chain of an [`AuditLog`].
#[derive(Debug, Clone)]
pub struct AuditLogSink {
    log: Arc<AuditLog>,
    chain: ChainId,
}

impl AuditLogSink {
    /// Records into `chain` of `log`.
    pub fn new(log: Arc<AuditLog>, chain: ChainId) -> Self {
        Self { log, chain }
    }
}

#[async_trait]
impl AuditSink for AuditLogSink {
    async fn record(
        &self,
        subject: &Subject,
        action: Permissions,
        resource: &str,
        decision: &Decision,
    ) -> Result<(), String> {
        // A refused resource can be arbitrarily long and hostile: record it escaped and cut.
        let resource =
            if resource.len() > MAX_AUDIT_FIELD_BYTES || resource.chars().any(char::is_control) {
                show(resource)
            } else {
                resource.to_owned()
            };
        let (verdict, details) = match decision {
            Decision::Allow { grant } => (
                capsid_audit::Decision::Allow,
                serde_json::json!({ "permissions": action.bits(), "grant": grant.to_string() }),
            ),
            Decision::Deny(reason) => (
                capsid_audit::Decision::Deny,
                serde_json::json!({ "permissions": action.bits(), "reason": reason.to_string() }),
            ),
        };
        let mut record = Record::new(
            subject.principal,
            capsid_audit::action::CAPABILITY_CHECK,
            &resource,
            verdict,
        )
        .and_then(|r| r.details(&details))
        .map_err(|e| e.to_string())?;
        if let Some(c) = &subject.capsule {
            record = record.capsule(c.clone());
        }
        self.log
            .append(self.chain, record)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
