//! A writable upper layer over a read-only lower one.
//!
//! Lookup: the upper layer wins; the lower layer shows through at a path unless the path or
//! one of its ancestors carries a marker (a whiteout for a deletion, an opaque marker for a
//! path deleted and then recreated in the upper layer). Writes go to the upper layer, with
//! copy-up on first append to a lower file (streamed). Only `commit` writes the lower layer.
//! A commit or discard may take some paths only (a scope, see `scope`).

mod base;
mod commit;
mod scope;
mod state;

use std::collections::{BTreeMap, btree_map::Entry};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

pub use commit::{Change, ChangeKind};
use state::Marker;

use crate::error::VfsError;
use crate::host::{HostVfs, Staging, Sync};
use crate::path::VfsPath;
use crate::{DirEntry, EntryKind, Metadata, Vfs};

/// Where the upper layer's files are filled before they are renamed into place (inside the
/// work directory, so a leftover of a killed process is never part of the merged view).
const STAGING_DIR: &str = "staging";

/// An overlay VFS: `lower` read-only until `commit`, changes kept in `work/upper`.
#[derive(Debug, Clone)]
pub struct OverlayVfs {
    core: Arc<Mutex<Core>>,
    /// What the open finished that a killed process left half done.
    recovered: Arc<Recovered>,
}

/// What [`OverlayVfs::open`] finished that a killed process left half done.
#[derive(Debug, Default)]
struct Recovered {
    commit: Vec<Change>,
    /// The scope of the commit finished, if one was (even with nothing left to apply).
    commit_scope: Option<Vec<VfsPath>>,
    discard: Option<Vec<VfsPath>>,
}

#[derive(Debug)]
struct Core {
    lower: HostVfs,
    upper: HostVfs,
    work: HostVfs,
    staging: HostVfs,
    markers: BTreeMap<VfsPath, Marker>,
    /// What the lower layer held where the overlay changed it, when it first did.
    bases: BTreeMap<VfsPath, base::Base>,
    /// A commit or discard that failed past the point where it can only go forward: which,
    /// and why. Every call is refused until the overlay is opened again, which finishes it.
    unfinished: Option<(&'static str, String)>,
}

impl OverlayVfs {
    /// Opens an overlay of `lower` (an existing directory), keeping changes and state in
    /// `work` (created if missing; must not be inside `lower`). A commit or discard a
    /// killed process left half done is finished first.
    pub fn open(lower: &Path, work: &Path) -> Result<Self, VfsError> {
        std::fs::create_dir_all(work).map_err(|e| VfsError::from_io(&work.display(), e))?;
        let canonical =
            |p: &Path| std::fs::canonicalize(p).map_err(|e| VfsError::from_io(&p.display(), e));
        let (lower_abs, work_abs) = (canonical(lower)?, canonical(work)?);
        if work_abs.starts_with(&lower_abs) || lower_abs.starts_with(&work_abs) {
            return Err(VfsError::InvalidPath {
                path: work.display().to_string(),
                reason: "the overlay's work directory and its lower layer must not contain each other",
            });
        }
        let upper_dir = work.join("upper");
        let staging_dir = work.join(STAGING_DIR);
        // What a killed writer left half-filled was never renamed into the upper layer.
        match std::fs::remove_dir_all(&staging_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(VfsError::from_io(&staging_dir.display(), e)),
        }
        for dir in [&upper_dir, &staging_dir] {
            std::fs::create_dir_all(dir).map_err(|e| VfsError::from_io(&dir.display(), e))?;
        }
        let work = HostVfs::open(work)?;
        let markers = state::load(&work)?;
        let bases = base::load(&work)?;
        let mut core = Core {
            lower: HostVfs::open(lower)?,
            upper: HostVfs::open(&upper_dir)?,
            work,
            staging: HostVfs::open(&staging_dir)?,
            markers,
            bases,
            unfinished: None,
        };
        let (commit, commit_scope) = match core.finish_interrupted_commit()? {
            Some((commit, scope)) => (commit, Some(scope)),
            None => (Vec::new(), None),
        };
        let discard = core.finish_interrupted_discard()?;
        Ok(Self {
            core: Arc::new(Mutex::new(core)),
            recovered: Arc::new(Recovered {
                commit,
                commit_scope,
                discard,
            }),
        })
    }

