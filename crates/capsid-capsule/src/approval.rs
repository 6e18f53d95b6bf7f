//! Approvals: a capsule may ask, a person decides.
//!
//! A check that fails on a resource the capsule's manifest lists under `ask` does not deny:
//! the call waits (its deadline suspended) while an [`ApprovalRequest`] is pending here,
//! until someone [`decide`](Approvals::decide)s it or `approval_timeout_ms` passes (a
//! denial). Decisions: `once` allows this one call; `session` grants the resource to the
//! capsule for as long as the caller's client session lasts; `always` grants it as a
//! stored, revocable capability; `deny` refuses. Exactly one decision wins per
//! request. The kernel records who decided before it decides; this module keeps only what
//! is pending.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use capsid_capabilities::Permissions;
use capsid_core::limits::{MAX_PENDING_APPROVALS, MAX_PENDING_APPROVALS_PER_CALLER};
use capsid_core::sync::lock;
use capsid_core::{CapsuleId, ClientSessionId, Principal};
use capsid_storage::{KvError, RefusalStore, StandingRefusal};
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
    /// Who called the tool that asks, when a client did.
    pub caller: Option<Principal>,
    /// The client session the call came from, if it came from one (not an event, not the
    /// embedding program): what a `session` decision is bound to.
    pub session: Option<ClientSessionId>,
}

/// A person's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allow this one call.
    Once,
    /// Allow it, and grant the resource to the capsule until the caller's client session
    /// ends.
    Session,
    /// Allow it, and grant the resource to the capsule from now on.
    Always,
    /// Refuse it.
    Deny,
    /// Refuse it, and the capsule's later requests for the same resource and permission
    /// without asking (a standing refusal, until the operator removes it).
    DenyAlways,
}

impl Verdict {
    /// Its name in records and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::Session => "session",
            Self::Always => "always",
            Self::Deny => "deny",
            Self::DenyAlways => "deny-always",
        }
    }
}

/// Why a decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No such request is pending: never made, decided already, timed out, or withdrawn.
    #[error("no approval request {0} is pending (decided, expired or never made)")]
    NotPending(String),
    /// A user other than the operator decided what would outlast its own calls.
    #[error(
        "only the operator may decide {verdict} on approval request {id}: it outlasts the caller's own calls"
    )]
    OperatorOnly {
        /// The request.
        id: String,
        /// The decision refused.
        verdict: &'static str,
    },
    /// `session` was decided for a request that came from no client session.
    #[error(
        "approval request {0} came from no client session (an event or the embedding program): decide once or always"
    )]
    NoSession(String),
    /// No such standing refusal.
    #[error("no standing refusal {0} (see `capsid approve refusals`)")]
    NoSuchRefusal(String),
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
    /// Listed and decidable only once its request is recorded ([`Waiting::reveal`]).
    visible: bool,
}

