//! The persistent half of `capsid:host/process`: processes and pipelines that outlive the
//! call, kept in the registry's [`ProcessTable`] under the capsule's [`Owner`], reached by id.
//! A supervised one is restarted by the table; each restart asks its gate, which checks the
//! capsule's grants again (and records the checks) as the first start did.

use std::sync::Arc;
use std::time::Duration;

use capsid_capabilities::{Permissions, Subject};
use capsid_core::limits::{
    DEFAULT_EXIT_RETENTION, MAX_LOG_READ_BYTES, MAX_PERSISTENT_RESTARTS, MAX_RESTART_BACKOFF,
    MIN_RESTART_BACKOFF, PERSISTENT_STDIN_WAIT,
};
use capsid_process::{
    Cursor, Owner, PersistentOptions, RestartPolicy, Sandbox, SpawnSpec, StartGate, Status, Stream,
    TableError, UnitSpec,
};

use crate::bindings::capsid::host::process::{
    Chunk as WitChunk, Cursor as WitCursor, ExitInfo as WitExit, LinkStatus, OutputStream,
    PersistentOptions as WitOptions, PipelineOptions, ProcessError as WitProcessError,
    ProcessStatus, RestartOptions, SignalKind, SpawnOptions, Stage, StageStatus, StatsSample,
};
use crate::grants::{exec_resource, network_resource, persistent_resource};

use super::process::{check_stdin, signal, wit_error, wit_exit};
use super::{CapsuleContext, HostServices};

pub(super) fn table_error(e: TableError) -> WitProcessError {
    match e {
        TableError::NoSuchProcess => WitProcessError::NoSuchProcess,
        TableError::TooManyRunning => WitProcessError::TooManyRunning,
        TableError::TooManyRetained => WitProcessError::TooManyRetained,
        TableError::StillRunning => WitProcessError::StillRunning,
        TableError::ForeignCursor => WitProcessError::ForeignCursor,
        TableError::Invalid(m) => WitProcessError::Invalid(m),
        TableError::OwnerClosed | TableError::AlreadyRunning => {
            WitProcessError::Failed(e.to_string())
        }
        TableError::Process(p) => wit_error(p),
    }
}

fn status(s: Status) -> ProcessStatus {
    let stages = s
        .stages
        .iter()
        .map(|st| StageStatus {
            pid: st.pid,
            exit: st.exit.map(wit_exit),
            stderr_pending: st.stderr_pending as u64,
            stderr_dropped: st.stderr_dropped,
        })
        .collect();
    let links = s
        .links
        .iter()
        .map(|l| LinkStatus {
            bytes: l.bytes,
            rate: l.rate,
            ended: l.ended,
        })
        .collect();
    ProcessStatus {
        label: s.label,
        generation: s.generation,
        pid: s.pid,
        started_ms: s.started_ms,
        exit: s.exit.map(wit_exit),
        stdout_pending: s.stdout_pending as u64,
        stderr_pending: s.stderr_pending as u64,
        stdout_dropped: s.stdout_dropped,
        stderr_dropped: s.stderr_dropped,
        restarts: s.restart.restarts,
        retry_in_ms: s
            .restart
            .retry_in
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        gave_up: s.restart.gave_up,
        stages,
        links,
        stats: s.stats.map(stats_sample),
    }
}

pub(super) fn stats_sample(s: capsid_process::Sample) -> StatsSample {
    StatsSample {
        at_ms: s.at_ms,
        cpu_percent: s.cpu_percent,
        rss_bytes: s.rss_bytes,
        tasks: u32::try_from(s.processes).unwrap_or(u32::MAX),
    }
}

/// The table's restart policy for `asked`, checked against the limits.
fn restart_policy(asked: Option<RestartOptions>) -> Result<Option<RestartPolicy>, WitProcessError> {
    let Some(asked) = asked else {
        return Ok(None);
    };
    if asked.max_restarts > MAX_PERSISTENT_RESTARTS {
        return Err(WitProcessError::Invalid(format!(
            "max-restarts is at most {MAX_PERSISTENT_RESTARTS}"
        )));
    }
    let defaults = RestartPolicy::default();
    let backoff = |ms: Option<u32>, default: Duration, what: &str| {
        let wait = ms.map_or(default, |ms| Duration::from_millis(u64::from(ms)));
        if (MIN_RESTART_BACKOFF..=MAX_RESTART_BACKOFF).contains(&wait) {
            Ok(wait)
        } else {
            Err(WitProcessError::Invalid(format!(
                "{what} is {} to {} ms",
                MIN_RESTART_BACKOFF.as_millis(),
                MAX_RESTART_BACKOFF.as_millis()
            )))
        }
    };
    let initial_backoff = backoff(
        asked.initial_backoff_ms,
        defaults.initial_backoff,
        "initial-backoff-ms",
    )?;
    let max_backoff = backoff(asked.max_backoff_ms, defaults.max_backoff, "max-backoff-ms")?;
    Ok(Some(RestartPolicy {
        initial_backoff,
        max_backoff: max_backoff.max(initial_backoff),
        max_restarts: asked.max_restarts,
        ..defaults
    }))
}

