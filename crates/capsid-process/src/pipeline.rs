//! Pipelines: several children, each stage's stdout feeding the next stage's stdin through a
//! [`Link`] the host owns (no shell; the bytes stay in the kernel), run as one unit: one
//! cgroup for all stages (its pids limit covers them all), signalled and killed together,
//! and ended together by an [`EndPolicy`].
//!
//! Each stage is a [`Child`] as any other (its own process group, limits, sandbox, stderr
//! ring, reaping); the first stage's stdin and the last stage's stdout are the pipeline's.

use std::sync::Arc;
use std::time::Duration;

use capsid_core::limits::{
    MAX_OUTPUT_RING_BYTES, MAX_PIPELINE_STAGES, MIN_OUTPUT_RING_BYTES, PIPELINE_END_SETTLE,
};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::cgroup::{PidsCgroup, pids_limit_available};
use crate::child::{CgroupShare, Child, ExitInfo, SharedCgroup};
use crate::error::ProcessError;
use crate::link::{self, Link};
use crate::spec::SpawnSpec;

/// When a pipeline is over; the stages still running then are stopped (SIGTERM to their
/// groups, SIGKILL after the grace). After the last stage's exit, the others are first given
/// `PIPELINE_END_SETTLE` to end by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EndPolicy {
    /// When its last stage exits, as a shell pipeline's status is its last command's.
    #[default]
    LastStage,
    /// As soon as any stage fails (a code other than 0, or a signal), like `pipefail`;
    /// otherwise when the last stage exits.
    AnyFailure,
}

/// A pipeline to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSpec {
    /// The stages, in order (1 to `MAX_PIPELINE_STAGES`). The pipeline decides the stdin of
    /// every stage but the first and the stdout of every stage but the last; a stage may not
    /// set a pids limit of its own (the pipeline's covers all of them).
    pub stages: Vec<SpawnSpec>,
    /// Tasks in all stages together (needs the cgroup `pids` controller).
    pub pids: Option<u64>,
    /// When it is over.
    pub end: EndPolicy,
    /// Time between SIGTERM and SIGKILL when stages are stopped.
    pub grace: Duration,
    /// Per link (link `i` joins stage `i` to stage `i + 1`), how many of the last bytes
    /// through it to keep readable; `None` or missing: not tapped.
    pub taps: Vec<Option<usize>>,
}

impl PipelineSpec {
    /// Checks what each stage cannot check alone.
    fn check(&self) -> Result<(), ProcessError> {
        let n = self.stages.len();
        if !(1..=MAX_PIPELINE_STAGES).contains(&n) {
            return Err(ProcessError::Invalid(format!(
                "a pipeline has 1 to {MAX_PIPELINE_STAGES} stages, not {n}"
            )));
        }
        if let Some(i) = self.stages.iter().position(|s| s.limits.pids.is_some()) {
            return Err(ProcessError::Invalid(format!(
                "stage {i} sets a pids limit: a pipeline's pids limit covers all its stages, \
                 set it for the pipeline"
            )));
        }
        if self.taps.len() > n - 1 {
            return Err(ProcessError::Invalid(format!(
                "{} taps for {} links",
                self.taps.len(),
                n - 1
            )));
        }
        if let Some(bytes) = self
            .taps
            .iter()
            .flatten()
            .find(|b| !(MIN_OUTPUT_RING_BYTES..=MAX_OUTPUT_RING_BYTES).contains(b))
        {
            return Err(ProcessError::Invalid(format!(
                "a tap keeps {MIN_OUTPUT_RING_BYTES} to {MAX_OUTPUT_RING_BYTES} bytes, not {bytes}"
            )));
        }
        Ok(())
    }
}

/// The stages and links, shared with the task that ends the pipeline.
#[derive(Debug)]
struct Unit {
    stages: Vec<Child>,
    links: Vec<Arc<Link>>,
    grace: Duration,
    end: EndPolicy,
}

impl Unit {
    /// Stops every stage still running: SIGTERM, then SIGKILL to what is left after `grace`.
    async fn stop(&self, grace: Duration) {
        if grace.is_zero() {
            self.kill_all().await;
            return;
        }
        for stage in &self.stages {
            let _ = stage.signal(Signal::SIGTERM);
            // A stopped stage would sit on SIGTERM until SIGKILL.
            let _ = stage.signal(Signal::SIGCONT);
        }
        let all_exited = async {
            for stage in &self.stages {
                stage.wait(None).await;
            }
        };
        if tokio::time::timeout(grace, all_exited).await.is_err() {
            self.kill_all().await;
        }
    }

