//! Capsule.toml: what is accepted, and that every refusal names the file, key and line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use capsid_manifest::{Component, DependencyError, Manifest, discover, load_order};

const FULL: &str = r#"
[package]
name = "notes"
version = "1.2.3-beta.1"
description = "Keeps notes"

[component]
wasm = "notes.wasm"
blake3 = "0000000000000000000000000000000000000000000000000000000000000000"

[capabilities]
fs_read = ["workspace://notes/**"]
fs_write = ["workspace://notes/*.md"]
process = ["git", "/usr/bin/python3"]
process_persistent = true
ipc_publish = ["notes.*"]
ipc_subscribe = ["files.changed"]
kv_quota_bytes = 1048576
uplink = false
tools = ["github/*", "*/read"]

[dependencies]
requires = ["storage-helper"]

[limits]
memory_mb = 128
call_timeout_ms = 2000
max_instances = 4

[[tool]]
name = "add_note"
description = "Adds a note"
input_schema = { type = "object", properties = { text = { type = "string" } }, required = ["text"] }

[[tool]]
name = "list"

[env.NOTES_DIR]
description = "where notes live"
default = "notes"

[env.API_TOKEN]
secret = true
"#;

fn parse(text: &str) -> Result<Manifest, capsid_manifest::ManifestError> {
    Manifest::parse(Path::new("caps/notes/Capsule.toml"), text)
}

#[test]
fn a_complete_manifest_parses() {
    let m = parse(FULL).unwrap();
    assert_eq!(m.name.as_str(), "notes");
    assert_eq!(m.version.to_string(), "1.2.3-beta.1");
    assert!(
        matches!(m.component, Component::Wasm { ref path, blake3: Some(_) } if path == Path::new("notes.wasm"))
    );
    assert_eq!(
        m.capabilities.fs_read[0].as_str(),
        "fs://workspace/notes/**"
    );
    assert_eq!(
        m.capabilities.ipc_publish[0].as_str(),
        "ipc://publish/notes.*"
    );
    assert_eq!(
        m.capabilities.ipc_subscribe[0].as_str(),
        "ipc://subscribe/files.changed"
    );
    assert_eq!(m.capabilities.process, ["git", "/usr/bin/python3"]);
    let tools: Vec<&str> = m
        .capabilities
        .tools
        .iter()
        .map(capsid_capabilities::Pattern::as_str)
        .collect();
    assert_eq!(tools, ["tool://github/*", "tool://*/read"]);
    assert_eq!(m.requires[0].as_str(), "storage-helper");
    assert_eq!(
        (
            m.limits.memory_mb,
            m.limits.call_timeout_ms,
            m.limits.max_instances
        ),
        (128, 2000, 4)
    );
    assert_eq!(m.tools[0].input_schema["required"][0], "text");
    assert_eq!(
        m.tools[1].input_schema,
        serde_json::json!({ "type": "object" })
    );
    assert_eq!(m.env.len(), 2);
    assert!(
        m.env
            .iter()
            .any(|e| e.name == "API_TOKEN" && e.secret && e.default.is_none())
    );
}

