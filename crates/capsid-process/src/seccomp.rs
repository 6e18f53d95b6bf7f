//! The seccomp filter every sandboxed child runs under, built with `seccompiler` (no
//! hand-assembled BPF) and handed to `bwrap --seccomp`.
//!
//! It refuses, with `EPERM`, the system calls that reach the kernel surface container
//! escapes go through and that no tool a capsule runs needs: mounting (old and new APIs),
//! namespaces (`unshare`, `setns`), `pivot_root`, `ptrace`, the kernel keyring, `bpf`,
//! `perf_event_open`, `kexec`, and the `TIOCSTI` ioctl (typing into a terminal). Everything
//! else is allowed: the sandbox's namespaces, dropped capabilities and mounts do the rest.
//! A call made through another architecture's ABI (32-bit `int 0x80` on x86-64) kills the
//! process; on x86-64 the x32 numbers of each refused call (the flagged number, and the
//! x32-only numbers of `ioctl`, `ptrace` and `kexec_load`) are refused too.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::sync::LazyLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The system calls refused outright, by name (for docs and tests) and number.
pub(crate) const REFUSED: &[(&str, libc::c_long)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("pivot_root", libc::SYS_pivot_root),
    ("ptrace", libc::SYS_ptrace),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The x32 ABI's flag on x86-64 system call numbers: most calls keep their number under it.
#[cfg(target_arch = "x86_64")]
const X32_ALIASES: &[i64] = &[0, X32_BIT];
#[cfg(not(target_arch = "x86_64"))]
const X32_ALIASES: &[i64] = &[0];

#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;

/// The calls x32 numbers apart (`asm/unistd_x32.h`): `ioctl` is 514, `ptrace` 521 and
/// `kexec_load` 528 (under the flag), not their x86-64 numbers.
#[cfg(target_arch = "x86_64")]
const X32_OWN: &[(&str, i64)] = &[
    ("ioctl", X32_BIT + 514),
    ("ptrace", X32_BIT + 521),
    ("kexec_load", X32_BIT + 528),
];
#[cfg(not(target_arch = "x86_64"))]
const X32_OWN: &[(&str, i64)] = &[];

/// Why the filter could not be built (a bug in the rules above, reported at spawn).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the sandbox's seccomp filter could not be built: {0}")]
pub struct FilterError(String);

fn build() -> Result<Vec<u8>, FilterError> {
    let err = |e: seccompiler::BackendError| FilterError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in REFUSED {
        for alias in X32_ALIASES {
            // An empty rule list matches every call of that number.
            rules.insert(nr | alias, Vec::new());
        }
    }
    // `ioctl(fd, TIOCSTI, ...)`: only that request; every other ioctl is allowed.
    let tiocsti = SeccompRule::new(vec![
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::TIOCSTI)
            .map_err(err)?,
    ])
    .map_err(err)?;
    for alias in X32_ALIASES {
        rules.insert(libc::SYS_ioctl | alias, vec![tiocsti.clone()]);
    }
    for (name, nr) in X32_OWN {
        let rule = if *name == "ioctl" {
            vec![tiocsti.clone()]
        } else {
            Vec::new()
        };
        rules.insert(*nr, rule);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.cast_unsigned()),
        ARCH,
    )
    .map_err(err)?;
    let program: BpfProgram = filter.try_into().map_err(err)?;
    // The kernel's `struct sock_filter`, as `bwrap --seccomp` reads it: native byte order.
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    Ok(bytes)
}

static FILTER: LazyLock<Result<Vec<u8>, FilterError>> = LazyLock::new(build);

/// The compiled filter, built once.
pub(crate) fn filter() -> Result<&'static [u8], FilterError> {
    FILTER.as_deref().map_err(Clone::clone)
}

/// A close-on-exec pipe whose read end yields the filter once: what `bwrap --seccomp FD`
/// reads (a fresh one per spawn, since reading consumes it).
pub(crate) fn filter_fd() -> std::io::Result<OwnedFd> {
    let bytes = filter().map_err(std::io::Error::other)?;
    let (reader, mut writer) = std::io::pipe()?;
    // A few hundred bytes: far below a pipe's buffer, so this never blocks.
    writer.write_all(bytes)?;
    drop(writer);
    Ok(reader.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_builds_and_fits_a_pipe() {
        let bytes = filter().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bytes.len() % 8, 0, "whole sock_filter instructions");
        assert!(
            !bytes.is_empty() && bytes.len() < 4096,
            "{} bytes",
            bytes.len()
        );
    }
}
