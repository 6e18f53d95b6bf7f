//! Params and results of the `workspace.*` methods: reviewing what capsules wrote to the
//! workspace, and committing or discarding it.

use serde::{Deserialize, Serialize};

/// One path capsules changed in the workspace, not yet committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceChangeView {
    /// The path, relative to the workspace.
    pub path: String,
    /// `added`, `modified` or `deleted`.
    pub change: String,
    /// `file`, `dir` or `symlink` (what was deleted, for a deletion).
    pub entry: String,
    /// The blake3 of the file's new content (added and modified files).
    pub blake3: Option<String>,
    /// The workspace's own copy changed too since capsules first changed it: committing
    /// would overwrite that, and is refused unless asked to overwrite.
    pub conflict: bool,
}

/// Params of `workspace.commit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceCommitParams {
    /// Commit over paths that changed in the workspace too (conflicts).
    #[serde(default)]
    pub overwrite: bool,
}

/// What a `workspace.*` method answers: the changed paths (the first
/// `MAX_WORKSPACE_LISTED` of them, by path), and how many there are in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceReview {
    /// The paths, sorted; at most `MAX_WORKSPACE_LISTED`.
    pub changes: Vec<WorkspaceChangeView>,
    /// Changed paths in all.
    pub total: u64,
    /// Conflicts among them, in all.
    pub conflicts: u64,
}
