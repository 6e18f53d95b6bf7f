//! Atomic batches on a server without multi-subject transactions (NATS 2.9).
//!
//! A batch reads the revision of each key it writes, records an **intent** (its id, when it
//! began, and each key's subject with its revision before) on the store's own intent subject
//! (`i.<store id>`; a store applies one batch at a time), then writes each key on the
//! condition that it is still at that revision, each write tagged with the batch's id. The
//! batch commits when a deletion marker follows its intent (written on the condition that the
//! intent is still the subject's last). Intents are never purged: NATS 2.9.10 replaying a
//! subject-filtered purge while recovering from a crash of every node emptied the whole
//! stream (seen in the kernel's lattice suite). What stays is one marker per store opened. A refused write (another writer came between)
//! rolls back the writes made so far and starts again; an error rolls them back and fails.
//! Rolling back a key restores the message before the batch's (the bucket keeps two per
//! key), still only on the condition that the batch's write is the key's last.
//!
//! A writer that dies mid-batch leaves its intent behind: once it is older than
//! [`LATTICE_BATCH_INTENT_STALE`], the next store to open the bucket or start a batch rolls
//! back each of its keys whose last write is still that batch's, then removes it. A batch
//! gives up and rolls itself back after [`LATTICE_BATCH_APPLY_DEADLINE`], well within that.
//!
//! So a batch is all or none, but not isolated: a reader may see some of its writes while it
//! applies, or a dead writer's until they are rolled back.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use capsid_core::limits::{
    LATTICE_BATCH_APPLY_DEADLINE, LATTICE_BATCH_INTENT_STALE, LATTICE_KV_LIST_TIMEOUT,
    MAX_KV_CONFLICT_RETRIES,
};
use capsid_storage::{BatchOp, KvError, check_batch};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::subject::{KEY_HEADER, key_subject};
use super::{JetStreamKvStore, OPERATION_HEADER, Published, now_ms};

/// Header naming the batch that wrote a message.
pub(super) const BATCH_HEADER: &str = "Capsid-Batch";

/// What a batch records before it writes.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    /// The batch's id, which tags its writes.
    id: String,
    /// Unix ms when the batch began.
    at_ms: u64,
    /// Each key's subject tail and its revision before the batch (0: no message).
    writes: Vec<(String, u64)>,
}

/// One key's write in a batch.
#[derive(Debug)]
struct Planned<'a> {
    key: &'a [u8],
    value: Option<&'a [u8]>,
    tail: String,
    before: u64,
}

enum Outcome {
    Committed,
    Conflict,
}

/// Applies `ops` atomically (see the module's documentation).
pub(super) async fn apply(store: &JetStreamKvStore, ops: &[BatchOp]) -> Result<(), KvError> {
    check_batch(ops)?;
    let mut last: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
    for op in ops {
        let value = match op {
            BatchOp::Set { value, .. } => Some(value.as_slice()),
            BatchOp::Delete { .. } => None,
        };
        last.insert(op.key(), value);
    }
    if let [(key, value)] = last.iter().collect::<Vec<_>>()[..] {
        // One key: a single write is atomic by itself.
        store.write(key, *value, None, None).await?;
        return Ok(());
    }
    if last.is_empty() {
        return Ok(());
    }
    let _one_at_a_time = store.batch_lock.lock().await;
    recover_if_due(store).await?;
    let deadline = Instant::now() + LATTICE_BATCH_APPLY_DEADLINE;
    for attempt in 0..MAX_KV_CONFLICT_RETRIES {
        match attempt_once(store, &last, deadline).await? {
            Outcome::Committed => return Ok(()),
            Outcome::Conflict => {
                // Two batches over the same keys would otherwise collide in step.
                let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 8;
                let exp = u32::try_from(attempt.min(6)).unwrap_or(6);
                tokio::time::sleep(Duration::from_millis((1 << exp) + jitter)).await;
            }
        }
    }
    Err(store.backend(format!(
        "batch still conflicting after {MAX_KV_CONFLICT_RETRIES} attempts; nothing of it applied"
    )))
}

