//! The kernel as a library: boot over a real home (SurrealKV, audit log, overlay), the
//! `capsules.loaded` event, a tampered audit log refused or quarantined, install, failed
//! capsules reloaded with backoff up to a cap, hot reload only on a real change, the
//! `restart` hook told why at each reload, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use capsid_capsule::CapsuleState;
use capsid_events::EventBus;
use capsid_integration_tests::{
    PrivateHome, capsules_dir, copy_capsule, id, log_files, tamper_leaving_wal,
};
use capsid_kernel::{
    CAPSULES_LOADED_TOPIC, HEALTH_FAILED_TOPIC, HEALTH_GAVE_UP_TOPIC, HealthConfig, Kernel,
    KernelConfig, KernelError, TamperPolicy,
};
use serde_json::Value;

fn dev_config() -> KernelConfig {
    KernelConfig {
        dev: true,
        hot_reload: false,
        ..KernelConfig::default()
    }
}

async fn boot(home: &Path, config: KernelConfig) -> Kernel {
    Kernel::builder()
        .home(home)
        .config(config)
        .build()
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_refuses_extra_tls_roots_it_cannot_read_naming_the_file() {
    let home = PrivateHome::new();
    let missing = home.path().join("no-such-ca.pem");
    let mut config = dev_config();
    config.http.extra_roots = vec![missing.clone()];
    let err = Kernel::builder()
        .home(home.path())
        .config(config)
        .build()
        .await
        .expect_err("unreadable roots");
    let text = err.to_string();
    assert!(
        text.contains("extra_roots") && text.contains(&missing.display().to_string()),
        "{text}"
    );
}

fn install_copy(home: &Path, name: &str) {
    let capsules = home.join("capsules");
    std::fs::create_dir_all(&capsules).unwrap();
    copy_capsule(name, &capsules);
}

/// Audit actions recorded so far, in order.
fn actions(kernel: &Kernel) -> Vec<String> {
    capsid_audit::tail(kernel.audit().path(), 100_000)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_loads_installed_capsules_and_announces_it() {
    let home = PrivateHome::new();
    for name in ["hello", "counter"] {
        install_copy(home.path(), name);
    }
    let bus = EventBus::new();
    let mut loaded = bus.subscribe(CAPSULES_LOADED_TOPIC, 4).unwrap();
    let kernel = Kernel::builder()
        .home(home.path())
        .config(dev_config())
        .bus(bus)
        .build()
        .await
        .unwrap();
    let event = loaded.try_recv().expect("capsules.loaded was published");
    let report: Value = serde_json::from_slice(&event.payload).unwrap();
    let mut names: Vec<&str> = report["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["counter", "hello"]);
    let out = kernel
        .call_tool(&id("hello"), "greet", r#"{"name":"kernel"}"#)
        .await
        .unwrap();
    assert!(out.contains("kernel"), "{out}");
    let status = kernel.status();
    assert_eq!((status.capsules, status.ready), (2, 2));
    assert!(actions(&kernel).contains(&"kernel.boot".to_owned()));
    kernel.shutdown().await;
    assert!(matches!(
        kernel.call_tool(&id("hello"), "greet", "{}").await,
        Err(KernelError::ShuttingDown)
    ));
    assert!(kernel.capsules().is_empty(), "shutdown unloaded everything");
    assert!(actions(&kernel).ends_with(&["kernel.shutdown".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dev_trust_capsules_get_nothing_they_were_not_granted() {
    let home = PrivateHome::new();
    install_copy(home.path(), "counter");
    let kernel = boot(home.path(), KernelConfig::default()).await;
    // counter's kv access was never granted by an operator.
    let err = kernel
        .call_tool(&id("counter"), "increment", "{}")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("denied"), "{err}");
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_log_is_refused_kept_read_only_or_quarantined_never_ignored() {
    let home = PrivateHome::new();
    let kernel = boot(home.path(), dev_config()).await;
    let db = kernel.audit().path().to_owned();
    kernel.shutdown().await;
    drop(kernel);
    // Rewrite a recorded action behind the log's back, leaving the change in the WAL.
    let found = tamper_leaving_wal(
        &db,
        "UPDATE entries SET action = 'nothing.happened' WHERE action = 'kernel.boot'",
    );

    let refused = Kernel::builder()
        .home(home.path())
        .config(dev_config())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            KernelError::Audit(capsid_audit::AuditError::Tampered { .. })
        ),
        "{refused}"
    );
    assert!(
        log_files(&db) == found,
        "refused untouched, its WAL included"
    );

    // Read-only: it boots, loads nothing, refuses what it would have to record, reports the
    // problems, and leaves the file exactly as found.
    install_copy(home.path(), "hello");
    let read_only = KernelConfig {
        audit_tamper: TamperPolicy::ReadOnly,
        ..dev_config()
    };
    let kernel = boot(home.path(), read_only).await;
    let status = kernel.status();
    assert!(status.boot.audit_read_only);
    assert!(
        status
            .boot
            .audit_problems
            .iter()
            .any(|p| p.starts_with("chain ")),
        "{:?}",
        status.boot.audit_problems
    );
    assert!(status.boot.loaded.is_empty(), "no capsule loads");
    let refused = kernel.load(&id("hello")).await.unwrap_err();
    assert!(
        matches!(
            refused,
            KernelError::Audit(capsid_audit::AuditError::ReadOnly(_))
        ),
        "{refused}"
    );
    assert!(kernel.publish("demo.topic", b"{}".to_vec()).await.is_err());
    assert!(!kernel.audit().verify_all().unwrap().is_valid());
    kernel.shutdown().await;
    drop(kernel);
    assert!(log_files(&db) == found, "never written, its WAL included");

    let quarantine = KernelConfig {
        audit_tamper: TamperPolicy::Quarantine,
        ..dev_config()
    };
    let kernel = boot(home.path(), quarantine).await;
    let kept: Vec<_> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains(".tampered-") && !name.ends_with("-wal") && !name.ends_with("-shm")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the tampered log is kept aside");
    let kept_wal = capsid_integration_tests::with_suffix(&kept[0].path(), "-wal");
    assert!(kept_wal.is_file(), "with its WAL");
    let still_tampered = capsid_audit::verify_database(kept[0].path()).unwrap();
    assert!(!still_tampered.is_valid(), "and kept exactly as found");
    let rows = capsid_audit::tail(kernel.audit().path(), 100).unwrap();
    let report = rows.iter().find(|r| r.action == "audit.tampered").unwrap();
    assert!(report.details.contains("tampered-"), "{}", report.details);
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_validates_first_and_refuses_a_loaded_name() {
    let home = PrivateHome::new();
    let kernel = boot(home.path(), dev_config()).await;
    let staging = tempfile::tempdir().unwrap();
    let broken = staging.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("Capsule.toml"),
        "[package]\nname = \"Broken!\"\n",
    )
    .unwrap();
    let err = kernel.install(&broken, false).await.unwrap_err();
    assert!(err.to_string().contains("Capsule.toml"), "{err}");
    assert!(!home.path().join("capsules").join("broken").exists());

    // A manifest that is a symlink (here to a device that never ends) or a FIFO (which
    // would block a reader forever) is refused at once.
    let linked = staging.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink("/dev/zero", linked.join("Capsule.toml")).unwrap();
    let err = kernel.install(&linked, false).await.unwrap_err();
    assert!(err.to_string().contains("Capsule.toml"), "{err}");
    let piped = staging.path().join("piped");
    std::fs::create_dir_all(&piped).unwrap();
    nix::unistd::mkfifo(&piped.join("Capsule.toml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), kernel.install(&piped, false))
        .await
        .expect("a FIFO manifest does not block")
        .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    let installed = kernel
        .install(&capsules_dir().join("hello"), false)
        .await
        .unwrap();
    assert_eq!(installed.capsule.state, CapsuleState::Ready);
    assert!(home.path().join("capsules/hello/hello.wasm").is_file());
    let again = kernel
        .install(&capsules_dir().join("hello"), false)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("unload it first"), "{again}");
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_capsule_is_reloaded_then_given_up_on_at_the_cap() {
    let home = PrivateHome::new();
    install_copy(home.path(), "spin");
    let config = KernelConfig {
        health: HealthConfig {
            enabled: true,
            restart_initial_ms: 20,
            restart_max_ms: 80,
            max_attempts: 2,
        },
        ..dev_config()
    };
    let bus = EventBus::new();
    let mut failed = bus.subscribe(HEALTH_FAILED_TOPIC, 64).unwrap();
    let mut gave_up = bus.subscribe(HEALTH_GAVE_UP_TOPIC, 4).unwrap();
    let kernel = Kernel::builder()
        .home(home.path())
        .config(config)
        .bus(bus)
        .build()
        .await
        .unwrap();
    // A deadline trap fails the capsule; the monitor says so and reloads it (maybe before
    // the call has returned: the call's record comes after the failure).
    let _ = kernel.call_tool(&id("spin"), "spin", "{}").await;
    let first = failed.recv().await.unwrap();
    assert!(String::from_utf8_lossy(&first.payload).contains("\"spin\""));
    // `None` while a reload has it between unload and load.
    let state = |k: &Kernel| k.registry().info(&id("spin")).map(|i| i.state);
    until("spin is reloaded", || {
        state(&kernel) == Some(CapsuleState::Ready)
    })
    .await;
    // Its restart hook was told why.
    let told = kernel.registry().get(&id("spin")).unwrap().log().since(0);
    assert!(
        told.iter().any(|l| l.message == "restarted: recovery #1"),
        "{told:?}"
    );

    // Its component now fails to load: each reload fails, until the cap.
    std::fs::write(home.path().join("capsules/spin/spin.wasm"), b"not wasm").unwrap();
    let _ = kernel.call_tool(&id("spin"), "spin", "{}").await;
    let gave = tokio::time::timeout(Duration::from_mins(1), gave_up.recv())
        .await
        .expect("the monitor gives up")
        .unwrap();
    let payload: Value = serde_json::from_slice(&gave.payload).unwrap();
    assert_eq!(payload["attempts"], 2);
    assert!(matches!(state(&kernel), Some(CapsuleState::Failed(_))));
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_reloads_only_when_the_files_really_change() {
    let home = PrivateHome::new();
    install_copy(home.path(), "counter");
    // A developer's loop: files edited and rebuilt, not signed each time.
    let config = KernelConfig {
        hot_reload: true,
        signing: capsid_kernel::SigningConfig {
            require: capsid_signing::Require::Off,
        },
        ..dev_config()
    };
    let kernel = boot(home.path(), config).await;
    let loads = |k: &Kernel| {
        actions(k)
            .iter()
            .filter(|a| a.as_str() == "capsule.load")
            .count()
    };
    assert_eq!(loads(&kernel), 1);
    let manifest = home.path().join("capsules/counter/Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    // The same bytes written again, and a stray file: nothing really changed.
    std::fs::write(&manifest, &text).unwrap();
    std::fs::write(home.path().join("capsules/counter/notes.txt"), "x").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(loads(&kernel), 1, "no reload without a real change");
    // Written whole (a rename), so no reload sees half a manifest.
    let staged = home.path().join("Capsule.toml.new");
    std::fs::write(
        &staged,
        text.replace("description = \"", "description = \"Edited: "),
    )
    .unwrap();
    std::fs::rename(&staged, &manifest).unwrap();
    until("the edited capsule is reloaded", || loads(&kernel) == 2).await;
    until("it is ready again", || {
        kernel.registry().info(&id("counter")).map(|i| i.state) == Some(CapsuleState::Ready)
    })
    .await;
    let told = kernel
        .call_tool(&id("counter"), "last-restart", "{}")
        .await
        .unwrap();
    assert_eq!(told, r#"{"cause":"source-changed","restarts":1}"#);
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_tells_a_restartable_capsule_why_and_a_failing_hook_fails_it() {
    let home = PrivateHome::new();
    install_copy(home.path(), "counter");
    install_copy(home.path(), "bare");
    let kernel = boot(home.path(), dev_config()).await;
    let last = |k: Kernel| async move {
        k.call_tool(&id("counter"), "last-restart", "{}")
            .await
            .unwrap()
    };
    assert_eq!(
        last(kernel.clone()).await,
        "null",
        "booting is not a reload"
    );
    kernel.reload(&id("counter")).await.unwrap();
    assert_eq!(
        last(kernel.clone()).await,
        r#"{"cause":"reload","restarts":1}"#
    );
    kernel.reload(&id("counter")).await.unwrap();
    assert_eq!(
        last(kernel.clone()).await,
        r#"{"cause":"reload","restarts":2}"#
    );
    // A capsule without the hook (built without capsid_guest) reloads as before.
    kernel.reload(&id("bare")).await.unwrap();
    let echoed = kernel
        .call_tool(&id("bare"), "echo", r#"{"again":true}"#)
        .await
        .unwrap();
    assert_eq!(echoed, r#"{"again":true}"#);

    kernel
        .call_tool(&id("counter"), "refuse-restarts", "{}")
        .await
        .unwrap();
    let refused = kernel.reload(&id("counter")).await.unwrap_err().to_string();
    assert!(
        refused.contains("counter") && refused.contains("asked to refuse reloads"),
        "{refused}"
    );
    let info = kernel.registry().info(&id("counter")).unwrap();
    assert!(matches!(info.state, CapsuleState::Failed(_)), "{info:?}");
    assert!(kernel.call_tool(&id("counter"), "get", "{}").await.is_err());
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_persistent_processes_of_every_capsule() {
    let home = PrivateHome::new();
    install_copy(home.path(), "runner");
    let kernel = boot(home.path(), dev_config()).await;
    let out = kernel
        .call_tool(&id("runner"), "repl-start", "{}")
        .await
        .unwrap();
    assert!(out.contains("\"id\""), "{out}");
    let pids: Vec<u32> = kernel
        .registry()
        .processes()
        .list_all()
        .iter()
        .map(|(_, s)| s.pid)
        .collect();
    assert_eq!(pids.len(), 1);
    kernel.shutdown().await;
    assert!(kernel.registry().processes().list_all().is_empty());
    let pid = pids[0];
    until("the repl is gone", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_capsule_is_unloaded_and_loads_again_at_its_next_call() {
    let home = PrivateHome::new();
    install_copy(home.path(), "hello");
    let config = KernelConfig {
        idle_timeout_ms: Some(200),
        ..dev_config()
    };
    let kernel = boot(home.path(), config).await;
    kernel
        .call_tool(&id("hello"), "greet", r#"{"name":"a"}"#)
        .await
        .unwrap();
    until("hello is unloaded while idle", || {
        kernel.registry().info(&id("hello")).is_none()
    })
    .await;
    // Recorded once the unload is done.
    until("the idle unload is recorded", || {
        actions(&kernel).contains(&"capsule.idle-unload".to_owned())
    })
    .await;
    // Its tools are still offered while it sleeps: a client's list does not change.
    let listed: Vec<String> = kernel
        .tools_for(kernel.principal(), capsid_kernel::Door::Daemon)
        .await
        .iter()
        .map(|t| format!("{}/{}", t.capsule, t.tool))
        .collect();
    assert!(listed.contains(&"hello/greet".to_owned()), "{listed:?}");
    let out = kernel
        .call_tool(&id("hello"), "greet", r#"{"name":"b"}"#)
        .await
        .unwrap();
    assert!(out.contains("Hello, b!"), "{out}");
    // An explicit unload is not undone by a call.
    kernel.unload(&id("hello")).await.unwrap();
    assert!(kernel.call_tool(&id("hello"), "greet", "{}").await.is_err());
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_calling_an_idle_capsules_tool_wakes_it() {
    let home = PrivateHome::new();
    install_copy(home.path(), "hello");
    install_copy(home.path(), "relay");
    let config = KernelConfig {
        idle_timeout_ms: Some(200),
        ..dev_config()
    };
    let kernel = boot(home.path(), config).await;
    let input = r#"{"capsule":"hello","tool":"greet","input":{"name":"c"}}"#;
    until("hello is unloaded while idle", || {
        kernel.registry().info(&id("hello")).is_none()
    })
    .await;
    // relay (woken by the kernel's call, if it was idle too) wakes hello by calling it.
    let out = kernel
        .call_tool(&id("relay"), "relay", input)
        .await
        .unwrap();
    assert_eq!(out, r#"{"ok":{"greeting":"Hello, c!"}}"#);
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_with_a_missing_requirement_fails_alone_and_kernel_topics_are_reserved() {
    let home = PrivateHome::new();
    install_copy(home.path(), "hello");
    install_copy(home.path(), "echo");
    let echo_manifest = home.path().join("capsules/echo/Capsule.toml");
    let text = std::fs::read_to_string(&echo_manifest).unwrap();
    std::fs::write(
        &echo_manifest,
        format!("{text}\n[dependencies]\nrequires = [\"absent\"]\n"),
    )
    .unwrap();
    capsid_integration_tests::sign(&home.path().join("capsules/echo"));
    let kernel = boot(home.path(), dev_config()).await;
    let status = kernel.status();
    assert_eq!(status.boot.loaded, ["hello"]);
    assert!(
        status
            .boot
            .failed
            .iter()
            .any(|(name, why)| name == "echo" && why.contains("absent")),
        "{:?}",
        status.boot.failed
    );
    for topic in ["kernel.shutdown", "health.failed", "capsules.loaded"] {
        let err = kernel.publish(topic, b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(err, KernelError::ReservedTopic { .. }), "{err}");
    }
    kernel
        .publish("people.arrived", b"{}".to_vec())
        .await
        .unwrap();
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_values_replace_manifest_defaults_and_undeclared_keys_are_refused() {
    let home = PrivateHome::new();
    install_copy(home.path(), "hello");
    let mut config = dev_config();
    config.capsules.insert(
        "hello".into(),
        capsid_kernel::CapsuleConfig {
            env: [("GREETING".to_owned(), "Howdy".to_owned())].into(),
        },
    );
    let kernel = boot(home.path(), config.clone()).await;
    let out = kernel
        .call_tool(&id("hello"), "greet", r#"{"name":"op"}"#)
        .await
        .unwrap();
    assert!(out.contains("Howdy, op!"), "{out}");
    kernel.shutdown().await;
    drop(kernel);

    config
        .capsules
        .get_mut("hello")
        .unwrap()
        .env
        .insert("TYPO".into(), "x".into());
    let kernel = boot(home.path(), config).await;
    let failed = &kernel.status().boot.failed;
    assert!(
        failed
            .iter()
            .any(|(name, why)| name == "hello" && why.contains("TYPO")),
        "{failed:?}"
    );
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_change_that_cannot_be_recorded_is_not_made() {
    let home = PrivateHome::new();
    let kernel = boot(home.path(), dev_config()).await;
    let root = kernel.principal();
    let id = kernel
        .grant(
            root,
            None,
            "fs://workspace/kept/**",
            capsid_capabilities::Permissions::READ,
        )
        .await
        .unwrap();
    let held = |pattern: &'static str| {
        let kernel = kernel.clone();
        async move {
            kernel
                .capabilities()
                .list(&root)
                .await
                .unwrap()
                .into_iter()
                .filter(|g| g.capability.pattern.as_str() == pattern)
                .map(|g| g.revoked)
                .collect::<Vec<_>>()
        }
    };
    // The log stops taking entries: every change that would go unrecorded is refused.
    kernel.audit().shutdown().await.unwrap();
    let granted = kernel
        .grant(
            root,
            None,
            "fs://workspace/unrecorded/**",
            capsid_capabilities::Permissions::READ,
        )
        .await;
    assert!(granted.is_err(), "{granted:?}");
    assert!(
        held("fs://workspace/unrecorded/**").await.is_empty(),
        "never granted"
    );
    assert!(kernel.revoke(id).await.is_err());
    assert_eq!(
        held("fs://workspace/kept/**").await,
        [false],
        "still in force"
    );
    let someone = kernel.identity().create_user("someone").await.unwrap();
    assert!(
        kernel
            .link_identity("chat", "someone-1", &someone.id)
            .await
            .is_err()
    );
    assert!(
        kernel
            .identity()
            .resolve("chat", "someone-1")
            .await
            .unwrap()
            .is_none(),
        "never linked"
    );
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_that_cannot_be_recorded_puts_the_previous_copy_back() {
    let home = PrivateHome::new();
    let kernel = boot(home.path(), dev_config()).await;
    kernel
        .install(&capsules_dir().join("hello"), false)
        .await
        .unwrap();
    kernel.unload(&id("hello")).await.unwrap();
    let installed = home.path().join("capsules/hello/Capsule.toml");
    let before = std::fs::read_to_string(&installed).unwrap();

    let staging = tempfile::tempdir().unwrap();
    let newer = copy_capsule("hello", &staging.path().join("hello"));
    let manifest = newer.join("Capsule.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let bumped = text.replace("version = \"0.1.0\"", "version = \"0.2.0\"");
    assert_ne!(bumped, text, "the new copy differs");
    std::fs::write(&manifest, bumped).unwrap();
    capsid_integration_tests::sign(&newer);
    // The log stops taking entries: the install cannot be recorded, so it does not land.
    kernel.audit().shutdown().await.unwrap();
    assert!(kernel.install(&newer, false).await.is_err());
    assert_eq!(
        std::fs::read_to_string(&installed).unwrap(),
        before,
        "the previous copy is back"
    );
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("capsules"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    kernel.shutdown().await;
}

/// Leaves the home's workspace overlay as a kernel killed in the middle of committing does:
/// the commit's record written, nothing copied down yet.
fn leave_commit_interrupted(home: &Path) {
    let work = capsid_core::CapsidHome::at(home)
        .state_dir()
        .join("overlay");
    std::fs::write(
        work.join("commit-pending"),
        ".capsid-commit-00112233aabbccdd-",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_commit_a_killed_kernel_left_half_done_is_finished_and_recorded_at_boot() {
    use capsid_vfs::{Vfs, VfsPath};
    let home = PrivateHome::new();
    let kernel = boot(home.path(), dev_config()).await;
    let workspace = kernel.workspace().to_owned();
    kernel
        .overlay()
        .write(&VfsPath::parse("report.md").unwrap(), b"done".to_vec())
        .await
        .unwrap();
    kernel.shutdown().await;
    leave_commit_interrupted(home.path());
    assert!(!workspace.join("report.md").exists());

    let kernel = boot(home.path(), dev_config()).await;
    assert_eq!(std::fs::read(workspace.join("report.md")).unwrap(), b"done");
    let recovered: Vec<_> = capsid_audit::tail(kernel.audit().path(), 100_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "workspace.commit.recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].details.contains("report.md"), "{recovered:?}");
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_finished_at_a_read_only_boot_is_reported_as_unrecorded() {
    use capsid_vfs::{Vfs, VfsPath};
    let home = PrivateHome::new();
    let kernel = boot(home.path(), dev_config()).await;
    let (db, workspace) = (
        kernel.audit().path().to_owned(),
        kernel.workspace().to_owned(),
    );
    kernel
        .overlay()
        .write(&VfsPath::parse("late.md").unwrap(), b"late".to_vec())
        .await
        .unwrap();
    kernel.shutdown().await;
    drop(kernel);
    tamper_leaving_wal(
        &db,
        "UPDATE entries SET action = 'nothing.happened' WHERE action = 'kernel.boot'",
    );
    leave_commit_interrupted(home.path());

    let read_only = KernelConfig {
        audit_tamper: TamperPolicy::ReadOnly,
        ..dev_config()
    };
    let kernel = boot(home.path(), read_only).await;
    assert_eq!(std::fs::read(workspace.join("late.md")).unwrap(), b"late");
    let unrecorded = kernel.status().boot.unrecorded.clone();
    assert!(
        unrecorded
            .iter()
            .any(|u| u.starts_with("workspace.commit.recovered") && u.contains("late.md")),
        "{unrecorded:?}"
    );
    kernel.shutdown().await;
}
