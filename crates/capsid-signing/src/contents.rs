//! What a capsule's signature covers, read from its directory, and signing it.

use std::path::{Path, PathBuf};

use capsid_core::file::{read_regular, write_atomic};
use capsid_core::limits::MAX_COMPONENT_BYTES;
use capsid_crypto::{Digest, KeyPair};
use capsid_manifest::{Component, MANIFEST_FILE, Manifest};

use crate::error::SigningError;
use crate::signature::{CapsuleSignature, SIGNATURE_FILE};

/// Mode of a written `Capsule.sig`: it is public, and only its owner may change it.
const SIGNATURE_FILE_MODE: u32 = 0o644;

/// A capsule's manifest and the hashes its signature covers, as read now.
#[derive(Debug, Clone)]
pub struct CapsuleContents {
    /// The capsule's directory.
    pub dir: PathBuf,
    /// Its manifest, parsed from exactly the bytes hashed.
    pub manifest: Manifest,
    /// The manifest's text, as read and hashed.
    pub source: String,
    /// blake3 of `Capsule.toml`.
    pub manifest_blake3: Digest,
    /// blake3 of the component file, or the pin of a native or MCP program.
    pub component_blake3: Option<Digest>,
}

impl CapsuleContents {
    /// Reads the capsule in `dir`: its manifest, and its component hashed in full, which
    /// must match the manifest's `blake3` pin if it has one (what signing needs).
    pub fn read(dir: &Path) -> Result<Self, SigningError> {
        let contents = Self::read_as_found(dir)?;
        if let (
            Component::Wasm {
                path,
                blake3: Some(pin),
            },
            Some(actual),
        ) = (&contents.manifest.component, contents.component_blake3)
            && *pin != actual.to_string()
        {
            return Err(SigningError::Io {
                dir: dir.to_owned(),
                message: format!(
                    "{} has blake3 {actual} but the manifest pins {pin}: fix the pin",
                    dir.join(path).display()
                ),
            });
        }
        Ok(contents)
    }

    /// [`CapsuleContents::read`] without comparing the component with the manifest's pin
    /// (a check compares it with what was signed, and reports a difference as tampering).
    pub fn read_as_found(dir: &Path) -> Result<Self, SigningError> {
        let file = dir.join(MANIFEST_FILE);
        let source = Manifest::read_source(&file)?;
        let manifest = Manifest::parse(&file, &source)?;
        let manifest_blake3 = Digest(*blake3::hash(source.as_bytes()).as_bytes());
        let component_blake3 = match &manifest.component {
            Component::Wasm { path, .. } => {
                let path = dir.join(path);
                let bytes =
                    read_regular(&path, MAX_COMPONENT_BYTES).map_err(|e| SigningError::Io {
                        dir: dir.to_owned(),
                        message: e.to_string(),
                    })?;
                Some(Digest(*blake3::hash(&bytes).as_bytes()))
            }
            Component::Native(program) | Component::Mcp { program, .. } => program
                .binary_blake3
                .as_deref()
                .map(|pin| {
                    pin.parse::<Digest>().map_err(|_| SigningError::Io {
                        dir: dir.to_owned(),
                        message: format!("its program pin `{pin}` is not a blake3 hash"),
                    })
                })
                .transpose()?,
        };
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            source,
            manifest_blake3,
            component_blake3,
        })
    }

    /// The signature of these contents by `key`.
    pub fn sign(&self, key: &KeyPair) -> CapsuleSignature {
        CapsuleSignature::sign(
            key,
            self.manifest.name.as_str(),
            &self.manifest.version.to_string(),
            self.manifest_blake3,
            self.component_blake3,
        )
    }
}

/// Signs the capsule in `dir` with `key`: writes `Capsule.sig` beside its manifest (whole or
/// not at all, replacing any signature there) and returns it.
pub fn sign_capsule(dir: &Path, key: &KeyPair) -> Result<CapsuleSignature, SigningError> {
    let contents = CapsuleContents::read(dir)?;
    let signature = contents.sign(key);
    let file = dir.join(SIGNATURE_FILE);
    let text = signature.to_text()?;
    write_atomic(&file, text.as_bytes(), SIGNATURE_FILE_MODE).map_err(|e| SigningError::Io {
        dir: dir.to_owned(),
        message: format!("{}: {e}", file.display()),
    })?;
    Ok(signature)
}
