//! The stager: sequence numbers, hashes and signatures, with no I/O.

use std::collections::HashMap;
use std::sync::mpsc as sync_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use capsid_core::Principal;
use capsid_crypto::{Digest, KeyId, KeyPair, Signature};

use super::{Head, Reply};
use crate::checkpoint::{ACTION_CHECKPOINT, Claim};
use crate::entry::{
    ChainId, Decision, EntryFields, EntryRef, Record, entry_hash, genesis_hash, head_message,
};
use crate::error::AuditError;
use crate::verify::{
    ACTION_CHAIN_OPEN, ACTION_KEY_ROTATE, ACTION_LOG_CREATE, KEY_RESOURCE_PREFIX, SYSTEM_CHAIN,
};
use capsid_core::limits::{AUDIT_CHECKPOINT_AT_STOP, AUDIT_CHECKPOINT_INTERVAL};

/// An entry hashed, chained and signed, ready to insert.
pub(super) struct Row {
    pub chain: String,
    pub seq: u64,
    pub time_ns: i64,
    pub prev: Digest,
    pub hash: Digest,
    pub principal: String,
    pub record: Record,
    pub key_id: KeyId,
    pub signature: Signature,
}

/// A chain head to store, signed.
pub(super) struct SignedHead {
    pub chain: String,
    pub head: Head,
    pub key_id: KeyId,
    pub signature: Signature,
}

/// A newly trusted key to pin, introduced by the system-chain entry `introduced_by`.
pub(super) struct NewKey {
    pub key_id: KeyId,
    pub public_key: [u8; 32],
    pub introduced_by: u64,
}

/// One transaction's worth of work for the committer.
pub(super) struct Prepared {
    /// The resync generation the batch was staged in; a stale one is rejected.
    pub generation: u64,
    pub rows: Vec<Row>,
    pub heads: Vec<SignedHead>,
    pub new_key: Option<NewKey>,
    pub replies: Vec<(Reply, EntryRef)>,
    /// Told whether the batch committed (rotations wait on it).
    pub done: Option<sync_mpsc::Sender<bool>>,
}

impl Prepared {
    /// Answers every append of the batch with an error; nothing of it was kept.
    pub fn fail(self, path: &std::path::Path, error: &AuditError) {
        let reason = error.to_string();
        for (reply, _) in self.replies {
            let _ = reply.send(Err(AuditError::CommitFailed {
                path: path.to_owned(),
                reason: reason.clone(),
            }));
        }
        if let Some(done) = self.done {
            let _ = done.send(false);
        }
    }
}

fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

pub(super) struct Stager {
    key: KeyPair,
    key_id: KeyId,
    heads: HashMap<String, Head>,
    generation: u64,
    /// Entries staged since the last checkpoint.
    since_checkpoint: u64,
}

/// Entries of one batch before signing.
struct Draft {
    chain: String,
    seq: u64,
    time_ns: i64,
    prev: Digest,
    hash: Digest,
    principal: String,
    record: Record,
}

