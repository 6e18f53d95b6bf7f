//! The few OS calls std and nix do not wrap safely, each in one small function.
// `pre_exec`, `pidfd_open` (a raw syscall) and `wait4` (for the child's rusage) have no safe
// wrapper; each use below says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;

use crate::spec::ResourceLimits;

fn os(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Makes the child, between fork and exec: die with the host (`PR_SET_PDEATHSIG`, and check
/// the host did not die before that took effect), and take its resource limits.
/// With `cgroup_procs`, the child first enters that cgroup (writing `0` to its `cgroup.procs`).
pub(crate) fn confine(
    cmd: &mut Command,
    limits: ResourceLimits,
    host_pid: u32,
    cgroup_procs: Option<RawFd>,
) {
    let set = |resource, limit: Option<u64>, hard_extra: u64| -> io::Result<()> {
        match limit {
            Some(soft) => setrlimit(resource, soft, soft.saturating_add(hard_extra)).map_err(os),
            None => Ok(()),
        }
    };
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid, write, setrlimit); it allocates nothing
    // (errors are built from raw OS codes) and touches no lock. The cgroup descriptor is
    // owned by a `PidsCgroup` that travels with the spawn job and is dropped by the spawner
    // thread only after the fork returned (even if the caller gave up), and is close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(os)?;
            if nix::unistd::getppid().as_raw().cast_unsigned() != host_pid {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(fd) = cgroup_procs
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(io::Error::last_os_error());
            }
            set(Resource::RLIMIT_AS, limits.memory_bytes, 0)?;
            // SIGXCPU at the soft limit, SIGKILL one second later.
            set(Resource::RLIMIT_CPU, limits.cpu_seconds, 1)?;
            set(Resource::RLIMIT_NOFILE, limits.open_files, 0)?;
            Ok(())
        });
    }
}

/// A pidfd for `pid`: readable once the process has exited.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it reads
    // and writes no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers a pidfd with the runtime so its readability (the exit) can be awaited.
pub(crate) fn watch_exit(pidfd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` owns an open descriptor and moves into the `AsyncFd`, which keeps
    // it open, and always returns the same raw descriptor, until the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)
}

/// How a reaped child ended and what it used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reaped {
    pub status: i32,
    pub user_ms: u64,
    pub system_ms: u64,
    pub max_rss_bytes: u64,
}

fn millis(tv: libc::timeval) -> u64 {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    secs * 1_000 + micros / 1_000
}

/// Reaps `pid` (blocking until it exits), returning its status and resource usage.
pub(crate) fn wait4(pid: u32) -> io::Result<Reaped> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let mut status = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types for the call.
        let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(Reaped {
        status,
        user_ms: millis(usage.ru_utime),
        system_ms: millis(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    })
}
