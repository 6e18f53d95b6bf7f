//! What the overlay crash suite's writer (`overlay-commit-storm`) writes, so the suite can
//! tell a whole generation's file from a torn one.

use capsid_vfs::{VfsError, VfsPath};

/// Files each generation rewrites.
pub const FILES: usize = 16;

/// Bytes of each file: large enough that a commit takes a while to copy them down.
pub const FILE_BYTES: usize = 64 * 1024;

/// What generation `generation` writes to `file-<i>`: its stamp, repeated.
pub fn content(generation: u64, i: usize) -> Vec<u8> {
    let stamp = format!("{generation:012}:{i:04}|");
    stamp
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(FILE_BYTES)
        .collect()
}

/// The generation whose whole content `bytes` is for `file-<i>`, or `None` (torn or foreign).
pub fn generation_of(bytes: &[u8], i: usize) -> Option<u64> {
    let stamp = std::str::from_utf8(bytes.get(..12)?).ok()?;
    let generation = stamp.parse().ok()?;
    (bytes == content(generation, i).as_slice()).then_some(generation)
}

/// `file-<i>`.
pub fn file(i: usize) -> Result<VfsPath, VfsError> {
    VfsPath::parse(&format!("file-{i}"))
}

/// `old-<generation>`: written by its generation and removed by the next.
pub fn old(generation: u64) -> Result<VfsPath, VfsError> {
    VfsPath::parse(&format!("old-{generation}"))
}
