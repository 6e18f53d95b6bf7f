//! Who built a capsule, through the real CLI and daemon: a publisher's key signs, the host
//! trusts it (or only for some names), every load checks it, tampering is refused, removing
//! the key stops its capsules, and a re-install that changes the signer or asks for more
//! needs `--accept`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use capsid_integration_tests::copy_capsule;
use common::Home;
use serde_json::Value;

/// Runs a command that must fail; its stderr.
fn fails(home: &Home, args: &[&str]) -> String {
    let out = home.run(args);
    assert!(
        !out.status.success(),
        "capsid {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A copy of built capsule `from` named `name` under `root`, unsigned.
fn renamed_copy(root: &Path, from: &str, name: &str) -> PathBuf {
    let dir = copy_capsule(from, &root.join(name));
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let renamed = text.replacen(
        &format!("name = \"{from}\""),
        &format!("name = \"{name}\""),
        1,
    );
    assert_ne!(renamed, text);
    std::fs::write(&manifest, renamed).unwrap();
    std::fs::remove_file(dir.join("Capsule.sig")).unwrap();
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The details of the newest audit entry with `action` on `resource`.
fn last_details(home: &Home, action: &str, resource: &str) -> Value {
    let tail = home.json(&["audit", "tail", "-n", "200"]);
    let entry = tail
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == action && e["resource"] == resource)
        .unwrap_or_else(|| panic!("no {action} on {resource} in {tail}"));
    let details = entry["details"].as_str().expect("details are JSON text");
    serde_json::from_str(details).unwrap()
}

#[test]
fn a_publishers_key_is_trusted_for_its_names_and_removing_it_stops_its_capsules() {
    let home = Home::new();
    home.ok(&["start"]);
    let key = home.path.join("acme.key");
    let generated = home.json(&["key", "generate", path(&key)]);
    let public = generated["public_key"].as_str().unwrap().to_owned();
    let again = fails(&home, &["key", "generate", path(&key)]);
    assert!(again.contains("acme.key"), "{again}");

    // Unsigned: refused, saying what to run.
    let plain = renamed_copy(&home.path, "hello", "acme-plain");
    let err = fails(&home, &["capsule", "install", path(&plain)]);
    assert!(
        err.contains("is not signed") && err.contains("capsid capsule sign"),
        "{err}"
    );

    // Signed by a key the host does not trust.
    let dir = renamed_copy(&home.path, "hello", "acme-hello");
    home.ok(&["capsule", "sign", path(&dir), "--key", path(&key)]);
    let err = fails(&home, &["capsule", "install", path(&dir)]);
    assert!(
        err.contains("does not trust") && err.contains(&public),
        "{err}"
    );

    // Trusted, but for other names only.
    home.ok(&["trust", "add", "acme", &public, "--capsules", "other-*"]);
    let err = fails(&home, &["capsule", "install", path(&dir)]);
    assert!(
        err.contains("trusted only for capsules named other-*"),
        "{err}"
    );
    home.ok(&["trust", "rm", "acme"]);
    home.ok(&["trust", "add", "acme", &public, "--capsules", "acme-*"]);
    let listed = home.json(&["trust", "ls"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["runtime", "acme", "samples"]);
    let verified = home.json(&["capsule", "verify", path(&dir)]);
    assert_eq!(verified["signer"]["name"], "acme");

    let installed = home.json(&["capsule", "install", path(&dir)]);
    assert_eq!(installed["signer"]["name"], "acme");
    assert!(home.path.join("capsules/acme-hello/Capsule.sig").is_file());
    let shown = home.ok(&["capsule", "show", "acme-hello"]);
    assert!(
        shown.contains("signed by") && shown.contains("acme (key"),
        "{shown}"
    );
    let load = last_details(&home, "capsule.load", "capsule://acme-hello");
    assert_eq!(load["signer"]["name"], "acme", "{load}");
    let added = last_details(&home, "trust.add", "trust://acme");
    assert_eq!(added["public_key"], public.as_str());

    // The key removed: the next load of what it signed is refused.
    home.ok(&["trust", "rm", "acme"]);
    assert!(last_details(&home, "trust.remove", "trust://acme")["key_id"].is_string());
    let err = fails(&home, &["capsule", "reload", "acme-hello"]);
    assert!(err.contains("does not trust"), "{err}");
    let shown = home.json(&["capsule", "show", "acme-hello"]);
    assert_eq!(shown["state"], "failed", "{shown}");
    home.ok(&["stop"]);
}

#[test]
fn a_changed_component_manifest_or_signature_is_refused_at_load() {
    let home = Home::new();
    home.ok(&["start"]);
    home.install("hello");
    let installed = home.path.join("capsules/hello");
    let sig = installed.join("Capsule.sig");
    let signed = std::fs::read_to_string(&sig).unwrap();

    // The signature file itself edited: one hex digit of the signature flipped.
    let line = signed
        .lines()
        .find(|l| l.starts_with("signature = "))
        .unwrap();
    let value = line
        .strip_prefix("signature = \"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap();
    let first = if value.starts_with('0') { "1" } else { "0" };
    let flipped = format!("signature = \"{first}{}\"", &value[1..]);
    assert_ne!(flipped, line);
    std::fs::write(&sig, signed.replace(line, &flipped)).unwrap();
    let err = fails(&home, &["capsule", "reload", "hello"]);
    assert!(err.contains("is not a valid signature"), "{err}");
    std::fs::write(&sig, &signed).unwrap();
    home.ok(&["capsule", "reload", "hello"]);

    // The component changed behind the signature: caught on the bytes the engine reads.
    let wasm = installed.join("hello.wasm");
    let original = std::fs::read(&wasm).unwrap();
    let mut changed = original.clone();
    changed.extend_from_slice(b"\0\0\0");
    std::fs::write(&wasm, &changed).unwrap();
    let err = fails(&home, &["capsule", "reload", "hello"]);
    assert!(
        err.contains("hello.wasm changed since it was signed"),
        "{err}"
    );
    let err = fails(&home, &["capsule", "verify", path(&installed)]);
    assert!(err.contains("changed since it was signed"), "{err}");
    std::fs::write(&wasm, &original).unwrap();

    // The manifest changed.
    let manifest = installed.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n")).unwrap();
    let err = fails(&home, &["capsule", "load", "hello"]);
    assert!(
        err.contains("Capsule.toml changed since it was signed"),
        "{err}"
    );
    std::fs::write(&manifest, &text).unwrap();
    home.ok(&["capsule", "load", "hello"]);
    home.ok(&["stop"]);
}

#[test]
fn a_reinstall_with_wider_requests_or_another_signer_needs_accept() {
    let home = Home::new();
    home.ok(&["start"]);
    let staging = home.path.join("staging");
    let dir = copy_capsule("notes", &staging);
    let first = home.json(&["capsule", "install", path(&dir)]);
    assert_eq!(first["signer"]["name"], "samples");
    let requests = first["requests"].as_array().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r == "fs://workspace/notes/** write"),
        "{requests:?}"
    );
    let receipt = home.path.join("state/receipts/notes.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&receipt).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Wider: one more path to read. Refused with the difference, then accepted.
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let wider = text.replacen(
        "fs_read = [\"workspace://notes/**\"]",
        "fs_read = [\"workspace://notes/**\", \"workspace://secrets/**\"]",
        1,
    );
    assert_ne!(wider, text);
    std::fs::write(&manifest, wider).unwrap();
    capsid_integration_tests::sign(&dir);
    home.ok(&["capsule", "unload", "notes"]);
    let err = fails(&home, &["capsule", "install", path(&dir)]);
    assert!(
        err.contains("asks for more") && err.contains("fs://workspace/secrets/** read"),
        "{err}"
    );
    assert!(err.contains("--accept"), "{err}");
    let accepted = home.json(&["capsule", "install", path(&dir), "--accept"]);
    assert_eq!(
        accepted["accepted"]["added_requests"],
        serde_json::json!(["fs://workspace/secrets/** read"])
    );

    // The same again: nothing new, no --accept needed.
    home.ok(&["capsule", "unload", "notes"]);
    home.ok(&["capsule", "install", path(&dir)]);

    // Another signer (the runtime key, for a copy the operator reviewed).
    home.ok(&["capsule", "sign", path(&dir)]);
    let signed = last_details(&home, "capsule.sign", "capsule://notes");
    assert!(signed["manifest_blake3"].is_string(), "{signed}");
    home.ok(&["capsule", "unload", "notes"]);
    let err = fails(&home, &["capsule", "install", path(&dir)]);
    assert!(err.contains("the signer changed (was samples"), "{err}");
    let accepted = home.json(&["capsule", "install", path(&dir), "--accept"]);
    assert_eq!(accepted["signer"]["name"], "runtime");
    home.ok(&["stop"]);
}
