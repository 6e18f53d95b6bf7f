//! Reviewing what capsules wrote: the workspace overlay's changes (with the paths that
//! changed behind its back, its conflicts), committed to the workspace or discarded by the
//! operator. Both are recorded before they happen, path by path; a commit applies exactly
//! what was recorded or nothing ([`OverlayVfs::commit_plan`]).
//!
//! [`OverlayVfs::commit_plan`]: capsid_vfs::OverlayVfs::commit_plan

use capsid_audit::action::{self, WORKSPACE_RESOURCE};
use capsid_core::limits::{MAX_AUDIT_DETAILS_BYTES, MAX_WORKSPACE_FILTERS};
use capsid_vfs::{Change, ChangeKind, CommitPlan, EntryKind, VfsError, VfsPath};
use serde_json::{Value, json};

use crate::error::KernelError;
use crate::kernel::Kernel;

/// One path capsules changed, as review shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceChange {
    /// The path, relative to the workspace.
    pub path: String,
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// A file, directory or symlink (what the deleted path was, for a deletion).
    pub entry: EntryKind,
    /// The blake3 of the file's new content (added and modified files).
    pub blake3: Option<String>,
    /// Whether the workspace's own copy changed too since capsules first changed it: a
    /// commit refuses to overwrite it unless told to.
    pub conflict: bool,
    /// The capsules the audit log shows changing it since the workspace was last committed
    /// or discarded (empty where none is known).
    pub writers: Vec<String>,
}

fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "added",
        ChangeKind::Modified => "modified",
        ChangeKind::Deleted => "deleted",
    }
}

/// `plan`'s changes as review shows them.
fn review(plan: &CommitPlan) -> Vec<WorkspaceChange> {
    plan.changes
        .iter()
        .map(|c: &Change| WorkspaceChange {
            path: c.path.to_string(),
            kind: c.kind,
            entry: c.entry,
            blake3: plan.hashes.get(&c.path).cloned(),
            conflict: plan.conflicts.contains(&c.path),
            writers: Vec::new(),
        })
        .collect()
}

/// The records of an action on `changes`: as many entries as their paths need, each
/// within the audit log's details limit.
fn parts(changes: &[WorkspaceChange], extra: &Value) -> Vec<Value> {
    // Room for the other fields of each entry.
    const BUDGET: usize = MAX_AUDIT_DETAILS_BYTES / 2;
    let mut groups: Vec<Vec<Value>> = vec![Vec::new()];
    let mut used = 0;
    for c in changes {
        let item = json!({
            "path": c.path,
            "change": kind_name(c.kind),
            "blake3": c.blake3,
            "conflict": c.conflict,
            "writers": c.writers,
        });
        let size = item.to_string().len();
        if used + size > BUDGET && groups.last().is_some_and(|g| !g.is_empty()) {
            groups.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(group) = groups.last_mut() {
            group.push(item);
        }
    }
    let total = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, paths)| {
            let mut details = extra.clone();
            if let Some(fields) = details.as_object_mut() {
                fields.insert("paths".into(), Value::Array(paths));
                fields.insert("part".into(), json!(i + 1));
                fields.insert("parts".into(), json!(total));
            }
            details
        })
        .collect()
}

/// The paths `plan` is limited to, as recorded (empty: all).
fn paths_of(plan: &CommitPlan) -> Vec<String> {
    plan.scope.iter().map(ToString::to_string).collect()
}

/// Workspace paths a review is limited to, parsed (all, when empty).
fn scope(paths: &[String]) -> Result<Vec<VfsPath>, KernelError> {
    if paths.len() > MAX_WORKSPACE_FILTERS {
        return Err(KernelError::TooManyPaths(MAX_WORKSPACE_FILTERS));
    }
    // `notes/` (as shells complete it) is `notes`; `/` is the whole workspace.
    Ok(paths
        .iter()
        .map(|f| VfsPath::parse(f.trim_end_matches('/')))
        .collect::<Result<Vec<_>, _>>()?)
}

impl Kernel {
    /// What capsules changed in the workspace and not yet committed, sorted by path, with
    /// who changed each.
    pub async fn workspace_status(&self) -> Result<Vec<WorkspaceChange>, KernelError> {
        self.workspace_status_of(&[]).await
    }

    /// [`Kernel::workspace_status`] of the paths at or below `filters` (workspace paths).
    pub async fn workspace_status_of(
        &self,
        filters: &[String],
    ) -> Result<Vec<WorkspaceChange>, KernelError> {
        self.open()?;
        let filters = scope(filters)?;
        let mut changes = review(&self.overlay().plan_commit().await?);
        changes.retain(|c| crate::workspace_diff::selected(&c.path, &filters));
        self.attribute(&mut changes).await;
        Ok(changes)
    }

