//! What capsules changed in a workspace file, line by line: the workspace's copy against
//! the overlay's, as a unified diff for text and as sizes for anything else, with who
//! changed it. A view for review: nothing here changes or records anything.

use capsid_core::limits::{MAX_DIFF_FILE_BYTES, MAX_DIFF_TEXT_BYTES, MAX_WORKSPACE_LISTED};
use capsid_vfs::{EntryKind, FileSide, VfsPath};

use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::workspace::WorkspaceChange;

/// How one changed path differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// The change, as `workspace_status` shows it.
    pub change: WorkspaceChange,
    /// The workspace's copy's size (none where it has no file there).
    pub before_len: Option<u64>,
    /// The overlay's copy's size (none where the change removes the file).
    pub after_len: Option<u64>,
    /// Whether either side is not text (a NUL byte, or not UTF-8): sizes only.
    pub binary: bool,
    /// Lines the change adds (text within `MAX_DIFF_FILE_BYTES`).
    pub added_lines: u64,
    /// Lines the change removes.
    pub removed_lines: u64,
    /// The unified diff, when asked for, text, and within the answer's budget.
    pub text: Option<String>,
    /// Whether a text diff was left out: a side over `MAX_DIFF_FILE_BYTES`, or the answer
    /// past `MAX_DIFF_TEXT_BYTES`.
    pub left_out: bool,
}

/// A side's text, if it is text and was read.
fn text(side: Option<&FileSide>) -> Result<Option<&str>, ()> {
    match side {
        None => Ok(Some("")),
        Some(FileSide { bytes: None, .. }) => Ok(None),
        Some(FileSide {
            bytes: Some(bytes), ..
        }) => {
            if bytes.contains(&0) {
                return Err(());
            }
            std::str::from_utf8(bytes).map(Some).map_err(|_| ())
        }
    }
}

/// The diff of one file whose sides are `before` and `after`; `budget` is what is left of
/// the answer's text, and shrinks by what this one uses.
fn file_diff(
    change: WorkspaceChange,
    before: Option<&FileSide>,
    after: Option<&FileSide>,
    with_text: bool,
    budget: &mut usize,
) -> FileDiff {
    let mut out = unread(change, false);
    out.before_len = before.map(|s| s.len);
    out.after_len = after.map(|s| s.len);
    let (old, new) = match (text(before), text(after)) {
        (Err(()), _) | (_, Err(())) => {
            out.binary = true;
            return out;
        }
        (Ok(Some(old)), Ok(Some(new))) => (old, new),
        _ => {
            out.left_out = true;
            return out;
        }
    };
    let diff = similar::TextDiff::from_lines(old, new);
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => out.added_lines += 1,
            similar::ChangeTag::Delete => out.removed_lines += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    if with_text {
        if *budget == 0 {
            out.left_out = true;
            return out;
        }
        let path = &out.change.path;
        let unified = diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string();
        // Counted as it travels: JSON escapes each control character into six bytes.
        let size = serde_json::to_string(&unified).map_or(usize::MAX, |s| s.len());
        if size <= *budget {
            *budget -= size;
            out.text = Some(unified);
        } else {
            out.left_out = true;
        }
    }
    out
}

