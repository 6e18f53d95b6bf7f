//! The `KvStore` backend on a JetStream KV bucket.
//!
//! Every key is one subject of the bucket's stream ([`subject`]); its last message is its
//! value, or a `KV-Operation: DEL` marker when it was deleted. Reads go through the stream
//! leader (`STREAM.MSG.GET`), so a read after an acknowledged write sees it. Conditional
//! writes (`compare_and_swap`, `delete`, batches) publish with
//! `Nats-Expected-Last-Subject-Sequence` set to the revision they read, so a write in
//! between makes the server refuse them rather than lose either. `list` reads the keys of
//! the prefix with an ordered, headers-only consumer and pages them here: a page costs a
//! pass over every key under the prefix (`O(n)`), the price of NATS subjects not being
//! ordered by bytes.

mod batch;
mod subject;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{Consumer, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{self, ConsumerErrorKind, LastRawMessageErrorKind, Stream};
use async_trait::async_trait;
use bytes::Bytes;
use capsid_core::limits::{
    LATTICE_CONSUMER_ATTEMPT_WAIT, LATTICE_FAILOVER_WAIT, LATTICE_KV_HISTORY,
    LATTICE_KV_LIST_TIMEOUT, LATTICE_KV_MAX_MESSAGE_BYTES, LATTICE_REQUEST_TIMEOUT,
    MAX_KV_CONFLICT_RETRIES,
};
use capsid_storage::{BatchOp, KvError, KvStore, Page, check_key, check_limit, check_write};
use futures_util::StreamExt as _;

use crate::connection::{Lattice, failover_pause};
pub(crate) use crate::now_ms;
use subject::{KEY_HEADER, key_of, key_subject, needs_key_header, prefix_filter};

/// The header JetStream KV marks deletions with.
const OPERATION_HEADER: &str = "KV-Operation";
/// Header making a publish conditional on the subject's last revision.
const EXPECTED_REVISION_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";
/// Header the stream deduplicates writes by.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// A [`KvStore`] on a JetStream KV bucket: shared by every host of the lattice, replicated as
/// the bucket is. Atomic `compare_and_swap`; `batch` is all-or-none but not isolated (a
/// reader may see part of a batch while it applies; see [`batch`](Self::batch)).
#[derive(Debug)]
pub struct JetStreamKvStore {
    lattice: Lattice,
    stream: Stream,
    /// `$KV.<bucket>.`
    prefix: String,
    /// How errors name the store.
    label: PathBuf,
    closed: AtomicBool,
    /// Unix ms of the last sweep for dead writers' batches.
    last_recovery_ms: AtomicU64,
    /// The subject tail this store records its batches' intents on (`i.<random id>`).
    intent_slot: String,
    /// Held while a batch applies: one at a time per store, as they share the intent slot.
    batch_lock: tokio::sync::Mutex<()>,
}

/// A key's last message, as a conditional write needs it.
#[derive(Debug)]
struct Current {
    /// Its stream sequence (0: no message on the subject).
    revision: u64,
    /// The value; `None` when absent or deleted.
    value: Option<Bytes>,
    /// The batch that wrote it, if one did.
    batch: Option<String>,
}

/// How a publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    /// Stored at this revision.
    Stored(u64),
    /// Refused: the key changed since the revision the write expected.
    Conflict,
}

/// The stream of a JetStream KV bucket as NATS's own clients make it (so `nats kv` tools
/// see it as one), made here because the client's bucket creation asks the server for
/// account details NATS 2.9 answers in a shape it does not read.
fn bucket_stream(lattice: &Lattice, bucket: &str, max_age: Duration) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("capsid lattice key-value store".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: LATTICE_KV_HISTORY,
        max_message_size: i32::try_from(LATTICE_KV_MAX_MESSAGE_BYTES).unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        num_replicas: lattice.config().replicas,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        max_age,
        ..Default::default()
    }
}

impl JetStreamKvStore {
    /// Opens the lattice's bucket `bucket`, creating it (with the lattice's replicas) when it
    /// does not exist, and rolls back any batch a dead writer left half-applied. Its batches'
    /// intents go on a subject of its own, left with one small marker when it is done with:
    /// a long-lived host opens with [`open_as`](Self::open_as) so it reuses one.
    pub async fn open(lattice: &Lattice, bucket: &str) -> Result<Self, KvError> {
        Self::open_as(lattice, bucket, &uuid::Uuid::new_v4().simple().to_string()).await
    }

