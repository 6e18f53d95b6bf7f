//! capsid's virtual filesystem. Capsule `fs` calls go through a [`Vfs`]: [`HostVfs`] confines
//! them to one host directory; [`OverlayVfs`] puts a writable upper layer over a read-only
//! lower one (the workspace), so a capsule's changes can be reviewed ([`OverlayVfs::diff`]),
//! applied ([`OverlayVfs::commit`]) or dropped ([`OverlayVfs::discard`]).
//!
//! Invariants:
//! - a [`VfsPath`] is relative and clean: no `..`, `.`, empty segments, NUL or control
//!   characters; and every host access goes through cap-std, so a symlink (even one planted
//!   after the directory was opened) can never lead outside the root;
//! - the lower layer of an overlay is only written by `commit`, one file at a time, each by
//!   write-to-temporary, fsync, rename; an interrupted commit leaves the merged view unchanged;
//! - whiteouts and opaque markers are persisted atomically beside the upper layer.
#![deny(missing_docs)]

mod error;
mod host;
mod overlay;
mod path;

use async_trait::async_trait;

pub use error::VfsError;
pub use host::HostVfs;
pub use overlay::{Change, ChangeKind, CommitPlan, FileSide, OverlayVfs};
pub use path::VfsPath;

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only seen in listings of a host directory; never followed outside).
    Symlink,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
}

/// What `stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// What the path names.
    pub kind: EntryKind,
    /// Size in bytes (files).
    pub len: u64,
}

/// A filesystem confined to one tree.
#[async_trait]
pub trait Vfs: Send + Sync + std::fmt::Debug {
    /// The whole content of a file.
    async fn read(&self, path: &VfsPath) -> Result<Vec<u8>, VfsError>;
    /// Creates or replaces a file. Its parent directory must exist. Takes the bytes by value:
    /// the write happens on a blocking thread and must not copy them again.
    async fn write(&self, path: &VfsPath, data: Vec<u8>) -> Result<(), VfsError>;
    /// Appends to a file, creating it if missing. Its parent directory must exist.
    async fn append(&self, path: &VfsPath, data: Vec<u8>) -> Result<(), VfsError>;
    /// Creates a directory whose parent exists.
    async fn create_dir(&self, path: &VfsPath) -> Result<(), VfsError>;
    /// Creates a directory and any missing parents.
    async fn create_dir_all(&self, path: &VfsPath) -> Result<(), VfsError>;
    /// The entries of a directory, sorted by name.
    async fn read_dir(&self, path: &VfsPath) -> Result<Vec<DirEntry>, VfsError>;
    /// What a path names.
    async fn stat(&self, path: &VfsPath) -> Result<Metadata, VfsError>;
    /// Removes a file.
    async fn remove_file(&self, path: &VfsPath) -> Result<(), VfsError>;
    /// Removes an empty directory.
    async fn remove_dir(&self, path: &VfsPath) -> Result<(), VfsError>;
    /// Removes a directory and everything in it.
    async fn remove_dir_all(&self, path: &VfsPath) -> Result<(), VfsError>;
    /// Moves a file or directory; a file replaces an existing file at `to`.
    async fn rename(&self, from: &VfsPath, to: &VfsPath) -> Result<(), VfsError>;
    /// Whether the path names anything.
    async fn exists(&self, path: &VfsPath) -> Result<bool, VfsError>;
}
