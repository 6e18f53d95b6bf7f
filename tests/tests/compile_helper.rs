//! Compiling in a helper process (`CompileIn::Helper`): the component it compiles runs and
//! is cached like one compiled in the host; a component it refuses is refused with its
//! reason; a helper that fails, dies or hangs is a clear error, never a panic; no more
//! compile at once than the limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// `CompileHelper::new` is `unsafe`: what a helper answers with status 0 is loaded as code.
// The real helper here is capsid's own; the others never exit with status 0.
#![allow(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use capsid_capsule::{CapsuleError, CompileHelper, CompileIn, LoadKind, Trust};
use capsid_integration_tests::{Runtime, copy_capsule, id};
use serde_json::json;

const HELPER: &str = env!("CARGO_BIN_EXE_compile-helper");

/// The helper `program args…`, which never answers with status 0.
fn failing(program: &str, args: &[&str]) -> CompileHelper {
    // SAFETY: see the file's header; nothing such a helper writes is adopted.
    let helper = unsafe { CompileHelper::new(program) };
    args.iter().fold(helper, |h, a| h.arg(*a))
}

/// This build's own helper, `tests/src/bin/compile-helper.rs`.
fn capsids() -> CompileHelper {
    // SAFETY: its `main` is `serve_compile_helper` of this build.
    unsafe { CompileHelper::new(HELPER) }
}

async fn runtime_with(helper: CompileHelper) -> Runtime {
    Runtime::with_compiler(CompileIn::Helper(helper)).await
}

/// Loads a copy of `hello` through `rt` and returns the error its compile gave.
async fn load_error(rt: &Runtime) -> CapsuleError {
    let dir = copy_capsule("hello", &rt.home.path().join("copy"));
    let err = rt.registry.load(&dir, Trust::Dev).await.unwrap_err();
    assert!(err.to_string().starts_with("capsule hello:"), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_compiled_by_the_helper_runs_and_comes_back_from_the_cache() {
    let rt = runtime_with(capsids()).await;
    let first = rt.load("hello").await;
    assert_eq!(first.load_kind, Some(LoadKind::Compiled));
    assert!(
        rt.engine
            .cache_path(first.blake3.as_deref().unwrap())
            .is_file()
    );
    assert_eq!(
        rt.call("hello", "greet", json!({ "name": "helper" })).await,
        json!({ "greeting": "Hello, helper!" })
    );
    // Unloaded, nothing shares its code any more: the next load reads the signed cache
    // entry the helper's artifact was written to.
    rt.registry.unload(&id("hello")).await.unwrap();
    assert_eq!(rt.load("hello").await.load_kind, Some(LoadKind::Cached));
    assert_eq!(
        rt.call("hello", "greet", json!({ "name": "cache" })).await,
        json!({ "greeting": "Hello, cache!" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_component_is_refused_by_the_helper_with_its_reason() {
    let rt = runtime_with(capsids()).await;
    let dir = copy_capsule("hello", &rt.home.path().join("garbage"));
    std::fs::write(dir.join("hello.wasm"), b"\0asm but not really").unwrap();
    capsid_integration_tests::sign(&dir);
    let err = rt.registry.load(&dir, Trust::Dev).await.unwrap_err();
    let CapsuleError::InvalidComponent { reason, .. } = &err else {
        panic!("expected an invalid component, got {err:?}");
    };
    // wasmtime's own words, carried over from the helper's stderr.
    assert!(
        reason.contains("failed to parse WebAssembly module"),
        "{reason}"
    );
    assert!(
        !rt.engine
            .cache_path(&blake3::hash(b"\0asm but not really").to_hex())
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_that_fails_says_so_with_its_status_and_message() {
    let rt = runtime_with(failing("/bin/sh", &["-c", "echo no room >&2; exit 7"])).await;
    let err = load_error(&rt).await;
    assert!(matches!(err, CapsuleError::Compile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("exit status 7") && text.contains("no room"),
        "{text}"
    );

    let rt = runtime_with(failing("/nonexistent/compile-helper", &[])).await;
    let text = load_error(&rt).await.to_string();
    assert!(
        text.contains("cannot start the compile helper /nonexistent/compile-helper"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_killed_by_a_signal_is_named_as_such() {
    let rt = runtime_with(failing("/bin/sh", &["-c", "kill -9 $$"])).await;
    let text = load_error(&rt).await.to_string();
    assert!(text.contains("was killed by signal 9"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_past_its_time_is_killed_and_the_load_fails() {
    // `sleep` adds its arguments up: the second is a marker to find this helper by in /proc.
    let marker = format!("0.{}", std::process::id());
    let helper = failing("/bin/sleep", &["60", &marker]).timeout(Duration::from_millis(300));
    let rt = runtime_with(helper).await;
    let started = Instant::now();
    let text = load_error(&rt).await.to_string();
    assert!(
        text.contains("took longer than 300ms and was killed"),
        "{text}"
    );
    // Correctness bound, not a speed figure: the load must not wait for the helper's 60 s.
    assert!(started.elapsed() < Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_with_argument(&marker) {
        assert!(
            Instant::now() < deadline,
            "the hung helper is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a live (not zombie) process has `marker` among its arguments.
fn running_with_argument(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let dir = entry.path();
        let has_marker = std::fs::read(dir.join("cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == marker.as_bytes()));
        has_marker && !is_zombie(&dir)
    })
}

fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_components_compile_at_once_than_the_limit_however_many_load() {
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path().display();
    // Each helper notes how many were compiling when it began, takes a moment, and fails.
    let script = format!(
        "/bin/touch {m}/now-$$; /bin/ls {m} | /bin/grep -c '^now-' > {m}/seen-$$; \
         /bin/sleep 0.3; /bin/rm {m}/now-$$; echo refused >&2; exit 1"
    );
    let rt = runtime_with(failing("/bin/sh", &["-c", &script])).await;
    let files: Vec<std::path::PathBuf> = (0..6)
        .map(|i| {
            let file = rt.home.path().join(format!("c{i}.wasm"));
            std::fs::write(&file, format!("component {i}")).unwrap();
            file
        })
        .collect();
    let name = id("c");
    let loads = files.iter().map(|f| rt.engine.load(&name, f, None));
    for result in futures_util::future::join_all(loads).await {
        assert!(
            matches!(result, Err(CapsuleError::Compile { .. })),
            "{:?}",
            result.err()
        );
    }
    let seen: Vec<usize> = std::fs::read_dir(marks.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("seen-")
        })
        .map(|p| std::fs::read_to_string(p).unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(seen.len(), 6, "every component was compiled: {seen:?}");
    assert!(
        seen.iter()
            .all(|&n| (1..=capsid_core::limits::MAX_CONCURRENT_COMPILES).contains(&n)),
        "{seen:?}"
    );
}
