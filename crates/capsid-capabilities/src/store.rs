//! The capability store: grants persisted in KV, a global revocation set, and `check`.
//!
//! KV key space `0x03`: `t·id` token bytes, `p·len·principal·id` index by principal,
//! `r·id` revoked, `s·id` spent (single use), `a·id` the approval a person made it by,
//! `S·session·id` the grants bound to a session (value: the holder's principal).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use capsid_core::limits::{CAPABILITY_CLOCK_SKEW_MS, MAX_KV_LIST_LIMIT};
use capsid_core::time::now_ms;
use capsid_core::{CapsuleId, ClientSessionId, Principal};
use capsid_crypto::{KeyId, KeyPair, PublicKey};
use capsid_storage::{BatchOp, KvError, KvStore};
use uuid::Uuid;

use crate::audit::{AuditSink, DecisionRecord};
use crate::error::{CapabilityError, DenyReason, TokenError};
use crate::pattern::{Pattern, Resource};
use crate::token::{Capability, CapabilityId, Permissions};

pub(crate) const TAG: u8 = 0x03;
const TOKEN: u8 = b't';
const BY_PRINCIPAL: u8 = b'p';
pub(crate) const REVOKED: u8 = b'r';
const SPENT: u8 = b's';
const APPROVED: u8 = b'a';
const BY_SESSION: u8 = b'S';

/// Who is asking: a principal, acting through a capsule or directly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// On whose authority.
    pub principal: Principal,
    /// Through which capsule, if any.
    pub capsule: Option<CapsuleId>,
    /// From which client session, if the action is part of a call a client made: only then
    /// does a grant bound to that session apply.
    pub session: Option<ClientSessionId>,
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the named capability.
    Allow {
        /// The capability that allowed it.
        grant: CapabilityId,
    },
    /// Denied.
    Deny(DenyReason),
}

impl Decision {
    /// Whether the check allowed the action.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

/// Whether an allowed check is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordAllow {
    /// Recorded before the allow is answered (durably, unless the sink defers: see
    /// [`AuditLogSink::deferring`](crate::AuditLogSink::deferring)): the check guards an effect.
    Before,
    /// Not recorded: the check guards a read, which changes nothing (recording it would put
    /// an `fsync` on every read). Denials are recorded all the same.
    Never,
}

/// One capability check, as [`CapabilityStore::authorize`] takes it.
#[derive(Debug, Clone)]
pub struct Check<'a> {
    /// Who asks.
    pub subject: &'a Subject,
    /// The audit action the decision is recorded as (`capsid_audit::action`).
    pub action: &'a str,
    /// The permission asked for.
    pub permission: Permissions,
    /// The resource (`kv://capsule/notes`).
    pub resource: &'a str,
    /// Whether an allow is recorded.
    pub record_allow: RecordAllow,
    /// What else goes on the entry (an object).
    pub details: serde_json::Value,
}

/// Why [`CapabilityStore::authorize`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No capability allows it (or the store or resource made the check fail closed).
    #[error("denied: {0}")]
    NotGranted(DenyReason),
    /// It was allowed, but the allow could not be recorded, so it is denied.
    #[error("denied: the decision could not be recorded: {0}")]
    Unrecorded(String),
}

/// A capability as listed: verified, with its revocation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The capability.
    pub capability: Capability,
    /// Whether it has been revoked.
    pub revoked: bool,
    /// The approval request a person made it by, if they did (not the operator, not a
    /// manifest).
    pub approval: Option<String>,
}

/// Persists capabilities and answers checks. Share it behind an `Arc`.
#[derive(Debug)]
pub struct CapabilityStore {
    pub(crate) kv: Arc<dyn KvStore>,
    key: Arc<KeyPair>,
    issuers: HashMap<KeyId, PublicKey>,
    /// Verified, unexpired, unrevoked capabilities per principal, loaded on first check.
    pub(crate) verified: RwLock<HashMap<Principal, Arc<Vec<Capability>>>>,
    pub(crate) revoked: RwLock<HashSet<CapabilityId>>,
    /// Sessions whose grants are honoured: begun and not ended, in this process. A grant
    /// bound to any other session allows nothing (after a crash, none is live).
    live_sessions: RwLock<HashSet<ClientSessionId>>,
    /// Grants made so far (here or, on a shared store, elsewhere); a load that saw it
    /// change does not fill the cache.
    pub(crate) grants: AtomicU64,
    /// Whether the store is shared with other hosts, and if so whether this host sees it now.
    pub(crate) shared: crate::shared::SharedView,
}

