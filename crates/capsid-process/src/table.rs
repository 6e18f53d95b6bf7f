//! Persistent processes: children that outlive the call that started them, addressed by an
//! opaque id that only their owner holds.
//!
//! An id is 128 random bits, returned once by [`ProcessTable::spawn`]; the table keeps only
//! its hash (domain `PROCESS_ID`), so neither the table nor anything that logs it can give an
//! id away. Every call names its [`Owner`]; an id that is unknown, malformed, or owned by
//! another principal or capsule gets the same [`TableError::NoSuchProcess`], so ids cannot be
//! probed. A reaper ([`ProcessTable::sweep`]) stops processes past their lifetime or idle
//! deadline and forgets exited ones past their retention.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capsid_core::limits::{
    DEFAULT_EXIT_RETENTION, MAX_PERSISTENT_RETAINED, MAX_PERSISTENT_RUNNING,
    MAX_PROCESS_LABEL_BYTES, MAX_PROCESS_WAIT, MAX_STATUS_MANY, PROCESS_REAPER_INTERVAL,
};
use capsid_core::{CapsuleId, Principal, ProcessId};
use capsid_crypto::{domain, hash};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::child::{Child, ExitInfo};
use crate::error::ProcessError;
use crate::ring::Since;
use crate::spec::SpawnSpec;

/// Who a persistent process belongs to: the principal and the capsule that started it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// On whose authority it runs.
    pub principal: Principal,
    /// The capsule that started it.
    pub capsule: CapsuleId,
}

/// Deadlines and label of a persistent process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistentOptions {
    /// A label for [`ProcessTable::list`] (at most `MAX_PROCESS_LABEL_BYTES`).
    pub label: Option<String>,
    /// Stopped once it has run this long.
    pub lifetime: Option<Duration>,
    /// Stopped once nobody has touched it (read, write, status, wait) for this long.
    pub idle: Option<Duration>,
    /// Forgotten this long after it exited, unless released before.
    pub retention: Duration,
}

impl Default for PersistentOptions {
    fn default() -> Self {
        Self {
            label: None,
            lifetime: None,
            idle: None,
            retention: DEFAULT_EXIT_RETENTION,
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

/// What [`ProcessTable::read_since`] returns.
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

struct Entry {
    owner: Owner,
    options: PersistentOptions,
    generation: u64,
    started: Instant,
    started_ms: u64,
    last_touch: Mutex<Instant>,
    child: Child,
    watched: AtomicBool,
    /// The exit was already reported.
    reported: AtomicBool,
}

impl Entry {
    fn touch(&self) {
        *self
            .last_touch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn status(&self) -> Status {
        let (out, err) = (self.child.stdout(), self.child.stderr());
        Status {
            label: self.options.label.clone(),
            generation: self.generation,
            pid: self.child.pid(),
            started_ms: self.started_ms,
            exit: self.child.try_exit(),
            stdout_pending: out.len(),
            stderr_pending: err.len(),
            stdout_dropped: out.dropped(),
            stderr_dropped: err.dropped(),
        }
    }

    /// Up to `max` bytes of `stream` from `offset`, with the cursor to read on from.
    fn chunk(&self, stream: Stream, offset: u64, max: usize) -> Chunk {
        let Since {
            bytes,
            next,
            missed,
        } = self.ring(stream).read_since(offset, max);
        Chunk {
            bytes,
            next: Cursor {
                generation: self.generation,
                offset: next,
            },
            missed,
        }
    }

    fn ring(&self, stream: Stream) -> &crate::ring::OutputRing {
        match stream {
            Stream::Stdout => self.child.stdout(),
            Stream::Stderr => self.child.stderr(),
        }
    }
}

/// Who may start a persistent process now. Locked after `entries` when both are held.
#[derive(Default)]
struct Admission {
    /// Spawns that passed the caps and have not been inserted yet, per principal: they
    /// count as running, so spawns racing the check cannot pass it together.
    pending: HashMap<Principal, usize>,
    /// Owners that are unloading.
    closed: HashSet<Owner>,
}

/// A slot taken by [`ProcessTable::admit`]; given back when dropped (inserted or not).
struct Reservation<'a> {
    table: &'a ProcessTable,
    principal: Principal,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut admission = self.table.admission();
        if let Some(n) = admission.pending.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                admission.pending.remove(&self.principal);
            }
        }
    }
}

