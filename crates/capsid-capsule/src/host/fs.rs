//! `capsid:host/fs`: the workspace through the runtime's [`Vfs`](capsid_vfs::Vfs), every path
//! checked against `fs://workspace/<path>` first. The check parses the path strictly (no
//! `..`, `.`, empty parts, NUL, control characters, `%` or `\`), so a malformed path is a
//! denial too, and a path the capsule may not touch is `denied` whether or not it exists.

use capsid_capabilities::Permissions;
use capsid_core::limits::{MAX_FS_DIR_ENTRIES, MAX_FS_FILE_BYTES, MAX_FS_PATH_BYTES};
use capsid_vfs::{EntryKind, VfsError, VfsPath};

use crate::bindings::WitError;
use crate::bindings::capsid::host::fs::EntryKind as WitKind;
use crate::bindings::capsid::host::fs::{DirEntry, Host, Metadata};

use super::{CapsuleContext, HostState};

fn resource(path: &str) -> String {
    if path.is_empty() {
        "fs://workspace".to_owned()
    } else {
        format!("fs://workspace/{path}")
    }
}

fn kind(k: EntryKind) -> WitKind {
    match k {
        EntryKind::File => WitKind::File,
        EntryKind::Dir => WitKind::Dir,
        EntryKind::Symlink => WitKind::Symlink,
    }
}

fn too_big(len: u64) -> WitError {
    WitError::Invalid(format!(
        "{len} bytes is over the limit of {MAX_FS_FILE_BYTES} per call"
    ))
}

impl CapsuleContext {
    /// Authorizes `op` on `path` and returns it as a VFS path.
    async fn fs_path(
        &self,
        op: &str,
        permission: Permissions,
        path: &str,
    ) -> Result<VfsPath, WitError> {
        self.fs_path_writing(op, permission, path, None).await
    }

    /// [`fs_path`](Self::fs_path) for a call that writes `carries` to the file.
    async fn fs_path_writing(
        &self,
        op: &str,
        permission: Permissions,
        path: &str,
        carries: Option<&[&[u8]]>,
    ) -> Result<VfsPath, WitError> {
        if path.len() > MAX_FS_PATH_BYTES {
            return Err(WitError::Invalid(format!(
                "a path of {} bytes is over the limit of {MAX_FS_PATH_BYTES}",
                path.len()
            )));
        }
        let effectful = permission != Permissions::READ;
        self.authorize_writing(op, permission, &resource(path), effectful, carries)
            .await?;
        if path.is_empty() {
            return Ok(VfsPath::root());
        }
        VfsPath::parse(path).map_err(|e| WitError::Invalid(e.to_string()))
    }

