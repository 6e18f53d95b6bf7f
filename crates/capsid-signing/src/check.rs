//! The check every load makes: is the capsule signed, unchanged since, for this package,
//! and by a key this home trusts for it?

use std::path::Path;
use std::sync::Arc;

use capsid_core::file::read_regular;
use capsid_core::limits::{MAX_SIGNATURE_FILE_BYTES, MAX_VERIFIED_SIGNATURES};
use capsid_crypto::{Digest, PublicKey};
use capsid_manifest::{Component, Manifest};
use serde::{Deserialize, Serialize};

use crate::contents::CapsuleContents;
use crate::error::SigningError;
use crate::signature::{CapsuleSignature, SIGNATURE_FILE};
use crate::trust::{RUNTIME_SIGNER, TrustStore};

/// Which capsules may load (`config.toml [signing] require`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// Signed, unchanged, by the runtime key or a trusted key whose trust covers the
    /// capsule's name. The default.
    #[default]
    Trusted,
    /// Signed and unchanged, by any key.
    Any,
    /// Not checked (dev trust only).
    Off,
}

impl std::fmt::Display for Require {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Trusted => "trusted",
            Self::Any => "any",
            Self::Off => "off",
        })
    }
}

/// Who signed a capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signer {
    /// The key's id (blake3 of the public key), hex.
    pub key_id: String,
    /// The public key, hex.
    pub public_key: String,
    /// Its name: `runtime`, or its name in the trust store; none for a key not trusted.
    pub name: Option<String>,
    /// Whether this home trusts it for the capsule.
    pub trusted: bool,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = self.key_id.get(..16).unwrap_or(&self.key_id);
        match &self.name {
            Some(name) => write!(f, "{name} (key {short})"),
            None => write!(f, "untrusted key {short}"),
        }
    }
}

/// What a passed check established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The signer (none when checks are off).
    pub signer: Option<Signer>,
    /// The component's signed blake3 (hex), for the engine to check the bytes it compiles
    /// against: a WebAssembly capsule's only.
    pub component_pin: Option<String>,
}

