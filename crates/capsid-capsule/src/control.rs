//! What the caller of one tool call holds while it runs: a way to cancel it, the latest
//! progress its capsule reported through `capsid:host/progress`, and the approval requests
//! it waits on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capsid_core::limits::{
    MAX_CALL_APPROVAL_WAIT, MAX_PENDING_APPROVALS, MAX_PROGRESS_MESSAGE_BYTES,
};
use capsid_core::sync::lock;
use capsid_core::{CapsuleId, ClientSessionId, Principal};
use tokio::sync::{mpsc, watch};

use crate::approval::ApprovalRequest;
use tokio_util::sync::CancellationToken;

/// How far a tool call is, as its capsule last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all, when the capsule knows.
    pub total: Option<u64>,
    /// A short message (at most `MAX_PROGRESS_MESSAGE_BYTES`).
    pub message: Option<String>,
}

/// The handle on one tool call: cancel it with [`CallControl::cancel`], watch its progress
/// with [`CallControl::watch_progress`]. Cloning shares the call.
#[derive(Debug, Clone, Default)]
pub struct CallControl {
    cancelled: CancellationToken,
    progress: Option<watch::Sender<Option<Progress>>>,
    /// Where the approval requests the call waits on are told, if anyone listens.
    approvals: Option<mpsc::Sender<ApprovalRequest>>,
    suspension: Arc<Mutex<Suspension>>,
    /// Whether the call may wait for a person (tool calls and events; not `init`,
    /// `restart` or `shutdown`, which must not hold up a load or an unload).
    may_ask: bool,
    /// Who called, when a client did.
    caller: Option<Principal>,
    /// The caller's client session, if the call came from one.
    session: Option<ClientSessionId>,
    /// For a call one capsule made to another's tool (`capsid:host/tools`): the capsules
    /// it came through, first caller first; empty for a call from outside.
    chain: Arc<[CapsuleId]>,
    /// The latest the call may end, not counting time suspended (its caller's deadline,
    /// for a call a capsule made); the callee's own deadline applies too.
    not_after: Option<Instant>,
    /// For a call a capsule made: whether its caller may wait for a person. A callee of a
    /// capsule's `init` must not wait for one any more than the `init` itself.
    caller_may_ask: Option<bool>,
}

/// Time the call's deadline was suspended for (a person deciding an approval).
#[derive(Debug, Default)]
struct Suspension {
    /// Since when, while suspended.
    since: Option<Instant>,
    /// Waits that are over, added up.
    total: Duration,
    /// Waits under way (a call may wait on several at once).
    depth: u32,
}

/// Holds a call's deadline still until dropped ([`CallControl::suspend`]).
#[derive(Debug)]
pub(crate) struct Suspended(CallControl);

impl Drop for Suspended {
    fn drop(&mut self) {
        let mut s = lock(&self.0.suspension);
        s.depth = s.depth.saturating_sub(1);
        if s.depth == 0
            && let Some(since) = s.since.take()
        {
            s.total += since.elapsed();
        }
    }
}

tokio::task_local! {
    /// The call the current task is running, for host calls that must reach it (an approval
    /// wait suspends its deadline).
    pub(crate) static CURRENT_CALL: CallControl;
}

impl CallControl {
    /// A control for a call nobody cancels or watches.
    pub fn new() -> Self {
        Self::default()
    }

    /// A control cancelled when `token` is (and by [`CallControl::cancel`], which cancels
    /// only this call).
    pub fn cancelled_by(token: &CancellationToken) -> Self {
        Self {
            cancelled: token.child_token(),
            ..Self::default()
        }
    }

    /// This call, made by `caller` from its client `session` (what an approval given for
    /// the session is bound to).
    #[must_use]
    pub fn called_by(&self, caller: Principal, session: Option<ClientSessionId>) -> Self {
        Self {
            caller: Some(caller),
            session,
            ..self.clone()
        }
    }

    /// This call, ending `within` from now at the latest (the deadline a call from another
    /// host of the lattice brought with it).
    #[must_use]
    pub fn ending_within(&self, within: Duration) -> Self {
        let at = Instant::now() + within;
        Self {
            not_after: Some(self.not_after.map_or(at, |n| n.min(at))),
            ..self.clone()
        }
    }