    /// Checks `WRITE` on every path under `dir` (and, for a move, where each would land under
    /// `to`), so a recursive removal or a directory move never touches what the grant does
    /// not match. Denials are audited; bounded by `MAX_FS_DIR_ENTRIES`.
    async fn authorize_tree(
        &self,
        op: &str,
        dir: &VfsPath,
        to: Option<&VfsPath>,
    ) -> Result<(), WitError> {
        let vfs = &self.services.vfs;
        let (mut stack, mut seen) = (vec![dir.clone()], 0usize);
        while let Some(d) = stack.pop() {
            let entries = match vfs.read_dir(&d).await {
                Ok(entries) => entries,
                Err(VfsError::NotADirectory(_)) => continue,
                Err(e) => return Err(self.fs_error(op, &d.to_string(), e).await),
            };
            for entry in entries {
                seen += 1;
                if seen > MAX_FS_DIR_ENTRIES {
                    return Err(WitError::Invalid(format!(
                        "more than {MAX_FS_DIR_ENTRIES} entries under {dir}"
                    )));
                }
                let path = d
                    .join(&entry.name)
                    .map_err(|e| WitError::Invalid(e.to_string()))?;
                self.authorize(op, Permissions::WRITE, &resource(&path.to_string()), false)
                    .await?;
                if let Some(to) = to {
                    let rel = &path.segments()[dir.segments().len()..];
                    let landing = format!("{to}/{}", rel.join("/"));
                    self.authorize(op, Permissions::WRITE, &resource(&landing), false)
                        .await?;
                }
                if entry.kind == EntryKind::Dir {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// The guest's view of a VFS error. A symlink or escape is a denial (and audited as
    /// one); host I/O failures are `internal` with the details kept in the host log.
    async fn fs_error(&self, op: &str, path: &str, e: VfsError) -> WitError {
        match e {
            VfsError::NotFound(_) => WitError::NotFound,
            VfsError::Escape(_) | VfsError::Symlink(_) => {
                self.record_refusal(op, &resource(path), &e.to_string())
                    .await;
                WitError::Denied
            }
            VfsError::InvalidPath { .. }
            | VfsError::AlreadyExists(_)
            | VfsError::IsADirectory(_)
            | VfsError::NotADirectory(_)
            | VfsError::NotEmpty(_) => WitError::Invalid(e.to_string()),
            // Only a commit or discard gives this, never a capsule's own call.
            VfsError::Unaddressable(_)
            | VfsError::ReplacedAbove { .. }
            | VfsError::Unchanged(_)
            | VfsError::Conflicts(_)
            | VfsError::ChangedSincePlan
            | VfsError::State { .. }
            | VfsError::InterruptedCommit { .. }
            | VfsError::Unfinished { .. }
            | VfsError::Io { .. } => {
                tracing::error!(capsule = %self.name, op, error = %e, "capsule fs call failed");
                WitError::Internal("filesystem error".into())
            }
        }
    }
}

impl Host for HostState {
    async fn read(&mut self, path: String) -> Result<Vec<u8>, WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path(capsid_audit::action::FS_READ, Permissions::READ, &path)
            .await?;
        let vfs = &cx.services.vfs;
        let meta = match vfs.stat(&p).await {
            Ok(m) => m,
            Err(e) => return Err(cx.fs_error(capsid_audit::action::FS_READ, &path, e).await),
        };
        if meta.len > MAX_FS_FILE_BYTES {
            return Err(too_big(meta.len));
        }
        match vfs.read(&p).await {
            Ok(bytes) if bytes.len() as u64 > MAX_FS_FILE_BYTES => Err(too_big(bytes.len() as u64)),
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(cx.fs_error(capsid_audit::action::FS_READ, &path, e).await),
        }
    }

    async fn write(&mut self, path: String, data: Vec<u8>) -> Result<(), WitError> {
        if data.len() as u64 > MAX_FS_FILE_BYTES {
            return Err(too_big(data.len() as u64));
        }
        let cx = &self.cx;
        let p = cx
            .fs_path_writing(
                capsid_audit::action::FS_WRITE,
                Permissions::WRITE,
                &path,
                Some(&[&data]),
            )
            .await?;
        match cx.services.vfs.write(&p, data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error(capsid_audit::action::FS_WRITE, &path, e).await),
        }
    }

    async fn append(&mut self, path: String, data: Vec<u8>) -> Result<(), WitError> {
        if data.len() as u64 > MAX_FS_FILE_BYTES {
            return Err(too_big(data.len() as u64));
        }
        let cx = &self.cx;
        let p = cx
            .fs_path_writing(
                capsid_audit::action::FS_APPEND,
                Permissions::WRITE,
                &path,
                Some(&[&data]),
            )
            .await?;
        match cx.services.vfs.append(&p, data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error(capsid_audit::action::FS_APPEND, &path, e).await),
        }
    }

    async fn read_dir(&mut self, path: String) -> Result<Vec<DirEntry>, WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path(capsid_audit::action::FS_READ_DIR, Permissions::READ, &path)
            .await?;
        let entries = match cx.services.vfs.read_dir(&p).await {
            Ok(entries) => entries,
            Err(e) => {
                return Err(cx
                    .fs_error(capsid_audit::action::FS_READ_DIR, &path, e)
                    .await);
            }
        };
        if entries.len() > MAX_FS_DIR_ENTRIES {
            return Err(WitError::Invalid(format!(
                "{} entries is over the limit of {MAX_FS_DIR_ENTRIES}",
                entries.len()
            )));
        }
        Ok(entries
            .into_iter()
            .map(|e| DirEntry {
                name: e.name,
                kind: kind(e.kind),
            })
            .collect())
    }

