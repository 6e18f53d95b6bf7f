//! A running child: started in its own process group with its limits, its output pumped into
//! rings, reaped (with its resource usage) as soon as it exits, and never signalled after.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use capsid_core::limits::{MAX_STDIN_WRITE_BYTES, PROCESS_PIPE_BYTES, PROCESS_READ_CHUNK};
use capsid_core::sync::lock;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cgroup::PidsCgroup;
use crate::error::ProcessError;
use crate::exec::{self, CHILD_STACK_BYTES, ExecPlan, Spawned};
use crate::orphans;
use crate::ring::OutputRing;
use crate::sandbox;
use crate::spec::{RingPolicy, SpawnSpec};
use crate::sys;

/// How a child ended and what it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// User plus system CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// Peak resident memory, in bytes.
    pub mem_bytes_peak: u64,
    /// Wall time from spawn to exit, in milliseconds.
    pub wall_ms: u64,
}

impl ExitInfo {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A spawn to make: the plan, the pids cgroup whose descriptor the child writes to (kept
/// open here until the spawn is done, whatever happens to the caller), and where to answer.
type SpawnJob = (
    ExecPlan,
    Option<Arc<PidsCgroup>>,
    tokio::sync::oneshot::Sender<std::io::Result<Unclaimed>>,
);

/// A started child on its way to the caller. If the caller is gone before it takes it (its
/// call was cancelled, even just after the answer was sent), nobody would track the child:
/// dropped unclaimed, it is killed with its group and reaped.
struct Unclaimed(Option<Spawned>);

impl Drop for Unclaimed {
    fn drop(&mut self) {
        let Some(child) = self.0.take() else {
            return;
        };
        if let Ok(pgid) = i32::try_from(child.pid) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        // Reaping waits for the exit: never on the thread that dropped it.
        let reap = move || {
            let _ = sys::wait4(child.pid);
            orphans::leader_reaped(child.pid, None);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("capsid-reap".into())
            .spawn(reap)
        {
            tracing::warn!(error = %e, "cannot reap an unclaimed child");
        }
    }
}

/// Children are started from one long-lived thread: `PR_SET_PDEATHSIG` fires when the
/// thread that made a child exits, so spawning from a pool thread that may retire would kill
/// children at random. This thread lives as long as the host process.
fn spawner() -> &'static Mutex<std_mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<std_mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("capsid-spawner".into())
            .spawn(move || {
                // The children's stack until they exec: one at a time, so one will do.
                let mut stack = vec![0u8; CHILD_STACK_BYTES];
                for (plan, cgroup, reply) in rx {
                    let procs = cgroup.as_ref().map(|c| c.procs().as_raw_fd());
                    let spawned = exec::spawn(&plan, procs, &mut stack);
                    if let Ok(child) = &spawned {
                        orphans::leader_started(child.pid);
                    }
                    drop(cgroup);
                    // A caller that gave up drops the answer, and with it the child.
                    let _ = reply.send(spawned.map(|child| Unclaimed(Some(child))));
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread; spawns will fail");
        }
        Mutex::new(tx)
    })
}

async fn start(plan: ExecPlan, cgroup: Option<Arc<PidsCgroup>>) -> std::io::Result<Spawned> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    lock(spawner())
        .send((plan, cgroup, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    let mut unclaimed = answer
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread is gone")))?;
    unclaimed
        .0
        .take()
        .ok_or_else(|| std::io::Error::other("the started child was already taken"))
}

/// A cgroup the stages of one pipeline share, disposed of (what is left in it killed and
/// reaped, the cgroup removed) when its last [`CgroupShare`] goes: each started stage holds
/// one until it is reaped, and the pipeline holds one while it starts them.
#[derive(Debug)]
pub(crate) struct SharedCgroup {
    cgroup: Arc<PidsCgroup>,
    holds: AtomicUsize,
}

impl SharedCgroup {
    /// Shares `cgroup`; the first hold on it.
    pub(crate) fn share(cgroup: PidsCgroup) -> CgroupShare {
        CgroupShare(Some(Arc::new(Self {
            cgroup: Arc::new(cgroup),
            holds: AtomicUsize::new(1),
        })))
    }
}

/// One hold on a [`SharedCgroup`]. However it goes (a stage reaped, a start that failed or
/// was cancelled), the last one disposes of the cgroup.
#[derive(Debug)]
pub(crate) struct CgroupShare(Option<Arc<SharedCgroup>>);

impl CgroupShare {
    /// Another hold on the same cgroup.
    pub(crate) fn share(&self) -> Self {
        if let Some(shared) = &self.0 {
            shared.holds.fetch_add(1, AtomicOrdering::AcqRel);
        }
        Self(self.0.clone())
    }

    fn cgroup(&self) -> Option<Arc<PidsCgroup>> {
        self.0.as_ref().map(|s| s.cgroup.clone())
    }

    /// Lets go; the cgroup, for the caller to dispose of, when this was the last hold.
    fn release(mut self) -> Option<Arc<PidsCgroup>> {
        let shared = self.0.take()?;
        (shared.holds.fetch_sub(1, AtomicOrdering::AcqRel) == 1).then(|| shared.cgroup.clone())
    }
}

impl Drop for CgroupShare {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take()
            && shared.holds.fetch_sub(1, AtomicOrdering::AcqRel) == 1
        {
            orphans::cgroup_released(shared.cgroup.clone());
        }
    }
}

/// A child's hold on its cgroup.
#[derive(Debug)]
enum CgroupHold {
    /// A cgroup of its own.
    Own(Arc<PidsCgroup>),
    /// Its pipeline's.
    Shared(CgroupShare),
}

impl CgroupHold {
    /// Lets go on the child's reaping: its cgroup to dispose of, if it was the last holder.
    fn let_go(self) -> Option<Arc<PidsCgroup>> {
        match self {
            Self::Own(cgroup) => Some(cgroup),
            Self::Shared(share) => share.release(),
        }
    }
}

/// What the reaper and the signallers share. `reaped` is held while signalling and while
/// reaping, so a signal can never reach a pid (or group) the OS may have reused.
#[derive(Debug)]
struct Shared {
    pid: u32,
    reaped: Mutex<bool>,
    /// The child's pids cgroup, removed once the group is gone (a shared one, once every
    /// stage's group is).
    cgroup: Mutex<Option<CgroupHold>>,
}

impl Shared {
    fn signal_group(&self, signal: Signal) -> Result<(), ProcessError> {
        let reaped = self
            .reaped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *reaped {
            return Err(ProcessError::Exited);
        }
        let pgid = i32::try_from(self.pid).map_err(|_| ProcessError::Exited)?;
        // pid 0 and negative pids would address other groups: never signal those.
        if pgid <= 0 {
            return Err(ProcessError::Exited);
        }
        killpg(Pid::from_raw(pgid), signal).map_err(|e| ProcessError::Os {
            what: "signalling the process group",
            source: std::io::Error::from_raw_os_error(e as i32),
        })
    }

    /// Kills what is left of the group, then reaps the leader. Blocking.
    fn reap(&self) -> Option<sys::Reaped> {
        let mut reaped = self
            .reaped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *reaped {
            return None;
        }
        if let Ok(pgid) = i32::try_from(self.pid)
            && pgid > 0
        {
            // The leader's zombie keeps the group id reserved until it is reaped, so this
            // reaches only the child's own group.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let cgroup = lock(&self.cgroup).take().and_then(CgroupHold::let_go);
        let result = sys::wait4(self.pid);
        *reaped = true;
        orphans::leader_reaped(self.pid, cgroup);
        result.ok()
    }
}

/// The child's cgroup: required for a pids limit (fails closed without one), made wherever a
/// `pids` controller is writable otherwise (so processes that leave the group can still be
/// found and killed), and skipped with a warning if that fails.
fn child_cgroup(pids: Option<u64>) -> Result<Option<PidsCgroup>, ProcessError> {
    if pids.is_some() {
        return PidsCgroup::create(pids).map(Some);
    }
    if !crate::cgroup::pids_limit_available() {
        return Ok(None);
    }
    match PidsCgroup::create(None) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            tracing::warn!(error = %e, "child started without a cgroup of its own");
            Ok(None)
        }
    }
}

/// Reaps the child if the reaper task is dropped before it could (the runtime shut down).
struct ReapOnDrop(Arc<Shared>);

impl Drop for ReapOnDrop {
    fn drop(&mut self) {
        let shared = self.0.clone();
        let unreaped = !*lock(&shared.reaped);
        if unreaped {
            // Killing and reaping may block briefly; never on the caller's thread.
            let _ = std::thread::Builder::new()
                .name("capsid-reap".into())
                .spawn(move || shared.reap());
        }
    }
}

/// A running (or exited) child. Dropping it kills its whole process group and reaps it.
#[derive(Debug)]
pub struct Child {
    shared: Arc<Shared>,
    program: String,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// Stdout as a pipe, when the spec asked for it piped (until taken).
    stdout_pipe: Mutex<Option<pipe::Receiver>>,
    stdout: Arc<OutputRing>,
    stderr: Arc<OutputRing>,
    exit: watch::Receiver<Option<ExitInfo>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

/// A child's stdin and stdout as pipes, to speak a protocol over (MCP's stdio transport).
#[derive(Debug)]
pub struct Stdio {
    /// Its stdin.
    pub stdin: pipe::Sender,
    /// Its stdout.
    pub stdout: pipe::Receiver,
}

/// Grows an output pipe towards `PROCESS_PIPE_BYTES` (bounded by the ring). Best effort: the
/// OS may cap it (`/proc/sys/fs/pipe-max-size`), which only costs throughput.
fn grow_pipe(fd: &OwnedFd, ring_bytes: usize) {
    let size = i32::try_from(PROCESS_PIPE_BYTES.min(ring_bytes)).unwrap_or(i32::MAX);
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
}

async fn pump<R: AsyncReadExt + Unpin>(mut from: R, ring: Arc<OutputRing>) {
    let chunk = PROCESS_READ_CHUNK.min(ring.capacity());
    let mut buf = vec![0u8; chunk];
    loop {
        let max = if ring.policy() == RingPolicy::Backpressure {
            ring.wait_for_space().await;
            ring.free().min(chunk)
        } else {
            chunk
        };
        match from.read(&mut buf[..max]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => ring.push(&buf[..n]),
        }
    }
    ring.close();
}

/// Waits for the exit (the pidfd turns readable), reaps, and publishes how it ended.
async fn reap_on_exit(
    shared: Arc<Shared>,
    pidfd: tokio::io::unix::AsyncFd<OwnedFd>,
    guard: ReapOnDrop,
    started: Instant,
    exit: watch::Sender<Option<ExitInfo>>,
) {
    let _ = pidfd.readable().await;
    // The pidfd is readable once the child is a zombie: the kill and `wait4` below return at
    // once, so they run here rather than on the blocking pool.
    let reaped = shared.reap();
    drop(guard);
    let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let info = reaped.map_or(
        ExitInfo {
            code: None,
            signal: None,
            cpu_ms: 0,
            mem_bytes_peak: 0,
            wall_ms,
        },
        |r| {
            let status = std::process::ExitStatus::from_raw(r.status);
            ExitInfo {
                code: status.code(),
                signal: status.signal(),
                cpu_ms: r.user_ms + r.system_ms,
                mem_bytes_peak: r.max_rss_bytes,
                wall_ms,
            }
        },
    );
    let _ = exit.send(Some(info));
}

impl Child {
    /// Starts `spec`: checked, resolved, in its own process group, limited, with its output
    /// pumped into two rings. Returns once the child is running.
    pub async fn spawn(spec: &SpawnSpec) -> Result<Self, ProcessError> {
        Self::spawn_in(spec, None).await
    }

