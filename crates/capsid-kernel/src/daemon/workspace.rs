//! The daemon's `workspace.*` methods: the operator reviews what capsules wrote and commits
//! or discards it ([`Kernel::workspace_status`](crate::Kernel::workspace_status) and after).

use capsid_protocol::WireError;
use capsid_protocol::methods::{WorkspaceChangeView, WorkspaceCommitParams};
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
    }
}

fn views(changes: Vec<WorkspaceChange>) -> Vec<WorkspaceChangeView> {
    changes.into_iter().map(view).collect()
}

pub(super) async fn status(shared: &Shared) -> Answer<Vec<WorkspaceChangeView>> {
    let changes = shared.kernel.workspace_status().await;
    Ok(views(changes.map_err(|e| kernel_error(&e))?))
}

pub(super) async fn commit(
    shared: &Shared,
    p: WorkspaceCommitParams,
) -> Answer<Vec<WorkspaceChangeView>> {
    let changes = shared.kernel.workspace_commit(p.overwrite).await;
    Ok(views(changes.map_err(|e| kernel_error(&e))?))
}

pub(super) async fn discard(shared: &Shared) -> Answer<Vec<WorkspaceChangeView>> {
    let changes = shared.kernel.workspace_discard().await;
    Ok(views(changes.map_err(|e| kernel_error(&e))?))
}
