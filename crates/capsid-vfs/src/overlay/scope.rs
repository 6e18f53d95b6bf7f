//! Committing or discarding some paths only.
//!
//! A scope is a list of paths; a commit or discard of it takes the changes at or below each
//! path, and a commit also creates the directories above them the lower layer lacks. A path
//! inside a directory capsules removed or replaced (one that carries a marker, or that the
//! lower layer holds as something else) is refused: the lower layer's copy there is hidden or
//! in the way, so neither result could show through without taking the whole directory; the
//! caller is told to name it instead.
//!
//! Both end by settling the scope: its markers dropped (and saved) first, then its bases,
//! then the upper layer's copies, then upper directories left empty over a lower one. Each
//! step only removes what is at or below the scope, and the merged view there already equals
//! the lower layer's, so settling again after a kill finishes it without changing anything
//! outside.

use super::Core;
use super::base::Base;
use super::commit::{Change, ChangeKind};
use super::state::WORK_TEMP_PREFIX;
use crate::EntryKind;
use crate::error::VfsError;
use crate::host::{LinkKind, Staging, Sync};
use crate::path::VfsPath;

/// The work directory's record of a discard under way: the paths it drops (a line each;
/// none: everything), so the next open finishes it.
const DISCARD_PENDING_FILE: &str = "discard-pending";

/// `scope` sorted, each path once and none below another; empty (everything) when it holds
/// the root.
pub(super) fn normalize(mut scope: Vec<VfsPath>) -> Vec<VfsPath> {
    if scope.iter().any(VfsPath::is_root) {
        return Vec::new();
    }
    scope.sort();
    scope.dedup();
    let mut out: Vec<VfsPath> = Vec::with_capacity(scope.len());
    for p in scope {
        // Sorted, so a path's ancestor in the scope comes before it.
        if !out.iter().any(|kept| p.starts_with(kept)) {
            out.push(p);
        }
    }
    out
}

/// Whether `p` is at or below a path of `scope` (everything, when it is empty).
pub(super) fn in_scope(p: &VfsPath, scope: &[VfsPath]) -> bool {
    scope.is_empty() || scope.iter().any(|s| p.starts_with(s))
}

/// The changes a commit of `scope` applies: those at or below it, and the directories above
/// it that the lower layer lacks.
pub(super) fn commit_set(changes: &[Change], scope: &[VfsPath]) -> Vec<Change> {
    changes
        .iter()
        .filter(|c| {
            in_scope(&c.path, scope)
                || (c.kind == ChangeKind::Added
                    && c.entry == EntryKind::Dir
                    && scope.iter().any(|s| s.starts_with(&c.path)))
        })
        .cloned()
        .collect()
}

/// The changes a discard of `scope` drops.
pub(super) fn discard_set(changes: &[Change], scope: &[VfsPath]) -> Vec<Change> {
    changes
        .iter()
        .filter(|c| in_scope(&c.path, scope))
        .cloned()
        .collect()
}

/// The paths of a record's scope lines, naming the record `file` when one is bad.
pub(super) fn parse_scope(
    lines: std::str::Split<'_, char>,
    file: &dyn Fn() -> String,
) -> Result<Vec<VfsPath>, VfsError> {
    lines
        .map(VfsPath::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VfsError::State {
            path: file(),
            reason: format!("a path it names is not a workspace path ({e})"),
        })
}

/// `scope` as record lines, each after a newline.
pub(super) fn scope_lines(scope: &[VfsPath]) -> String {
    let mut lines = String::new();
    for p in scope {
        lines.push('\n');
        lines.push_str(&p.to_string());
    }
    lines
}