    /// As [`Child::spawn`], in the pipeline's cgroup `share` holds, when given (the hold
    /// becomes the child's once it runs; a start that fails or is cancelled lets it go),
    /// instead of a cgroup of its own.
    pub(crate) async fn spawn_in(
        spec: &SpawnSpec,
        share: Option<CgroupShare>,
    ) -> Result<Self, ProcessError> {
        let spawn_error = |source| ProcessError::Spawn {
            program: spec.program.clone(),
            source,
        };
        let started = Instant::now();
        let launched = async {
            let checked = spec.check()?;
            let launch = sandbox::command(spec, &checked)?;
            let plan = ExecPlan::new(
                &launch.argv,
                &checked.env,
                &checked.cwd,
                spec.stdin,
                spec.limits,
                std::process::id(),
            )
            .map_err(spawn_error)?
            .inherit(launch.seccomp);
            let cgroup = match &share {
                Some(s) => s.cgroup(),
                None => child_cgroup(spec.limits.pids)?.map(Arc::new),
            };
            let child = start(plan, cgroup.clone()).await.map_err(spawn_error)?;
            Ok((child, cgroup))
        };
        let (child, cgroup) = launched.await?;
        let hold = match share {
            Some(s) => Some(CgroupHold::Shared(s)),
            None => cgroup.map(CgroupHold::Own),
        };
        let shared = Arc::new(Shared {
            pid: child.pid,
            reaped: Mutex::new(false),
            cgroup: Mutex::new(hold),
        });
        // From here on, any early return drops this guard, which kills and reaps.
        let guard = ReapOnDrop(shared.clone());
        let os = |what| move |source| ProcessError::Os { what, source };
        let pidfd = sys::pidfd_open(shared.pid).map_err(os("pidfd_open"))?;
        let pidfd = sys::watch_exit(pidfd).map_err(os("watching the pidfd"))?;
        let ring = |()| Arc::new(OutputRing::new(spec.ring_bytes, spec.ring_policy));
        let (stdout, stderr) = (ring(()), ring(()));
        let mut pumps = Vec::with_capacity(2);
        let mut stdout_pipe = None;
        for (fd, ring) in [(child.stdout, &stdout), (child.stderr, &stderr)] {
            grow_pipe(&fd, spec.ring_bytes);
            let rx = pipe::Receiver::from_owned_fd(fd).map_err(os("reading the child's output"))?;
            if spec.stdout_piped && Arc::ptr_eq(ring, &stdout) {
                // Its ring stays empty and is closed: the output goes to whoever takes it.
                stdout.close();
                stdout_pipe = Some(rx);
            } else {
                pumps.push(tokio::spawn(pump(rx, ring.clone())));
            }
        }
        let stdin = match child.stdin {
            Some(fd) => {
                Some(pipe::Sender::from_owned_fd(fd).map_err(os("writing the child's stdin"))?)
            }
            None => None,
        };
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(reap_on_exit(shared.clone(), pidfd, guard, started, exit_tx));
        Ok(Self {
            shared,
            program: spec.program.clone(),
            stdin: tokio::sync::Mutex::new(stdin),
            stdout_pipe: Mutex::new(stdout_pipe),
            stdout,
            stderr,
            exit,
            pumps: Mutex::new(pumps),
        })
    }

