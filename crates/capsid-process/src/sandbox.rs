//! The OS sandbox: running a child under `bwrap` (bubblewrap). The child sees the system's
//! programs and libraries read-only (`SANDBOX_SYSTEM_DIRS`), the few files of `/etc` programs
//! need to run (`SANDBOX_ETC_FILES`; never `shadow`, keys or the operator's config), the
//! workspace read-write, a private `/tmp`, and fresh `/dev` and `/proc` — nothing else of the
//! host (no home directories, `/root`, `/var`, `/srv`, `/opt`). An absolute program outside
//! the system directories is mounted alone. All namespaces are unshared (network too, unless
//! the spawn allows it); the sandboxed program stays in the process group capsid signals and
//! dies with `bwrap`, which dies with the host.

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

/// The command that starts `spec`: the program itself, or `bwrap` around it.
pub(crate) fn command(spec: &SpawnSpec, checked: &Checked) -> Result<Argv, ProcessError> {
    command_with(spec, checked, PROCESS_SEARCH_PATH)
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
    let program = checked.program.as_path();
    if !SANDBOX_SYSTEM_DIRS.iter().any(|d| program.starts_with(d)) {
        cmd.arg("--ro-bind").arg(program).arg(program);
    }
    cmd.args(["--dev", "/dev", "--proc", "/proc"])
        .args(["--tmpfs", "/tmp", "--bind"])
        .args([workspace, workspace])
        // The sandbox's own root (where the mount points above were made) is read-only too.
        .args(["--remount-ro", "/"])
        // No `--new-session`: the program stays in the process group capsid signals (it has
        // no terminal to protect), so TERM, STOP and CONT reach it, not only `bwrap`.
        .args(["--unshare-all", "--die-with-parent"]);
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
