//! One loaded capsule: its compiled component, the instances that serve its calls, and the
//! rules for a call (deadline, memory, what a trap does).
//!
//! Instances are kept warm and reused: a call takes an idle instance, or instantiates one from
//! the shared [`CapsulePre`] (and runs its `init`) when none is idle, up to
//! `limits.max_instances` at once. A trap, deadline or memory limit drops the instance and
//! leaves the capsule `failed` until it is reloaded; a guest error is an ordinary answer and
//! the instance goes back to the pool.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use capsid_core::CapsuleId;
use capsid_core::limits::{
    HOST_CALL_GRACE, MAX_TOOL_INPUT_BYTES, MAX_TOOL_OUTPUT_BYTES, TOOL_CALL_RESERVE,
};

/// How often a call whose deadline is suspended is looked at again.
const SUSPENDED_RECHECK: Duration = Duration::from_millis(100);
use capsid_core::sync::{lock, read, write};
use capsid_core::tally::{Standing, Tally, TallyMember};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use wasmtime::Store;
use wasmtime::Trap;

use crate::bindings::{CapsuleExports, CapsulePre, InstantiateError, WitError, WitRestartCause};
use crate::control::{CURRENT_CALL, CallControl};
use crate::engine::{LoadKind, LoadedComponent};
use crate::error::{CapsuleError, GuestError};
use crate::host::{CapsuleContext, HostState, MemoryLimitHit, new_store};
use crate::logbuf::{CapsuleLog, LogLevel, LogSource};
use crate::warmth::Warmth;
use capsid_manifest::Manifest;

/// Where a capsule is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapsuleState {
    /// Being compiled, granted and instantiated.
    Loading,
    /// Serving calls.
    Ready,
    /// Refusing calls until reloaded; the reason says why.
    Failed(String),
    /// Shutting its instances down.
    Unloading,
}

impl std::fmt::Display for CapsuleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Loading => f.write_str("loading"),
            Self::Ready => f.write_str("ready"),
            Self::Failed(reason) => write!(f, "failed ({reason})"),
            Self::Unloading => f.write_str("unloading"),
        }
    }
}

impl CapsuleState {
    /// How `status` counts it.
    pub(crate) fn standing(&self) -> Standing {
        match self {
            Self::Ready => Standing::Ready,
            Self::Failed(_) => Standing::Failed,
            Self::Loading | Self::Unloading => Standing::Other,
        }
    }
}

/// Why a capsule was loaded again; told to a capsule that exports `lifecycle.restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// An operator asked for it.
    Reload,
    /// The health monitor brought it back after it failed.
    Recovery,
    /// Dev mode: its manifest or component changed on disk.
    SourceChanged,
}

impl RestartCause {
    /// The cause as the WIT spells it (`reload`, `recovery`, `source-changed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reload => "reload",
            Self::Recovery => "recovery",
            Self::SourceChanged => "source-changed",
        }
    }
}

impl std::fmt::Display for RestartCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reload, as the capsule loaded by it is told: why, and how many this capsule has had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Why it was loaded again.
    pub cause: RestartCause,
    /// This reload's number: one more than the reloads that succeeded before it.
    pub count: u32,
}

impl From<RestartCause> for WitRestartCause {
    fn from(cause: RestartCause) -> Self {
        match cause {
            RestartCause::Reload => Self::Reload,
            RestartCause::Recovery => Self::Recovery,
            RestartCause::SourceChanged => Self::SourceChanged,
        }
    }
}

impl From<WitError> for GuestError {
    fn from(e: WitError) -> Self {
        match e {
            WitError::Denied => Self::Denied,
            WitError::Invalid(m) => Self::Invalid(m),
            WitError::NotFound => Self::NotFound,
            WitError::QuotaExceeded => Self::QuotaExceeded,
            WitError::Internal(m) => Self::Internal(m),
        }
    }
}

/// Idle instances one instantiation may take back from other capsules when the pool is full
/// (each freed slot may be taken by a concurrent instantiation first).
const MAX_SLOT_RECLAIMS: u32 = 8;

/// A call into the guest's exports.
enum Call<'a> {
    Init(&'a [(String, String)]),
    Tool { name: &'a str, input: &'a str },
    Event { topic: &'a str, payload: &'a [u8] },
    Restart(Restart),
    Shutdown,
}

impl Call<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Init(_) => "init",
            Self::Tool { .. } => "call-tool",
            Self::Event { .. } => "handle-event",
            Self::Restart(_) => "restart",
            Self::Shutdown => "shutdown",
        }
    }
}