    /// The OS process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// What was started.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The stdout ring.
    pub fn stdout(&self) -> &Arc<OutputRing> {
        &self.stdout
    }

    /// The stderr ring.
    pub fn stderr(&self) -> &Arc<OutputRing> {
        &self.stderr
    }

    /// Writes all of `bytes` to stdin, in order; returns only when every byte is in the pipe.
    pub async fn write_stdin(&self, bytes: &[u8]) -> Result<(), ProcessError> {
        if bytes.len() > MAX_STDIN_WRITE_BYTES {
            return Err(ProcessError::Invalid(format!(
                "{} bytes of stdin in one write, at most {MAX_STDIN_WRITE_BYTES}",
                bytes.len()
            )));
        }
        let mut stdin = self.stdin.lock().await;
        let pipe = stdin.as_mut().ok_or(ProcessError::StdinClosed)?;
        pipe.write_all(bytes)
            .await
            .map_err(|e| ProcessError::Stdin(e.to_string()))
    }

    /// Takes its stdin and stdout pipes, when it was spawned with both (`stdin` and
    /// `stdout_piped`); `None` after the first time. Its stdin is then the taker's alone.
    pub async fn take_stdio(&self) -> Option<Stdio> {
        let mut stdin = self.stdin.lock().await;
        let mut stdout = lock(&self.stdout_pipe);
        if stdin.is_none() || stdout.is_none() {
            return None;
        }
        Some(Stdio {
            stdin: stdin.take()?,
            stdout: stdout.take()?,
        })
    }

