//! A host directory, through cap-std: every path is resolved beneath the root by the kernel
//! (`openat2` with `RESOLVE_BENEATH`), so neither `..` nor a symlink can lead outside.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, OpenOptions};

use crate::error::VfsError;
use crate::path::VfsPath;
use crate::{DirEntry, EntryKind, Metadata, Vfs};

/// Where [`HostVfs::replace_with`] fills its temporary file before renaming it into place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Staging<'a> {
    /// Beside the target, named `<prefix><random>`: a leftover is found by its prefix.
    Beside(&'a str),
    /// At the root of another directory on the same filesystem, where a leftover is never
    /// seen (the overlay's work directory, for its upper layer).
    In(&'a HostVfs),
}

/// Whether [`HostVfs::replace_with`] fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// Survives a crash of the machine once it returns.
    Durable,
    /// Survives the death of the process only (the page cache holds it).
    Process,
}

/// A VFS over one host directory.
#[derive(Debug, Clone)]
pub struct HostVfs {
    dir: Arc<Dir>,
    root: PathBuf,
}

/// What a path is when a symbolic link is not followed ([`HostVfs::lstat_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

fn kind_of(ft: cap_std::fs::FileType) -> EntryKind {
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::File
    }
}

/// The root itself can be neither removed nor renamed.
pub(crate) fn refuse_root(p: &VfsPath) -> Result<(), VfsError> {
    if p.is_root() {
        return Err(VfsError::InvalidPath {
            path: String::new(),
            reason: "the root cannot be removed or moved",
        });
    }
    Ok(())
}