/// The persistent processes of one host.
pub struct ProcessTable {
    entries: Mutex<HashMap<[u8; 32], Arc<Entry>>>,
    admission: Mutex<Admission>,
    generations: AtomicU64,
    events: Option<mpsc::UnboundedSender<TableEvent>>,
}

impl std::fmt::Debug for ProcessTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessTable")
            .field("processes", &self.lock().len())
            .finish_non_exhaustive()
    }
}

fn key(id: &ProcessId) -> [u8; 32] {
    *hash(domain::PROCESS_ID, id.as_bytes()).as_bytes()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ProcessTable {
    /// An empty table; lifecycle changes of watched processes go to `events`.
    pub fn new(events: Option<mpsc::UnboundedSender<TableEvent>>) -> Self {
        Self {
            entries: Mutex::default(),
            admission: Mutex::default(),
            generations: AtomicU64::new(1),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops `owner` from starting persistent processes (its capsule is unloading); spawns
    /// already under way are stopped instead of kept. [`ProcessTable::stop_all`] closes too.
    pub fn close(&self, owner: &Owner) {
        self.admission().closed.insert(owner.clone());
    }

    /// Lets `owner` start persistent processes again (its capsule loaded anew).
    pub fn reopen(&self, owner: &Owner) {
        self.admission().closed.remove(owner);
    }

    /// The entry `id` names, if `owner` owns it. Malformed, unknown and foreign ids are alike.
    fn find(&self, owner: &Owner, id: &str) -> Result<Arc<Entry>, TableError> {
        let id: ProcessId = id.parse().map_err(|_| TableError::NoSuchProcess)?;
        let entry = self
            .lock()
            .get(&key(&id))
            .filter(|e| e.owner == *owner)
            .cloned()
            .ok_or(TableError::NoSuchProcess)?;
        entry.touch();
        Ok(entry)
    }

    /// Starts `spec` for `owner` and returns its id — the only time the id is seen.
    pub async fn spawn(
        &self,
        owner: Owner,
        spec: &SpawnSpec,
        options: PersistentOptions,
    ) -> Result<String, TableError> {
        if options
            .label
            .as_ref()
            .is_some_and(|l| l.len() > MAX_PROCESS_LABEL_BYTES)
        {
            return Err(TableError::Invalid(format!(
                "labels are at most {MAX_PROCESS_LABEL_BYTES} bytes"
            )));
        }
        let reservation = self.admit(&owner)?;
        let child = Child::spawn(spec).await?;
        let id = ProcessId::random()
            .map_err(|e| TableError::Invalid(format!("the random source failed: {e}")))?;
        let entry = Arc::new(Entry {
            owner,
            options,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            started: Instant::now(),
            started_ms: now_ms(),
            last_touch: Mutex::new(Instant::now()),
            child,
            watched: AtomicBool::new(false),
            reported: AtomicBool::new(false),
        });
        let mut entries = self.lock();
        if self.admission().closed.contains(&entry.owner) {
            // Closed while it started: it is stopped (dropping it kills its group).
            drop(entries);
            drop(entry);
            return Err(TableError::OwnerClosed);
        }
        entries.insert(key(&id), entry);
        // Given back under the entries lock, so the process never counts twice.
        drop(reservation);
        drop(entries);
        Ok(id.to_string())
    }

    /// Checks `owner` may start one more process and reserves its slot.
    fn admit(&self, owner: &Owner) -> Result<Reservation<'_>, TableError> {
        let entries = self.lock();
        let mut admission = self.admission();
        if admission.closed.contains(owner) {
            return Err(TableError::OwnerClosed);
        }
        let principal = owner.principal;
        let mine = entries.values().filter(|e| e.owner.principal == principal);
        let mut running = admission.pending.get(&principal).copied().unwrap_or(0);
        let mut retained = 0;
        for e in mine {
            if e.child.has_exited() {
                retained += 1;
            } else {
                running += 1;
            }
        }
        if running >= MAX_PERSISTENT_RUNNING {
            return Err(TableError::TooManyRunning);
        }
        if retained >= MAX_PERSISTENT_RETAINED {
            return Err(TableError::TooManyRetained);
        }
        *admission.pending.entry(principal).or_default() += 1;
        Ok(Reservation {
            table: self,
            principal,
        })
    }

    /// Every process in the table with its owner, oldest first: the operator's view (ids are
    /// not kept, so none are shown).
    pub fn list_all(&self) -> Vec<(Owner, Status)> {
        let mut out: Vec<(Owner, Status)> = self
            .lock()
            .values()
            .map(|e| (e.owner.clone(), e.status()))
            .collect();
        out.sort_by_key(|(_, s)| s.generation);
        out
    }

    /// The processes of `owner`, optionally only those with `label`.
    pub fn list(&self, owner: &Owner, label: Option<&str>) -> Vec<Status> {
        let mut out: Vec<Status> = self
            .lock()
            .values()
            .filter(|e| {
                e.owner == *owner && label.is_none_or(|l| e.options.label.as_deref() == Some(l))
            })
            .map(|e| e.status())
            .collect();
        out.sort_by_key(|s| s.generation);
        out
    }

    /// The status of one process.
    pub fn status(&self, owner: &Owner, id: &str) -> Result<Status, TableError> {
        Ok(self.find(owner, id)?.status())
    }

    /// The status of each of `ids`, in order (each answer on its own).
    pub fn status_many(
        &self,
        owner: &Owner,
        ids: &[String],
    ) -> Result<Vec<Result<Status, TableError>>, TableError> {
        if ids.len() > MAX_STATUS_MANY {
            return Err(TableError::Invalid(format!(
                "{} ids, at most {MAX_STATUS_MANY} per call",
                ids.len()
            )));
        }
        Ok(ids.iter().map(|id| self.status(owner, id)).collect())
    }

    /// Takes up to `max` bytes out of a stream (draining read).
    pub fn read_logs(
        &self,
        owner: &Owner,
        id: &str,
        stream: Stream,
        max: usize,
    ) -> Result<Vec<u8>, TableError> {
        Ok(self.find(owner, id)?.ring(stream).drain(max))
    }

    /// Up to `max` bytes from `cursor` on, leaving them in the ring (`None`: from the start).
    pub fn read_since(
        &self,
        owner: &Owner,
        id: &str,
        stream: Stream,
        cursor: Option<Cursor>,
        max: usize,
    ) -> Result<Chunk, TableError> {
        let entry = self.find(owner, id)?;
        let offset = match cursor {
            None => 0,
            Some(c) if c.generation == entry.generation => c.offset,
            Some(_) => return Err(TableError::ForeignCursor),
        };
        Ok(entry.chunk(stream, offset, max))
    }

    /// Reads a process's output from `offset` for the operator, who names it by its
    /// generation (shown by [`ProcessTable::list_all`]); ids stay the owner's.
    pub fn read_by_generation(
        &self,
        generation: u64,
        stream: Stream,
        offset: u64,
        max: usize,
    ) -> Result<Chunk, TableError> {
        let entry = self
            .lock()
            .values()
            .find(|e| e.generation == generation)
            .cloned()
            .ok_or(TableError::NoSuchProcess)?;
        Ok(entry.chunk(stream, offset, max))
    }

    /// Writes all of `bytes` to the process's stdin, in order.
    pub async fn write_stdin(
        &self,
        owner: &Owner,
        id: &str,
        bytes: &[u8],
    ) -> Result<(), TableError> {
        let entry = self.find(owner, id)?;
        Ok(entry.child.write_stdin(bytes).await?)
    }

    /// Closes its stdin (idempotent).
    pub async fn close_stdin(&self, owner: &Owner, id: &str) -> Result<(), TableError> {
        self.find(owner, id)?.child.close_stdin().await;
        Ok(())
    }

    /// Sends `signal` to its process group.
    pub fn signal(&self, owner: &Owner, id: &str, signal: Signal) -> Result<(), TableError> {
        Ok(self.find(owner, id)?.child.signal(signal)?)
    }

    /// Waits at most `timeout` (required, at most `MAX_PROCESS_WAIT`) for it to exit.
    pub async fn wait(
        &self,
        owner: &Owner,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ExitInfo>, TableError> {
        if timeout > MAX_PROCESS_WAIT {
            return Err(TableError::Invalid(format!(
                "waits are at most {} s",
                MAX_PROCESS_WAIT.as_secs()
            )));
        }
        let entry = self.find(owner, id)?;
        let exit = entry.child.wait(Some(timeout)).await;
        entry.touch();
        Ok(exit)
    }

    /// `SIGTERM` to its group, `SIGKILL` after `grace`, then forgets it (the slot is free).
    pub async fn stop(
        &self,
        owner: &Owner,
        id: &str,
        grace: Duration,
    ) -> Result<Option<ExitInfo>, TableError> {
        let entry = self.find(owner, id)?;
        let exit = terminate(&entry, grace.min(MAX_PROCESS_WAIT)).await;
        let parsed: ProcessId = id.parse().map_err(|_| TableError::NoSuchProcess)?;
        self.lock().remove(&key(&parsed));
        self.report_exit(&entry);
        Ok(exit)
    }

    /// Forgets an exited process.
    pub fn release(&self, owner: &Owner, id: &str) -> Result<ExitInfo, TableError> {
        let entry = self.find(owner, id)?;
        let exit = entry.child.try_exit().ok_or(TableError::StillRunning)?;
        let parsed: ProcessId = id.parse().map_err(|_| TableError::NoSuchProcess)?;
        self.lock().remove(&key(&parsed));
        Ok(exit)
    }

    /// Turns lifecycle events for this process on or off.
    pub fn watch(&self, owner: &Owner, id: &str, on: bool) -> Result<(), TableError> {
        self.find(owner, id)?.watched.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Reports the exit once, if it was not reported yet.
    fn report_exit(&self, entry: &Entry) {
        if let Some(exit) = entry.child.try_exit()
            && !entry.reported.swap(true, Ordering::Relaxed)
        {
            self.report(entry, EventKind::Exited(exit));
        }
    }

    fn report(&self, entry: &Entry, kind: EventKind) {
        if entry.watched.load(Ordering::Relaxed)
            && let Some(events) = &self.events
        {
            let _ = events.send(TableEvent {
                owner: entry.owner.clone(),
                label: entry.options.label.clone(),
                generation: entry.generation,
                kind,
            });
        }
    }

    /// One pass of the reaper: reports new exits, stops processes past their lifetime or
    /// idle deadline, forgets exited ones past their retention.
    pub async fn sweep(&self) {
        let entries: Vec<([u8; 32], Arc<Entry>)> =
            self.lock().iter().map(|(k, e)| (*k, e.clone())).collect();
        let now = Instant::now();
        for (k, entry) in entries {
            if let Some(exit) = entry.child.try_exit() {
                self.report_exit(&entry);
                let exited_at = entry.started + Duration::from_millis(exit.wall_ms);
                if now.duration_since(exited_at) >= entry.options.retention {
                    self.lock().remove(&k);
                    self.report(&entry, EventKind::Forgotten);
                }
                continue;
            }
            let idle_for = now.duration_since(
                *entry
                    .last_touch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            let expired = entry
                .options
                .lifetime
                .is_some_and(|l| now - entry.started >= l)
                || entry.options.idle.is_some_and(|i| idle_for >= i);
            if expired {
                self.report(&entry, EventKind::Expired);
                terminate(&entry, Duration::ZERO).await;
            }
        }
    }

    /// Runs [`sweep`](Self::sweep) every `PROCESS_REAPER_INTERVAL` until the table is dropped.
    pub fn start_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let table: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROCESS_REAPER_INTERVAL);
            loop {
                tick.tick().await;
                let Some(table) = table.upgrade() else { return };
                table.sweep().await;
            }
        })
    }

    /// Closes `owner` (see [`ProcessTable::close`]), then stops every process of it and
    /// forgets them.
    pub async fn stop_all(&self, owner: &Owner, grace: Duration) {
        self.close(owner);
        let mine: Vec<([u8; 32], Arc<Entry>)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.owner == *owner)
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        for (k, entry) in mine {
            terminate(&entry, grace).await;
            self.lock().remove(&k);
            self.report_exit(&entry);
        }
    }
}

/// `SIGTERM`, then `SIGKILL` after `grace` if it is still running.
async fn terminate(entry: &Entry, grace: Duration) -> Option<ExitInfo> {
    if let Some(exit) = entry.child.try_exit() {
        return Some(exit);
    }
    if !grace.is_zero() {
        let _ = entry.child.signal(Signal::SIGTERM);
        if let Some(exit) = entry.child.wait(Some(grace)).await {
            return Some(exit);
        }
    }
    entry.child.kill().await
}
