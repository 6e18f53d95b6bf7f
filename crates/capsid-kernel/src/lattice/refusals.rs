//! Messages from other hosts this host refused, audited. Each refusal is counted at once (the
//! lattice's traffic in `status`) and recorded as `lattice.refused` entries, one per kind of
//! message and reason, with how many, when, and the keys untrusted senders claimed. The first
//! refusal after a quiet spell is recorded at once; under a flood, at most one entry per kind
//! and reason every [`LATTICE_REFUSALS_AUDIT_INTERVAL`], so whoever can publish on the
//! lattice's subjects cannot grow this host's log at the rate they send. What is still counted
//! at shutdown is recorded before the shutdown entry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use capsid_audit::{Decision, Record};
use capsid_core::Principal;
use capsid_core::limits::{LATTICE_REFUSAL_SENDERS_KEPT, LATTICE_REFUSALS_AUDIT_INTERVAL};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::Joined;
use crate::kernel::Kernel;

/// What kind of message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Refused {
    /// A tool call sent to one of this host's capsules.
    Call,
    /// An event on an exported topic.
    Event,
    /// A cancel of a call.
    Cancel,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Event => "event",
            Self::Cancel => "cancel",
        }
    }
}

/// Refusals counted and not yet recorded. Keyed by kind and reason, both from fixed sets, so
/// it stays small whatever is sent.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    tally: Mutex<BTreeMap<(Refused, &'static str), Tally>>,
    /// Held while entries are written, so the one at shutdown waits for one under way.
    writing: tokio::sync::Mutex<()>,
    /// Wakes the recorder.
    pending: Notify,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tally {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    /// Keys claimed by untrusted senders, the first few.
    senders: Vec<String>,
}

impl Refusals {
    /// Counts one refusal, and wakes the recorder.
    pub(crate) fn refused(&self, what: Refused, reason: &'static str, sender: Option<&str>) {
        let now = capsid_core::time::now_ms();
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = tally.entry((what, reason)).or_insert(Tally {
            count: 0,
            first_ms: now,
            last_ms: now,
            senders: Vec::new(),
        });
        entry.count += 1;
        entry.last_ms = now;
        if let Some(sender) = sender
            && entry.senders.len() < LATTICE_REFUSAL_SENDERS_KEPT
            && !entry.senders.iter().any(|s| s == sender)
        {
            entry.senders.push(sender.to_owned());
        }
        drop(tally);
        self.pending.notify_one();
    }

    /// Takes what was counted, leaving nothing: what is counted from now on starts afresh.
    fn take(&self) -> BTreeMap<(Refused, &'static str), Tally> {
        std::mem::take(&mut *self.tally.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back what could not be recorded, merged with what was counted meanwhile.
    fn put_back(&self, unrecorded: BTreeMap<(Refused, &'static str), Tally>) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, older) in unrecorded {
            let merged = match tally.remove(&key) {
                None => older,
                Some(newer) => {
                    let mut senders = older.senders;
                    for sender in newer.senders {
                        if senders.len() < LATTICE_REFUSAL_SENDERS_KEPT
                            && !senders.contains(&sender)
                        {
                            senders.push(sender);
                        }
                    }
                    Tally {
                        count: older.count + newer.count,
                        first_ms: older.first_ms,
                        last_ms: newer.last_ms,
                        senders,
                    }
                }
            };
            tally.insert(key, merged);
        }
    }
}

/// Records refusals as they come, from boot on (see the module's documentation).
pub(super) fn record(kernel: &Kernel, joined: &Joined) -> JoinHandle<()> {
    let weak = Arc::downgrade(&kernel.inner);
    let traffic = joined.traffic.clone();
    tokio::spawn(async move {
        loop {
            traffic.refusals.pending.notified().await;
            let Some(inner) = weak.upgrade() else { return };
            // Written by a task of its own: stopping this one at shutdown does not cut a
            // write short, and the last one waits for it.
            let write = tokio::spawn(async move { Kernel { inner }.record_refusals().await });
            let _ = write.await;
            tokio::time::sleep(LATTICE_REFUSALS_AUDIT_INTERVAL).await;
        }
    })
}

impl Kernel {
    /// Records the refusals counted and not yet recorded.
    pub(crate) async fn record_refusals(&self) {
        let Some(joined) = &self.parts().lattice else {
            return;
        };
        let refusals = &joined.traffic.refusals;
        let _writing = refusals.writing.lock().await;
        let mut counted = refusals.take();
        let lattice = &joined.lattice.config().name;
        while let Some(((what, reason), tally)) = counted.pop_first() {
            let details = serde_json::json!({
                "reason": reason,
                "count": tally.count,
                "first_ms": tally.first_ms,
                "last_ms": tally.last_ms,
                "senders": tally.senders,
            });
            let resource = format!("lattice://{lattice}/{}", what.as_str());
            let appended = match Record::new(
                Principal::System,
                capsid_audit::action::LATTICE_REFUSED,
                &resource,
                Decision::Deny,
            )
            .and_then(|r| r.details(&details))
            {
                Ok(record) => self.audit().append(self.parts().chain, record).await,
                Err(e) => Err(e),
            };
            if let Err(e) = appended {
                tracing::warn!(error = %e, "cannot record the lattice's refusals");
                counted.insert((what, reason), tally);
                break;
            }
        }
        refusals.put_back(counted);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn refusals_are_counted_by_kind_and_reason_and_keep_a_few_senders() {
        let refusals = Refusals::default();
        for i in 0..10 {
            refusals.refused(Refused::Call, "untrusted", Some(&format!("key{}", i % 6)));
        }
        refusals.refused(Refused::Event, "untrusted", Some("key0"));
        refusals.refused(Refused::Call, "forged", None);
        let counted = refusals.snapshot();
        assert_eq!(counted.len(), 3);
        let calls = &counted[&(Refused::Call, "untrusted")];
        assert_eq!(calls.count, 10);
        assert_eq!(calls.senders.len(), LATTICE_REFUSAL_SENDERS_KEPT);
        assert_eq!(counted[&(Refused::Event, "untrusted")].count, 1);
        assert!(counted[&(Refused::Call, "forged")].senders.is_empty());
    }

    #[test]
    fn what_could_not_be_recorded_is_put_back_with_what_came_meanwhile() {
        let refusals = Refusals::default();
        refusals.refused(Refused::Call, "untrusted", Some("k1"));
        refusals.refused(Refused::Call, "replayed", None);
        let taken = refusals.take();
        assert!(refusals.snapshot().is_empty(), "taken whole");
        refusals.refused(Refused::Call, "untrusted", Some("k2"));
        refusals.put_back(taken);
        let left = refusals.snapshot();
        assert_eq!(left.len(), 2, "{left:?}");
        let untrusted = &left[&(Refused::Call, "untrusted")];
        assert_eq!(untrusted.count, 2);
        assert_eq!(untrusted.senders, ["k1", "k2"]);
        assert!(untrusted.first_ms <= untrusted.last_ms);
        assert_eq!(left[&(Refused::Call, "replayed")].count, 1);
    }

    impl Refusals {
        fn snapshot(&self) -> BTreeMap<(Refused, &'static str), Tally> {
            self.tally
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }
}
