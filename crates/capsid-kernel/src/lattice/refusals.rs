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
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Event => "event",
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

    fn snapshot(&self) -> BTreeMap<(Refused, &'static str), Tally> {
        self.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets what `written` recorded, keeping what was counted meanwhile.
    fn recorded(&self, written: &BTreeMap<(Refused, &'static str), Tally>) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, done) in written {
            let Some(now) = tally.get_mut(key) else {
                continue;
            };
            now.count = now.count.saturating_sub(done.count);
            if now.count == 0 {
                tally.remove(key);
            } else {
                now.first_ms = done.last_ms;
                now.senders.retain(|s| !done.senders.contains(s));
            }
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
        let counted = refusals.snapshot();
        let lattice = &joined.lattice.config().name;
        let mut written = BTreeMap::new();
        for ((what, reason), tally) in counted {
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
                break;
            }
            written.insert((what, reason), tally);
        }
        refusals.recorded(&written);
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
    fn what_was_counted_while_writing_stays_to_be_recorded() {
        let refusals = Refusals::default();
        refusals.refused(Refused::Call, "stale", None);
        refusals.refused(Refused::Call, "replayed", None);
        let written = refusals.snapshot();
        refusals.refused(Refused::Call, "stale", None);
        refusals.recorded(&written);
        let left = refusals.snapshot();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[&(Refused::Call, "stale")].count, 1);
        refusals.recorded(&left);
        assert!(refusals.snapshot().is_empty());
    }
}
