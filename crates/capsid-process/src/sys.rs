//! The few OS calls std and nix do not wrap safely, each in one small function.
// `pidfd_open` (a raw syscall), `wait4` (for the child's rusage) and `sched_setscheduler`
// have no safe wrapper; each use below says why it is sound. Starting children is `exec.rs`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

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

/// Puts the calling thread under `SCHED_BATCH`: the same share of the CPU as any thread of
/// its niceness, but its wake-ups do not preempt the thread running. Fails where the libc or
/// a seccomp filter refuses it.
pub(crate) fn schedule_as_batch() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives on this stack for the call, which only reads it; pid 0 is the
    // calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
