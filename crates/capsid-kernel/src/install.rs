//! Installing a capsule into the home: only what the capsule is made of (its manifest and
//! its component) is copied, into a staging folder beside the target, then swapped in with
//! two renames. Whatever fails after the swap (the audit record, the load) puts the copy
//! installed before back, so an install either lands whole or leaves the home as it was.

use std::path::{Path, PathBuf};

use capsid_audit::action;
use capsid_capsule::CapsuleInfo;
use capsid_core::CapsuleId;
use capsid_manifest::{Component, MANIFEST_FILE, Manifest};

use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::receipts::{self, Receipt, ReceiptChange};
use capsid_signing::CapsuleContents;

/// Why an install failed. Nothing of the home changed, unless said otherwise.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The capsule's manifest cannot be used.
    #[error("installing {}: {source}", dir.display())]
    Manifest {
        /// The directory being installed.
        dir: PathBuf,
        /// What is wrong with it.
        source: capsid_manifest::ManifestError,
    },
    /// The component the manifest names is not a regular file in the directory.
    #[error("installing {}: its component {} is missing (or not a regular file)", dir.display(), component.display())]
    MissingComponent {
        /// The directory being installed.
        dir: PathBuf,
        /// The component's path.
        component: PathBuf,
    },
    /// A capsule of that name is loaded.
    #[error("installing {}: capsule {name} is loaded; unload it first to replace it", dir.display())]
    Loaded {
        /// The directory being installed.
        dir: PathBuf,
        /// The capsule.
        name: CapsuleId,
    },
    /// A file could not be copied, moved or removed.
    #[error("installing {}: {}: {source}", dir.display(), path.display())]
    Io {
        /// The directory being installed.
        dir: PathBuf,
        /// The file or folder at fault.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The capsule installed before was accepted with another signer or fewer requests:
    /// installing this copy needs the operator's `accept`.
    #[error(
        "installing {}: capsule {name} was installed before, and {change}: review this and run the install again with --accept",
        dir.display()
    )]
    NeedsAccept {
        /// The directory being installed.
        dir: PathBuf,
        /// The capsule.
        name: CapsuleId,
        /// How it differs from what was accepted.
        change: Box<ReceiptChange>,
    },
    /// The capsule's files changed while it was being installed (after they were checked).
    #[error(
        "installing {}: its files changed while it was being installed; run the install again",
        dir.display()
    )]
    Changed {
        /// The directory being installed.
        dir: PathBuf,
    },
    /// The install failed and the copy installed before could not be put back: the home
    /// holds the new copy (unloaded) and the old one stays at `kept`.
    #[error(
        "installing {}: {cause}; and the previous copy could not be put back ({source}): it is kept at {}",
        dir.display(),
        kept.display()
    )]
    Stranded {
        /// The directory being installed.
        dir: PathBuf,
        /// Why the install failed.
        cause: String,
        /// Where the previous copy is.
        kept: PathBuf,
        /// Why it could not be put back.
        source: std::io::Error,
    },
}

/// A capsule installed: as loaded, with what was copied and what was left out.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The capsule, loaded.
    pub capsule: CapsuleInfo,
    /// What was accepted: the signer and the requests, as kept in the receipt.
    pub receipt: Receipt,
    /// How it differs from the copy installed before, when that needed accepting.
    pub accepted: Option<ReceiptChange>,
    /// The files copied, relative to the capsule's directory.
    pub files: Vec<PathBuf>,
    /// Entries of the directory that are not part of the capsule and were not copied.
    pub left_out: Vec<PathBuf>,
}

/// The files a capsule is made of, relative to its directory.
fn capsule_files(manifest: &Manifest) -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from(MANIFEST_FILE)];
    if let Component::Wasm { path, .. } = &manifest.component {
        files.push(path.clone());
    }
    files
}