    /// SIGKILL to every stage, then waits for all.
    async fn kill_all(&self) {
        for stage in &self.stages {
            let _ = stage.signal(Signal::SIGKILL);
        }
        for stage in &self.stages {
            stage.wait(None).await;
        }
    }

    /// Waits until the pipeline is over by `end`, then stops what still runs.
    async fn end_by(self: Arc<Self>, end: EndPolicy) {
        let Some(last) = self.stages.last() else {
            return;
        };
        let watched = self.stages.iter().map(|stage| async move {
            let exit = stage.wait(None).await;
            if end == EndPolicy::AnyFailure && !exit.is_some_and(|e| e.success()) {
                return;
            }
            // Not a failure: only the last stage's exit ends the pipeline.
            std::future::pending::<()>().await;
        });
        let failed = tokio::select! {
            _ = last.wait(None) => false,
            () = first_of(watched) => true,
        };
        if !failed {
            // The stages before the last usually end by themselves a moment later (a write
            // to a closed link, or the end of their input): a stage still on its way out is
            // not to be counted as stopped.
            let rest = async {
                for stage in &self.stages {
                    stage.wait(None).await;
                }
            };
            if tokio::time::timeout(PIPELINE_END_SETTLE, rest)
                .await
                .is_ok()
            {
                return;
            }
        }
        self.stop(self.grace).await;
    }
}

/// Waits for the first of `futures` to finish.
async fn first_of<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        for f in &mut set {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

/// The exit that stands for the whole pipeline (see [`Pipeline::try_exit`]).
fn unit_exit(exits: &[ExitInfo], end: EndPolicy) -> ExitInfo {
    let failed = || exits.iter().rev().find(|e| !e.success());
    let standing = match end {
        EndPolicy::AnyFailure => failed().or(exits.last()),
        EndPolicy::LastStage => exits.last(),
    };
    let mut exit = standing.copied().unwrap_or(ExitInfo {
        code: None,
        signal: None,
        cpu_ms: 0,
        mem_bytes_peak: 0,
        wall_ms: 0,
    });
    exit.cpu_ms = exits.iter().map(|e| e.cpu_ms).sum();
    exit.mem_bytes_peak = exits.iter().map(|e| e.mem_bytes_peak).sum();
    exit.wall_ms = exits.iter().map(|e| e.wall_ms).max().unwrap_or(0);
    exit
}

/// A running (or finished) pipeline. Dropping it kills every stage.
#[derive(Debug)]
pub struct Pipeline {
    unit: Arc<Unit>,
    ender: JoinHandle<()>,
}

/// What a finished pipeline left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineOutput {
    /// How each stage ended, in order (`None` for one whose exit could not be read).
    pub exits: Vec<Option<ExitInfo>>,
    /// The last stage's stdout (what its ring kept).
    pub stdout: Vec<u8>,
    /// Each stage's stderr (what its ring kept), in order.
    pub stderr: Vec<Vec<u8>>,
}

impl Pipeline {
    /// Starts `spec`'s stages, first to last, and links them. Fails whole if any stage fails
    /// to start (those already started are killed).
    pub async fn spawn(spec: &PipelineSpec) -> Result<Self, ProcessError> {
        spec.check()?;
        let n = spec.stages.len();
        let cgroup = if spec.pids.is_some() {
            Some(PidsCgroup::create(spec.pids)?)
        } else if pids_limit_available() {
            PidsCgroup::create(None)
                .inspect_err(|e| tracing::warn!(error = %e, "pipeline started without a cgroup"))
                .ok()
        } else {
            None
        };
        // Held while the stages start, so a stage reaped before the next one starts cannot
        // take the cgroup with it; dropped on every way out of here (an error, a cancel).
        let assembly = cgroup.map(SharedCgroup::share);
        let mut stages: Vec<Child> = Vec::with_capacity(n);
        for (i, stage) in spec.stages.iter().enumerate() {
            let mut stage = stage.clone();
            stage.stdin = if i == 0 { stage.stdin } else { true };
            stage.stdout_piped = if i + 1 == n { stage.stdout_piped } else { true };
            let share = assembly.as_ref().map(CgroupShare::share);
            stages.push(Child::spawn_in(&stage, share).await?);
        }
        drop(assembly);
        let mut links = Vec::with_capacity(n - 1);
        for (i, pair) in stages.windows(2).enumerate() {
            let link = Arc::new(Link::new(spec.taps.get(i).copied().flatten()));
            let os = |what| move |source| ProcessError::Os { what, source };
            let (Some(from), Some(to)) = (pair[0].take_stdout(), pair[1].take_stdin().await) else {
                return Err(ProcessError::Invalid("a stage's pipes were taken".into()));
            };
            let from = from.into_blocking_fd().map_err(os("linking stages"))?;
            let to = to.into_blocking_fd().map_err(os("linking stages"))?;
            link::relay(from, to, link.clone()).map_err(os("starting a link"))?;
            links.push(link);
        }
        let unit = Arc::new(Unit {
            stages,
            links,
            grace: spec.grace,
            end: spec.end,
        });
        let ender = tokio::spawn(unit.clone().end_by(spec.end));
        Ok(Self { unit, ender })
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Child] {
        &self.unit.stages
    }