    /// What [`open`](Self::open) applied to the lower layer to finish a commit a killed
    /// process left half done (empty when there was none), for its owner to record.
    pub fn recovered_commit(&self) -> &[Change] {
        &self.recovered.commit
    }

    /// The paths of a commit a killed process left half done that [`open`](Self::open)
    /// finished (empty: a whole commit), if it finished one, even with nothing left to apply
    /// to the workspace ([`recovered_commit`](Self::recovered_commit) is then empty).
    pub fn recovered_commit_scope(&self) -> Option<&[VfsPath]> {
        self.recovered.commit_scope.as_deref()
    }

    /// The paths of a discard a killed process left half done that [`open`](Self::open)
    /// finished (empty: a whole discard), if it finished one, for its owner to record.
    pub fn recovered_discard(&self) -> Option<&[VfsPath]> {
        self.recovered.discard.as_deref()
    }

    /// Runs `f` on the core on a blocking thread, holding the overlay's lock.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<T, VfsError> + Send + 'static,
    ) -> Result<T, VfsError> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = core.lock().map_err(|_| VfsError::State {
                path: "overlay".into(),
                reason: "lock poisoned by a panic".into(),
            })?;
            if let Some((what, cause)) = &guard.unfinished {
                return Err(guard.unfinished_error(what, cause.clone()));
            }
            f(&mut guard)
        })
        .await
        .map_err(|e| VfsError::Io {
            path: "overlay".into(),
            source: std::io::Error::other(e),
        })?
    }

    /// What differs between the merged view and the lower layer, sorted by path.
    pub async fn diff(&self) -> Result<Vec<Change>, VfsError> {
        self.with(|c| c.diff()).await
    }

    /// Applies every change to the lower layer (each file atomically), then empties the upper
    /// layer. If it fails, the merged view is unchanged and `commit` can be run again; if the
    /// process is killed during it, the next `open` finishes it. A change to a path whose
    /// lower file changed since the overlay first changed it (see
    /// [`conflicts`](Self::conflicts)) refuses the whole commit with
    /// [`VfsError::Conflicts`], changing nothing.
    pub async fn commit(&self) -> Result<Vec<Change>, VfsError> {
        self.with(|c| c.commit(true, &[])).await
    }

    /// [`commit`](Self::commit), overwriting what changed behind the overlay's back.
    pub async fn commit_overwriting(&self) -> Result<Vec<Change>, VfsError> {
        self.with(|c| c.commit(false, &[])).await
    }

    /// What a commit would apply now: the changes, the blake3 of each file it would write,
    /// and the conflicts; for a caller that records it before applying it
    /// ([`commit_plan`](Self::commit_plan)).
    pub async fn plan_commit(&self) -> Result<CommitPlan, VfsError> {
        self.with(|c| c.plan()).await
    }

    /// [`plan_commit`](Self::plan_commit) of the changes at or below the paths of `scope`
    /// (all, when it is empty or holds the root), with the directories above them the
    /// workspace lacks; the rest stays in the overlay. A path inside a directory capsules
    /// removed or replaced is refused ([`VfsError::ReplacedAbove`]), as is one with no
    /// change at or below it ([`VfsError::Unchanged`]).
    pub async fn plan_commit_of(&self, scope: Vec<VfsPath>) -> Result<CommitPlan, VfsError> {
        self.with(move |c| c.plan_commit(&scope::normalize(scope)))
            .await
    }

    /// What discarding the changes at or below the paths of `scope` (all, when it is empty
    /// or holds the root) would drop, as a plan for [`discard_plan`](Self::discard_plan);
    /// refused as [`plan_commit_of`](Self::plan_commit_of) refuses.
    pub async fn plan_discard_of(&self, scope: Vec<VfsPath>) -> Result<CommitPlan, VfsError> {
        self.with(move |c| c.plan_discard(&scope::normalize(scope)))
            .await
    }

    /// Commits what `plan` takes (all, or its scope), if it still describes the overlay
    /// exactly (else [`VfsError::ChangedSincePlan`], changing nothing): what was recorded is
    /// what is applied. Its conflicts refuse it unless `overwrite`.
    pub async fn commit_plan(
        &self,
        plan: CommitPlan,
        overwrite: bool,
    ) -> Result<Vec<Change>, VfsError> {
        self.with(move |c| {
            c.remove_commit_leftovers()?;
            if c.plan_commit(&plan.scope)? != plan {
                return Err(VfsError::ChangedSincePlan);
            }
            c.commit(!overwrite, &plan.scope)
        })
        .await
    }

    /// The changed paths whose lower layer is no longer what it was when the overlay first
    /// changed them (something else wrote the workspace since), sorted.
    pub async fn conflicts(&self) -> Result<Vec<VfsPath>, VfsError> {
        self.with(|c| Ok(c.plan()?.conflicts)).await
    }

    /// Drops every change. If the process is killed during it, the next `open` finishes it.
    pub async fn discard(&self) -> Result<(), VfsError> {
        self.with(|c| c.discard_scope(&[])).await
    }

    /// Drops the changes of `plan` (from [`plan_discard_of`](Self::plan_discard_of), or
    /// [`plan_commit`](Self::plan_commit) for all), if it still describes the overlay exactly
    /// (else [`VfsError::ChangedSincePlan`], dropping nothing): what was recorded is what
    /// goes.
    pub async fn discard_plan(&self, plan: CommitPlan) -> Result<(), VfsError> {
        self.with(move |c| {
            if c.plan_discard(&plan.scope)? != plan {
                return Err(VfsError::ChangedSincePlan);
            }
            c.discard_scope(&plan.scope)
        })
        .await
    }
}

