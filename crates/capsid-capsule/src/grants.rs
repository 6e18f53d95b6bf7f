//! What a manifest asks for, as capability grants, and granting it where policy allows.
//!
//! A manifest is a request. [`Trust::Dev`] grants what it requests (the developer's own
//! capsules on their own machine); [`Trust::Granted`] grants nothing and runs the capsule
//! with whatever the operator granted before, so a capsule installed from elsewhere cannot
//! widen its own authority by editing its manifest.

use capsid_capabilities::{Capability, CapabilityStore, Permissions};
use capsid_core::{CapsuleId, Principal};

use crate::error::CapsuleError;
use capsid_manifest::Manifest;

/// Whose word a capsule's requests are taken on when it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Grant everything the manifest requests (development).
    Dev,
    /// Grant nothing; use only capabilities granted earlier by an operator.
    Granted,
}

/// One requested grant: a pattern and the permissions on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The resource pattern (`fs://workspace/notes/**`).
    pub pattern: String,
    /// What it allows.
    pub permissions: Permissions,
}

/// The `kv://` resource of a capsule's own namespace.
pub fn kv_resource(capsule: &CapsuleId) -> String {
    format!("kv://capsule/{capsule}")
}

/// The resource that starting `program` is checked against: `process://exec/<name>` for a
/// bare name (looked up on the fixed search path), `process://exec-path/<path>` for an
/// absolute path (so a bare `usr` and `/usr` never share a grant).
pub fn exec_resource(program: &str) -> String {
    match program.strip_prefix('/') {
        Some(path) => format!("process://exec-path/{path}"),
        None => format!("process://exec/{program}"),
    }
}

/// The resource that starting persistent processes is checked against.
pub fn persistent_resource(capsule: &CapsuleId) -> String {
    format!("process://persistent/{capsule}")
}

/// The resource that lets capsule `capsule`'s programs (and a native capsule's own) reach
/// the network: without it they run in the sandbox's empty network namespace.
pub fn network_resource(capsule: &CapsuleId) -> String {
    format!("process://network/{capsule}")
}

/// The resource calling `tool` of `capsule` is checked against.
pub fn tool_resource(capsule: &CapsuleId, tool: &str) -> String {
    format!("tool://{capsule}/{tool}")
}

