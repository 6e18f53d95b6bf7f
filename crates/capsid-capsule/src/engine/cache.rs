//! The compiled-component cache: `cache/compiled/<blake3 of the wasm>.cwasm`.
//!
//! A cache file is native code the runtime will execute, so it is never trusted on sight. Each
//! file is `MAGIC · VERSION · signature · artifact`, the signature being the runtime key's
//! over the hash, in its own domain, of the wasm's blake3 and the artifact: so an entry
//! cannot be renamed into another component's place (or an older build's). A file whose
//! signature does not verify (a different key, a flipped bit, a truncated write, another
//! name) or that wasmtime refuses (another engine version or configuration) is deleted and
//! the component is compiled again.
// `Component::deserialize` is `unsafe`: wasmtime cannot check that the bytes are its own
// output. The signature check above it is what establishes that.
#![allow(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsid_crypto::{Digest, DomainHasher, KeyPair, Signature, domain};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 4] = b"CPCW";
const VERSION: u8 = 1;
const HEADER: usize = MAGIC.len() + 1 + 64;

/// What the runtime key signs: the wasm's blake3 (as named in the file name) and the artifact.
fn signed_digest(blake3: &str, artifact: &[u8]) -> Digest {
    DomainHasher::new(domain::COMPILED_COMPONENT)
        .update(&(blake3.len() as u64).to_be_bytes())
        .update(blake3.as_bytes())
        .update(artifact)
        .finalize()
}

#[derive(Clone)]
pub(super) struct CompiledCache {
    dir: PathBuf,
    key: Arc<KeyPair>,
}

impl CompiledCache {
    pub(super) fn new(dir: PathBuf, key: Arc<KeyPair>) -> Self {
        Self { dir, key }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn path(&self, blake3: &str) -> PathBuf {
        self.dir.join(format!("{blake3}.cwasm"))
    }

    /// The cached component, if a valid signed entry exists. Anything else found at the
    /// path is removed.
    pub(super) fn get(&self, engine: &Engine, blake3: &str) -> Option<Component> {
        let path = self.path(blake3);
        let bytes = std::fs::read(&path).ok()?;
        match self.open(engine, blake3, &bytes) {
            Ok(component) => Some(component),
            Err(reason) => {
                tracing::warn!(path = %path.display(), reason, "discarding compiled cache entry");
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove cache entry");
                }
                None
            }
        }
    }

    fn open(&self, engine: &Engine, blake3: &str, bytes: &[u8]) -> Result<Component, String> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return Err("not a capsid compiled-component file".into());
        }
        let signature = Signature::from_slice(&bytes[5..HEADER]).ok_or("short signature")?;
        let artifact = &bytes[HEADER..];
        let digest = signed_digest(blake3, artifact);
        self.key
            .verify(digest.as_bytes(), &signature)
            .map_err(|_| "signature does not verify with the runtime key".to_owned())?;
        // SAFETY: the artifact was produced by `Component::serialize` in this runtime: its
        // signature by the runtime key (which never leaves the 0700 key directory) verified
        // just above. wasmtime still checks its engine and version header.
        unsafe { Component::deserialize(engine, artifact) }.map_err(|e| e.to_string())
    }

    /// Writes `artifact` (a serialized component) under `blake3`, atomically (temporary
    /// file, fsync, rename). A failure only costs a recompile next time, so it is logged,
    /// not returned.
    pub(super) fn put(&self, blake3: &str, artifact: &[u8]) {
        let path = self.path(blake3);
        if let Err(e) = self.write(&path, blake3, artifact) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compiled cache entry");
        }
    }

    fn write(&self, path: &Path, blake3: &str, artifact: &[u8]) -> Result<(), String> {
        let digest = signed_digest(blake3, artifact);
        let signature = self.key.sign(digest.as_bytes());
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut tmp = tempfile_in(&self.dir).map_err(|e| e.to_string())?;
        let written = (|| {
            tmp.1.write_all(MAGIC)?;
            tmp.1.write_all(&[VERSION])?;
            tmp.1.write_all(signature.as_bytes())?;
            tmp.1.write_all(artifact)?;
            tmp.1.sync_all()?;
            std::fs::rename(&tmp.0, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp.0);
        }
        written.map_err(|e| e.to_string())
    }
}

/// A new file with a random name in `dir`, created exclusively with mode 0600.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut rand = [0u8; 8];
    getrandom::fill(&mut rand).map_err(std::io::Error::other)?;
    let path = dir.join(format!(".tmp-{}", hex::encode(rand)));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((path, file))
}