/// One side of a changed file, for review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSide {
    /// Its size in bytes.
    pub len: u64,
    /// Its content, when it is at most the limit asked for.
    pub bytes: Option<Vec<u8>>,
}

impl OverlayVfs {
    /// The workspace's copy of `p` (the lower layer) and the merged view's, for review:
    /// each `None` where no regular file is there (a link is not followed), read whole only
    /// when at most `limit` bytes (counted on the open file: one that grows is not read past
    /// it), both under one lock.
    pub async fn sides(
        &self,
        p: &VfsPath,
        limit: u64,
    ) -> Result<(Option<FileSide>, Option<FileSide>), VfsError> {
        let p = p.clone();
        self.with(move |c| {
            let side = |layer: &HostVfs| -> Result<Option<FileSide>, VfsError> {
                if layer.lstat_kind(&p)? != Some(crate::host::LinkKind::File) {
                    return Ok(None);
                }
                let file = layer.open_read(&p)?;
                let io = |e| VfsError::from_io(&p, e);
                let len = file.metadata().map_err(io)?.len();
                let mut bytes = None;
                if len <= limit {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(file, limit.saturating_add(1)),
                        &mut buf,
                    )
                    .map_err(io)?;
                    bytes = (buf.len() as u64 <= limit).then_some(buf);
                }
                Ok(Some(FileSide { len, bytes }))
            };
            let before = side(&c.lower)?;
            let after = if c.upper.try_stat(&p)?.is_some() {
                side(&c.upper)?
            } else if c.lower_stat(&p)?.is_none() {
                None
            } else {
                before.clone()
            };
            Ok((before, after))
        })
        .await
    }
}

