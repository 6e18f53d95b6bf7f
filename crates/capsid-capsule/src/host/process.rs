//! `capsid:host/process`: native programs started for a capsule through `capsid-process`,
//! each checked against `process://exec...`, audited at start and at exit, and run in the
//! workspace with the limits, environment and sandbox the call and the manifest give.

use capsid_capabilities::Permissions;
use capsid_core::limits::MAX_STDIN_WRITE_BYTES;
use capsid_process::{
    Child, ExitInfo, ProcessError, ResourceLimits, RingPolicy, Sandbox, SpawnSpec,
};

use crate::bindings::capsid::host::process::{
    ExitInfo as WitExit, Host, Limits, Output, ProcessError as WitProcessError, SpawnOptions,
};
use crate::grants::exec_resource;
use crate::manifest::SandboxPolicy;

use super::{CapsuleContext, HostState};

fn wit_exit(e: ExitInfo) -> WitExit {
    WitExit {
        code: e.code,
        signal: e.signal,
        cpu_ms: e.cpu_ms,
        mem_bytes_peak: e.mem_bytes_peak,
        wall_ms: e.wall_ms,
    }
}

fn wit_error(e: ProcessError) -> WitProcessError {
    match e {
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

/// The sandbox a capsule's programs run in. Children never get the network: nothing grants
/// it yet.
pub(crate) fn sandbox_for(policy: SandboxPolicy) -> Sandbox {
    match policy {
        SandboxPolicy::Auto => Sandbox::Auto { network: false },
        SandboxPolicy::Required => Sandbox::Required { network: false },
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
    async fn spawn_spec(
        &self,
        program: &str,
        options: &SpawnOptions,
        sandbox: SandboxPolicy,
    ) -> Result<SpawnSpec, WitProcessError> {
        let resource = exec_resource(program);
        self.authorize("process.spawn", Permissions::EXEC, &resource, true)
            .await
            .map_err(|_| WitProcessError::Denied)?;
        let mut spec = SpawnSpec::new(program, self.services.workspace.clone())
            .args(options.args.iter().cloned());
        spec.env.clone_from(&options.env);
        spec.cwd.clone_from(&options.cwd);
        spec.stdin = options.stdin.is_some();
        spec.limits = limits(options.limits);
        if let Some(bytes) = options.output_limit {
            spec.ring_bytes = bytes as usize;
        }
        spec.ring_policy = RingPolicy::DropOldest;
        spec.sandbox = sandbox_for(sandbox);
        Ok(spec)
    }

    /// Records how a child ended.
    async fn record_exit(&self, program: &str, exit: Option<ExitInfo>) {
        let details = match exit {
            Some(e) => serde_json::json!({
                "code": e.code, "signal": e.signal, "cpu_ms": e.cpu_ms,
                "mem_bytes_peak": e.mem_bytes_peak, "wall_ms": e.wall_ms,
            }),
            None => serde_json::json!({ "exit": "unknown" }),
        };
        let _ = self
            .note(
                "process.exit",
                &exec_resource(program),
                capsid_audit::Decision::Info,
                &details,
            )
            .await;
    }
}

impl Host for HostState {
    async fn spawn(
        &mut self,
        program: String,
        options: SpawnOptions,
    ) -> Result<Output, WitProcessError> {
        if options
            .stdin
            .as_ref()
            .is_some_and(|b| b.len() > MAX_STDIN_WRITE_BYTES)
        {
            return Err(WitProcessError::Invalid(format!(
                "stdin is over the limit of {MAX_STDIN_WRITE_BYTES} bytes"
            )));
        }
        let cx = &self.cx;
        let spec = cx
            .spawn_spec(&program, &options, cx.process_sandbox)
            .await?;
        let child = Child::spawn(&spec).await.map_err(wit_error)?;
        if let Some(bytes) = &options.stdin {
            // A child that exits without reading its input is not an error of the call.
            let _ = child.write_stdin(bytes).await;
            child.close_stdin().await;
        }
        // If the call's deadline drops this future, dropping `child` kills its group.
        let (exit, stdout, stderr) = child.wait_with_output().await;
        cx.record_exit(&program, exit).await;
        let exit = exit.ok_or_else(|| WitProcessError::Failed("the exit was not seen".into()))?;
        Ok(Output {
            exit: wit_exit(exit),
            stdout,
            stderr,
            stdout_dropped: child.stdout().dropped(),
            stderr_dropped: child.stderr().dropped(),
        })
    }
}
