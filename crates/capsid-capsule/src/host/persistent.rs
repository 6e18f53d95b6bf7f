//! The persistent half of `capsid:host/process`: processes that outlive the call, kept in the
//! registry's [`ProcessTable`] under the capsule's [`Owner`], reached by id.

use std::time::Duration;

use capsid_capabilities::Permissions;
use capsid_core::limits::{DEFAULT_EXIT_RETENTION, MAX_LOG_READ_BYTES, PERSISTENT_STDIN_WAIT};
use capsid_process::{Cursor, Owner, PersistentOptions, Status, Stream, TableError};

use crate::bindings::capsid::host::process::{
    Chunk as WitChunk, Cursor as WitCursor, ExitInfo as WitExit, OutputStream,
    PersistentOptions as WitOptions, ProcessError as WitProcessError, ProcessStatus, SignalKind,
    SpawnOptions,
};
use crate::grants::persistent_resource;

use super::CapsuleContext;
use super::process::{check_stdin, signal, wit_error, wit_exit};

pub(super) fn table_error(e: TableError) -> WitProcessError {
    match e {
        TableError::NoSuchProcess => WitProcessError::NoSuchProcess,
        TableError::TooManyRunning => WitProcessError::TooManyRunning,
        TableError::TooManyRetained => WitProcessError::TooManyRetained,
        TableError::StillRunning => WitProcessError::StillRunning,
        TableError::ForeignCursor => WitProcessError::ForeignCursor,
        TableError::Invalid(m) => WitProcessError::Invalid(m),
        TableError::OwnerClosed => WitProcessError::Failed(e.to_string()),
        TableError::Process(p) => wit_error(p),
    }
}

fn status(s: Status) -> ProcessStatus {
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
    }
}

fn stream(which: OutputStream) -> Stream {
    match which {
        OutputStream::Stdout => Stream::Stdout,
        OutputStream::Stderr => Stream::Stderr,
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
        self.authorize(
            capsid_audit::action::PROCESS_PERSISTENT,
            Permissions::EXEC,
            &persistent_resource(&self.name),
            false,
        )
        .await
        .map_err(|_| WitProcessError::Denied)?;
        let spec = self
            .spawn_spec(program, options, self.process_sandbox)
            .await?;
        let options_kept = PersistentOptions {
            label: persistent.label,
            lifetime: persistent.lifetime_ms.map(Duration::from_millis),
            idle: persistent.idle_ms.map(Duration::from_millis),
            retention: persistent
                .retention_ms
                .map_or(DEFAULT_EXIT_RETENTION, Duration::from_millis),
        };
        let owner = self.owner();
        let id = self
            .processes
            .spawn(owner.clone(), &spec, options_kept)
            .await
            .map_err(table_error)?;
        if let Some(bytes) = &options.stdin {
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
        let cursor = cursor.map(|c| Cursor {
            generation: c.generation,
            offset: c.offset,
        });
        let chunk = self
            .processes
            .read_since(&self.owner(), id, stream(which), cursor, read_max(max))
            .map_err(table_error)?;
        Ok(WitChunk {
            bytes: chunk.bytes,
            next: WitCursor {
                generation: chunk.next.generation,
                offset: chunk.next.offset,
            },
            missed: chunk.missed,
        })
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
        let exit = self
            .processes
            .stop(
                &self.owner(),
                id,
                Duration::from_millis(u64::from(grace_ms)),
            )
            .await
            .map_err(table_error)?;
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

    pub(super) fn release(&self, id: &str) -> Result<WitExit, WitProcessError> {
        self.processes
            .release(&self.owner(), id)
            .map(wit_exit)
            .map_err(table_error)
    }

    pub(super) fn watch(&self, id: &str, on: bool) -> Result<(), WitProcessError> {
        self.processes
            .watch(&self.owner(), id, on)
            .map_err(table_error)
    }
}