/// What committing the overlay would do, taken at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPlan {
    /// The changes, sorted by path.
    pub changes: Vec<Change>,
    /// The blake3 (hex) of each added or modified file's new content.
    pub hashes: BTreeMap<VfsPath, String>,
    /// The changed paths that changed in the lower layer too since the overlay first
    /// changed them.
    pub conflicts: Vec<VfsPath>,
    /// The paths it is limited to (the changes at or below each), sorted, none below
    /// another; empty: the whole overlay.
    pub scope: Vec<VfsPath>,
}

fn not_found(p: &VfsPath) -> VfsError {
    VfsError::NotFound(p.to_string())
}

impl Core {
    pub(super) fn plan(&self) -> Result<CommitPlan, VfsError> {
        self.plan_commit(&[])
    }

    /// The plan of a commit of `scope` (normalized).
    pub(super) fn plan_commit(&self, scope: &[VfsPath]) -> Result<CommitPlan, VfsError> {
        let all = self.diff()?;
        self.check_scope(&all, scope)?;
        self.plan_of(scope::commit_set(&all, scope), scope)
    }

    /// The plan of a discard of `scope` (normalized).
    pub(super) fn plan_discard(&self, scope: &[VfsPath]) -> Result<CommitPlan, VfsError> {
        let all = self.diff()?;
        self.check_scope(&all, scope)?;
        self.plan_of(scope::discard_set(&all, scope), scope)
    }

    fn plan_of(&self, changes: Vec<Change>, scope: &[VfsPath]) -> Result<CommitPlan, VfsError> {
        let mut hashes = BTreeMap::new();
        for c in &changes {
            if c.kind != ChangeKind::Deleted && c.entry == EntryKind::File {
                hashes.insert(c.path.clone(), base::file_hash(&self.upper, &c.path)?);
            }
        }
        let conflicts = self.conflicts_in(&changes, &hashes)?;
        Ok(CommitPlan {
            changes,
            hashes,
            conflicts,
            scope: scope.to_vec(),
        })
    }

    /// Marks a commit or discard that failed past the point where it can only go forward:
    /// every call is refused from now on, so nothing is written that the next open, which
    /// finishes it, would take along. The error to return.
    fn unfinished(&mut self, what: &'static str, cause: &dyn std::fmt::Display) -> VfsError {
        let cause = cause.to_string();
        self.unfinished = Some((what, cause.clone()));
        self.unfinished_error(what, cause)
    }

    fn unfinished_error(&self, what: &'static str, cause: String) -> VfsError {
        VfsError::Unfinished {
            work: self.work.root().display().to_string(),
            what,
            cause,
        }
    }

    fn persist(&self) -> Result<(), VfsError> {
        state::save(&self.work, &self.markers)
    }

    /// Whether the lower layer is hidden at `p`.
    fn lower_hidden(&self, p: &VfsPath) -> bool {
        p.ancestors_and_self()
            .any(|a| self.markers.contains_key(&a))
    }

    /// The lower layer's `p`, unless the merged view hides it: a marker at or above it, or
    /// something other than a directory above it in the upper layer (the workspace can gain
    /// `c/d` behind the overlay's back after a capsule wrote a file `c`).
    fn lower_stat(&self, p: &VfsPath) -> Result<Option<Metadata>, VfsError> {
        if self.lower_hidden(p) {
            return Ok(None);
        }
        let Some(found) = self.lower.try_stat(p)? else {
            return Ok(None);
        };
        let mut above = p.parent();
        while let Some(a) = above.filter(|a| !a.is_root()) {
            match self.upper.lstat_kind(&a)? {
                Some(crate::host::LinkKind::Dir) => break,
                Some(_) => return Ok(None),
                None => above = a.parent(),
            }
        }
        Ok(Some(found))
    }

    fn stat(&self, p: &VfsPath) -> Result<Option<Metadata>, VfsError> {
        match self.upper.try_stat(p)? {
            Some(m) => Ok(Some(m)),
            None => self.lower_stat(p),
        }
    }

