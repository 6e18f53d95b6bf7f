//! `capsid:host/process.spawn-pipeline` (run to its end) and `spawn-pipeline-background` (the
//! `pipeline` resource): several programs run as one unit through `capsid-process`'s
//! [`Pipeline`]. Every stage is checked and recorded as a spawn is, all of them before any
//! starts; each stage's exit is recorded as a child's is.

use std::sync::{Arc, Weak};
use std::time::Duration;

use capsid_core::limits::{
    DEFAULT_STOP_GRACE, MAX_BACKGROUND_PER_INSTANCE, MAX_CAPSULE_CHILD_PIDS,
    MAX_CAPSULE_OUTPUT_RING_BYTES, MAX_LOG_READ_BYTES, MAX_PIPELINE_GRACE, MAX_PIPELINE_STAGES,
    MIN_OUTPUT_RING_BYTES,
};
use capsid_process::{Child, EndPolicy as ProcessEndPolicy, Link, Pipeline, PipelineSpec};
use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::process::{check_stdin, signal, unseen, wit_error, wit_exit};
use super::{CapsuleContext, HostState};
use crate::bindings::capsid::host::process::{
    EndPolicy, ExitInfo as WitExit, HostPipeline, LinkStatus, OutputStream, PipelineOptions,
    PipelineOutput, ProcessError as WitProcessError, SignalKind, Stage,
};
use crate::grants::exec_resource;

pub(super) fn link_status(link: &Link) -> LinkStatus {
    LinkStatus {
        bytes: link.bytes(),
        rate: link.rate(),
        ended: link.has_ended(),
    }
}

impl CapsuleContext {
    /// Checks `stages` and `options` and authorizes (and records) every stage; the pipeline
    /// to start. Nothing starts unless every stage may.
    pub(super) async fn pipeline_spec(
        &self,
        stages: &[Stage],
        options: &PipelineOptions,
    ) -> Result<PipelineSpec, WitProcessError> {
        let invalid = |m: String| Err(WitProcessError::Invalid(m));
        if !(1..=MAX_PIPELINE_STAGES).contains(&stages.len()) {
            return invalid(format!(
                "a pipeline has 1 to {MAX_PIPELINE_STAGES} stages, not {}",
                stages.len()
            ));
        }
        for (i, stage) in stages.iter().enumerate() {
            if i > 0 && stage.options.stdin.is_some() {
                return invalid(format!(
                    "stage {i} sets stdin: only the first stage's is given, the others read \
                     the stage before"
                ));
            }
            if stage.options.limits.pids.is_some() {
                return invalid(format!(
                    "stage {i} sets limits.pids: set pipeline-options.pids, which covers \
                     every stage"
                ));
            }
        }
        check_stdin(stages[0].options.stdin.as_ref())?;
        if options.taps.len() >= stages.len() {
            return invalid(format!(
                "{} taps for {} links",
                options.taps.len(),
                stages.len() - 1
            ));
        }
        let tap_range = MIN_OUTPUT_RING_BYTES..=MAX_CAPSULE_OUTPUT_RING_BYTES;
        if let Some(bytes) = options
            .taps
            .iter()
            .flatten()
            .find(|&&b| !tap_range.contains(&(b as usize)))
        {
            return invalid(format!(
                "a tap keeps {MIN_OUTPUT_RING_BYTES} to {MAX_CAPSULE_OUTPUT_RING_BYTES} bytes, \
                 not {bytes}"
            ));
        }
        let grace = options.grace_ms.map_or(DEFAULT_STOP_GRACE, |ms| {
            Duration::from_millis(u64::from(ms))
        });
        if grace > MAX_PIPELINE_GRACE {
            return invalid(format!(
                "grace-ms is at most {}",
                MAX_PIPELINE_GRACE.as_millis()
            ));
        }
        let mut specs = Vec::with_capacity(stages.len());
        for stage in stages {
            let mut spec = self
                .spawn_spec(&stage.program, &stage.options, self.process_sandbox)
                .await?;
            // The pipeline's limit covers the stages (set below), not one of their own each.
            spec.limits.pids = None;
            specs.push(spec);
        }
        let pids = if capsid_process::pids_limit_available() {
            Some(
                options
                    .pids
                    .unwrap_or(MAX_CAPSULE_CHILD_PIDS)
                    .min(MAX_CAPSULE_CHILD_PIDS),
            )
        } else {
            // Asked for where it cannot be enforced: the start fails with `unavailable`.
            options.pids
        };
        Ok(PipelineSpec {
            stages: specs,
            pids,
            end: match options.end {
                EndPolicy::LastStage => ProcessEndPolicy::LastStage,
                EndPolicy::AnyFailure => ProcessEndPolicy::AnyFailure,
            },
            grace,
            taps: options.taps.iter().map(|t| t.map(|b| b as usize)).collect(),
        })
    }

