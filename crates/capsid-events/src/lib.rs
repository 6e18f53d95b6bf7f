//! capsid's event bus. Capsules publish to topics (`notes.created`) and subscribe with
//! patterns (`notes.*`, where `*` matches any run of characters, as in capability patterns).
//!
//! Overflow policy: **drop and count.** Every subscriber has its own bounded queue. `publish`
//! never waits: when a subscriber's queue is full, the event is dropped for that subscriber
//! only and its [`Subscription::dropped`] counter grows. So a slow or hostile subscriber can
//! never stall a publisher or the other subscribers, and nothing is lost silently.
//!
//! Invariants:
//! - each subscriber sees the events it receives in publish order;
//! - a dropped [`Subscription`] is unsubscribed at the next publish that would reach it;
//! - topics and patterns are validated: lowercase `[a-z0-9._-]`, non-empty dot-separated
//!   parts, at most `MAX_TOPIC_BYTES`.
#![deny(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use capsid_core::CapsuleId;
use capsid_core::glob::glob_bytes;
use capsid_core::limits::{MAX_EVENT_PAYLOAD_BYTES, MAX_SUBSCRIBER_QUEUE, MAX_TOPIC_BYTES};
use capsid_core::sync::{read, write};
use tokio::sync::mpsc;

/// Why a topic, pattern, payload or queue size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not a valid topic or pattern.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// "topic" or "pattern".
        what: &'static str,
        /// The input (escaped, cut to the limit).
        value: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// The payload is larger than the limit.
    #[error("event payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A queue capacity outside `1..=MAX_SUBSCRIBER_QUEUE`.
    #[error("queue capacity {0} is outside 1..={MAX_SUBSCRIBER_QUEUE}")]
    BadCapacity(usize),
}

fn check(what: &'static str, value: &str, allow_star: bool) -> Result<(), EventError> {
    let bad = |reason| EventError::Invalid {
        what,
        value: value
            .chars()
            .flat_map(char::escape_debug)
            .take(MAX_TOPIC_BYTES)
            .collect(),
        reason,
    };
    if value.is_empty() || value.len() > MAX_TOPIC_BYTES {
        return Err(bad("must be 1 to 255 bytes"));
    }
    if !value.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b"._-".contains(&b)
            || (allow_star && b == b'*')
    }) {
        return Err(bad(if allow_star {
            "use [a-z0-9._-] and '*'"
        } else {
            "use [a-z0-9._-]"
        }));
    }
    if value.split('.').any(str::is_empty) {
        return Err(bad("empty part (leading, trailing or doubled '.')"));
    }
    Ok(())
}

/// Checks that `topic` is a valid topic (not a pattern): what [`EventBus::publish`] accepts.
pub fn validate_topic(topic: &str) -> Result<(), EventError> {
    check("topic", topic, false)
}

/// Checks that `pattern` is a valid pattern: what [`EventBus::subscribe`] accepts.
pub fn validate_pattern(pattern: &str) -> Result<(), EventError> {
    check("pattern", pattern, true)
}

/// Where an event published on another host of a lattice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOrigin {
    /// The host (its runtime public key, hex).
    pub host: String,
    /// On whose authority it was published there, when a person's (`user:<id>`).
    pub principal: Option<String>,
}

/// One published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its topic.
    pub topic: String,
    /// Its payload (JSON by convention, opaque to the bus).
    pub payload: Vec<u8>,
    /// The capsule that published it; `None` for the kernel.
    pub source: Option<CapsuleId>,
    /// Position in the bus's publish order, from 1.
    pub seq: u64,
    /// The host it came from, for an event another host of the lattice published; `None`
    /// for one published here.
    pub origin: Option<Arc<EventOrigin>>,
}

struct Subscriber {
    pattern: String,
    tx: mpsc::Sender<Arc<Event>>,
    dropped: Arc<AtomicU64>,
}

/// The bus. Cheap to clone; clones share subscribers.
#[derive(Clone, Default)]
pub struct EventBus {
    subscribers: Arc<RwLock<Vec<Subscriber>>>,
    seq: Arc<AtomicU64>,
    /// Where events published here on exported topics also go (to the lattice).
    export: Arc<RwLock<Option<Subscriber>>>,
}

/// The events published here on exported topics, as the exporter takes them. Its queue is
/// bounded like a subscriber's: when full, an export is dropped and counted.
#[derive(Debug)]
pub struct Exports {
    rx: mpsc::Receiver<Arc<Event>>,
    dropped: Arc<AtomicU64>,
}

impl Exports {
    /// The next event to export; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        self.rx.recv().await
    }

    /// Events not exported because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The next event to export if one is waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Event>> {
        self.rx.try_recv().ok()
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = read(&self.subscribers).len();
        f.debug_struct("EventBus")
            .field("subscribers", &n)
            .finish_non_exhaustive()
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Subscribers whose queue took the event.
    pub delivered: usize,
    /// Subscribers whose queue was full (their `dropped` counter grew).
    pub dropped: usize,
}