/// What a restart asks first: the capsule may still run persistent processes and every
/// program of `specs`, with the network when they had it. Checked without the client
/// session the first start may have had (a grant bound to it does not carry over), and
/// without asking anyone; every check is recorded.
pub(crate) fn restart_gate(
    services: HostServices,
    subject: Subject,
    name: &capsid_core::CapsuleId,
    specs: &[SpawnSpec],
) -> StartGate {
    let mut checks = vec![(
        capsid_audit::action::PROCESS_PERSISTENT,
        persistent_resource(name),
    )];
    for spec in specs {
        checks.push((
            capsid_audit::action::PROCESS_SPAWN,
            exec_resource(&spec.program),
        ));
    }
    let networked = specs.iter().any(|s| {
        matches!(
            s.sandbox,
            Sandbox::Auto { network: true } | Sandbox::Required { network: true }
        )
    });
    if networked {
        checks.push((
            capsid_audit::action::PROCESS_NETWORK,
            network_resource(name),
        ));
    }
    let subject = Subject {
        session: None,
        ..subject
    };
    let checks = Arc::new(checks);
    Arc::new(move || {
        let (services, subject, checks) = (services.clone(), subject.clone(), checks.clone());
        Box::pin(async move {
            for (action, resource) in checks.iter() {
                let details = serde_json::json!({ "restart": true });
                services
                    .authorize(&subject, action, Permissions::EXEC, resource, true, details)
                    .await
                    .map_err(|e| format!("{resource}: {e}"))?;
            }
            Ok(())
        })
    })
}

fn stream(which: OutputStream) -> Stream {
    match which {
        OutputStream::Stdout => Stream::Stdout,
        OutputStream::Stderr => Stream::Stderr,
    }
}

fn wit_chunk(chunk: capsid_process::Chunk) -> WitChunk {
    WitChunk {
        bytes: chunk.bytes,
        next: WitCursor {
            generation: chunk.next.generation,
            offset: chunk.next.offset,
        },
        missed: chunk.missed,
    }
}

fn read_max(max: u32) -> usize {
    (max as usize).min(MAX_LOG_READ_BYTES)
}

impl CapsuleContext {
    fn owner(&self) -> Owner {
        Owner {
            principal: self.subject.principal,
            capsule: self.name.clone(),
        }
    }

    pub(super) async fn spawn_persistent(
        &self,
        program: &str,
        options: &SpawnOptions,
        persistent: WitOptions,
    ) -> Result<String, WitProcessError> {
        check_stdin(options.stdin.as_ref())?;
        let restart = self
            .persistent_allowed(
                &persistent,
                options.stdin.as_ref().is_some_and(|b| !b.is_empty()),
            )
            .await?;
        let spec = self
            .spawn_spec(program, options, self.process_sandbox)
            .await?;
        self.start_persistent(
            UnitSpec::Process(spec),
            persistent,
            restart,
            options.stdin.as_deref(),
        )
        .await
    }

    pub(super) async fn spawn_pipeline_persistent(
        &self,
        stages: &[Stage],
        options: &PipelineOptions,
        persistent: WitOptions,
    ) -> Result<String, WitProcessError> {
        let stdin = stages.first().and_then(|s| s.options.stdin.as_deref());
        let restart = self
            .persistent_allowed(&persistent, stdin.is_some_and(|b| !b.is_empty()))
            .await?;
        let spec = self.pipeline_spec(stages, options).await?;
        self.start_persistent(UnitSpec::Pipeline(spec), persistent, restart, stdin)
            .await
    }

    /// Checks the persistent options and the capsule's `process_persistent` grant; the
    /// restart policy asked for.
    async fn persistent_allowed(
        &self,
        persistent: &WitOptions,
        has_stdin: bool,
    ) -> Result<Option<RestartPolicy>, WitProcessError> {
        let restart = restart_policy(persistent.restart)?;
        if (restart.is_some() || persistent.survive_restart) && has_stdin {
            // A restart could not give the new run the same input.
            return Err(WitProcessError::Invalid(
                "restart and survive-restart cannot replay an initial stdin: give an empty \
                 one (its pipe stays open) and write to it with write-stdin"
                    .into(),
            ));
        }
        self.authorize(
            capsid_audit::action::PROCESS_PERSISTENT,
            Permissions::EXEC,
            &persistent_resource(&self.name),
            false,
        )
        .await
        .map_err(|_| WitProcessError::Denied)?;
        Ok(restart)
    }