struct Warm {
    store: Store<HostState>,
    exports: CapsuleExports,
}

/// Starts the clock of one call: its deadline (`deadline`, moved later by the time the
/// call's chain waits for a person) and its caller's cancellation, checked at every epoch
/// tick, and a fresh memory-limit flag.
fn arm(store: &mut Store<HostState>, deadline: std::time::Instant, control: CallControl) {
    let data = store.data_mut();
    data.deadline = deadline;
    data.limiter.hit = false;
    data.control = control;
    store.set_epoch_deadline(1);
}

/// `work`, cut off once `deadline` and then `grace` have passed, the deadline moved by the
/// time it was suspended (`control`'s chain waiting for a person's approval).
async fn watchdog<T>(
    work: impl Future<Output = T>,
    deadline: std::time::Instant,
    grace: Duration,
    control: &CallControl,
) -> Result<T, tokio::time::error::Elapsed> {
    let deadline = tokio::time::Instant::from_std(deadline) + grace;
    tokio::pin!(work);
    loop {
        let (moved, suspended) = control.deadline_moved();
        let due = deadline + moved;
        // While suspended the deadline is not known yet: look again a little later.
        let wake = if suspended {
            tokio::time::Instant::now() + SUSPENDED_RECHECK
        } else {
            due
        };
        match tokio::time::timeout_at(wake, &mut work).await {
            Ok(out) => return Ok(out),
            // Past the deadline, unless a wait began or ended meanwhile.
            Err(elapsed) if control.deadline_moved() == (moved, false) => return Err(elapsed),
            Err(_) => {}
        }
    }
}

async fn invoke(
    warm: &mut Warm,
    call: &Call<'_>,
) -> wasmtime::Result<Result<Option<String>, WitError>> {
    let guest = &warm.exports.guest;
    let store = &mut warm.store;
    Ok(match *call {
        Call::Init(config) => guest.call_init(store, config).await?.map(|()| None),
        Call::Tool { name, input } => guest.call_call_tool(store, name, input).await?.map(Some),
        Call::Event { topic, payload } => guest
            .call_handle_event(store, topic, payload)
            .await?
            .map(|()| None),
        Call::Restart(restart) => match &warm.exports.lifecycle {
            Some(lifecycle) => lifecycle
                .call_restart(store, restart.cause.into(), restart.count)
                .await?
                .map(|()| None),
            None => Ok(None),
        },
        Call::Shutdown => {
            guest.call_shutdown(store).await?;
            Ok(None)
        }
    })
}

/// A loaded capsule. Shared behind an `Arc` by the registry and its dispatcher.
pub struct LoadedCapsule {
    pub(crate) manifest: Manifest,
    pub(crate) dir: PathBuf,
    pub(crate) blake3: String,
    pub(crate) load_kind: LoadKind,
    engine: wasmtime::Engine,
    pre: CapsulePre,
    pub(crate) cx: Arc<CapsuleContext>,
    idle: Mutex<Vec<Warm>>,
    permits: Semaphore,
    state: RwLock<CapsuleState>,
    /// Its place in the registry's live counts, moved with `state` under its lock.
    tally: TallyMember,
    pub(crate) dispatchers: Mutex<Vec<JoinHandle<()>>>,
    /// When its last call (tool or event) ended, or when it loaded.
    last_used: Mutex<std::time::Instant>,
    /// Every capsule's idle instances, to take one back when the instance pool is full.
    warmth: Arc<Warmth>,
}

