//! Errors of the VFS.

use std::io;

/// Everything a VFS call can fail with. Paths are the VFS-relative ones the caller used.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The path is not a clean relative path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path, escaped.
        path: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// A path to commit or discard alone lies inside a directory removed or replaced (by
    /// capsules, or in the workspace), which hides or stands in the way of the workspace's
    /// copy below it.
    #[error(
        "{path}: {dir} above it was removed or replaced (by capsules, or in the workspace); \
         name {dir} instead"
    )]
    ReplacedAbove {
        /// The path.
        path: String,
        /// The directory above it.
        dir: String,
    },
    /// A path to commit or discard has no change at or below it.
    #[error("{0}: no change at or below it to commit or discard")]
    Unchanged(String),
    /// Nothing at this path.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// Something already exists at this path.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A directory was found where a file was needed.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// A file was found where a directory was needed.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// The directory is not empty.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// The path, or a symlink on it, leads outside the root.
    #[error("{0}: leads outside the sandbox")]
    Escape(String),
    /// A write would go through a symbolic link of the lower layer; the overlay refuses it
    /// rather than replace the link or write to its target.
    #[error("{0}: writes through symbolic links are refused")]
    Symlink(String),
    /// A directory to delete holds entries no VFS path can name; commit stops before
    /// changing anything rather than delete what nobody could see.
    #[error("{0}: holds entries with names the VFS cannot address; remove them by hand")]
    Unaddressable(String),
    /// Paths the overlay changed whose lower file changed too since it first did (someone
    /// wrote the workspace directly): committing would overwrite that.
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<String>),
    /// The overlay changed between a commit's plan and the commit.
    #[error("the workspace changed since the commit was planned; review it again")]
    ChangedSincePlan,
    /// The overlay's persisted state is unreadable.
    #[error("overlay state {path}: {reason}")]
    State {
        /// The state file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A commit a killed process left half done could not be finished when the overlay was
    /// opened; the overlay stays closed (its record is kept) until it can be.
    #[error(
        "overlay {work}: a commit interrupted by a crash could not be finished ({source}); \
         fix the cause and open it again, or give the commit up by removing \
         {work}/commit-pending (the merged view stays; the workspace keeps what the commit \
         had already written)"
    )]
    InterruptedCommit {
        /// The overlay's work directory.
        work: String,
        /// Why finishing it failed.
        source: Box<VfsError>,
    },
    /// A commit or discard failed part way, past the point where it can only go forward
    /// (the workspace, or the record that finishes it, already holds it); the overlay refuses
    /// every call until it is opened again, which finishes it.
    #[error(
        "overlay {work}: a {what} failed part way ({cause}); fix the cause and restart the \
         daemon (open the overlay again), which finishes the {what}; until then the overlay \
         refuses every call"
    )]
    Unfinished {
        /// The overlay's work directory.
        work: String,
        /// `commit` or `discard`.
        what: &'static str,
        /// Why it failed.
        cause: String,
    },
    /// Any other I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl VfsError {
    /// Classifies an I/O error on `path`.
    pub(crate) fn from_io(path: &impl std::fmt::Display, e: io::Error) -> Self {
        let path = path.to_string();
        // cap-std reports an escape as PermissionDenied with no OS error; a refused final
        // symlink (O_NOFOLLOW) is ELOOP.
        if e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error().is_none()
            || e.raw_os_error() == Some(libc::ELOOP)
        {
            return Self::Escape(path);
        }
        match e.kind() {
            io::ErrorKind::NotFound => Self::NotFound(path),
            io::ErrorKind::AlreadyExists => Self::AlreadyExists(path),
            io::ErrorKind::IsADirectory => Self::IsADirectory(path),
            io::ErrorKind::NotADirectory => Self::NotADirectory(path),
            io::ErrorKind::DirectoryNotEmpty => Self::NotEmpty(path),
            _ => Self::Io { path, source: e },
        }
    }
}

/// The line a conflict refusal says: how many paths, the first few of them.
fn conflicts_message(paths: &[String]) -> String {
    const SHOWN: usize = 10;
    let count = if paths.len() == 1 {
        "1 path".to_owned()
    } else {
        format!("{} paths", paths.len())
    };
    let listed = paths
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = match paths.len().checked_sub(SHOWN) {
        Some(n) if n > 0 => format!(" and {n} more"),
        _ => String::new(),
    };
    format!(
        "{count} changed in the workspace since capsules first changed them: {listed}{more}; \
         review them, then commit overwriting them (or discard the capsules' changes)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_conflict_list_names_the_first_paths_and_counts_the_rest() {
        let paths: Vec<String> = (0..25).map(|i| format!("p{i}")).collect();
        let line = VfsError::Conflicts(paths).to_string();
        assert!(line.starts_with("25 paths changed"), "{line}");
        assert!(
            line.contains("p0, p1,") && line.contains("p9 and 15 more;"),
            "{line}"
        );
        assert!(!line.contains("p10"), "{line}");
        let one = VfsError::Conflicts(vec!["a".into()]).to_string();
        assert!(
            one.starts_with("1 path changed") && one.contains(": a;"),
            "{one}"
        );
    }
}
