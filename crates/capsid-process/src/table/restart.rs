//! Restarts of a supervised persistent entry: on failure, after a backoff that doubles, at
//! most so many in a row (a run that lasted `healthy_after` starts the count again), each one
//! asked of its [`StartGate`] first.

use std::time::{Duration, Instant};

use capsid_core::limits::MAX_PAST_GENERATIONS;

use crate::child::ExitInfo;
use crate::supervisor::{RestartPolicy, describe};

/// Where a supervised entry's restarts stand, as its owner sees them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestartStatus {
    /// Restarts made so far.
    pub restarts: u32,
    /// Failures in a row so far (the count the cap applies to).
    pub failures: u32,
    /// The wait left before the next restart, while one is due.
    pub retry_in: Option<Duration>,
    /// Why it was given up on (too many failures in a row, or its start refused).
    pub gave_up: Option<String>,
}

/// What to do with an entry whose run has ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing more: it is over (retention applies).
    Over,
    /// A restart is due later.
    Wait,
    /// Restart now.
    Restart,
    /// It has just been given up on, for this reason.
    GiveUp(String),
}

/// The restart state of one entry.
#[derive(Debug, Default)]
pub(super) struct Restarts {
    policy: Option<RestartPolicy>,
    made: u32,
    failures: u32,
    due: Option<Instant>,
    gave_up: Option<String>,
    /// No restart any more: finished cleanly, stopped, expired or given up on.
    over: bool,
    /// When it was found over (retention counts from there).
    over_at: Option<Instant>,
    /// A restart is under way (on a task of its own).
    restarting: bool,
    /// Generations of earlier runs, newest last (a cursor from one reads the current run).
    past: Vec<u64>,
}

impl Restarts {
    pub(super) fn new(policy: Option<RestartPolicy>) -> Self {
        Self {
            over: policy.is_none(),
            policy,
            ..Self::default()
        }
    }

    pub(super) fn status(&self, now: Instant) -> RestartStatus {
        RestartStatus {
            restarts: self.made,
            failures: self.failures,
            retry_in: self.due.map(|d| d.saturating_duration_since(now)),
            gave_up: self.gave_up.clone(),
        }
    }

    /// Whether it may still come back (a restart is pending or may be).
    pub(super) fn may_return(&self) -> bool {
        !self.over
    }

    /// No restart any more (stopped, expired, its owner gone).
    pub(super) fn end(&mut self) {
        self.end_at(Instant::now());
    }

    /// [`end`](Self::end), found at `now`.
    pub(super) fn end_at(&mut self, now: Instant) {
        if !self.over {
            self.over_at = Some(now);
        }
        self.over = true;
        self.due = None;
    }

    /// When it was found over, if it is.
    pub(super) fn over_at(&self) -> Option<Instant> {
        self.over_at
    }

    /// Whether a run that ended with `exit` is its last: no restart may follow.
    pub(super) fn is_final(&self, exit: ExitInfo) -> bool {
        match self.policy {
            _ if self.over => true,
            None => true,
            Some(policy) => policy.clean_exit_is_final && exit.success(),
        }
    }

    /// Whether `generation` was one of this entry's earlier runs.
    pub(super) fn was(&self, generation: u64) -> bool {
        self.past.contains(&generation)
    }

    /// Decides what follows a run that started at `started` and ended with `exit`.
    pub(super) fn after_exit(
        &mut self,
        now: Instant,
        started: Instant,
        exit: Option<ExitInfo>,
    ) -> Next {
        let Some(policy) = self.policy.filter(|_| !self.over) else {
            return Next::Over;
        };
        if self.restarting {
            return Next::Wait;
        }
        if let Some(due) = self.due {
            if now < due {
                return Next::Wait;
            }
            self.restarting = true;
            return Next::Restart;
        }
        if policy.clean_exit_is_final && exit.is_some_and(|e| e.success()) {
            self.end_at(now);
            return Next::Over;
        }
        // How long it ran by the kernel's account, not by when the reaper looked.
        let ran = exit.map_or_else(
            || now.duration_since(started),
            |e| Duration::from_millis(e.wall_ms),
        );
        self.failed(now, ran, &describe(exit), &policy)
    }

    /// A start that failed counts as a failed run of no length.
    pub(super) fn start_failed(&mut self, now: Instant, reason: &str) -> Next {
        self.restarting = false;
        match self.policy {
            Some(policy) if !self.over => {
                self.due = None;
                self.failed(now, Duration::ZERO, reason, &policy)
            }
            _ => Next::Over,
        }
    }

    fn failed(
        &mut self,
        now: Instant,
        ran: Duration,
        reason: &str,
        policy: &RestartPolicy,
    ) -> Next {
        if ran >= policy.healthy_after {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures > policy.max_restarts {
            return self.give_up(format!(
                "{reason} ({} restarts in a row)",
                policy.max_restarts
            ));
        }
        self.due = Some(now + policy.backoff(self.failures));
        Next::Wait
    }

    /// Gives up: no more restarts, for `reason` (nothing when it is already over).
    pub(super) fn give_up(&mut self, reason: String) -> Next {
        self.restarting = false;
        if self.over {
            return Next::Over;
        }
        self.gave_up = Some(reason.clone());
        self.end();
        Next::GiveUp(reason)
    }

    /// Counts the run of `generation`, before the runtime restarted, as an earlier one.
    pub(super) fn carry(&mut self, generation: u64) {
        self.past.push(generation);
    }

    /// A restart made: the run of `old_generation` is now an earlier one.
    pub(super) fn restarted(&mut self, old_generation: u64) {
        self.made += 1;
        self.due = None;
        self.restarting = false;
        if self.past.len() == MAX_PAST_GENERATIONS {
            self.past.remove(0);
        }
        self.past.push(old_generation);
    }
}
