//! What one persistent entry runs: a single program or a pipeline, behind one face (its
//! stdin is the first stage's, its stdout and stderr the last stage's, its exit the one a
//! shell would report).

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::child::{Child, ExitInfo};
use crate::error::ProcessError;
use crate::link::Link;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::spec::SpawnSpec;

/// What a persistent entry runs; kept, so a supervised entry can start it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitSpec {
    /// One program.
    Process(SpawnSpec),
    /// Programs whose output feeds the next.
    Pipeline(PipelineSpec),
}

/// One run of a [`UnitSpec`].
#[derive(Debug)]
// One per entry, behind an `Arc`: boxing the child would only add an indirection.
#[allow(clippy::large_enum_variant)]
pub(super) enum Unit {
    Process(Child),
    Pipeline(Pipeline),
}

impl Unit {
    pub(super) async fn start(spec: &UnitSpec) -> Result<Self, ProcessError> {
        Ok(match spec {
            UnitSpec::Process(spec) => Self::Process(Child::spawn(spec).await?),
            UnitSpec::Pipeline(spec) => Self::Pipeline(Pipeline::spawn(spec).await?),
        })
    }

    /// Every stage, in order (one for a single program).
    pub(super) fn stages(&self) -> &[Child] {
        match self {
            Self::Process(child) => std::slice::from_ref(child),
            Self::Pipeline(p) => p.stages(),
        }
    }

    /// The links between stages (none for a single program).
    pub(super) fn links(&self) -> &[Arc<Link>] {
        match self {
            Self::Process(_) => &[],
            Self::Pipeline(p) => p.links(),
        }
    }

    /// The stage whose stdin is the unit's.
    pub(super) fn first(&self) -> &Child {
        match self {
            Self::Process(child) => child,
            Self::Pipeline(p) => p.first(),
        }
    }

    /// The stage whose stdout and stderr are the unit's.
    pub(super) fn last(&self) -> &Child {
        match self {
            Self::Process(child) => child,
            Self::Pipeline(p) => p.last(),
        }
    }

    /// How it ended, once every stage has.
    pub(super) fn try_exit(&self) -> Option<ExitInfo> {
        match self {
            Self::Process(child) => child.try_exit(),
            Self::Pipeline(p) => p.try_exit(),
        }
    }

    /// Waits at most `timeout` (forever when `None`) for every stage to exit.
    pub(super) async fn wait(&self, timeout: Option<Duration>) -> Option<ExitInfo> {
        match self {
            Self::Process(child) => child.wait(timeout).await,
            Self::Pipeline(p) => {
                p.wait(timeout).await?;
                p.try_exit()
            }
        }
    }

    /// Sends `signal` to every stage's process group.
    pub(super) fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        match self {
            Self::Process(child) => child.signal(signal),
            Self::Pipeline(p) => p.signal(signal),
        }
    }

    /// SIGTERM, then SIGKILL after `grace` to what still runs (at once when zero).
    pub(super) async fn terminate(&self, grace: Duration) -> Option<ExitInfo> {
        if let Some(exit) = self.try_exit() {
            return Some(exit);
        }
        match self {
            Self::Process(child) => {
                if !grace.is_zero() {
                    let _ = child.signal(Signal::SIGTERM);
                    if let Some(exit) = child.wait(Some(grace)).await {
                        return Some(exit);
                    }
                }
                child.kill().await
            }
            Self::Pipeline(p) => p.stop(grace).await.and_then(|_| p.try_exit()),
        }
    }
}