    fn kind(&self, p: &VfsPath) -> Result<Option<EntryKind>, VfsError> {
        Ok(self.stat(p)?.map(|m| m.kind))
    }

    /// The parent of `p` must be a directory in the merged view.
    fn require_parent_dir(&self, p: &VfsPath) -> Result<VfsPath, VfsError> {
        let parent = p
            .parent()
            .ok_or_else(|| VfsError::IsADirectory(String::new()))?;
        match self.kind(&parent)? {
            Some(EntryKind::Dir) => Ok(parent),
            Some(_) => Err(VfsError::NotADirectory(parent.to_string())),
            None => Err(not_found(&parent)),
        }
    }

    /// Makes sure the upper layer has directory `d` (a directory of the merged view), and
    /// that nothing at or above `target` is a visible symlink of the lower layer: copying a
    /// link's target up would turn the link into a directory at commit.
    fn upper_dir(&self, d: &VfsPath, target: &VfsPath) -> Result<(), VfsError> {
        for a in target.ancestors_and_self().skip(1) {
            if self.upper.try_stat(&a)?.is_none()
                && !self.lower_hidden(&a)
                && self.lower.is_symlink(&a)?
            {
                return Err(VfsError::Symlink(a.to_string()));
            }
        }
        for a in d.ancestors_and_self().skip(1) {
            if self.upper.try_stat(&a)?.is_none() {
                self.upper.create_dir_sync(&a)?;
            }
        }
        Ok(())
    }

    /// Records that `p` now exists in the upper layer: a whiteout there becomes opaque.
    fn created(&mut self, p: &VfsPath) -> Result<(), VfsError> {
        if let Some(m) = self.markers.get_mut(p)
            && *m == Marker::Whiteout
        {
            *m = Marker::Opaque;
            self.persist()?;
        }
        Ok(())
    }

    /// Records that `p` (and everything below) is gone from the merged view.
    fn deleted(&mut self, p: &VfsPath, lower_was_visible: bool) -> Result<(), VfsError> {
        let below: Vec<VfsPath> = self
            .markers
            .range(p.clone()..)
            .map(|(k, _)| k.clone())
            .take_while(|k| k.starts_with(p))
            .collect();
        let mut changed = false;
        for k in below.into_iter().filter(|k| k != p) {
            self.markers.remove(&k);
            changed = true;
        }
        let needs_whiteout = lower_was_visible || self.markers.contains_key(p);
        if needs_whiteout {
            changed |= self.markers.insert(p.clone(), Marker::Whiteout) != Some(Marker::Whiteout);
        }
        if changed { self.persist() } else { Ok(()) }
    }

    fn read(&self, p: &VfsPath) -> Result<Vec<u8>, VfsError> {
        if self.upper.try_stat(p)?.is_some() {
            return self.upper.read_sync(p);
        }
        if self.lower_stat(p)?.is_some() {
            return self.lower.read_sync(p);
        }
        Err(not_found(p))
    }

    fn write(&mut self, p: &VfsPath, data: &[u8]) -> Result<(), VfsError> {
        let parent = self.require_parent_dir(p)?;
        if self.kind(p)? == Some(EntryKind::Dir) {
            return Err(VfsError::IsADirectory(p.to_string()));
        }
        self.upper_dir(&parent, p)?;
        self.remember(p)?;
        self.upper
            .replace_with(p, Staging::In(&self.staging), Sync::Process, |f| {
                std::io::Write::write_all(f, data)
            })?;
        self.created(p)
    }

