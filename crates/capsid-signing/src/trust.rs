//! The home's trust store: `trust/<name>.toml`, one trusted key per file (directory 0700,
//! files 0600). Read whole at open; every change writes its file (or removes it) and syncs
//! the directory before the store in memory changes.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use capsid_core::file::{read_regular, write_atomic};
use capsid_core::limits::{
    MAX_TRUST_FILE_BYTES, MAX_TRUST_NAME_LEN, MAX_TRUST_SCOPE_PATTERNS, MAX_TRUSTED_KEYS,
};
use capsid_core::sync::{read, write};
use capsid_crypto::{KeyId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::error::TrustError;

/// The name the runtime key goes by as a signer: always trusted, never in the store.
pub const RUNTIME_SIGNER: &str = "runtime";

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
const SUFFIX: &str = ".toml";

/// A key the operator trusts to sign capsules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Its name in the store (`[a-z0-9-]`).
    pub name: String,
    /// The key.
    pub public_key: PublicKey,
    /// The capsule names it is trusted for (`*` globs); empty: every capsule.
    pub capsules: Vec<String>,
    /// When it was added, in ms since the Unix epoch.
    pub added_at_ms: u64,
}

impl TrustedKey {
    /// Whether its trust reaches capsule `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.capsules.is_empty()
            || self
                .capsules
                .iter()
                .any(|p| capsid_core::glob::glob_bytes(p.as_bytes(), name.as_bytes()))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    public_key: String,
    #[serde(default)]
    capsules: Vec<String>,
    added_at_ms: u64,
}

/// Checks a trusted key's name: 1 to 64 of `a-z`, `0-9`, `-`, not starting with `-`, and
/// not `runtime`.
fn check_trust_name(name: &str) -> Result<(), TrustError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TRUST_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(TrustError::BadName(name.to_owned()));
    }
    if name == RUNTIME_SIGNER {
        return Err(TrustError::Reserved);
    }
    Ok(())
}

fn check_scope(pattern: &str) -> Result<(), TrustError> {
    let ok = !pattern.is_empty()
        && pattern.len() <= MAX_TRUST_NAME_LEN
        && pattern
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*');
    if ok {
        Ok(())
    } else {
        Err(TrustError::BadScope(pattern.to_owned()))
    }
}

/// The keys this home trusts.
#[derive(Debug)]
pub struct TrustStore {
    dir: PathBuf,
    keys: RwLock<BTreeMap<String, TrustedKey>>,
    /// One change at a time: the file and the map change together.
    changing: Mutex<()>,
}

