//! What the table's callers hand it and get back: owners, options, statuses, cursors,
//! events and errors.

use std::time::Duration;

use capsid_core::limits::{
    DEFAULT_EXIT_RETENTION, MAX_PERSISTENT_RETAINED, MAX_PERSISTENT_RUNNING,
};
use capsid_core::{CapsuleId, Principal};
use serde::{Deserialize, Serialize};

use super::RestartStatus;
use crate::child::ExitInfo;
use crate::error::ProcessError;
use crate::stats::Sample;
use crate::supervisor::RestartPolicy;

/// Who a persistent process belongs to: the principal and the capsule that started it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// On whose authority it runs.
    pub principal: Principal,
    /// The capsule that started it.
    pub capsule: CapsuleId,
}

/// Deadlines and label of a persistent process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentOptions {
    /// A label for [`ProcessTable::list`](super::ProcessTable::list) (at most `MAX_PROCESS_LABEL_BYTES`).
    pub label: Option<String>,
    /// Stopped once it has run this long.
    pub lifetime: Option<Duration>,
    /// Stopped once nobody has touched it (read, write, status, wait) for this long.
    pub idle: Option<Duration>,
    /// Forgotten this long after it exited, unless released before.
    pub retention: Duration,
    /// Restarted when it fails, per this policy (`None`: never).
    pub restart: Option<RestartPolicy>,
    /// Kept by the host to be started again after the runtime restarts: the table reports
    /// its restarts and its end ([`EventKind::Ended`]) so the host can keep its record true.
    #[serde(default)]
    pub survive: bool,
}

impl Default for PersistentOptions {
    fn default() -> Self {
        Self {
            label: None,
            lifetime: None,
            idle: None,
            retention: DEFAULT_EXIT_RETENTION,
            restart: None,
            survive: false,
        }
    }
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A position in one process's output stream. The generation ties it to that process: a
/// cursor is never honoured against another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The process's generation.
    pub generation: u64,
    /// Offset in the stream.
    pub offset: u64,
}

/// What [`ProcessTable::read_since`](super::ProcessTable::read_since) returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Where to read next.
    pub next: Cursor,
    /// Bytes between the cursor and the oldest byte still kept (dropped or drained).
    pub missed: u64,
}

/// A persistent process as its owner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Its label.
    pub label: Option<String>,
    /// Its generation (what cursors carry).
    pub generation: u64,
    /// Its OS pid.
    pub pid: u32,
    /// When it started, in ms since the Unix epoch.
    pub started_ms: u64,
    /// How it ended, once it has.
    pub exit: Option<ExitInfo>,
    /// Bytes waiting in its stdout ring.
    pub stdout_pending: usize,
    /// Bytes waiting in its stderr ring.
    pub stderr_pending: usize,
    /// Bytes its stdout ring dropped.
    pub stdout_dropped: u64,
    /// Bytes its stderr ring dropped.
    pub stderr_dropped: u64,
    /// Its restarts, when it is supervised.
    pub restart: RestartStatus,
    /// Its latest CPU, memory and task sample (every stage's together), once taken.
    pub stats: Option<Sample>,
    /// For a pipeline, each stage in order (empty for a single program).
    pub stages: Vec<StageStatus>,
    /// For a pipeline, each link in order (link `i` joins stage `i` to stage `i + 1`).
    pub links: Vec<LinkStatus>,
}

/// One stage of a persistent pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStatus {
    /// Its OS pid.
    pub pid: u32,
    /// How it ended, once it has.
    pub exit: Option<ExitInfo>,
    /// Bytes waiting in its stderr ring.
    pub stderr_pending: usize,
    /// Bytes its stderr ring dropped.
    pub stderr_dropped: u64,
}

/// One link of a persistent pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Bytes moved so far.
    pub bytes: u64,
    /// Bytes per second lately.
    pub rate: u64,
    /// Whether no byte will move any more.
    pub ended: bool,
}

/// What the table reports to the host (for lifecycle events to watchers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEvent {
    /// Whose process.
    pub owner: Owner,
    /// Its label.
    pub label: Option<String>,
    /// Its generation.
    pub generation: u64,
    /// The hash of its id (the table's key for it; never the id).
    pub id_hash: [u8; 32],
    /// Whether it is to survive a restart of the runtime ([`PersistentOptions::survive`]).
    pub survives: bool,
    /// Whether its owner asked for its lifecycle events ([`ProcessTable::watch`](super::ProcessTable::watch)); restarts
    /// and giving up are reported either way (they are audited), as is the end of one that
    /// survives.
    pub watched: bool,
    /// What happened.
    pub kind: EventKind,
}

/// A lifecycle change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// It exited (on its own or stopped).
    Exited(ExitInfo),
    /// The reaper stopped it at its lifetime or idle deadline.
    Expired,
    /// It was forgotten after its retention.
    Forgotten,
    /// It failed and was started again, as `generation`.
    Restarted {
        /// Restarts made so far.
        restarts: u32,
    },
    /// No more restarts: it failed too often in a row, or its start was refused.
    GaveUp {
        /// Why.
        reason: String,
    },
    /// It will not run again: stopped, released, finished, expired or given up on (reported
    /// once, only for one that survives restarts).
    Ended,
}

/// Why a table call failed.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Unknown, malformed or foreign id (deliberately indistinguishable).
    #[error("no such process")]
    NoSuchProcess,
    /// The principal already has the most running persistent processes allowed.
    #[error("too many running persistent processes (at most {MAX_PERSISTENT_RUNNING})")]
    TooManyRunning,
    /// The principal keeps the most exited processes allowed; release some.
    #[error(
        "too many exited persistent processes kept (at most {MAX_PERSISTENT_RETAINED}); release some"
    )]
    TooManyRetained,
    /// One already runs under this id (brought back twice).
    #[error("it is already running")]
    AlreadyRunning,
    /// `release` of a process that is still running.
    #[error("the process is still running; stop it first")]
    StillRunning,
    /// A cursor from another process.
    #[error("the cursor belongs to another process")]
    ForeignCursor,
    /// The owning capsule is unloading: it may start nothing more.
    #[error("the capsule is unloading; it can start no persistent process")]
    OwnerClosed,
    /// An argument outside its limit.
    #[error("{0}")]
    Invalid(String),
    /// The child itself failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
}
