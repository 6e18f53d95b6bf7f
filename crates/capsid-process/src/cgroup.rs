//! Containment by cgroup: every child gets its own cgroup under the `pids` controller (with
//! `pids.max` set when a limit is asked for) and enters it before exec, so everything it ever
//! forks is counted and can be found again — even a process that left the child's process
//! group with `setsid`. `RLIMIT_NPROC` cannot do this job: it counts every process of the user
//! and does not bind root.
//!
//! Each cgroup is named after the host that made it (`<pid>-<start time>-<random>`), so a host
//! that starts after one was killed with SIGKILL finds that host's leftovers and kills them
//! ([`sweep_stale_cgroups`]).
//!
//! Supported hierarchies: cgroup v1 with `pids` mounted at `/sys/fs/cgroup/pids`, or cgroup v2
//! at `/sys/fs/cgroup` with `pids` in `cgroup.subtree_control`. Where neither is writable a
//! spawn asking for a pids limit fails closed; one that asks for none runs without a cgroup.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use capsid_core::limits::STALE_CGROUP_KILL_ROUNDS;

use crate::error::ProcessError;

const V1_ROOT: &str = "/sys/fs/cgroup/pids";
const V2_ROOT: &str = "/sys/fs/cgroup";
/// capsid's own subtree under the controller root.
const SUBTREE: &str = "capsid";

/// The `pids` controller's root, found once (the hierarchy does not change under a host).
fn root() -> Option<PathBuf> {
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ROOT.get_or_init(find_root).clone()
}

fn find_root() -> Option<PathBuf> {
    let v1 = Path::new(V1_ROOT);
    if v1.join("cgroup.procs").is_file() && !v1.join("cgroup.controllers").exists() {
        return Some(v1.to_owned());
    }
    let v2 = Path::new(V2_ROOT);
    let enabled = std::fs::read_to_string(v2.join("cgroup.subtree_control")).ok()?;
    enabled
        .split_whitespace()
        .any(|c| c == "pids")
        .then(|| v2.to_owned())
}

/// Whether a pids limit can be enforced here (a writable `pids` controller exists).
pub fn pids_limit_available() -> bool {
    root().is_some()
}

/// This host's name prefix for its cgroups: its pid and start time (which tells a live host
/// from a later process that reused its pid).
fn host_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| {
        let me = std::process::id();
        format!("{me}-{}-", start_time(me).unwrap_or(0))
    })
}

/// A process's start time (clock ticks after boot, `/proc/<pid>/stat` field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether the host that named a cgroup `name` is still running.
fn owner_alive(name: &str) -> bool {
    let mut parts = name.split('-');
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
        _ => false,
    }
}

/// SIGKILLs every process in the cgroup at `dir`; returns the pids it found.
fn kill_members(dir: &Path) -> Vec<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for &pid in &pids {
        if let Ok(raw) = i32::try_from(pid)
            && raw > 0
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    pids
}

/// What [`sweep_stale_cgroups`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StaleSweep {
    /// Cgroups of hosts no longer running that were removed.
    pub removed: usize,
    /// Processes found in them and killed.
    pub killed: usize,
    /// Cgroups that still held processes when the sweep gave up (they are reported, and the
    /// next sweep tries again).
    pub stuck: usize,
}

/// Kills what hosts that died without cleaning up (SIGKILL, power loss) left in their
/// cgroups, and removes those cgroups. Cgroups of running hosts are not touched. Call at
/// host start; a no-op where no `pids` controller is writable.
pub fn sweep_stale_cgroups() -> StaleSweep {
    let mut report = StaleSweep::default();
    let Some(parent) = root().map(|r| r.join(SUBTREE)) else {
        return report;
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return report;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().is_dir() || owner_alive(&name) {
            continue;
        }
        let dir = entry.path();
        let mut removed = false;
        for _ in 0..STALE_CGROUP_KILL_ROUNDS {
            report.killed += kill_members(&dir).len();
            if std::fs::remove_dir(&dir).is_ok() {
                removed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if removed {
            report.removed += 1;
        } else {
            report.stuck += 1;
            tracing::warn!(cgroup = %dir.display(), "a stale capsid cgroup still holds processes");
        }
    }
    report
}

/// capsid's subtree under the controller, created (and on v2 given the `pids` controller)
/// by the first spawn that needs it.
fn prepared_parent() -> Result<PathBuf, ProcessError> {
    static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let parent = root()
        .ok_or(ProcessError::PidsLimitUnavailable)?
        .join(SUBTREE);
    if READY.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(parent);
    }
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return Err(ProcessError::PidsLimitUnavailable),
    }
    // cgroup v2 gives a child cgroup a controller only when its parent delegates it.
    let delegate = parent.join("cgroup.subtree_control");
    if delegate.exists()
        && !std::fs::read_to_string(&delegate)
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "pids")
    {
        std::fs::write(&delegate, "+pids").map_err(|_| ProcessError::PidsLimitUnavailable)?;
    }
    READY.store(true, std::sync::atomic::Ordering::Release);
    Ok(parent)
}

/// Numbers this host's cgroups.
static NEXT_CGROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One child's cgroup. Removed (when empty) by [`PidsCgroup::remove`] or on drop.
#[derive(Debug)]
pub(crate) struct PidsCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before fork: the child writes `0` to it to enter.
    procs: OwnedFd,
}

fn os(what: &'static str) -> impl Fn(std::io::Error) -> ProcessError {
    move |source| ProcessError::Os { what, source }
}

impl PidsCgroup {
    /// A new cgroup allowing at most `max` tasks (no limit of its own when `None`).
    pub(crate) fn create(max: Option<u64>) -> Result<Self, ProcessError> {
        let parent = prepared_parent()?;
        // The host prefix is unique to this host; the counter, to the cgroup within it.
        let n = NEXT_CGROUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("{}{n}", host_prefix()));
        std::fs::create_dir(&dir).map_err(os("creating the pids cgroup"))?;
        let made = (|| {
            if let Some(max) = max {
                std::fs::write(dir.join("pids.max"), max.to_string())
                    .map_err(os("setting pids.max"))?;
            }
            let procs = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(dir.join("cgroup.procs"))
                .map_err(os("opening cgroup.procs"))?;
            Ok(OwnedFd::from(procs))
        })();
        match made {
            Ok(procs) => Ok(Self { dir, procs }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The descriptor the child writes `0` to, to enter the cgroup.
    pub(crate) fn procs(&self) -> &OwnedFd {
        &self.procs
    }

    /// SIGKILLs every process in the cgroup, wherever its process group or session; returns
    /// the pids it found.
    pub(crate) fn kill_all(&self) -> Vec<u32> {
        kill_members(&self.dir)
    }

    /// Removes the cgroup; `false` while tasks remain in it.
    pub(crate) fn remove(&self) -> bool {
        std::fs::remove_dir(&self.dir).is_ok()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Best effort: a cgroup that still holds tasks stays (and is reported by the sweep).
        let _ = std::fs::remove_dir(&self.dir);
    }
}