impl Stager {
    pub fn new(key: KeyPair, heads: HashMap<String, Head>) -> Self {
        Self {
            key_id: key.key_id(),
            key,
            heads,
            generation: 0,
            since_checkpoint: 0,
        }
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    pub fn into_parts(self) -> (KeyPair, HashMap<String, Head>) {
        (self.key, self.heads)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Continues from the committed heads after a failed batch. A checkpoint staged in the
    /// lost batches is lost with them: the next batch writes one.
    pub fn resync(&mut self, generation: u64, heads: HashMap<String, Head>) {
        self.generation = generation;
        self.heads = heads;
        self.since_checkpoint = self.since_checkpoint.max(AUDIT_CHECKPOINT_INTERVAL);
    }

    /// Counts `entries` already stored after the last checkpoint (or in a log that has
    /// none).
    pub fn after_checkpoint(&mut self, entries: u64) {
        self.since_checkpoint = entries;
    }

    pub fn switch_key(&mut self, key: KeyPair) {
        self.key_id = key.key_id();
        self.key = key;
    }

    /// The first entry of a new log, naming its genesis key.
    pub fn stage_creation(&mut self) -> Result<Prepared, AuditError> {
        let resource = format!("{KEY_RESOURCE_PREFIX}{}", self.key_id);
        let record = Record::new(
            Principal::System,
            ACTION_LOG_CREATE,
            &resource,
            Decision::Info,
        )?;
        let drafts = vec![self.draft(SYSTEM_CHAIN, record, now_ns())];
        Ok(self.finish(drafts, Vec::new(), None, None, None))
    }

    /// Appends in arrival order; a chain's first append opens it in the system chain first.
    pub fn stage_appends(&mut self, appends: Vec<(ChainId, Record, Reply)>) -> Prepared {
        let now = now_ns();
        let mut drafts = Vec::with_capacity(appends.len() + 1);
        let mut replies = Vec::with_capacity(appends.len());
        for (chain, record, reply) in appends {
            let name = chain.to_string();
            if chain != ChainId::System && !self.heads.contains_key(&name) {
                match Record::new(Principal::System, ACTION_CHAIN_OPEN, &name, Decision::Info) {
                    Ok(open) => drafts.push(self.draft(SYSTEM_CHAIN, open, now)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                }
            }
            let draft = self.draft(&name, record, now);
            replies.push((
                reply,
                EntryRef {
                    chain,
                    seq: draft.seq,
                    hash: draft.hash,
                },
            ));
            drafts.push(draft);
        }
        self.since_checkpoint = self.since_checkpoint.saturating_add(drafts.len() as u64);
        if self.since_checkpoint >= AUDIT_CHECKPOINT_INTERVAL
            && let Some(checkpoint) = self.checkpoint_draft(now)
        {
            drafts.push(checkpoint);
        }
        self.finish(drafts, replies, None, None, None)
    }

    /// A checkpoint on its own (the writer stopping cleanly), if more than
    /// `AUDIT_CHECKPOINT_AT_STOP` entries were staged since the last one.
    pub fn stage_checkpoint(&mut self) -> Option<Prepared> {
        if self.since_checkpoint <= AUDIT_CHECKPOINT_AT_STOP {
            return None;
        }
        let draft = self.checkpoint_draft(now_ns())?;
        Some(self.finish(vec![draft], Vec::new(), None, None, None))
    }

    /// The checkpoint entry claiming the heads staged so far (itself excluded).
    fn checkpoint_draft(&mut self, now: i64) -> Option<Draft> {
        let claim = Claim::of(
            self.heads
                .iter()
                .map(|(chain, h)| (chain.as_str(), h.seq, h.hash.as_bytes().as_slice())),
        );
        let record = Record::new(
            Principal::System,
            ACTION_CHECKPOINT,
            "audit://checkpoint",
            Decision::Info,
        )
        .and_then(|r| r.details(&claim.details()))
        .ok()?;
        self.since_checkpoint = 0;
        Some(self.draft(SYSTEM_CHAIN, record, now))
    }

    /// The rotation entry, signed by the current key; every chain head re-signed by the new
    /// key, so that the retiring key can no longer extend any chain.
    pub fn stage_rotation(
        &mut self,
        new_key: &KeyPair,
        reply: Reply,
        done: sync_mpsc::Sender<bool>,
    ) -> Result<Prepared, (AuditError, Reply)> {
        let resource = format!("{KEY_RESOURCE_PREFIX}{}", new_key.key_id());
        let details =
            serde_json::json!({ "public_key": hex::encode(new_key.public_key().to_bytes()) });
        let record = match Record::new(
            Principal::System,
            ACTION_KEY_ROTATE,
            &resource,
            Decision::Info,
        )
        .and_then(|r| r.details(&details))
        {
            Ok(r) => r,
            Err(e) => return Err((e, reply)),
        };
        let draft = self.draft(SYSTEM_CHAIN, record, now_ns());
        let entry = EntryRef {
            chain: ChainId::System,
            seq: draft.seq,
            hash: draft.hash,
        };
        let new = NewKey {
            key_id: new_key.key_id(),
            public_key: new_key.public_key().to_bytes(),
            introduced_by: draft.seq,
        };
        let all: Vec<String> = self.heads.keys().cloned().collect();
        let mut prepared = self.finish(
            vec![draft],
            vec![(reply, entry)],
            Some(new_key),
            Some(new),
            Some(done),
        );
        let signed: Vec<String> = prepared.heads.iter().map(|h| h.chain.clone()).collect();
        for chain in all.into_iter().filter(|c| !signed.contains(c)) {
            if let Some(head) = self.heads.get(&chain).copied() {
                prepared.heads.push(sign_head(new_key, chain, head));
            }
        }
        Ok(prepared)
    }

    fn draft(&mut self, chain: &str, record: Record, time_ns: i64) -> Draft {
        let (seq, prev) = match self.heads.get(chain) {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, genesis_hash(chain)),
        };
        let principal = record.principal.to_string();
        let hash = entry_hash(&EntryFields {
            chain: chain.as_bytes(),
            seq,
            time_ns,
            principal: principal.as_bytes(),
            capsule: record
                .capsule
                .as_ref()
                .map_or("", |c| c.as_str())
                .as_bytes(),
            action: record.action.as_bytes(),
            resource: record.resource.as_bytes(),
            decision: record.decision.as_str().as_bytes(),
            details: record.details.as_bytes(),
            prev_hash: prev.as_bytes(),
            key_id: self.key_id.as_bytes(),
        });
        self.heads.insert(chain.to_owned(), Head { seq, hash });
        Draft {
            chain: chain.to_owned(),
            seq,
            time_ns,
            prev,
            hash,
            principal,
            record,
        }
    }

    /// Signs the drafts with the current key and the heads they touched with `head_key`
    /// (default: the current key).
    fn finish(
        &self,
        drafts: Vec<Draft>,
        replies: Vec<(Reply, EntryRef)>,
        head_key: Option<&KeyPair>,
        new_key: Option<NewKey>,
        done: Option<sync_mpsc::Sender<bool>>,
    ) -> Prepared {
        let mut touched: Vec<String> = Vec::new();
        let rows = drafts
            .into_iter()
            .map(|d| {
                if !touched.contains(&d.chain) {
                    touched.push(d.chain.clone());
                }
                Row {
                    signature: self.key.sign(d.hash.as_bytes()),
                    key_id: self.key_id,
                    chain: d.chain,
                    seq: d.seq,
                    time_ns: d.time_ns,
                    prev: d.prev,
                    hash: d.hash,
                    principal: d.principal,
                    record: d.record,
                }
            })
            .collect();
        let head_key = head_key.unwrap_or(&self.key);
        let heads = touched
            .into_iter()
            .filter_map(|chain| {
                self.heads
                    .get(&chain)
                    .copied()
                    .map(|h| sign_head(head_key, chain, h))
            })
            .collect();
        Prepared {
            generation: self.generation,
            rows,
            heads,
            new_key,
            replies,
            done,
        }
    }
}

fn sign_head(key: &KeyPair, chain: String, head: Head) -> SignedHead {
    let signature = key.sign(head_message(&chain, head.seq, head.hash.as_bytes()).as_bytes());
    SignedHead {
        chain,
        head,
        key_id: key.key_id(),
        signature,
    }
}
