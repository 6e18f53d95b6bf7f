//! Errors of the process layer.

use std::path::PathBuf;

/// Everything spawning or driving a child can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The spawn request breaks a rule; the text says which.
    #[error("invalid spawn: {0}")]
    Invalid(String),
    /// The program is not an absolute path and is not found on the fixed search path.
    #[error("program {0:?} not found in {search}", search = capsid_core::limits::PROCESS_SEARCH_PATH.join(":"))]
    ProgramNotFound(String),
    /// The working directory is not inside the workspace.
    #[error("working directory {} is outside the workspace {}", dir.display(), workspace.display())]
    CwdOutsideWorkspace {
        /// The directory asked for.
        dir: PathBuf,
        /// The workspace.
        workspace: PathBuf,
    },
    /// The OS sandbox is required but `bwrap` is not installed.
    #[error("the OS sandbox is required but bwrap is not installed: install bubblewrap")]
    SandboxUnavailable,
    /// A pids limit was asked for but no writable cgroup `pids` controller exists here.
    #[error(
        "a pids limit needs the cgroup pids controller (v1 at /sys/fs/cgroup/pids or v2 with \
         pids enabled), writable by the host; none is"
    )]
    PidsLimitUnavailable,
    /// The OS refused to start the child.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// Writing to the child's stdin failed (it closed it, or exited); the text says how many
    /// bytes were written first.
    #[error("stdin: {0}")]
    Stdin(String),
    /// stdin was closed (by the caller) or never opened.
    #[error("stdin is closed")]
    StdinClosed,
    /// The child has exited and been reaped: it can no longer be signalled.
    #[error("the process has exited")]
    Exited,
    /// An OS call failed.
    #[error("{what}: {source}")]
    Os {
        /// Which call.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}
