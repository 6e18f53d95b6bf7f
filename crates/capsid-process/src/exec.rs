//! Starting a child the way `posix_spawn` does, with capsid's containment added.
//!
//! std's `Command` can confine a child (its cgroup, its limits, death with the host) only
//! through a `pre_exec` hook, and a hook makes it `fork` the whole host: copying the page
//! tables of a process that maps compiled components costs more than the program it starts.
//! Here the child is made with `clone(CLONE_VM | CLONE_VFORK)`, like glibc's `posix_spawn`:
//! it borrows the host's memory and stack-less thread state until it calls `execve`, and the
//! host thread waits for that. Everything the child needs is prepared before the clone; the
//! child only makes system calls (no allocation, no lock, nothing that could unwind) and
//! reports a failed step through one shared integer before it exits.
// The clone, the child's system calls and the descriptors it hands over have no safe
// wrapper; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::spec::ResourceLimits;

/// Bytes of stack the child runs on until `execve`: it only makes system calls, so a few
/// KiB would do; glibc's `posix_spawn` uses about as much.
pub(crate) const CHILD_STACK_BYTES: usize = 64 * 1024;

/// A program and its arguments, as `execve` is given them.
#[derive(Debug, Clone)]
pub(crate) struct Argv {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Argv {
    pub(crate) fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub(crate) fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub(crate) fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }
}

/// Everything a spawn needs, as C strings, made before the clone.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    program: CString,
    /// `argv[0]` (the program) first.
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    stdin: bool,
    limits: ResourceLimits,
    host_pid: libc::pid_t,
    /// A descriptor the child gets as `sandbox::SECCOMP_FD` (the rest stay close-on-exec).
    inherit: Option<OwnedFd>,
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument, variable or path holds a NUL byte",
        )
    })
}

impl ExecPlan {
    /// `argv` run with exactly `env` in `cwd`, stdin a pipe if `stdin` (else `/dev/null`),
    /// with `limits`, dying with the host process `host_pid`.
    pub(crate) fn new(
        argv: &Argv,
        env: &[(String, String)],
        cwd: &Path,
        stdin: bool,
        limits: ResourceLimits,
        host_pid: u32,
    ) -> io::Result<Self> {
        let program = c_string(argv.program.as_os_str())?;
        let mut words = Vec::with_capacity(argv.args.len() + 1);
        words.push(program.clone());
        for a in &argv.args {
            words.push(c_string(a)?);
        }
        // A key given twice keeps its last value, as std's `Command` did.
        let mut vars: Vec<&(String, String)> = Vec::with_capacity(env.len());
        for pair in env {
            vars.retain(|(k, _)| *k != pair.0);
            vars.push(pair);
        }
        let envp = vars
            .iter()
            .map(|(k, v)| c_string(OsStr::new(&format!("{k}={v}"))))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            program,
            argv: words,
            envp,
            cwd: c_string(cwd.as_os_str())?,
            stdin,
            limits,
            host_pid: libc::pid_t::try_from(host_pid)
                .map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?,
            inherit: None,
        })
    }

    /// Hands `fd` to the child as descriptor `sandbox::SECCOMP_FD`.
    pub(crate) fn inherit(mut self, fd: Option<OwnedFd>) -> Self {
        self.inherit = fd;
        self
    }
}

/// A started child: its pid (also its process group) and the host's ends of its pipes.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: u32,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// One resource limit to set.
#[derive(Clone, Copy)]
struct Limit {
    resource: libc::__rlimit_resource_t,
    value: libc::rlimit,
}

/// What the child reads, and the one thing it writes: the errno of the step that failed.
struct ChildArgs {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdio: [RawFd; 3],
    /// Given to the child as `sandbox::SECCOMP_FD`, or -1.
    inherit: RawFd,
    cgroup_procs: RawFd,
    limits: [Option<Limit>; 3],
    host_pid: libc::pid_t,
    error: c_int,
}

fn limit(resource: libc::__rlimit_resource_t, soft: Option<u64>, hard_extra: u64) -> Option<Limit> {
    soft.map(|soft| Limit {
        resource,
        value: libc::rlimit {
            rlim_cur: soft,
            rlim_max: soft.saturating_add(hard_extra),
        },
    })
}

/// A close-on-exec pipe: (read end, write end), both above the standard descriptors.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = io::pipe()?;
    Ok((above_stdio(r.into())?, above_stdio(w.into())?))
}

/// `fd`, moved above 2 if a host with a closed standard descriptor got it there: the child's
/// `dup2`s onto 0-2 must never overwrite a source still to be copied.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        Ok(fd)
    } else {
        // std duplicates with F_DUPFD_CLOEXEC from 3.
        fd.try_clone()
    }
}

/// A close-on-exec duplicate of `fd` numbered above `floor` (`F_DUPFD_CLOEXEC`).
fn above(fd: &OwnedFd, floor: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a live descriptor has no memory effects.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor + 1) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a descriptor fcntl just made, owned by nothing else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new) })
}

