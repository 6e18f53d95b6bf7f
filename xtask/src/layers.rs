//! The layer check: every workspace crate's `capsid-*` dependencies are exactly the edges
//! the layer diagram in `docs/ARCHITECTURE.md` draws, listed here once. A new edge, or one
//! the diagram claims that the code lost, fails `cargo xtask test`, so the map stays true
//! and no crate reaches up a layer.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Each library crate and the workspace crates its `[dependencies]` may and do name.
const EDGES: &[(&str, &[&str])] = &[
    ("capsid-core", &[]),
    ("capsid-crypto", &["capsid-core"]),
    ("capsid-events", &["capsid-core"]),
    ("capsid-storage", &["capsid-core"]),
    (
        "capsid-lattice",
        &[
            "capsid-audit",
            "capsid-core",
            "capsid-crypto",
            "capsid-storage",
        ],
    ),
    ("capsid-vfs", &["capsid-core"]),
    ("capsid-protocol", &["capsid-core"]),
    ("capsid-audit", &["capsid-core", "capsid-crypto"]),
    ("capsid-process", &["capsid-core", "capsid-crypto"]),
    (
        "capsid-capabilities",
        &[
            "capsid-audit",
            "capsid-core",
            "capsid-crypto",
            "capsid-storage",
        ],
    ),
    ("capsid-manifest", &["capsid-capabilities", "capsid-core"]),
    (
        "capsid-signing",
        &["capsid-core", "capsid-crypto", "capsid-manifest"],
    ),
    (
        "capsid-capsule",
        &[
            "capsid-audit",
            "capsid-capabilities",
            "capsid-core",
            "capsid-crypto",
            "capsid-events",
            "capsid-manifest",
            "capsid-process",
            "capsid-signing",
            "capsid-storage",
            "capsid-vfs",
        ],
    ),
    (
        "capsid-kernel",
        &[
            "capsid-audit",
            "capsid-capabilities",
            "capsid-capsule",
            "capsid-core",
            "capsid-crypto",
            "capsid-events",
            "capsid-lattice",
            "capsid-manifest",
            "capsid-process",
            "capsid-protocol",
            "capsid-signing",
            "capsid-storage",
            "capsid-vfs",
        ],
    ),
    ("capsid-mcp", &["capsid-core", "capsid-protocol"]),
    (
        "capsid-cli",
        &[
            "capsid-core",
            "capsid-crypto",
            "capsid-kernel",
            "capsid-mcp",
            "capsid-protocol",
            "capsid-signing",
        ],
    ),
];

/// The `capsid-*` names in the `[dependencies]` table of `manifest` (dev-dependencies are
/// tests' business, not the layering's).
fn workspace_dependencies(manifest: &str) -> Result<BTreeSet<String>> {
    let table: toml::Table = manifest.parse()?;
    Ok(table
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|deps| {
            deps.keys()
                .filter(|k| k.starts_with("capsid-") && k.as_str() != "capsid-integration-tests")
                .cloned()
                .collect()
        })
        .unwrap_or_default())
}

/// What differs between `allowed` and `actual` for `krate`, in one line; `None` when equal.
fn compare(krate: &str, allowed: &[&str], actual: &BTreeSet<String>) -> Option<String> {
    let allowed: BTreeSet<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
    let extra: Vec<_> = actual.difference(&allowed).cloned().collect();
    let missing: Vec<_> = allowed.difference(actual).cloned().collect();
    if extra.is_empty() && missing.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(format!(
            "depends on {} which the layer diagram does not allow",
            extra.join(", ")
        ));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "no longer depends on {} (drop the edge from the diagram)",
            missing.join(", ")
        ));
    }
    Some(format!("{krate}: {}", parts.join("; ")))
}

/// Checks every crate under `crates/` (the bench program excepted: it measures them all).
pub fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for (krate, allowed) in EDGES {
        let path = root.join("crates").join(krate).join("Cargo.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let actual =
            workspace_dependencies(&text).with_context(|| format!("reading {}", path.display()))?;
        problems.extend(compare(krate, allowed, &actual));
    }
    for entry in std::fs::read_dir(root.join("crates")).context("listing crates/")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != "capsid-bench" && !EDGES.iter().any(|(k, _)| *k == name) {
            problems.push(format!(
                "{name}: not in the layer check (add it to xtask/src/layers.rs and the diagram)"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the crates' dependencies and the layer diagram disagree:\n{}",
            problems.join("\n")
        );
    }
    println!(
        "layer check: {} crates point only down the diagram",
        EDGES.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_upward_edge_and_a_lost_edge_are_both_named() {
        let deps = workspace_dependencies(
            "[dependencies]\ncapsid-core.workspace = true\ncapsid-kernel = { path = \"x\" }\n\
             serde = \"1\"\n[dev-dependencies]\ncapsid-capsule.workspace = true\n",
        )
        .unwrap_or_default();
        assert_eq!(
            deps.iter().map(String::as_str).collect::<Vec<_>>(),
            ["capsid-core", "capsid-kernel"]
        );
        let said =
            compare("capsid-vfs", &["capsid-core", "capsid-crypto"], &deps).unwrap_or_default();
        assert!(said.contains("depends on capsid-kernel"), "{said}");
        assert!(
            said.contains("no longer depends on capsid-crypto"),
            "{said}"
        );
        assert_eq!(
            compare("capsid-vfs", &["capsid-core", "capsid-kernel"], &deps),
            None
        );
    }
}