impl TrustStore {
    /// Opens the store in `dir`, creating it (0700) if missing. A directory or file open to
    /// others, or a file that is not a valid entry, is an error naming it: nothing is
    /// repaired or skipped.
    pub fn open(dir: &Path) -> Result<Self, TrustError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TrustError::Io { path, source }
        };
        match std::fs::symlink_metadata(dir) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if !meta.is_dir() {
                    return Err(TrustError::Malformed {
                        path: dir.to_owned(),
                        message: "not a directory".into(),
                    });
                }
                if mode & 0o077 != 0 {
                    return Err(TrustError::InsecureMode {
                        path: dir.to_owned(),
                        mode,
                        want: DIR_MODE,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(dir)
                    .map_err(io(dir))?;
            }
            Err(e) => return Err(io(dir)(e)),
        }
        let mut keys = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files of a write cut short are not entries.
            if file_name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Some(name) = file_name.strip_suffix(SUFFIX) else {
                return Err(TrustError::Malformed {
                    path,
                    message: "not a trusted key file (`<name>.toml`)".into(),
                });
            };
            let key = read_entry(&path, name)?;
            if let Some(other) = keys
                .values()
                .find(|k: &&TrustedKey| k.public_key == key.public_key)
            {
                return Err(TrustError::Malformed {
                    path,
                    message: format!("the same key is trusted as {}", other.name),
                });
            }
            keys.insert(name.to_owned(), key);
        }
        Ok(Self {
            dir: dir.to_owned(),
            keys: RwLock::new(keys),
            changing: Mutex::new(()),
        })
    }

    /// Every trusted key, by name.
    pub fn list(&self) -> Vec<TrustedKey> {
        read(&self.keys).values().cloned().collect()
    }

    /// The trusted key with this id, if any.
    pub fn by_key_id(&self, id: &KeyId) -> Option<TrustedKey> {
        read(&self.keys)
            .values()
            .find(|k| k.public_key.key_id() == *id)
            .cloned()
    }

    /// Checks that `key` may be added (name, key, scope, room) without adding it.
    pub fn check_add(&self, key: &TrustedKey) -> Result<(), TrustError> {
        check_trust_name(&key.name)?;
        if key.capsules.len() > MAX_TRUST_SCOPE_PATTERNS {
            return Err(TrustError::BadScope(format!(
                "more than {MAX_TRUST_SCOPE_PATTERNS} patterns"
            )));
        }
        for p in &key.capsules {
            check_scope(p)?;
        }
        let keys = read(&self.keys);
        if keys.contains_key(&key.name) {
            return Err(TrustError::NameTaken(key.name.clone()));
        }
        if let Some(other) = keys.values().find(|k| k.public_key == key.public_key) {
            return Err(TrustError::KeyTaken(other.name.clone()));
        }
        if keys.len() >= MAX_TRUSTED_KEYS {
            return Err(TrustError::Full(keys.len()));
        }
        Ok(())
    }

    /// Adds `key` (written and synced before it counts).
    pub fn add(&self, key: TrustedKey) -> Result<(), TrustError> {
        let _one = capsid_core::sync::lock(&self.changing);
        self.check_add(&key)?;
        let path = self.path(&key.name);
        let text = toml::to_string(&TrustFile {
            public_key: hex::encode(key.public_key.to_bytes()),
            capsules: key.capsules.clone(),
            added_at_ms: key.added_at_ms,
        })
        .map_err(|e| TrustError::Malformed {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if let Err(source) = write_atomic(&path, text.as_bytes(), FILE_MODE) {
            // It may have landed before the failure (a directory sync that failed): fail
            // closed, so a key refused now is not trusted after the next boot either.
            let _ = std::fs::remove_file(&path);
            return Err(TrustError::Io { path, source });
        }
        write(&self.keys).insert(key.name.clone(), key);
        Ok(())
    }

    /// Removes the key named `name` (its file removed and the directory synced first).
    pub fn remove(&self, name: &str) -> Result<TrustedKey, TrustError> {
        let _one = capsid_core::sync::lock(&self.changing);
        let Some(key) = read(&self.keys).get(name).cloned() else {
            return Err(TrustError::NotFound(name.to_owned()));
        };
        let path = self.path(name);
        let io = |source| TrustError::Io {
            path: path.clone(),
            source,
        };
        std::fs::remove_file(&path).map_err(io)?;
        // The file is gone: fail closed and stop trusting it now, even if making that
        // durable fails below (which is reported).
        write(&self.keys).remove(name);
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(key)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }
}

fn read_entry(path: &Path, name: &str) -> Result<TrustedKey, TrustError> {
    let malformed = |message: String| TrustError::Malformed {
        path: path.to_owned(),
        message,
    };
    check_trust_name(name).map_err(|e| malformed(e.to_string()))?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| TrustError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TrustError::InsecureMode {
            path: path.to_owned(),
            mode,
            want: FILE_MODE,
        });
    }
    let bytes = read_regular(path, MAX_TRUST_FILE_BYTES).map_err(|e| malformed(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| malformed(e.to_string()))?;
    let raw: TrustFile = toml::from_str(&text).map_err(|e| malformed(e.message().to_owned()))?;
    let public_key = parse_public_key(&raw.public_key).map_err(|e| malformed(e.to_string()))?;
    for p in &raw.capsules {
        check_scope(p).map_err(|e| malformed(e.to_string()))?;
    }
    Ok(TrustedKey {
        name: name.to_owned(),
        public_key,
        capsules: raw.capsules,
        added_at_ms: raw.added_at_ms,
    })
}

