//! Calls from other hosts served here: those running (the host that sent each, the only one
//! that may cancel it, and what cancels it), those their caller cancelled before they
//! arrived (so a copy still on its way is not run), the task hearing cancels, and the tasks
//! serving calls, which shutdown waits for so that each call is answered and its result
//! recorded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use capsid_core::limits::{
    LATTICE_EARLY_CANCELS_KEPT, LATTICE_ENVELOPE_SKEW, SHUTDOWN_CANCEL_GRACE,
};
use capsid_lattice::calls::Cancels;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Refused, Traffic};

/// Calls from other hosts, served here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Served {
    calls: Arc<Mutex<Calls>>,
    tasks: TaskTracker,
    /// The task hearing cancels: stopped by [`Served::finish`], or with the last handle.
    listener: Arc<Mutex<Option<Listener>>>,
}

#[derive(Debug, Default)]
struct Calls {
    /// By nonce: the calling host and what cancels the call.
    running: HashMap<String, (String, CancellationToken)>,
    /// By calling host, then nonce: when the cancel is forgotten (by then any copy of the
    /// call is stale, and refused as such). Each host's cancels are bounded on their own, so
    /// no host can push out another's.
    cancelled_early: HashMap<String, HashMap<String, Instant>>,
}

/// Stops the task hearing cancels when dropped.
#[derive(Debug)]
struct Listener(AbortHandle);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Calls {
    /// Host `from` cancels its call `nonce`: stopped if it runs here, remembered if it has
    /// not arrived. A cancel naming another host's call changes nothing.
    fn cancel(&mut self, nonce: String, from: String) {
        if let Some((caller, token)) = self.running.get(&nonce) {
            if *caller == from {
                token.cancel();
            }
            return;
        }
        let now = Instant::now();
        let early = self.cancelled_early.entry(from).or_default();
        early.retain(|_, forget| *forget > now);
        if early.len() >= LATTICE_EARLY_CANCELS_KEPT
            && let Some(oldest) = early
                .iter()
                .min_by_key(|(_, forget)| **forget)
                .map(|(nonce, _)| nonce.clone())
        {
            early.remove(&oldest);
        }
        early.insert(nonce, now + 2 * LATTICE_ENVELOPE_SKEW);
    }
}

impl Served {
    /// Takes call `nonce` from host `caller` as running here, cancelled by the token
    /// returned; `None` when that caller cancelled it before it arrived.
    pub(crate) fn start(&self, nonce: &str, caller: &str) -> Option<CancellationToken> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(early) = calls.cancelled_early.get_mut(caller)
            && early.remove(nonce).is_some()
        {
            return None;
        }
        let token = CancellationToken::new();
        calls
            .running
            .insert(nonce.to_owned(), (caller.to_owned(), token.clone()));
        Some(token)
    }

    /// Call `nonce` no longer runs here.
    pub(crate) fn end(&self, nonce: &str) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.running.remove(nonce);
    }

    /// Host `from` cancels its call `nonce` (see [`Calls::cancel`]); what [`Served::hear`]
    /// does with each cancel heard.
    #[cfg(test)]
    fn cancel(&self, nonce: String, from: String) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.cancel(nonce, from);
    }

    /// Hears the cancels other hosts send, until [`Served::finish`] (cancels that do not
    /// open are refused, and audited as such).
    pub(crate) fn hear(&self, mut cancels: Cancels, traffic: Arc<Traffic>) {
        // Weak: the listener must not keep alive what stops it.
        let calls = Arc::downgrade(&self.calls);
        let task = tokio::spawn(async move {
            while let Some(next) = cancels.next().await {
                match next {
                    Ok((nonce, from)) => {
                        let Some(calls) = calls.upgrade() else { return };
                        let mut calls = calls.lock().unwrap_or_else(PoisonError::into_inner);
                        calls.cancel(nonce, from);
                    }
                    Err(refusal) => {
                        tracing::warn!(%refusal, "refused a cancel from the lattice");
                        let sender = refusal.claimed_sender();
                        traffic.refused(Refused::Cancel, refusal.reason(), sender);
                    }
                }
            }
        });
        *self.listener.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Listener(task.abort_handle()));
    }

    /// Serves a call in a task shutdown waits for.
    pub(crate) fn spawn(&self, call: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(call);
    }

    /// At shutdown, once no call is taken any more: waits until `deadline` for the calls
    /// served here to answer (their callers may still cancel them), then cancels those
    /// still running and waits a moment more; then stops hearing cancels.
    pub(crate) async fn finish(&self, deadline: Instant) {
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            for (_, token) in self
                .calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .running
                .values()
            {
                token.cancel();
            }
            if tokio::time::timeout(SHUTDOWN_CANCEL_GRACE, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "calls served for other hosts still running at shutdown: {}",
                    self.tasks.len()
                );
            }
        }
        self.listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cancelled_by_its_caller_stops_and_one_cancelled_before_it_came_never_starts() {
        let served = Served::default();
        let Some(token) = served.start("n1", "host-a") else {
            panic!("a call nobody cancelled starts");
        };
        served.cancel("n1".into(), "host-b".into());
        assert!(
            !token.is_cancelled(),
            "only the call's own caller cancels it"
        );
        served.cancel("n1".into(), "host-a".into());
        assert!(token.is_cancelled());
        served.end("n1");

        served.cancel("n2".into(), "host-a".into());
        assert!(
            served.start("n2", "host-b").is_some(),
            "another host's cancel does not stop it"
        );
        served.end("n2");
        served.cancel("n3".into(), "host-a".into());
        assert!(served.start("n3", "host-a").is_none());
        assert!(
            served.start("n3", "host-a").is_some(),
            "an early cancel is used once"
        );
        // Another host naming the same call after its caller does not undo the cancel.
        served.cancel("n4".into(), "host-a".into());
        served.cancel("n4".into(), "host-b".into());
        assert!(served.start("n4", "host-a").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn early_cancels_are_bounded_and_forgotten_once_any_copy_would_be_stale() {
        let served = Served::default();
        served.cancel("b0".into(), "host-b".into());
        for i in 0..=LATTICE_EARLY_CANCELS_KEPT {
            served.cancel(format!("n{i}"), "host-a".into());
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
        }
        let kept = |host: &str| {
            let calls = served.calls.lock().unwrap_or_else(PoisonError::into_inner);
            calls.cancelled_early.get(host).map_or(0, HashMap::len)
        };
        assert_eq!(kept("host-a"), LATTICE_EARLY_CANCELS_KEPT);
        assert_eq!(
            kept("host-b"),
            1,
            "one host's flood leaves another's cancels"
        );
        assert!(
            served.start("n0", "host-a").is_some(),
            "the oldest went first"
        );
        served.end("n0");
        let later = 2 * LATTICE_ENVELOPE_SKEW + std::time::Duration::from_secs(1);
        tokio::time::advance(later).await;
        served.cancel("late".into(), "host-a".into());
        assert_eq!(kept("host-a"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_what_still_runs_at_the_deadline_and_waits_for_its_answer() {
        let served = Served::default();
        let Some(token) = served.start("n1", "host-a") else {
            panic!("a call nobody cancelled starts");
        };
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, running) = (answered.clone(), served.clone());
        served.spawn(async move {
            token.cancelled().await;
            running.end("n1");
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        served
            .finish(Instant::now() + std::time::Duration::from_secs(5))
            .await;
        assert!(answered.load(std::sync::atomic::Ordering::SeqCst));
    }
}
