//! The reaper's side of the table: one pass ([`ProcessTable::sweep`]) reports exits,
//! restarts supervised entries that failed, stops those past their deadlines and forgets
//! those over; it samples every running process's CPU, memory and tasks on the way. Also
//! the lifecycle events it sends.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use capsid_core::CapsuleId;
use capsid_core::limits::{PROCESS_REAPER_INTERVAL, SUPERVISOR_SAMPLE_EVERY};

use super::entry::{Entry, Run};
use super::restart::Next;
use super::unit::Unit;
use super::{EventKind, Owner, ProcessTable, Status, TableError, TableEvent};
use crate::stats::Sample;

impl ProcessTable {
    /// Reports the exit of `run` once, if it was not reported yet.
    pub(super) fn report_exit(&self, entry: &Entry, run: &Run) {
        if let Some(exit) = run.unit.try_exit()
            && !run.reported.swap(true, Ordering::Relaxed)
        {
            self.report(entry, run.generation, EventKind::Exited(exit));
        }
    }

    /// Reports, once, that a surviving entry will not run again.
    pub(super) fn report_end(&self, entry: &Entry, generation: u64) {
        if entry.options.survive && !entry.ended.swap(true, Ordering::Relaxed) {
            self.report(entry, generation, EventKind::Ended);
        }
    }

    pub(super) fn report(&self, entry: &Entry, generation: u64, kind: EventKind) {
        let watched = entry.watched.load(Ordering::Relaxed);
        let always = matches!(
            kind,
            EventKind::Restarted { .. } | EventKind::GaveUp { .. } | EventKind::Ended
        );
        if (watched || always)
            && let Some(events) = &self.events
        {
            let _ = events.send(TableEvent {
                owner: entry.owner.clone(),
                label: entry.options.label.clone(),
                generation,
                id_hash: entry.key,
                survives: entry.options.survive,
                watched,
                kind,
            });
        }
    }

    /// One pass of the reaper: reports new exits, restarts supervised entries that failed
    /// once their backoff is over, stops entries past their lifetime or idle deadline,
    /// forgets those over for good past their retention.
    pub async fn sweep(self: &Arc<Self>) {
        let entries: Vec<([u8; 32], Arc<Entry>)> =
            self.lock().iter().map(|(k, e)| (*k, e.clone())).collect();
        self.sample(&entries).await;
        for (k, entry) in entries {
            let now = Instant::now();
            let run = entry.run();
            let expired = entry.expired(now);
            if let Some(exit) = run.unit.try_exit() {
                self.report_exit(&entry, &run);
                if expired && entry.restarts().may_return() {
                    // Past its deadline while waiting to restart: no restart.
                    entry.restarts().end_at(now);
                    self.report(&entry, run.generation, EventKind::Expired);
                }
                let next = {
                    // Under the restarts lock, which a restart holds to put its new run in:
                    // a run replaced since it was read is history, not this entry's end.
                    let mut restarts = entry.restarts();
                    if !Arc::ptr_eq(&run, &entry.run()) {
                        continue;
                    }
                    restarts.after_exit(now, run.started, Some(exit))
                };
                match next {
                    Next::Wait => continue,
                    Next::Restart => {
                        // On a task of its own: a slow gate or start holds up no other entry.
                        let (table, old) = (self.clone(), run.clone());
                        tokio::spawn(async move { table.restart(&entry, &old).await });
                        continue;
                    }
                    Next::GiveUp(reason) => {
                        self.report(&entry, run.generation, EventKind::GaveUp { reason });
                    }
                    Next::Over => {}
                }
                self.report_end(&entry, run.generation);
                let exited_at = run.started + Duration::from_millis(exit.wall_ms);
                // Counted from when it was over, for one given up on long after its exit.
                let over_at = entry
                    .restarts()
                    .over_at()
                    .map_or(exited_at, |o| o.max(exited_at));
                if now.duration_since(over_at) >= entry.options.retention {
                    self.lock().remove(&k);
                    self.report(&entry, run.generation, EventKind::Forgotten);
                }
                continue;
            }
            if expired {
                entry.restarts().end_at(now);
                self.report(&entry, run.generation, EventKind::Expired);
                run.unit.terminate(Duration::ZERO).await;
                self.report_end(&entry, run.generation);
            }
        }
    }