fn key(kind: u8, id: &CapabilityId) -> Vec<u8> {
    let mut k = vec![TAG, kind];
    k.extend_from_slice(id.0.as_bytes());
    k
}

fn principal_prefix(p: &Principal) -> Vec<u8> {
    let text = p.to_string();
    let mut k = vec![TAG, BY_PRINCIPAL];
    // Principal texts are short ("system" or "user:<uuid>"), well under 255 bytes.
    k.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
    k.extend_from_slice(text.as_bytes());
    k
}

fn session_key(session: ClientSessionId, id: &CapabilityId) -> Vec<u8> {
    let mut k = vec![TAG, BY_SESSION];
    k.extend_from_slice(session.as_uuid().as_bytes());
    k.extend_from_slice(id.0.as_bytes());
    k
}

fn expired(cap: &Capability, now: i64) -> bool {
    cap.expires_at
        .is_some_and(|t| now > t.saturating_add(CAPABILITY_CLOCK_SKEW_MS))
}

fn poisoned<T>(_: T) -> DenyReason {
    DenyReason::StoreUnavailable("a capability cache lock was poisoned".into())
}

impl CapabilityStore {
    /// Opens the store on `kv`, issuing with `key` and trusting tokens signed by it or by
    /// any of `also_trusted` (keys this runtime used before a rotation).
    pub async fn open(
        kv: Arc<dyn KvStore>,
        key: Arc<KeyPair>,
        also_trusted: &[PublicKey],
    ) -> Result<Self, CapabilityError> {
        let mut issuers: HashMap<KeyId, PublicKey> =
            also_trusted.iter().map(|k| (k.key_id(), *k)).collect();
        issuers.insert(key.key_id(), key.public_key());
        let revoked = crate::shared::load_revoked(kv.as_ref()).await?;
        Ok(Self {
            kv,
            key,
            issuers,
            verified: RwLock::default(),
            revoked: RwLock::new(revoked),
            live_sessions: RwLock::default(),
            grants: AtomicU64::new(0),
            shared: crate::shared::SharedView::default(),
        })
    }

    /// Issues and persists a capability ([`issue`](Self::issue), then
    /// [`persist`](Self::persist)).
    pub async fn grant(
        &self,
        principal: Principal,
        capsule: Option<CapsuleId>,
        pattern: &str,
        permissions: Permissions,
        expires_at: Option<i64>,
        single_use: bool,
    ) -> Result<Capability, CapabilityError> {
        let cap = self.issue(
            principal,
            capsule,
            pattern,
            permissions,
            expires_at,
            single_use,
        )?;
        self.persist(&cap).await?;
        Ok(cap)
    }

    /// Makes a capability without storing it: it grants nothing until
    /// [`persist`](Self::persist)ed. A caller that must record a grant before it takes effect
    /// issues, records (the id included), then persists.
    pub fn issue(
        &self,
        principal: Principal,
        capsule: Option<CapsuleId>,
        pattern: &str,
        permissions: Permissions,
        expires_at: Option<i64>,
        single_use: bool,
    ) -> Result<Capability, CapabilityError> {
        let pattern = Pattern::parse(pattern)?;
        if permissions.is_empty() {
            return Err(CapabilityError::InvalidGrant("no permissions"));
        }
        let issued_at = now_ms();
        if expires_at.is_some_and(|t| t <= issued_at) {
            return Err(CapabilityError::InvalidGrant("expiry is in the past"));
        }
        Ok(Capability {
            id: CapabilityId(Uuid::now_v7()),
            principal,
            capsule,
            pattern,
            permissions,
            issued_at,
            expires_at,
            single_use,
            issuer: self.key.key_id(),
            session: None,
        })
    }

    /// Signs and stores a capability [`issue`](Self::issue)d by this store: checks that
    /// start after this returns see it.
    pub async fn persist(&self, cap: &Capability) -> Result<(), CapabilityError> {
        self.persist_with(cap, None).await
    }

    /// Stores `cap` as made by a person's decision on approval request `approval` (listed
    /// with it, so it is never taken for one a manifest asked for).
    pub async fn persist_approved(
        &self,
        cap: &Capability,
        approval: &str,
    ) -> Result<(), CapabilityError> {
        self.persist_with(cap, Some(approval)).await
    }

