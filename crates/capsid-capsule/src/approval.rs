//! Approvals: a capsule may ask, a person decides.
//!
//! A check that fails on a resource the capsule's manifest lists under `ask` does not deny:
//! the call waits (its deadline suspended) while an [`ApprovalRequest`] is pending here,
//! until someone [`decide`](Approvals::decide)s it or `approval_timeout_ms` passes (a
//! denial). Decisions: `once` allows this one call; `always` grants the resource to the
//! capsule as a stored, revocable capability; `deny` refuses. Exactly one decision wins per
//! request. The kernel records who decided before it decides; this module keeps only what
//! is pending.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use capsid_capabilities::Permissions;
use capsid_core::limits::MAX_PENDING_APPROVALS;
use capsid_core::sync::lock;
use capsid_core::{CapsuleId, Principal};
use tokio::sync::oneshot;

/// One call waiting for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// Its id (a UUID v7).
    pub id: String,
    /// On whose authority the call runs.
    pub principal: Principal,
    /// The capsule asking.
    pub capsule: CapsuleId,
    /// The resource it needs (`fs://workspace/notes/a.md`).
    pub resource: String,
    /// What it needs to do to it.
    pub permission: Permissions,
    /// A short description of the call: the host function and what it acts on.
    pub description: String,
    /// blake3 (hex) of the call as described: host function, permission, resource.
    pub digest: String,
    /// When it was made (unix ms).
    pub requested_ms: i64,
    /// When it is denied if nobody decides (unix ms).
    pub expires_ms: i64,
}

/// A person's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allow this one call.
    Once,
    /// Allow it, and grant the resource to the capsule from now on.
    Always,
    /// Refuse it.
    Deny,
}

impl Verdict {
    /// Its name in records and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::Always => "always",
            Self::Deny => "deny",
        }
    }
}

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No such request is pending: never made, decided already, timed out, or withdrawn.
    #[error("no approval request {0} is pending (decided, expired or never made)")]
    NotPending(String),
}

/// How waiting for a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Someone decided.
    Decided(Verdict),
    /// Nobody decided in time.
    TimedOut,
    /// The request went away undecided (its capsule was unloaded).
    Withdrawn,
}

struct Pending {
    request: ApprovalRequest,
    answer: oneshot::Sender<Verdict>,
}

/// The approval requests pending on one runtime.
#[derive(Default)]
pub struct Approvals {
    pending: Mutex<BTreeMap<String, Pending>>,
    /// Principals whose last request was refused for being one too many: a burst is
    /// recorded once.
    refusing: Mutex<std::collections::HashSet<Principal>>,
    timeout: Mutex<Duration>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("pending", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

/// A request taken out of the pending ones to be decided ([`Approvals::claim`]).
#[derive(Debug)]
pub struct Claimed {
    /// The request.
    pub request: ApprovalRequest,
    answer: oneshot::Sender<Verdict>,
}

impl Claimed {
    /// Tells the waiting call. It may have timed out just now: then it hears nothing and
    /// stays denied.
    pub fn answer(self, verdict: Verdict) {
        let _ = self.answer.send(verdict);
    }
}

/// A request registered and waiting.
pub(crate) struct Waiting {
    pub(crate) request: ApprovalRequest,
    answer: oneshot::Receiver<Verdict>,
}

/// Why a request could not be made.
pub(crate) enum Refused {
    /// The principal has `MAX_PENDING_APPROVALS` waiting; `first` when this begins a burst
    /// (the one to record).
    TooMany { first: bool },
}

impl Approvals {
    /// No request pending; undecided requests are denied after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout: Mutex::new(timeout),
            ..Self::default()
        }
    }

    /// How long a request waits for a decision.
    pub fn timeout(&self) -> Duration {
        *lock(&self.timeout)
    }

    /// Sets how long requests made from now on wait for a decision.
    pub fn set_timeout(&self, timeout: Duration) {
        *lock(&self.timeout) = timeout;
    }