    fn append(&mut self, p: &VfsPath, data: &[u8]) -> Result<(), VfsError> {
        match (self.upper.try_stat(p)?, self.lower_stat(p)?) {
            (Some(m), _) | (None, Some(m)) if m.kind == EntryKind::Dir => {
                Err(VfsError::IsADirectory(p.to_string()))
            }
            (Some(_), _) => {
                self.remember(p)?;
                self.upper.append_sync(p, data)
            }
            (None, Some(_)) => {
                let parent = self.require_parent_dir(p)?;
                self.upper_dir(&parent, p)?;
                self.remember(p)?;
                self.upper
                    .copy_in_atomic(&self.lower, p, p, Staging::In(&self.staging))?;
                self.upper.append_sync(p, data)
            }
            (None, None) => self.write(p, data),
        }
    }

    fn create_dir(&mut self, p: &VfsPath) -> Result<(), VfsError> {
        let parent = self.require_parent_dir(p)?;
        if self.stat(p)?.is_some() {
            return Err(VfsError::AlreadyExists(p.to_string()));
        }
        self.upper_dir(&parent, p)?;
        self.remember(p)?;
        self.upper.create_dir_sync(p)?;
        self.created(p)
    }

    fn create_dir_all(&mut self, p: &VfsPath) -> Result<(), VfsError> {
        for a in p.ancestors_and_self().skip(1) {
            match self.kind(&a)? {
                Some(EntryKind::Dir) => {}
                Some(_) => return Err(VfsError::NotADirectory(a.to_string())),
                None => self.create_dir(&a)?,
            }
        }
        Ok(())
    }

    fn read_dir(&self, p: &VfsPath) -> Result<Vec<DirEntry>, VfsError> {
        match self.kind(p)? {
            Some(EntryKind::Dir) => {}
            Some(_) => return Err(VfsError::NotADirectory(p.to_string())),
            None => return Err(not_found(p)),
        }
        let mut names: BTreeMap<String, EntryKind> = BTreeMap::new();
        if self.upper.try_stat(p)?.is_some() {
            for e in self.upper.read_dir_sync(p)? {
                names.insert(e.name, e.kind);
            }
        }
        if self
            .lower_stat(p)?
            .is_some_and(|m| m.kind == EntryKind::Dir)
        {
            for e in self.lower.read_dir_sync(p)? {
                let child = p.join(&e.name)?;
                if !self.lower_hidden(&child)
                    && let Entry::Vacant(v) = names.entry(e.name)
                {
                    v.insert(e.kind);
                }
            }
        }
        Ok(names
            .into_iter()
            .map(|(name, kind)| DirEntry { name, kind })
            .collect())
    }

    fn remove_file(&mut self, p: &VfsPath) -> Result<(), VfsError> {
        match self.kind(p)? {
            None => return Err(not_found(p)),
            Some(EntryKind::Dir) => return Err(VfsError::IsADirectory(p.to_string())),
            Some(_) => {}
        }
        let lower_visible = self.lower_stat(p)?.is_some();
        let in_upper = self.upper.try_stat(p)?.is_some();
        self.remember(p)?;
        // Whiteout first: a crash after it cannot bring the lower version back.
        self.deleted(p, lower_visible)?;
        if in_upper {
            self.upper.remove_file_sync(p)?;
        }
        Ok(())
    }

    fn remove_dir(&mut self, p: &VfsPath, recursive: bool) -> Result<(), VfsError> {
        if p.is_root() {
            return Err(VfsError::InvalidPath {
                path: String::new(),
                reason: "the root cannot be removed",
            });
        }
        match self.kind(p)? {
            None => return Err(not_found(p)),
            Some(EntryKind::Dir) => {}
            Some(_) => return Err(VfsError::NotADirectory(p.to_string())),
        }
        if !recursive && !self.read_dir(p)?.is_empty() {
            return Err(VfsError::NotEmpty(p.to_string()));
        }
        let lower_visible = self.lower_stat(p)?.is_some();
        let in_upper = self.upper.try_stat(p)?.is_some();
        if lower_visible {
            self.remember_tree(p)?;
        } else {
            self.remember(p)?;
        }
        self.deleted(p, lower_visible)?;
        if in_upper {
            self.upper.remove_dir_all_sync(p)?;
        }
        Ok(())
    }