    async fn persist_with(
        &self,
        cap: &Capability,
        approval: Option<&str>,
    ) -> Result<(), CapabilityError> {
        if cap.issuer != self.key.key_id() {
            return Err(CapabilityError::InvalidGrant("issued by another key"));
        }
        if cap.session.is_some_and(|s| !self.session_live(s)) {
            return Err(CapabilityError::InvalidGrant("its session has ended"));
        }
        let mut index = principal_prefix(&cap.principal);
        index.extend_from_slice(cap.id.0.as_bytes());
        let mut ops = vec![
            BatchOp::Set {
                key: key(TOKEN, &cap.id),
                value: cap.sign(&self.key),
            },
            BatchOp::Set {
                key: index,
                value: Vec::new(),
            },
        ];
        if let Some(approval) = approval {
            ops.push(BatchOp::Set {
                key: key(APPROVED, &cap.id),
                value: approval.as_bytes().to_vec(),
            });
        }
        if let Some(session) = cap.session {
            ops.push(BatchOp::Set {
                key: session_key(session, &cap.id),
                value: cap.principal.to_string().into_bytes(),
            });
        }
        self.kv.batch(&ops).await?;
        if let Some(session) = cap.session
            && !self.session_live(session)
        {
            // Ended while this was written: its removal may have run before the write
            // landed, so remove it here (it never allowed anything: checks want it live).
            let mut prefix = vec![TAG, BY_SESSION];
            prefix.extend_from_slice(session.as_uuid().as_bytes());
            self.forget_session_grants(&prefix).await?;
            return Err(CapabilityError::InvalidGrant("its session has ended"));
        }
        // The next check of this principal reloads, seeing the new grant; a load already
        // under way sees the counter move and does not cache what it read.
        self.grants.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut v) = self.verified.write() {
            v.remove(&cap.principal);
        }
        Ok(())
    }

    /// Revokes a capability: every check that starts after this returns ignores it.
    pub async fn revoke(&self, id: CapabilityId) -> Result<(), CapabilityError> {
        // Kept here first: failing there, nothing happened; failing after, this host is only
        // stricter than the lattice until it is tried again.
        self.remember_revocation(id).await?;
        self.kv.set(&key(REVOKED, &id), &[]).await?;
        self.forget_revoked(id);
        Ok(())
    }

    /// Drops revoked capability `id` from every cache.
    pub(crate) fn forget_revoked(&self, id: CapabilityId) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(id);
        }
        if let Ok(mut v) = self.verified.write() {
            for caps in v.values_mut() {
                if caps.iter().any(|c| c.id == id) {
                    *caps = Arc::new(caps.iter().filter(|c| c.id != id).cloned().collect());
                }
            }
        }
    }

    /// Every capability of `principal`, verified, with its revocation state.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<Grant>, CapabilityError> {
        let mut out = Vec::new();
        // One scan for the few grants a person made, rather than a read per grant.
        let approved: HashSet<Vec<u8>> = list_all(self.kv.as_ref(), &[TAG, APPROVED])
            .await?
            .into_iter()
            .collect();
        for cap in self.load(principal).await? {
            let revoked = self.is_revoked(&cap.id);
            let marker = key(APPROVED, &cap.id);
            let approval = if approved.contains(&marker) {
                self.kv
                    .get(&marker)
                    .await?
                    .map(|a| String::from_utf8_lossy(&a).into_owned())
            } else {
                None
            };
            out.push(Grant {
                capability: cap,
                revoked,
                approval,
            });
        }
        Ok(out)
    }

    pub(crate) fn is_revoked(&self, id: &CapabilityId) -> bool {
        // A poisoned lock fails closed: treat everything as revoked.
        self.revoked.read().map_or(true, |r| r.contains(id))
    }

    /// Reads and verifies every token of `principal`.
    async fn load(&self, principal: &Principal) -> Result<Vec<Capability>, CapabilityError> {
        let mut caps = Vec::new();
        for index in list_all(self.kv.as_ref(), &principal_prefix(principal)).await? {
            let Some(raw_id) = index.len().checked_sub(16).map(|at| &index[at..]) else {
                continue;
            };
            let Ok(id) = Uuid::from_slice(raw_id).map(CapabilityId) else {
                continue;
            };
            let Some(bytes) = self.kv.get(&key(TOKEN, &id)).await? else {
                continue;
            };
            let cap = match self.verify(&bytes) {
                Ok(cap) => cap,
                // Another host of the lattice may issue grants; one this host does not trust
                // allows nothing here, and must not cost the principal what it does hold.
                Err(TokenError::UnknownIssuer) if self.shared.is_shared() => continue,
                Err(source) => {
                    return Err(CapabilityError::Token {
                        id: id.to_string(),
                        source,
                    });
                }
            };
            if cap.id != id || cap.principal != *principal {
                return Err(CapabilityError::Token {
                    id: id.to_string(),
                    source: TokenError::Malformed("token stored under another id"),
                });
            }
            caps.push(cap);
        }
        Ok(caps)
    }

    /// Decodes and verifies token bytes against this store's trusted issuers.
    pub fn verify(&self, bytes: &[u8]) -> Result<Capability, TokenError> {
        let (cap, _) = Capability::decode(bytes)?;
        let issuer = self
            .issuers
            .get(&cap.issuer)
            .ok_or(TokenError::UnknownIssuer)?;
        Capability::verify(bytes, issuer)
    }

    async fn verified_for(
        &self,
        principal: &Principal,
    ) -> Result<Arc<Vec<Capability>>, DenyReason> {
        if let Some(caps) = self.verified.read().map_err(poisoned)?.get(principal) {
            return Ok(caps.clone());
        }
        let grants_before = self.grants.load(Ordering::Acquire);
        let now = now_ms();
        let loaded = self
            .load(principal)
            .await
            .map_err(|e| DenyReason::StoreUnavailable(e.to_string()))?;
        let usable: Arc<Vec<Capability>> = Arc::new(
            loaded
                .into_iter()
                .filter(|c| !expired(c, now) && !self.is_revoked(&c.id))
                .collect(),
        );
        // A grant made while we were loading may be missing from what we read: cache only
        // if no grant happened meanwhile (the next check loads again otherwise).
        if self.grants.load(Ordering::Acquire) == grants_before {
            self.verified
                .write()
                .map_err(poisoned)?
                .insert(*principal, usable.clone());
        }
        Ok(usable)
    }

    /// Whether `subject` may do `action` to `resource`.
    pub async fn check(&self, subject: &Subject, action: Permissions, resource: &str) -> Decision {
        match self.decide(subject, action, resource).await {
            Ok(d) => d,
            Err(reason) => Decision::Deny(reason),
        }
    }

    /// The one check-and-record path: checks `check`, records the decision through `sink`
    /// and answers the grant that allowed it. Every denial is recorded; an allow is recorded
    /// when [`RecordAllow::Before`] says so, durably before this returns. An allow that
    /// cannot be recorded is denied ([`Denied::Unrecorded`]); a denial that cannot be
    /// recorded is still a denial.
    pub async fn authorize(
        &self,
        check: Check<'_>,
        sink: &dyn AuditSink,
    ) -> Result<CapabilityId, Denied> {
        let decision = self
            .check(check.subject, check.permission, check.resource)
            .await;
        let entry = DecisionRecord {
            subject: check.subject,
            action: check.action,
            permission: check.permission,
            resource: check.resource,
            decision: &decision,
            details: &check.details,
        };
        match &decision {
            Decision::Allow { grant } => {
                if check.record_allow == RecordAllow::Before {
                    sink.record(entry).await.map_err(Denied::Unrecorded)?;
                }
                Ok(*grant)
            }
            Decision::Deny(reason) => {
                // The caller refuses anyway; the sink logs a failed write.
                let _ = sink.record(entry).await;
                Err(Denied::NotGranted(reason.clone()))
            }
        }
    }

    /// Whether [`check`](Self::check) would allow it now, deciding nothing: a single-use
    /// capability is not spent. For showing a caller what it may do (listing tools); the
    /// action itself is checked when it is asked for.
    pub async fn would_allow(
        &self,
        subject: &Subject,
        action: Permissions,
        resource: &str,
    ) -> bool {
        matches!(
            self.decide_with(subject, action, resource, false).await,
            Ok(Decision::Allow { .. })
        )
    }

    /// Capability `id` of `principal` as stored (verified; revoked, spent or expired ones
    /// included), or `None`.
    pub async fn capability(&self, principal: &Principal, id: CapabilityId) -> Option<Capability> {
        let bytes = self.kv.get(&key(TOKEN, &id)).await.ok()??;
        self.verify(&bytes)
            .ok()
            .filter(|c| c.id == id && c.principal == *principal)
    }

    /// The patterns of `subject`'s standing capabilities (single-use ones left out, spent
    /// or not) that allow `action` on `resource`, deciding nothing. For rules that depend
    /// on how a grant is written, not only on what it covers: an outbound request to an
    /// internal address needs a grant that names that address literally.
    pub async fn patterns_allowing(
        &self,
        subject: &Subject,
        action: Permissions,
        resource: &str,
    ) -> Vec<Pattern> {
        let Ok(resource) = Resource::parse(resource) else {
            return Vec::new();
        };
        let Ok(caps) = self.verified_for(&subject.principal).await else {
            return Vec::new();
        };
        let now = now_ms();
        caps.iter()
            .filter(|cap| !cap.single_use && self.applies(cap, subject, action, &resource, now))
            .map(|cap| cap.pattern.clone())
            .collect()
    }

    /// Whether `cap` allows `subject` `action` on `resource` now (single use aside): its
    /// capsule, permissions, pattern, expiry, revocation and session all agree.
    fn applies(
        &self,
        cap: &Capability,
        subject: &Subject,
        action: Permissions,
        resource: &Resource,
        now: i64,
    ) -> bool {
        cap.capsule
            .as_ref()
            .is_none_or(|c| Some(c) == subject.capsule.as_ref())
            && cap.permissions.contains(action)
            && !expired(cap, now)
            && cap.pattern.matches(resource)
            && !self.is_revoked(&cap.id)
            && cap
                .session
                .is_none_or(|s| subject.session == Some(s) && self.session_live(s))
    }

    async fn decide(
        &self,
        subject: &Subject,
        action: Permissions,
        resource: &str,
    ) -> Result<Decision, DenyReason> {
        self.decide_with(subject, action, resource, true).await
    }

    async fn decide_with(
        &self,
        subject: &Subject,
        action: Permissions,
        resource: &str,
        spend_single_use: bool,
    ) -> Result<Decision, DenyReason> {
        self.shared.check_current()?;
        let resource =
            Resource::parse(resource).map_err(|e| DenyReason::BadResource(e.to_string()))?;
        let caps = self.verified_for(&subject.principal).await?;
        let now = now_ms();
        let mut spent = false;
        for cap in caps.iter() {
            if !self.applies(cap, subject, action, &resource, now) {
                continue;
            }
            if !cap.single_use {
                return Ok(Decision::Allow { grant: cap.id });
            }
            if !spend_single_use {
                let unspent = !self
                    .kv
                    .exists(&key(SPENT, &cap.id))
                    .await
                    .map_err(|e| DenyReason::StoreUnavailable(e.to_string()))?;
                if unspent {
                    return Ok(Decision::Allow { grant: cap.id });
                }
                spent = true;
                continue;
            }
            if self
                .spend(&cap.id)
                .await
                .map_err(|e| DenyReason::StoreUnavailable(e.to_string()))?
            {
                return Ok(Decision::Allow { grant: cap.id });
            }
            spent = true;
        }
        Ok(Decision::Deny(if spent {
            DenyReason::Spent
        } else {
            DenyReason::NoGrant
        }))
    }

    /// Honours grants bound to `session` from now on, until [`end_session`](Self::end_session).
    pub fn begin_session(&self, session: ClientSessionId) {
        if let Ok(mut live) = self.live_sessions.write() {
            live.insert(session);
        }
    }

    /// Whether grants bound to `session` are honoured. A poisoned lock fails closed.
    pub fn session_live(&self, session: ClientSessionId) -> bool {
        self.live_sessions
            .read()
            .is_ok_and(|live| live.contains(&session))
    }

    /// Closes `session`: its grants allow nothing from now on (they stay stored until
    /// [`end_session`](Self::end_session) or [`forget_ended_sessions`](Self::forget_ended_sessions)).
    pub fn close_session(&self, session: ClientSessionId) {
        if let Ok(mut live) = self.live_sessions.write() {
            live.remove(&session);
        }
    }

    /// Ends `session`: [closes](Self::close_session) it, then removes its grants from the
    /// store. Returns the ids removed.
    pub async fn end_session(
        &self,
        session: ClientSessionId,
    ) -> Result<Vec<CapabilityId>, CapabilityError> {
        self.close_session(session);
        let mut prefix = vec![TAG, BY_SESSION];
        prefix.extend_from_slice(session.as_uuid().as_bytes());
        self.forget_session_grants(&prefix).await
    }

    /// Removes the grants of every session not live now (kept from a run that ended, or
    /// crashed, before its sessions did). Returns the ids removed.
    pub async fn forget_ended_sessions(&self) -> Result<Vec<CapabilityId>, CapabilityError> {
        self.forget_session_grants(&[TAG, BY_SESSION]).await
    }

    /// Removes the session grants indexed under `prefix` whose session is not live.
    async fn forget_session_grants(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<CapabilityId>, CapabilityError> {
        let mut removed = Vec::new();
        for index in list_all(self.kv.as_ref(), prefix).await? {
            let (Some(session), Some(id)) = (
                index
                    .get(2..18)
                    .and_then(|b| Uuid::from_slice(b).ok())
                    .map(ClientSessionId::from),
                index
                    .get(18..34)
                    .and_then(|b| Uuid::from_slice(b).ok())
                    .map(CapabilityId),
            ) else {
                continue;
            };
            if self.session_live(session) {
                continue;
            }
            let holder = self.kv.get(&index).await?.unwrap_or_default();
            let mut ops = vec![
                BatchOp::Delete {
                    key: key(TOKEN, &id),
                },
                BatchOp::Delete {
                    key: key(APPROVED, &id),
                },
                BatchOp::Delete { key: index },
            ];
            let holder = String::from_utf8_lossy(&holder).parse::<Principal>().ok();
            if let Some(holder) = holder {
                let mut by_principal = principal_prefix(&holder);
                by_principal.extend_from_slice(id.0.as_bytes());
                ops.push(BatchOp::Delete { key: by_principal });
            }
            self.kv.batch(&ops).await?;
            if let Ok(mut v) = self.verified.write() {
                for caps in v.values_mut() {
                    if caps.iter().any(|c| c.id == id) {
                        *caps = Arc::new(caps.iter().filter(|c| c.id != id).cloned().collect());
                    }
                }
            }
            removed.push(id);
        }
        Ok(removed)
    }

    /// Marks a single-use capability spent; true for exactly one caller.
    async fn spend(&self, id: &CapabilityId) -> Result<bool, KvError> {
        let won = self
            .kv
            .compare_and_swap(&key(SPENT, id), None, Some(&[1]))
            .await?;
        if let Ok(mut v) = self.verified.write() {
            for caps in v.values_mut() {
                if caps.iter().any(|c| c.id == *id) {
                    *caps = Arc::new(caps.iter().filter(|c| c.id != *id).cloned().collect());
                }
            }
        }
        Ok(won)
    }
}