    /// Takes its stdin pipe, when it has one; `None` after the first time.
    pub(crate) async fn take_stdin(&self) -> Option<pipe::Sender> {
        self.stdin.lock().await.take()
    }

    /// Takes its stdout pipe, when it was spawned with `stdout_piped`; `None` after the
    /// first time.
    pub(crate) fn take_stdout(&self) -> Option<pipe::Receiver> {
        lock(&self.stdout_pipe).take()
    }

    /// Closes stdin (the child sees end of input). Closing twice is fine.
    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }

    /// Sends `signal` to the child's whole process group.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        self.shared.signal_group(signal)
    }

    /// How it ended, if it has.
    pub fn try_exit(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Waits for it to exit, at most `timeout` (forever when `None`); `None` if it is still
    /// running at the deadline.
    pub async fn wait(&self, timeout: Option<Duration>) -> Option<ExitInfo> {
        let mut exit = self.exit.clone();
        let waited = exit.wait_for(Option::is_some);
        match timeout {
            None => waited.await.ok().and_then(|e| *e),
            Some(t) => tokio::time::timeout(t, waited)
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|e| *e),
        }
    }

    /// Waits for the exit and for both streams to end, then drains both rings.
    pub async fn wait_with_output(&self) -> (Option<ExitInfo>, Vec<u8>, Vec<u8>) {
        let info = self.wait(None).await;
        self.finish_pumps().await;
        (
            info,
            self.stdout.drain(usize::MAX),
            self.stderr.drain(usize::MAX),
        )
    }

    async fn finish_pumps(&self) {
        let pumps: Vec<_> = lock(&self.pumps).drain(..).collect();
        for p in pumps {
            let _ = p.await;
        }
    }

    /// Kills the whole group (SIGKILL) and waits for the exit.
    pub async fn kill(&self) -> Option<ExitInfo> {
        let _ = self.signal(Signal::SIGKILL);
        self.wait(None).await
    }

    /// Whether it has exited and been reaped.
    pub fn has_exited(&self) -> bool {
        self.try_exit().is_some()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // The reaper task keeps running and reaps; if the runtime is gone, its guard does.
        let _ = self.shared.signal_group(Signal::SIGKILL);
        for p in lock(&self.pumps).drain(..) {
            p.abort();
        }
    }
}
