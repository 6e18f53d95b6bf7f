//! Supervision of long-running native programs (native capsules): restart on failure with
//! exponential backoff and a cap on restarts, health and restart count, a short history of
//! CPU and memory, and quotas that are logged or enforced.
//!
//! A clean exit (code 0) is final: the program finished (unless the policy says a clean exit
//! is a failure too, as for a server that should never end). Any other end is a failure and
//! is retried after `initial_backoff`, doubling up to `max_backoff`, at most `max_restarts`
//! times in a row; a run that lasted `healthy_after` starts the count again.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use capsid_core::limits::{
    SUPERVISOR_HEALTHY_AFTER, SUPERVISOR_INITIAL_BACKOFF, SUPERVISOR_MAX_BACKOFF,
    SUPERVISOR_MAX_RESTARTS, SUPERVISOR_SAMPLE_EVERY,
};
use capsid_core::tally::{Standing, Tally, TallyMember};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::child::{Child, ExitInfo};
use crate::spec::SpawnSpec;
use crate::stats::{History, Sample, read_procs};

/// When and how often to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Wait before the first restart.
    pub initial_backoff: Duration,
    /// Longest wait between restarts.
    pub max_backoff: Duration,
    /// Restarts in a row before giving up.
    pub max_restarts: u32,
    /// A run at least this long resets the count.
    pub healthy_after: Duration,
    /// How often CPU and memory are sampled (and quotas checked).
    pub sample_every: Duration,
    /// Whether a clean exit (code 0) is final; when not, it is restarted as a failure.
    pub clean_exit_is_final: bool,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: SUPERVISOR_INITIAL_BACKOFF,
            max_backoff: SUPERVISOR_MAX_BACKOFF,
            max_restarts: SUPERVISOR_MAX_RESTARTS,
            healthy_after: SUPERVISOR_HEALTHY_AFTER,
            sample_every: SUPERVISOR_SAMPLE_EVERY,
            clean_exit_is_final: true,
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `failures` in a row (1 for the first):
    /// `initial_backoff`, doubling each time, at most `max_backoff`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What a quota breach does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaAction {
    /// Count it and log it; let the program run.
    #[default]
    Log,
    /// Count it, log it, and kill the program (which is then restarted as a failure).
    Kill,
}

/// Limits checked at every sample, over the program's whole process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Resident memory of the group, in bytes.
    pub memory_bytes: Option<u64>,
    /// Live processes in the group.
    pub processes: Option<usize>,
    /// What a breach does.
    pub action: QuotaAction,
}

/// Where a supervised program is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Being started.
    Starting,
    /// Running as `pid`.
    Running {
        /// Its pid.
        pid: u32,
    },
    /// Failed; restarting after a wait.
    Backoff {
        /// Restarts in a row so far, this one included.
        attempt: u32,
        /// The wait, in milliseconds.
        retry_in_ms: u64,
    },
    /// Finished cleanly (exit code 0); not restarted.
    Finished,
    /// Given up on after too many failures.
    Failed {
        /// The last failure.
        reason: String,
    },
    /// Stopped on request.
    Stopped,
}

impl Health {
    /// How its owner's `status` counts it: failed when given up on, not serving when
    /// stopped, serving otherwise (between restarts included).
    pub fn standing(&self) -> Standing {
        match self {
            Self::Failed { .. } => Standing::Failed,
            Self::Stopped => Standing::Other,
            _ => Standing::Ready,
        }
    }
}

#[derive(Debug)]
struct State {
    health: Health,
    /// Its place in its owner's live counts, moved with `health` under the same lock.
    tally: TallyMember,
    restarts: u32,
    breaches: u64,
    current: Option<Arc<Child>>,
    history: History,
    /// What the last breach was, named (`memory 140 MiB over 128 MiB`).
    last_breach: Option<String>,
}

/// Asked before every start, the first and each restart: `Err(reason)` refuses it, and the
/// program is marked failed with that reason and never started again (a revoked grant, say).
pub type StartGate = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// A supervised program. Dropping the handle does not stop it: call [`stop`](Self::stop).
#[derive(Debug)]
pub struct Supervisor {
    name: String,
    state: Mutex<State>,
    stop: watch::Sender<bool>,
    /// Each child as it starts, for whoever speaks to it ([`Supervisor::starts`]).
    started: watch::Sender<Option<Arc<Child>>>,
}

/// One line for how a run ended.
pub(crate) fn describe(exit: Option<ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            code: Some(code), ..
        }) => format!("exited with code {code}"),
        Some(ExitInfo {
            signal: Some(signal),
            ..
        }) => format!("killed by signal {signal}"),
        _ => "ended without a status".into(),
    }
}

impl Supervisor {
    /// Starts supervising `spec` under `name` (used in logs), asking `gate` (if any) before
    /// every start.
    pub fn start(
        name: &str,
        spec: SpawnSpec,
        policy: RestartPolicy,
        quota: Quota,
        gate: Option<StartGate>,
    ) -> Arc<Self> {
        let (stop, stopped) = watch::channel(false);
        let sup = Arc::new(Self {
            name: name.to_owned(),
            state: Mutex::new(State {
                health: Health::Starting,
                tally: TallyMember::default(),
                restarts: 0,
                breaches: 0,
                current: None,
                history: History::default(),
                last_breach: None,
            }),
            stop,
            started: watch::channel(None).0,
        });
        tokio::spawn(sup.clone().run(spec, policy, quota, gate, stopped));
        sup
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, health: Health) {
        let mut s = self.lock();
        let from = s.health.standing();
        s.tally.moved(from, health.standing());
        s.health = health;
    }