#[test]
fn defaults_fill_what_is_left_out() {
    let m = parse(
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\n[native]\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    assert!(
        matches!(m.component, Component::Native(ref p) if p.command == ["/bin/true"] && p.binary_blake3.is_none())
    );
    assert_eq!(m.limits.max_instances, 1);
    assert!(m.capabilities.fs_read.is_empty() && m.requires.is_empty() && m.tools.is_empty());
}

#[test]
fn an_mcp_capsule_is_a_supervised_program_with_a_pin_and_no_declared_tools() {
    let pin = "ab".repeat(32);
    let text = format!(
        "[package]\nname = \"github\"\nversion = \"1.0.0\"\n[mcp]\ncommand = [\"/usr/bin/python3\", \"-m\", \"server\"]\nbinary_blake3 = \"{pin}\"\nmax_restarts = 2\n[env.GITHUB_TOKEN]\nsecret = true\n"
    );
    let m = parse(&text).unwrap();
    let Component::Mcp {
        program,
        startup_timeout_ms,
    } = &m.component
    else {
        panic!("not an [mcp] capsule: {:?}", m.component);
    };
    assert_eq!(program.command, ["/usr/bin/python3", "-m", "server"]);
    assert_eq!(program.binary_blake3.as_deref(), Some(pin.as_str()));
    assert_eq!(program.max_restarts, 2);
    assert_eq!(
        *startup_timeout_ms,
        capsid_core::limits::DEFAULT_MCP_STARTUP_TIMEOUT_MS
    );
    assert_eq!(m.component.program(), Some(program));

    let with_tool = format!("{text}[[tool]]\nname = \"search\"\n");
    let err = parse(&with_tool).unwrap_err();
    assert_eq!(err.key, "tool");
    assert!(err.message.contains("its server lists"), "{err}");

    let bad_pin = text.replace(&pin, "ABC");
    let err = parse(&bad_pin).unwrap_err();
    assert_eq!((err.key.as_str(), err.line), ("mcp.binary_blake3", 6));

    let both = format!("{text}[native]\ncommand = [\"/bin/true\"]\n");
    let err = parse(&both).unwrap_err();
    assert_eq!(err.key, "mcp");
    assert!(err.message.contains("not several"), "{err}");

    let native_timeout = "[package]\nname = \"n\"\nversion = \"1.0.0\"\n[native]\ncommand = [\"/bin/true\"]\nstartup_timeout_ms = 5\n";
    assert_eq!(
        parse(native_timeout).unwrap_err().key,
        "native.startup_timeout_ms"
    );

    let loader = text.replace("[env.GITHUB_TOKEN]", "[env.LD_PRELOAD]");
    let err = parse(&loader).unwrap_err();
    assert_eq!((err.key.as_str(), err.line), ("env", 8));

    let empty = text.replace(
        "command = [\"/usr/bin/python3\", \"-m\", \"server\"]",
        "command = []",
    );
    assert_eq!(parse(&empty).unwrap_err().key, "mcp.command");
}

/// Replaces `from` with `to` in the full manifest and returns the error's (key, line).
fn refused(from: &str, to: &str) -> (String, usize, String) {
    assert!(FULL.contains(from), "{from}");
    let err = parse(&FULL.replacen(from, to, 1)).unwrap_err();
    assert_eq!(err.file, Path::new("caps/notes/Capsule.toml"));
    assert!(
        err.to_string().starts_with("caps/notes/Capsule.toml:"),
        "{err}"
    );
    (err.key, err.line, err.message)
}

fn line_of(needle: &str, text: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn every_refusal_names_key_and_line() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "name = \"notes\"",
            "name = \"Notes\"",
            "package.name",
            "name = \"Notes\"",
        ),
        (
            "version = \"1.2.3-beta.1\"",
            "version = \"1.2\"",
            "package.version",
            "version = \"1.2\"",
        ),
        (
            "wasm = \"notes.wasm\"",
            "wasm = \"../notes.wasm\"",
            "component.wasm",
            "wasm = \"../",
        ),
        (
            "wasm = \"notes.wasm\"",
            "wasm = \"/abs/notes.wasm\"",
            "component.wasm",
            "wasm = \"/abs",
        ),
        (
            "blake3 = \"0000",
            "blake3 = \"XY00",
            "component.blake3",
            "blake3 = \"XY",
        ),
        (
            "fs_read = [\"workspace://notes/**\"]",
            "fs_read = [\"workspace://notes/../..\"]",
            "capabilities.fs_read",
            "fs_read = ",
        ),
        (
            "fs_read = [\"workspace://notes/**\"]",
            "fs_read = [\"/etc/**\"]",
            "capabilities.fs_read",
            "fs_read = ",
        ),
        (
            "process = [\"git\", ",
            "process = [\"../git\", ",
            "capabilities.process",
            "process = [\"../",
        ),
        (
            "ipc_publish = [\"notes.*\"]",
            "ipc_publish = [\"a/b\"]",
            "capabilities.ipc_publish",
            "ipc_publish = [\"a/b",
        ),
        (
            "tools = [\"github/*\", ",
            "tools = [\"github\", ",
            "capabilities.tools",
            "tools = [\"github\"",
        ),
        (
            "tools = [\"github/*\", ",
            "tools = [\"github/a/b\", ",
            "capabilities.tools",
            "tools = [\"github/a",
        ),
        (
            "tools = [\"github/*\", ",
            "tools = [\"git hub/*\", ",
            "capabilities.tools",
            "tools = [\"git hub",
        ),
        (
            "memory_mb = 128",
            "memory_mb = 999999",
            "limits.memory_mb",
            "memory_mb = 999999",
        ),
        (
            "kv_quota_bytes = 1048576",
            "kv_quota_bytes = 0",
            "capabilities.kv_quota_bytes",
            "kv_quota_bytes = 0",
        ),
        (
            "call_timeout_ms = 2000",
            "call_timeout_ms = 0",
            "limits.call_timeout_ms",
            "call_timeout_ms = 0",
        ),
        (
            "name = \"list\"",
            "name = \"add_note\"",
            "tool.name",
            "name = \"add_note\"\n\n[env",
        ),
        (
            "requires = [\"storage-helper\"]",
            "requires = [\"notes\"]",
            "dependencies.requires",
            "requires = [\"notes\"]",
        ),
        (
            "secret = true",
            "secret = true\ndefault = \"hunter2\"",
            "env.API_TOKEN.default",
            "default = \"hunter2\"",
        ),
    ];
    for (from, to, key, marker) in cases {
        let text = FULL.replacen(from, to, 1);
        let (got_key, line, message) = refused(from, to);
        assert_eq!(&got_key, key, "{to}: {message}");
        let marker_first_line = marker.lines().next().unwrap();
        let expected_line = if key == &"tool.name" {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains("name = \"add_note\""))
                .nth(1)
                .unwrap()
                .0
                + 1
        } else {
            line_of(marker_first_line, &text)
        };
        assert_eq!(line, expected_line, "{key}: {message}");
    }
}

