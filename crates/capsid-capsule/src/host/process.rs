//! `capsid:host/process`: native programs started for a capsule through `capsid-process`,
//! each checked against `process://exec...`, audited at start and at exit, and run in the
//! workspace with the limits, environment and sandbox the call and the manifest give.

use capsid_capabilities::Permissions;
use capsid_core::limits::{
    MAX_CAPSULE_CHILD_PIDS, MAX_CAPSULE_OUTPUT_RING_BYTES, MAX_LOG_READ_BYTES,
    MAX_STDIN_WRITE_BYTES,
};
use capsid_process::{
    Child, ExitInfo, ProcessError, ResourceLimits, RingPolicy, Sandbox, SpawnSpec,
};

use capsid_core::limits::MAX_BACKGROUND_PER_INSTANCE;
use capsid_process::Signal;
use std::sync::{Arc, Weak};

use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::bindings::capsid::host::process::{
    Chunk, Cursor, ExitInfo as WitExit, Host, HostBackground, Limits, Output, OutputStream,
    PersistentOptions, PipelineOptions, PipelineOutput, ProcessError as WitProcessError,
    ProcessStatus, SignalKind, SpawnOptions, Stage,
};
use crate::grants::{exec_resource, network_resource};
use capsid_manifest::SandboxPolicy;

use super::{BackgroundPipeline, CapsuleContext, HostState};

pub(super) fn wit_exit(e: ExitInfo) -> WitExit {
    WitExit {
        code: e.code,
        signal: e.signal,
        cpu_ms: e.cpu_ms,
        mem_bytes_peak: e.mem_bytes_peak,
        wall_ms: e.wall_ms,
    }
}

/// A background child in an instance's resource table.
pub struct BackgroundChild {
    child: Arc<Child>,
    program: String,
}

/// What a `subscribe-exit` pollable waits on: the child's reaping. It does not keep the
/// child alive (dropping the handle still kills it); once the child is gone it is ready.
struct ExitReady(Weak<Child>);

#[wasmtime_wasi::async_trait]
impl Pollable for ExitReady {
    async fn ready(&mut self) {
        if let Some(child) = self.0.upgrade() {
            let _ = child.wait(None).await;
        }
    }
}

/// What a `subscribe-output` pollable waits on: bytes in one of the child's rings, or the
/// stream's end. Ready at once when the child is gone.
struct OutputReady(Weak<Child>, OutputStream);

#[wasmtime_wasi::async_trait]
impl Pollable for OutputReady {
    async fn ready(&mut self) {
        if let Some(child) = self.0.upgrade() {
            match self.1 {
                OutputStream::Stdout => child.stdout().ready().await,
                OutputStream::Stderr => child.stderr().ready().await,
            }
        }
    }
}

pub(super) fn wit_error(e: ProcessError) -> WitProcessError {
    match e {
        ProcessError::Exited => WitProcessError::Exited,
        ProcessError::StdinClosed => WitProcessError::StdinClosed,
        ProcessError::Invalid(m) => WitProcessError::Invalid(m),
        ProcessError::ProgramNotFound(_) => WitProcessError::NotFound,
        ProcessError::CwdOutsideWorkspace { .. } => {
            WitProcessError::Invalid("the working directory is outside the workspace".into())
        }
        ProcessError::SandboxUnavailable => WitProcessError::SandboxUnavailable,
        ProcessError::PidsLimitUnavailable => WitProcessError::Unavailable(e.to_string()),
        other => WitProcessError::Failed(other.to_string()),
    }
}

/// The sandbox a capsule's programs run in; `network` only when `process://network/<capsule>`
/// is granted (where bwrap is missing, `Auto` isolates nothing, the network included).
pub(crate) fn sandbox_for(policy: SandboxPolicy, network: bool) -> Sandbox {
    match policy {
        SandboxPolicy::Auto => Sandbox::Auto { network },
        SandboxPolicy::Required => Sandbox::Required { network },
    }
}

fn limits(l: Limits) -> ResourceLimits {
    ResourceLimits {
        memory_bytes: l.memory_bytes,
        cpu_seconds: l.cpu_seconds,
        pids: l.pids,
        open_files: l.open_files,
    }
}