/// Whether `path` is one of `filters` or below one (every path, with no filter).
pub(crate) fn selected(path: &str, filters: &[VfsPath]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            let f = f.to_string();
            f.is_empty()
                || path == f
                || path
                    .strip_prefix(f.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// A change shown without reading its file: a directory or link, or a file whose sides
/// could not be read (`left_out`).
fn unread(change: WorkspaceChange, left_out: bool) -> FileDiff {
    FileDiff {
        before_len: None,
        after_len: None,
        binary: false,
        added_lines: 0,
        removed_lines: 0,
        text: None,
        left_out,
        change,
    }
}

impl Kernel {
    /// How the first `MAX_WORKSPACE_LISTED` changed paths under `filters` differ between
    /// the workspace and the overlay (every changed path, with no filter), and how many
    /// changed paths there are: sizes and line counts, and with `with_text` a unified diff
    /// for text files, within the answer's budget. Each file's two sides are read under one
    /// lock; the diffing runs off the async workers.
    pub async fn workspace_diff(
        &self,
        filters: &[String],
        with_text: bool,
    ) -> Result<(Vec<FileDiff>, usize), KernelError> {
        let mut changes = self.workspace_status_of(filters).await?;
        let total = changes.len();
        changes.truncate(MAX_WORKSPACE_LISTED);
        let mut budget = MAX_DIFF_TEXT_BYTES;
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            if change.entry != EntryKind::File {
                out.push(unread(change, false));
                continue;
            }
            let path = VfsPath::parse(&change.path).map_err(KernelError::from)?;
            let sides = self.overlay().sides(&path, MAX_DIFF_FILE_BYTES).await;
            let Ok((before, after)) = sides else {
                // One file that cannot be read (gone, or a link meanwhile) does not hide the
                // others.
                out.push(unread(change, true));
                continue;
            };
            let (diffed, left) = tokio::task::spawn_blocking(move || {
                let mut budget = budget;
                let d = file_diff(
                    change,
                    before.as_ref(),
                    after.as_ref(),
                    with_text,
                    &mut budget,
                );
                (d, budget)
            })
            .await
            .map_err(|e| KernelError::Io {
                path: path.to_string().into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            budget = left;
            out.push(diffed);
        }
        Ok((out, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsid_vfs::ChangeKind;

    fn change(path: &str) -> WorkspaceChange {
        WorkspaceChange {
            path: path.into(),
            kind: ChangeKind::Modified,
            entry: EntryKind::File,
            blake3: None,
            conflict: false,
            writers: Vec::new(),
        }
    }

    fn side(bytes: &[u8]) -> FileSide {
        FileSide {
            len: bytes.len() as u64,
            bytes: Some(bytes.to_vec()),
        }
    }

    #[test]
    fn text_changes_are_counted_and_shown_as_a_unified_diff() {
        let mut budget = usize::MAX;
        let d = file_diff(
            change("notes/a.md"),
            Some(&side(b"one\ntwo\nthree\n")),
            Some(&side(b"one\n2\nthree\nfour\n")),
            true,
            &mut budget,
        );
        assert_eq!((d.added_lines, d.removed_lines), (2, 1));
        let text = d.text.unwrap();
        assert!(
            text.starts_with("--- a/notes/a.md\n+++ b/notes/a.md\n"),
            "{text}"
        );
        assert!(
            text.contains("-two\n+2\n") && text.contains("+four\n"),
            "{text}"
        );
        let added = file_diff(
            change("n.md"),
            None,
            Some(&side(b"x\n")),
            false,
            &mut budget,
        );
        assert_eq!((added.added_lines, added.text), (1, None));
    }

    #[test]
    fn binaries_big_files_and_a_spent_budget_get_sizes_only() {
        let mut budget = usize::MAX;
        let bin = file_diff(
            change("a.bin"),
            Some(&side(b"a\0b")),
            Some(&side(b"ab")),
            true,
            &mut budget,
        );
        assert!(bin.binary && bin.text.is_none());
        assert_eq!((bin.before_len, bin.after_len), (Some(3), Some(2)));
        let big = FileSide {
            len: 10 << 20,
            bytes: None,
        };
        let large = file_diff(
            change("big.txt"),
            Some(&big),
            Some(&side(b"x")),
            true,
            &mut budget,
        );
        assert!(large.left_out && !large.binary && large.text.is_none());
        let mut small = 10;
        let over = file_diff(
            change("t.txt"),
            Some(&side(b"a\n")),
            Some(&side(b"b\n")),
            true,
            &mut small,
        );
        assert!(over.left_out && over.text.is_none() && small == 10);
        assert_eq!((over.added_lines, over.removed_lines), (1, 1));
    }

    #[test]
    fn filters_select_a_path_and_what_is_below_it() {
        let f = |s: &str| VfsPath::parse(s).unwrap();
        assert!(selected("notes/a.md", &[]));
        assert!(selected("notes/a.md", &[f("notes")]));
        assert!(selected("notes", &[f("notes")]));
        assert!(!selected("notes2/a.md", &[f("notes")]));
        assert!(!selected("other", &[f("notes/a.md")]));
    }
}
