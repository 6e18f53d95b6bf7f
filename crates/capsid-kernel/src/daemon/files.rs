//! The daemon's files under `run/` (mode 0700): `daemon.lock` (held while the daemon lives:
//! one daemon per home), `capsid.sock` (0600), `token` (0600, the session token clients
//! present), `pid`, and `ready` (written once the socket serves). A daemon that finds them
//! left by one that died removes them; a live daemon (holding the lock, or answering on the
//! socket) is never touched, and the new one refuses to start.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use capsid_core::CapsidHome;
use tokio::net::UnixListener;

use crate::error::{KernelError, io};

/// Name of the lock file in `run/`.
const LOCK_FILE: &str = "daemon.lock";

/// The run files of one daemon; dropping it removes them (the lock goes last).
#[derive(Debug)]
pub struct RunFiles {
    socket: PathBuf,
    token_path: PathBuf,
    pid: PathBuf,
    ready: PathBuf,
    token: String,
    _lock: File,
}

impl RunFiles {
    /// Takes the home's daemon lock and clears what a dead daemon left. Fails, naming the
    /// running daemon, if another daemon serves this home.
    pub fn acquire(home: &CapsidHome) -> Result<Self, KernelError> {
        home.ensure_layout()?;
        let run = home.run_dir();
        let lock_path = run.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let running = || {
            let pid = std::fs::read_to_string(home.pid_path()).unwrap_or_default();
            KernelError::Io {
                path: home.socket_path(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "a capsid daemon (pid {}) already serves this home",
                        pid.trim()
                    ),
                ),
            }
        };
        take_lock(&lock, &lock_path, home, running)?;
        // The lock is ours, so no daemon of this version runs here; a socket that still
        // answers belongs to something else that must not be disturbed.
        if std::os::unix::net::UnixStream::connect(home.socket_path()).is_ok() {
            return Err(running());
        }
        for stale in [
            home.socket_path(),
            home.token_path(),
            home.pid_path(),
            home.ready_path(),
        ] {
            match std::fs::remove_file(&stale) {
                Ok(()) => tracing::info!(file = %stale.display(), "removed a stale daemon file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&stale)(e)),
            }
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| KernelError::Io {
            path: home.token_path(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let token = hex::encode(raw);
        write_private(&home.token_path(), token.as_bytes())?;
        write_private(&home.pid_path(), std::process::id().to_string().as_bytes())?;
        Ok(Self {
            socket: home.socket_path(),
            token_path: home.token_path(),
            pid: home.pid_path(),
            ready: home.ready_path(),
            token,
            _lock: lock,
        })
    }

    /// The session token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Binds the socket (0600).
    pub(crate) fn bind(&self) -> Result<UnixListener, std::io::Error> {
        let listener = UnixListener::bind(&self.socket)?;
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    }

    /// Writes the readiness file.
    pub(crate) fn mark_ready(&self) -> Result<(), std::io::Error> {
        std::fs::write(&self.ready, std::process::id().to_string())
    }

    /// Removes the readiness file (a stop has begun).
    pub(crate) fn unready(&self) {
        let _ = std::fs::remove_file(&self.ready);
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        for f in [&self.ready, &self.socket, &self.token_path, &self.pid] {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Takes the home's lock. A lock held by a daemon that is already dying (its recorded pid
/// gone or a zombie) is waited for, up to `DAEMON_DYING_LOCK_WAIT`: its files close only
/// once its last thread ends. A lock held by a live daemon fails at once.
fn take_lock(
    lock: &File,
    lock_path: &Path,
    home: &CapsidHome,
    running: impl Fn() -> KernelError,
) -> Result<(), KernelError> {
    let begun = std::time::Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(lock_path)(e)),
            Err(std::fs::TryLockError::WouldBlock) => {
                let recorded = std::fs::read_to_string(home.pid_path()).unwrap_or_default();
                let dying = recorded.trim().parse::<u32>().is_ok_and(process_is_dying);
                if !dying || begun.elapsed() >= capsid_core::limits::DAEMON_DYING_LOCK_WAIT {
                    return Err(running());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Whether `pid` has ended or is a zombie (its main thread gone).
fn process_is_dying(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends at the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => true,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The home's lock held through a second open file, as another daemon would hold it.
    fn hold_lock(home: &CapsidHome) -> File {
        home.ensure_layout().unwrap();
        let held = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(home.run_dir().join(LOCK_FILE))
            .unwrap();
        held.try_lock().unwrap();
        held
    }

    /// A child that has exited and is not reaped: a zombie, as the main thread of a killed
    /// daemon is while its other threads still close its files.
    fn zombie() -> std::process::Child {
        let child = std::process::Command::new("true").spawn().unwrap();
        let begun = Instant::now();
        while !process_is_dying(child.id()) {
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "`true` never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn a_lock_held_by_a_live_daemon_refuses_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let home = CapsidHome::at(dir.path().join("home"));
        let _held = hold_lock(&home);
        std::fs::write(home.pid_path(), std::process::id().to_string()).unwrap();
        let begun = Instant::now();
        let err = RunFiles::acquire(&home).unwrap_err().to_string();
        assert!(err.contains("already serves this home"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert!(
            begun.elapsed() < Duration::from_secs(1),
            "it waited for a live daemon"
        );
        assert!(!process_is_dying(std::process::id()));
    }

    #[test]
    fn a_lock_held_by_a_dying_daemon_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let home = CapsidHome::at(dir.path().join("home"));
        let held = hold_lock(&home);
        let mut dead = zombie();
        std::fs::write(home.pid_path(), dead.id().to_string()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let files = RunFiles::acquire(&home).expect("the lock, once the dying daemon let go");
        assert_eq!(
            std::fs::read_to_string(home.pid_path()).unwrap(),
            std::process::id().to_string(),
            "the pid file names the new daemon"
        );
        release.join().unwrap();
        drop(files);
        dead.wait().unwrap();
    }
}