    /// [`open`](Self::open) as `writer`: an id (letters, digits, `-`, `_`) that this host, and
    /// only it, uses for this bucket every time, naming its batches' intent subject. Two
    /// stores open at once as the same writer would mix their batches.
    pub async fn open_as(lattice: &Lattice, bucket: &str, writer: &str) -> Result<Self, KvError> {
        Self::open_with(lattice, bucket, writer, Duration::ZERO).await
    }

    /// [`open`](Self::open) a bucket whose entries are forgotten `max_age` after they were
    /// last written (for records kept alive by rewriting them; not for batches, whose
    /// markers would expire too).
    pub async fn open_expiring(
        lattice: &Lattice,
        bucket: &str,
        max_age: Duration,
    ) -> Result<Self, KvError> {
        let writer = uuid::Uuid::new_v4().simple().to_string();
        Self::open_with(lattice, bucket, &writer, max_age).await
    }

    async fn open_with(
        lattice: &Lattice,
        bucket: &str,
        writer: &str,
        max_age: Duration,
    ) -> Result<Self, KvError> {
        let label = PathBuf::from(format!("jetstream:{bucket}"));
        let backend = |message: String| KvError::Backend {
            path: label.clone(),
            message,
        };
        let writer_ok = !writer.is_empty()
            && writer.len() <= 64
            && writer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !writer_ok {
            return Err(backend(format!(
                "writer id {writer:?} must be 1..=64 letters, digits, '-' or '_'"
            )));
        }
        let stream = lattice
            .open_stream(bucket_stream(lattice, bucket, max_age))
            .await
            .map_err(|e| backend(format!("cannot create the bucket: {e}")))?;
        let kept = stream.cached_info().config.max_messages_per_subject;
        if kept < LATTICE_KV_HISTORY {
            return Err(backend(format!(
                "the bucket keeps {kept} value(s) per key; capsid needs {LATTICE_KV_HISTORY} \
                 (it was not made by capsid: remove it or name another lattice)"
            )));
        }
        let store = Self {
            lattice: lattice.clone(),
            stream,
            prefix: format!("$KV.{bucket}."),
            label,
            closed: AtomicBool::new(false),
            last_recovery_ms: AtomicU64::new(0),
            intent_slot: format!("i.{writer}"),
            batch_lock: tokio::sync::Mutex::new(()),
        };
        batch::recover(&store).await?;
        Ok(store)
    }

    fn backend(&self, message: impl std::fmt::Display) -> KvError {
        KvError::Backend {
            path: self.label.clone(),
            message: message.to_string(),
        }
    }

    fn check_open(&self) -> Result<(), KvError> {
        if self.closed.load(Ordering::Acquire) {
            Err(KvError::Closed)
        } else {
            Ok(())
        }
    }

    fn subject(&self, tail: &str) -> String {
        format!("{}{tail}", self.prefix)
    }