    /// Time left before the caller's deadline, when the call has one (what a call sent to
    /// another host carries).
    pub fn time_left(&self) -> Option<Duration> {
        self.not_after
            .map(|n| n.saturating_duration_since(Instant::now()))
    }

    /// The call `via` (running this call) makes to another capsule's tool: cancelled with
    /// this one (or alone), ending by `not_after` at the latest, for the same client and
    /// session, its approvals told to the same listener and its waits for a person
    /// suspending this call's deadline too (one suspension for the whole chain), and only
    /// where this call may wait for one. The callee's progress is its own, not passed on.
    pub(crate) fn nested(&self, via: &CapsuleId, not_after: Instant) -> Self {
        let mut chain = self.chain.to_vec();
        chain.push(via.clone());
        Self {
            cancelled: self.cancelled.child_token(),
            progress: None,
            chain: chain.into(),
            not_after: Some(self.not_after.map_or(not_after, |n| n.min(not_after))),
            caller_may_ask: Some(self.may_ask),
            ..self.clone()
        }
    }

    /// The capsules this call came through (empty for a call from outside).
    pub(crate) fn chain(&self) -> &[CapsuleId] {
        &self.chain
    }

    /// When a call that may run for `timeout` from now must end, not counting time
    /// suspended from now on: the earlier of that and the caller's deadline, and whether
    /// the caller's came first. Time this call's chain was suspended before now is taken
    /// off, as it is added back to every deadline of the chain
    /// ([`deadline_moved`](Self::deadline_moved)).
    pub(crate) fn deadline_for(&self, timeout: Duration) -> (Instant, bool) {
        let now = Instant::now();
        let (moved, _) = self.deadline_moved();
        let own = (now + timeout).checked_sub(moved).unwrap_or(now);
        match self.not_after {
            Some(cap) if cap < own => (cap, true),
            _ => (own, false),
        }
    }

    /// Who called and from which client session, when a client did.
    pub(crate) fn caller(&self) -> (Option<Principal>, Option<ClientSessionId>) {
        (self.caller, self.session)
    }

    /// Cancels the call: a guest running wasm is interrupted at the next epoch tick, one
    /// waiting in a host call is dropped after `HOST_CALL_GRACE`. The instance is dropped
    /// (its background children with it); the capsule stays ready.
    pub fn cancel(&self) {
        self.cancelled.cancel();
    }

    /// Whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// Resolves once the call is cancelled.
    pub async fn cancellation(&self) {
        self.cancelled.cancelled().await;
    }

    /// Starts collecting the capsule's progress reports: the receiver sees the latest one
    /// (reports between two reads are coalesced).
    pub fn watch_progress(&mut self) -> watch::Receiver<Option<Progress>> {
        let (tx, rx) = watch::channel(None);
        self.progress = Some(tx);
        rx
    }

    /// Starts telling the caller of each approval request the call comes to wait on (so
    /// it can ask its own person: the MCP bridge's elicitation). Requests beyond what the
    /// receiver holds unread are not told (they are listed all the same).
    pub fn watch_approvals(&mut self) -> mpsc::Receiver<ApprovalRequest> {
        let (tx, rx) = mpsc::channel(MAX_PENDING_APPROVALS);
        self.approvals = Some(tx);
        rx
    }

    /// Tells whoever watches this call's approvals of `request`, now waiting.
    pub(crate) fn announce(&self, request: &ApprovalRequest) {
        if let Some(tx) = &self.approvals {
            let _ = tx.try_send(request.clone());
        }
    }

    /// This call's control, allowed (or not) to wait for a person; never when its calling
    /// capsule may not.
    pub(crate) fn asking(&self, may_ask: bool) -> Self {
        Self {
            may_ask: may_ask && self.caller_may_ask.unwrap_or(true),
            ..self.clone()
        }
    }

    /// Suspends the call's deadline until the guard is dropped (time spent waiting for a
    /// person is not the capsule's time), if the call may wait for one and has not waited
    /// `MAX_CALL_APPROVAL_WAIT` already; `None` otherwise.
    pub(crate) fn suspend(&self) -> Option<Suspended> {
        if !self.may_ask {
            return None;
        }
        let mut s = lock(&self.suspension);
        if s.total >= MAX_CALL_APPROVAL_WAIT {
            return None;
        }
        if s.depth == 0 {
            s.since = Some(Instant::now());
        }
        s.depth += 1;
        Some(Suspended(self.clone()))
    }

