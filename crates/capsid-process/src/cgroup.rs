//! Fork-bomb containment: each child with a `pids` limit gets its own cgroup under the `pids`
//! controller, with `pids.max` set, and enters it before exec (so everything it ever forks is
//! counted). `RLIMIT_NPROC` cannot do this job: it counts every process of the user and does
//! not bind root.
//!
//! Supported hierarchies: cgroup v1 with `pids` mounted at `/sys/fs/cgroup/pids`, or cgroup v2
//! at `/sys/fs/cgroup` with `pids` in `cgroup.subtree_control`. Where neither is writable a
//! spawn asking for a pids limit fails closed.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::ProcessError;

const V1_ROOT: &str = "/sys/fs/cgroup/pids";
const V2_ROOT: &str = "/sys/fs/cgroup";
/// capsid's own subtree under the controller root.
const SUBTREE: &str = "capsid";

fn root() -> Option<PathBuf> {
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

/// One child's pids cgroup. Removed (when empty) by [`PidsCgroup::remove`].
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
    /// A new cgroup allowing at most `max` tasks.
    pub(crate) fn create(max: u64) -> Result<Self, ProcessError> {
        let root = root().ok_or(ProcessError::PidsLimitUnavailable)?;
        let parent = root.join(SUBTREE);
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
        let mut name = [0u8; 8];
        getrandom_fill(&mut name)?;
        let dir = parent.join(format!("{:016x}", u64::from_le_bytes(name)));
        std::fs::create_dir(&dir).map_err(os("creating the pids cgroup"))?;
        let made = (|| {
            std::fs::write(dir.join("pids.max"), max.to_string())
                .map_err(os("setting pids.max"))?;
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

fn getrandom_fill(buf: &mut [u8]) -> Result<(), ProcessError> {
    let mut f = std::fs::File::open("/dev/urandom").map_err(os("reading /dev/urandom"))?;
    std::io::Read::read_exact(&mut f, buf).map_err(os("reading /dev/urandom"))
}