    /// Every pending request, oldest first.
    pub fn list(&self) -> Vec<ApprovalRequest> {
        let mut all: Vec<ApprovalRequest> = lock(&self.pending)
            .values()
            .map(|p| p.request.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Pending request `id`.
    pub fn get(&self, id: &str) -> Option<ApprovalRequest> {
        lock(&self.pending).get(id).map(|p| p.request.clone())
    }

    /// Decides request `id`: the waiting call goes on with `verdict`. Of concurrent
    /// decisions on one request exactly one is taken; the others find it gone.
    pub fn decide(&self, id: &str, verdict: Verdict) -> Result<ApprovalRequest, ApprovalError> {
        let claimed = self.claim(id)?;
        let request = claimed.request.clone();
        claimed.answer(verdict);
        Ok(request)
    }

    /// Takes request `id` out of the pending ones to decide it, so that nobody else can:
    /// record the decision, then [`Claimed::answer`]. Dropped unanswered, the call is
    /// denied.
    pub fn claim(&self, id: &str) -> Result<Claimed, ApprovalError> {
        let pending = lock(&self.pending)
            .remove(id)
            .ok_or_else(|| ApprovalError::NotPending(id.to_owned()))?;
        Ok(Claimed {
            request: pending.request,
            answer: pending.answer,
        })
    }

    /// Registers `request` (its id, times and digest filled in by the caller).
    pub(crate) fn open(&self, request: ApprovalRequest) -> Result<Waiting, Refused> {
        let mut pending = lock(&self.pending);
        let mine = pending
            .values()
            .filter(|p| p.request.principal == request.principal)
            .count();
        if mine >= MAX_PENDING_APPROVALS {
            let first = lock(&self.refusing).insert(request.principal);
            return Err(Refused::TooMany { first });
        }
        lock(&self.refusing).remove(&request.principal);
        let (tx, rx) = oneshot::channel();
        pending.insert(
            request.id.clone(),
            Pending {
                request: request.clone(),
                answer: tx,
            },
        );
        Ok(Waiting {
            request,
            answer: rx,
        })
    }

    /// Waits for `waiting`'s decision, at most the timeout.
    pub(crate) async fn wait(&self, waiting: Waiting) -> Outcome {
        let Waiting { request, answer } = waiting;
        let outcome = match tokio::time::timeout(self.timeout(), answer).await {
            Ok(Ok(verdict)) => Outcome::Decided(verdict),
            Ok(Err(_)) => Outcome::Withdrawn,
            Err(_) => Outcome::TimedOut,
        };
        // Still there when it timed out; a decision racing the timeout finds it gone.
        lock(&self.pending).remove(&request.id);
        outcome
    }

    /// Withdraws every request of `capsule` (it is being unloaded): their calls are denied.
    pub(crate) fn withdraw_capsule(&self, capsule: &CapsuleId) {
        lock(&self.pending).retain(|_, p| p.request.capsule != *capsule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, principal: Principal) -> ApprovalRequest {
        ApprovalRequest {
            id: id.to_owned(),
            principal,
            capsule: CapsuleId::new("asker").unwrap_or_else(|e| panic!("{e}")),
            resource: "fs://workspace/a".into(),
            permission: Permissions::WRITE,
            description: "fs.write on fs://workspace/a".into(),
            digest: String::new(),
            requested_ms: 0,
            expires_ms: 0,
        }
    }

    #[tokio::test]
    async fn one_decision_wins_and_the_waiter_hears_it() {
        let approvals = std::sync::Arc::new(Approvals::new(Duration::from_secs(5)));
        let Ok(waiting) = approvals.open(request("r1", Principal::System)) else {
            panic!("refused");
        };
        let deciders: Vec<_> = [Verdict::Once, Verdict::Deny, Verdict::Always]
            .into_iter()
            .map(|v| {
                let a = approvals.clone();
                std::thread::spawn(move || a.decide("r1", v).is_ok())
            })
            .collect();
        let won = deciders
            .into_iter()
            .filter_map(|d| d.join().ok())
            .filter(|won| *won)
            .count();
        assert_eq!(won, 1);
        assert!(matches!(approvals.wait(waiting).await, Outcome::Decided(_)));
        assert!(approvals.list().is_empty());
    }

    #[tokio::test]
    async fn undecided_requests_time_out_and_withdrawn_ones_end() {
        let approvals = Approvals::new(Duration::from_millis(20));
        let Ok(waiting) = approvals.open(request("r1", Principal::System)) else {
            panic!("refused");
        };
        assert_eq!(approvals.wait(waiting).await, Outcome::TimedOut);
        assert!(approvals.decide("r1", Verdict::Once).is_err());
        let Ok(waiting) = approvals.open(request("r2", Principal::System)) else {
            panic!("refused");
        };
        approvals.withdraw_capsule(&waiting.request.capsule);
        assert_eq!(approvals.wait(waiting).await, Outcome::Withdrawn);
    }

    #[test]
    fn a_principal_may_have_only_so_many_waiting_and_a_burst_is_reported_once() {
        let approvals = Approvals::new(Duration::from_secs(5));
        let mut held = Vec::new();
        for i in 0..MAX_PENDING_APPROVALS {
            match approvals.open(request(&format!("r{i}"), Principal::System)) {
                Ok(w) => held.push(w),
                Err(Refused::TooMany { .. }) => panic!("refused early"),
            }
        }
        let firsts: Vec<bool> = (0..3)
            .map(
                |_| match approvals.open(request("over", Principal::System)) {
                    Err(Refused::TooMany { first }) => first,
                    Ok(_) => panic!("one too many was accepted"),
                },
            )
            .collect();
        assert_eq!(firsts, [true, false, false]);
    }
}