async fn attempt_once(
    store: &JetStreamKvStore,
    last: &BTreeMap<&[u8], Option<&[u8]>>,
    deadline: Instant,
) -> Result<Outcome, KvError> {
    let mut planned = Vec::with_capacity(last.len());
    for (&key, &value) in last {
        let tail = key_subject(key);
        let before = store.current(&store.subject(&tail)).await?.revision;
        planned.push(Planned {
            key,
            value,
            tail,
            before,
        });
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let intent = Intent {
        id: id.clone(),
        at_ms: now_ms(),
        writes: planned.iter().map(|p| (p.tail.clone(), p.before)).collect(),
    };
    let intent_subject = store.subject(&store.intent_slot);
    let body = serde_json::to_vec(&intent).map_err(|e| store.backend(e))?;
    let Published::Stored(intent_at) = store
        .publish(intent_subject.clone(), HeaderMap::new(), body.into(), None)
        .await?
    else {
        return Err(store.backend("an unconditional write was refused as a conflict"));
    };

    let mut applied: Vec<(&str, u64, u64)> = Vec::with_capacity(planned.len());
    let mut failure = None;
    for p in &planned {
        if Instant::now() > deadline {
            failure = Some(store.backend(format!(
                "batch took longer than {LATTICE_BATCH_APPLY_DEADLINE:?}; rolled back"
            )));
            break;
        }
        match store.write(p.key, p.value, Some(p.before), Some(&id)).await {
            Ok(Published::Stored(ours)) => applied.push((&p.tail, p.before, ours)),
            Ok(Published::Conflict) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() && applied.len() == planned.len() {
        // The commit point: once the intent is gone, nothing rolls the batch back.
        match close_intent(store, &intent_subject, intent_at).await {
            Ok(true) => return Ok(Outcome::Committed),
            Ok(false) => {
                return Err(store.backend(
                    "the batch took so long that another host rolled it back as a dead writer's",
                ));
            }
            Err(e) => failure = Some(e),
        }
    }
    for &(tail, before, ours) in applied.iter().rev() {
        restore(store, tail, before, ours).await?;
    }
    close_intent(store, &intent_subject, intent_at).await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(Outcome::Conflict),
    }
}

/// Puts back on `tail` the message at revision `before` (none: a deletion marker), on the
/// condition that the key's last message is still `guard`; a later writer's value stays.
async fn restore(
    store: &JetStreamKvStore,
    tail: &str,
    before: u64,
    guard: u64,
) -> Result<(), KvError> {
    let mut headers = HeaderMap::new();
    let mut payload = Bytes::new();
    let prior = if before == 0 {
        None
    } else {
        match store.stream.get_raw_message(before).await {
            Ok(m) => Some(m),
            // The bucket keeps the batch's write and the one before it while the batch's is
            // the last; the one before gone means a later writer's value stands.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                if store.current(&store.subject(tail)).await?.revision == guard {
                    return Err(store.backend(format!(
                        "rolling back {tail}: revision {before} is gone while the batch's write                          is still the last"
                    )));
                }
                return Ok(());
            }
            Err(e) => {
                return Err(store.backend(format!("rolling back {tail}: revision {before}: {e}")));
            }
        }
    };
    match prior {
        Some(m) if m.headers.get(OPERATION_HEADER).is_none() => {
            if let Some(key) = m.headers.get(KEY_HEADER) {
                headers.insert(KEY_HEADER, key.as_str());
            }
            payload = m.payload;
        }
        _ => headers.insert(OPERATION_HEADER, "DEL"),
    }
    store
        .publish(store.subject(tail), headers, payload, Some(guard))
        .await?;
    Ok(())
}

/// Closes the intent at revision `at` on `subject` with a deletion marker, on the condition
/// that it is still the subject's last message; false when it was not (closed already).
async fn close_intent(store: &JetStreamKvStore, subject: &str, at: u64) -> Result<bool, KvError> {
    let mut headers = HeaderMap::new();
    headers.insert(OPERATION_HEADER, "DEL");
    let published = store
        .publish(subject.to_owned(), headers, Bytes::new(), Some(at))
        .await?;
    Ok(published != Published::Conflict)
}

/// Runs [`recover`] when it has not run for [`LATTICE_BATCH_INTENT_STALE`].
async fn recover_if_due(store: &JetStreamKvStore) -> Result<(), KvError> {
    let now = now_ms();
    let last = store.last_recovery_ms.load(Ordering::Relaxed);
    let due_ms = u64::try_from(LATTICE_BATCH_INTENT_STALE.as_millis()).unwrap_or(u64::MAX);
    if now.saturating_sub(last) >= due_ms {
        recover(store).await?;
    }
    Ok(())
}

/// Rolls back every batch whose intent is older than [`LATTICE_BATCH_INTENT_STALE`]: each of
/// its keys whose last message is still that batch's gets its earlier one back.
pub(super) async fn recover(store: &JetStreamKvStore) -> Result<(), KvError> {
    store.last_recovery_ms.store(now_ms(), Ordering::Relaxed);
    let intents = tokio::time::timeout(LATTICE_KV_LIST_TIMEOUT, intents(store))
        .await
        .map_err(|_| store.backend("reading batch intents timed out"))??;
    let stale_ms = u64::try_from(LATTICE_BATCH_INTENT_STALE.as_millis()).unwrap_or(u64::MAX);
    for (subject, at, intent) in intents {
        if now_ms().saturating_sub(intent.at_ms) < stale_ms {
            continue;
        }
        for (tail, before) in &intent.writes {
            let current = store.current(&store.subject(tail)).await?;
            if current.batch.as_deref() == Some(intent.id.as_str()) {
                restore(store, tail, *before, current.revision).await?;
            }
        }
        close_intent(store, &subject, at).await?;
        tracing::warn!(
            bucket = %store.label.display(),
            intent = %subject,
            keys = intent.writes.len(),
            "rolled back a batch its writer left half-applied"
        );
    }
    Ok(())
}

