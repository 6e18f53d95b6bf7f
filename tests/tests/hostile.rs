//! Hostile capsules are contained: each is refused with the right error, its denials are in
//! the audit log, and the runtime keeps serving the others afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use capsid_capabilities::Permissions;
use capsid_capsule::{CallControl, CapsuleError, CapsuleState, GuestError, Trust};
use capsid_integration_tests::{Runtime, copy_capsule, id};
use serde_json::{Value, json};

/// Fails (rather than hangs) if a containment mechanism does not fire.
const PATIENCE: Duration = Duration::from_mins(1);

async fn still_serving(rt: &Runtime) {
    if rt.registry.get(&id("hello")).is_err() {
        rt.load("hello").await;
    }
    assert_eq!(
        rt.call("hello", "greet", json!({ "name": "after" })).await,
        json!({ "greeting": "Hello, after!" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_cannot_leave_its_folder() {
    let rt = Runtime::new().await;
    let ws = &rt.workspace;
    std::fs::create_dir_all(ws.join("sandbox")).unwrap();
    std::fs::create_dir_all(ws.join("outside")).unwrap();
    std::fs::write(ws.join("sandbox/own.txt"), "mine").unwrap();
    std::fs::write(ws.join("outside/secret.txt"), "secret").unwrap();
    let beyond = rt.home.path().join("beyond");
    std::fs::create_dir_all(&beyond).unwrap();
    std::fs::write(beyond.join("secret.txt"), "far secret").unwrap();
    std::os::unix::fs::symlink(&beyond, ws.join("sandbox/link")).unwrap();

    rt.load("escape").await;
    let out = rt.call("escape", "probe", json!({})).await;
    let outcome = |k: &str| {
        out[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing: {out}"))
    };
    assert_eq!(outcome("read-own"), "ok", "{out}");
    for attack in [
        "read-absolute",
        "read-dotdot",
        "read-inner-dotdot",
        "read-dot",
        "read-double-slash",
        "read-nul",
        "read-backslash",
        "read-percent",
        "read-other-folder",
        "list-root",
        "stat-outside",
        "read-symlink-out",
        "write-symlink-out",
        "write-outside",
        "rename-out",
        "remove-outside",
        "mkdir-outside",
    ] {
        assert_eq!(outcome(attack), "denied", "{attack}: {out}");
    }
    assert_eq!(outcome("wasi-read"), "refused", "{out}");

    assert_eq!(
        std::fs::read_to_string(ws.join("outside/secret.txt")).unwrap(),
        "secret"
    );
    assert!(!beyond.join("pwned.txt").exists());
    rt.overlay.commit().await.unwrap();
    assert!(!beyond.join("pwned.txt").exists());
    assert!(!ws.join("outside/pwned.txt").exists());
    assert!(ws.join("sandbox/own.txt").exists());

    let denials: Vec<_> = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.capsule == "escape" && e.decision == "deny")
        .collect();
    for (action, resource) in [
        ("fs.read", "fs://workspace//etc/passwd"),
        ("fs.read", "fs://workspace/outside/secret.txt"),
        ("fs.read", "fs://workspace/sandbox/link/secret.txt"),
        ("fs.write", "fs://workspace/outside/pwned.txt"),
    ] {
        assert!(
            denials
                .iter()
                .any(|e| e.action == action && e.resource == resource),
            "no {action} denial of {resource} in {denials:#?}"
        );
    }
    still_serving(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_is_stopped_by_its_deadline_and_fails_alone() {
    let rt = Runtime::new().await;
    rt.load("hello").await;
    rt.load("spin").await;
    let err = tokio::time::timeout(PATIENCE, rt.registry.call_tool(&id("spin"), "spin", "{}"))
        .await
        .expect("the deadline fired")
        .unwrap_err();
    assert!(
        matches!(err, CapsuleError::Timeout { ref capsule, timeout_ms: 200 } if capsule.as_str() == "spin"),
        "{err:?}"
    );
    let info = rt.registry.info(&id("spin")).unwrap();
    assert!(matches!(info.state, CapsuleState::Failed(_)), "{info:?}");
    let again = rt.registry.call_tool(&id("spin"), "spin", "{}").await;
    assert!(
        matches!(again, Err(CapsuleError::NotReady { .. })),
        "{again:?}"
    );
    still_serving(&rt).await;
    assert!(
        rt.audit_entries()
            .iter()
            .any(|e| e.capsule == "spin" && e.action == "capsule.failed")
    );

    rt.reload("spin").await;
    assert_eq!(
        rt.registry.info(&id("spin")).unwrap().state,
        CapsuleState::Ready
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_spin_stops_at_once_and_its_capsule_stays_ready() {
    let rt = Runtime::new().await;
    rt.load("hello").await;
    // The deadline far away: only the cancellation can stop it.
    let dir = copy_capsule("spin", &rt.home.path().join("edited"));
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let patient = text.replace("call_timeout_ms = 200", "call_timeout_ms = 60000");
    std::fs::write(&manifest, patient).unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let control = CallControl::new();
    let canceller = control.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        canceller.cancel();
    });
    let spin = id("spin");
    let call = rt.registry.call_tool_with(&spin, "spin", "{}", &control);
    let err = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the cancellation fired")
        .unwrap_err();
    assert!(
        matches!(err, CapsuleError::Cancelled { ref capsule } if capsule.as_str() == "spin"),
        "{err:?}"
    );
    assert_eq!(
        rt.registry.info(&id("spin")).unwrap().state,
        CapsuleState::Ready
    );
    assert!(
        !rt.audit_entries()
            .iter()
            .any(|e| e.capsule == "spin" && e.action == "capsule.failed"),
        "a cancelled call is not a failure"
    );
    // A call cancelled before it starts never runs, not even a quick one with an effect.
    rt.load("counter").await;
    let gave_up = CallControl::new();
    gave_up.cancel();
    let counter = id("counter");
    let not_counted = rt
        .registry
        .call_tool_with(&counter, "increment", "{}", &gave_up)
        .await;
    assert!(
        matches!(not_counted, Err(CapsuleError::Cancelled { .. })),
        "{not_counted:?}"
    );
    assert_eq!(
        rt.call("counter", "get", json!({})).await,
        json!({ "count": 0 })
    );
    // Nor does one that waits for an instance.
    let cancelled_early = CallControl::new();
    cancelled_early.cancel();
    let refused = rt
        .registry
        .call_tool_with(&id("spin"), "spin", "{}", &cancelled_early)
        .await;
    assert!(
        matches!(refused, Err(CapsuleError::Cancelled { .. })),
        "{refused:?}"
    );
    still_serving(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hog_hits_its_memory_limit() {
    let rt = Runtime::new().await;
    rt.load("hog").await;
    let err = tokio::time::timeout(PATIENCE, rt.registry.call_tool(&id("hog"), "hog", "{}"))
        .await
        .expect("the limit fired")
        .unwrap_err();
    assert!(
        matches!(err, CapsuleError::MemoryLimit { memory_mb: 16, .. }),
        "{err:?}"
    );
    assert!(matches!(
        rt.registry.info(&id("hog")).unwrap().state,
        CapsuleState::Failed(_)
    ));
    still_serving(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snoop_sees_only_its_own_keys() {
    let rt = Runtime::new().await;
    rt.load("counter").await;
    rt.call("counter", "increment", json!({ "by": 42 })).await;
    rt.load("snoop").await;
    let out = rt.call("snoop", "snoop", json!({})).await;
    for (probe, seen) in out.as_object().unwrap() {
        assert!(
            seen.get("found").is_none(),
            "{probe} found something: {seen}"
        );
    }
    assert_eq!(out["long"], json!("invalid"));
    assert_eq!(out["empty"], json!("invalid"));
    assert_eq!(out["list-all"], json!([b"mine"]));
    assert_eq!(out["list-header"], json!([]));
    assert_eq!(
        rt.call("counter", "get", json!({})).await,
        json!({ "count": 42 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shout_cannot_publish_where_it_was_not_granted() {
    let rt = Runtime::new().await;
    let mut admin = rt.bus.subscribe("admin.*", 16).unwrap();
    let mut ok = rt.bus.subscribe("shout.ok", 16).unwrap();
    rt.load("shout").await;
    let out = rt.call("shout", "shout", json!({})).await;
    assert_eq!(
        out,
        json!({ "granted": "ok", "forbidden": "denied", "wildcard": "invalid", "invalid": "invalid" })
    );
    assert!(ok.try_recv().is_some());
    assert!(
        admin.try_recv().is_none(),
        "a forbidden event was delivered"
    );
    assert!(rt.audit_entries().iter().any(|e| e.capsule == "shout"
        && e.action == "ipc.publish"
        && e.resource == "ipc://publish/admin.alerts"
        && e.decision == "deny"));
    still_serving(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_for_another_world_exporting_nothing_or_a_warped_lifecycle_are_refused_by_name()
{
    let rt = Runtime::new().await;
    for name in ["blank", "hollow", "warped"] {
        let dir = capsid_integration_tests::capsules_dir().join(name);
        let err = rt.registry.load(&dir, Trust::Dev).await.unwrap_err();
        assert!(
            matches!(err, CapsuleError::WrongWorld { ref capsule, .. } if capsule.as_str() == name),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("capsule {name}")),
            "{err}"
        );
        if name == "warped" {
            // Its guest is right: what is refused is `restart`'s signature.
            assert!(err.to_string().contains("type mismatch"), "{err}");
        }
        let info = rt.registry.info(&id(name)).unwrap();
        assert!(matches!(info.state, CapsuleState::Failed(_)));
    }
    still_serving(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_and_bad_calls_are_typed_errors_naming_the_capsule() {
    let rt = Runtime::new().await;

    let garbage = copy_capsule("hello", &rt.home.path().join("garbage"));
    std::fs::write(garbage.join("hello.wasm"), b"\0asm but not really").unwrap();
    capsid_integration_tests::sign(&garbage);
    let err = rt.registry.load(&garbage, Trust::Dev).await.unwrap_err();
    assert!(
        matches!(err, CapsuleError::InvalidComponent { .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("capsule hello:"), "{err}");
    rt.registry.unload(&id("hello")).await.unwrap();

    let pinned = copy_capsule("hello", &rt.home.path().join("pinned"));
    let manifest = pinned.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "wasm = \"hello.wasm\"",
        &format!("wasm = \"hello.wasm\"\nblake3 = \"{}\"", "0".repeat(64)),
    );
    std::fs::write(&manifest, text).unwrap();
    // Signed as pinned (a publisher signing what the manifest says): the engine finds the
    // component is not the one signed.
    let source = std::fs::read(&manifest).unwrap();
    let signature = capsid_signing::CapsuleSignature::sign(
        &capsid_integration_tests::samples_key(),
        "hello",
        "0.1.0",
        capsid_crypto::Digest(*blake3::hash(&source).as_bytes()),
        Some(capsid_crypto::Digest([0; 32])),
    );
    std::fs::write(pinned.join("Capsule.sig"), signature.to_text().unwrap()).unwrap();
    let err = rt.registry.load(&pinned, Trust::Dev).await.unwrap_err();
    assert!(
        matches!(&err, CapsuleError::Signature(e) if matches!(**e, capsid_signing::SigningError::Tampered { .. })),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("capsule hello:"), "{err}");
    assert!(err.to_string().contains("hello.wasm"), "{err}");
    rt.registry.unload(&id("hello")).await.unwrap();

    let native = rt.home.path().join("native");
    std::fs::create_dir_all(&native).unwrap();
    std::fs::write(
        native.join("Capsule.toml"),
        "[package]\nname = \"nat\"\nversion = \"1.0.0\"\n[native]\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    capsid_integration_tests::sign(&native);
    rt.registry.load(&native, Trust::Dev).await.unwrap();
    let err = rt
        .registry
        .call_tool(&id("nat"), "anything", "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, CapsuleError::NotWasm(_)), "{err:?}");
    assert!(err.to_string().starts_with("capsule nat:"), "{err}");

    rt.load("hello").await;
    let err = rt
        .registry
        .call_tool(&id("hello"), "nope", "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, CapsuleError::UnknownTool { .. }), "{err:?}");
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(2 << 20));
    let err = rt
        .registry
        .call_tool(&id("hello"), "greet", &huge)
        .await
        .unwrap_err();
    assert!(matches!(err, CapsuleError::TooBig { .. }), "{err:?}");
    let err = rt
        .registry
        .call_tool(&id("hello"), "greet", "not json")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CapsuleError::Guest {
                error: GuestError::Invalid(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        rt.registry.info(&id("hello")).unwrap().state,
        CapsuleState::Ready,
        "a guest error is an answer, not a failure"
    );
    still_serving(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trust_nothing_is_granted_and_revocation_is_immediate() {
    let rt = Runtime::new().await;
    rt.registry
        .load(
            &capsid_integration_tests::capsules_dir().join("notes"),
            Trust::Granted,
        )
        .await
        .unwrap();
    assert!(
        rt.caps.list(&rt.principal).await.unwrap().is_empty(),
        "a manifest under operator trust grants nothing"
    );
    let err = rt
        .registry
        .call_tool(&id("notes"), "add", r#"{"name":"a","text":"b"}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CapsuleError::Guest {
                error: GuestError::Denied,
                ..
            }
        ),
        "{err:?}"
    );
    rt.registry.unload(&id("notes")).await.unwrap();

    rt.load("notes").await;
    rt.call("notes", "add", json!({ "name": "a", "text": "b" }))
        .await;
    for grant in rt.caps.list(&rt.principal).await.unwrap() {
        if grant.capability.permissions.contains(Permissions::WRITE)
            && grant.capability.pattern.as_str().starts_with("fs://")
        {
            rt.caps.revoke(grant.capability.id).await.unwrap();
        }
    }
    let err = rt
        .registry
        .call_tool(&id("notes"), "add", r#"{"name":"c","text":"d"}"#)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CapsuleError::Guest {
                error: GuestError::Denied,
                ..
            }
        ),
        "{err:?}"
    );
    let read: Value = serde_json::from_str(
        &rt.registry
            .call_tool(&id("notes"), "read", r#"{"name":"a"}"#)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(read, json!({ "text": "b" }), "reads were not revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_inputs_to_every_host_call_are_refused_and_write_nothing() {
    let rt = Runtime::new().await;
    std::fs::create_dir_all(rt.workspace.join("sandbox")).unwrap();
    let mut big = rt.bus.subscribe("big.topic", 4).unwrap();
    rt.load("oversize").await;
    let out = rt.call("oversize", "probe", json!({})).await;
    for probe in [
        "kv-key",
        "kv-value",
        "kv-list-zero",
        "kv-list-many",
        "fs-write",
        "fs-append",
        "ipc-payload",
        "ipc-topic",
        "random",
    ] {
        assert_eq!(out[probe], json!("invalid"), "{probe}: {out}");
    }
    assert_eq!(out["kv-quota"], json!("quota-exceeded"), "{out}");
    assert_eq!(out["kv-unchanged"], json!(true), "{out}");
    assert!(big.try_recv().is_none());
    assert!(
        rt.overlay.diff().await.unwrap().is_empty(),
        "nothing was written"
    );
    let capsule = rt.registry.get(&id("oversize")).unwrap();
    let long = capsule
        .log()
        .since(0)
        .into_iter()
        .find(|l| l.message.starts_with("xxx"))
        .expect("the long line was logged");
    assert_eq!(long.message.len(), 16 * 1024, "cut to the line limit");
    still_serving(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_capsules_do_not_stall_the_others() {
    let rt = Runtime::new().await;
    // Two instances spinning for up to 3 s: as many as there are worker threads.
    let dir = copy_capsule("spin", rt.home.path());
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "call_timeout_ms = 200",
        "call_timeout_ms = 3000\nmax_instances = 2",
    );
    std::fs::write(&manifest, text).unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    rt.load("hello").await;
    let registry = &rt.registry;
    let (spin, hello) = (id("spin"), id("hello"));
    let spins = async {
        tokio::join!(
            registry.call_tool(&spin, "spin", "{}"),
            registry.call_tool(&spin, "spin", "{}")
        )
    };
    let greet = async {
        // Let both spins start first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = registry.call_tool(&hello, "echo", "{}").await;
        (out, std::time::Instant::now())
    };
    let ((a, b), (out, greeted_at)) = tokio::join!(spins, greet);
    let spins_done = std::time::Instant::now();
    assert_eq!(out.unwrap(), "{}");
    assert!(a.is_err() && b.is_err(), "both spins hit their deadline");
    assert!(
        greeted_at + Duration::from_millis(500) < spins_done,
        "hello answered while the spins were still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_removal_needs_the_whole_tree_granted() {
    let rt = Runtime::new().await;
    let ws = &rt.workspace;
    std::fs::create_dir_all(ws.join("notes/sub")).unwrap();
    std::fs::write(ws.join("notes/a.md"), "a").unwrap();
    std::fs::write(ws.join("notes/sub/deep.txt"), "deep").unwrap();
    let dir = copy_capsule("notes", rt.home.path());
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "fs_write = [\"workspace://notes/**\"]",
        "fs_write = [\"workspace://notes\", \"workspace://notes/*.md\"]",
    );
    std::fs::write(&manifest, text).unwrap();
    capsid_integration_tests::sign(&dir);
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let err = rt
        .registry
        .call_tool(&id("notes"), "tidy", "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CapsuleError::Guest {
                error: GuestError::Denied,
                ..
            }
        ),
        "{err:?}"
    );
    rt.overlay.commit().await.unwrap();
    assert!(
        ws.join("notes/sub/deep.txt").exists(),
        "nothing was removed"
    );
    assert!(
        rt.audit_entries()
            .iter()
            .any(|e| e.action == "fs.remove-dir"
                && e.resource == "fs://workspace/notes/sub"
                && e.decision == "deny")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_manifest_narrows_the_grants_on_reload() {
    let rt = Runtime::new().await;
    let dir = copy_capsule("echo", rt.home.path());
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let live = |rt: &Runtime| {
        let caps = rt.caps.clone();
        let principal = rt.principal;
        async move {
            caps.list(&principal)
                .await
                .unwrap()
                .into_iter()
                .filter(|g| !g.revoked)
                .map(|g| g.capability.pattern.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert!(
        live(&rt)
            .await
            .contains(&"ipc://publish/echo.out".to_owned())
    );
    let manifest = dir.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("ipc_publish = [\"echo.out\"]\n", "");
    std::fs::write(&manifest, text).unwrap();
    capsid_integration_tests::sign(&dir);
    rt.reload("echo").await;
    let after = live(&rt).await;
    assert!(
        !after.contains(&"ipc://publish/echo.out".to_owned()),
        "{after:?}"
    );
    assert!(
        after.contains(&"ipc://subscribe/echo.in".to_owned()),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_subscription_is_not_made_and_floods_nothing() {
    let rt = Runtime::new().await;
    rt.registry
        .load(
            &capsid_integration_tests::capsules_dir().join("echo"),
            Trust::Granted,
        )
        .await
        .unwrap();
    assert!(
        rt.caps.list(&rt.principal).await.unwrap().is_empty(),
        "nothing granted"
    );
    let mut out = rt.bus.subscribe("echo.out", 16).unwrap();
    for _ in 0..50 {
        rt.bus.publish("echo.in", b"{}".to_vec(), None).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(out.try_recv().is_none());
    let denials = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.action == "ipc.deliver")
        .count();
    assert_eq!(
        denials, 0,
        "no record per event for a pattern that was never subscribed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_refused_at_link_time_is_granted_nothing() {
    let rt = Runtime::new().await;
    // blank compiles, but exports nothing of our world: refused when its exports are checked.
    let dir = capsid_integration_tests::capsules_dir().join("blank");
    rt.registry.load(&dir, Trust::Dev).await.unwrap_err();
    let grants = rt.caps.list(&rt.principal).await.unwrap();
    assert!(
        grants.iter().all(|g| g
            .capability
            .capsule
            .as_ref()
            .map(capsid_core::CapsuleId::as_str)
            != Some("blank")),
        "{grants:?}"
    );
    // A capsule that loads gets each grant its manifest asks for recorded on its own.
    rt.load("hello").await;
    let granted = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.capsule == "hello" && e.action == capsid_audit::action::CAP_GRANT_MANIFEST)
        .count();
    let held = rt
        .caps
        .list(&rt.principal)
        .await
        .unwrap()
        .iter()
        .filter(|g| {
            g.capability
                .capsule
                .as_ref()
                .map(capsid_core::CapsuleId::as_str)
                == Some("hello")
        })
        .count();
    assert!(
        granted > 0 && granted == held,
        "{granted} recorded, {held} held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_outlives_a_load_that_failed() {
    let rt = Runtime::new().await;
    let dir = capsid_integration_tests::capsules_dir().join("leaky");
    let err = rt.registry.load(&dir, Trust::Dev).await.unwrap_err();
    assert!(err.to_string().contains("failing the load"), "{err}");
    let leaked = |p: &capsid_integration_tests::LiveProcess| {
        p.cmdline.split(|b| *b == 0).any(|arg| arg == b"4242")
    };
    let begun = std::time::Instant::now();
    while capsid_integration_tests::live_processes()
        .iter()
        .any(leaked)
        && begun.elapsed() < std::time::Duration::from_secs(10)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !capsid_integration_tests::live_processes()
            .iter()
            .any(leaked),
        "the sleep started by init is gone"
    );
    let running = rt.registry.processes().list_all();
    let live = running.iter().filter(|(_, s)| s.exit.is_none()).count();
    assert_eq!(live, 0, "no persistent process of leaky still runs");
}