/// The approval requests pending on one runtime, and the standing refusals.
pub struct Approvals {
    pending: Mutex<BTreeMap<String, Pending>>,
    /// Principals whose last request was refused for being one too many: a burst is
    /// recorded once.
    refusing: Mutex<std::collections::HashSet<Principal>>,
    /// Capsules being unloaded or failed: they may not ask until loaded again.
    closed: Mutex<std::collections::HashSet<CapsuleId>>,
    timeout: Mutex<Duration>,
    /// Where standing refusals are kept.
    refusal_store: RefusalStore,
    /// The standing refusals, read on first use.
    refusals: tokio::sync::RwLock<Option<Vec<StandingRefusal>>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("pending", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

/// Whether standing `refusal` covers `request`: same principal, capsule and resource, and a
/// permission in common (asking for `read,exec` where `exec` was refused is refused too).
fn covers(refusal: &StandingRefusal, request: &ApprovalRequest) -> bool {
    // A permission that no longer parses refuses everything (fails closed).
    let every = Permissions::READ
        .union(Permissions::WRITE)
        .union(Permissions::EXEC)
        .union(Permissions::PUBLISH)
        .union(Permissions::SUBSCRIBE);
    let refused = refusal.permission.parse::<Permissions>().unwrap_or(every);
    refusal.principal == request.principal.to_string()
        && refusal.capsule == request.capsule.as_str()
        && refusal.resource == request.resource
        && refused.bits() & request.permission.bits() != 0
}

/// A request taken out of the pending ones to be decided ([`Approvals::claim`]).
#[derive(Debug)]
pub struct Claimed {
    /// The request.
    pub request: ApprovalRequest,
    answer: oneshot::Sender<Verdict>,
}

impl Claimed {
    /// Tells the waiting call; false when it is gone (its call ended meanwhile, after
    /// `CLAIM_GRACE` if it timed out): then the decision changed nothing.
    pub fn answer(self, verdict: Verdict) -> bool {
        self.answer.send(verdict).is_ok()
    }
}

/// How long a call whose wait timed out still listens, when its request was claimed just
/// before: a decision being recorded then still reaches it.
const CLAIM_GRACE: Duration = Duration::from_secs(5);

/// A request registered and waiting; dropped (its call went away), it is withdrawn.
pub(crate) struct Waiting {
    pub(crate) request: ApprovalRequest,
    answer: oneshot::Receiver<Verdict>,
    approvals: std::sync::Arc<Approvals>,
}

impl Waiting {
    /// Makes the request listed and decidable: call once it is recorded.
    pub(crate) fn reveal(&self) {
        if let Some(p) = lock(&self.approvals.pending).get_mut(&self.request.id) {
            p.visible = true;
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.approvals.pending).remove(&self.request.id);
    }
}

/// Why a request could not be made.
pub(crate) enum Refused {
    /// The principal has `MAX_PENDING_APPROVALS` waiting; `first` when this begins a burst
    /// (the one to record).
    TooMany { first: bool },
    /// The capsule is being unloaded, or failed.
    Closed,
}

impl Approvals {
    /// No request pending; undecided requests are denied after `timeout`; standing
    /// refusals (`deny-always`) kept in `refusals`.
    pub fn new(timeout: Duration, refusals: RefusalStore) -> Self {
        Self {
            pending: Mutex::default(),
            refusing: Mutex::default(),
            closed: Mutex::default(),
            timeout: Mutex::new(timeout),
            refusal_store: refusals,
            refusals: tokio::sync::RwLock::default(),
        }
    }

    /// The standing refusals.
    pub async fn refusals(&self) -> Result<Vec<StandingRefusal>, KvError> {
        if let Some(cached) = self.refusals.read().await.as_ref() {
            return Ok(cached.clone());
        }
        let mut cache = self.refusals.write().await;
        let all = self.refusal_store.list().await?;
        *cache = Some(all.clone());
        Ok(all)
    }

    /// Keeps `refusal` (the kernel stores it when a person decides `deny-always`).
    pub async fn refuse_always(&self, refusal: StandingRefusal) -> Result<(), KvError> {
        let mut cache = self.refusals.write().await;
        self.refusal_store.add(&refusal).await?;
        *cache = None;
        Ok(())
    }

    /// Whether standing refusal `id` exists (read from the store, whatever else is there).
    pub async fn has_refusal(&self, id: &str) -> Result<bool, KvError> {
        self.refusal_store.exists(id).await
    }

    /// Removes standing refusal `id`; false when there is none.
    pub async fn forget_refusal(&self, id: &str) -> Result<bool, KvError> {
        let mut cache = self.refusals.write().await;
        let removed = self.refusal_store.remove(id).await?;
        *cache = None;
        Ok(removed)
    }

    /// The standing refusal covering `request`'s principal, capsule, resource and
    /// permission, if any. An unreadable store refuses everything (fails closed).
    pub(crate) async fn refused(&self, request: &ApprovalRequest) -> Option<String> {
        let Ok(all) = self.refusals().await else {
            return Some("the standing refusals could not be read".into());
        };
        all.into_iter().find(|r| covers(r, request)).map(|r| r.id)
    }

    /// Denies every pending request `refusal` covers (a `deny-always` just made): nobody
    /// is asked again about them.
    pub fn deny_covered(&self, refusal: &StandingRefusal) {
        let ids: Vec<String> = lock(&self.pending)
            .values()
            .filter(|p| p.visible && covers(refusal, &p.request))
            .map(|p| p.request.id.clone())
            .collect();
        for id in ids {
            if let Ok(claimed) = self.claim(&id) {
                claimed.answer(Verdict::Deny);
            }
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
            .filter(|p| p.visible)
            .map(|p| p.request.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Pending request `id`.
    pub fn get(&self, id: &str) -> Option<ApprovalRequest> {
        lock(&self.pending)
            .get(id)
            .filter(|p| p.visible)
            .map(|p| p.request.clone())
    }

    /// Decides request `id`, unrecorded: the waiting call goes on with `verdict`. Of
    /// concurrent decisions on one request exactly one is taken; the others find it gone.
    /// For embedders and tests; the kernel's `decide_approval` records who decided.
    pub fn decide(&self, id: &str, verdict: Verdict) -> Result<ApprovalRequest, ApprovalError> {
        let claimed = self.claim_for(id, verdict, None)?;
        let request = claimed.request.clone();
        if claimed.answer(verdict) {
            Ok(request)
        } else {
            Err(ApprovalError::NotPending(id.to_owned()))
        }
    }

    /// Takes request `id` out of the pending ones to decide it, so that nobody else can:
    /// record the decision, then [`Claimed::answer`]. Dropped unanswered, the call is
    /// denied.
    pub fn claim(&self, id: &str) -> Result<Claimed, ApprovalError> {
        self.claim_for(id, Verdict::Deny, None)
    }

    /// [`claim`](Self::claim)s request `id` to decide `verdict`, for `caller` only when
    /// given: a user may decide only what its own calls asked (anything else is not pending
    /// for it), and only for those calls (`once`, `session`, `deny`; `always` and
    /// `deny-always` bind the capsule for everyone and are the operator's). A `session`
    /// decision on a request from no session is refused; a refused claim leaves the request
    /// pending.
    pub fn claim_for(
        &self,
        id: &str,
        verdict: Verdict,
        caller: Option<Principal>,
    ) -> Result<Claimed, ApprovalError> {
        let mut all = lock(&self.pending);
        let Some(pending) = all
            .get(id)
            .filter(|p| p.visible && caller.is_none_or(|c| p.request.caller == Some(c)))
        else {
            return Err(ApprovalError::NotPending(id.to_owned()));
        };
        if caller.is_some() && matches!(verdict, Verdict::Always | Verdict::DenyAlways) {
            return Err(ApprovalError::OperatorOnly {
                id: id.to_owned(),
                verdict: verdict.as_str(),
            });
        }
        if verdict == Verdict::Session && pending.request.session.is_none() {
            return Err(ApprovalError::NoSession(id.to_owned()));
        }
        let pending = all
            .remove(id)
            .ok_or_else(|| ApprovalError::NotPending(id.to_owned()))?;
        Ok(Claimed {
            request: pending.request,
            answer: pending.answer,
        })
    }

    /// Registers `request` (its id, times and digest filled in by the caller), not yet
    /// listed: [`Waiting::reveal`] it once it is recorded.
    pub(crate) fn open(
        self: &std::sync::Arc<Self>,
        request: ApprovalRequest,
    ) -> Result<Waiting, Refused> {
        if lock(&self.closed).contains(&request.capsule) {
            return Err(Refused::Closed);
        }
        let mut pending = lock(&self.pending);
        let mine = pending
            .values()
            .filter(|p| p.request.principal == request.principal)
            .count();
        // One caller may fill only part of the principal's share: others can still ask.
        let callers = request.caller.map_or(0, |c| {
            pending
                .values()
                .filter(|p| p.request.caller == Some(c))
                .count()
        });
        if mine >= MAX_PENDING_APPROVALS || callers >= MAX_PENDING_APPROVALS_PER_CALLER {
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
                visible: false,
            },
        );
        Ok(Waiting {
            request,
            answer: rx,
            approvals: self.clone(),
        })
    }

    /// Waits for `waiting`'s decision, at most `timeout`.
    pub(crate) async fn wait(&self, mut waiting: Waiting, timeout: Duration) -> Outcome {
        let id = waiting.request.id.clone();
        let answer = &mut waiting.answer;
        match tokio::time::timeout(timeout, &mut *answer).await {
            Ok(Ok(verdict)) => Outcome::Decided(verdict),
            Ok(Err(_)) => Outcome::Withdrawn,
            Err(_) => {
                // Still pending: it ends here. Claimed just now: its decision is being
                // recorded, and still counts if it comes within the grace.
                if lock(&self.pending).remove(&id).is_some() {
                    return Outcome::TimedOut;
                }
                match tokio::time::timeout(CLAIM_GRACE, answer).await {
                    Ok(Ok(verdict)) => Outcome::Decided(verdict),
                    _ => Outcome::TimedOut,
                }
            }
        }
    }

    /// Withdraws every request of `capsule` and refuses new ones until [`reopen`]: it is
    /// being unloaded, or failed. Their calls are denied.
    ///
    /// [`reopen`]: Approvals::reopen
    pub(crate) fn withdraw_capsule(&self, capsule: &CapsuleId) {
        lock(&self.closed).insert(capsule.clone());
        lock(&self.pending).retain(|_, p| p.request.capsule != *capsule);
    }

    /// Lets `capsule` ask again (it was loaded).
    pub(crate) fn reopen(&self, capsule: &CapsuleId) {
        lock(&self.closed).remove(capsule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RefusalStore {
        RefusalStore::new(std::sync::Arc::new(capsid_storage::MemoryKvStore::new()))
    }

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
            caller: None,
            session: None,
        }
    }

    #[tokio::test]
    async fn one_decision_wins_and_the_waiter_hears_it() {
        let approvals = std::sync::Arc::new(Approvals::new(Duration::from_secs(5), store()));
        let Ok(waiting) = approvals.open(request("r1", Principal::System)) else {
            panic!("refused");
        };
        assert!(approvals.list().is_empty(), "unlisted until revealed");
        waiting.reveal();
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
        let timeout = approvals.timeout();
        assert!(matches!(
            approvals.wait(waiting, timeout).await,
            Outcome::Decided(_)
        ));
        assert!(approvals.list().is_empty());
    }

    #[tokio::test]
    async fn undecided_requests_time_out_and_withdrawn_ones_end() {
        let approvals = std::sync::Arc::new(Approvals::new(Duration::from_millis(20), store()));
        let Ok(waiting) = approvals.open(request("r1", Principal::System)) else {
            panic!("refused");
        };
        waiting.reveal();
        let short = Duration::from_millis(20);
        assert_eq!(approvals.wait(waiting, short).await, Outcome::TimedOut);
        assert!(approvals.decide("r1", Verdict::Once).is_err());
        let Ok(waiting) = approvals.open(request("r2", Principal::System)) else {
            panic!("refused");
        };
        waiting.reveal();
        let capsule = waiting.request.capsule.clone();
        approvals.withdraw_capsule(&capsule);
        assert_eq!(approvals.wait(waiting, short).await, Outcome::Withdrawn);
        assert!(
            approvals.open(request("r3", Principal::System)).is_err(),
            "a withdrawn capsule may not ask until reopened"
        );
        approvals.reopen(&capsule);
        let Ok(dropped) = approvals.open(request("r4", Principal::System)) else {
            panic!("refused after reopening");
        };
        dropped.reveal();
        assert_eq!(approvals.list().len(), 1);
        drop(dropped);
        assert!(
            approvals.list().is_empty(),
            "a dropped wait leaves nothing pending"
        );
    }

    #[test]
    fn a_principal_may_have_only_so_many_waiting_and_a_burst_is_reported_once() {
        let approvals = std::sync::Arc::new(Approvals::new(Duration::from_secs(5), store()));
        let mut held = Vec::new();
        for i in 0..MAX_PENDING_APPROVALS {
            match approvals.open(request(&format!("r{i}"), Principal::System)) {
                Ok(w) => held.push(w),
                Err(Refused::TooMany { .. } | Refused::Closed) => panic!("refused early"),
            }
        }
        let firsts: Vec<bool> = (0..3)
            .map(
                |_| match approvals.open(request("over", Principal::System)) {
                    Err(Refused::TooMany { first }) => first,
                    Err(Refused::Closed) => panic!("closed"),
                    Ok(_) => panic!("one too many was accepted"),
                },
            )
            .collect();
        assert_eq!(firsts, [true, false, false]);
    }
}
