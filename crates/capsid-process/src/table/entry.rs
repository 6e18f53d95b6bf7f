//! One entry of the table and its runs: what it runs, its current run, its restarts, and
//! how its status and output are read.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::restart::Restarts;
use super::unit::{Unit, UnitSpec};
use super::{
    Chunk, Cursor, LinkStatus, Owner, PersistentOptions, StageStatus, Status, Stream, TableError,
};
use crate::ring::{OutputRing, Since};
use crate::stats::History;
use crate::supervisor::StartGate;

/// One run of an entry: the first, or a restart.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) unit: Unit,
    pub(super) generation: u64,
    pub(super) started: Instant,
    pub(super) started_ms: u64,
    /// Its exit was already reported.
    pub(super) reported: AtomicBool,
}

impl Run {
    pub(super) fn ring(&self, stage: Option<usize>, stream: Stream) -> Option<&OutputRing> {
        let child = match stage {
            None => self.unit.last(),
            Some(i) => self.unit.stages().get(i)?,
        };
        Some(match stream {
            Stream::Stdout => child.stdout(),
            Stream::Stderr => child.stderr(),
        })
    }
}

pub(super) struct Entry {
    /// The hash of its id.
    pub(super) key: [u8; 32],
    pub(super) owner: Owner,
    pub(super) options: PersistentOptions,
    /// What it runs, kept for restarts.
    pub(super) spec: UnitSpec,
    /// Asked before each restart.
    pub(super) gate: Option<StartGate>,
    /// Brought back after a restart of the runtime (not started in this one).
    pub(super) restored: bool,
    /// When its first run started (its lifetime counts from there).
    pub(super) created: Instant,
    pub(super) last_touch: Mutex<Instant>,
    pub(super) run: Mutex<Arc<Run>>,
    pub(super) restarts: Mutex<Restarts>,
    pub(super) watched: AtomicBool,
    /// CPU, memory and task samples of its runs.
    pub(super) stats: Mutex<History>,
    /// Its end was reported ([`EventKind::Ended`]).
    pub(super) ended: AtomicBool,
}

impl Entry {
    pub(super) fn touch(&self) {
        *self
            .last_touch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    pub(super) fn run(&self) -> Arc<Run> {
        self.run
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn stats(&self) -> MutexGuard<'_, History> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn restarts(&self) -> MutexGuard<'_, Restarts> {
        self.restarts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether it is over for good: its run exited and no restart is to come (a clean exit
    /// under a policy that keeps it final counts at once, before the reaper sees it).
    pub(super) fn is_over(&self) -> bool {
        self.run()
            .unit
            .try_exit()
            .is_some_and(|exit| self.restarts().is_final(exit))
    }

    /// Whether it is past its lifetime or idle deadline at `now`.
    pub(super) fn expired(&self, now: Instant) -> bool {
        let idle_for = now.duration_since(
            *self
                .last_touch
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.options
            .lifetime
            .is_some_and(|l| now - self.created >= l)
            || self.options.idle.is_some_and(|i| idle_for >= i)
    }

    pub(super) fn status(&self) -> Status {
        // Both under the restarts lock, which a restart holds to put its new run in: a status
        // never shows a restart counted with the run it replaced.
        let (run, restart) = {
            let restarts = self.restarts();
            (self.run(), restarts.status(Instant::now()))
        };
        let (out, err) = (run.unit.last().stdout(), run.unit.last().stderr());
        let pipeline = matches!(run.unit, Unit::Pipeline(_));
        let stages = if pipeline {
            run.unit
                .stages()
                .iter()
                .map(|c| StageStatus {
                    pid: c.pid(),
                    exit: c.try_exit(),
                    stderr_pending: c.stderr().len(),
                    stderr_dropped: c.stderr().dropped(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Status {
            label: self.options.label.clone(),
            generation: run.generation,
            pid: run.unit.first().pid(),
            started_ms: run.started_ms,
            exit: run.unit.try_exit(),
            stdout_pending: out.len(),
            stderr_pending: err.len(),
            stdout_dropped: out.dropped(),
            stderr_dropped: err.dropped(),
            restart,
            stats: self.stats().latest(),
            stages,
            links: run
                .unit
                .links()
                .iter()
                .map(|l| LinkStatus {
                    bytes: l.bytes(),
                    rate: l.rate(),
                    ended: l.has_ended(),
                })
                .collect(),
        }
    }

    /// Up to `max` bytes of a stream from `cursor` on (the oldest kept when `None`), with
    /// the cursor to read on from. A cursor of an earlier run reads the current one from its
    /// start; one of another entry is refused.
    pub(super) fn chunk(
        &self,
        stage: Option<usize>,
        stream: Stream,
        cursor: Option<Cursor>,
        max: usize,
    ) -> Result<Chunk, TableError> {
        let run = self.run();
        let offset = match cursor {
            None => 0,
            Some(c) if c.generation == run.generation => c.offset,
            Some(c) if self.restarts().was(c.generation) => 0,
            Some(_) => return Err(TableError::ForeignCursor),
        };
        let ring = run.ring(stage, stream).ok_or_else(|| no_stage(stage))?;
        let Since {
            bytes,
            next,
            missed,
        } = ring.read_since(offset, max);
        Ok(Chunk {
            bytes,
            next: Cursor {
                generation: run.generation,
                offset: next,
            },
            missed,
        })
    }
}

pub(super) fn no_stage(stage: Option<usize>) -> TableError {
    TableError::Invalid(format!("it has no stage {}", stage.unwrap_or(0)))
}