    /// Samples every running entry's stages, at most every `SUPERVISOR_SAMPLE_EVERY` (one
    /// read of `/proc` for all).
    pub(super) async fn sample(&self, entries: &[([u8; 32], Arc<Entry>)]) {
        {
            let mut sampled = self.sampled.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if sampled.is_some_and(|at| now.duration_since(at) < SUPERVISOR_SAMPLE_EVERY) {
                return;
            }
            *sampled = Some(now);
        }
        let running: Vec<(&Arc<Entry>, Vec<u32>)> = entries
            .iter()
            .filter_map(|(_, e)| {
                let run = e.run();
                let groups: Vec<u32> = run
                    .unit
                    .stages()
                    .iter()
                    .filter(|c| !c.has_exited())
                    .map(crate::child::Child::pid)
                    .collect();
                (!groups.is_empty()).then_some((e, groups))
            })
            .collect();
        if running.is_empty() {
            return;
        }
        // Reading /proc is blocking I/O: keep it off the async workers.
        let Ok(procs) = tokio::task::spawn_blocking(crate::stats::read_procs).await else {
            return;
        };
        for (entry, groups) in running {
            entry.stats().record(&procs, &groups);
        }
    }

    /// The CPU, memory and task samples of one process, oldest first.
    pub fn stats_history(&self, owner: &Owner, id: &str) -> Result<Vec<Sample>, TableError> {
        Ok(self.find(owner, id)?.stats().all())
    }

    /// The operator's view of `capsule`'s processes: each one's status and samples, oldest
    /// first (ids stay the owner's).
    pub fn histories(&self, capsule: &CapsuleId) -> Vec<(Status, Vec<Sample>)> {
        let mut out: Vec<(Status, Vec<Sample>)> = self
            .lock()
            .values()
            .filter(|e| e.owner.capsule == *capsule)
            .map(|e| (e.status(), e.stats().all()))
            .collect();
        out.sort_by_key(|(s, _)| s.generation);
        out
    }

    /// Starts `entry` again in place of `old`, if its gate and its owner still allow it.
    pub(super) async fn restart(&self, entry: &Arc<Entry>, old: &Run) {
        let refused = if self.admission().closed.contains(&entry.owner) {
            None
        } else if let Some(gate) = &entry.gate {
            gate().await.err()
        } else {
            None
        };
        // Stopped, or its capsule closed, while the gate was asked: nothing more to do.
        if !entry.restarts().may_return() {
            return;
        }
        if self.admission().closed.contains(&entry.owner) {
            // Unloading: it ends quietly (what survives restarts keeps its record).
            entry.restarts().end();
            return;
        }
        if let Some(reason) = refused {
            let Next::GiveUp(reason) = entry
                .restarts()
                .give_up(format!("restart refused: {reason}"))
            else {
                return;
            };
            self.report(entry, old.generation, EventKind::GaveUp { reason });
            return;
        }
        match Unit::start(&entry.spec).await {
            Ok(unit) => {
                let run = Arc::new(self.new_run(unit));
                let generation = run.generation;
                let restarts = {
                    // Under the restarts lock, which `stop` takes to end it before it reads
                    // the run: stopped meanwhile, the new run is dropped (which kills it).
                    let mut r = entry.restarts();
                    if !r.may_return() {
                        return;
                    }
                    *entry.run.lock().unwrap_or_else(PoisonError::into_inner) = run;
                    r.restarted(old.generation);
                    r.status(Instant::now()).restarts
                };
                self.report(entry, generation, EventKind::Restarted { restarts });
            }
            Err(e) => {
                let next = entry
                    .restarts()
                    .start_failed(Instant::now(), &e.to_string());
                if let Next::GiveUp(reason) = next {
                    self.report(entry, old.generation, EventKind::GaveUp { reason });
                }
            }
        }
    }

    /// Runs [`sweep`](Self::sweep) every `PROCESS_REAPER_INTERVAL` until the table is dropped.
    pub fn start_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let table: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROCESS_REAPER_INTERVAL);
            loop {
                tick.tick().await;
                let Some(table) = table.upgrade() else { return };
                table.sweep().await;
            }
        })
    }
}
