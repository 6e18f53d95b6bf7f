//! Key files: 32 raw secret bytes, mode 0600. The runtime key is `keys/runtime.key`; a
//! publisher's key (`capsid key generate`) is the same format wherever its owner keeps it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use capsid_core::limits::RUNTIME_KEY_LEN;
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::keys::KeyPair;

/// File name of the runtime key inside the keys directory.
pub const RUNTIME_KEY_FILE: &str = "runtime.key";

const KEY_FILE_MODE: u32 = 0o600;

/// Loads `dir/runtime.key`, or creates it with a fresh key if it does not exist.
///
/// Idempotent and safe against a concurrent first start: the new key is written to a private
/// temporary file and linked into place only if no key appeared meanwhile; whoever loses the
/// race loads the winner's key. An existing key file that is not a regular file, is not exactly
/// 32 bytes, or is open to group or others is an error naming the path; it is never replaced.
pub fn load_or_generate_runtime_key(dir: &Path) -> Result<KeyPair, KeyError> {
    load_or_generate_key_file(&dir.join(RUNTIME_KEY_FILE))
}

/// Loads the key file at `path`, or creates it with a fresh key if it does not exist, with
/// the guarantees of [`load_or_generate_runtime_key`].
pub fn load_or_generate_key_file(path: &Path) -> Result<KeyPair, KeyError> {
    match load_key_file(path) {
        Err(KeyError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => generate(path),
        other => other,
    }
}

/// Creates a key file at `path` with a fresh key. An existing file is never replaced: it is
/// an error (`AlreadyExists`) naming the path.
pub fn generate_key_file(path: &Path) -> Result<KeyPair, KeyError> {
    create(path)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the key file at `path`: a regular file (never followed through a symlink), mode
/// 0600 or stricter, exactly 32 bytes. Anything else is an error naming the path.
pub fn load_key_file(path: &Path) -> Result<KeyPair, KeyError> {
    // O_NOFOLLOW: a symlink planted at the key path is refused rather than followed.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile(path.to_owned()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecureMode {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() != RUNTIME_KEY_LEN as u64 {
        return Err(KeyError::WrongLength {
            path: path.to_owned(),
            found: meta.len(),
        });
    }
    let mut secret = Zeroizing::new([0u8; RUNTIME_KEY_LEN]);
    let mut reader = file.take(RUNTIME_KEY_LEN as u64 + 1);
    let mut read = 0;
    loop {
        let n = reader.read(&mut secret[read..]).map_err(io(path))?;
        if n == 0 {
            break;
        }
        read += n;
        if read == RUNTIME_KEY_LEN {
            break;
        }
    }
    if read != RUNTIME_KEY_LEN {
        return Err(KeyError::WrongLength {
            path: path.to_owned(),
            found: read as u64,
        });
    }
    Ok(KeyPair::from_secret_bytes(&secret))
}

fn sync_parent(path: &Path) -> Result<(), KeyError> {
    let dir = parent(path);
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn generate(path: &Path) -> Result<KeyPair, KeyError> {
    match create(path) {
        Err(KeyError::Io { source, .. }) if source.kind() == ErrorKind::AlreadyExists => {
            load_key_file(path)
        }
        other => other,
    }
}

/// A fresh key written to a private temporary file, synced, then linked into place only if
/// nothing is there (an existing file is `AlreadyExists`): the path never holds part of a key.
fn create(path: &Path) -> Result<KeyPair, KeyError> {
    let key = KeyPair::generate()?;
    let tmp = temp_path(path)?;
    // Errors name the key path the operator knows, not the private temporary file.
    let written = write_new_file(&tmp, &key.to_secret_bytes()[..]).map_err(|e| match e {
        KeyError::Io { source, .. } => KeyError::Io {
            path: path.to_owned(),
            source,
        },
        other => other,
    });
    let linked = written.and_then(|()| fs::hard_link(&tmp, path).map_err(io(path)));
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_parent(path)?;
    Ok(key)
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_FILE_MODE)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn temp_path(path: &Path) -> Result<PathBuf, KeyError> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(KeyError::Random)?;
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |n| n.to_string_lossy());
    Ok(parent(path).join(format!(".{name}.{}.tmp", hex::encode(nonce))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_mode_0600_then_loads_the_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let a = load_or_generate_runtime_key(tmp.path()).unwrap();
        let path = tmp.path().join(RUNTIME_KEY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = load_or_generate_runtime_key(tmp.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let tmp = tempfile::tempdir().unwrap();
        let keys: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        load_or_generate_runtime_key(tmp.path())
                            .unwrap()
                            .public_key()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn wrong_length_is_refused_naming_the_path_and_left_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(RUNTIME_KEY_FILE);
        for len in [0usize, 31, 33, 64] {
            fs::write(&path, vec![7u8; len]).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_generate_runtime_key(tmp.path()).unwrap_err();
            assert!(matches!(err, KeyError::WrongLength { found, .. } if found == len as u64));
            assert!(err.to_string().contains(&path.display().to_string()));
            assert_eq!(fs::read(&path).unwrap().len(), len, "never overwritten");
        }
    }

    #[test]
    fn open_permissions_and_symlinks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(RUNTIME_KEY_FILE);
        fs::write(&path, [1u8; 32]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_generate_runtime_key(tmp.path()),
            Err(KeyError::InsecureMode { mode: 0o644, .. })
        ));
        fs::remove_file(&path).unwrap();
        let target = tmp.path().join("elsewhere");
        fs::write(&target, [1u8; 32]).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            load_or_generate_runtime_key(tmp.path()),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn a_generated_key_file_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("publisher.key");
        let key = generate_key_file(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = generate_key_file(&path).unwrap_err();
        assert!(
            matches!(again, KeyError::Io { ref source, .. } if source.kind() == ErrorKind::AlreadyExists)
        );
        assert_eq!(load_key_file(&path).unwrap().public_key(), key.public_key());
    }

    #[test]
    fn a_missing_or_unwritable_directory_is_an_error_naming_the_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-dir");
        // Nothing can be created under /proc, not even by root.
        for dir in [missing.as_path(), Path::new("/proc/self/capsid-keys")] {
            let err = load_or_generate_runtime_key(dir).unwrap_err();
            assert!(
                matches!(err, KeyError::Io { ref path, .. } if *path == dir.join(RUNTIME_KEY_FILE)),
                "{err}"
            );
        }
        assert!(!missing.exists());
    }
}
