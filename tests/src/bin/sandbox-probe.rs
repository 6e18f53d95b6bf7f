//! Helper for the least-privilege test, run inside the OS sandbox: prints, one per line,
//! the `/proc/self/status` fields that say who it is (`Uid`, `Gid`, `CapEff`, `CapPrm`,
//! `CapBnd`, `NoNewPrivs`, `Seccomp`), then `<call> <errno>` for each system call the
//! sandbox's seccomp filter must refuse (`0` when it succeeded).
//!
//! Each call's arguments are chosen so that, without the filter, it would fail with another
//! error than `EPERM` (or succeed) where the kernel allows that: an `EPERM` then can only
//! come from the filter. The calls that check privilege before anything else are marked
//! `privileged` (their `EPERM` proves only that they failed).
// Raw system calls have no safe wrapper; each is made with arguments the kernel rejects or
// that affect only this process.
#![allow(unsafe_code)]

use libc::c_long;

/// `syscall(nr, args...)`'s errno, or 0 when it succeeded. Pointers are passed as numbers
/// (0 for null); unused arguments are ignored by the kernel.
fn call(nr: c_long, args: [c_long; 6]) -> i32 {
    // SAFETY: every call made passes null pointers, invalid descriptors or flags the kernel
    // refuses before touching memory, or asks for nothing that outlives this process.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if ret < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

fn main() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        let key = line.split(':').next().unwrap_or_default();
        if [
            "Uid",
            "Gid",
            "CapEff",
            "CapPrm",
            "CapBnd",
            "NoNewPrivs",
            "Seccomp",
        ]
        .contains(&key)
        {
            println!("{}", line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    let me = c_long::from(std::process::id().cast_signed());
    let byte = c"x".as_ptr() as c_long;
    let tiocsti = c_long::try_from(libc::TIOCSTI).unwrap_or(c_long::MAX);
    let calls = [
        ("mount", false, call(libc::SYS_mount, [0; 6])),
        (
            "umount2",
            false,
            call(libc::SYS_umount2, [0, -1, 0, 0, 0, 0]),
        ),
        ("unshare", false, call(libc::SYS_unshare, [0; 6])),
        ("setns", false, call(libc::SYS_setns, [-1, 0, 0, 0, 0, 0])),
        ("ptrace", false, call(libc::SYS_ptrace, [3, me, 0, 0, 0, 0])),
        ("keyctl", false, call(libc::SYS_keyctl, [0, -1, 0, 0, 0, 0])),
        ("add_key", false, call(libc::SYS_add_key, [0; 6])),
        ("request_key", false, call(libc::SYS_request_key, [0; 6])),
        (
            "perf_event_open",
            false,
            call(libc::SYS_perf_event_open, [0, 0, -1, -1, 0, 0]),
        ),
        (
            "ioctl-tiocsti",
            false,
            call(libc::SYS_ioctl, [0, tiocsti, byte, 0, 0, 0]),
        ),
        ("fsopen", true, call(libc::SYS_fsopen, [0; 6])),
        (
            "open_tree",
            true,
            call(libc::SYS_open_tree, [-1, 0, 0, 0, 0, 0]),
        ),
        ("pivot_root", true, call(libc::SYS_pivot_root, [0; 6])),
        ("bpf", true, call(libc::SYS_bpf, [-1, 0, 0, 0, 0, 0])),
        ("kexec_load", true, call(libc::SYS_kexec_load, [0; 6])),
        (
            "kexec_file_load",
            true,
            call(libc::SYS_kexec_file_load, [-1, -1, 0, 0, 0, 0]),
        ),
    ];
    for (name, privileged, errno) in calls {
        let kind = if privileged { " privileged" } else { "" };
        println!("call {name} {errno}{kind}");
    }
}