    /// Starts `spec` in the table and gives it `stdin`.
    async fn start_persistent(
        &self,
        spec: UnitSpec,
        persistent: WitOptions,
        restart: Option<RestartPolicy>,
        stdin: Option<&[u8]>,
    ) -> Result<String, WitProcessError> {
        let gate = restart.map(|_| {
            let specs = match &spec {
                UnitSpec::Process(s) => std::slice::from_ref(s),
                UnitSpec::Pipeline(p) => p.stages.as_slice(),
            };
            restart_gate(
                self.services.clone(),
                self.subject.clone(),
                &self.name,
                specs,
            )
        });
        let options_kept = PersistentOptions {
            label: persistent.label,
            lifetime: persistent.lifetime_ms.map(Duration::from_millis),
            idle: persistent.idle_ms.map(Duration::from_millis),
            retention: persistent
                .retention_ms
                .map_or(DEFAULT_EXIT_RETENTION, Duration::from_millis),
            restart,
            survive: persistent.survive_restart,
        };
        let owner = self.owner();
        let kept = options_kept
            .survive
            .then(|| (spec.clone(), options_kept.clone()));
        let id = self
            .processes
            .start(owner.clone(), spec, options_kept, gate)
            .await
            .map_err(table_error)?;
        if let Some((unit, options)) = kept {
            self.keep_survivor(&owner, &id, &unit, &options).await?;
        }
        if let Some(bytes) = stdin {
            // A child that exits without reading its input is not an error; one that holds
            // the call up by not reading it is stopped, so no unreachable process remains.
            let write = self.processes.write_stdin(&owner, &id, bytes);
            if tokio::time::timeout(PERSISTENT_STDIN_WAIT, write)
                .await
                .is_err()
            {
                let _ = self.processes.stop(&owner, &id, Duration::ZERO).await;
                return Err(WitProcessError::Failed(
                    "the process did not take its initial stdin".into(),
                ));
            }
        }
        Ok(id)
    }

    /// Records a `survive-restart` start; one that cannot be recorded is stopped (it would
    /// not survive as promised).
    async fn keep_survivor(
        &self,
        owner: &Owner,
        id: &str,
        unit: &UnitSpec,
        options: &PersistentOptions,
    ) -> Result<(), WitProcessError> {
        let status = self.processes.status(owner, id).map_err(table_error)?;
        let kept =
            crate::survivors::keep(&self.services, owner, id, unit, options, status.generation)
                .await;
        if let Err(e) = kept {
            let _ = self.processes.stop(owner, id, Duration::ZERO).await;
            return Err(WitProcessError::Failed(format!(
                "survive-restart could not be recorded: {e}"
            )));
        }
        // Ended before the record was written (its end was reported with nothing to
        // remove): the record goes too.
        if self.processes.has_ended(owner, id)
            && let Some(hash) = capsid_process::ProcessTable::id_hash(id)
        {
            crate::survivors::forget(&self.services, &owner.capsule, &hash).await;
        }
        Ok(())
    }

    pub(super) fn stats_history(&self, id: &str) -> Result<Vec<StatsSample>, WitProcessError> {
        Ok(self
            .processes
            .stats_history(&self.owner(), id)
            .map_err(table_error)?
            .into_iter()
            .map(stats_sample)
            .collect())
    }

    pub(super) fn list_persistent(&self, label: Option<&str>) -> Vec<ProcessStatus> {
        self.processes
            .list(&self.owner(), label)
            .into_iter()
            .map(status)
            .collect()
    }

    pub(super) fn persistent_status(&self, id: &str) -> Result<ProcessStatus, WitProcessError> {
        self.processes
            .status(&self.owner(), id)
            .map(status)
            .map_err(table_error)
    }

    pub(super) fn status_many(
        &self,
        ids: &[String],
    ) -> Result<Vec<Result<ProcessStatus, WitProcessError>>, WitProcessError> {
        Ok(self
            .processes
            .status_many(&self.owner(), ids)
            .map_err(table_error)?
            .into_iter()
            .map(|r| r.map(status).map_err(table_error))
            .collect())
    }

    pub(super) fn persistent_read_logs(
        &self,
        id: &str,
        which: OutputStream,
        max: u32,
    ) -> Result<Vec<u8>, WitProcessError> {
        self.processes
            .read_logs(&self.owner(), id, stream(which), read_max(max))
            .map_err(table_error)
    }

    pub(super) fn read_since(
        &self,
        id: &str,
        which: OutputStream,
        cursor: Option<WitCursor>,
        max: u32,
    ) -> Result<WitChunk, WitProcessError> {
        self.read_chunk(id, None, which, cursor, max)
    }

