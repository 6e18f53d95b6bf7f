//! Atomic batches on a server without multi-subject transactions (NATS 2.9).
//!
//! A batch reads the revision of each key it writes, records an **intent** (its id, and each
//! key's subject with its revision before) on its store's intent subject (`i.<writer>`; a
//! store applies one batch at a time), then writes each key on the condition that it is
//! still at that revision, each write tagged with the batch's id. The batch commits when a
//! deletion marker follows its intent, written on the condition that the intent is still the
//! subject's last. A refused write (another writer came between) rolls back the writes made
//! so far and starts again; an error rolls them back and fails. Rolling back a key restores
//! the message before the batch's (the bucket keeps two per key), still only on the
//! condition that the batch's write is the key's last.
//!
//! Intents are never purged: NATS 2.9.10, replaying a subject-filtered purge while recovering
//! from a crash of every node, emptied the whole stream (the kernel's lattice suite caught
//! it). What stays is one marker per writer.
//!
//! A writer that dies mid-batch leaves its intent behind. The same writer rolls it back when
//! it opens the bucket again; any store does once the intent is older, by the server's clock,
//! than [`LATTICE_BATCH_INTENT_STALE`] (at open, or when it starts a batch): each key whose
//! last write is still that batch's gets its earlier one back. A batch gives up and rolls
//! itself back after [`LATTICE_BATCH_APPLY_DEADLINE`], well within that; one rolled back
//! meanwhile as a dead writer's by another host rolls back the rest of its writes and fails.
//!
//! So a batch is all or none, but not isolated: a reader may see some of its writes while it
//! applies, or a dead writer's until they are rolled back.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
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
    // An earlier batch whose rollback failed left its intent open on this store's subject:
    // roll it back before a new intent takes its place.
    if has_open_intent(store).await? {
        recover(store).await?;
    } else {
        recover_if_due(store).await?;
    }
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
            // Another host took it for a dead writer's and rolled back what it saw; what it
            // did not see is rolled back below (each restore only if still this batch's).
            Ok(false) => {
                failure = Some(store.backend(
                    "the batch took so long that another host rolled it back as a dead writer's",
                ));
            }
            Err(e) => failure = Some(e),
        }
    }
    for &(tail, before, ours) in applied.iter().rev() {
        restore(store, tail, before, ours).await?;
    }
    // Closed already when another host rolled it back: nothing more to do then.
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
                        "rolling back {tail}: revision {before} is gone while the batch's write \
                         is still the last"
                    )));
                }
                return Ok(());
            }
            Err(e) => {
                return Err(store.backend(format!("rolling back {tail}: revision {before}: {e}")));
            }
        }
    };
    let subject = store.subject(tail);
    if let Some(m) = &prior
        && m.subject.as_str() != subject
    {
        // An intent names revisions; one of another key's is not this key's value.
        return Err(KvError::Corrupt {
            key: tail.to_owned(),
            reason: format!("batch intent names revision {before}, which is not this key's"),
        });
    }
    match prior {
        Some(m) if m.headers.get(OPERATION_HEADER).is_none() => {
            if let Some(key) = m.headers.get(KEY_HEADER) {
                headers.insert(KEY_HEADER, key.as_str());
            }
            payload = m.payload;
        }
        _ => {
            headers.insert(OPERATION_HEADER, "DEL");
            // A long key's marker carries the key too, so watchers learn which was deleted:
            // the batch's own write (still the last, or the guard refuses this) has it.
            if tail.rsplit('.').next().is_some_and(|t| t.starts_with('h'))
                && let Ok(ours) = store.stream.get_raw_message(guard).await
                && let Some(key) = ours.headers.get(KEY_HEADER)
            {
                headers.insert(KEY_HEADER, key.as_str());
            }
        }
    }
    store
        .publish(subject, headers, payload, Some(guard))
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

/// Whether this store's intent subject ends in an intent not closed.
async fn has_open_intent(store: &JetStreamKvStore) -> Result<bool, KvError> {
    let subject = store.subject(&store.intent_slot);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => Ok(m.headers.get(OPERATION_HEADER).is_none()),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
        Err(e) => Err(store.backend(format!("reading {subject}: {e}"))),
    }
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

