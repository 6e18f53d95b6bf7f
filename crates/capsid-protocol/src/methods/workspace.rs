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
    /// The capsules the audit log shows changing it since the workspace was last committed
    /// or discarded (empty where none is known).
    #[serde(default)]
    pub writers: Vec<String>,
}

/// Params of `workspace.status`: which paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePathsParams {
    /// Workspace paths: the changes at or below any of them (all, when empty).
    #[serde(default)]
    pub paths: Vec<String>,
}

/// Params of `workspace.diff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceDiffParams {
    /// Workspace paths: the changes at or below any of them (all, when empty).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Sizes and line counts only, no diff text.
    #[serde(default)]
    pub stat: bool,
}

/// How one changed path differs between the workspace and what capsules wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDiffView {
    /// The change.
    #[serde(flatten)]
    pub change: WorkspaceChangeView,
    /// The workspace's copy's size in bytes (none where it has no file there).
    pub before_bytes: Option<u64>,
    /// The new copy's size (none where the change removes the file).
    pub after_bytes: Option<u64>,
    /// Either side is not text: sizes only.
    pub binary: bool,
    /// Lines added (text files).
    pub added_lines: u64,
    /// Lines removed (text files).
    pub removed_lines: u64,
    /// The unified diff (text files, unless `stat`).
    pub diff: Option<String>,
    /// The text diff was left out: a file over 1 MiB, or the answer over its 4 MiB budget.
    pub left_out: bool,
}

/// What `workspace.diff` answers: the first `MAX_WORKSPACE_LISTED` changes under the
/// paths asked for, and how many there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceDiffResult {
    /// The files, sorted by path.
    pub files: Vec<FileDiffView>,
    /// Changes under the paths asked for, in all.
    pub total: u64,
}

/// Params of `workspace.commit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceCommitParams {
    /// Commit over paths that changed in the workspace too (conflicts).
    #[serde(default)]
    pub overwrite: bool,
    /// Workspace paths: commit the changes at or below them (with the folders above them
    /// they need) and leave the rest waiting; all, when empty.
    #[serde(default)]
    pub paths: Vec<String>,
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