impl Core {
    /// Refuses a path of `scope` inside a directory capsules removed or replaced (or one
    /// the lower layer holds as something else now), or with no change at or below it (a
    /// misspelt path must not pass as done).
    pub(super) fn check_scope(
        &self,
        changes: &[Change],
        scope: &[VfsPath],
    ) -> Result<(), VfsError> {
        let deleted: std::collections::BTreeSet<&VfsPath> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Deleted)
            .map(|c| &c.path)
            .collect();
        for s in scope {
            if let Some(dir) = s
                .ancestors_and_self()
                .find(|a| a != s && (self.markers.contains_key(a) || deleted.contains(a)))
            {
                return Err(VfsError::ReplacedAbove {
                    path: s.to_string(),
                    dir: dir.to_string(),
                });
            }
            if !changes.iter().any(|c| c.path.starts_with(s)) {
                return Err(VfsError::Unchanged(s.to_string()));
            }
        }
        Ok(())
    }

    /// Drops what the overlay holds at or below the paths of `scope` (not empty), whose
    /// merged view must equal the lower layer's already (committed) or be given up
    /// (discarded). After a commit, the bases of directories above them it created are
    /// forgotten too: the lower layer has them now.
    pub(super) fn settle(&mut self, scope: &[VfsPath], committed: bool) -> Result<(), VfsError> {
        let before = self.markers.len();
        self.markers.retain(|p, _| !in_scope(p, scope));
        // Saved before any copy goes: a marker without its copy would hide the lower layer.
        if self.markers.len() != before {
            self.persist()?;
        }
        let mut created_above = Vec::new();
        if committed {
            for s in scope {
                for a in s.ancestors_and_self().filter(|a| a != s && !a.is_root()) {
                    if self.bases.get(&a) == Some(&Base::Absent)
                        && self.lower.lstat_kind(&a)? == Some(LinkKind::Dir)
                    {
                        created_above.push(a);
                    }
                }
            }
        }
        self.forget_bases_where(|p| in_scope(p, scope) || created_above.contains(p))?;
        for s in scope {
            match self.upper.lstat_kind(s)? {
                None => {}
                Some(LinkKind::Dir) => self.upper.remove_dir_all_sync(s)?,
                Some(_) => self.upper.remove_file_sync(s)?,
            }
            self.prune_above(s)?;
        }
        Ok(())
    }

    /// Removes the upper layer's directories above `p` that are empty over a visible lower
    /// directory: copy-up left them, and one kept would keep showing the directory after
    /// the workspace removed it.
    fn prune_above(&self, p: &VfsPath) -> Result<(), VfsError> {
        let mut dir = p.parent();
        while let Some(d) = dir.filter(|d| !d.is_root()) {
            if self.lower_hidden(&d)
                || self.upper.lstat_kind(&d)? != Some(LinkKind::Dir)
                || self.lower.lstat_kind(&d)? != Some(LinkKind::Dir)
            {
                return Ok(());
            }
            match self.upper.remove_dir_sync(&d) {
                Ok(()) => {}
                Err(VfsError::NotEmpty(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Drops the changes at or below `scope` (everything, when empty), recorded first so
    /// that a kill part way is finished by the next open rather than left half done.
    pub(super) fn discard_scope(&mut self, scope: &[VfsPath]) -> Result<(), VfsError> {
        let lines = scope_lines(scope);
        let record = lines.strip_prefix('\n').unwrap_or(&lines);
        // A failure may come after the record is in place (its folder's sync): from here
        // the discard can only go forward.
        self.work
            .replace_with(
                &discard_pending_path()?,
                Staging::Beside(WORK_TEMP_PREFIX),
                Sync::Durable,
                |f| std::io::Write::write_all(f, record.as_bytes()),
            )
            .map_err(|e| self.unfinished("discard", &e))?;
        // Decided: it can only go forward.
        self.finish_discard(scope)
            .map_err(|e| self.unfinished("discard", &e))
    }

    fn finish_discard(&mut self, scope: &[VfsPath]) -> Result<(), VfsError> {
        if scope.is_empty() {
            self.discard()?;
        } else {
            self.settle(scope, false)?;
        }
        match self.work.remove_file_sync(&discard_pending_path()?) {
            Ok(()) | Err(VfsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.work.sync_dir(&VfsPath::root())
    }

    /// Finishes a discard a killed process left half done, if its record is there; the
    /// paths it was limited to (none: everything), if it was.
    pub(super) fn finish_interrupted_discard(&mut self) -> Result<Option<Vec<VfsPath>>, VfsError> {
        let record = match self.work.read_sync(&discard_pending_path()?) {
            Ok(bytes) => bytes,
            Err(VfsError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let shown = || {
            self.work
                .root()
                .join(DISCARD_PENDING_FILE)
                .display()
                .to_string()
        };
        let text = std::str::from_utf8(&record).map_err(|_| VfsError::State {
            path: shown(),
            reason: "not text".into(),
        })?;
        let scope = if text.is_empty() {
            Vec::new()
        } else {
            parse_scope(text.split('\n'), &shown)?
        };
        self.finish_discard(&scope)?;
        Ok(Some(scope))
    }
}

fn discard_pending_path() -> Result<VfsPath, VfsError> {
    VfsPath::parse(DISCARD_PENDING_FILE)
}
