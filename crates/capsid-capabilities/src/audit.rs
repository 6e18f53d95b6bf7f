//! Where check decisions are recorded: the [`AuditSink`] that
//! [`CapabilityStore::authorize`](crate::CapabilityStore::authorize) writes every decision to.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use capsid_audit::{AuditLog, ChainId, PendingAppend, Record};
use capsid_core::limits::MAX_AUDIT_FIELD_BYTES;
use capsid_core::sync::lock;

use crate::error::show;
use crate::store::{Decision, Subject};
use crate::token::Permissions;

/// One decision to record.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord<'a> {
    /// Who asked.
    pub subject: &'a Subject,
    /// The audit action (`capsid_audit::action`: `kv.set`, `process.spawn`...).
    pub action: &'a str,
    /// The permission asked for.
    pub permission: Permissions,
    /// The resource, as asked (possibly hostile: a sink escapes it).
    pub resource: &'a str,
    /// The decision.
    pub decision: &'a Decision,
    /// What else the caller wants on the entry (an object; its keys are added).
    pub details: &'a serde_json::Value,
}

/// Receives every decision of [`CapabilityStore::authorize`](crate::CapabilityStore::authorize).
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Records one decision: durably, or queued in order when the sink defers (its owner
    /// then waits for durability before telling the effect's outcome); an error makes an
    /// allow a deny.
    async fn record(&self, entry: DecisionRecord<'_>) -> Result<(), String>;
}

/// An [`AuditSink`] writing to one chain of an [`AuditLog`].
#[derive(Debug)]
pub struct AuditLogSink {
    log: Arc<AuditLog>,
    chain: ChainId,
    /// When deferring: the entries queued, whose durability [`durable`](Self::durable)
    /// awaits.
    deferred: Option<Mutex<Vec<PendingAppend>>>,
}

impl AuditLogSink {
    /// Records into `chain` of `log`, each decision durable before it is answered.
    pub fn new(log: Arc<AuditLog>, chain: ChainId) -> Self {
        Self {
            log,
            chain,
            deferred: None,
        }
    }

    /// Records into `chain` of `log`, each decision queued (in the log ahead of everything
    /// appended after it) and answered at once: for an effect that may start while its
    /// record commits, whose outcome is not told before [`durable`](Self::durable) says
    /// the record made it.
    #[must_use = "a deferring sink's records are only known durable once `durable` is awaited"]
    pub fn deferring(log: Arc<AuditLog>, chain: ChainId) -> Self {
        Self {
            log,
            chain,
            deferred: Some(Mutex::new(Vec::new())),
        }
    }

    /// Waits until every decision this sink deferred is durable; the first error otherwise.
    /// A record left unawaited (its owner dropped mid-effect) still commits, in order; a
    /// failed commit is then only in the writer's log, and in this sink's warning on drop.
    pub async fn durable(&self) -> Result<(), String> {
        let pending = match &self.deferred {
            Some(deferred) => std::mem::take(&mut *lock(deferred)),
            None => Vec::new(),
        };
        let mut first_error = None;
        for entry in pending {
            if let Err(e) = entry.durable().await {
                tracing::error!(error = %e, "a deferred audit append failed");
                first_error = first_error.or(Some(e.to_string()));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The entry's details: the caller's, plus the permission and the grant or the reason.
fn details(entry: &DecisionRecord<'_>) -> serde_json::Value {
    let mut details = match entry.details {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    details.insert("permissions".into(), entry.permission.bits().into());
    match entry.decision {
        Decision::Allow { grant } => details.insert("grant".into(), grant.to_string().into()),
        Decision::Deny(reason) => details.insert("reason".into(), reason.to_string().into()),
    };
    serde_json::Value::Object(details)
}

impl Drop for AuditLogSink {
    fn drop(&mut self) {
        if let Some(deferred) = &self.deferred {
            let waiting = lock(deferred).len();
            if waiting > 0 {
                tracing::warn!(waiting, "deferred audit records dropped unawaited");
            }
        }
    }
}

#[async_trait]
impl AuditSink for AuditLogSink {
    async fn record(&self, entry: DecisionRecord<'_>) -> Result<(), String> {
        // A refused resource can be arbitrarily long and hostile: record it escaped and cut.
        let resource = if entry.resource.len() > MAX_AUDIT_FIELD_BYTES
            || entry.resource.chars().any(char::is_control)
        {
            show(entry.resource)
        } else {
            entry.resource.to_owned()
        };
        let verdict = match entry.decision {
            Decision::Allow { .. } => capsid_audit::Decision::Allow,
            Decision::Deny(_) => capsid_audit::Decision::Deny,
        };
        let mut record = Record::new(entry.subject.principal, entry.action, &resource, verdict)
            .and_then(|r| r.details(&details(&entry)))
            .map_err(|e| e.to_string())?;
        if let Some(c) = &entry.subject.capsule {
            record = record.capsule(c.clone());
        }
        let failed = |e: capsid_audit::AuditError| {
            tracing::error!(action = entry.action, error = %e, "audit append failed; denying");
            e.to_string()
        };
        match &self.deferred {
            None => self.log.append(self.chain, record).await.map(drop),
            Some(deferred) => self
                .log
                .append_pending(self.chain, record)
                .await
                .map(|pending| lock(deferred).push(pending)),
        }
        .map_err(failed)
    }
}
