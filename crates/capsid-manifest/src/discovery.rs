//! Finding capsules: every direct subdirectory of a capsules directory that holds a
//! `Capsule.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::manifest::{Manifest, ManifestError};

/// The manifest file name inside a capsule directory.
pub const MANIFEST_FILE: &str = "Capsule.toml";

/// What [`discover`] found: the valid manifests, and an error for every capsule that could
/// not be read. One broken capsule never hides the others.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Valid manifests, by name order.
    pub manifests: Vec<Manifest>,
    /// One error per broken capsule.
    pub errors: Vec<ManifestError>,
}

/// Reads every `<dir>/<capsule>/Capsule.toml`. Two capsules with the same name are both
/// refused. An unreadable `dir` is an error naming it.
pub fn discover(dir: &Path) -> Result<Discovery, ManifestError> {
    let dir_error = |e: std::io::Error| ManifestError {
        file: dir.to_owned(),
        key: String::new(),
        line: 0,
        message: e.to_string(),
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(dir_error)?
        .collect::<Result<_, _>>()
        .map_err(dir_error)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    let mut out = Discovery::default();
    let mut by_name: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
    for entry in entries {
        let manifest = entry.path().join(MANIFEST_FILE);
        // Dot-folders are an install's staging or set-aside copies, never a capsule.
        let hidden = entry.file_name().as_encoded_bytes().starts_with(b".");
        if hidden || !entry.file_type().is_ok_and(|t| t.is_dir()) || !manifest.is_file() {
            continue;
        }
        match Manifest::load(&manifest) {
            Ok(m) => by_name.entry(m.name.to_string()).or_default().push(m),
            Err(e) => out.errors.push(e),
        }
    }
    for (name, mut same) in by_name {
        if same.len() == 1 {
            out.manifests.append(&mut same);
            continue;
        }
        out.errors.extend(same.into_iter().map(|dup| ManifestError {
            file: dup.file,
            key: "package.name".into(),
            line: 0,
            message: format!("another capsule is also named {name:?}; names must be unique"),
        }));
    }
    Ok(out)
}
