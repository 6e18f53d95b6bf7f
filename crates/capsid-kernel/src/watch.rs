//! Hot reload in dev mode: a watcher on `<home>/capsules` collects changes per capsule, waits
//! for each capsule's files to settle (`HOT_RELOAD_DEBOUNCE`), then hashes what a capsule is
//! made of (its manifest and its component) and reloads it only when that hash differs from
//! the one it was loaded from — a touched file, an editor's temporary file, a rewrite of the
//! same bytes or an install that already loaded it reloads nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use capsid_capsule::RestartCause;
use capsid_core::CapsuleId;
use capsid_core::limits::HOT_RELOAD_DEBOUNCE;
use capsid_manifest::{Component, MANIFEST_FILE, Manifest};
use notify::{RecursiveMode, Watcher};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kernel::Kernel;

/// The blake3 over a capsule's manifest and component, `None` when either is unreadable.
pub(crate) fn source_hash(dir: &Path) -> Option<[u8; 32]> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest_bytes = std::fs::read(&manifest_path).ok()?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(manifest_bytes.len() as u64).to_le_bytes());
    hasher.update(&manifest_bytes);
    if let Ok(m) = Manifest::load(&manifest_path)
        && let Component::Wasm { path, .. } = &m.component
    {
        hasher.update(&std::fs::read(dir.join(path)).ok()?);
    }
    Some(*hasher.finalize().as_bytes())
}

/// Starts watching; the task owns the watcher.
pub(crate) fn start(kernel: &Kernel) -> notify::Result<JoinHandle<()>> {
    let root = kernel.home().capsules_dir();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) => {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
            // An overflowed watch queue loses changes: say so (a reload by hand catches up).
            Err(e) => tracing::warn!(error = %e, "the capsule watcher lost events"),
        }
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    let kernel = kernel.clone();
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        let mut pending: HashMap<String, Instant> = HashMap::new();
        loop {
            let next = pending.values().min().copied();
            tokio::select! {
                changed = rx.recv() => {
                    let Some(path) = changed else { return };
                    if let Some(name) = capsule_of(&root, &path) {
                        pending.insert(name, Instant::now() + HOT_RELOAD_DEBOUNCE);
                    }
                }
                () = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    let due: Vec<String> = pending
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in due {
                        pending.remove(&name);
                        let Ok(id) = CapsuleId::new(&name) else { continue };
                        let dir = root.join(&name);
                        let hash = tokio::task::spawn_blocking(move || source_hash(&dir))
                            .await
                            .ok()
                            .flatten();
                        // Unreadable (mid-copy), or what is loaded already (a touch, a
                        // rewrite of the same bytes, an install that just loaded it).
                        if hash.is_none() || hash == kernel.loaded_source(&id) {
                            continue;
                        }
                        reload(&kernel, &id).await;
                    }
                }
            }
            if kernel.is_closing() {
                return;
            }
        }
    }))
}

/// The capsule folder name a changed path under `root` belongs to (hidden folders, such as
/// an install's staging and previous copies, are not capsules).
fn capsule_of(root: &Path, path: &Path) -> Option<String> {
    let name = path.strip_prefix(root).ok()?.components().next()?;
    let name = name.as_os_str().to_str()?;
    (!name.starts_with('.')).then(|| name.to_owned())
}

async fn reload(kernel: &Kernel, id: &CapsuleId) {
    let result = if kernel.registry().info(id).is_some() {
        kernel.reload_because(id, RestartCause::SourceChanged).await
    } else {
        kernel.load(id).await
    };
    match result {
        Ok(_) => tracing::info!(capsule = %id, "reloaded after its files changed"),
        Err(e) => tracing::warn!(capsule = %id, error = %e, "hot reload failed"),
    }
}