impl std::fmt::Debug for LoadedCapsule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCapsule")
            .field("name", &self.manifest.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl LoadedCapsule {
    pub(crate) fn new(
        manifest: Manifest,
        dir: PathBuf,
        component: LoadedComponent,
        pre: CapsulePre,
        cx: Arc<CapsuleContext>,
        warmth: Arc<Warmth>,
    ) -> Self {
        let permits = Semaphore::new(manifest.limits.max_instances as usize);
        Self {
            manifest,
            dir,
            engine: component.component.engine().clone(),
            blake3: component.blake3,
            load_kind: component.kind,
            pre,
            cx,
            idle: Mutex::default(),
            permits,
            state: RwLock::new(CapsuleState::Loading),
            tally: TallyMember::default(),
            dispatchers: Mutex::default(),
            last_used: Mutex::new(std::time::Instant::now()),
            warmth,
        }
    }

    /// When its last call ended (or it loaded).
    pub(crate) fn last_used(&self) -> std::time::Instant {
        *lock(&self.last_used)
    }

    /// Whether it has an idle instance it could give up ([`LoadedCapsule::release_idle`]).
    pub(crate) fn has_releasable(&self) -> bool {
        lock(&self.idle)
            .iter()
            .any(|w| !w.store.data().holds_children())
    }

    /// Gives up its least recently used idle instance that holds no background children
    /// (dropping one that does would kill them): its `shutdown` runs under the deadline, then
    /// it is dropped and its instance slot is free. Whether it had one.
    pub(crate) async fn release_idle(&self) -> bool {
        let taken = {
            let mut idle = lock(&self.idle);
            idle.iter()
                .position(|w| !w.store.data().holds_children())
                .map(|i| idle.remove(i))
        };
        let Some(warm) = taken else {
            return false;
        };
        self.shut_down_instance(warm).await;
        true
    }

    /// How long no call has run: `None` while one is running.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if self.permits.available_permits() < self.manifest.limits.max_instances as usize {
            return None;
        }
        Some(lock(&self.last_used).elapsed())
    }

    fn touch(&self) {
        *lock(&self.last_used) = std::time::Instant::now();
    }

    /// Its name.
    pub fn name(&self) -> &CapsuleId {
        &self.manifest.name
    }

    /// Its current state.
    pub fn state(&self) -> CapsuleState {
        read(&self.state).clone()
    }

    pub(crate) fn set_state(&self, state: CapsuleState) {
        let mut current = write(&self.state);
        let from = current.standing();
        *current = state;
        self.tally.moved(from, current.standing());
    }

    /// Counts it in `tally` from now on, as its state moves.
    pub(crate) fn join_tally(&self, tally: Arc<Tally>) {
        let current = write(&self.state);
        self.tally.join(tally, current.standing());
    }

    /// Stops counting it.
    pub(crate) fn leave_tally(&self) {
        let current = write(&self.state);
        self.tally.leave(current.standing());
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its log.
    pub fn log(&self) -> &CapsuleLog {
        &self.cx.log
    }

    /// Instances idle in its pool.
    pub fn idle_instances(&self) -> usize {
        lock(&self.idle).len()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.manifest.limits.call_timeout_ms)
    }

    fn ensure_ready(&self) -> Result<(), CapsuleError> {
        match self.state() {
            CapsuleState::Ready => Ok(()),
            state => Err(CapsuleError::NotReady {
                capsule: self.name().clone(),
                state: state.to_string(),
            }),
        }
    }

    /// Runs `call` on `warm` under the capsule's deadline and memory limit, until `control`
    /// cancels it.
    async fn run(
        &self,
        warm: &mut Warm,
        call: &Call<'_>,
        control: &CallControl,
    ) -> Result<Option<String>, CapsuleError> {
        let control = &control.asking(matches!(call, Call::Tool { .. } | Call::Event { .. }));
        let (deadline, capped) = control.deadline_for(self.timeout());
        arm(&mut warm.store, deadline, control.clone());
        // A host call running past a calling capsule's deadline is cut within that
        // capsule's reserve, so the caller still has time to answer.
        let grace = if capped {
            HOST_CALL_GRACE.min(TOOL_CALL_RESERVE / 2)
        } else {
            HOST_CALL_GRACE
        };
        let outcome = {
            let invoked = CURRENT_CALL.scope(control.clone(), invoke(warm, call));
            let watched = watchdog(invoked, deadline, grace, control);
            tokio::pin!(watched);
            tokio::select! {
                biased;
                outcome = &mut watched => outcome,
                () = control.cancellation() => {
                    // Running wasm stops at the next epoch tick; a host call in progress is
                    // cut after the grace.
                    match tokio::time::timeout(HOST_CALL_GRACE, &mut watched).await {
                        Ok(outcome) => outcome,
                        Err(_) => return Err(self.cancelled()),
                    }
                }
            }
        };
        // The next call on this instance reports to its own caller, not this one.
        warm.store.data_mut().control = CallControl::default();
        match outcome {
            Err(_) if control.is_cancelled() => Err(self.cancelled()),
            Err(_) => Err(self.timeout_error(capped)),
            Ok(Err(trap)) => Err(self.classify(&trap, &warm.store, control, capped)),
            Ok(Ok(Err(e))) => Err(CapsuleError::Guest {
                capsule: self.name().clone(),
                call: call.name(),
                error: e.into(),
            }),
            Ok(Ok(Ok(answer))) => Ok(answer),
        }
    }

    /// The deadline passed: the capsule's own (`capped` false), or its calling capsule's.
    fn timeout_error(&self, capped: bool) -> CapsuleError {
        if capped {
            return CapsuleError::CallerDeadline {
                capsule: self.name().clone(),
            };
        }
        CapsuleError::Timeout {
            capsule: self.name().clone(),
            timeout_ms: self.manifest.limits.call_timeout_ms,
        }
    }

    fn cancelled(&self) -> CapsuleError {
        CapsuleError::Cancelled {
            capsule: self.name().clone(),
        }
    }

    fn classify(
        &self,
        error: &wasmtime::Error,
        store: &Store<HostState>,
        control: &CallControl,
        capped: bool,
    ) -> CapsuleError {
        if error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return CapsuleError::RuntimeFull {
                capsule: self.name().clone(),
            };
        }
        if store.data().limiter.hit || error.downcast_ref::<MemoryLimitHit>().is_some() {
            return CapsuleError::MemoryLimit {
                capsule: self.name().clone(),
                memory_mb: self.manifest.limits.memory_mb,
            };
        }
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return if control.is_cancelled() {
                self.cancelled()
            } else {
                self.timeout_error(capped)
            };
        }
        CapsuleError::Trap {
            capsule: self.name().clone(),
            reason: format!("{error:#}"),
        }
    }

    /// A new instance, initialised. When the instance pool is full, idle instances of any
    /// capsule (least recently used first) are dropped to make room.
    async fn instantiate(&self) -> Result<Warm, CapsuleError> {
        let mut reclaimed = 0;
        let (store, exports) = loop {
            let mut store = new_store(
                &self.engine,
                self.cx.clone(),
                self.manifest.limits.memory_mb,
            );
            let deadline = std::time::Instant::now() + self.timeout();
            arm(&mut store, deadline, CallControl::default());
            match self.pre.instantiate_async(&mut store).await {
                Ok(e) => break (store, e),
                Err(InstantiateError::Instantiate(e)) => {
                    let full = e
                        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                        .is_some();
                    // Another instantiation may take the freed slot first: try a few times.
                    if full && reclaimed < MAX_SLOT_RECLAIMS && self.warmth.reclaim().await {
                        reclaimed += 1;
                        continue;
                    }
                    return Err(self.classify(&e, &store, &CallControl::default(), false));
                }
                Err(InstantiateError::Exports(e)) => {
                    return Err(CapsuleError::WrongWorld {
                        capsule: self.name().clone(),
                        reason: format!("{e:#}"),
                    });
                }
            }
        };
        let mut warm = Warm { store, exports };
        let config = self.cx.config.clone();
        self.run(&mut warm, &Call::Init(&config), &CallControl::default())
            .await?;
        Ok(warm)
    }

    /// Instantiates the first instance (running `init`, then `restart` after a reload) so
    /// that a broken capsule fails at load, not at its first call.
    pub(crate) async fn warm_up(&self, restart: Option<Restart>) -> Result<(), CapsuleError> {
        let mut warm = self.instantiate().await?;
        if let Some(restart) = restart {
            self.run(&mut warm, &Call::Restart(restart), &CallControl::default())
                .await?;
        }
        lock(&self.idle).push(warm);
        Ok(())
    }

    /// Runs `call` on an idle (or new) instance, marking the capsule failed if it traps.
    async fn call(
        &self,
        call: Call<'_>,
        control: &CallControl,
    ) -> Result<Option<String>, CapsuleError> {
        self.ensure_ready()?;
        // A call from another capsule waits no longer than its caller may.
        let (until, capped) = control.deadline_for(self.timeout());
        // The deadline as of now: moved by the time the chain has waited for a person.
        let until = tokio::time::Instant::from_std(until + control.deadline_moved().0);
        let permit = tokio::select! {
            biased;
            () = control.cancellation() => return Err(self.cancelled()),
            permit = tokio::time::timeout_at(until, self.permits.acquire()) => permit,
        };
        let _permit = match permit {
            Ok(Ok(permit)) => permit,
            Err(_) if capped => return Err(self.timeout_error(true)),
            _ => {
                return Err(CapsuleError::Busy {
                    capsule: self.name().clone(),
                    max_instances: self.manifest.limits.max_instances,
                });
            }
        };
        // The capsule may have failed or begun unloading while this call waited, and its
        // caller may have given up.
        self.ensure_ready()?;
        if control.is_cancelled() {
            return Err(self.cancelled());
        }
        let idle = lock(&self.idle).pop();
        let mut warm = match idle {
            Some(w) => w,
            None if capped => match tokio::time::timeout_at(until, self.instantiate()).await {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => return Err(self.fail_if_fatal(e).await),
                // Its `init` was cut by the calling capsule's deadline, not its own.
                Err(_) => return Err(self.timeout_error(true)),
            },
            None => match self.instantiate().await {
                Ok(w) => w,
                Err(e) => return Err(self.fail_if_fatal(e).await),
            },
        };
        let ran = self.run(&mut warm, &call, control).await;
        self.touch();
        match ran {
            Err(e) if e.is_fatal() => Err(self.fail_if_fatal(e).await),
            // Its instance was stopped mid-call: dropped, with its background children.
            Err(e @ (CapsuleError::Cancelled { .. } | CapsuleError::CallerDeadline { .. })) => {
                Err(e)
            }
            result => {
                if self.state() == CapsuleState::Ready {
                    lock(&self.idle).push(warm);
                }
                result
            }
        }
    }

    async fn fail_if_fatal(&self, error: CapsuleError) -> CapsuleError {
        if error.is_fatal() {
            // A failed capsule waits for nobody: what it asked is withdrawn (reloading
            // lets it ask again).
            self.cx.services.approvals.withdraw_capsule(self.name());
            let reason = error.to_string();
            self.set_state(CapsuleState::Failed(reason.clone()));
            lock(&self.idle).clear();
            self.cx.log.push(LogLevel::Error, LogSource::Host, &reason);
            let details = serde_json::json!({ "reason": reason });
            let resource = format!("capsule://{}", self.name());
            let _ = self
                .cx
                .note(
                    capsid_audit::action::CAPSULE_FAILED,
                    &resource,
                    capsid_audit::Decision::Info,
                    &details,
                )
                .await;
        }
        error
    }

    /// Runs tool `tool` with `input_json`.
    pub async fn call_tool(&self, tool: &str, input_json: &str) -> Result<String, CapsuleError> {
        self.call_tool_with(tool, input_json, &CallControl::default())
            .await
    }

    /// Runs tool `tool` with `input_json` for a caller holding `control` (to cancel it and
    /// watch its progress).
    pub async fn call_tool_with(
        &self,
        tool: &str,
        input_json: &str,
        control: &CallControl,
    ) -> Result<String, CapsuleError> {
        if !self.manifest.tools.iter().any(|t| t.name == tool) {
            return Err(CapsuleError::UnknownTool {
                capsule: self.name().clone(),
                tool: tool.to_owned(),
            });
        }
        if input_json.len() > MAX_TOOL_INPUT_BYTES {
            return Err(self.too_big("tool input", input_json.len(), MAX_TOOL_INPUT_BYTES));
        }
        let answer = self
            .call(
                Call::Tool {
                    name: tool,
                    input: input_json,
                },
                control,
            )
            .await?
            .unwrap_or_default();
        if answer.len() > MAX_TOOL_OUTPUT_BYTES {
            return Err(self.too_big("tool output", answer.len(), MAX_TOOL_OUTPUT_BYTES));
        }
        Ok(answer)
    }

    fn too_big(&self, what: &'static str, len: usize, max: usize) -> CapsuleError {
        CapsuleError::TooBig {
            capsule: self.name().clone(),
            what,
            len,
            max,
        }
    }

    /// Delivers one event to `handle-event`.
    pub async fn handle_event(&self, topic: &str, payload: &[u8]) -> Result<(), CapsuleError> {
        self.call(Call::Event { topic, payload }, &CallControl::default())
            .await
            .map(|_| ())
    }

    /// Runs `shutdown` on an instance about to be dropped (under the deadline; a failure is
    /// logged, the instance goes either way).
    async fn shut_down_instance(&self, mut warm: Warm) {
        if let Err(e) = self
            .run(&mut warm, &Call::Shutdown, &CallControl::default())
            .await
        {
            self.cx
                .log
                .push(LogLevel::Warn, LogSource::Host, &e.to_string());
        }
    }

    /// Stops the dispatchers and calls `shutdown` on every idle instance (each under the
    /// deadline); busy instances are dropped when their call returns.
    pub(crate) async fn shut_down(&self) {
        self.set_state(CapsuleState::Unloading);
        for task in lock(&self.dispatchers).drain(..) {
            task.abort();
        }
        let idle: Vec<Warm> = lock(&self.idle).drain(..).collect();
        for warm in idle {
            self.shut_down_instance(warm).await;
        }
    }
}

impl Drop for LoadedCapsule {
    fn drop(&mut self) {
        for task in lock(&self.dispatchers).drain(..) {
            task.abort();
        }
    }
}