/// Whether `tool` can be a tool's name (`[A-Za-z0-9_-]`, 1 to 64 bytes: what manifests
/// allow, and MCP servers' names in upper case too): anything else is no tool, and is
/// answered so before anything is recorded.
pub fn is_tool_name(tool: &str) -> bool {
    (1..=64).contains(&tool.len())
        && tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Everything `manifest` asks for: its KV namespace, its `fs`, `ipc`, `process`, `http` and
/// `tools` lists, and, for a native or MCP capsule, its own program.
pub fn requested(manifest: &Manifest) -> Vec<Request> {
    let caps = &manifest.capabilities;
    let mut out = vec![Request {
        pattern: kv_resource(&manifest.name),
        permissions: Permissions::READ.union(Permissions::WRITE),
    }];
    let programs = caps.process.iter().map(String::as_str);
    let own = manifest
        .component
        .program()
        .and_then(|p| p.command.first().map(String::as_str));
    if caps.process_persistent {
        out.push(Request {
            pattern: persistent_resource(&manifest.name),
            permissions: Permissions::EXEC,
        });
    }
    if caps.uplink {
        out.push(Request {
            pattern: network_resource(&manifest.name),
            permissions: Permissions::EXEC,
        });
    }
    for program in programs.chain(own) {
        let pattern = exec_resource(program);
        if !out.iter().any(|r| r.pattern == pattern) {
            out.push(Request {
                pattern,
                permissions: Permissions::EXEC,
            });
        }
    }
    let groups = [
        (&caps.fs_read, Permissions::READ),
        (&caps.fs_write, Permissions::WRITE),
        (&caps.ipc_publish, Permissions::PUBLISH),
        (&caps.ipc_subscribe, Permissions::SUBSCRIBE),
        // Sending a request to an origin is an action, like starting a program or a tool.
        (&caps.http, Permissions::EXEC),
        (&caps.tools, Permissions::EXEC),
    ];
    for (patterns, permissions) in groups {
        out.extend(patterns.iter().map(|p| Request {
            pattern: p.as_str().to_owned(),
            permissions,
        }));
    }
    out
}

/// A change to a capsule's grants that its manifest asks for under dev trust. Each is
/// recorded on its own before it is made ([`Registry`](crate::Registry) does both).
#[derive(Debug, Clone)]
pub enum GrantChange {
    /// A grant the manifest no longer asks for, to revoke.
    Revoke(Capability),
    /// A grant the manifest asks for and nothing covers yet, issued but not stored.
    Grant(Capability),
}

impl GrantChange {
    /// The capability concerned.
    pub fn capability(&self) -> &Capability {
        match self {
            Self::Revoke(c) | Self::Grant(c) => c,
        }
    }
}

/// What granting `manifest`'s requests to `principal` (limited to the capsule) changes:
/// requests that an unrevoked, unexpiring grant already covers are skipped (so reloading
/// does not pile up tokens), and the capsule's grants the manifest no longer requests are
/// revoked. Nothing is changed here.
pub async fn plan_grants(
    store: &CapabilityStore,
    principal: Principal,
    manifest: &Manifest,
) -> Result<Vec<GrantChange>, CapsuleError> {
    let setup = |e: capsid_capabilities::CapabilityError| CapsuleError::Setup {
        capsule: manifest.name.clone(),
        what: "granting requested capabilities",
        message: e.to_string(),
    };
    let existing = store.list(&principal).await.map_err(setup)?;
    let requests = requested(manifest);
    let mut changes = Vec::new();
    // Under dev trust the manifest is the whole truth for grants scoped to this capsule: what
    // it no longer asks for is revoked, so a narrowed manifest narrows the capsule.
    // Grants a person made by approving an `ask` are not the manifest's: they stay.
    for g in &existing {
        let c = &g.capability;
        let still_asked = requests
            .iter()
            .any(|r| c.pattern.as_str() == r.pattern && c.permissions == r.permissions);
        if !g.revoked
            && c.capsule.as_ref() == Some(&manifest.name)
            && !still_asked
            && g.approval.is_none()
        {
            changes.push(GrantChange::Revoke(c.clone()));
        }
    }
    for request in requests {
        let covered = existing.iter().any(|g| {
            let c = &g.capability;
            !g.revoked
                && !c.single_use
                && c.expires_at.is_none()
                && c.capsule.as_ref() == Some(&manifest.name)
                && c.pattern.as_str() == request.pattern
                && c.permissions.contains(request.permissions)
        });
        if !covered {
            let cap = store
                .issue(
                    principal,
                    Some(manifest.name.clone()),
                    &request.pattern,
                    request.permissions,
                    None,
                    false,
                )
                .map_err(setup)?;
            changes.push(GrantChange::Grant(cap));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_resources_keep_bare_names_and_paths_apart() {
        assert_eq!(exec_resource("git"), "process://exec/git");
        assert_eq!(
            exec_resource("/usr/bin/git"),
            "process://exec-path/usr/bin/git"
        );
    }

    #[test]
    fn a_manifest_requests_its_namespace_and_what_it_lists_nothing_more() {
        let text = r#"
[package]
name = "notes"
version = "1.0.0"
[component]
wasm = "notes.wasm"
[capabilities]
fs_read = ["workspace://notes/**"]
ipc_publish = ["notes.*"]
process = ["git"]
"#;
        let manifest = Manifest::parse(std::path::Path::new("Capsule.toml"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(String, u32)> = requested(&manifest)
            .into_iter()
            .map(|r| (r.pattern, r.permissions.bits()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "kv://capsule/notes".to_owned(),
                    Permissions::READ.union(Permissions::WRITE).bits()
                ),
                ("process://exec/git".to_owned(), Permissions::EXEC.bits()),
                (
                    "fs://workspace/notes/**".to_owned(),
                    Permissions::READ.bits()
                ),
                (
                    "ipc://publish/notes.*".to_owned(),
                    Permissions::PUBLISH.bits()
                ),
            ]
        );
    }
}