    /// Checks and starts a pipeline, its first stage given `stdin` (and, for a run to its
    /// end, that stdin then closed).
    async fn start_pipeline(
        &self,
        stages: &[Stage],
        options: &PipelineOptions,
        close_stdin: bool,
    ) -> Result<Pipeline, WitProcessError> {
        let spec = self.pipeline_spec(stages, options).await?;
        let pipeline = Pipeline::spawn(&spec).await.map_err(wit_error)?;
        if let Some(bytes) = &stages[0].options.stdin {
            // A first stage that exits without reading its input is not an error of the call.
            let _ = pipeline.first().write_stdin(bytes).await;
        }
        if close_stdin {
            pipeline.first().close_stdin().await;
        }
        Ok(pipeline)
    }

    /// Waits for `pipeline` to end (killed first when `kill`), records each stage's exit,
    /// and returns what it left.
    async fn finish_pipeline(
        &self,
        pipeline: &Pipeline,
        programs: &[String],
        kill: bool,
    ) -> PipelineOutput {
        if kill {
            pipeline.kill().await;
        }
        let out = pipeline.wait_with_output().await;
        for (program, exit) in programs.iter().zip(&out.exits) {
            self.record_exit(program, *exit).await;
        }
        PipelineOutput {
            exits: out
                .exits
                .iter()
                .map(|e| wit_exit(e.unwrap_or_else(unseen)))
                .collect(),
            stdout: out.stdout,
            stdout_dropped: pipeline.last().stdout().dropped(),
            stderr: out.stderr,
            stderr_dropped: pipeline
                .stages()
                .iter()
                .map(|s| s.stderr().dropped())
                .collect(),
            links: pipeline.links().iter().map(|l| link_status(l)).collect(),
            taps: pipeline
                .links()
                .iter()
                .map(|l| l.tap().map_or_else(Vec::new, |t| t.drain(usize::MAX)))
                .collect(),
        }
    }

    /// Runs a pipeline to its end (the call's deadline drops it, which kills every stage).
    pub(super) async fn run_pipeline(
        &self,
        stages: &[Stage],
        options: &PipelineOptions,
    ) -> Result<PipelineOutput, WitProcessError> {
        let pipeline = self.start_pipeline(stages, options, true).await?;
        let programs: Vec<String> = stages.iter().map(|s| s.program.clone()).collect();
        Ok(self.finish_pipeline(&pipeline, &programs, false).await)
    }
}

/// A pipeline in an instance's resource table.
pub struct BackgroundPipeline {
    pipeline: Arc<Pipeline>,
    programs: Vec<String>,
}

/// What a `subscribe-exit` pollable waits on: every stage's reaping. It does not keep the
/// pipeline alive; once the pipeline is gone it is ready.
struct PipelineExited(Weak<Pipeline>);

#[wasmtime_wasi::async_trait]
impl Pollable for PipelineExited {
    async fn ready(&mut self) {
        if let Some(pipeline) = self.0.upgrade() {
            let _ = pipeline.wait(None).await;
        }
    }
}

/// What a `subscribe-output` pollable waits on: bytes in one stage's ring, or the stream's
/// end. Ready at once for a stage that does not exist, or once the pipeline is gone.
struct StageOutput(Weak<Pipeline>, usize, OutputStream);

#[wasmtime_wasi::async_trait]
impl Pollable for StageOutput {
    async fn ready(&mut self) {
        if let Some(pipeline) = self.0.upgrade()
            && let Some(stage) = pipeline.stages().get(self.1)
        {
            match self.2 {
                OutputStream::Stdout => stage.stdout().ready().await,
                OutputStream::Stderr => stage.stderr().ready().await,
            }
        }
    }
}

impl HostState {
    /// Starts a background pipeline for this instance.
    pub(super) async fn start_background_pipeline(
        &mut self,
        stages: &[Stage],
        options: &PipelineOptions,
    ) -> Result<Resource<BackgroundPipeline>, WitProcessError> {
        // Each stage is a background child: a pipeline cannot multiply the instance's cap.
        // (A stage count out of range is refused as invalid below.)
        if (1..=MAX_PIPELINE_STAGES).contains(&stages.len())
            && self.backgrounds + stages.len() > MAX_BACKGROUND_PER_INSTANCE
        {
            return Err(WitProcessError::Unavailable(format!(
                "at most {MAX_BACKGROUND_PER_INSTANCE} background children per instance, \
                 each stage of a pipeline one"
            )));
        }
        let pipeline = self.cx.start_pipeline(stages, options, false).await?;
        let handle = self
            .table
            .push(BackgroundPipeline {
                pipeline: Arc::new(pipeline),
                programs: stages.iter().map(|s| s.program.clone()).collect(),
            })
            .map_err(|e| WitProcessError::Failed(e.to_string()))?;
        self.backgrounds += stages.len();
        Ok(handle)
    }

    /// The pipeline behind `handle` and its programs (owned, so no borrow of the state is
    /// held across an await).
    fn pipeline(
        &self,
        handle: &Resource<BackgroundPipeline>,
    ) -> Option<(Arc<Pipeline>, Vec<String>)> {
        self.table
            .get(handle)
            .ok()
            .map(|b| (b.pipeline.clone(), b.programs.clone()))
    }
}