/// Every batch intent in the bucket: its subject, its revision, what it says.
async fn intents(store: &JetStreamKvStore) -> Result<Vec<(String, u64, Intent)>, KvError> {
    let filter = store.subject("i.>");
    let fail = |e: &dyn std::fmt::Display| store.backend(format!("reading batch intents: {e}"));
    let consumer = store
        .stream
        .create_consumer(OrderedConfig {
            deliver_subject: store.lattice.client().new_inbox(),
            filter_subject: filter,
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| fail(&e))?;
        let info = message.info().map_err(|e| fail(&e))?;
        let (pending, at) = (info.pending, info.stream_sequence);
        let closed = message
            .headers
            .as_ref()
            .and_then(|h| h.get(OPERATION_HEADER))
            .is_some();
        if closed {
            if pending == 0 {
                break;
            }
            continue;
        }
        let intent: Intent =
            serde_json::from_slice(&message.payload).map_err(|e| KvError::Corrupt {
                key: message.subject.to_string(),
                reason: format!("not a batch intent: {e}"),
            })?;
        out.push((message.subject.to_string(), at, intent));
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use capsid_storage::KvStore as _;

    use super::*;
    use crate::local::LocalCluster;
    use crate::{Lattice, LatticeConfig};

    async fn lattice(cluster: &LocalCluster) -> Lattice {
        let config = LatticeConfig {
            name: "unit".into(),
            servers: cluster.urls(),
            replicas: 1,
            credentials: None,
            trusted_hosts: Vec::new(),
        };
        Lattice::connect(&config, std::path::Path::new("/"))
            .await
            .unwrap()
    }

    /// Leaves what a writer that died mid-batch leaves: an intent begun `age` ago, and the
    /// first of its two writes applied.
    async fn half_applied(store: &JetStreamKvStore, age: Duration) {
        let (a, b) = (key_subject(b"a"), key_subject(b"b"));
        let before_a = store.current(&store.subject(&a)).await.unwrap().revision;
        let before_b = store.current(&store.subject(&b)).await.unwrap().revision;
        let age_ms = u64::try_from(age.as_millis()).unwrap();
        let intent = Intent {
            id: "dead".into(),
            at_ms: now_ms() - age_ms,
            writes: vec![(a, before_a), (b, before_b)],
        };
        let body = serde_json::to_vec(&intent).unwrap();
        store
            .publish(store.subject("i.dead"), HeaderMap::new(), body.into(), None)
            .await
            .unwrap();
        let written = store.write(b"a", Some(b"half"), Some(before_a), Some("dead"));
        assert!(matches!(written.await.unwrap(), Published::Stored(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_writers_half_applied_batch_is_rolled_back_when_stale() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let lattice = lattice(&cluster).await;
        let store = JetStreamKvStore::open(&lattice, "recovery").await.unwrap();
        store.set(b"a", b"old").await.unwrap();
        half_applied(&store, LATTICE_BATCH_INTENT_STALE + Duration::from_secs(1)).await;
        assert_eq!(store.get(b"a").await.unwrap().unwrap(), b"half");

        let reopened = JetStreamKvStore::open(&lattice, "recovery").await.unwrap();
        assert_eq!(reopened.get(b"a").await.unwrap().unwrap(), b"old");
        assert_eq!(reopened.get(b"b").await.unwrap(), None);
        assert!(
            intents(&reopened).await.unwrap().is_empty(),
            "the intent is removed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_still_within_its_deadline_is_left_alone() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let lattice = lattice(&cluster).await;
        let store = JetStreamKvStore::open(&lattice, "young").await.unwrap();
        half_applied(&store, Duration::ZERO).await;
        let reopened = JetStreamKvStore::open(&lattice, "young").await.unwrap();
        assert_eq!(reopened.get(b"a").await.unwrap().unwrap(), b"half");
        assert_eq!(intents(&reopened).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolling_back_leaves_a_later_writers_value() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let lattice = lattice(&cluster).await;
        let store = JetStreamKvStore::open(&lattice, "later").await.unwrap();
        store.set(b"a", b"old").await.unwrap();
        half_applied(&store, LATTICE_BATCH_INTENT_STALE + Duration::from_secs(1)).await;
        store.set(b"a", b"later").await.unwrap();
        let reopened = JetStreamKvStore::open(&lattice, "later").await.unwrap();
        assert_eq!(reopened.get(b"a").await.unwrap().unwrap(), b"later");
        assert!(intents(&reopened).await.unwrap().is_empty());
    }
}
