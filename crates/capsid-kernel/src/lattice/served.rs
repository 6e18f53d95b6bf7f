//! Calls from other hosts served here: those running (the host that sent each, the only one
//! that may cancel it, and what cancels it), those their caller cancelled before they
//! arrived (so a copy still on its way is not run), and the tasks serving them, which
//! shutdown waits for so that each call is answered and its result recorded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use capsid_core::limits::{
    LATTICE_EARLY_CANCELS_KEPT, LATTICE_ENVELOPE_SKEW, SHUTDOWN_CANCEL_GRACE,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Calls from other hosts, served here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Served {
    calls: Arc<Mutex<Calls>>,
    tasks: TaskTracker,
}

#[derive(Debug, Default)]
struct Calls {
    /// By nonce: the calling host and what cancels the call.
    running: HashMap<String, (String, CancellationToken)>,
    /// By nonce: the calling host, and when the cancel is forgotten (by then any copy of the
    /// call is stale, and refused as such).
    cancelled_early: HashMap<String, (String, Instant)>,
}

impl Served {
    /// Takes call `nonce` from host `caller` as running here, cancelled by the token
    /// returned; `None` when that caller cancelled it before it arrived.
    pub(crate) fn start(&self, nonce: &str, caller: &str) -> Option<CancellationToken> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if calls
            .cancelled_early
            .get(nonce)
            .is_some_and(|(by, _)| by == caller)
        {
            calls.cancelled_early.remove(nonce);
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

    /// Host `from` cancels its call `nonce`: stopped if it runs here, remembered if it has
    /// not arrived. A cancel naming another host's call changes nothing.
    pub(crate) fn cancel(&self, nonce: String, from: String) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((caller, token)) = calls.running.get(&nonce) {
            if *caller == from {
                token.cancel();
            }
            return;
        }
        let now = Instant::now();
        let early = &mut calls.cancelled_early;
        early.retain(|_, (_, forget)| *forget > now);
        if early.len() >= LATTICE_EARLY_CANCELS_KEPT
            && let Some(oldest) = early
                .iter()
                .min_by_key(|(_, (_, forget))| *forget)
                .map(|(nonce, _)| nonce.clone())
        {
            early.remove(&oldest);
        }
        early.insert(nonce, (from, now + 2 * LATTICE_ENVELOPE_SKEW));
    }

    /// Serves a call in a task shutdown waits for.
    pub(crate) fn spawn(&self, call: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(call);
    }

    /// At shutdown, once no call is taken any more: waits until `deadline` for the calls
    /// served here to answer, then cancels those still running and waits a moment more.
    pub(crate) async fn finish(&self, deadline: Instant) {
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return;
        }
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
    }

    #[tokio::test(start_paused = true)]
    async fn early_cancels_are_bounded_and_forgotten_once_any_copy_would_be_stale() {
        let served = Served::default();
        for i in 0..=LATTICE_EARLY_CANCELS_KEPT {
            served.cancel(format!("n{i}"), "host-a".into());
        }
        let kept = || {
            served
                .calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .cancelled_early
                .len()
        };
        assert_eq!(kept(), LATTICE_EARLY_CANCELS_KEPT);
        tokio::time::advance(2 * LATTICE_ENVELOPE_SKEW + std::time::Duration::from_secs(1)).await;
        served.cancel("late".into(), "host-a".into());
        assert_eq!(kept(), 1);
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
