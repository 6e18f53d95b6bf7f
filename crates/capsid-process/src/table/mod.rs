//! Persistent processes: children that outlive the call that started them, addressed by an
//! opaque id that only their owner holds.
//!
//! An id is 128 random bits, returned once by [`ProcessTable::spawn`]; the table keeps only
//! its hash (domain `PROCESS_ID`), so neither the table nor anything that logs it can give an
//! id away. Every call names its [`Owner`]; an id that is unknown, malformed, or owned by
//! another principal or capsule gets the same [`TableError::NoSuchProcess`], so ids cannot be
//! probed. A reaper ([`ProcessTable::sweep`]) stops processes past their lifetime or idle
//! deadline, restarts supervised ones that failed (after their backoff, each start asked of
//! their [`StartGate`] first), and forgets exited ones past their retention.
//!
//! An entry runs a [`UnitSpec`]: one program, or a pipeline (its stdin is the first stage's,
//! its stdout and stderr the last stage's; each stage's output is read by its index). Each
//! run has its own generation, so a cursor says which run it read.

mod entry;
mod reaper;
mod restart;
mod types;
mod unit;

pub use restart::RestartStatus;
pub use types::{
    Chunk, Cursor, EventKind, LinkStatus, Owner, PersistentOptions, StageStatus, Status, Stream,
    TableError, TableEvent,
};
pub use unit::UnitSpec;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capsid_core::limits::{
    MAX_PERSISTENT_RETAINED, MAX_PERSISTENT_RUNNING, MAX_PROCESS_LABEL_BYTES, MAX_PROCESS_WAIT,
    MAX_STATUS_MANY,
};
use capsid_core::{Principal, ProcessId};
use capsid_crypto::{domain, hash};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::child::ExitInfo;
use crate::spec::SpawnSpec;
use crate::supervisor::StartGate;
use entry::{Entry, Run};
use restart::Restarts;
use unit::Unit;