    /// The last message of `subject` (a full subject), read through the stream leader.
    async fn current(&self, subject: &str) -> Result<Current, KvError> {
        let started = Instant::now();
        let message = loop {
            match self.stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => break m,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    return Ok(Current {
                        revision: 0,
                        value: None,
                        batch: None,
                    });
                }
                // No leader answered: one may be being elected. A read is safe to repeat.
                Err(e) if started.elapsed() < LATTICE_FAILOVER_WAIT => {
                    tracing::debug!(%subject, error = %e, "lattice read retried");
                    tokio::time::sleep(failover_pause(started)).await;
                }
                Err(e) => return Err(self.backend(format!("reading {subject}: {e}"))),
            }
        };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let deleted = matches!(header(OPERATION_HEADER).as_deref(), Some("DEL" | "PURGE"));
        if !deleted && let Some(tail) = subject.strip_prefix(&self.prefix) {
            key_of(tail, header(KEY_HEADER).as_deref()).map_err(|reason| KvError::Corrupt {
                key: tail.to_owned(),
                reason,
            })?;
        }
        Ok(Current {
            revision: message.sequence,
            value: (!deleted).then_some(message.payload),
            batch: header(batch::BATCH_HEADER),
        })
    }

    /// Publishes to `subject` and waits for the stream's acknowledgement; with `expected`,
    /// only if the subject's last revision is still that one.
    async fn publish(
        &self,
        subject: String,
        mut headers: HeaderMap,
        payload: Bytes,
        expected: Option<u64>,
    ) -> Result<Published, KvError> {
        if let Some(revision) = expected {
            headers.insert(EXPECTED_REVISION_HEADER, revision.to_string().as_str());
            // NATS before 2.9.21 checks the expected revision before replicating, so two
            // writes in flight from one revision could both pass (nats-server#4320). Naming
            // the transition makes the stream's deduplication, which tracks writes in flight,
            // keep only the first of them.
            headers.insert(MSG_ID_HEADER, format!("{subject}@{revision}").as_str());
        }
        let started = Instant::now();
        loop {
            let ack = self
                .lattice
                .jetstream()
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(|e| self.backend(format!("publishing to {subject}: {e}")))?;
            match ack.await {
                Ok(ack) if ack.duplicate => return Ok(Published::Conflict),
                Ok(ack) => return Ok(Published::Stored(ack.sequence)),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Ok(Published::Conflict);
                }
                // No stream answered, so none stored it: a leader may be being elected, and
                // the same write is safe to send again (unlike one whose answer timed out).
                Err(e)
                    if e.kind() == PublishErrorKind::StreamNotFound
                        && started.elapsed() < LATTICE_FAILOVER_WAIT =>
                {
                    tracing::debug!(%subject, "lattice write retried: no stream answered");
                    tokio::time::sleep(failover_pause(started)).await;
                }
                Err(e) => return Err(self.backend(format!("publishing to {subject}: {e}"))),
            }
        }
    }

    /// The headers a write of `key` carries.
    fn key_headers(key: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if needs_key_header(key) {
            headers.insert(KEY_HEADER, hex::encode(key).as_str());
        }
        headers
    }

    /// Writes `value` (`None`: a deletion marker) to `key`, if its revision is `expected`.
    async fn write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        expected: Option<u64>,
        batch: Option<&str>,
    ) -> Result<Published, KvError> {
        let mut headers = Self::key_headers(key);
        if value.is_none() {
            headers.insert(OPERATION_HEADER, "DEL");
        }
        if let Some(id) = batch {
            headers.insert(batch::BATCH_HEADER, id);
        }
        let payload = value.map_or_else(Bytes::new, Bytes::copy_from_slice);
        self.publish(self.subject(&key_subject(key)), headers, payload, expected)
            .await
    }

    /// An ordered consumer of the messages on `filter` (a whole subject filter): the last of
    /// each subject, or those stored from now on; headers only when payloads are not read.
    async fn ordered(
        &self,
        filter: &str,
        deliver_policy: DeliverPolicy,
        headers_only: bool,
    ) -> Result<Consumer<OrderedConfig>, String> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let config = OrderedConfig {
                deliver_subject: self.lattice.client().new_inbox(),
                filter_subject: filter.to_owned(),
                headers_only,
                deliver_policy,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            };
            // Each attempt waits longer, so a cluster only slow still makes one.
            let wait = (LATTICE_CONSUMER_ATTEMPT_WAIT * attempt).min(LATTICE_REQUEST_TIMEOUT);
            let why = match tokio::time::timeout(wait, self.stream.create_consumer(config)).await {
                Ok(Ok(consumer)) => return Ok(consumer),
                Ok(Err(e))
                    if !matches!(
                        e.kind(),
                        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request
                    ) =>
                {
                    return Err(e.to_string());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("not made within {wait:?}"),
            };
            // Another, placed anew. One an abandoned attempt made after all delivers to an
            // inbox nobody reads, and JetStream removes it once it has been inactive a while.
            if started.elapsed() >= LATTICE_FAILOVER_WAIT {
                return Err(format!(
                    "{why} (none made in {attempt} attempts over {:?})",
                    started.elapsed()
                ));
            }
            tracing::debug!(%filter, error = %why, "lattice consumer made again");
            tokio::time::sleep(failover_pause(started)).await;
        }
    }

    /// Reads every key under `prefix` (all of them; `list` pages them).
    async fn all_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, KvError> {
        let filter = self.subject(&prefix_filter(prefix));
        let consumer = self
            .ordered(&filter, DeliverPolicy::LastPerSubject, true)
            .await
            .map_err(|e| self.backend(format!("listing {filter}: {e}")))?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(keys);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| self.backend(format!("listing {filter}: {e}")))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| self.backend(format!("listing {filter}: {e}")))?;
            let info = message
                .info()
                .map_err(|e| self.backend(format!("listing {filter}: {e}")))?;
            let pending = info.pending;
            let headers = message.headers.as_ref();
            let header = |name: &str| {
                headers
                    .and_then(|h| h.get(name))
                    .map(async_nats::HeaderValue::as_str)
            };
            if !matches!(header(OPERATION_HEADER), Some("DEL" | "PURGE")) {
                let tail = message.subject.strip_prefix(&self.prefix).unwrap_or("");
                let key = key_of(tail, header(KEY_HEADER)).map_err(|reason| KvError::Corrupt {
                    key: tail.to_owned(),
                    reason,
                })?;
                if key.starts_with(prefix) {
                    keys.push(key);
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok(keys)
    }
}