pub(crate) async fn list_all(kv: &dyn KvStore, prefix: &[u8]) -> Result<Vec<Vec<u8>>, KvError> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = kv.list(prefix, after.as_deref(), MAX_KV_LIST_LIMIT).await?;
        out.extend(page.keys);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsid_storage::MemoryKvStore;

    #[tokio::test]
    async fn expired_tokens_deny_after_the_documented_skew() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
        let signer = Arc::new(KeyPair::generate().unwrap());
        let store = CapabilityStore::open(kv.clone(), signer.clone(), &[])
            .await
            .unwrap();
        let alice = Principal::User(capsid_core::PrincipalId::new());
        let now = now_ms();
        // Stored directly: `grant` refuses an expiry in the past.
        for (expires_at, allowed) in [(now - 2 * CAPABILITY_CLOCK_SKEW_MS, false), (now - 1, true)]
        {
            let cap = Capability {
                id: CapabilityId(Uuid::now_v7()),
                principal: alice,
                capsule: None,
                pattern: Pattern::parse("kv://capsule/notes").unwrap(),
                permissions: Permissions::READ,
                issued_at: now - 3 * CAPABILITY_CLOCK_SKEW_MS,
                expires_at: Some(expires_at),
                single_use: false,
                issuer: signer.key_id(),
                session: None,
            };
            let mut index = principal_prefix(&alice);
            index.extend_from_slice(cap.id.0.as_bytes());
            kv.batch(&[
                BatchOp::Set {
                    key: key(TOKEN, &cap.id),
                    value: cap.sign(&signer),
                },
                BatchOp::Set {
                    key: index,
                    value: Vec::new(),
                },
            ])
            .await
            .unwrap();
            store.verified.write().unwrap().clear();
            let subject = Subject {
                principal: alice,
                capsule: None,
                session: None,
            };
            let d = store
                .check(&subject, Permissions::READ, "kv://capsule/notes")
                .await;
            assert_eq!(
                d.is_allowed(),
                allowed,
                "expired {}ms ago",
                now - expires_at
            );
            kv.delete(&key(TOKEN, &cap.id)).await.unwrap();
        }
    }
}