#[test]
fn unknown_keys_are_refused_where_they_stand() {
    let text = FULL.replacen("uplink = false", "uplink = false\nnetwork = true", 1);
    let err = parse(&text).unwrap_err();
    assert_eq!(err.line, line_of("network = true", &text), "{err}");
    assert!(err.message.contains("network"), "{err}");
    let text = format!("{FULL}\n[extras]\nx = 1\n");
    let err = parse(&text).unwrap_err();
    assert!(err.message.contains("extras"), "{err}");
    let err = parse("[package]\nname = \"x\"\nversion = \"1.0.0\"\n").unwrap_err();
    assert_eq!(err.key, "component", "{err}");
    let both = format!("{FULL}\n[native]\ncommand = [\"x\"]\n");
    assert_eq!(parse(&both).unwrap_err().key, "component");
    assert!(parse("not toml [").is_err());
}

fn write_capsule(root: &Path, dir: &str, name: &str, requires: &[&str]) {
    let d = root.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    let req = requires
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        d.join("Capsule.toml"),
        format!("[package]\nname = \"{name}\"\nversion = \"1.0.0\"\n[component]\nwasm = \"c.wasm\"\n[dependencies]\nrequires = [{req}]\n"),
    )
    .unwrap();
}

#[test]
fn discovery_keeps_going_past_broken_capsules() {
    let tmp = tempfile::tempdir().unwrap();
    write_capsule(tmp.path(), "a", "alpha", &[]);
    write_capsule(tmp.path(), "b", "beta", &["alpha"]);
    write_capsule(tmp.path(), "dup1", "twin", &[]);
    write_capsule(tmp.path(), "dup2", "twin", &[]);
    std::fs::create_dir_all(tmp.path().join("broken")).unwrap();
    std::fs::write(
        tmp.path().join("broken/Capsule.toml"),
        "[package]\nname = 1\n",
    )
    .unwrap();
    std::fs::create_dir_all(tmp.path().join("not-a-capsule")).unwrap();
    std::fs::write(tmp.path().join("stray-file"), "x").unwrap();
    // What an interrupted install leaves: staging and set-aside copies, never capsules.
    write_capsule(tmp.path(), ".install-alpha-1", "alpha", &[]);
    write_capsule(tmp.path(), ".previous-alpha-2", "alpha", &[]);
    let found = discover(tmp.path()).unwrap();
    let names: Vec<_> = found.manifests.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(found.errors.len(), 3, "{:?}", found.errors);
    assert!(
        found
            .errors
            .iter()
            .any(|e| e.file.ends_with("broken/Capsule.toml") && e.line == 2)
    );
    assert_eq!(
        found
            .errors
            .iter()
            .filter(|e| e.message.contains("twin"))
            .count(),
        2
    );
    assert!(
        discover(&tmp.path().join("missing"))
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
}

#[test]
fn load_order_puts_dependencies_first_and_names_cycles() {
    let tmp = tempfile::tempdir().unwrap();
    write_capsule(tmp.path(), "1", "app", &["lib", "log"]);
    write_capsule(tmp.path(), "2", "lib", &["log"]);
    write_capsule(tmp.path(), "3", "log", &[]);
    write_capsule(tmp.path(), "4", "zed", &[]);
    let found = discover(tmp.path()).unwrap();
    let order: Vec<_> = load_order(&found.manifests)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(order, ["log", "zed", "lib", "app"]);

    let tmp = tempfile::tempdir().unwrap();
    write_capsule(tmp.path(), "1", "a", &["b"]);
    write_capsule(tmp.path(), "2", "b", &["c"]);
    write_capsule(tmp.path(), "3", "c", &["a"]);
    write_capsule(tmp.path(), "4", "free", &[]);
    let err = load_order(&discover(tmp.path()).unwrap().manifests).unwrap_err();
    assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");

    let tmp = tempfile::tempdir().unwrap();
    write_capsule(tmp.path(), "1", "a", &["ghost"]);
    let err = load_order(&discover(tmp.path()).unwrap().manifests).unwrap_err();
    assert!(
        matches!(err, DependencyError::Missing { ref requires, .. } if requires.as_str() == "ghost")
    );
}