/// The signature policy of a home: what it requires, the runtime key (always trusted) and
/// the trust store.
#[derive(Debug)]
pub struct SignatureCheck {
    require: Require,
    runtime: PublicKey,
    store: Arc<TrustStore>,
    /// blake3 of `Capsule.sig` texts whose signature verified: whether one does depends on
    /// its text alone, so a capsule loaded again is not verified again. Who signed it is
    /// looked up afresh every time (a key removed since is not trusted).
    verified: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl SignatureCheck {
    /// A check requiring `require`, trusting `runtime` and the keys in `store`.
    pub fn new(require: Require, runtime: PublicKey, store: Arc<TrustStore>) -> Self {
        Self {
            require,
            runtime,
            store,
            verified: std::sync::Mutex::default(),
        }
    }

    /// Whether `sig`, parsed from `text`, verifies: remembered once it does.
    fn verifies(&self, text: &str, sig: &CapsuleSignature) -> bool {
        let key = *blake3::hash(text.as_bytes()).as_bytes();
        if capsid_core::sync::lock(&self.verified).contains(&key) {
            return true;
        }
        if !sig.verify() {
            return false;
        }
        let mut verified = capsid_core::sync::lock(&self.verified);
        if verified.len() >= MAX_VERIFIED_SIGNATURES {
            verified.clear();
        }
        verified.insert(key);
        true
    }

    /// What it requires.
    pub fn require(&self) -> Require {
        self.require
    }

    /// The trust store it consults.
    pub fn store(&self) -> &Arc<TrustStore> {
        &self.store
    }

    /// Checks the capsule in `dir`, whose manifest is `manifest`, parsed from exactly
    /// `manifest_source`. `dev` says whether the load has dev trust (the only one under
    /// which checks may be off).
    pub fn check(
        &self,
        dir: &Path,
        manifest: &Manifest,
        manifest_source: &[u8],
        dev: bool,
    ) -> Result<Checked, SigningError> {
        let capsule = manifest.name.clone();
        if self.require == Require::Off {
            if !dev {
                return Err(SigningError::OffOutsideDev { capsule });
            }
            return Ok(Checked {
                signer: None,
                component_pin: None,
            });
        }
        let file = dir.join(SIGNATURE_FILE);
        let bad = |reason: String| SigningError::BadSignature {
            capsule: capsule.clone(),
            dir: dir.to_owned(),
            file: file.clone(),
            reason,
        };
        let text = match read_regular(&file, MAX_SIGNATURE_FILE_BYTES) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?,
            Err(e) if e.is_not_found() => {
                return Err(SigningError::Unsigned {
                    capsule,
                    dir: dir.to_owned(),
                });
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let sig = CapsuleSignature::parse(&text).map_err(bad)?;
        if !self.verifies(&text, &sig) {
            return Err(bad("its signature does not verify under its key".into()));
        }
        let signer = self.signer(&sig, manifest.name.as_str());
        let actual = Digest(*blake3::hash(manifest_source).as_bytes());
        if actual != sig.manifest_blake3 {
            return Err(SigningError::Tampered {
                capsule,
                file: manifest.file.clone(),
                signer: signer.to_string(),
                expected: sig.manifest_blake3.to_string(),
                actual: actual.to_string(),
            });
        }
        if sig.name != manifest.name.as_str() || sig.version != manifest.version.to_string() {
            return Err(SigningError::WrongPackage {
                capsule,
                version: manifest.version.to_string(),
                dir: dir.to_owned(),
                // From the file, not yet trusted: shown escaped.
                signed_name: capsid_core::text::printable(&sig.name),
                signed_version: capsid_core::text::printable(&sig.version),
            });
        }
        let component_pin = match &manifest.component {
            Component::Wasm { blake3, .. } => {
                let Some(component) = sig.component_blake3 else {
                    return Err(bad("it names no component hash".into()));
                };
                let component = component.to_string();
                if blake3.as_ref().is_some_and(|pin| *pin != component) {
                    return Err(bad("its component hash is not the manifest's pin".into()));
                }
                Some(component)
            }
            Component::Native(program) | Component::Mcp { program, .. } => {
                let pinned = program
                    .binary_blake3
                    .as_deref()
                    .and_then(|p| p.parse().ok());
                if pinned != sig.component_blake3 {
                    return Err(bad("its program hash is not the manifest's pin".into()));
                }
                None
            }
        };
        if self.require == Require::Trusted && !signer.trusted {
            return Err(match &signer.name {
                Some(name) => SigningError::OutsideScope {
                    capsule,
                    signer: name.clone(),
                    public_key: signer.public_key.clone(),
                    scope: self
                        .store
                        .by_key_id(&sig.public_key.key_id())
                        .map(|k| k.capsules.join(", "))
                        .unwrap_or_default(),
                },
                None => SigningError::Untrusted {
                    capsule,
                    key_id: signer.key_id.clone(),
                    public_key: signer.public_key.clone(),
                },
            });
        }
        Ok(Checked {
            signer: Some(signer),
            component_pin,
        })
    }

    /// [`SignatureCheck::check`] of the capsule in `dir`, with its component file hashed
    /// and compared too (a load leaves that to the engine, which hashes what it compiles):
    /// what `capsule verify` and an install ask before anything is copied.
    pub fn check_dir(
        &self,
        dir: &Path,
        dev: bool,
    ) -> Result<(CapsuleContents, Checked), SigningError> {
        let contents = CapsuleContents::read_as_found(dir)?;
        let checked = self.check(dir, &contents.manifest, contents.source.as_bytes(), dev)?;
        if let (Some(pin), Some(signer), Component::Wasm { path, .. }, Some(actual)) = (
            &checked.component_pin,
            &checked.signer,
            &contents.manifest.component,
            contents.component_blake3,
        ) && actual.to_string() != *pin
        {
            return Err(SigningError::Tampered {
                capsule: contents.manifest.name.clone(),
                file: dir.join(path),
                signer: signer.to_string(),
                expected: pin.clone(),
                actual: actual.to_string(),
            });
        }
        Ok((contents, checked))
    }

    /// Who `sig` is by, as this home sees it, for capsule `name`: the runtime key, a
    /// trusted key (trusted for `name` only if its scope covers it), or an unknown key.
    pub fn signer(&self, sig: &CapsuleSignature, name: &str) -> Signer {
        let key_id = sig.public_key.key_id();
        let (name, trusted) = if sig.public_key == self.runtime {
            (Some(RUNTIME_SIGNER.to_owned()), true)
        } else {
            match self.store.by_key_id(&key_id) {
                Some(k) => {
                    let covers = k.covers(name);
                    (Some(k.name), covers)
                }
                None => (None, false),
            }
        };
        Signer {
            key_id: key_id.to_string(),
            public_key: hex::encode(sig.public_key.to_bytes()),
            name,
            trusted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contents::sign_capsule;
    use crate::trust::TrustedKey;
    use capsid_crypto::KeyPair;
    use capsid_manifest::MANIFEST_FILE;

    const MANIFEST: &str =
        "[package]\nname = \"acme-notes\"\nversion = \"0.1.0\"\n\n[component]\nwasm = \"c.wasm\"\n";

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: std::path::PathBuf,
        runtime: KeyPair,
        store: Arc<TrustStore>,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acme-notes");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), MANIFEST).unwrap();
        std::fs::write(dir.join("c.wasm"), b"\0asm component bytes").unwrap();
        let store = Arc::new(TrustStore::open(&tmp.path().join("trust")).unwrap());
        Fixture {
            dir,
            runtime: KeyPair::generate().unwrap(),
            store,
            _tmp: tmp,
        }
    }

    impl Fixture {
        fn check(&self, require: Require, dev: bool) -> Result<Checked, SigningError> {
            let file = self.dir.join(MANIFEST_FILE);
            let source = Manifest::read_source(&file).unwrap();
            let manifest = Manifest::parse(&file, &source).unwrap();
            SignatureCheck::new(require, self.runtime.public_key(), self.store.clone()).check(
                &self.dir,
                &manifest,
                source.as_bytes(),
                dev,
            )
        }

        fn trust(&self, name: &str, key: &KeyPair, scope: &[&str]) {
            let public = hex::encode(key.public_key().to_bytes());
            let scope = scope.iter().map(|s| (*s).to_owned()).collect();
            self.store
                .add(TrustedKey::new(name, &public, scope, 1).unwrap())
                .unwrap();
        }
    }

    #[test]
    fn the_runtime_key_and_trusted_keys_pass_and_pin_the_component() {
        let f = fixture();
        sign_capsule(&f.dir, &f.runtime).unwrap();
        let ok = f.check(Require::Trusted, false).unwrap();
        let signer = ok.signer.unwrap();
        assert_eq!(signer.name.as_deref(), Some(RUNTIME_SIGNER));
        let wasm = std::fs::read(f.dir.join("c.wasm")).unwrap();
        assert_eq!(
            ok.component_pin.unwrap(),
            blake3::hash(&wasm).to_hex().to_string()
        );
        let acme = KeyPair::generate().unwrap();
        f.trust("acme", &acme, &["acme-*"]);
        sign_capsule(&f.dir, &acme).unwrap();
        let signer = f.check(Require::Trusted, false).unwrap().signer.unwrap();
        assert_eq!(signer.name.as_deref(), Some("acme"));
        assert!(signer.trusted);
    }

    #[test]
    fn each_refusal_names_its_cause() {
        let f = fixture();
        // Unsigned.
        let err = f.check(Require::Trusted, false).unwrap_err();
        assert!(matches!(err, SigningError::Unsigned { .. }), "{err}");
        assert!(err.to_string().contains("capsid capsule sign"));
        // Untrusted signer: refused under `trusted`, accepted under `any`.
        let stranger = KeyPair::generate().unwrap();
        sign_capsule(&f.dir, &stranger).unwrap();
        let err = f.check(Require::Trusted, false).unwrap_err();
        assert!(matches!(err, SigningError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("capsid trust add"));
        let any = f.check(Require::Any, false).unwrap().signer.unwrap();
        assert!(!any.trusted && any.name.is_none());
        // Trusted, but not for this name.
        f.trust("other", &stranger, &["other-*"]);
        let err = f.check(Require::Trusted, false).unwrap_err();
        assert!(matches!(err, SigningError::OutsideScope { .. }), "{err}");
        assert!(err.to_string().contains("other-*"));
        // Off: only with dev trust.
        let err = f.check(Require::Off, false).unwrap_err();
        assert!(matches!(err, SigningError::OffOutsideDev { .. }), "{err}");
        assert_eq!(f.check(Require::Off, true).unwrap().signer, None);
    }

    #[test]
    fn a_changed_manifest_or_signature_file_is_refused() {
        let f = fixture();
        sign_capsule(&f.dir, &f.runtime).unwrap();
        let manifest = f.dir.join(MANIFEST_FILE);
        std::fs::write(&manifest, format!("{MANIFEST}\n# one more line\n")).unwrap();
        let err = f.check(Require::Any, false).unwrap_err();
        assert!(matches!(err, SigningError::Tampered { .. }), "{err}");
        assert!(err.to_string().contains("Capsule.toml"));
        std::fs::write(&manifest, MANIFEST).unwrap();
        f.check(Require::Trusted, false).unwrap();
        let sig_file = f.dir.join(SIGNATURE_FILE);
        let text = std::fs::read_to_string(&sig_file).unwrap();
        // One flipped hex digit in the signature itself.
        let sig = CapsuleSignature::parse(&text).unwrap();
        let hex_sig = hex::encode(sig.signature.as_bytes());
        let flipped = format!(
            "{}{}",
            if hex_sig.starts_with('0') { "1" } else { "0" },
            &hex_sig[1..]
        );
        std::fs::write(&sig_file, text.replace(&hex_sig, &flipped)).unwrap();
        let err = f.check(Require::Any, false).unwrap_err();
        assert!(matches!(err, SigningError::BadSignature { .. }), "{err}");
        std::fs::write(&sig_file, "garbage").unwrap();
        assert!(matches!(
            f.check(Require::Any, false),
            Err(SigningError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_changed_component_is_found_by_a_whole_check() {
        let f = fixture();
        sign_capsule(&f.dir, &f.runtime).unwrap();
        let check = SignatureCheck::new(Require::Trusted, f.runtime.public_key(), f.store.clone());
        check.check_dir(&f.dir, false).unwrap();
        std::fs::write(f.dir.join("c.wasm"), b"\0asm other bytes").unwrap();
        let err = check.check_dir(&f.dir, false).unwrap_err();
        assert!(matches!(err, SigningError::Tampered { .. }), "{err}");
        assert!(err.to_string().contains("c.wasm"), "{err}");
    }

    #[test]
    fn a_changed_pinned_component_is_tampering_not_a_bad_pin() {
        let f = fixture();
        let wasm = std::fs::read(f.dir.join("c.wasm")).unwrap();
        let pin = blake3::hash(&wasm).to_hex().to_string();
        let pinned = MANIFEST.replace(
            "wasm = \"c.wasm\"",
            &format!("wasm = \"c.wasm\"\nblake3 = \"{pin}\""),
        );
        std::fs::write(f.dir.join(MANIFEST_FILE), pinned).unwrap();
        sign_capsule(&f.dir, &f.runtime).unwrap();
        std::fs::write(f.dir.join("c.wasm"), b"\0asm swapped").unwrap();
        let check = SignatureCheck::new(Require::Trusted, f.runtime.public_key(), f.store.clone());
        let err = check.check_dir(&f.dir, false).unwrap_err();
        assert!(matches!(err, SigningError::Tampered { .. }), "{err}");
    }

    #[test]
    fn a_signature_made_for_another_package_is_refused() {
        let f = fixture();
        let source = std::fs::read(f.dir.join(MANIFEST_FILE)).unwrap();
        let wasm = std::fs::read(f.dir.join("c.wasm")).unwrap();
        let sig = CapsuleSignature::sign(
            &f.runtime,
            "acme-other",
            "0.1.0",
            Digest(*blake3::hash(&source).as_bytes()),
            Some(Digest(*blake3::hash(&wasm).as_bytes())),
        );
        std::fs::write(f.dir.join(SIGNATURE_FILE), sig.to_text().unwrap()).unwrap();
        let err = f.check(Require::Trusted, false).unwrap_err();
        assert!(matches!(err, SigningError::WrongPackage { .. }), "{err}");
        assert!(err.to_string().contains("acme-other"));
    }
}