/// Starts `plan`. With `cgroup_procs`, the child enters that cgroup (writing `0` to its
/// `cgroup.procs`) before anything else can run in it. Must be called from the thread whose
/// exit the child should die with (`PR_SET_PDEATHSIG` follows the thread that made it).
pub(crate) fn spawn(
    plan: &ExecPlan,
    cgroup_procs: Option<RawFd>,
    stack: &mut [u8],
) -> io::Result<Spawned> {
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    // Above the standard descriptors and the one it becomes, so no dup2 before its own
    // overwrites it.
    let inherit = plan
        .inherit
        .as_ref()
        .map(|fd| above(fd, crate::sandbox::SECCOMP_FD))
        .transpose()?;
    let (in_r, in_w) = if plan.stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        let null = std::fs::File::open("/dev/null")?;
        (above_stdio(null.into())?, None)
    };
    let argv: Vec<*const c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const c_char> = plan
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut block = ChildArgs {
        program: plan.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: plan.cwd.as_ptr(),
        stdio: [in_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()],
        inherit: inherit.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        cgroup_procs: cgroup_procs.unwrap_or(-1),
        limits: [
            limit(libc::RLIMIT_AS, plan.limits.memory_bytes, 0),
            // SIGXCPU at the soft limit, SIGKILL one second later.
            limit(libc::RLIMIT_CPU, plan.limits.cpu_seconds, 1),
            limit(libc::RLIMIT_NOFILE, plan.limits.open_files, 0),
        ],
        host_pid: plan.host_pid,
        error: 0,
    };
    // The stack grows down from its end, 16-byte aligned as every ABI asks.
    let top = {
        let end = stack.as_mut_ptr_range().end;
        end.wrapping_sub(end as usize & 15).cast::<c_void>()
    };
    // SAFETY: sigset_t is plain data; zeroed is valid and sigfillset initialises it.
    let (mut all, mut old): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: `all` and `old` are live locals of the right type.
    unsafe {
        libc::sigfillset(&raw mut all);
        // Blocked until the child has reset every handler, so no host handler ever runs on
        // the child's borrowed memory.
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
    }
    // SAFETY: `child_main` only makes async-signal-safe system calls on `block`, which lives
    // in this frame until the clone returns; CLONE_VFORK suspends this thread until the
    // child has called `execve` or `_exit`, so nothing here runs while it uses our memory,
    // and `stack` (ours, unused by anything else) is its stack until then.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut block).cast::<c_void>(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: `old` is the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut());
    }
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: the child wrote it (or not) before `execve`/`_exit`, which this thread waited
    // for; read once, as memory another task wrote.
    let failed = unsafe { std::ptr::read_volatile(&raw const block.error) };
    // A pid is positive: the cast keeps its value.
    let pid = pid.cast_unsigned();
    if failed != 0 {
        // It exited without running the program: reap it before saying why.
        let _ = crate::sys::wait4(pid);
        return Err(io::Error::from_raw_os_error(failed));
    }
    drop((in_r, stdout_w, stderr_w, inherit));
    Ok(Spawned {
        pid,
        stdin: in_w,
        stdout: stdout_r,
        stderr: stderr_r,
    })
}

/// Records `errno` as the reason and exits without running anything of the host's.
///
/// # Safety
/// Only in the cloned child, with `block` its argument.
unsafe fn fail(block: *mut ChildArgs, errno: c_int) -> ! {
    // SAFETY: `block` is the live argument block, written through its raw pointer only.
    unsafe {
        (*block).error = errno;
        libc::_exit(127)
    }
}

/// The calling thread's errno (in the child: the suspended host thread's, which it shares),
/// never 0: a 0 would read as success to the host.
fn errno() -> c_int {
    match io::Error::last_os_error().raw_os_error() {
        Some(e) if e != 0 => e,
        _ => libc::EIO,
    }
}

extern "C" fn child_main(arg: *mut c_void) -> c_int {
    let block = arg.cast::<ChildArgs>();
    // SAFETY: runs in the vfork child on the `ChildArgs` prepared by `spawn`, read through
    // its raw pointer (no reference outlives a write); every call is a system call wrapper
    // that neither allocates nor locks, as in glibc's own posix_spawn.
    unsafe {
        let (program, argv, envp, cwd) =
            ((*block).program, (*block).argv, (*block).envp, (*block).cwd);
        let (stdio, inherit, cgroup_procs, limits) = (
            (*block).stdio,
            (*block).inherit,
            (*block).cgroup_procs,
            (*block).limits,
        );
        // Into its cgroup first: before anything could fork, and before the dup2s below,
        // which could reuse the descriptor's number if the host had a standard one closed.
        if cgroup_procs >= 0 && libc::write(cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(block, errno());
        }
        // Handlers back to default (and SIGPIPE, which the host ignores, as programs
        // expect): exec would reset handlers anyway, but a signal unblocked before it must
        // not run host code here. glibc's two internal signals (32, 33) refuse `sigaction`
        // and are skipped: they are only ever sent to the host's own threads.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &raw mut current) != 0 {
                continue;
            }
            let handled = current.sa_sigaction != libc::SIG_DFL
                && (current.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE);
            if handled {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &raw const default, std::ptr::null_mut());
            }
        }
        // Every source is above 2 (`above_stdio`), so no dup2 overwrites one still to be
        // copied; the copies are not close-on-exec.
        for (target, fd) in (0..).zip(stdio) {
            if libc::dup2(fd, target) != target {
                fail(block, errno());
            }
        }
        // Its source is above it (`above`), so nothing copied before was overwritten, and
        // the copy is not close-on-exec.
        if inherit >= 0 && libc::dup2(inherit, crate::sandbox::SECCOMP_FD) < 0 {
            fail(block, errno());
        }
        if libc::setpgid(0, 0) != 0 {
            fail(block, errno());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(block, errno());
        }
        // The host died before the death signal was armed: do not outlive it.
        if libc::getppid() != (*block).host_pid {
            fail(block, libc::ESRCH);
        }
        for l in limits.iter().flatten() {
            if libc::setrlimit(l.resource, &raw const l.value) != 0 {
                fail(block, errno());
            }
        }
        if libc::chdir(cwd) != 0 {
            fail(block, errno());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
        // `execve`, not `execvp`: the program is a resolved path, and a file without a `#!`
        // line is refused (ENOEXEC) rather than handed to a shell.
        libc::execve(program, argv, envp);
        fail(block, errno())
    }
}
