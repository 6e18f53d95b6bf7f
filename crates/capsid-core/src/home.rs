//! `$CAPSID_HOME` (default `~/.capsid`) and its layout (DESIGN 3.9):
//!
//! ```text
//! keys/runtime.key            0700 dir, 0600 file
//! state/kv/  state/audit.db   0700
//! capsules/<name>/
//! cache/compiled/<blake3>.cwasm
//! run/ (socket, token, pid, ready)  0700
//! config.toml
//! ```

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::HomeError;
use crate::ids::CapsuleId;

/// Environment variable that overrides the home directory.
pub const HOME_ENV: &str = "CAPSID_HOME";

/// Mode for directories that hold keys, state or the control socket.
const SECRET_DIR_MODE: u32 = 0o700;
/// Mode for directories whose contents are not secret.
const PLAIN_DIR_MODE: u32 = 0o755;

/// The resolved capsid home directory and the paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapsidHome {
    root: PathBuf,
}

impl CapsidHome {
    /// Resolves `$CAPSID_HOME`, falling back to `$HOME/.capsid`. Creates nothing.
    pub fn resolve() -> Result<Self, HomeError> {
        Self::resolve_from(
            std::env::var_os(HOME_ENV).map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        )
    }

    fn resolve_from(
        capsid_home: Option<PathBuf>,
        home: Option<PathBuf>,
    ) -> Result<Self, HomeError> {
        match (capsid_home, home) {
            (Some(root), _) if !root.as_os_str().is_empty() => {
                if root.is_absolute() {
                    Ok(Self { root })
                } else {
                    Err(HomeError::NotAbsolute(root))
                }
            }
            (_, Some(home)) if home.is_absolute() => Ok(Self {
                root: home.join(".capsid"),
            }),
            _ => Err(HomeError::NoHome),
        }
    }

    /// A home rooted at an explicit directory (tests, embedding).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates every directory of the layout that is missing, with its mode, and checks that
    /// the secret-holding ones are not open to group or others. Existing modes are never
    /// changed: a too-open secret directory is an error for the operator to fix.
    pub fn ensure_layout(&self) -> Result<(), HomeError> {
        let dirs = [
            (self.root.clone(), SECRET_DIR_MODE),
            (self.keys_dir(), SECRET_DIR_MODE),
            (self.state_dir(), SECRET_DIR_MODE),
            (self.kv_dir(), SECRET_DIR_MODE),
            (self.run_dir(), SECRET_DIR_MODE),
            (self.trust_dir(), SECRET_DIR_MODE),
            (self.receipts_dir(), SECRET_DIR_MODE),
            (self.capsules_dir(), PLAIN_DIR_MODE),
            (self.compiled_cache_dir(), PLAIN_DIR_MODE),
        ];
        for (dir, mode) in dirs {
            ensure_dir(&dir, mode)?;
        }
        Ok(())
    }

    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `keys/`: the runtime signing key.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// `keys/runtime.key`.
    pub fn runtime_key_path(&self) -> PathBuf {
        self.keys_dir().join("runtime.key")
    }
    /// `state/`: durable runtime state.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    /// `state/kv/`: the SurrealKV store.
    pub fn kv_dir(&self) -> PathBuf {
        self.state_dir().join("kv")
    }
    /// `state/audit.db`: the audit log.
    pub fn audit_db_path(&self) -> PathBuf {
        self.state_dir().join("audit.db")
    }
    /// `trust/`: the keys whose capsule signatures the operator trusts, a file each.
    pub fn trust_dir(&self) -> PathBuf {
        self.root.join("trust")
    }
    /// `state/receipts/`: what each install accepted (signer, requests), a file per capsule.
    pub fn receipts_dir(&self) -> PathBuf {
        self.state_dir().join("receipts")
    }
    /// `capsules/`: installed capsules.
    pub fn capsules_dir(&self) -> PathBuf {
        self.root.join("capsules")
    }
    /// `capsules/<name>/`.
    pub fn capsule_dir(&self, capsule: &CapsuleId) -> PathBuf {
        self.capsules_dir().join(capsule.as_str())
    }
    /// `cache/compiled/`: precompiled components keyed by the blake3 of their wasm.
    pub fn compiled_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("compiled")
    }
    /// `run/`: the daemon's socket, session token, pid and readiness files.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    /// `run/capsid.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir().join("capsid.sock")
    }
    /// `run/token`: the daemon session token.
    pub fn token_path(&self) -> PathBuf {
        self.run_dir().join("token")
    }
    /// `run/capsid.pid`.
    pub fn pid_path(&self) -> PathBuf {
        self.run_dir().join("capsid.pid")
    }
    /// `run/ready`: written once boot capsules are ready.
    pub fn ready_path(&self) -> PathBuf {
        self.run_dir().join("ready")
    }
    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
}