    fn rename(&mut self, from: &VfsPath, to: &VfsPath) -> Result<(), VfsError> {
        let kind = self.kind(from)?.ok_or_else(|| not_found(from))?;
        if from == to {
            return Ok(());
        }
        if from.is_root() || to.starts_with(from) {
            return Err(VfsError::InvalidPath {
                path: to.to_string(),
                reason: "cannot move a directory into itself",
            });
        }
        self.require_parent_dir(to)?;
        match (kind, self.kind(to)?) {
            (_, Some(EntryKind::Dir)) => return Err(VfsError::AlreadyExists(to.to_string())),
            (EntryKind::Dir, Some(_)) => return Err(VfsError::NotADirectory(to.to_string())),
            _ => {}
        }
        self.copy_tree(from, to, kind)?;
        if kind == EntryKind::Dir {
            self.remove_dir(from, true)
        } else {
            self.remove_file(from)
        }
    }

    /// Copies the merged subtree at `from` to `to` in the upper layer.
    fn copy_tree(&mut self, from: &VfsPath, to: &VfsPath, kind: EntryKind) -> Result<(), VfsError> {
        if kind == EntryKind::Dir {
            self.create_dir(to)?;
            for e in self.read_dir(from)? {
                self.copy_tree(&from.join(&e.name)?, &to.join(&e.name)?, e.kind)?;
            }
            return Ok(());
        }
        let parent = self.require_parent_dir(to)?;
        self.upper_dir(&parent, to)?;
        self.remember(to)?;
        let source = if self.upper.try_stat(from)?.is_some() {
            &self.upper
        } else {
            &self.lower
        };
        self.upper
            .copy_in_atomic(source, from, to, Staging::In(&self.staging))?;
        self.created(to)
    }
}

#[async_trait]
impl Vfs for OverlayVfs {
    async fn read(&self, path: &VfsPath) -> Result<Vec<u8>, VfsError> {
        let p = path.clone();
        self.with(move |c| c.read(&p)).await
    }
    async fn write(&self, path: &VfsPath, data: Vec<u8>) -> Result<(), VfsError> {
        let (p, d) = (path.clone(), data);
        self.with(move |c| c.write(&p, &d)).await
    }
    async fn append(&self, path: &VfsPath, data: Vec<u8>) -> Result<(), VfsError> {
        let (p, d) = (path.clone(), data);
        self.with(move |c| c.append(&p, &d)).await
    }
    async fn create_dir(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.with(move |c| c.create_dir(&p)).await
    }
    async fn create_dir_all(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.with(move |c| c.create_dir_all(&p)).await
    }
    async fn read_dir(&self, path: &VfsPath) -> Result<Vec<DirEntry>, VfsError> {
        let p = path.clone();
        self.with(move |c| c.read_dir(&p)).await
    }
    async fn stat(&self, path: &VfsPath) -> Result<Metadata, VfsError> {
        let p = path.clone();
        self.with(move |c| c.stat(&p)?.ok_or_else(|| not_found(&p)))
            .await
    }
    async fn remove_file(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.with(move |c| c.remove_file(&p)).await
    }
    async fn remove_dir(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.with(move |c| c.remove_dir(&p, false)).await
    }
    async fn remove_dir_all(&self, path: &VfsPath) -> Result<(), VfsError> {
        let p = path.clone();
        self.with(move |c| c.remove_dir(&p, true)).await
    }
    async fn rename(&self, from: &VfsPath, to: &VfsPath) -> Result<(), VfsError> {
        let (f, t) = (from.clone(), to.clone());
        self.with(move |c| c.rename(&f, &t)).await
    }
    async fn exists(&self, path: &VfsPath) -> Result<bool, VfsError> {
        let p = path.clone();
        self.with(move |c| Ok(c.stat(&p)?.is_some())).await
    }
}
