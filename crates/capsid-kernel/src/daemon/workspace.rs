//! The daemon's `workspace.*` methods: the operator reviews what capsules wrote and commits
//! or discards it ([`Kernel::workspace_status`](crate::Kernel::workspace_status) and after).

use capsid_core::limits::{MAX_REVIEW_ANSWER_BYTES, MAX_WORKSPACE_LISTED};
use capsid_protocol::WireError;
use capsid_protocol::methods::{
    FileDiffView, WorkspaceChangeView, WorkspaceCommitParams, WorkspaceDiffParams,
    WorkspaceDiffResult, WorkspacePathsParams, WorkspaceReview,
};
use capsid_vfs::{ChangeKind, EntryKind};

use super::server::Shared;
use super::views::kernel_error;
use crate::WorkspaceChange;

type Answer<T> = Result<T, WireError>;

fn view(c: WorkspaceChange) -> WorkspaceChangeView {
    WorkspaceChangeView {
        path: c.path,
        change: match c.kind {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
        }
        .to_owned(),
        entry: match c.entry {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        }
        .to_owned(),
        blake3: c.blake3,
        conflict: c.conflict,
        writers: c.writers,
    }
}

/// The first `MAX_WORKSPACE_LISTED` of `items` whose encodings fit in
/// `MAX_REVIEW_ANSWER_BYTES` together: an answer always fits in a frame, however long the
/// paths capsules chose (its `total` still counts every change).
fn within_budget<T: serde::Serialize>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut used = 0usize;
    let mut out = Vec::new();
    for item in items.take(MAX_WORKSPACE_LISTED) {
        used = used.saturating_add(serde_json::to_vec(&item).map_or(usize::MAX, |v| v.len()));
        if used > MAX_REVIEW_ANSWER_BYTES {
            break;
        }
        out.push(item);
    }
    out
}

/// The answer: every change counted, as many listed as fit.
fn views(changes: Vec<WorkspaceChange>) -> WorkspaceReview {
    let total = changes.len() as u64;
    let conflicts = changes.iter().filter(|c| c.conflict).count() as u64;
    WorkspaceReview {
        changes: within_budget(changes.into_iter().map(view)),
        total,
        conflicts,
    }
}

pub(super) async fn status(shared: &Shared, p: WorkspacePathsParams) -> Answer<WorkspaceReview> {
    let changes = shared.kernel.workspace_status_of(&p.paths).await;
    Ok(views(changes.map_err(|e| kernel_error(&e))?))
}

pub(super) async fn diff(shared: &Shared, p: WorkspaceDiffParams) -> Answer<WorkspaceDiffResult> {
    let (files, total) = shared
        .kernel
        .workspace_diff(&p.paths, !p.stat)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(WorkspaceDiffResult {
        total: total as u64,
        files: within_budget(files.into_iter().map(|f| FileDiffView {
            change: view(f.change),
            before_bytes: f.before_len,
            after_bytes: f.after_len,
            binary: f.binary,
            added_lines: f.added_lines,
            removed_lines: f.removed_lines,
            diff: f.text,
            left_out: f.left_out,
        })),
    })
}

pub(super) async fn commit(shared: &Shared, p: WorkspaceCommitParams) -> Answer<WorkspaceReview> {
    let changes = shared.kernel.workspace_commit(p.overwrite, &p.paths).await;
    Ok(views(changes.map_err(|e| kernel_error(&e))?))
}

pub(super) async fn discard(shared: &Shared, p: WorkspacePathsParams) -> Answer<WorkspaceReview> {
    let changes = shared.kernel.workspace_discard(&p.paths).await;
    Ok(views(changes.map_err(|e| kernel_error(&e))?))
}
