//! CPU, memory and task samples of running programs (each a set of process groups), kept in
//! a bounded history per program: what `status` shows as the latest and `stats` as a ring.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use capsid_core::limits::SUPERVISOR_HISTORY;
use serde::{Deserialize, Serialize};

use crate::procfs::{self, ProcStat};

/// One sample of a program's process groups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory of the groups, in bytes.
    pub rss_bytes: u64,
    /// Live processes in the groups.
    pub processes: usize,
}

/// The last `SUPERVISOR_HISTORY` samples of one program, and what the next CPU share is
/// measured from.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    /// When the last sample was taken, and the groups' CPU ticks then.
    last: Option<(Instant, u64)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl History {
    /// Samples the live members of `groups` among `procs` (one read of `/proc`), keeps the
    /// sample (dropping the oldest past the bound) and returns it.
    pub(crate) fn record(&mut self, procs: &[ProcStat], groups: &[u32]) -> Sample {
        let members: Vec<&ProcStat> = procs
            .iter()
            .filter(|p| groups.contains(&p.pgrp) && p.state != 'Z')
            .collect();
        let ticks: u64 = members.iter().map(|p| p.cpu_ticks).sum();
        let rss_bytes = members.iter().map(|p| p.rss_pages).sum::<u64>() * procfs::page_bytes();
        let now = Instant::now();
        #[allow(clippy::cast_precision_loss)] // a percentage for people to read
        let cpu_percent = match self.last {
            Some((at, before)) if now > at => {
                let used = ticks.saturating_sub(before) as f64 / procfs::ticks_per_second() as f64;
                used / now.duration_since(at).as_secs_f64() * 100.0
            }
            _ => 0.0,
        };
        self.last = Some((now, ticks));
        let sample = Sample {
            at_ms: now_ms(),
            cpu_percent,
            rss_bytes,
            processes: members.len(),
        };
        if self.samples.len() == SUPERVISOR_HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        sample
    }

    /// The newest sample, if any.
    pub(crate) fn latest(&self) -> Option<Sample> {
        self.samples.back().copied()
    }

    /// Every sample kept, oldest first.
    pub(crate) fn all(&self) -> Vec<Sample> {
        self.samples.iter().copied().collect()
    }
}

/// Every process the host can see, read once for a round of samples (blocking I/O: call it
/// off the async workers).
pub(crate) fn read_procs() -> Vec<ProcStat> {
    procfs::all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, pgrp: u32, state: char, ticks: u64, pages: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid: 1,
            state,
            pgrp,
            cpu_ticks: ticks,
            rss_pages: pages,
        }
    }

    #[test]
    fn a_sample_counts_the_live_members_of_its_groups_and_the_ring_is_bounded() {
        let mut history = History::default();
        let procs = [
            proc(10, 10, 'S', 5, 10),
            proc(11, 10, 'R', 5, 10),
            proc(12, 10, 'Z', 500, 0),
            proc(20, 20, 'S', 1, 1),
            proc(30, 30, 'S', 1, 1),
        ];
        let s = history.record(&procs, &[10, 20]);
        assert_eq!(
            s.processes, 3,
            "the zombie and the other group are not counted"
        );
        assert_eq!(s.rss_bytes, 21 * procfs::page_bytes());
        assert!(
            s.cpu_percent.abs() < f64::EPSILON,
            "no CPU share before a second sample"
        );
        for _ in 0..SUPERVISOR_HISTORY + 5 {
            history.record(&procs, &[10]);
        }
        assert_eq!(history.all().len(), SUPERVISOR_HISTORY);
        assert_eq!(history.latest().map(|s| s.processes), Some(2));
    }
}
