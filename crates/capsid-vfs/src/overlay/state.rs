//! The overlay's markers, persisted as one JSON file replaced atomically on every change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::VfsError;
use crate::host::{HostVfs, Staging, Sync};
use crate::path::VfsPath;

/// File name of the persisted markers inside the overlay's work directory.
const STATE_FILE: &str = "overlay-state.json";
const STATE_VERSION: u32 = 1;

/// Name prefix of the work directory's own temporary files.
pub(crate) const WORK_TEMP_PREFIX: &str = ".capsid-tmp-";

/// What the overlay remembers about a path of the lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Marker {
    /// The path and everything below it are deleted; the upper layer has nothing there.
    Whiteout,
    /// The upper layer has the path; the lower's path and everything below it are hidden.
    Opaque,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    markers: BTreeMap<VfsPath, Marker>,
}

pub(crate) fn load(work: &HostVfs) -> Result<BTreeMap<VfsPath, Marker>, VfsError> {
    let path = VfsPath::parse(STATE_FILE)?;
    let bytes = match work.read_sync(&path) {
        Ok(b) => b,
        Err(VfsError::NotFound(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let shown = work.root().join(STATE_FILE).display().to_string();
    let state: Persisted = serde_json::from_slice(&bytes).map_err(|e| VfsError::State {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if state.version != STATE_VERSION {
        return Err(VfsError::State {
            path: shown,
            reason: format!("unknown version {}", state.version),
        });
    }
    Ok(state.markers)
}

pub(crate) fn save(work: &HostVfs, markers: &BTreeMap<VfsPath, Marker>) -> Result<(), VfsError> {
    let bytes = serde_json::to_vec(&Persisted {
        version: STATE_VERSION,
        markers: markers.clone(),
    })
    .map_err(|e| VfsError::State {
        path: STATE_FILE.into(),
        reason: e.to_string(),
    })?;
    work.replace_with(
        &VfsPath::parse(STATE_FILE)?,
        Staging::Beside(WORK_TEMP_PREFIX),
        Sync::Durable,
        |f| std::io::Write::write_all(f, &bytes),
    )
}