    /// How far the call's deadline has moved (waits over so far), and whether it is
    /// suspended now.
    pub(crate) fn deadline_moved(&self) -> (Duration, bool) {
        let s = lock(&self.suspension);
        (s.total, s.depth > 0)
    }

    /// Passes on a report, if anyone watches.
    pub(crate) fn report(&self, done: u64, total: Option<u64>, message: Option<String>) {
        let Some(tx) = &self.progress else {
            return;
        };
        let message = message.map(|mut m| {
            let mut end = m.len().min(MAX_PROGRESS_MESSAGE_BYTES);
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
            m
        });
        tx.send_replace(Some(Progress {
            done,
            total,
            message,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_coalesce_and_long_messages_are_cut_on_a_char_boundary() {
        let mut control = CallControl::new();
        // Nobody watching: nowhere to go, and no error.
        control.report(1, None, None);
        let rx = control.watch_progress();
        control.report(1, Some(10), None);
        control.report(2, Some(10), Some("é".repeat(MAX_PROGRESS_MESSAGE_BYTES)));
        let latest = rx.borrow().clone().unwrap_or_else(|| panic!("no report"));
        assert_eq!(latest.done, 2);
        let message = latest.message.unwrap_or_default();
        assert!(message.len() <= MAX_PROGRESS_MESSAGE_BYTES);
        assert!(message.len() > MAX_PROGRESS_MESSAGE_BYTES - 2);
    }

    #[test]
    fn a_suspended_deadline_moves_by_the_time_waited_once_all_waits_end() {
        assert!(
            CallControl::new().suspend().is_none(),
            "not a call that may ask"
        );
        let control = CallControl::new().asking(true);
        let first = control.suspend();
        let second = control.clone().suspend();
        assert!(first.is_some() && second.is_some());
        std::thread::sleep(Duration::from_millis(20));
        drop(first);
        assert_eq!(control.deadline_moved(), (Duration::ZERO, true));
        drop(second);
        let (moved, suspended) = control.deadline_moved();
        assert!(
            !suspended && moved >= Duration::from_millis(20),
            "{moved:?}"
        );
    }

    #[test]
    fn a_nested_call_carries_the_chain_the_earlier_deadline_and_the_callers_asking() {
        let a = CapsuleId::new("a").unwrap_or_else(|e| panic!("{e}"));
        let b = CapsuleId::new("b").unwrap_or_else(|e| panic!("{e}"));
        let soon = Instant::now() + Duration::from_secs(1);
        let later = soon + Duration::from_mins(1);
        let tool_call = CallControl::new().asking(true);
        let first = tool_call.nested(&a, soon);
        let second = first.asking(true).nested(&b, later);
        assert_eq!(second.chain(), [a.clone(), b]);
        // The callee's own long timeout is capped by the chain's earliest deadline.
        assert_eq!(second.deadline_for(Duration::from_hours(1)), (soon, true));
        assert!(!second.deadline_for(Duration::ZERO).1);
        // A callee of a tool call may wait for a person; a callee of `init` may not.
        assert!(first.asking(true).suspend().is_some());
        let init = CallControl::new().asking(false);
        assert!(init.nested(&a, soon).asking(true).suspend().is_none());
        // Cancelling the caller cancels the callee, not the other way round.
        let callee = tool_call.nested(&a, soon);
        callee.cancel();
        assert!(!tool_call.is_cancelled());
        tool_call.cancel();
        assert!(first.is_cancelled());
    }

    #[test]
    fn a_parent_token_cancels_the_call_and_a_call_does_not_cancel_its_parent() {
        let parent = CancellationToken::new();
        let one = CallControl::cancelled_by(&parent);
        let two = CallControl::cancelled_by(&parent);
        one.cancel();
        assert!(one.is_cancelled());
        assert!(!two.is_cancelled() && !parent.is_cancelled());
        parent.cancel();
        assert!(two.is_cancelled());
    }
}
