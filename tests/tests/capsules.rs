//! The sample capsules, end to end: real components built from source, on the real engine,
//! against a real audit log, overlay and bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use capsid_capsule::{CapsuleState, LoadKind, LogSource, Trust};
use capsid_integration_tests::{Runtime, capsules_dir, copy_capsule, id};
use capsid_vfs::{Vfs, VfsPath};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_greets_logs_and_knows_who_it_runs_as() {
    let rt = Runtime::new().await;
    let info = rt.load("hello").await;
    assert_eq!(info.state, CapsuleState::Ready);
    assert_eq!(info.tools, ["greet", "whoami", "echo"]);
    assert_eq!(info.load_kind, Some(LoadKind::Compiled));

    let out = rt.call("hello", "greet", json!({ "name": "Ada" })).await;
    assert_eq!(out, json!({ "greeting": "Hello, Ada!" }));
    let out = rt.call("hello", "whoami", json!({})).await;
    assert_eq!(out, json!({ "principal": "system", "capsule": "hello" }));

    let capsule = rt.registry.get(&id("hello")).unwrap();
    let lines = capsule.log().since(0);
    assert!(
        lines
            .iter()
            .any(|l| l.source == LogSource::Guest && l.message == "greeting Ada"),
        "{lines:?}"
    );
    let audit = rt.audit_entries();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "capsule.load" && e.capsule == "hello"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_reports_progress_to_the_caller_watching_it_and_to_no_one_else() {
    let rt = Runtime::new().await;
    rt.load("counter").await;
    let input = r#"{"to":5,"step_ms":1}"#;
    let mut control = capsid_capsule::CallControl::new();
    let progress = control.watch_progress();
    let answer = rt
        .registry
        .call_tool_with(&id("counter"), "count-to", input, &control)
        .await
        .unwrap();
    assert_eq!(answer, r#"{"counted":5}"#);
    let latest = progress.borrow().clone().expect("progress was reported");
    assert_eq!(
        latest,
        capsid_capsule::Progress {
            done: 5,
            total: Some(5),
            message: Some("counted 5".into()),
        }
    );
    // The next call on the same (warm) instance reports to its own caller only.
    let unwatched = rt
        .registry
        .call_tool(&id("counter"), "count-to", r#"{"to":2}"#)
        .await
        .unwrap();
    assert_eq!(unwatched, r#"{"counted":2}"#);
    assert_eq!(progress.borrow().as_ref().map(|p| p.done), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_counts_in_its_namespace_and_survives_a_reload() {
    let rt = Runtime::new().await;
    rt.load("counter").await;
    for expected in 1..=3 {
        let out = rt.call("counter", "increment", json!({})).await;
        assert_eq!(out, json!({ "count": expected }));
    }
    assert_eq!(
        rt.call("counter", "increment", json!({ "by": 5 })).await,
        json!({ "count": 8 })
    );
    let mut calls = Vec::new();
    for _ in 0..8 {
        let registry = &rt.registry;
        calls.push(async move {
            registry
                .call_tool(&id("counter"), "increment", "{}")
                .await
                .unwrap()
        });
    }
    futures_join(calls).await;
    rt.reload("counter").await;
    assert_eq!(
        rt.call("counter", "get", json!({})).await,
        json!({ "count": 16 })
    );
    let writes = rt
        .audit_entries()
        .into_iter()
        .filter(|e| e.action == "kv.cas" && e.decision == "allow" && e.capsule == "counter")
        .count();
    // Twelve increments succeeded; concurrent ones retried, and every attempt is a write.
    assert!(writes >= 12, "every compare-and-swap is audited: {writes}");
}

async fn futures_join<F: std::future::Future>(futs: Vec<F>) {
    // Sequential awaits of futures that were all created first still run one at a time; use
    // a JoinSet-free join to keep them concurrent on this task.
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_write_to_the_overlay_until_commit() {
    let rt = Runtime::new().await;
    rt.load("notes").await;
    rt.call(
        "notes",
        "add",
        json!({ "name": "todo", "text": "buy milk" }),
    )
    .await;
    rt.call(
        "notes",
        "append",
        json!({ "name": "todo", "text": "\nand bread" }),
    )
    .await;
    assert_eq!(
        rt.call("notes", "read", json!({ "name": "todo" })).await,
        json!({ "text": "buy milk\nand bread" })
    );
    assert_eq!(
        rt.call("notes", "list", json!({})).await,
        json!({ "notes": ["todo"] })
    );
    let on_disk = rt.workspace.join("notes").join("todo.md");
    assert!(!on_disk.exists(), "the workspace changes only on commit");
    let path = VfsPath::parse("notes/todo.md").unwrap();
    assert_eq!(
        rt.overlay.read(&path).await.unwrap(),
        b"buy milk\nand bread"
    );
    rt.overlay.commit().await.unwrap();
    assert_eq!(std::fs::read(&on_disk).unwrap(), b"buy milk\nand bread");

    rt.call("notes", "delete", json!({ "name": "todo" })).await;
    assert_eq!(
        rt.call("notes", "list", json!({})).await,
        json!({ "notes": [] })
    );
    let err = rt
        .registry
        .call_tool(&id("notes"), "read", r#"{"name":"todo"}"#)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_republishes_what_it_hears() {
    let rt = Runtime::new().await;
    let mut out = rt.bus.subscribe("echo.out", 16).unwrap();
    rt.load("echo").await;
    rt.bus
        .publish("echo.in", br#"{"n":1}"#.to_vec(), None)
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(30), out.recv())
        .await
        .expect("echo answered")
        .expect("bus open");
    assert_eq!(event.payload, br#"{"n":1}"#);
    assert_eq!(event.source, Some(id("echo")));
    assert_eq!(
        rt.call("echo", "stats", json!({})).await,
        json!({ "echoed": 1 })
    );
    let audit = rt.audit_entries();
    assert!(audit.iter().any(|e| e.action == "ipc.publish"
        && e.resource == "ipc://publish/echo.out"
        && e.decision == "allow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_load_comes_from_the_signed_cache_and_a_bad_cache_is_rebuilt() {
    let rt = Runtime::new().await;
    let first = rt.load("hello").await;
    assert_eq!(first.load_kind, Some(LoadKind::Compiled));
    let cached = rt.engine.cache_path(first.blake3.as_deref().unwrap());
    assert!(cached.is_file());

    rt.registry.unload(&id("hello")).await.unwrap();
    assert_eq!(rt.load("hello").await.load_kind, Some(LoadKind::Cached));

    // A flipped byte breaks the signature: the entry is discarded and compiled again.
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cached, &bytes).unwrap();
    rt.registry.unload(&id("hello")).await.unwrap();
    assert_eq!(rt.load("hello").await.load_kind, Some(LoadKind::Compiled));
    assert_ne!(std::fs::read(&cached).unwrap(), bytes);

    // A validly signed entry under another component's name is refused: the signature covers
    // the name (the wasm's blake3) too.
    let counter = rt.load("counter").await;
    let counter_cache = rt.engine.cache_path(counter.blake3.as_deref().unwrap());
    rt.registry.unload(&id("counter")).await.unwrap();
    std::fs::copy(&cached, &counter_cache).unwrap();
    let again = rt.load("counter").await;
    assert_eq!(again.load_kind, Some(LoadKind::Compiled));
    assert_eq!(
        rt.call("counter", "get", json!({})).await,
        json!({ "count": 0 })
    );
    assert_eq!(
        rt.call("hello", "greet", json!({ "name": "cache" })).await,
        json!({ "greeting": "Hello, cache!" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_component_is_compiled_again() {
    let rt = Runtime::new().await;
    let dir = copy_capsule("hello", rt.home.path());
    let first = rt.registry.load(&dir, Trust::Dev).await.unwrap();
    rt.registry.unload(&id("hello")).await.unwrap();
    // Append a custom section: still a valid component, different bytes.
    let wasm = dir.join("hello.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend_from_slice(&[0x00, 0x06, 0x04, b'n', b'o', b't', b'e', b'!']);
    std::fs::write(&wasm, &bytes).unwrap();
    capsid_integration_tests::sign(&dir);
    let second = rt.registry.load(&dir, Trust::Dev).await.unwrap();
    assert_ne!(first.blake3, second.blake3);
    assert_eq!(second.load_kind, Some(LoadKind::Compiled));
    assert_eq!(
        rt.call("hello", "greet", json!({})).await,
        json!({ "greeting": "Hello, world!" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsules_built_by_xtask_are_all_present() {
    let dir = capsules_dir();
    for name in [
        "hello",
        "counter",
        "notes",
        "echo",
        "escape",
        "spin",
        "hog",
        "snoop",
        "shout",
        "blank",
        "oversize",
        "hollow",
        "runner",
        "sneak",
        "forkbomb",
        "flood",
        "guess",
        "hostcalls",
        "relay",
    ] {
        assert!(
            dir.join(name).join(format!("{name}.wasm")).is_file(),
            "{name} was not built"
        );
        assert!(dir.join(name).join("Capsule.toml").is_file());
    }
}

/// More capsules than the engine has instance slots: every one loads and answers, because an
/// idle capsule's warm instance gives its slot up to any capsule that needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_capsules_than_instance_slots_all_load_and_answer() {
    let rt = Runtime::new().await;
    let count = capsid_core::limits::MAX_LIVE_INSTANCES as usize + 8;
    let copies = rt.home.path().join("many");
    for n in 0..count {
        let name = format!("hello-{n}");
        let dir = copies.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let built = capsid_integration_tests::capsules_dir().join("hello");
        for file in ["hello.wasm", "Capsule.toml"] {
            std::fs::copy(built.join(file), dir.join(file)).unwrap();
        }
        let manifest = dir.join("Capsule.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(
            &manifest,
            text.replacen("name = \"hello\"", &format!("name = \"{name}\""), 1),
        )
        .unwrap();
        capsid_integration_tests::sign(&dir);
        rt.registry
            .load(&dir, capsid_capsule::Trust::Dev)
            .await
            .unwrap_or_else(|e| panic!("loading copy {n} of {count}: {e}"));
    }
    // The first copies' warm instances went to later ones; they instantiate again on demand.
    for n in [0, count / 2, count - 1] {
        let answer = rt
            .call(&format!("hello-{n}"), "greet", json!({ "name": "slot" }))
            .await;
        assert_eq!(answer, json!({ "greeting": "Hello, slot!" }));
    }
    let failed = rt
        .registry
        .list()
        .into_iter()
        .filter(|c| c.state != capsid_capsule::CapsuleState::Ready)
        .count();
    assert_eq!(failed, 0);
    let counts = rt.registry.counts();
    assert_eq!(
        (counts.known, counts.ready, counts.failed),
        (count, count, 0)
    );
    // Every copy runs the one compiled component; it goes when the last copy does.
    assert_eq!(rt.engine.shared_components(), 1);
    for n in 0..count {
        rt.registry
            .unload(&id(&format!("hello-{n}")))
            .await
            .unwrap();
    }
    assert_eq!(rt.engine.shared_components(), 0);
}

/// `(known, ready, failed)` as `status` reads them (kept live), and as a count of `list`.
fn counts_both_ways(rt: &Runtime) -> ((usize, usize, usize), (usize, usize, usize)) {
    let live = rt.registry.counts();
    let list = rt.registry.list();
    let recount = (
        list.len(),
        list.iter()
            .filter(|c| match &c.native {
                Some(n) => !matches!(
                    n.health,
                    capsid_process::Health::Failed { .. } | capsid_process::Health::Stopped
                ),
                None => c.state == CapsuleState::Ready,
            })
            .count(),
        list.iter()
            .filter(|c| match &c.native {
                Some(n) => matches!(n.health, capsid_process::Health::Failed { .. }),
                None => matches!(c.state, CapsuleState::Failed(_)),
            })
            .count(),
    );
    ((live.known, live.ready, live.failed), recount)
}

#[tokio::test]
async fn the_live_counts_follow_every_load_failure_reload_and_unload() {
    let rt = Runtime::new().await;
    let step = |what: &str, expected: (usize, usize, usize)| {
        let (live, recount) = counts_both_ways(&rt);
        assert_eq!(live, recount, "{what}: kept counts vs a recount");
        assert_eq!(live, expected, "{what}");
    };
    step("empty", (0, 0, 0));
    rt.load("hello").await;
    rt.load("counter").await;
    step("two loaded", (2, 2, 0));
    let warped = capsules_dir().join("warped");
    assert!(rt.registry.load(&warped, Trust::Dev).await.is_err());
    step("a load failed", (3, 2, 1));
    rt.call("counter", "refuse-restarts", json!({})).await;
    let dir = rt.registry.info(&id("counter")).unwrap().dir;
    rt.registry.unload(&id("counter")).await.unwrap();
    step("unloaded", (2, 1, 1));
    let restart = capsid_capsule::Restart {
        cause: capsid_capsule::RestartCause::Reload,
        count: 1,
    };
    assert!(
        rt.registry
            .load_restarted(&dir, Trust::Dev, restart)
            .await
            .is_err(),
        "the restart hook refused"
    );
    step("its reload failed", (3, 1, 2));
    rt.reload("hello").await;
    step("hello reloaded", (3, 1, 2));
    rt.registry.unload(&id("warped")).await.unwrap();
    rt.registry.unload(&id("counter")).await.unwrap();
    step("the failed ones unloaded", (1, 1, 0));
    let native = rt.home.path().join("native-true");
    std::fs::create_dir_all(&native).unwrap();
    std::fs::write(
        native.join("Capsule.toml"),
        "[package]\nname = \"native-true\"\nversion = \"1.0.0\"\n[native]\ncommand = [\"sleep\", \"30\"]\n",
    )
    .unwrap();
    capsid_integration_tests::sign(&native);
    rt.registry.load(&native, Trust::Dev).await.unwrap();
    step("a native capsule runs", (2, 2, 0));
    rt.registry.unload(&id("native-true")).await.unwrap();
    step("and is unloaded", (1, 1, 0));
}