    pub(super) fn read_stage_since(
        &self,
        id: &str,
        stage: u32,
        which: OutputStream,
        cursor: Option<WitCursor>,
        max: u32,
    ) -> Result<WitChunk, WitProcessError> {
        self.read_chunk(id, Some(stage as usize), which, cursor, max)
    }

    /// A cursor read of the unit's stream (`stage` `None`) or of one stage's.
    fn read_chunk(
        &self,
        id: &str,
        stage: Option<usize>,
        which: OutputStream,
        cursor: Option<WitCursor>,
        max: u32,
    ) -> Result<WitChunk, WitProcessError> {
        let cursor = cursor.map(|c| Cursor {
            generation: c.generation,
            offset: c.offset,
        });
        let (owner, stream, max) = (self.owner(), stream(which), read_max(max));
        let chunk = match stage {
            None => self.processes.read_since(&owner, id, stream, cursor, max),
            Some(stage) => self
                .processes
                .read_stage_since(&owner, id, stage, stream, cursor, max),
        }
        .map_err(table_error)?;
        Ok(wit_chunk(chunk))
    }

    pub(super) fn read_link_tap(
        &self,
        id: &str,
        link: u32,
        max: u32,
    ) -> Result<Vec<u8>, WitProcessError> {
        self.processes
            .read_tap(&self.owner(), id, link as usize, read_max(max))
            .map_err(table_error)
    }

    pub(super) async fn persistent_write_stdin(
        &self,
        id: &str,
        bytes: &[u8],
    ) -> Result<(), WitProcessError> {
        self.processes
            .write_stdin(&self.owner(), id, bytes)
            .await
            .map_err(table_error)
    }

    pub(super) async fn persistent_close_stdin(&self, id: &str) -> Result<(), WitProcessError> {
        self.processes
            .close_stdin(&self.owner(), id)
            .await
            .map_err(table_error)
    }

    pub(super) async fn persistent_signal(
        &self,
        id: &str,
        kind: SignalKind,
    ) -> Result<(), WitProcessError> {
        let result = self
            .processes
            .signal(&self.owner(), id, signal(kind))
            .map_err(table_error);
        if result.is_ok() {
            let details = serde_json::json!({ "signal": format!("{kind:?}"), "persistent": true });
            let _ = self
                .note(
                    capsid_audit::action::PROCESS_SIGNAL,
                    &persistent_resource(&self.name),
                    capsid_audit::Decision::Info,
                    &details,
                )
                .await;
        }
        result
    }

    pub(super) async fn persistent_wait(
        &self,
        id: &str,
        timeout_ms: u32,
    ) -> Result<Option<WitExit>, WitProcessError> {
        let exit = self
            .processes
            .wait(
                &self.owner(),
                id,
                Duration::from_millis(u64::from(timeout_ms)),
            )
            .await
            .map_err(table_error)?;
        Ok(exit.map(wit_exit))
    }

    pub(super) async fn persistent_stop(
        &self,
        id: &str,
        grace_ms: u32,
    ) -> Result<Option<WitExit>, WitProcessError> {
        let survives = self.processes.survives(&self.owner(), id);
        let exit = self
            .processes
            .stop(
                &self.owner(),
                id,
                Duration::from_millis(u64::from(grace_ms)),
            )
            .await
            .map_err(table_error)?;
        if survives {
            self.forget_survivor(id).await;
        }
        let details = serde_json::json!({ "exit": exit.map(|e| (e.code, e.signal)) });
        let _ = self
            .note(
                capsid_audit::action::PROCESS_STOP,
                &persistent_resource(&self.name),
                capsid_audit::Decision::Info,
                &details,
            )
            .await;
        Ok(exit.map(wit_exit))
    }

    pub(super) async fn release(&self, id: &str) -> Result<WitExit, WitProcessError> {
        let survives = self.processes.survives(&self.owner(), id);
        let exit = self
            .processes
            .release(&self.owner(), id)
            .map_err(table_error)?;
        if survives {
            self.forget_survivor(id).await;
        }
        Ok(wit_exit(exit))
    }

    /// Forgets the record of `id`, which survived restarts, at once (not only when the
    /// table's report of its end is delivered, which a shutdown may never do).
    async fn forget_survivor(&self, id: &str) {
        if let Some(hash) = capsid_process::ProcessTable::id_hash(id) {
            crate::survivors::forget(&self.services, &self.name, &hash).await;
        }
    }

    pub(super) fn watch(&self, id: &str, on: bool) -> Result<(), WitProcessError> {
        self.processes
            .watch(&self.owner(), id, on)
            .map_err(table_error)
    }
}