impl HostVfs {
    /// Opens `root` (which must exist) as the root of a VFS.
    pub fn open(root: &Path) -> Result<Self, VfsError> {
        let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority())
            .map_err(|e| VfsError::from_io(&root.display(), e))?;
        Ok(Self {
            dir: Arc::new(dir),
            root: root.to_owned(),
        })
    }

    /// The host directory this VFS is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, VfsError> + Send + 'static,
    ) -> Result<T, VfsError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| VfsError::Io {
                path: self.root.display().to_string(),
                source: io::Error::other(e),
            })?
    }

    pub(crate) fn read_sync(&self, p: &VfsPath) -> Result<Vec<u8>, VfsError> {
        self.dir
            .read(p.to_host())
            .map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn write_sync(&self, p: &VfsPath, data: &[u8]) -> Result<(), VfsError> {
        let mut o = OpenOptions::new();
        o.write(true)
            .create(true)
            .truncate(true)
            .follow(FollowSymlinks::No);
        let mut f = self
            .dir
            .open_with(p.to_host(), &o)
            .map_err(|e| VfsError::from_io(p, e))?;
        f.write_all(data).map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn append_sync(&self, p: &VfsPath, data: &[u8]) -> Result<(), VfsError> {
        let mut o = OpenOptions::new();
        o.append(true).create(true).follow(FollowSymlinks::No);
        let mut f = self
            .dir
            .open_with(p.to_host(), &o)
            .map_err(|e| VfsError::from_io(p, e))?;
        f.write_all(data).map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn create_dir_sync(&self, p: &VfsPath) -> Result<(), VfsError> {
        if p.is_root() {
            return Err(VfsError::AlreadyExists(String::new()));
        }
        self.dir
            .create_dir(p.to_host())
            .map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn create_dir_all_sync(&self, p: &VfsPath) -> Result<(), VfsError> {
        if p.is_root() {
            return Ok(());
        }
        self.dir
            .create_dir_all(p.to_host())
            .map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn read_dir_sync(&self, p: &VfsPath) -> Result<Vec<DirEntry>, VfsError> {
        let entries = if p.is_root() {
            self.dir.entries()
        } else {
            self.dir.read_dir(p.to_host())
        };
        let mut out = Vec::new();
        for e in entries.map_err(|e| VfsError::from_io(p, e))? {
            let e = e.map_err(|e| VfsError::from_io(p, e))?;
            let kind = kind_of(e.file_type().map_err(|e| VfsError::from_io(p, e))?);
            // A name that is not valid as a VFS segment (not UTF-8, control characters) cannot
            // be addressed through the VFS, so it is not listed either.
            if let Some(name) = e.file_name().to_str().filter(|n| p.join(n).is_ok()) {
                out.push(DirEntry {
                    name: name.to_owned(),
                    kind,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `p` itself is a symbolic link (not followed).
    pub(crate) fn is_symlink(&self, p: &VfsPath) -> Result<bool, VfsError> {
        if p.is_root() {
            return Ok(false);
        }
        match self.dir.symlink_metadata(p.to_host()) {
            Ok(m) => Ok(m.file_type().is_symlink()),
            Err(e) => match VfsError::from_io(p, e) {
                VfsError::NotFound(_) | VfsError::NotADirectory(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// What `p` itself is, not following a symbolic link (`None`: nothing there); a file
    /// only when it is a regular one.
    pub(crate) fn lstat_kind(&self, p: &VfsPath) -> Result<Option<LinkKind>, VfsError> {
        if p.is_root() {
            return Ok(Some(LinkKind::Dir));
        }
        match self.dir.symlink_metadata(p.to_host()) {
            Ok(m) => {
                let ft = m.file_type();
                Ok(Some(if ft.is_symlink() {
                    LinkKind::Symlink
                } else if ft.is_dir() {
                    LinkKind::Dir
                } else if ft.is_file() {
                    LinkKind::File
                } else {
                    LinkKind::Other
                }))
            }
            Err(e) => match VfsError::from_io(p, e) {
                VfsError::NotFound(_) | VfsError::NotADirectory(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Whether the directory holds entries a VFS path cannot name (not UTF-8, control
    /// characters), which listings leave out.
    pub(crate) fn has_unlisted_entries(&self, p: &VfsPath) -> Result<bool, VfsError> {
        let entries = if p.is_root() {
            self.dir.entries()
        } else {
            self.dir.read_dir(p.to_host())
        };
        for e in entries.map_err(|e| VfsError::from_io(p, e))? {
            let e = e.map_err(|e| VfsError::from_io(p, e))?;
            if e.file_name().to_str().is_none_or(|n| p.join(n).is_err()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) fn stat_sync(&self, p: &VfsPath) -> Result<Metadata, VfsError> {
        let m = if p.is_root() {
            self.dir.dir_metadata()
        } else {
            self.dir.metadata(p.to_host())
        };
        let m = m.map_err(|e| VfsError::from_io(p, e))?;
        Ok(Metadata {
            kind: kind_of(m.file_type()),
            len: m.len(),
        })
    }

    /// `stat`, but `None` for "nothing there" (including a missing parent).
    pub(crate) fn try_stat(&self, p: &VfsPath) -> Result<Option<Metadata>, VfsError> {
        match self.stat_sync(p) {
            Ok(m) => Ok(Some(m)),
            Err(VfsError::NotFound(_) | VfsError::NotADirectory(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn remove_file_sync(&self, p: &VfsPath) -> Result<(), VfsError> {
        refuse_root(p)?;
        self.dir
            .remove_file(p.to_host())
            .map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn remove_dir_sync(&self, p: &VfsPath) -> Result<(), VfsError> {
        refuse_root(p)?;
        self.dir
            .remove_dir(p.to_host())
            .map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn remove_dir_all_sync(&self, p: &VfsPath) -> Result<(), VfsError> {
        // cap-std would empty the root before failing to remove it.
        refuse_root(p)?;
        self.dir
            .remove_dir_all(p.to_host())
            .map_err(|e| VfsError::from_io(p, e))
    }

    pub(crate) fn rename_sync(&self, from: &VfsPath, to: &VfsPath) -> Result<(), VfsError> {
        refuse_root(from)?;
        refuse_root(to)?;
        self.dir
            .rename(from.to_host(), &self.dir, to.to_host())
            .map_err(|e| VfsError::from_io(from, e))
    }

    /// Streams `src`'s file at `from` into this VFS at `to`, atomically and durably (see
    /// [`replace_with`](Self::replace_with)). No whole-file buffer: any size works.
    pub(crate) fn copy_in_atomic(
        &self,
        src: &Self,
        from: &VfsPath,
        to: &VfsPath,
        staging: Staging<'_>,
    ) -> Result<(), VfsError> {
        let mut input = src
            .dir
            .open(from.to_host())
            .map_err(|e| VfsError::from_io(from, e))?;
        self.replace_with(to, staging, Sync::Durable, |out| {
            io::copy(&mut input, out).map(|_| ())
        })
    }

    /// Replaces `to` atomically: fills a temporary file where `staging` says, renames it over
    /// `to`, and with [`Sync::Durable`] fsyncs the file before and the directory after.
    /// Readers, and with [`Sync::Durable`] a reader after a machine crash, see the old or
    /// the new file, whole (with [`Sync::Process`] a machine crash may leave it empty).
    pub(crate) fn replace_with(
        &self,
        to: &VfsPath,
        staging: Staging<'_>,
        sync: Sync,
        fill: impl FnOnce(&mut cap_std::fs::File) -> io::Result<()>,
    ) -> Result<(), VfsError> {
        let parent = to.parent().unwrap_or_default();
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| VfsError::Io {
            path: to.to_string(),
            source: io::Error::other(e.to_string()),
        })?;
        let nonce = hex::encode(nonce);
        let (dir, tmp) = match staging {
            Staging::Beside(prefix) => (self, parent.join(&format!("{prefix}{nonce}"))?),
            Staging::In(other) => (other, VfsPath::parse(&nonce)?),
        };
        let mut o = OpenOptions::new();
        o.write(true).create_new(true).follow(FollowSymlinks::No);
        let result = (|| {
            let mut out = dir
                .dir
                .open_with(tmp.to_host(), &o)
                .map_err(|e| VfsError::from_io(to, e))?;
            fill(&mut out).map_err(|e| VfsError::from_io(to, e))?;
            if sync == Sync::Durable {
                out.sync_all().map_err(|e| VfsError::from_io(to, e))?;
            }
            refuse_root(to)?;
            dir.dir
                .rename(tmp.to_host(), &self.dir, to.to_host())
                .map_err(|e| VfsError::from_io(to, e))?;
            if sync == Sync::Durable {
                self.sync_dir(&parent)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = dir.dir.remove_file(tmp.to_host());
        }
        result
    }

    /// Removes the files directly in `dir` whose names start with `prefix` (what an
    /// interrupted [`replace_with`](Self::replace_with) left there); whether it removed any.
    /// A missing `dir` has none.
    pub(crate) fn remove_prefixed(&self, dir: &VfsPath, prefix: &str) -> Result<bool, VfsError> {
        let entries = match self.read_dir_sync(dir) {
            Ok(entries) => entries,
            Err(VfsError::NotFound(_) | VfsError::NotADirectory(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut removed = false;
        for e in entries {
            if e.kind == EntryKind::File && e.name.starts_with(prefix) {
                self.remove_file_sync(&dir.join(&e.name)?)?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Opens a file for streaming reads.
    pub(crate) fn open_read(&self, p: &VfsPath) -> Result<cap_std::fs::File, VfsError> {
        self.dir
            .open(p.to_host())
            .map_err(|e| VfsError::from_io(p, e))
    }

    /// Fsyncs a file.
    pub(crate) fn sync_file(&self, p: &VfsPath) -> Result<(), VfsError> {
        self.dir
            .open(p.to_host())
            .and_then(|f| f.sync_all())
            .map_err(|e| VfsError::from_io(p, e))
    }

    /// Fsyncs a directory (through a real descriptor: cap-std's own is `O_PATH`).
    pub(crate) fn sync_dir(&self, p: &VfsPath) -> Result<(), VfsError> {
        self.dir
            .open(p.to_host())
            .and_then(|d| d.sync_all())
            .map_err(|e| VfsError::from_io(p, e))
    }
}

#[async_trait]
impl Vfs for HostVfs {
    async fn read(&self, path: &VfsPath) -> Result<Vec<u8>, VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.read_sync(&p)).await
    }
    async fn write(&self, path: &VfsPath, data: Vec<u8>) -> Result<(), VfsError> {
        let (p, d) = (path.clone(), data);
        self.blocking(move |h| h.write_sync(&p, &d)).await
    }
    async fn append(&self, path: &VfsPath, data: Vec<u8>) -> Result<(), VfsError> {
        let (p, d) = (path.clone(), data);
        self.blocking(move |h| h.append_sync(&p, &d)).await
    }
    async fn create_dir(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.create_dir_sync(&p)).await
    }
    async fn create_dir_all(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.create_dir_all_sync(&p)).await
    }
    async fn read_dir(&self, path: &VfsPath) -> Result<Vec<DirEntry>, VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.read_dir_sync(&p)).await
    }
    async fn stat(&self, path: &VfsPath) -> Result<Metadata, VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.stat_sync(&p)).await
    }
    async fn remove_file(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.remove_file_sync(&p)).await
    }
    async fn remove_dir(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.remove_dir_sync(&p)).await
    }
    async fn remove_dir_all(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.remove_dir_all_sync(&p)).await
    }
    async fn rename(&self, from: &VfsPath, to: &VfsPath) -> Result<(), VfsError> {
        let (f, t) = (from.clone(), to.clone());
        self.blocking(move |h| h.rename_sync(&f, &t)).await
    }
    async fn exists(&self, path: &VfsPath) -> Result<bool, VfsError> {
        let p = path.clone();
        self.blocking(move |h| h.try_stat(&p).map(|m| m.is_some()))
            .await
    }
}