    async fn stat(&mut self, path: String) -> Result<Metadata, WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path(capsid_audit::action::FS_STAT, Permissions::READ, &path)
            .await?;
        match cx.services.vfs.stat(&p).await {
            Ok(m) => Ok(Metadata {
                kind: kind(m.kind),
                len: m.len,
            }),
            Err(e) => Err(cx.fs_error(capsid_audit::action::FS_STAT, &path, e).await),
        }
    }

    async fn create_dir(&mut self, path: String) -> Result<(), WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path(
                capsid_audit::action::FS_CREATE_DIR,
                Permissions::WRITE,
                &path,
            )
            .await?;
        // Missing parents are created too: each must be writable under the grant.
        for ancestor in p.ancestors_and_self().filter(|a| !a.is_root() && *a != p) {
            if !cx.services.vfs.exists(&ancestor).await.unwrap_or(false) {
                let res = resource(&ancestor.to_string());
                cx.authorize(
                    capsid_audit::action::FS_CREATE_DIR,
                    Permissions::WRITE,
                    &res,
                    false,
                )
                .await?;
            }
        }
        match cx.services.vfs.create_dir_all(&p).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx
                .fs_error(capsid_audit::action::FS_CREATE_DIR, &path, e)
                .await),
        }
    }

    async fn remove_file(&mut self, path: String) -> Result<(), WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path(
                capsid_audit::action::FS_REMOVE_FILE,
                Permissions::WRITE,
                &path,
            )
            .await?;
        match cx.services.vfs.remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx
                .fs_error(capsid_audit::action::FS_REMOVE_FILE, &path, e)
                .await),
        }
    }

    async fn remove_dir(&mut self, path: String, recursive: bool) -> Result<(), WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path(
                capsid_audit::action::FS_REMOVE_DIR,
                Permissions::WRITE,
                &path,
            )
            .await?;
        if p.is_root() {
            return Err(WitError::Invalid(
                "the workspace root cannot be removed".into(),
            ));
        }
        let vfs = &cx.services.vfs;
        if recursive {
            cx.authorize_tree(capsid_audit::action::FS_REMOVE_DIR, &p, None)
                .await?;
        }
        let done = if recursive {
            vfs.remove_dir_all(&p).await
        } else {
            vfs.remove_dir(&p).await
        };
        match done {
            Ok(()) => Ok(()),
            Err(e) => Err(cx
                .fs_error(capsid_audit::action::FS_REMOVE_DIR, &path, e)
                .await),
        }
    }

    async fn rename(&mut self, from: String, to: String) -> Result<(), WitError> {
        let cx = &self.cx;
        let src = cx
            .fs_path(capsid_audit::action::FS_RENAME, Permissions::WRITE, &from)
            .await?;
        let dst = cx
            .fs_path(capsid_audit::action::FS_RENAME, Permissions::WRITE, &to)
            .await?;
        if src.is_root() || dst.is_root() {
            return Err(WitError::Invalid(
                "the workspace root cannot be moved".into(),
            ));
        }
        if matches!(cx.services.vfs.stat(&src).await, Ok(m) if m.kind == EntryKind::Dir) {
            cx.authorize_tree(capsid_audit::action::FS_RENAME, &src, Some(&dst))
                .await?;
        }
        match cx.services.vfs.rename(&src, &dst).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error(capsid_audit::action::FS_RENAME, &from, e).await),
        }
    }
}