/// What a survivor brought back after a restart of the runtime carries from before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Earlier {
    /// The generation of its last run.
    pub generation: u64,
    /// How long ago it was first started (its lifetime counts from there).
    pub age: Duration,
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
    /// When the running entries were last sampled.
    sampled: Mutex<Option<Instant>>,
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
            sampled: Mutex::default(),
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
        let entries = self.lock();
        self.admission().closed.insert(owner.clone());
        // What survives restarts is kept for the capsule's next load: nothing of it ends
        // for good from here (its record stays).
        for e in entries.values().filter(|e| e.owner == *owner) {
            e.ended.store(true, Ordering::Relaxed);
        }
    }

    /// The id hashes of `owner`'s entries that survive restarts and were started in this
    /// runtime (not brought back): what a load that failed started.
    pub fn fresh_survivors(&self, owner: &Owner) -> Vec<[u8; 32]> {
        self.lock()
            .values()
            .filter(|e| e.owner == *owner && e.options.survive && !e.restored)
            .map(|e| e.key)
            .collect()
    }

    /// Whether the entry kept under `id_hash` for `owner` is gone or over for good.
    pub fn has_ended_hash(&self, owner: &Owner, id_hash: &[u8; 32]) -> bool {
        self.lock()
            .get(id_hash)
            .filter(|e| e.owner == *owner)
            .cloned()
            .is_none_or(|e| e.is_over())
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
        self.start(owner, UnitSpec::Process(spec.clone()), options, None)
            .await
    }

    /// Starts `spec` (a program or a pipeline) for `owner` and returns its id — the only
    /// time the id is seen. With `options.restart`, each restart asks `gate` first.
    pub async fn start(
        &self,
        owner: Owner,
        spec: UnitSpec,
        options: PersistentOptions,
        gate: Option<StartGate>,
    ) -> Result<String, TableError> {
        let id = ProcessId::random()
            .map_err(|e| TableError::Invalid(format!("the random source failed: {e}")))?;
        self.insert(key(&id), owner, spec, options, gate, None)
            .await?;
        Ok(id.to_string())
    }

    /// Starts again, under the id whose hash is `id_hash`, what ran before the runtime
    /// restarted (its last run had `generation`): a cursor of that run reads the new one from
    /// its start. Its caller has checked it may start. The new run's generation.
    pub async fn restore(
        &self,
        id_hash: [u8; 32],
        owner: Owner,
        spec: UnitSpec,
        options: PersistentOptions,
        gate: Option<StartGate>,
        earlier: Earlier,
    ) -> Result<u64, TableError> {
        // Generations never repeat for one id, across restarts of the runtime too.
        self.generations
            .fetch_max(earlier.generation.saturating_add(1), Ordering::Relaxed);
        self.insert(id_hash, owner, spec, options, gate, Some(earlier))
            .await
    }

    /// The hash an id is kept under, for the host's records (`None` for a malformed id).
    pub fn id_hash(id: &str) -> Option<[u8; 32]> {
        id.parse::<ProcessId>().ok().map(|id| key(&id))
    }

    /// Admits, starts and keeps a new entry under `key`; its first run's generation.
    async fn insert(
        &self,
        key: [u8; 32],
        owner: Owner,
        spec: UnitSpec,
        options: PersistentOptions,
        gate: Option<StartGate>,
        earlier: Option<Earlier>,
    ) -> Result<u64, TableError> {
        if options
            .label
            .as_ref()
            .is_some_and(|l| l.len() > MAX_PROCESS_LABEL_BYTES)
        {
            return Err(TableError::Invalid(format!(
                "labels are at most {MAX_PROCESS_LABEL_BYTES} bytes"
            )));
        }
        if self.lock().contains_key(&key) {
            return Err(TableError::AlreadyRunning);
        }
        let reservation = self.admit(&owner)?;
        let unit = Unit::start(&spec).await?;
        let mut restarts = Restarts::new(options.restart);
        let now = Instant::now();
        // Its lifetime counts from its first start, before the runtime restarted too.
        let created = earlier.map_or(now, |e| now.checked_sub(e.age).unwrap_or(now));
        if let Some(e) = earlier {
            restarts.carry(e.generation);
        }
        let run = self.new_run(unit);
        let generation = run.generation;
        let entry = Arc::new(Entry {
            key,
            owner,
            restarts: Mutex::new(restarts),
            options,
            spec,
            gate,
            created,
            restored: earlier.is_some(),
            last_touch: Mutex::new(now),
            run: Mutex::new(Arc::new(run)),
            watched: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            stats: Mutex::default(),
        });
        let mut entries = self.lock();
        if self.admission().closed.contains(&entry.owner) {
            // Closed while it started: it is stopped (dropping it kills its group).
            drop(entries);
            drop(entry);
            return Err(TableError::OwnerClosed);
        }
        if entries.contains_key(&key) {
            // The same one brought back twice at once: this start is dropped (killed).
            drop(entries);
            drop(entry);
            return Err(TableError::AlreadyRunning);
        }
        entries.insert(key, entry);
        // Given back under the entries lock, so the process never counts twice.
        drop(reservation);
        drop(entries);
        Ok(generation)
    }

    fn new_run(&self, unit: Unit) -> Run {
        Run {
            unit,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            started: Instant::now(),
            started_ms: now_ms(),
            reported: AtomicBool::new(false),
        }
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
            // One waiting to restart still holds its place among the running.
            if e.is_over() {
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

    /// Whether `id` of `owner` is one that survives restarts of the runtime.
    pub fn survives(&self, owner: &Owner, id: &str) -> bool {
        self.find(owner, id).is_ok_and(|e| e.options.survive)
    }

    /// Whether `id` of `owner` is gone or over for good (it will not run again).
    pub fn has_ended(&self, owner: &Owner, id: &str) -> bool {
        self.find(owner, id).map_or(true, |e| e.is_over())
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

    /// Takes up to `max` bytes out of a stream (draining read); a pipeline's are its last
    /// stage's.
    pub fn read_logs(
        &self,
        owner: &Owner,
        id: &str,
        stream: Stream,
        max: usize,
    ) -> Result<Vec<u8>, TableError> {
        let run = self.find(owner, id)?.run();
        Ok(run
            .ring(None, stream)
            .map_or_else(Vec::new, |r| r.drain(max)))
    }

    /// Up to `max` bytes from `cursor` on, leaving them in the ring (`None`: from the start);
    /// a pipeline's are its last stage's.
    pub fn read_since(
        &self,
        owner: &Owner,
        id: &str,
        stream: Stream,
        cursor: Option<Cursor>,
        max: usize,
    ) -> Result<Chunk, TableError> {
        self.find(owner, id)?.chunk(None, stream, cursor, max)
    }

    /// [`read_since`](Self::read_since) of stage `stage` (0 is the first) of a pipeline; a
    /// single program is its stage 0.
    pub fn read_stage_since(
        &self,
        owner: &Owner,
        id: &str,
        stage: usize,
        stream: Stream,
        cursor: Option<Cursor>,
        max: usize,
    ) -> Result<Chunk, TableError> {
        self.find(owner, id)?
            .chunk(Some(stage), stream, cursor, max)
    }

    /// Up to `max` of the bytes a link's tap kept, taken out of its ring.
    pub fn read_tap(
        &self,
        owner: &Owner,
        id: &str,
        link: usize,
        max: usize,
    ) -> Result<Vec<u8>, TableError> {
        let run = self.find(owner, id)?.run();
        let link = run
            .unit
            .links()
            .get(link)
            .ok_or_else(|| TableError::Invalid(format!("it has no link {link}")))?;
        let tap = link
            .tap()
            .ok_or_else(|| TableError::Invalid("that link is not tapped".into()))?;
        Ok(tap.drain(max))
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
            .find(|e| e.run().generation == generation)
            .cloned()
            .ok_or(TableError::NoSuchProcess)?;
        let cursor = Cursor { generation, offset };
        entry.chunk(None, stream, Some(cursor), max)
    }

    /// Writes all of `bytes` to the process's stdin (a pipeline's first stage's), in order.
    pub async fn write_stdin(
        &self,
        owner: &Owner,
        id: &str,
        bytes: &[u8],
    ) -> Result<(), TableError> {
        let run = self.find(owner, id)?.run();
        Ok(run.unit.first().write_stdin(bytes).await?)
    }

    /// Closes its stdin (idempotent).
    pub async fn close_stdin(&self, owner: &Owner, id: &str) -> Result<(), TableError> {
        self.find(owner, id)?.run().unit.first().close_stdin().await;
        Ok(())
    }

    /// Sends `signal` to its process group (every stage's, for a pipeline).
    pub fn signal(&self, owner: &Owner, id: &str, signal: Signal) -> Result<(), TableError> {
        Ok(self.find(owner, id)?.run().unit.signal(signal)?)
    }

    /// Waits at most `timeout` (required, at most `MAX_PROCESS_WAIT`) for its current run to
    /// exit (every stage, for a pipeline).
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
        let exit = entry.run().unit.wait(Some(timeout)).await;
        entry.touch();
        Ok(exit)
    }

    /// `SIGTERM` to its group, `SIGKILL` after `grace`, then forgets it (the slot is free); a
    /// supervised one is not restarted.
    pub async fn stop(
        &self,
        owner: &Owner,
        id: &str,
        grace: Duration,
    ) -> Result<Option<ExitInfo>, TableError> {
        let entry = self.find(owner, id)?;
        entry.restarts().end();
        let run = entry.run();
        let exit = run.unit.terminate(grace.min(MAX_PROCESS_WAIT)).await;
        self.lock().remove(&entry.key);
        self.report_exit(&entry, &run);
        self.report_end(&entry, run.generation);
        Ok(exit)
    }

    /// Forgets a process that is over (`StillRunning` while it runs or may restart).
    pub fn release(&self, owner: &Owner, id: &str) -> Result<ExitInfo, TableError> {
        let entry = self.find(owner, id)?;
        if entry.restarts().may_return() {
            return Err(TableError::StillRunning);
        }
        let run = entry.run();
        let exit = run.unit.try_exit().ok_or(TableError::StillRunning)?;
        self.lock().remove(&entry.key);
        self.report_end(&entry, run.generation);
        Ok(exit)
    }

    /// Turns lifecycle events for this process on or off.
    pub fn watch(&self, owner: &Owner, id: &str, on: bool) -> Result<(), TableError> {
        self.find(owner, id)?.watched.store(on, Ordering::Relaxed);
        Ok(())
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
            entry.restarts().end();
            let run = entry.run();
            run.unit.terminate(grace).await;
            self.lock().remove(&k);
            self.report_exit(&entry, &run);
        }
    }
}
