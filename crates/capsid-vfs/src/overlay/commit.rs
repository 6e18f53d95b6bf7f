//! Comparing the merged view with the lower layer, and applying or dropping the difference.

use std::collections::BTreeMap;
use std::io::Read;

use super::Core;
use super::state::WORK_TEMP_PREFIX;
use crate::EntryKind;
use crate::error::VfsError;
use crate::host::{HostVfs, Staging, Sync};
use crate::path::VfsPath;

/// The work directory's record of a commit under way: the name prefix of the temporary
/// files it fills in the lower layer, so the next open removes any a kill left behind, then
/// (a line each) the paths it is limited to, so the next open finishes exactly that commit.
const PENDING_FILE: &str = "commit-pending";

/// Name prefix of a commit's temporary files in the lower layer (then random hex and `-`).
const COMMIT_TEMP_PREFIX: &str = ".capsid-commit-";

/// A commit an open finished: what it applied, and the paths it was limited to.
pub(super) type FinishedCommit = (Vec<Change>, Vec<VfsPath>);

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// In the lower layer, gone from the merged view.
    Deleted,
    /// In the merged view, not in the lower layer (or there as another kind).
    Added,
    /// A file in both, with different content.
    Modified,
}

/// One difference between the merged view and the lower layer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The path.
    pub path: VfsPath,
    /// How it differs.
    pub kind: ChangeKind,
    /// What the path is in the layer that has it (the lower one for a deletion).
    pub entry: EntryKind,
}

/// Every path below `root` of a tree, with its kind, listed by `list`.
pub(super) fn walk(
    list: &dyn Fn(&VfsPath) -> Result<Vec<crate::DirEntry>, VfsError>,
    root: &VfsPath,
    out: &mut BTreeMap<VfsPath, EntryKind>,
) -> Result<(), VfsError> {
    for e in list(root)? {
        let p = root.join(&e.name)?;
        out.insert(p.clone(), e.kind);
        if e.kind == EntryKind::Dir {
            walk(list, &p, out)?;
        }
    }
    Ok(())
}

