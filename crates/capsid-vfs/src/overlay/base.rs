//! What the lower layer held at a path when the overlay first changed it (its base), so a
//! commit can tell a lower file changed behind the overlay's back (a conflict) from one only
//! the overlay changed, and refuse to overwrite the first.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use super::Core;
use super::commit::{Change, walk};
use crate::error::VfsError;
use crate::host::{HostVfs, LinkKind, Staging, Sync};
use crate::path::VfsPath;

/// The lower layer at one path, as the overlay first saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Base {
    /// Nothing there.
    Absent,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A FIFO, socket or device (never opened).
    Special,
    /// A regular file with this blake3.
    File(String),
}

/// The lower layer at `p` now. A link is not followed and nothing but a regular file is
/// opened (a FIFO would block the overlay).
fn base_of(lower: &HostVfs, p: &VfsPath) -> Result<Base, VfsError> {
    Ok(match lower.lstat_kind(p)? {
        None => Base::Absent,
        Some(LinkKind::Dir) => Base::Dir,
        Some(LinkKind::Symlink) => Base::Symlink,
        Some(LinkKind::Other) => Base::Special,
        Some(LinkKind::File) => Base::File(file_hash(lower, p)?),
    })
}

/// The blake3 (hex) of file `p` of `layer`.
pub(super) fn file_hash(layer: &HostVfs, p: &VfsPath) -> Result<String, VfsError> {
    let mut file = layer.open_read(p)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| VfsError::from_io(p, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// File name of the bases inside the overlay's work directory: one JSON line per path,
/// appended as the overlay first changes it. Written for the process only, as the upper
/// layer's files are (commit makes what it applies durable); a line a crash cut short is
/// dropped at open.
const BASES_FILE: &str = "overlay-bases.jsonl";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    path: VfsPath,
    base: Base,
}

/// One line of the bases file, with its newline.
fn line_of(path: &VfsPath, base: &Base) -> Result<Vec<u8>, VfsError> {
    let mut line = serde_json::to_vec(&Line {
        path: path.clone(),
        base: base.clone(),
    })
    .map_err(|e| VfsError::State {
        path: BASES_FILE.into(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    Ok(line)
}

fn bases_path() -> Result<VfsPath, VfsError> {
    VfsPath::parse(BASES_FILE)
}

/// The bases the overlay in `work` remembers.
pub(super) fn load(work: &HostVfs) -> Result<BTreeMap<VfsPath, Base>, VfsError> {
    let bytes = match work.read_sync(&bases_path()?) {
        Ok(b) => b,
        Err(VfsError::NotFound(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let shown = work.root().join(BASES_FILE).display().to_string();
    // Only whole lines: an unterminated last one is a write a crash (or a full disk) cut
    // short. It is cut off the file too, or the next line would be appended to it.
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&bytes[..0], |end| &bytes[..=end]);
    if whole.len() < bytes.len() {
        work.replace_with(
            &bases_path()?,
            Staging::Beside(super::state::WORK_TEMP_PREFIX),
            Sync::Durable,
            |f| std::io::Write::write_all(f, whole),
        )?;
    }
    let mut bases = BTreeMap::new();
    for (i, line) in whole.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let line: Line = serde_json::from_slice(line).map_err(|e| VfsError::State {
            path: shown.clone(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        // The first line for a path is its base.
        bases.entry(line.path).or_insert(line.base);
    }
    Ok(bases)
}

impl Core {
    /// Remembers the lower layer at `p` unless something is remembered there already: called
    /// before the overlay first changes `p`.
    pub(super) fn remember(&mut self, p: &VfsPath) -> Result<(), VfsError> {
        if self.bases.contains_key(p) {
            return Ok(());
        }
        let base = base_of(&self.lower, p)?;
        self.keep_base(p.clone(), base)
    }

    /// [`remember`](Self::remember) for `p` and everything the lower layer has below it
    /// (a directory about to be removed whole).
    pub(super) fn remember_tree(&mut self, p: &VfsPath) -> Result<(), VfsError> {
        let mut below = BTreeMap::new();
        if self.lower.lstat_kind(p)? == Some(LinkKind::Dir) {
            walk(&|d| self.lower.read_dir_sync(d), p, &mut below)?;
        }
        for path in std::iter::once(p.clone()).chain(below.into_keys()) {
            if !self.bases.contains_key(&path) {
                let base = base_of(&self.lower, &path)?;
                self.keep_base(path, base)?;
            }
        }
        Ok(())
    }

    fn keep_base(&mut self, path: VfsPath, base: Base) -> Result<(), VfsError> {
        let line = line_of(&path, &base)?;
        self.work.append_sync(&bases_path()?, &line)?;
        self.bases.insert(path, base);
        Ok(())
    }

    /// Forgets the bases of the paths `gone` picks (after a commit or discard of them),
    /// rewriting the file whole with the rest.
    pub(super) fn forget_bases_where(
        &mut self,
        gone: impl Fn(&VfsPath) -> bool,
    ) -> Result<(), VfsError> {
        let before = self.bases.len();
        self.bases.retain(|p, _| !gone(p));
        if self.bases.len() == before {
            return Ok(());
        }
        let mut text = Vec::new();
        for (path, base) in &self.bases {
            text.extend_from_slice(&line_of(path, base)?);
        }
        self.work.replace_with(
            &bases_path()?,
            Staging::Beside(super::state::WORK_TEMP_PREFIX),
            Sync::Durable,
            |f| std::io::Write::write_all(f, &text),
        )
    }

    /// Forgets every base (after a commit or a discard).
    pub(super) fn forget_bases(&mut self) -> Result<(), VfsError> {
        self.bases.clear();
        match self.work.remove_file_sync(&bases_path()?) {
            Ok(()) | Err(VfsError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The paths of `changes` whose lower layer is no longer what the overlay first saw
    /// there: something else changed them since. A path with no base of its own below one
    /// that has one (inside a directory the overlay removed or made) had nothing there then.
    /// A path the overlay never touched before bases were kept is not one; nor is one whose
    /// lower layer already holds what the overlay would write (`hashes`: a commit that
    /// failed part way).
    pub(super) fn conflicts_in(
        &self,
        changes: &[Change],
        hashes: &BTreeMap<VfsPath, String>,
    ) -> Result<Vec<VfsPath>, VfsError> {
        let mut out: Vec<VfsPath> = Vec::new();
        for c in changes {
            let base = match self.bases.get(&c.path) {
                Some(base) => base.clone(),
                None if c
                    .path
                    .ancestors_and_self()
                    .any(|a| a != c.path && self.bases.contains_key(&a)) =>
                {
                    Base::Absent
                }
                None => continue,
            };
            let now = base_of(&self.lower, &c.path)?;
            let already =
                matches!((&now, hashes.get(&c.path)), (Base::File(h), Some(new)) if h == new);
            if now != base && !already && out.last() != Some(&c.path) {
                out.push(c.path.clone());
            }
        }
        Ok(out)
    }
}