fn ensure_dir(dir: &Path, mode: u32) -> Result<(), HomeError> {
    let io = |source| HomeError::Io {
        path: dir.to_owned(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(HomeError::NotADirectory(dir.to_owned()));
            }
            let actual = meta.permissions().mode() & 0o777;
            if mode == SECRET_DIR_MODE && actual & 0o077 != 0 {
                return Err(HomeError::InsecureMode {
                    path: dir.to_owned(),
                    mode: actual,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(io)?;
            // The umask may have narrowed the mode; set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn layout_is_created_with_secret_modes_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let home = CapsidHome::at(tmp.path().join("h"));
        home.ensure_layout().unwrap();
        home.ensure_layout().unwrap();
        for d in [
            home.root().to_owned(),
            home.keys_dir(),
            home.state_dir(),
            home.kv_dir(),
            home.run_dir(),
            home.trust_dir(),
            home.receipts_dir(),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&home.compiled_cache_dir()), 0o755);
        assert!(home.capsules_dir().is_dir());
        assert_eq!(home.socket_path(), home.root().join("run/capsid.sock"));
    }

    #[test]
    fn an_open_secret_dir_is_refused_not_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let home = CapsidHome::at(tmp.path().join("h"));
        home.ensure_layout().unwrap();
        fs::set_permissions(home.keys_dir(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = home.ensure_layout().unwrap_err();
        assert!(
            matches!(err, HomeError::InsecureMode { ref path, mode: 0o755 } if *path == home.keys_dir())
        );
        assert!(err.to_string().contains("keys"));
        assert_eq!(mode(&home.keys_dir()), 0o755, "left as found");
    }

    #[test]
    fn a_file_where_a_dir_belongs_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let home = CapsidHome::at(tmp.path().join("h"));
        fs::create_dir_all(home.root()).unwrap();
        fs::set_permissions(home.root(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(home.root().join("run"), b"x").unwrap();
        assert!(
            matches!(home.ensure_layout(), Err(HomeError::NotADirectory(p)) if p == home.run_dir())
        );
    }

    #[test]
    fn an_unwritable_home_is_a_clear_error_naming_the_directory() {
        // Nothing can be created under /proc, not even by root, so this holds in CI too.
        let home = CapsidHome::at("/proc/self/capsid-home");
        let err = home.ensure_layout().unwrap_err();
        assert!(
            matches!(err, HomeError::Io { ref path, .. } if path == home.root()),
            "{err}"
        );
        assert!(err.to_string().contains("/proc/self/capsid-home"), "{err}");
    }

    #[test]
    fn resolution_prefers_capsid_home_and_requires_absolute_paths() {
        let r = CapsidHome::resolve_from(Some("/x/y".into()), Some("/home/u".into())).unwrap();
        assert_eq!(r.root(), Path::new("/x/y"));
        let r = CapsidHome::resolve_from(None, Some("/home/u".into())).unwrap();
        assert_eq!(r.root(), Path::new("/home/u/.capsid"));
        assert!(matches!(
            CapsidHome::resolve_from(Some("rel".into()), None),
            Err(HomeError::NotAbsolute(_))
        ));
        assert!(matches!(
            CapsidHome::resolve_from(None, None),
            Err(HomeError::NoHome)
        ));
    }
}