    /// Fills in who changed each path, from the audit log: the capsules recorded changing
    /// it, else (a directory renamed, removed or made along the way, which is recorded at
    /// its top) its nearest ancestor. A log that cannot be read leaves them unknown:
    /// attribution helps review, it is never a gate.
    async fn attribute(&self, changes: &mut [WorkspaceChange]) {
        if changes.is_empty() {
            return;
        }
        let resource = |path: &str| format!("{WORKSPACE_RESOURCE}/{path}");
        let ancestors = |path: &str| -> Vec<String> {
            let mut out = vec![path.to_owned()];
            let mut at = path;
            while let Some((parent, _)) = at.rsplit_once('/') {
                out.push(parent.to_owned());
                at = parent;
            }
            out
        };
        let wanted: std::collections::BTreeSet<String> = changes
            .iter()
            .flat_map(|c| ancestors(&c.path))
            .map(|p| resource(&p))
            .collect();
        let db = self.audit().path().to_owned();
        let writers = match tokio::task::spawn_blocking(move || {
            capsid_audit::workspace_writers(&db, &wanted)
        })
        .await
        {
            Ok(Ok(writers)) => writers,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading who changed the workspace");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading who changed the workspace");
                return;
            }
        };
        for c in changes {
            if let Some(found) = ancestors(&c.path)
                .iter()
                .find_map(|p| writers.get(&resource(p)))
            {
                c.writers = found.iter().cloned().collect();
            }
        }
    }

    /// Commits capsules' changes to the workspace (those at or below `paths`, with the
    /// folders above them they need; all, with none): recorded path by path (with each
    /// file's blake3), then applied exactly as recorded. Paths changed in the workspace
    /// too since capsules first changed them refuse it, unless `overwrite`.
    pub async fn workspace_commit(
        &self,
        overwrite: bool,
        paths: &[String],
    ) -> Result<Vec<WorkspaceChange>, KernelError> {
        self.open_recording()?;
        let scope = scope(paths)?;
        let plan = self.overlay().plan_commit_of(scope).await?;
        let mut changes = review(&plan);
        self.attribute(&mut changes).await;
        if !overwrite && !plan.conflicts.is_empty() {
            return Err(VfsError::Conflicts(
                plan.conflicts.iter().map(ToString::to_string).collect(),
            )
            .into());
        }
        if changes.is_empty() {
            return Ok(changes);
        }
        let overlay = self.overlay().clone();
        let extra = json!({ "overwrite": overwrite, "limited_to": paths_of(&plan) });
        self.record_changes_then(action::WORKSPACE_COMMIT, &changes, &extra, async move {
            Ok(overlay.commit_plan(plan, overwrite).await.map(|_| ())?)
        })
        .await?;
        Ok(changes)
    }

    /// Drops the changes capsules made to the workspace at or below `paths` (all, with
    /// none), recorded first path by path.
    pub async fn workspace_discard(
        &self,
        paths: &[String],
    ) -> Result<Vec<WorkspaceChange>, KernelError> {
        self.open_recording()?;
        let scope = scope(paths)?;
        let plan = self.overlay().plan_discard_of(scope).await?;
        let mut changes = review(&plan);
        self.attribute(&mut changes).await;
        if changes.is_empty() {
            return Ok(changes);
        }
        let overlay = self.overlay().clone();
        let extra = json!({ "limited_to": paths_of(&plan) });
        self.record_changes_then(action::WORKSPACE_DISCARD, &changes, &extra, async move {
            Ok(overlay.discard_plan(plan).await?)
        })
        .await?;
        Ok(changes)
    }

    /// Records `action` on `changes` (as many entries as their paths need, each with
    /// `extra`), then runs `effect` ([`Kernel::record_then`] for the last entry).
    async fn record_changes_then(
        &self,
        action: &str,
        changes: &[WorkspaceChange],
        extra: &Value,
        effect: impl Future<Output = Result<(), KernelError>>,
    ) -> Result<(), KernelError> {
        let mut records = parts(changes, extra);
        let last = records.pop().unwrap_or_else(|| extra.clone());
        for details in records {
            self.note(action, WORKSPACE_RESOURCE, details).await?;
        }
        self.record_then(action, WORKSPACE_RESOURCE, last, effect)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_are_split_into_records_within_the_limit() {
        let changes: Vec<WorkspaceChange> = (0..2_000)
            .map(|i| WorkspaceChange {
                path: format!("notes/a-rather-long-folder-name/note-{i:05}.md"),
                kind: ChangeKind::Added,
                entry: EntryKind::File,
                blake3: Some("ab".repeat(32)),
                conflict: false,
                writers: vec!["notes".into()],
            })
            .collect();
        let records = parts(&changes, &json!({ "overwrite": false }));
        assert!(records.len() > 1);
        let mut seen = 0;
        for (i, r) in records.iter().enumerate() {
            assert!(r.to_string().len() <= MAX_AUDIT_DETAILS_BYTES);
            assert_eq!(r["part"], json!(i + 1));
            assert_eq!(r["parts"], json!(records.len()));
            assert_eq!(r["overwrite"], json!(false));
            seen += r["paths"].as_array().map_or(0, Vec::len);
        }
        assert_eq!(seen, changes.len());
        assert_eq!(parts(&[], &json!({})).len(), 1);
    }
}
