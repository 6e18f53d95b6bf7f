//! Install receipts: `state/receipts/<name>.json`, what the operator accepted when a capsule
//! was installed (its hashes, its signer, its capability requests). A later install with
//! another signer or with requests the receipt does not hold needs the operator's
//! `--accept`, and is shown the difference.

use std::path::{Path, PathBuf};

use capsid_core::CapsuleId;
use capsid_core::limits::MAX_RECEIPT_BYTES;
use capsid_manifest::Manifest;
use capsid_signing::Signer;
use serde::{Deserialize, Serialize};

use crate::error::KernelError;

/// What one install accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The capsule.
    pub name: CapsuleId,
    /// Its version.
    pub version: String,
    /// blake3 of its manifest.
    pub manifest_blake3: String,
    /// blake3 of its component (or its pinned program), when there is one.
    pub component_blake3: Option<String>,
    /// Who signed it (none when signature checks were off).
    pub signer: Option<Signer>,
    /// Its capability requests, as `<pattern> <permissions>` and `ask <pattern>`, sorted.
    pub requests: Vec<String>,
    /// When it was accepted, in ms since the Unix epoch.
    pub accepted_at_ms: u64,
}

/// How an install differs from the receipt of the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptChange {
    /// Whether the signer changed.
    pub signer_changed: bool,
    /// The signer before, when it changed (none: it was unsigned).
    pub signer_was: Option<Signer>,
    /// Requests the new copy makes that the receipt does not hold.
    pub added_requests: Vec<String>,
}

impl ReceiptChange {
    /// Whether nothing needs accepting.
    pub fn is_empty(&self) -> bool {
        !self.signer_changed && self.added_requests.is_empty()
    }
}

impl std::fmt::Display for ReceiptChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.signer_changed {
            let was = self
                .signer_was
                .as_ref()
                .map_or_else(|| "unsigned".to_owned(), ToString::to_string);
            parts.push(format!("the signer changed (was {was})"));
        }
        if !self.added_requests.is_empty() {
            parts.push(format!(
                "it asks for more: {}",
                self.added_requests.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// The capability requests of `manifest`, as a receipt lists them.
pub(crate) fn requests(manifest: &Manifest) -> Vec<String> {
    let mut out: Vec<String> = capsid_capsule::requested(manifest)
        .into_iter()
        .map(|r| format!("{} {}", r.pattern, r.permissions))
        .chain(
            manifest
                .capabilities
                .ask
                .iter()
                .map(|p| format!("ask {}", p.as_str())),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Receipt {
    /// What `self` (the new install) changes from `before`.
    pub fn change_from(&self, before: &Receipt) -> ReceiptChange {
        let key = |s: &Option<Signer>| s.as_ref().map(|s| s.key_id.clone());
        let signer_changed = key(&self.signer) != key(&before.signer);
        ReceiptChange {
            signer_changed,
            signer_was: if signer_changed {
                before.signer.clone()
            } else {
                None
            },
            added_requests: self
                .requests
                .iter()
                .filter(|r| !before.requests.contains(r))
                .cloned()
                .collect(),
        }
    }
}

fn path(dir: &Path, name: &CapsuleId) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// The receipt of capsule `name` in `dir`, if one was kept. One that cannot be read is an
/// error naming the file: an install never goes ahead on a receipt it could not check.
pub(crate) fn read(dir: &Path, name: &CapsuleId) -> Result<Option<Receipt>, KernelError> {
    let file = path(dir, name);
    let bytes = match capsid_core::file::read_regular(&file, MAX_RECEIPT_BYTES) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => {
            return Err(KernelError::Receipt {
                path: file,
                message: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| KernelError::Receipt {
            path: file,
            message: format!("{e} (remove it to install afresh)"),
        })
}

/// Keeps `receipt` (whole or not at all, 0600).
pub(crate) fn write(dir: &Path, receipt: &Receipt) -> Result<(), KernelError> {
    let file = path(dir, &receipt.name);
    let bytes = serde_json::to_vec_pretty(receipt).map_err(|e| KernelError::Receipt {
        path: file.clone(),
        message: e.to_string(),
    })?;
    capsid_core::file::write_atomic(&file, &bytes, 0o600)
        .map_err(|source| KernelError::Io { path: file, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(id: &str) -> Signer {
        Signer {
            key_id: id.into(),
            public_key: id.into(),
            name: Some(id.into()),
            trusted: true,
        }
    }

    fn receipt(signer: Option<Signer>, requests: &[&str]) -> Receipt {
        Receipt {
            name: CapsuleId::new("notes").unwrap(),
            version: "1.0.0".into(),
            manifest_blake3: "m".into(),
            component_blake3: None,
            signer,
            requests: requests.iter().map(|s| (*s).to_owned()).collect(),
            accepted_at_ms: 1,
        }
    }

    #[test]
    fn a_new_signer_or_a_wider_request_is_a_change_and_a_narrower_one_is_not() {
        let before = receipt(Some(signer("a")), &["kv://notes rw", "fs://x r"]);
        assert!(
            receipt(Some(signer("a")), &["kv://notes rw"])
                .change_from(&before)
                .is_empty()
        );
        let wider = receipt(Some(signer("a")), &["kv://notes rw", "fs://y r"]);
        assert_eq!(wider.change_from(&before).added_requests, ["fs://y r"]);
        let resigned = receipt(Some(signer("b")), &["kv://notes rw"]).change_from(&before);
        assert!(resigned.signer_changed);
        assert_eq!(resigned.signer_was, Some(signer("a")));
        let from_unsigned = receipt(Some(signer("a")), &["kv://notes rw"])
            .change_from(&receipt(None, &["kv://notes rw"]));
        assert!(from_unsigned.signer_changed && from_unsigned.signer_was.is_none());
        assert!(from_unsigned.to_string().contains("was unsigned"));
        assert!(resigned.to_string().contains("the signer changed"));
    }

    #[test]
    fn receipts_round_trip_and_a_broken_one_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let r = receipt(None, &["kv://notes rw"]);
        assert_eq!(read(tmp.path(), &r.name).unwrap(), None);
        write(tmp.path(), &r).unwrap();
        assert_eq!(read(tmp.path(), &r.name).unwrap(), Some(r.clone()));
        std::fs::write(tmp.path().join("notes.json"), "{").unwrap();
        let err = read(tmp.path(), &r.name).unwrap_err();
        assert!(err.to_string().contains("notes.json"), "{err}");
    }
}