/// What a handle no longer in the table answers: nothing ran.
fn nothing() -> PipelineOutput {
    PipelineOutput {
        exits: Vec::new(),
        stdout: Vec::new(),
        stdout_dropped: 0,
        stderr: Vec::new(),
        stderr_dropped: Vec::new(),
        links: Vec::new(),
        taps: Vec::new(),
    }
}

impl HostPipeline for HostState {
    async fn read_logs(
        &mut self,
        handle: Resource<BackgroundPipeline>,
        stage: u32,
        which: OutputStream,
        max: u32,
    ) -> Vec<u8> {
        let max = (max as usize).min(MAX_LOG_READ_BYTES);
        let Some((pipeline, _)) = self.pipeline(&handle) else {
            return Vec::new();
        };
        let Some(child) = pipeline.stages().get(stage as usize) else {
            return Vec::new();
        };
        match which {
            OutputStream::Stdout => child.stdout().drain(max),
            OutputStream::Stderr => child.stderr().drain(max),
        }
    }

    async fn read_tap(
        &mut self,
        handle: Resource<BackgroundPipeline>,
        link: u32,
        max: u32,
    ) -> Vec<u8> {
        let max = (max as usize).min(MAX_LOG_READ_BYTES);
        self.pipeline(&handle)
            .and_then(|(p, _)| p.links().get(link as usize)?.tap().map(|t| t.drain(max)))
            .unwrap_or_default()
    }

    async fn write_stdin(
        &mut self,
        handle: Resource<BackgroundPipeline>,
        bytes: Vec<u8>,
    ) -> Result<(), WitProcessError> {
        let (pipeline, _) = self.pipeline(&handle).ok_or(WitProcessError::Exited)?;
        pipeline
            .first()
            .write_stdin(&bytes)
            .await
            .map_err(wit_error)
    }

    async fn close_stdin(&mut self, handle: Resource<BackgroundPipeline>) {
        if let Some((pipeline, _)) = self.pipeline(&handle) {
            pipeline.first().close_stdin().await;
        }
    }

    async fn signal(
        &mut self,
        handle: Resource<BackgroundPipeline>,
        kind: SignalKind,
    ) -> Result<(), WitProcessError> {
        let (pipeline, programs) = self.pipeline(&handle).ok_or(WitProcessError::Exited)?;
        let result = pipeline.signal(signal(kind)).map_err(wit_error);
        let pids: Vec<u32> = pipeline.stages().iter().map(Child::pid).collect();
        let details = serde_json::json!({
            "signal": format!("{kind:?}"), "pipeline": programs, "pids": pids,
        });
        let _ = self
            .cx
            .note(
                capsid_audit::action::PROCESS_SIGNAL,
                &exec_resource(&programs[0]),
                capsid_audit::Decision::Info,
                &details,
            )
            .await;
        result
    }

    async fn kill(&mut self, handle: Resource<BackgroundPipeline>) -> PipelineOutput {
        let Some((pipeline, programs)) = self.pipeline(&handle) else {
            return nothing();
        };
        self.cx.finish_pipeline(&pipeline, &programs, true).await
    }

    async fn wait(
        &mut self,
        handle: Resource<BackgroundPipeline>,
        timeout_ms: u32,
    ) -> Option<Vec<WitExit>> {
        let (pipeline, _) = self.pipeline(&handle)?;
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let exits = pipeline.wait(Some(timeout)).await?;
        Some(exits.into_iter().map(wit_exit).collect())
    }

    async fn wait_with_output(&mut self, handle: Resource<BackgroundPipeline>) -> PipelineOutput {
        let Some((pipeline, programs)) = self.pipeline(&handle) else {
            return nothing();
        };
        self.cx.finish_pipeline(&pipeline, &programs, false).await
    }

    async fn links(&mut self, handle: Resource<BackgroundPipeline>) -> Vec<LinkStatus> {
        self.pipeline(&handle)
            .map(|(p, _)| p.links().iter().map(|l| link_status(l)).collect())
            .unwrap_or_default()
    }

    async fn subscribe_exit(
        &mut self,
        handle: Resource<BackgroundPipeline>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let pipeline = Arc::downgrade(&self.table.get(&handle)?.pipeline);
        let ready = self.table.push(PipelineExited(pipeline))?;
        subscribe(&mut self.table, ready)
    }

    async fn subscribe_output(
        &mut self,
        handle: Resource<BackgroundPipeline>,
        stage: u32,
        which: OutputStream,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let pipeline = Arc::downgrade(&self.table.get(&handle)?.pipeline);
        let ready = self
            .table
            .push(StageOutput(pipeline, stage as usize, which))?;
        subscribe(&mut self.table, ready)
    }

    async fn drop(&mut self, handle: Resource<BackgroundPipeline>) -> wasmtime::Result<()> {
        // Dropping the pipeline kills every stage; their reapers reap them.
        let b = self.table.delete(handle)?;
        self.backgrounds = self.backgrounds.saturating_sub(b.programs.len());
        drop(b);
        Ok(())
    }
}