impl CapsuleContext {
    /// Checks (and records) the start of `program`; the spec to start it with.
    pub(super) async fn spawn_spec(
        &self,
        program: &str,
        options: &SpawnOptions,
        sandbox: SandboxPolicy,
    ) -> Result<SpawnSpec, WitProcessError> {
        let resource = exec_resource(program);
        self.authorize(
            capsid_audit::action::PROCESS_SPAWN,
            Permissions::EXEC,
            &resource,
            true,
        )
        .await
        .map_err(|_| WitProcessError::Denied)?;
        let mut spec = SpawnSpec::new(program, self.services.workspace.clone())
            .args(options.args.iter().cloned());
        spec.env.clone_from(&options.env);
        spec.cwd.clone_from(&options.cwd);
        spec.stdin = options.stdin.is_some();
        spec.limits = limits(options.limits);
        // Ceilings a capsule cannot lift: its children's output rings, and (where the host
        // can enforce it) how many tasks they may fork.
        if let Some(bytes) = options.output_limit {
            spec.ring_bytes = bytes as usize;
        }
        if spec.ring_bytes > MAX_CAPSULE_OUTPUT_RING_BYTES {
            return Err(WitProcessError::Invalid(format!(
                "output-limit is at most {MAX_CAPSULE_OUTPUT_RING_BYTES} bytes"
            )));
        }
        if capsid_process::pids_limit_available() {
            let asked = spec.limits.pids.unwrap_or(MAX_CAPSULE_CHILD_PIDS);
            spec.limits.pids = Some(asked.min(MAX_CAPSULE_CHILD_PIDS));
        }
        spec.ring_policy = RingPolicy::DropOldest;
        // Asked for in the manifest and granted (checked and recorded at each spawn): the
        // program shares the host's network; otherwise its namespace has loopback only.
        let network = self.uplink
            && self
                .authorize(
                    capsid_audit::action::PROCESS_NETWORK,
                    Permissions::EXEC,
                    &network_resource(&self.name),
                    true,
                )
                .await
                .is_ok();
        spec.sandbox = sandbox_for(sandbox, network);
        spec.sandbox_identity = self.services.sandbox_identity;
        Ok(spec)
    }

    /// Records how a child ended.
    pub(super) async fn record_exit(&self, program: &str, exit: Option<ExitInfo>) {
        let details = match exit {
            Some(e) => serde_json::json!({
                "code": e.code, "signal": e.signal, "cpu_ms": e.cpu_ms,
                "mem_bytes_peak": e.mem_bytes_peak, "wall_ms": e.wall_ms,
            }),
            None => serde_json::json!({ "exit": "unknown" }),
        };
        let _ = self
            .note(
                capsid_audit::action::PROCESS_EXIT,
                &exec_resource(program),
                capsid_audit::Decision::Info,
                &details,
            )
            .await;
    }
}

pub(super) fn signal(kind: SignalKind) -> Signal {
    match kind {
        SignalKind::Term => Signal::SIGTERM,
        SignalKind::Kill => Signal::SIGKILL,
        SignalKind::Interrupt => Signal::SIGINT,
        SignalKind::Hangup => Signal::SIGHUP,
        SignalKind::User1 => Signal::SIGUSR1,
        SignalKind::User2 => Signal::SIGUSR2,
        SignalKind::Stop => Signal::SIGSTOP,
        SignalKind::Continue => Signal::SIGCONT,
    }
}