    /// Counts it in `tally` from now on, as its health moves.
    pub fn join_tally(&self, tally: Arc<Tally>) {
        let s = self.lock();
        s.tally.join(tally, s.health.standing());
    }

    /// Stops counting it.
    pub fn leave_tally(&self) {
        let s = self.lock();
        s.tally.leave(s.health.standing());
    }

    /// Its health.
    pub fn health(&self) -> Health {
        self.lock().health.clone()
    }

    /// Restarts made so far.
    pub fn restarts(&self) -> u32 {
        self.lock().restarts
    }

    /// Quota breaches seen so far.
    pub fn quota_breaches(&self) -> u64 {
        self.lock().breaches
    }

    /// The recent samples, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.lock().history.all()
    }

    /// The last quota breach, named (which limit, the value and the limit), if any.
    pub fn last_breach(&self) -> Option<String> {
        self.lock().last_breach.clone()
    }

    /// The running (or last) child, to read its output.
    pub fn current(&self) -> Option<Arc<Child>> {
        self.lock().current.clone()
    }

    /// Each child as it starts (the first and every restart): what speaks to the program
    /// over its stdio (an MCP capsule's client) waits here for the next one.
    pub fn starts(&self) -> watch::Receiver<Option<Arc<Child>>> {
        self.started.subscribe()
    }

    /// Stops it: no more restarts, the running child's group is killed.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(child) = self.current() {
            child.kill().await;
        }
        self.set(Health::Stopped);
    }

    async fn run(
        self: Arc<Self>,
        spec: SpawnSpec,
        policy: RestartPolicy,
        quota: Quota,
        gate: Option<StartGate>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        loop {
            if *stopped.borrow() {
                self.set(Health::Stopped);
                return;
            }
            if let Some(gate) = &gate
                && let Err(reason) = gate().await
            {
                tracing::warn!(name = %self.name, reason, "start refused");
                self.set(Health::Failed { reason });
                return;
            }
            self.set(Health::Starting);
            let started = Instant::now();
            let reason = match Child::spawn(&spec).await {
                Err(e) => e.to_string(),
                Ok(child) => {
                    let child = Arc::new(child);
                    {
                        let mut s = self.lock();
                        s.current = Some(child.clone());
                        let running = Health::Running { pid: child.pid() };
                        s.tally.moved(s.health.standing(), running.standing());
                        s.health = running;
                    }
                    self.started.send_replace(Some(child.clone()));
                    let Some(exit) = self.watch(&child, &policy, &quota, &mut stopped).await else {
                        self.set(Health::Stopped);
                        return;
                    };
                    if policy.clean_exit_is_final && exit.is_some_and(|e| e.success()) {
                        self.set(Health::Finished);
                        return;
                    }
                    describe(exit)
                }
            };
            if started.elapsed() >= policy.healthy_after {
                failures = 0;
            }
            failures += 1;
            if failures > policy.max_restarts {
                tracing::warn!(name = %self.name, reason, "giving up after {} restarts", policy.max_restarts);
                self.set(Health::Failed {
                    reason: format!("{reason} ({} restarts in a row)", policy.max_restarts),
                });
                return;
            }
            let wait = policy.backoff(failures);
            tracing::info!(name = %self.name, reason, attempt = failures, ?wait, "restarting");
            self.set(Health::Backoff {
                attempt: failures,
                retry_in_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => {
                    self.set(Health::Stopped);
                    return;
                }
            }
            self.lock().restarts += 1;
        }
    }

    /// Samples and enforces quotas until the child exits (`Some(exit)`) or a stop is asked
    /// for (`None`, after killing it).
    async fn watch(
        &self,
        child: &Child,
        policy: &RestartPolicy,
        quota: &Quota,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<Option<ExitInfo>> {
        let mut tick = tokio::time::interval(policy.sample_every);
        loop {
            tokio::select! {
                exit = child.wait(None) => return Some(exit),
                _ = stopped.changed() => {
                    child.kill().await;
                    return None;
                }
                _ = tick.tick() => {
                    // Reading /proc is blocking I/O: keep it off the async workers.
                    let Ok(procs) = tokio::task::spawn_blocking(read_procs).await else {
                        continue;
                    };
                    self.record(&procs, quota, child);
                }
            }
        }
    }

    fn record(&self, procs: &[crate::procfs::ProcStat], quota: &Quota, child: &Child) {
        let mut s = self.lock();
        let sample = s.history.record(procs, &[child.pid()]);
        let breach = match (quota.memory_bytes, quota.processes) {
            (Some(m), _) if sample.rss_bytes > m => Some(format!(
                "memory {} MiB over {} MiB",
                sample.rss_bytes >> 20,
                m >> 20
            )),
            (_, Some(p)) if sample.processes > p => {
                Some(format!("{} processes over {p}", sample.processes))
            }
            _ => None,
        };
        let Some(breach) = breach else {
            return;
        };
        s.breaches += 1;
        s.last_breach = Some(breach.clone());
        drop(s);
        tracing::warn!(name = %self.name, breach, action = ?quota.action, "quota exceeded");
        if quota.action == QuotaAction::Kill {
            let _ = child.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
}