/// A subscriber's end: receive events matching its pattern, in publish order.
#[derive(Debug)]
pub struct Subscription {
    pattern: String,
    rx: mpsc::Receiver<Arc<Event>>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Event>> {
        self.rx.try_recv().ok()
    }

    /// Events dropped for this subscriber because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The pattern it subscribed with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes with `pattern`, queueing at most `capacity` events.
    pub fn subscribe(&self, pattern: &str, capacity: usize) -> Result<Subscription, EventError> {
        check("pattern", pattern, true)?;
        if capacity == 0 || capacity > MAX_SUBSCRIBER_QUEUE {
            return Err(EventError::BadCapacity(capacity));
        }
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        write(&self.subscribers).push(Subscriber {
            pattern: pattern.to_owned(),
            tx,
            dropped: dropped.clone(),
        });
        Ok(Subscription {
            pattern: pattern.to_owned(),
            rx,
            dropped,
        })
    }

    /// Exports the events published here on topics matching any of `patterns` (at most
    /// `capacity` queued): one exporter per bus, the last one set wins. Events that came
    /// from another host ([`publish_remote`](Self::publish_remote)) are never exported.
    pub fn export(&self, patterns: &[String], capacity: usize) -> Result<Exports, EventError> {
        for pattern in patterns {
            check("pattern", pattern, true)?;
        }
        if capacity == 0 || capacity > MAX_SUBSCRIBER_QUEUE {
            return Err(EventError::BadCapacity(capacity));
        }
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        *write(&self.export) = Some(Subscriber {
            pattern: patterns.join(" "),
            tx,
            dropped: dropped.clone(),
        });
        Ok(Exports { rx, dropped })
    }

    /// Publishes to every matching subscriber without waiting (see the overflow policy),
    /// and to the exporter when the topic is exported.
    pub fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        source: Option<CapsuleId>,
    ) -> Result<Delivery, EventError> {
        self.publish_from(topic, payload, source, None)
    }

    /// Publishes an event another host of the lattice published (`origin`) to this host's
    /// subscribers, as [`publish`](Self::publish) does, but never exports it again: no
    /// event goes back where it came from.
    pub fn publish_remote(
        &self,
        topic: &str,
        payload: Vec<u8>,
        source: Option<CapsuleId>,
        origin: EventOrigin,
    ) -> Result<Delivery, EventError> {
        self.publish_from(topic, payload, source, Some(Arc::new(origin)))
    }

    fn publish_from(
        &self,
        topic: &str,
        payload: Vec<u8>,
        source: Option<CapsuleId>,
        origin: Option<Arc<EventOrigin>>,
    ) -> Result<Delivery, EventError> {
        check("topic", topic, false)?;
        if payload.len() > MAX_EVENT_PAYLOAD_BYTES {
            return Err(EventError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_EVENT_PAYLOAD_BYTES,
            });
        }
        let mut delivery = Delivery::default();
        let mut gone = false;
        // The write lock orders sequence numbers with queue insertion, so every subscriber
        // sees events in publish order.
        let subs = write(&self.subscribers);
        let event = Arc::new(Event {
            topic: topic.to_owned(),
            payload,
            source,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            origin,
        });
        for s in subs
            .iter()
            .filter(|s| glob_bytes(s.pattern.as_bytes(), topic.as_bytes()))
        {
            match s.tx.try_send(event.clone()) {
                Ok(()) => delivery.delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    delivery.dropped += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone = true,
            }
        }
        drop(subs);
        if event.origin.is_none() {
            self.offer_export(&event);
        }
        if gone {
            write(&self.subscribers).retain(|s| !s.tx.is_closed());
        }
        Ok(delivery)
    }

    /// Hands `event` to the exporter when its topic is exported (dropped and counted when
    /// the exporter's queue is full). Events reach it in publish order but may interleave
    /// with other publishers' differently than subscribers see them.
    fn offer_export(&self, event: &Arc<Event>) {
        let export = read(&self.export);
        let Some(exporter) = export.as_ref() else {
            return;
        };
        let wanted = exporter
            .pattern
            .split(' ')
            .any(|p| glob_bytes(p.as_bytes(), event.topic.as_bytes()));
        if wanted
            && let Err(mpsc::error::TrySendError::Full(_)) = exporter.tx.try_send(event.clone())
        {
            exporter.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events on exported topics dropped because the exporter's queue was full.
    pub fn export_dropped(&self) -> u64 {
        read(&self.export)
            .as_ref()
            .map_or(0, |e| e.dropped.load(Ordering::Relaxed))
    }

    /// Current number of subscribers.
    pub fn subscriber_count(&self) -> usize {
        read(&self.subscribers).len()
    }
}
