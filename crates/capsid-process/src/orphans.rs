//! Reaping what a child leaves behind. When a leader dies, the host kills the rest of its
//! group; those processes were the leader's children, so they are re-parented — to init, which
//! in a container may never reap them. A host that calls [`become_subreaper`] gets them
//! instead, and reaps exactly those: zombies whose process group is one capsid created and
//! whose pid is not a leader it still tracks. Nothing else of the host's is touched.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use capsid_core::limits::ORPHAN_WATCH;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::cgroup::PidsCgroup;
use crate::procfs;

static SUBREAPER: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Tracked {
    /// Leaders not yet reaped by their own reaper: a sweep never touches them.
    live_leaders: HashSet<u32>,
    /// Tracked whose leader has been reaped and whose members may linger.
    dead_groups: HashSet<u32>,
    /// Processes found in a finished child's cgroup outside its group (they left it with
    /// `setsid` or `setpgid`), killed and waiting to be reaped.
    escaped: HashSet<u32>,
}

static GROUPS: LazyLock<Mutex<Tracked>> = LazyLock::new(Mutex::default);

fn groups() -> MutexGuard<'static, Tracked> {
    GROUPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes this process the reaper of the orphans of the children capsid starts (Linux
/// `PR_SET_CHILD_SUBREAPER`), and turns on sweeping them: after each leader's exit, and at
/// every `SIGCHLD` while the calling tokio runtime runs. Call once at host start, inside the
/// runtime; it affects the whole process.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    SUBREAPER.store(true, Ordering::Release);
    if tokio::runtime::Handle::try_current().is_ok() {
        let mut chld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        tokio::spawn(async move {
            while chld.recv().await.is_some() {
                let _ = tokio::task::spawn_blocking(sweep).await;
            }
        });
    }
    Ok(())
}

pub(crate) fn leader_started(pid: u32) {
    groups().live_leaders.insert(pid);
}

/// Called once a leader is reaped: its group may leave zombies behind, processes that left
/// the group are still in its cgroup (if it has one), and the cgroup can go once they are
/// gone. The cgroup is searched by the watcher below, off the reaping caller's path.
pub(crate) fn leader_reaped(pid: u32, cgroup: Option<Arc<PidsCgroup>>) {
    let subreaper = SUBREAPER.load(Ordering::Acquire);
    {
        let mut g = groups();
        g.live_leaders.remove(&pid);
        // Without the subreaper nothing sweeps: keeping the group would only grow the set.
        if subreaper {
            g.dead_groups.insert(pid);
        }
    }
    // Without a cgroup or the subreaper there is nothing to watch. An empty cgroup is removed
    // by the watcher too, off the reaping caller's path (it publishes the exit next).
    if !subreaper && cgroup.is_none() {
        return;
    }
    watch_until_gone(Some(pid), cgroup, subreaper);
}

/// Called when a cgroup no leader's reaping hands over is let go of (a pipeline's, when its
/// last hold goes outside a reap): what is left in it is killed, reaped and the cgroup
/// removed, as after a leader's reaping.
pub(crate) fn cgroup_released(cgroup: Arc<PidsCgroup>) {
    watch_until_gone(None, Some(cgroup), SUBREAPER.load(Ordering::Acquire));
}

/// Kills what is left in `cgroup` and sweeps the zombies of group `pid` until both are gone
/// (or `ORPHAN_WATCH` passes), then removes the cgroup.
fn watch_until_gone(pid: Option<u32>, cgroup: Option<Arc<PidsCgroup>>, subreaper: bool) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // No runtime to watch from (the host is shutting down): kill what is in the cgroup
        // now; init inherits the rest.
        if let Some(c) = &cgroup {
            let _ = c.kill_all();
            let _ = c.remove();
        }
        return;
    };
    // Killed members exit (and turn into zombies) a moment after the leader, later under
    // load: keep looking, more slowly each time, until the group is gone.
    handle.spawn(async move {
        let mut cgroup = cgroup;
        let mut escaped = HashSet::new();
        let mut delay = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        while waited < ORPHAN_WATCH {
            tokio::time::sleep(delay).await;
            waited += delay;
            delay = (delay * 4).min(Duration::from_millis(500));
            // Whatever is still in the cgroup left the group (or was forked since): kill it.
            if let Some(c) = &cgroup {
                let found = c.kill_all();
                if subreaper {
                    let mut g = groups();
                    for p in found.into_iter().filter(|&p| Some(p) != pid) {
                        if escaped.insert(p) {
                            g.escaped.insert(p);
                        }
                    }
                }
            }
            let lingering = if subreaper {
                let watched = escaped.clone();
                let (lingering, gone) = tokio::task::spawn_blocking(move || {
                    sweep();
                    let all = procfs::all();
                    // Anything left of the group, zombie or not, keeps it watched.
                    let lingering = pid.is_some_and(|pid| all.iter().any(|p| p.pgrp == pid));
                    let gone: Vec<u32> = watched
                        .into_iter()
                        .filter(|e| all.iter().all(|p| p.pid != *e))
                        .collect();
                    (lingering, gone)
                })
                .await
                .unwrap_or((true, Vec::new()));
                forget_escaped(&mut escaped, &gone);
                lingering || !escaped.is_empty()
            } else {
                false
            };
            if cgroup.as_ref().is_some_and(|c| c.remove()) {
                cgroup = None;
            }
            if cgroup.is_none() && !lingering {
                if let Some(pid) = pid {
                    groups().dead_groups.remove(&pid);
                }
                return;
            }
        }
        if let Some(pid) = pid {
            groups().dead_groups.remove(&pid);
        }
        let left: Vec<u32> = escaped.iter().copied().collect();
        forget_escaped(&mut escaped, &left);
        tracing::warn!(?pid, "members of a finished process group are still around");
    });
}

/// Stops treating `pids` as escapees to reap: they are gone (so their pids may be reused by
/// processes that are not ours to reap) or no longer watched.
fn forget_escaped(escaped: &mut HashSet<u32>, pids: &[u32]) {
    let mut g = groups();
    for p in pids {
        escaped.remove(p);
        g.escaped.remove(p);
    }
}

/// Reaps our zombie children that belong to a group capsid created and whose leader is gone,
/// or that were killed in a finished child's cgroup after leaving its group.
/// (Each group's watcher in `leader_reaped` forgets it once nothing of it is left.)
pub(crate) fn sweep() {
    let me = std::process::id();
    let all = procfs::all();
    let g = groups();
    for p in &all {
        if p.ppid == me
            && p.state == 'Z'
            && (g.dead_groups.contains(&p.pgrp) || g.escaped.contains(&p.pid))
            && !g.live_leaders.contains(&p.pid)
            && let Ok(raw) = i32::try_from(p.pid)
        {
            let _ = waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG));
        }
    }
}
