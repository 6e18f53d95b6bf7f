//! The OS sandbox: running a child under `bwrap` (bubblewrap). The child sees the system's
//! programs and libraries read-only (`SANDBOX_SYSTEM_DIRS`), the few files of `/etc` programs
//! need to run (`SANDBOX_ETC_FILES`; never `shadow`, keys or the operator's config), the
//! workspace read-write, a private `/tmp`, and fresh `/dev` and `/proc` — nothing else of the
//! host (no home directories, `/root`, `/var`, `/srv`, `/opt`). An absolute program outside
//! the system directories is mounted alone. All namespaces are unshared (network too, unless
//! the spawn allows it); the sandboxed program stays in the process group capsid signals and
//! dies with `bwrap`, which dies with the host.
//!
//! Least privilege inside: the child is an unprivileged uid and gid of its own user namespace
//! (`SandboxIdentity`, `nobody` by default) with every capability dropped, `no_new_privs`
//! set, nested user namespaces disabled (and `bwrap` asked to assert it), and the seccomp
//! filter of `seccomp.rs` loaded.

use std::path::Path;

use capsid_core::limits::{PROCESS_SEARCH_PATH, SANDBOX_ETC_FILES, SANDBOX_SYSTEM_DIRS};

use crate::error::ProcessError;
use crate::exec::Argv;
use crate::spec::{Checked, Sandbox, SpawnSpec};

/// Where `bwrap` is, if installed on the fixed search path.
pub fn bwrap_path() -> Option<std::path::PathBuf> {
    find_bwrap(PROCESS_SEARCH_PATH)
}

fn find_bwrap(search: &[&str]) -> Option<std::path::PathBuf> {
    search
        .iter()
        .map(|dir| Path::new(dir).join("bwrap"))
        .find(|p| p.is_file())
}

/// The descriptor number `bwrap` reads the seccomp filter from: the child's first one past
/// its standard three (`exec.rs` puts it there).
pub(crate) const SECCOMP_FD: i32 = 3;

/// How a child is started: the command, and the descriptor it must inherit as
/// [`SECCOMP_FD`] (the sandbox's filter), if any.
#[derive(Debug)]
pub(crate) struct Launch {
    pub argv: Argv,
    pub seccomp: Option<std::os::fd::OwnedFd>,
}

/// How `spec` is started: the program itself, or `bwrap` around it with its filter.
pub(crate) fn command(spec: &SpawnSpec, checked: &Checked) -> Result<Launch, ProcessError> {
    let argv = command_with(spec, checked, PROCESS_SEARCH_PATH)?;
    let sandboxed = argv.program != checked.program;
    let seccomp = if sandboxed {
        Some(
            crate::seccomp::filter_fd().map_err(|source| ProcessError::Spawn {
                program: spec.program.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    Ok(Launch { argv, seccomp })
}

fn command_with(
    spec: &SpawnSpec,
    checked: &Checked,
    search: &[&str],
) -> Result<Argv, ProcessError> {
    let (network, required) = match spec.sandbox {
        Sandbox::Off => return Ok(direct(spec, checked)),
        Sandbox::Auto { network } => (network, false),
        Sandbox::Required { network } => (network, true),
    };
    let Some(bwrap) = find_bwrap(search) else {
        return if required {
            Err(ProcessError::SandboxUnavailable)
        } else {
            Ok(direct(spec, checked))
        };
    };
    let workspace = checked.workspace.as_os_str();
    let mut cmd = Argv::new(bwrap);
    for dir in SANDBOX_SYSTEM_DIRS.iter().map(Path::new) {
        // A merged-/usr system links /bin to usr/bin: the link is recreated, not mounted.
        match std::fs::read_link(dir) {
            Ok(target) => cmd.arg("--symlink").arg(target).arg(dir),
            Err(_) => cmd.arg("--ro-bind-try").arg(dir).arg(dir),
        };
    }
    for file in SANDBOX_ETC_FILES {
        cmd.args(["--ro-bind-try", file, file]);
    }
    cmd.args(["--dev", "/dev", "--proc", "/proc"])
        .args(["--tmpfs", "/tmp", "--bind"])
        .args([workspace, workspace]);
    // After the private /tmp, which would otherwise hide a program that lives under /tmp.
    let program = checked.program.as_path();
    if !SANDBOX_SYSTEM_DIRS.iter().any(|d| program.starts_with(d)) {
        cmd.arg("--ro-bind").arg(program).arg(program);
    }
    cmd
        // The sandbox's own root (where the mount points above were made) is read-only too.
        .args(["--remount-ro", "/"])
        // No `--new-session`: the program stays in the process group capsid signals (it has
        // no terminal to protect), so TERM, STOP and CONT reach it, not only `bwrap`.
        .args(["--unshare-all", "--die-with-parent"])
        // Least privilege: a user namespace of its own, in which it is an unprivileged uid
        // with no capability and cannot make another; and the seccomp filter.
        .args([
            "--unshare-user",
            "--disable-userns",
            "--assert-userns-disabled",
        ])
        .args(["--cap-drop", "ALL"])
        .arg("--uid")
        .arg(spec.sandbox_identity.uid.to_string())
        .arg("--gid")
        .arg(spec.sandbox_identity.gid.to_string())
        .arg("--seccomp")
        .arg(SECCOMP_FD.to_string());
    if network {
        cmd.arg("--share-net");
    }
    cmd.arg("--chdir")
        .arg(&checked.cwd)
        .arg("--")
        .arg(&checked.program)
        .args(&spec.args);
    Ok(cmd)
}

fn direct(spec: &SpawnSpec, checked: &Checked) -> Argv {
    let mut cmd = Argv::new(&checked.program);
    cmd.args(&spec.args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_sandbox_fails_closed_without_bwrap() {
        let ws = std::env::temp_dir();
        let mut spec = SpawnSpec::new("true", &ws);
        spec.sandbox = Sandbox::Required { network: false };
        let checked = spec.check().unwrap_or_else(|e| panic!("{e}"));
        let missing = ["/nonexistent-capsid-test-dir"];
        assert!(matches!(
            command_with(&spec, &checked, &missing),
            Err(ProcessError::SandboxUnavailable)
        ));
        spec.sandbox = Sandbox::Auto { network: false };
        let cmd = command_with(&spec, &checked, &missing).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cmd.program, checked.program);
    }
}