/// Rolls back every batch whose intent is older than [`LATTICE_BATCH_INTENT_STALE`], or open
/// on this store's own intent subject: each of its keys whose last message is still that
/// batch's gets its earlier one back.
pub(super) async fn recover(store: &JetStreamKvStore) -> Result<(), KvError> {
    recover_older_than(store, LATTICE_BATCH_INTENT_STALE).await
}

/// [`recover`] with the age past which an intent counts as a dead writer's.
async fn recover_older_than(store: &JetStreamKvStore, stale: Duration) -> Result<(), KvError> {
    store.last_recovery_ms.store(now_ms(), Ordering::Relaxed);
    let (intents, server_now) = tokio::time::timeout(LATTICE_KV_LIST_TIMEOUT, intents(store))
        .await
        .map_err(|_| store.backend("reading batch intents timed out"))??;
    let stale_ms = u64::try_from(stale.as_millis()).unwrap_or(u64::MAX);
    let own = store.subject(&store.intent_slot);
    for (subject, at, intent) in intents {
        // An open intent on this store's own subject is a predecessor's that died (this one
        // applies none while it sweeps), however young.
        if subject != own && server_now.saturating_sub(intent.at_ms) < stale_ms {
            continue;
        }
        for (tail, before) in &intent.writes {
            let current = store.current(&store.subject(tail)).await?;
            if current.batch.as_deref() == Some(intent.id.as_str()) {
                match restore(store, tail, *before, current.revision).await {
                    // A forged intent: its claim is not carried out, and blocks nobody.
                    Err(KvError::Corrupt { reason, .. }) => {
                        tracing::warn!(intent = %subject, key = %tail, %reason, "skipped");
                    }
                    other => other?,
                }
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
async fn intents(store: &JetStreamKvStore) -> Result<(Vec<(String, u64, Intent)>, u64), KvError> {
    let filter = store.subject("i.>");
    let fail = |e: &dyn std::fmt::Display| store.backend(format!("reading batch intents: {e}"));
    let consumer = store
        .ordered(&filter, DeliverPolicy::LastPerSubject, false)
        .await
        .map_err(|e| fail(&e))?;
    let mut out = Vec::new();
    // The server's time now (when it made the consumer), beside its times of publication.
    let created = consumer.cached_info().created.unix_timestamp_nanos() / 1_000_000;
    let server_now = u64::try_from(created).unwrap_or_else(|_| now_ms());
    if consumer.cached_info().num_pending == 0 {
        return Ok((out, server_now));
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
        match serde_json::from_slice::<Intent>(&message.payload) {
            // Judged stale by the server's clocks (published, and now), not this host's.
            Ok(mut intent) => {
                let published = info.published.unix_timestamp_nanos() / 1_000_000;
                intent.at_ms = u64::try_from(published).unwrap_or(intent.at_ms);
                out.push((message.subject.to_string(), at, intent));
            }
            // Not one of ours: nothing to roll back, and no reason to refuse the store.
            Err(e) => tracing::warn!(
                intent = %message.subject,
                error = %e,
                "skipped a batch intent that does not decode"
            ),
        }
        if pending == 0 {
            break;
        }
    }
    Ok((out, server_now))
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
            export: Vec::new(),
        };
        Lattice::connect(&config, std::path::Path::new("/"))
            .await
            .unwrap()
    }

    /// Leaves what a writer that died mid-batch leaves: an intent, and the first of its two
    /// writes applied.
    async fn half_applied(store: &JetStreamKvStore) {
        let (a, b) = (key_subject(b"a"), key_subject(b"b"));
        let before_a = store.current(&store.subject(&a)).await.unwrap().revision;
        let before_b = store.current(&store.subject(&b)).await.unwrap().revision;
        let intent = Intent {
            id: "dead".into(),
            at_ms: now_ms(),
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
        half_applied(&store).await;
        assert_eq!(store.get(b"a").await.unwrap().unwrap(), b"half");

        // Opening sweeps with the real age (the intent is young); an hour later it is stale.
        let reopened = JetStreamKvStore::open(&lattice, "recovery").await.unwrap();
        assert_eq!(reopened.get(b"a").await.unwrap().unwrap(), b"half");
        recover_older_than(&reopened, Duration::ZERO).await.unwrap();
        assert_eq!(reopened.get(b"a").await.unwrap().unwrap(), b"old");
        assert_eq!(reopened.get(b"b").await.unwrap(), None);
        assert!(
            intents(&reopened).await.unwrap().0.is_empty(),
            "the intent is removed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_reopening_rolls_back_its_own_open_intent_however_young() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let lattice = lattice(&cluster).await;
        let store = JetStreamKvStore::open_as(&lattice, "own", "host-a")
            .await
            .unwrap();
        store.set(b"a", b"old").await.unwrap();
        let tail = key_subject(b"a");
        let before = store.current(&store.subject(&tail)).await.unwrap().revision;
        let intent = Intent {
            id: "mine".into(),
            at_ms: now_ms(),
            writes: vec![(tail, before)],
        };
        let body = serde_json::to_vec(&intent).unwrap();
        let own = store.subject(&store.intent_slot);
        store
            .publish(own, HeaderMap::new(), body.into(), None)
            .await
            .unwrap();
        let written = store.write(b"a", Some(b"half"), Some(before), Some("mine"));
        assert!(matches!(written.await.unwrap(), Published::Stored(_)));
        // Another writer leaves it alone (young); the same writer, reopening, does not.
        let other = JetStreamKvStore::open_as(&lattice, "own", "host-b")
            .await
            .unwrap();
        assert_eq!(other.get(b"a").await.unwrap().unwrap(), b"half");
        let reopened = JetStreamKvStore::open_as(&lattice, "own", "host-a")
            .await
            .unwrap();
        assert_eq!(reopened.get(b"a").await.unwrap().unwrap(), b"old");
        assert!(intents(&reopened).await.unwrap().0.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_still_within_its_deadline_is_left_alone() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let lattice = lattice(&cluster).await;
        let store = JetStreamKvStore::open(&lattice, "young").await.unwrap();
        half_applied(&store).await;
        let reopened = JetStreamKvStore::open(&lattice, "young").await.unwrap();
        assert_eq!(reopened.get(b"a").await.unwrap().unwrap(), b"half");
        assert_eq!(intents(&reopened).await.unwrap().0.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolling_back_leaves_a_later_writers_value() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let lattice = lattice(&cluster).await;
        let store = JetStreamKvStore::open(&lattice, "later").await.unwrap();
        store.set(b"a", b"old").await.unwrap();
        half_applied(&store).await;
        store.set(b"a", b"later").await.unwrap();
        recover_older_than(&store, Duration::ZERO).await.unwrap();
        assert_eq!(store.get(b"a").await.unwrap().unwrap(), b"later");
        assert!(intents(&store).await.unwrap().0.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restoring_puts_back_the_value_before_only_while_the_batchs_write_is_last() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let lattice = lattice(&cluster).await;
        let store = JetStreamKvStore::open(&lattice, "restore").await.unwrap();
        let long = vec![b'k'; 100];
        let tail = key_subject(&long);
        store.set(&long, b"before").await.unwrap();
        let before = store.current(&store.subject(&tail)).await.unwrap().revision;
        let Published::Stored(ours) = store
            .write(&long, Some(b"batch"), Some(before), Some("b1"))
            .await
            .unwrap()
        else {
            panic!("the batch's write was refused");
        };
        restore(&store, &tail, before, ours).await.unwrap();
        assert_eq!(store.get(&long).await.unwrap().unwrap(), b"before");
        assert_eq!(
            store.list(b"k", None, 10).await.unwrap().keys,
            vec![long.clone()]
        );

        // Restoring against a guard that is no longer the last changes nothing.
        store.set(&long, b"later").await.unwrap();
        restore(&store, &tail, before, ours).await.unwrap();
        assert_eq!(store.get(&long).await.unwrap().unwrap(), b"later");

        // An intent naming another key's revision is refused, not copied.
        store.set(b"other", b"x").await.unwrap();
        let other = store
            .current(&store.subject(&key_subject(b"other")))
            .await
            .unwrap();
        let now = store.current(&store.subject(&tail)).await.unwrap().revision;
        let err = restore(&store, &tail, other.revision, now)
            .await
            .unwrap_err();
        assert!(matches!(err, KvError::Corrupt { .. }), "{err}");
        assert_eq!(store.get(&long).await.unwrap().unwrap(), b"later");
    }
}