    /// The links, in order (link `i` joins stage `i` to stage `i + 1`).
    pub fn links(&self) -> &[Arc<Link>] {
        &self.unit.links
    }

    /// The first stage: the pipeline's stdin is its.
    pub fn first(&self) -> &Child {
        // `spawn` refuses a pipeline without stages.
        &self.unit.stages[0]
    }

    /// The last stage: the pipeline's stdout is its.
    pub fn last(&self) -> &Child {
        &self.unit.stages[self.unit.stages.len() - 1]
    }

    /// Sends `signal` to every stage still running (each one, whatever another answered);
    /// the first failure, or [`ProcessError::Exited`] when none runs.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        let mut reached = false;
        let mut failed = None;
        for stage in &self.unit.stages {
            match stage.signal(signal) {
                Ok(()) => reached = true,
                Err(ProcessError::Exited) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match (failed, reached) {
            (Some(e), _) => Err(e),
            (None, true) => Ok(()),
            (None, false) => Err(ProcessError::Exited),
        }
    }

    /// How each stage ended, once every one has.
    pub fn try_exits(&self) -> Option<Vec<ExitInfo>> {
        self.unit.stages.iter().map(Child::try_exit).collect()
    }

    /// How the pipeline ended, as a shell reports it, once every stage has: the last stage's
    /// exit, or under [`EndPolicy::AnyFailure`] the last failed stage's (as `pipefail`). CPU
    /// and peak memory are the stages' sums (they run at once), wall time the longest.
    pub fn try_exit(&self) -> Option<ExitInfo> {
        self.try_exits()
            .map(|exits| unit_exit(&exits, self.unit.end))
    }

    /// Whether every stage has exited.
    pub fn has_exited(&self) -> bool {
        self.unit.stages.iter().all(Child::has_exited)
    }

    /// Waits at most `timeout` (forever when `None`) for every stage to exit; `None` if one
    /// still runs at the deadline.
    pub async fn wait(&self, timeout: Option<Duration>) -> Option<Vec<ExitInfo>> {
        let all = async {
            let mut exits = Vec::with_capacity(self.unit.stages.len());
            for stage in &self.unit.stages {
                exits.push(stage.wait(None).await?);
            }
            Some(exits)
        };
        match timeout {
            None => all.await,
            Some(t) => tokio::time::timeout(t, all).await.ok().flatten(),
        }
    }

    /// Stops every stage still running (SIGTERM, SIGKILL after `grace`) and waits for all.
    pub async fn stop(&self, grace: Duration) -> Option<Vec<ExitInfo>> {
        self.unit.stop(grace).await;
        self.try_exits()
    }

    /// Kills every stage (SIGKILL) and waits for all.
    pub async fn kill(&self) -> Option<Vec<ExitInfo>> {
        self.unit.stop(Duration::ZERO).await;
        self.try_exits()
    }

    /// Waits for every stage to exit and its streams to end; what they left.
    pub async fn wait_with_output(&self) -> PipelineOutput {
        let mut exits = Vec::with_capacity(self.unit.stages.len());
        let mut stderr = Vec::with_capacity(self.unit.stages.len());
        let mut stdout = Vec::new();
        for (i, stage) in self.unit.stages.iter().enumerate() {
            let (exit, out, err) = stage.wait_with_output().await;
            exits.push(exit);
            stderr.push(err);
            if i + 1 == self.unit.stages.len() {
                stdout = out;
            }
        }
        PipelineOutput {
            exits,
            stdout,
            stderr,
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.ender.abort();
        for stage in &self.unit.stages {
            let _ = stage.signal(Signal::SIGKILL);
        }
    }
}