/// The keys written or deleted under a prefix, as [`JetStreamKvStore::watch`] yields them.
pub type KeyChanges =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Vec<u8>, KvError>> + Send>>;

impl JetStreamKvStore {
    /// Every key under `prefix` written or deleted from now on, by any host, in the order the
    /// bucket stored them. Lost messages are fetched again as the client reconnects; the
    /// stream ends, or yields an error, when it cannot go on (watch again, and read what may
    /// have changed meanwhile).
    pub async fn watch(&self, prefix: &[u8]) -> Result<KeyChanges, KvError> {
        self.check_open()?;
        let filter = self.subject(&prefix_filter(prefix));
        let consumer = self
            .ordered(&filter, DeliverPolicy::New, true)
            .await
            .map_err(|e| self.backend(format!("watching {filter}: {e}")))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| self.backend(format!("watching {filter}: {e}")))?;
        let (bucket, label, prefix) = (self.prefix.clone(), self.label.clone(), prefix.to_vec());
        let changes = messages.filter_map(move |message| {
            let out = match message {
                Err(e) => Some(Err(KvError::Backend {
                    path: label.clone(),
                    message: format!("watching {filter}: {e}"),
                })),
                Ok(message) => {
                    let tail = message.subject.strip_prefix(&bucket).unwrap_or("");
                    let header = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(KEY_HEADER))
                        .map(async_nats::HeaderValue::as_str);
                    match key_of(tail, header) {
                        Ok(key) => key.starts_with(&prefix).then_some(Ok(key)),
                        // A deletion marker of a long key need not carry the key: its
                        // subject still says what it shares with the prefix.
                        Err(_) if header.is_none() => None,
                        Err(reason) => Some(Err(KvError::Corrupt {
                            key: tail.to_owned(),
                            reason,
                        })),
                    }
                }
            };
            std::future::ready(out)
        });
        Ok(Box::pin(changes))
    }
}

#[async_trait]
impl KvStore for JetStreamKvStore {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.check_open()?;
        check_key(key)?;
        let current = self.current(&self.subject(&key_subject(key))).await?;
        Ok(current.value.map(|v| v.to_vec()))
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.check_open()?;
        check_write(key, Some(value))?;
        self.write(key, Some(value), None, None).await?;
        Ok(())
    }

    async fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        self.check_open()?;
        check_key(key)?;
        let subject = self.subject(&key_subject(key));
        for _ in 0..MAX_KV_CONFLICT_RETRIES {
            let current = self.current(&subject).await?;
            if current.value.is_none() {
                return Ok(false);
            }
            if let Published::Stored(_) =
                self.write(key, None, Some(current.revision), None).await?
            {
                return Ok(true);
            }
        }
        Err(self.backend(format!(
            "delete still conflicting after {MAX_KV_CONFLICT_RETRIES} attempts"
        )))
    }

    async fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Page, KvError> {
        self.check_open()?;
        check_limit(limit)?;
        let mut keys = tokio::time::timeout(LATTICE_KV_LIST_TIMEOUT, self.all_keys(prefix))
            .await
            .map_err(|_| {
                self.backend(format!(
                    "listing took longer than {LATTICE_KV_LIST_TIMEOUT:?}"
                ))
            })??;
        if let Some(after) = after {
            keys.retain(|k| k.as_slice() > after);
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(Page::of_first(keys, limit))
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        self.check_open()?;
        check_write(key, new)?;
        let subject = self.subject(&key_subject(key));
        // A refused write means the key changed after it was read: read again, and answer
        // false only once the value really differs from `expected`.
        for _ in 0..MAX_KV_CONFLICT_RETRIES {
            let current = self.current(&subject).await?;
            if current.value.as_deref() != expected {
                return Ok(false);
            }
            if current.value.is_none() && new.is_none() {
                return Ok(true);
            }
            if let Published::Stored(_) = self.write(key, new, Some(current.revision), None).await?
            {
                return Ok(true);
            }
        }
        Err(self.backend(format!(
            "compare-and-swap still conflicting after {MAX_KV_CONFLICT_RETRIES} attempts"
        )))
    }

    async fn batch(&self, ops: &[BatchOp]) -> Result<(), KvError> {
        self.check_open()?;
        batch::apply(self, ops).await
    }

    async fn close(&self) -> Result<(), KvError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
