//! Committing or discarding some paths only: which changes a scope takes along, and how the
//! overlay forgets what it no longer holds for them.
//!
//! A commit of a scope applies the changes at or below its paths, and those it cannot do
//! without: a directory it must create first (an added ancestor), or a directory removal it
//! belongs to (a deleted ancestor takes its whole subtree). A discard of a scope restores
//! the workspace's copy at each changed path at or below it; one whose enclosing directory
//! capsules removed is refused (discard that directory instead).

use std::collections::BTreeSet;

use super::commit::{Change, ChangeKind};
use super::{Core, Marker};
use crate::EntryKind;
use crate::error::VfsError;
use crate::path::VfsPath;

fn under(p: &VfsPath, scope: &[VfsPath]) -> bool {
    scope.iter().any(|s| p.starts_with(s))
}

/// The changes a commit of `scope` applies (all of them, for an empty scope), sorted.
pub(super) fn commit_scope(changes: &[Change], scope: &[VfsPath]) -> Vec<Change> {
    if scope.is_empty() {
        return changes.to_vec();
    }
    // A deleted directory above a scope path goes whole: its removal needs its subtree's.
    let mut wide: Vec<VfsPath> = scope.to_vec();
    for s in scope {
        for a in s.ancestors_and_self() {
            if changes
                .iter()
                .any(|c| c.path == a && c.kind == ChangeKind::Deleted && c.entry == EntryKind::Dir)
            {
                wide.push(a);
                break;
            }
        }
    }
    let selected: Vec<&Change> = changes.iter().filter(|c| under(&c.path, &wide)).collect();
    let ancestors: BTreeSet<VfsPath> = selected
        .iter()
        .flat_map(|c| c.path.ancestors_and_self().collect::<Vec<_>>())
        .collect();
    let mut out: Vec<Change> = changes
        .iter()
        .filter(|c| under(&c.path, &wide) || ancestors.contains(&c.path))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The changes a discard of `scope` undoes, sorted; refused when one needs a directory
/// above it that capsules removed and the scope leaves removed.
pub(super) fn discard_scope(
    changes: &[Change],
    scope: &[VfsPath],
) -> Result<Vec<Change>, VfsError> {
    let selected: Vec<Change> = changes
        .iter()
        .filter(|c| scope.is_empty() || under(&c.path, scope))
        .cloned()
        .collect();
    for c in &selected {
        if c.kind == ChangeKind::Added {
            continue;
        }
        let blocked = c.path.ancestors_and_self().find(|a| {
            *a != c.path
                && changes
                    .iter()
                    .any(|d| d.path == *a && d.kind == ChangeKind::Deleted && !selected.contains(d))
        });
        if let Some(dir) = blocked {
            return Err(VfsError::RemovedAbove {
                path: c.path.to_string(),
                dir: dir.to_string(),
            });
        }
    }
    Ok(selected)
}

impl Core {
    /// After a commit of some paths only (`applied`, now in the lower layer): forgets what
    /// the overlay held for them, so later changes to the workspace show through there, and
    /// keeps everything else. The merged view does not change.
    pub(super) fn settle_partial_commit(&mut self, applied: &[Change]) -> Result<(), VfsError> {
        for c in applied {
            let p = &c.path;
            match (c.kind, c.entry) {
                (ChangeKind::Deleted, _) => {
                    if self.markers.get(p) == Some(&Marker::Whiteout) {
                        self.markers.remove(p);
                    }
                }
                // The lower directory is new: nothing of it is left to hide.
                (_, EntryKind::Dir) => {
                    self.markers.remove(p);
                }
                (_, EntryKind::File | EntryKind::Symlink) => {
                    self.markers.remove(p);
                    // Where a directory above still hides the lower layer, the upper copy
                    // (now the same) stays what the merged view shows.
                    if !self.lower_hidden(p) && self.upper.try_stat(p)?.is_some() {
                        self.upper.remove_file_sync(p)?;
                    }
                }
            }
        }
        self.persist()?;
        self.forget_bases_of(applied.iter().map(|c| &c.path))
    }

    /// Undoes `selected` (a [`discard_scope`]): what capsules added there goes, what they
    /// changed or removed comes back from the lower layer.
    pub(super) fn discard_some(&mut self, selected: &[Change]) -> Result<(), VfsError> {
        for c in selected.iter().filter(|c| c.kind == ChangeKind::Added) {
            match self.upper.try_stat(&c.path)? {
                Some(m) if m.kind == EntryKind::Dir => self.upper.remove_dir_all_sync(&c.path)?,
                Some(_) => self.upper.remove_file_sync(&c.path)?,
                None => {}
            }
            self.forget_markers_at_or_below(&c.path);
        }
        for c in selected.iter().filter(|c| c.kind != ChangeKind::Added) {
            if c.kind == ChangeKind::Modified && self.upper.try_stat(&c.path)?.is_some() {
                self.upper.remove_file_sync(&c.path)?;
            }
            self.forget_markers_at_or_below(&c.path);
        }
        // What a directory above still hides comes back as a copy (shallowest first: a
        // copied directory brings what is below it).
        let mut restored: Vec<&VfsPath> = Vec::new();
        for c in selected.iter().filter(|c| c.kind != ChangeKind::Added) {
            if restored.iter().any(|r| c.path.starts_with(r)) || !self.lower_hidden(&c.path) {
                continue;
            }
            if self.upper.try_stat(&c.path)?.is_none() {
                self.copy_up(&c.path)?;
            }
            restored.push(&c.path);
        }
        self.persist()?;
        self.forget_bases_of(selected.iter().map(|c| &c.path))
    }

    fn forget_markers_at_or_below(&mut self, p: &VfsPath) {
        self.markers.retain(|k, _| !k.starts_with(p));
    }

    /// Copies the lower layer's `p` (a file, or a directory and everything below it) into
    /// the upper layer.
    fn copy_up(&self, p: &VfsPath) -> Result<(), VfsError> {
        match self.lower.lstat_kind(p)? {
            Some(crate::host::LinkKind::Dir) => {
                self.upper.create_dir_sync(p)?;
                for e in self.lower.read_dir_sync(p)? {
                    self.copy_up(&p.join(&e.name)?)?;
                }
                Ok(())
            }
            Some(crate::host::LinkKind::File) => {
                let bytes = self.lower.read_sync(p)?;
                self.upper.write_sync(p, &bytes)
            }
            // A link or special file is never followed or copied: it stays hidden.
            _ => Err(VfsError::Symlink(p.to_string())),
        }
    }
}