/// Checks a stdin payload against its limit.
pub(super) fn check_stdin(bytes: Option<&Vec<u8>>) -> Result<(), WitProcessError> {
    if bytes.is_some_and(|b| b.len() > MAX_STDIN_WRITE_BYTES) {
        return Err(WitProcessError::Invalid(format!(
            "stdin is over the limit of {MAX_STDIN_WRITE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Everything a finished (or killed) child left in its rings.
fn output(child: &Child, exit: ExitInfo, stdout: Vec<u8>, stderr: Vec<u8>) -> Output {
    Output {
        exit: wit_exit(exit),
        stdout,
        stderr,
        stdout_dropped: child.stdout().dropped(),
        stderr_dropped: child.stderr().dropped(),
    }
}

/// What a handle that is no longer in the table answers: nothing ran.
fn nothing() -> Output {
    Output {
        exit: wit_exit(unseen()),
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_dropped: 0,
        stderr_dropped: 0,
    }
}

/// An exit that was never seen (the reaper could not reap): reported as all zeros.
pub(super) fn unseen() -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        cpu_ms: 0,
        mem_bytes_peak: 0,
        wall_ms: 0,
    }
}

impl HostState {
    /// The child behind `handle` and its program (owned, so no borrow of the state is held
    /// across an await).
    fn background(&self, handle: &Resource<BackgroundChild>) -> Option<(Arc<Child>, String)> {
        self.table
            .get(handle)
            .ok()
            .map(|b| (b.child.clone(), b.program.clone()))
    }
}

impl CapsuleContext {
    /// Starts `program` for this capsule, with `options.stdin` written (and, for a run to
    /// exit, closed).
    async fn start(
        &self,
        program: &str,
        options: &SpawnOptions,
        close_stdin: bool,
    ) -> Result<Child, WitProcessError> {
        check_stdin(options.stdin.as_ref())?;
        let cx = self;
        let spec = cx.spawn_spec(program, options, cx.process_sandbox).await?;
        let child = Child::spawn(&spec).await.map_err(wit_error)?;
        if let Some(bytes) = &options.stdin {
            // A child that exits without reading its input is not an error of the call.
            let _ = child.write_stdin(bytes).await;
            if close_stdin {
                child.close_stdin().await;
            }
        }
        Ok(child)
    }
}

impl HostBackground for HostState {
    async fn read_logs(
        &mut self,
        handle: Resource<BackgroundChild>,
        which: OutputStream,
        max: u32,
    ) -> Vec<u8> {
        let max = (max as usize).min(MAX_LOG_READ_BYTES);
        self.background(&handle)
            .map_or_else(Vec::new, |(child, _)| match which {
                OutputStream::Stdout => child.stdout().drain(max),
                OutputStream::Stderr => child.stderr().drain(max),
            })
    }

    async fn write_stdin(
        &mut self,
        handle: Resource<BackgroundChild>,
        bytes: Vec<u8>,
    ) -> Result<(), WitProcessError> {
        let (child, _) = self.background(&handle).ok_or(WitProcessError::Exited)?;
        child.write_stdin(&bytes).await.map_err(wit_error)
    }

    async fn close_stdin(&mut self, handle: Resource<BackgroundChild>) {
        if let Some((child, _)) = self.background(&handle) {
            child.close_stdin().await;
        }
    }

    async fn signal(
        &mut self,
        handle: Resource<BackgroundChild>,
        kind: SignalKind,
    ) -> Result<(), WitProcessError> {
        let (child, program) = self.background(&handle).ok_or(WitProcessError::Exited)?;
        let resource = exec_resource(&program);
        let result = child.signal(signal(kind)).map_err(wit_error);
        let details = serde_json::json!({ "signal": format!("{kind:?}"), "pid": child.pid() });
        let _ = self
            .cx
            .note(
                capsid_audit::action::PROCESS_SIGNAL,
                &resource,
                capsid_audit::Decision::Info,
                &details,
            )
            .await;
        result
    }

    async fn kill(&mut self, handle: Resource<BackgroundChild>) -> Output {
        let Some((child, program)) = self.background(&handle) else {
            return nothing();
        };
        let exit = child.kill().await;
        let (_, stdout, stderr) = child.wait_with_output().await;
        self.cx.record_exit(&program, exit).await;
        output(&child, exit.unwrap_or_else(unseen), stdout, stderr)
    }

    async fn wait(
        &mut self,
        handle: Resource<BackgroundChild>,
        timeout_ms: u32,
    ) -> Option<WitExit> {
        let (child, _) = self.background(&handle)?;
        let exit = child
            .wait(Some(std::time::Duration::from_millis(u64::from(
                timeout_ms,
            ))))
            .await?;
        Some(wit_exit(exit))
    }

    async fn wait_with_output(&mut self, handle: Resource<BackgroundChild>) -> Output {
        let Some((child, program)) = self.background(&handle) else {
            return nothing();
        };
        let (exit, stdout, stderr) = child.wait_with_output().await;
        self.cx.record_exit(&program, exit).await;
        output(&child, exit.unwrap_or_else(unseen), stdout, stderr)
    }

    async fn os_pid(&mut self, handle: Resource<BackgroundChild>) -> u32 {
        self.background(&handle).map_or(0, |(child, _)| child.pid())
    }

    async fn subscribe_exit(
        &mut self,
        handle: Resource<BackgroundChild>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let child = Arc::downgrade(&self.table.get(&handle)?.child);
        let ready = self.table.push(ExitReady(child))?;
        subscribe(&mut self.table, ready)
    }

    async fn subscribe_output(
        &mut self,
        handle: Resource<BackgroundChild>,
        which: OutputStream,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let child = Arc::downgrade(&self.table.get(&handle)?.child);
        let ready = self.table.push(OutputReady(child, which))?;
        subscribe(&mut self.table, ready)
    }

    async fn drop(&mut self, handle: Resource<BackgroundChild>) -> wasmtime::Result<()> {
        // Dropping the child kills its group; its reaper reaps it.
        let b = self.table.delete(handle)?;
        self.backgrounds = self.backgrounds.saturating_sub(1);
        drop(b);
        Ok(())
    }
}

impl Host for HostState {
    async fn spawn_persistent(
        &mut self,
        program: String,
        options: SpawnOptions,
        persistent: PersistentOptions,
    ) -> Result<String, WitProcessError> {
        self.cx
            .spawn_persistent(&program, &options, persistent)
            .await
    }

    async fn spawn_pipeline_persistent(
        &mut self,
        stages: Vec<Stage>,
        options: PipelineOptions,
        persistent: PersistentOptions,
    ) -> Result<String, WitProcessError> {
        self.cx
            .spawn_pipeline_persistent(&stages, &options, persistent)
            .await
    }

    async fn read_stage_since(
        &mut self,
        id: String,
        stage: u32,
        which: OutputStream,
        cursor: Option<Cursor>,
        max: u32,
    ) -> Result<Chunk, WitProcessError> {
        self.cx.read_stage_since(&id, stage, which, cursor, max)
    }

    async fn read_link_tap(
        &mut self,
        id: String,
        link: u32,
        max: u32,
    ) -> Result<Vec<u8>, WitProcessError> {
        self.cx.read_link_tap(&id, link, max)
    }

    async fn stats_history(
        &mut self,
        id: String,
    ) -> Result<Vec<crate::bindings::capsid::host::process::StatsSample>, WitProcessError> {
        self.cx.stats_history(&id)
    }

    async fn list_persistent(&mut self, label: Option<String>) -> Vec<ProcessStatus> {
        self.cx.list_persistent(label.as_deref())
    }

    async fn status(&mut self, id: String) -> Result<ProcessStatus, WitProcessError> {
        self.cx.persistent_status(&id)
    }

    async fn status_many(
        &mut self,
        ids: Vec<String>,
    ) -> Result<Vec<Result<ProcessStatus, WitProcessError>>, WitProcessError> {
        self.cx.status_many(&ids)
    }

    async fn read_logs(
        &mut self,
        id: String,
        which: OutputStream,
        max: u32,
    ) -> Result<Vec<u8>, WitProcessError> {
        self.cx.persistent_read_logs(&id, which, max)
    }

    async fn read_since(
        &mut self,
        id: String,
        which: OutputStream,
        cursor: Option<Cursor>,
        max: u32,
    ) -> Result<Chunk, WitProcessError> {
        self.cx.read_since(&id, which, cursor, max)
    }

    async fn write_stdin(&mut self, id: String, bytes: Vec<u8>) -> Result<(), WitProcessError> {
        self.cx.persistent_write_stdin(&id, &bytes).await
    }

    async fn close_stdin(&mut self, id: String) -> Result<(), WitProcessError> {
        self.cx.persistent_close_stdin(&id).await
    }

    async fn signal(&mut self, id: String, kind: SignalKind) -> Result<(), WitProcessError> {
        self.cx.persistent_signal(&id, kind).await
    }

    async fn wait(
        &mut self,
        id: String,
        timeout_ms: u32,
    ) -> Result<Option<WitExit>, WitProcessError> {
        self.cx.persistent_wait(&id, timeout_ms).await
    }

    async fn stop(
        &mut self,
        id: String,
        grace_ms: u32,
    ) -> Result<Option<WitExit>, WitProcessError> {
        self.cx.persistent_stop(&id, grace_ms).await
    }

    async fn release(&mut self, id: String) -> Result<WitExit, WitProcessError> {
        self.cx.release(&id).await
    }

    async fn watch(&mut self, id: String, on: bool) -> Result<(), WitProcessError> {
        self.cx.watch(&id, on)
    }

    async fn spawn_background(
        &mut self,
        program: String,
        options: SpawnOptions,
    ) -> Result<Resource<BackgroundChild>, WitProcessError> {
        if self.backgrounds >= MAX_BACKGROUND_PER_INSTANCE {
            return Err(WitProcessError::Unavailable(format!(
                "at most {MAX_BACKGROUND_PER_INSTANCE} background children per instance"
            )));
        }
        let child = self.cx.start(&program, &options, false).await?;
        let handle = self
            .table
            .push(BackgroundChild {
                child: Arc::new(child),
                program,
            })
            .map_err(|e| WitProcessError::Failed(e.to_string()))?;
        self.backgrounds += 1;
        Ok(handle)
    }

    async fn spawn_pipeline(
        &mut self,
        stages: Vec<Stage>,
        options: PipelineOptions,
    ) -> Result<PipelineOutput, WitProcessError> {
        self.cx.run_pipeline(&stages, &options).await
    }

    async fn spawn_pipeline_background(
        &mut self,
        stages: Vec<Stage>,
        options: PipelineOptions,
    ) -> Result<Resource<BackgroundPipeline>, WitProcessError> {
        self.start_background_pipeline(&stages, &options).await
    }

    async fn spawn(
        &mut self,
        program: String,
        options: SpawnOptions,
    ) -> Result<Output, WitProcessError> {
        let child = self.cx.start(&program, &options, true).await?;
        // If the call's deadline drops this future, dropping `child` kills its group.
        let (exit, stdout, stderr) = child.wait_with_output().await;
        self.cx.record_exit(&program, exit).await;
        let exit = exit.ok_or_else(|| WitProcessError::Failed("the exit was not seen".into()))?;
        Ok(output(&child, exit, stdout, stderr))
    }
}