/// Whether two files have the same bytes, compared in chunks.
fn same_content(a: &HostVfs, b: &HostVfs, p: &VfsPath) -> Result<bool, VfsError> {
    const CHUNK: usize = 64 * 1024;
    let (mut fa, mut fb) = (a.open_read(p)?, b.open_read(p)?);
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| VfsError::from_io(p, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| VfsError::from_io(p, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Core {
    pub(super) fn diff(&self) -> Result<Vec<Change>, VfsError> {
        let mut merged = BTreeMap::new();
        walk(&|p| self.read_dir(p), &VfsPath::root(), &mut merged)?;
        let mut lower = BTreeMap::new();
        walk(
            &|p| self.lower.read_dir_sync(p),
            &VfsPath::root(),
            &mut lower,
        )?;
        let mut changes = Vec::new();
        for (p, &kind) in &lower {
            match merged.get(p) {
                Some(&k) if k == kind => {}
                _ => changes.push(Change {
                    path: p.clone(),
                    kind: ChangeKind::Deleted,
                    entry: kind,
                }),
            }
        }
        for (p, &kind) in &merged {
            match lower.get(p) {
                Some(&k) if k == kind => {
                    if kind == EntryKind::File
                        && self.upper.try_stat(p)?.is_some()
                        && !same_content(&self.upper, &self.lower, p)?
                    {
                        changes.push(Change {
                            path: p.clone(),
                            kind: ChangeKind::Modified,
                            entry: kind,
                        });
                    }
                }
                _ => changes.push(Change {
                    path: p.clone(),
                    kind: ChangeKind::Added,
                    entry: kind,
                }),
            }
        }
        changes.sort();
        Ok(changes)
    }

    /// Refuses, changing nothing, when `refuse_conflicts` and a change's lower path changed
    /// behind the overlay's back. Phase 1 applies every change to the lower layer while the
    /// upper layer and markers still shadow it, so the merged view never changes; phase 2 drops the markers in one
    /// atomic write, then empties the upper layer, whose content now equals the lower's.
    /// A commit that fails is abandoned (its record and temporary files removed), so nothing
    /// rolls it forward later with writes made since; the merged view is unchanged and
    /// `commit` can be run again.
    /// Of a `scope` (see [`super::scope`]), only the changes it takes are applied, and
    /// only what the overlay holds at or below it is dropped.
    pub(super) fn commit(
        &mut self,
        refuse_conflicts: bool,
        scope: &[VfsPath],
    ) -> Result<Vec<Change>, VfsError> {
        self.remove_commit_leftovers()?;
        if refuse_conflicts {
            let conflicts = self.plan_commit(scope)?.conflicts;
            if !conflicts.is_empty() {
                return Err(VfsError::Conflicts(
                    conflicts.iter().map(ToString::to_string).collect(),
                ));
            }
        } else if !scope.is_empty() {
            self.check_scope(&self.diff()?, scope)?;
        }
        let failed = match self.apply_changes(scope) {
            Ok(changes) => match self.settle_commit(scope) {
                Ok(()) => return Ok(changes),
                // The workspace holds it now: it can only go forward.
                Err(e) => return Err(self.unfinished("commit", &e)),
            },
            Err(e) => e,
        };
        // Abandon it. If even that fails, its record stays, and the next open finishes it:
        // no write may come before, or that open would apply it too.
        match self
            .remove_commit_leftovers()
            .and_then(|_| self.end_commit())
        {
            Ok(()) => Err(failed),
            Err(abandoning) => Err(self.unfinished(
                "commit",
                &format!("{failed}; then removing its record: {abandoning}"),
            )),
        }
    }

    /// Finishes a commit a killed process left half done (it was decided, and nothing could
    /// write after it: the merged view, so the diff, is what it was), so the lower layer is
    /// never left half-committed after an open. What it applied, if anything, and the
    /// paths it was limited to.
    pub(super) fn finish_interrupted_commit(&mut self) -> Result<Option<FinishedCommit>, VfsError> {
        let finished = match self.remove_commit_leftovers() {
            Ok(None) => return Ok(None),
            Ok(Some(scope)) => self
                .apply_changes(&scope)
                .and_then(|changes| self.settle_commit(&scope).map(|()| (changes, scope))),
            Err(e) => Err(e),
        };
        finished.map(Some).map_err(|e| VfsError::InterruptedCommit {
            work: self.work.root().display().to_string(),
            source: Box::new(e),
        })
    }

    /// Phase 1: records the commit, then applies its changes to the lower layer (the merged
    /// view does not change). What it applied.
    fn apply_changes(&mut self, scope: &[VfsPath]) -> Result<Vec<Change>, VfsError> {
        let changes = super::scope::commit_set(&self.diff()?, scope);
        for c in &changes {
            if c.kind == ChangeKind::Deleted
                && c.entry == EntryKind::Dir
                && self.lower.has_unlisted_entries(&c.path)?
            {
                return Err(VfsError::Unaddressable(c.path.to_string()));
            }
        }
        self.sync_upper(&changes)?;
        let prefix = self.begin_commit(scope)?;
        let mut deletions: Vec<&Change> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Deleted)
            .collect();
        deletions.sort_by_key(|c| std::cmp::Reverse(c.path.segments().len()));
        for c in deletions {
            match c.entry {
                EntryKind::Dir => self.lower.remove_dir_sync(&c.path)?,
                _ => self.lower.remove_file_sync(&c.path)?,
            }
            self.lower.sync_dir(&c.path.parent().unwrap_or_default())?;
        }
        let mut additions: Vec<&Change> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .collect();
        additions.sort_by_key(|c| c.path.segments().len());
        for c in additions {
            match c.entry {
                EntryKind::Dir => match self.lower.create_dir_sync(&c.path) {
                    Ok(()) | Err(VfsError::AlreadyExists(_)) => {
                        self.lower.sync_dir(&c.path.parent().unwrap_or_default())?;
                    }
                    Err(e) => return Err(e),
                },
                _ => self.lower.copy_in_atomic(
                    &self.upper,
                    &c.path,
                    &c.path,
                    Staging::Beside(&prefix),
                )?,
            }
        }
        Ok(changes)
    }

    /// Phase 2: drops the markers (and the bases, whose changes are now the lower layer's)
    /// and the upper copies, of a scope only what the overlay holds at or below it; then
    /// the record.
    fn settle_commit(&mut self, scope: &[VfsPath]) -> Result<(), VfsError> {
        if scope.is_empty() {
            self.discard()?;
        } else {
            self.settle(scope, true)?;
        }
        self.end_commit()
    }

    /// Makes the upper layer's files to be copied down durable (they are written for the
    /// process only), so a roll-forward after a machine crash copies what was written, never
    /// an empty file.
    fn sync_upper(&self, changes: &[Change]) -> Result<(), VfsError> {
        let mut dirs = std::collections::BTreeSet::new();
        for c in changes.iter().filter(|c| c.kind != ChangeKind::Deleted) {
            match c.entry {
                EntryKind::File => self.upper.sync_file(&c.path)?,
                EntryKind::Dir => {
                    dirs.insert(c.path.clone());
                }
                EntryKind::Symlink => {}
            }
            // Its parent and theirs, up to the root: where its name was written.
            let depth = c.path.segments().len();
            dirs.extend(c.path.ancestors_and_self().take(depth));
        }
        for dir in dirs.into_iter().rev() {
            self.upper.sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Records a commit of `scope` under way (replacing a record left by one interrupted);
    /// its temporary files' name prefix.
    fn begin_commit(&self, scope: &[VfsPath]) -> Result<String, VfsError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| VfsError::Io {
            path: PENDING_FILE.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let prefix = format!("{COMMIT_TEMP_PREFIX}{}-", hex::encode(nonce));
        let record = format!("{prefix}{}", super::scope::scope_lines(scope));
        self.work.replace_with(
            &pending_path()?,
            Staging::Beside(WORK_TEMP_PREFIX),
            Sync::Durable,
            |f| std::io::Write::write_all(f, record.as_bytes()),
        )?;
        Ok(prefix)
    }

    /// Removes the record of a commit, durably (a record that came back after a machine
    /// crash would roll later writes forward).
    fn end_commit(&self) -> Result<(), VfsError> {
        match self.work.remove_file_sync(&pending_path()?) {
            Ok(()) | Err(VfsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.work.sync_dir(&VfsPath::root())
    }

    /// Removes the temporary files an interrupted commit left in the lower layer, durably;
    /// the scope of the commit whose record is there, if one is (it stays until a commit
    /// ends; an empty scope is the whole overlay). They can only be beside a file still to
    /// commit (the merged view, and so the diff, is what it was when that commit began), and
    /// only files named with its prefix are removed.
    pub(super) fn remove_commit_leftovers(&self) -> Result<Option<Vec<VfsPath>>, VfsError> {
        let pending = pending_path()?;
        let record = match self.work.read_sync(&pending) {
            Ok(bytes) => bytes,
            Err(VfsError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let shown = || self.work.root().join(PENDING_FILE).display().to_string();
        let bad = |reason: &str| VfsError::State {
            path: shown(),
            reason: reason.into(),
        };
        let record = std::str::from_utf8(&record).map_err(|_| bad("not text"))?;
        let mut lines = record.split('\n');
        let prefix = lines
            .next()
            .filter(|p| is_commit_prefix(p))
            .ok_or_else(|| bad("not a commit's temporary-file prefix"))?;
        let scope = super::scope::parse_scope(lines, &shown)?;
        let parents: std::collections::BTreeSet<VfsPath> = self
            .diff()?
            .into_iter()
            .filter(|c| c.kind != ChangeKind::Deleted && c.entry == EntryKind::File)
            .map(|c| c.path.parent().unwrap_or_default())
            .collect();
        for parent in parents {
            if self.lower.remove_prefixed(&parent, prefix)? {
                self.lower.sync_dir(&parent)?;
            }
        }
        Ok(Some(scope))
    }

    pub(super) fn discard(&mut self) -> Result<(), VfsError> {
        self.markers.clear();
        self.persist()?;
        self.forget_bases()?;
        for e in self.upper.read_dir_sync(&VfsPath::root())? {
            let p = VfsPath::root().join(&e.name)?;
            match e.kind {
                EntryKind::Dir => self.upper.remove_dir_all_sync(&p)?,
                _ => self.upper.remove_file_sync(&p)?,
            }
        }
        Ok(())
    }
}

fn pending_path() -> Result<VfsPath, VfsError> {
    VfsPath::parse(PENDING_FILE)
}

/// Whether `p` is `.capsid-commit-<16 hex>-`, as [`Core::begin_commit`] makes them.
fn is_commit_prefix(p: &str) -> bool {
    p.strip_prefix(COMMIT_TEMP_PREFIX)
        .and_then(|rest| rest.strip_suffix('-'))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}