impl TrustedKey {
    /// A key to add, from the public key's hex as `capsid key generate` prints it.
    pub fn new(
        name: &str,
        public_key_hex: &str,
        capsules: Vec<String>,
        added_at_ms: u64,
    ) -> Result<Self, TrustError> {
        check_trust_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            public_key: parse_public_key(public_key_hex)?,
            capsules,
            added_at_ms,
        })
    }
}

fn parse_public_key(text: &str) -> Result<PublicKey, TrustError> {
    let bad = || TrustError::BadKey(text.chars().take(80).collect());
    let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
    PublicKey::from_bytes(&bytes).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsid_crypto::KeyPair;

    fn key(name: &str, scope: &[&str]) -> TrustedKey {
        let public = KeyPair::generate().unwrap().public_key();
        TrustedKey::new(
            name,
            &hex::encode(public.to_bytes()),
            scope.iter().map(|s| (*s).to_owned()).collect(),
            1,
        )
        .unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_added_survive_a_reopen_with_private_modes_and_removal_is_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("trust");
        let store = TrustStore::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let acme = key("acme", &["acme-*"]);
        store.add(acme.clone()).unwrap();
        store.add(key("other", &[])).unwrap();
        assert_eq!(mode(&dir.join("acme.toml")), 0o600);
        let again = TrustStore::open(&dir).unwrap();
        assert_eq!(again.list().len(), 2);
        let found = again.by_key_id(&acme.public_key.key_id()).unwrap();
        assert_eq!(found, acme);
        assert!(found.covers("acme-notes") && !found.covers("notes"));
        again.remove("acme").unwrap();
        assert!(
            TrustStore::open(&dir)
                .unwrap()
                .by_key_id(&acme.public_key.key_id())
                .is_none()
        );
        assert!(matches!(again.remove("acme"), Err(TrustError::NotFound(_))));
    }

    #[test]
    fn bad_names_taken_names_and_keys_trusted_twice_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = TrustStore::open(&tmp.path().join("trust")).unwrap();
        let acme = key("acme", &[]);
        store.add(acme.clone()).unwrap();
        assert!(matches!(
            store.add(key("acme", &[])),
            Err(TrustError::NameTaken(_))
        ));
        let mut twice = acme.clone();
        twice.name = "acme-two".into();
        assert!(matches!(store.add(twice), Err(TrustError::KeyTaken(n)) if n == "acme"));
        for bad in ["", "Acme", "-x", "a/b", &"a".repeat(65)] {
            let mut k = key("x", &[]);
            k.name = bad.to_owned();
            assert!(matches!(store.add(k), Err(TrustError::BadName(_))), "{bad}");
        }
        let mut runtime = key("x", &[]);
        runtime.name = RUNTIME_SIGNER.into();
        assert!(matches!(store.add(runtime), Err(TrustError::Reserved)));
        assert!(matches!(
            store.add(key("scoped", &["../x"])),
            Err(TrustError::BadScope(_))
        ));
        assert!(matches!(
            TrustedKey::new("x", "zz", vec![], 0),
            Err(TrustError::BadKey(_))
        ));
    }

    #[test]
    fn an_open_or_malformed_store_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("trust");
        let store = TrustStore::open(&dir).unwrap();
        store.add(key("acme", &[])).unwrap();
        let file = dir.join("acme.toml");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TrustStore::open(&dir).unwrap_err();
        assert!(matches!(err, TrustError::InsecureMode { .. }), "{err}");
        assert!(err.to_string().contains("acme.toml"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, "public_key = \"00\"\nadded_at_ms = 1\n").unwrap();
        let err = TrustStore::open(&dir).unwrap_err();
        assert!(matches!(err, TrustError::Malformed { .. }), "{err}");
        std::fs::remove_file(&file).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            TrustStore::open(&dir),
            Err(TrustError::InsecureMode { want: 0o700, .. })
        ));
    }
}