/// Entries of `dir` (top level) that are not among `files`, sorted.
fn left_out(dir: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = PathBuf::from(entry?.file_name());
        if !files.iter().any(|f| f.starts_with(&name)) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// A staged copy swapped in for the target, with the previous copy set aside until the
/// install is known to have succeeded.
#[derive(Debug)]
pub(crate) struct Swap {
    dir: PathBuf,
    target: PathBuf,
    previous: Option<PathBuf>,
}

/// How a swap moves folders (`std::fs::rename`; tests inject failures).
pub(crate) type Rename = fn(&Path, &Path) -> std::io::Result<()>;

impl Swap {
    /// Moves `target` (if any) to `previous` and `staging` to `target`. If the second move
    /// fails, the first is undone and `staging` removed.
    pub(crate) fn swap_in(
        dir: &Path,
        staging: &Path,
        target: &Path,
        previous: &Path,
        rename: Rename,
    ) -> Result<Self, InstallError> {
        let io = |path: &Path| {
            let (dir, path) = (dir.to_owned(), path.to_owned());
            move |source| InstallError::Io { dir, path, source }
        };
        let had_previous = target.exists();
        if had_previous {
            rename(target, previous).map_err(io(target))?;
        }
        if let Err(e) = rename(staging, target) {
            let _ = std::fs::remove_dir_all(staging);
            if had_previous && let Err(source) = rename(previous, target) {
                return Err(InstallError::Stranded {
                    dir: dir.to_owned(),
                    cause: format!("{}: {e}", target.display()),
                    kept: previous.to_owned(),
                    source,
                });
            }
            return Err(io(target)(e));
        }
        Ok(Self {
            dir: dir.to_owned(),
            target: target.to_owned(),
            previous: had_previous.then(|| previous.to_owned()),
        })
    }

    /// The install succeeded: the previous copy goes.
    pub(crate) fn keep(self) {
        if let Some(previous) = &self.previous {
            let _ = std::fs::remove_dir_all(previous);
        }
    }

    /// The install failed with `cause`: the new copy goes, the previous one comes back.
    pub(crate) fn undo(
        self,
        cause: &dyn std::fmt::Display,
        rename: Rename,
    ) -> Option<InstallError> {
        let _ = std::fs::remove_dir_all(&self.target);
        let previous = self.previous?;
        rename(&previous, &self.target)
            .err()
            .map(|source| InstallError::Stranded {
                dir: self.dir,
                cause: cause.to_string(),
                kept: previous,
                source,
            })
    }
}

/// Copies `files` (relative) from `from` into `to` (created), refusing symlinks.
fn stage(dir: &Path, files: &[PathBuf], to: &Path) -> Result<(), InstallError> {
    let io = |path: &Path| {
        let (dir, path) = (dir.to_owned(), path.to_owned());
        move |source| InstallError::Io { dir, path, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for file in files {
        let src = dir.join(file);
        let meta = src.symlink_metadata().map_err(io(&src))?;
        if !meta.is_file() {
            return Err(InstallError::MissingComponent {
                dir: dir.to_owned(),
                component: src,
            });
        }
        let dest = to.join(file);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::copy(&src, &dest).map_err(io(&src))?;
    }
    Ok(())
}

/// Checks that the copy staged in `staging` is the one checked (`checked`, read from
/// `dir`): the same manifest and component bytes.
fn same_as_checked(
    dir: &Path,
    staging: &Path,
    checked: &CapsuleContents,
) -> Result<(), InstallError> {
    let changed = || InstallError::Changed {
        dir: dir.to_owned(),
    };
    let staged = CapsuleContents::read_as_found(staging).map_err(|_| changed())?;
    if staged.manifest_blake3 != checked.manifest_blake3
        || staged.component_blake3 != checked.component_blake3
    {
        return Err(changed());
    }
    Ok(())
}

/// A blocking step that panicked, as the install's failure.
fn task_failed(dir: &Path, e: &tokio::task::JoinError) -> InstallError {
    InstallError::Io {
        dir: dir.to_owned(),
        path: dir.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn unique_suffix() -> String {
    let mut raw = [0u8; 8];
    // Uniqueness only avoids clashing with a leftover folder; a failed draw falls back to
    // the pid, which is unique among live installers of this home.
    if getrandom::fill(&mut raw).is_err() {
        return std::process::id().to_string();
    }
    hex::encode(raw)
}

impl Kernel {
    /// The receipt installing the capsule `name` in `from` would keep (its signature checked,
    /// its component hashed), and how it differs from the receipt kept before, if it does:
    /// refused unless `accept`.
    async fn receipt_for(
        &self,
        from: &Path,
        name: &CapsuleId,
        accept: bool,
    ) -> Result<(CapsuleContents, Receipt, Option<ReceiptChange>), KernelError> {
        let (contents, checked) = self.verify_capsule(from).await?;
        if contents.manifest.name != *name {
            return Err(InstallError::Changed {
                dir: from.to_owned(),
            }
            .into());
        }
        let receipt = Receipt {
            name: name.clone(),
            version: contents.manifest.version.to_string(),
            manifest_blake3: contents.manifest_blake3.to_string(),
            component_blake3: contents.component_blake3.map(|d| d.to_string()),
            signer: checked.signer,
            requests: receipts::requests(&contents.manifest),
            accepted_at_ms: u64::try_from(capsid_core::time::now_ms()).unwrap_or_default(),
        };
        let before = {
            let (dir, name) = (self.home().receipts_dir(), name.clone());
            tokio::task::spawn_blocking(move || receipts::read(&dir, &name))
                .await
                .map_err(|e| task_failed(from, &e))??
        };
        let change = before
            .map(|b| receipt.change_from(&b))
            .filter(|c| !c.is_empty());
        if let Some(change) = &change
            && !accept
        {
            return Err(InstallError::NeedsAccept {
                dir: from.to_owned(),
                name: name.clone(),
                change: Box::new(change.clone()),
            }
            .into());
        }
        Ok((contents, receipt, change))
    }

    /// Loads the capsule just installed, then keeps its receipt.
    async fn load_and_keep(
        &self,
        from: &Path,
        receipt: &Receipt,
    ) -> Result<CapsuleInfo, KernelError> {
        let capsule = self.load(&receipt.name).await?;
        let (dir, kept) = (self.home().receipts_dir(), receipt.clone());
        match tokio::task::spawn_blocking(move || receipts::write(&dir, &kept)).await {
            Ok(written) => written.map(|()| capsule),
            Err(e) => Err(task_failed(from, &e).into()),
        }
    }

    /// Installs the capsule in `from` into `<home>/capsules/<name>` and loads it. Only its
    /// manifest, component and signature are copied (what else the folder holds is
    /// reported in [`Installed::left_out`]); the manifest is validated and the signature
    /// checked (the component hashed) before anything is copied; a capsule of that name
    /// that is loaded must be unloaded first. A capsule installed before with another
    /// signer, or asking for less, needs `accept` ([`InstallError::NeedsAccept`] shows the
    /// difference). A copy already installed is kept until the new one is recorded, loaded
    /// and its receipt kept, and put back if any of these fails.
    pub async fn install(&self, from: &Path, accept: bool) -> Result<Installed, KernelError> {
        self.open_recording()?;
        let _one_at_a_time = self.inner.installing.lock().await;
        let dir = from.to_owned();
        let manifest = {
            let file = from.join(MANIFEST_FILE);
            tokio::task::spawn_blocking(move || Manifest::load(&file))
                .await
                .map_err(|e| task_failed(from, &e))?
                .map_err(|source| InstallError::Manifest {
                    dir: dir.clone(),
                    source,
                })?
        };
        let name = manifest.name.clone();
        if self.registry().info(&name).is_some() {
            return Err(InstallError::Loaded { dir, name }.into());
        }
        let (contents, receipt, change) = self.receipt_for(from, &name, accept).await?;
        let mut files = capsule_files(&manifest);
        if from
            .join(capsid_signing::SIGNATURE_FILE)
            .symlink_metadata()
            .is_ok_and(|m| m.is_file())
        {
            files.push(PathBuf::from(capsid_signing::SIGNATURE_FILE));
        }
        let left_out = left_out(from, &files).map_err(|source| InstallError::Io {
            dir: dir.clone(),
            path: dir.clone(),
            source,
        })?;
        let target = self.capsule_dir(&name);
        let capsules = self.home().capsules_dir();
        let unique = unique_suffix();
        let staging = capsules.join(format!(".install-{name}-{unique}"));
        let previous = capsules.join(format!(".previous-{name}-{unique}"));
        let swap = {
            let (dir, files, target) = (dir.clone(), files.clone(), target.clone());
            tokio::task::spawn_blocking(move || {
                // What was checked and accepted must be what lands: the staged copy is
                // compared with it (a folder changed meanwhile is refused).
                let staged = stage(&dir, &files, &staging)
                    .and_then(|()| same_as_checked(&dir, &staging, &contents));
                if let Err(e) = staged {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e);
                }
                Swap::swap_in(&dir, &staging, &target, &previous, |a, b| {
                    std::fs::rename(a, b)
                })
            })
            .await
            .map_err(|e| task_failed(from, &e))??
        };
        let recorded = self
            .note(
                action::CAPSULE_INSTALL,
                &format!("capsule://{name}"),
                serde_json::json!({
                    "from": from,
                    "files": files,
                    "left_out": left_out,
                    "signer": receipt.signer,
                    "requests": receipt.requests,
                    "accepted": change,
                }),
            )
            .await;
        let recorded_ok = recorded.is_ok();
        let outcome = match recorded {
            Ok(()) => self.load_and_keep(from, &receipt).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(capsule) => {
                swap.keep();
                Ok(Installed {
                    capsule,
                    receipt,
                    accepted: change,
                    files,
                    left_out,
                })
            }
            Err(e) => {
                // The copy installed before comes back, unloaded as it was; a recorded
                // install that did not happen says so.
                if recorded_ok {
                    let resource = format!("capsule://{name}");
                    self.record_failure(action::CAPSULE_INSTALL, &resource, &e)
                        .await;
                }
                let _ = self.registry().unload(&name).await;
                match swap.undo(&e, |a, b| std::fs::rename(a, b)) {
                    Some(stranded) => Err(stranded.into()),
                    None => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, text).unwrap();
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    fn fail_second(a: &Path, b: &Path) -> std::io::Result<()> {
        if a.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".install-"))
        {
            return Err(std::io::Error::other("injected: the second rename fails"));
        }
        std::fs::rename(a, b)
    }

    fn fail_all(_: &Path, _: &Path) -> std::io::Result<()> {
        Err(std::io::Error::other("injected: every rename fails"))
    }

    struct Home {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        staging: PathBuf,
        target: PathBuf,
        previous: PathBuf,
    }

    fn home() -> Home {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let h = Home {
            dir: root.join("src"),
            staging: root.join("capsules/.install-x-1"),
            target: root.join("capsules/x"),
            previous: root.join("capsules/.previous-x-1"),
            _tmp: tmp,
        };
        write(&h.target.join("Capsule.toml"), "old");
        write(&h.staging.join("Capsule.toml"), "new");
        h
    }

    #[test]
    fn a_failed_second_rename_puts_the_previous_copy_back() {
        let h = home();
        let err = Swap::swap_in(&h.dir, &h.staging, &h.target, &h.previous, fail_second);
        assert!(matches!(err, Err(InstallError::Io { .. })), "{err:?}");
        assert_eq!(read(&h.target.join("Capsule.toml")), "old");
        assert!(!h.previous.exists() && !h.staging.exists());
    }

    #[test]
    fn a_failure_after_the_swap_puts_the_previous_copy_back() {
        let h = home();
        let swap = Swap::swap_in(&h.dir, &h.staging, &h.target, &h.previous, |a, b| {
            std::fs::rename(a, b)
        })
        .unwrap();
        assert_eq!(read(&h.target.join("Capsule.toml")), "new");
        // What the kernel does when the audit record or the load fails.
        let stranded = swap.undo(&"injected: the audit record failed", |a, b| {
            std::fs::rename(a, b)
        });
        assert!(stranded.is_none());
        assert_eq!(read(&h.target.join("Capsule.toml")), "old");
        assert!(!h.previous.exists());
    }

    #[test]
    fn a_previous_copy_that_cannot_come_back_is_reported_with_where_it_is() {
        let h = home();
        let swap = Swap::swap_in(&h.dir, &h.staging, &h.target, &h.previous, |a, b| {
            std::fs::rename(a, b)
        })
        .unwrap();
        let stranded = swap.undo(&"injected: the load failed", fail_all);
        match stranded {
            Some(InstallError::Stranded { kept, .. }) => {
                assert_eq!(kept, h.previous);
                assert_eq!(read(&kept.join("Capsule.toml")), "old");
            }
            other => panic!("expected Stranded, got {other:?}"),
        }
    }

    #[test]
    fn a_success_drops_the_previous_copy() {
        let h = home();
        let swap = Swap::swap_in(&h.dir, &h.staging, &h.target, &h.previous, |a, b| {
            std::fs::rename(a, b)
        })
        .unwrap();
        swap.keep();
        assert_eq!(read(&h.target.join("Capsule.toml")), "new");
        assert!(!h.previous.exists());
    }

    #[test]
    fn only_what_the_capsule_is_made_of_is_staged() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write(&src.join("Capsule.toml"), "m");
        write(&src.join("x.wasm"), "w");
        write(&src.join("target/debug/huge"), "junk");
        std::os::unix::fs::symlink("/etc", src.join("node_modules")).unwrap();
        let files = vec![PathBuf::from("Capsule.toml"), PathBuf::from("x.wasm")];
        let out = tmp.path().join("staged");
        stage(&src, &files, &out).unwrap();
        let mut staged: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        staged.sort();
        assert_eq!(staged, ["Capsule.toml", "x.wasm"]);
        assert_eq!(
            left_out(&src, &files).unwrap(),
            [PathBuf::from("node_modules"), PathBuf::from("target")]
        );
    }

    #[test]
    fn a_staged_copy_that_differs_from_the_checked_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let manifest =
            "[package]\nname = \"x\"\nversion = \"1.0.0\"\n\n[component]\nwasm = \"x.wasm\"\n";
        let (src, staged) = (tmp.path().join("src"), tmp.path().join("staged"));
        for (dir, wasm) in [(&src, "checked"), (&staged, "swapped")] {
            write(&dir.join("Capsule.toml"), manifest);
            write(&dir.join("x.wasm"), wasm);
        }
        let checked = CapsuleContents::read_as_found(&src).unwrap();
        assert!(matches!(
            same_as_checked(&src, &staged, &checked),
            Err(InstallError::Changed { .. })
        ));
        write(&staged.join("x.wasm"), "checked");
        same_as_checked(&src, &staged, &checked).unwrap();
    }

    #[test]
    fn a_component_that_is_a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write(&src.join("Capsule.toml"), "m");
        std::os::unix::fs::symlink("/etc/hostname", src.join("x.wasm")).unwrap();
        let files = vec![PathBuf::from("Capsule.toml"), PathBuf::from("x.wasm")];
        let err = stage(&src, &files, &tmp.path().join("staged"));
        assert!(matches!(err, Err(InstallError::MissingComponent { .. })));
    }
}
