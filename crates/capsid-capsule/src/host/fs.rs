//! `capsid:host/fs`: the workspace through the runtime's [`Vfs`](capsid_vfs::Vfs), every path
//! checked against `fs://workspace/<path>` first. The check parses the path strictly (no
//! `..`, `.`, empty parts, NUL, control characters, `%` or `\`), so a malformed path is a
//! denial too, and a path the capsule may not touch is `denied` whether or not it exists.

use capsid_capabilities::Permissions;
use capsid_core::limits::{MAX_FS_DIR_ENTRIES, MAX_FS_FILE_BYTES};
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
        let effectful = permission != Permissions::READ;
        self.authorize(op, permission, &resource(path), effectful)
            .await?;
        if path.is_empty() {
            return Ok(VfsPath::root());
        }
        VfsPath::parse(path).map_err(|e| WitError::Invalid(e.to_string()))
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
            VfsError::Unaddressable(_) | VfsError::State { .. } | VfsError::Io { .. } => {
                tracing::error!(capsule = %self.name, op, error = %e, "capsule fs call failed");
                WitError::Internal("filesystem error".into())
            }
        }
    }
}

impl Host for HostState {
    async fn read(&mut self, path: String) -> Result<Vec<u8>, WitError> {
        let cx = &self.cx;
        let p = cx.fs_path("fs.read", Permissions::READ, &path).await?;
        let vfs = &cx.services.vfs;
        let meta = match vfs.stat(&p).await {
            Ok(m) => m,
            Err(e) => return Err(cx.fs_error("fs.read", &path, e).await),
        };
        if meta.len > MAX_FS_FILE_BYTES {
            return Err(too_big(meta.len));
        }
        match vfs.read(&p).await {
            Ok(bytes) if bytes.len() as u64 > MAX_FS_FILE_BYTES => Err(too_big(bytes.len() as u64)),
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(cx.fs_error("fs.read", &path, e).await),
        }
    }

    async fn write(&mut self, path: String, data: Vec<u8>) -> Result<(), WitError> {
        if data.len() as u64 > MAX_FS_FILE_BYTES {
            return Err(too_big(data.len() as u64));
        }
        let cx = &self.cx;
        let p = cx.fs_path("fs.write", Permissions::WRITE, &path).await?;
        match cx.services.vfs.write(&p, data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error("fs.write", &path, e).await),
        }
    }

    async fn append(&mut self, path: String, data: Vec<u8>) -> Result<(), WitError> {
        if data.len() as u64 > MAX_FS_FILE_BYTES {
            return Err(too_big(data.len() as u64));
        }
        let cx = &self.cx;
        let p = cx.fs_path("fs.append", Permissions::WRITE, &path).await?;
        match cx.services.vfs.append(&p, data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error("fs.append", &path, e).await),
        }
    }

    async fn read_dir(&mut self, path: String) -> Result<Vec<DirEntry>, WitError> {
        let cx = &self.cx;
        let p = cx.fs_path("fs.read-dir", Permissions::READ, &path).await?;
        let entries = match cx.services.vfs.read_dir(&p).await {
            Ok(entries) => entries,
            Err(e) => return Err(cx.fs_error("fs.read-dir", &path, e).await),
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
        let p = cx.fs_path("fs.stat", Permissions::READ, &path).await?;
        match cx.services.vfs.stat(&p).await {
            Ok(m) => Ok(Metadata {
                kind: kind(m.kind),
                len: m.len,
            }),
            Err(e) => Err(cx.fs_error("fs.stat", &path, e).await),
        }
    }

    async fn create_dir(&mut self, path: String) -> Result<(), WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path("fs.create-dir", Permissions::WRITE, &path)
            .await?;
        match cx.services.vfs.create_dir_all(&p).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error("fs.create-dir", &path, e).await),
        }
    }

    async fn remove_file(&mut self, path: String) -> Result<(), WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path("fs.remove-file", Permissions::WRITE, &path)
            .await?;
        match cx.services.vfs.remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error("fs.remove-file", &path, e).await),
        }
    }

    async fn remove_dir(&mut self, path: String, recursive: bool) -> Result<(), WitError> {
        let cx = &self.cx;
        let p = cx
            .fs_path("fs.remove-dir", Permissions::WRITE, &path)
            .await?;
        if p.is_root() {
            return Err(WitError::Invalid(
                "the workspace root cannot be removed".into(),
            ));
        }
        let vfs = &cx.services.vfs;
        let done = if recursive {
            vfs.remove_dir_all(&p).await
        } else {
            vfs.remove_dir(&p).await
        };
        match done {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error("fs.remove-dir", &path, e).await),
        }
    }

    async fn rename(&mut self, from: String, to: String) -> Result<(), WitError> {
        let cx = &self.cx;
        let src = cx.fs_path("fs.rename", Permissions::WRITE, &from).await?;
        let dst = cx.fs_path("fs.rename", Permissions::WRITE, &to).await?;
        if src.is_root() || dst.is_root() {
            return Err(WitError::Invalid(
                "the workspace root cannot be moved".into(),
            ));
        }
        match cx.services.vfs.rename(&src, &dst).await {
            Ok(()) => Ok(()),
            Err(e) => Err(cx.fs_error("fs.rename", &from, e).await),
        }
    }
}
