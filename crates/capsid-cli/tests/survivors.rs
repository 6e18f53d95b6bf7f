//! `survive-restart` against the real daemon killed with SIGKILL: a persistent pipeline
//! comes back under its id (a new generation, new stages) once its capsule is loaded, and
//! does not when its grant was revoked meanwhile (recorded as `process.not-restored`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Home, PATIENCE, until};

fn call(home: &Home, tool: &str, input: &Value) -> Value {
    let out = home.ok(&["call", "runner", tool, "--input", &input.to_string()]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{tool} printed {out:?}: {e}"))
}

/// The runner's persistent pipeline as `capsid ps` shows it, once it has its two stages.
fn pipeline(home: &Home) -> Value {
    let begun = Instant::now();
    loop {
        let ps = home.json(&["ps"]);
        if let Some(p) =
            ps.as_array().unwrap().iter().find(|p| {
                p["stages"].as_array().is_some_and(|s| s.len() == 2) && p["running"] == true
            })
        {
            return p.clone();
        }
        assert!(begun.elapsed() < PATIENCE, "no running pipeline in {ps}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// SIGKILLs the daemon and waits for it and every stage of `before` to be gone.
fn kill_daemon(home: &Home, before: &Value) {
    let pid = home.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let stages: Vec<u64> = before["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    until("the daemon and its stages to be gone", || {
        !alive(u64::try_from(pid).unwrap()) && stages.iter().all(|&p| !alive(p))
    });
}

/// How many audit entries of the last 200 have `action`.
fn recorded(home: &Home, action: &str) -> usize {
    let audit = home.json(&["audit", "tail", "-n", "200"]);
    audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .count()
}

/// Waits for the runner to be loaded again after a start.
fn runner_loaded(home: &Home) {
    until("the runner to be loaded", || {
        home.json(&["capsule", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "runner")
    });
}

#[test]
fn a_surviving_pipeline_comes_back_under_its_id_unless_its_grant_was_revoked() {
    let home = Home::new();
    // Later starts are not under dev trust, which would grant again what was revoked: they
    // keep the grants this first one made, and load the samples by their signature (a new
    // home trusts the samples' key).
    home.ok(&["start", "--dev"]);
    home.install("runner");
    let started = call(
        &home,
        "pipe-persist",
        &json!({
            "stages": [
                { "program": "sh", "args": ["-c", "echo up; exec sleep 300"] },
                { "program": "cat" },
            ],
            "keep": true,
            "survive": true,
        }),
    );
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"));
    let before = pipeline(&home);
    kill_daemon(&home, &before);

    home.ok(&["start"]);
    let after = pipeline(&home);
    let status = call(&home, "persist-status", &json!({ "id": id }));
    assert_eq!(status["running"], true, "{status}");
    assert!(
        status["generation"].as_u64() > before["generation"].as_u64(),
        "a new generation: {status} after {before}"
    );
    assert_eq!(status["generation"], after["generation"]);
    assert_ne!(
        after["stages"], before["stages"],
        "every stage started again"
    );
    assert_eq!(recorded(&home, "process.restored"), 1);

    let grants = home.json(&["cap", "ls"]);
    let sh = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["pattern"] == "process://exec/sh" && g["revoked"] == false)
        .unwrap_or_else(|| panic!("no grant of sh in {grants}"));
    home.ok(&["cap", "revoke", sh["id"].as_str().unwrap()]);
    kill_daemon(&home, &after);

    home.ok(&["start"]);
    runner_loaded(&home);
    let gone = home.run(&[
        "call",
        "runner",
        "persist-status",
        "--input",
        &json!({ "id": id }).to_string(),
    ]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NoSuchProcess"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    let audit = home.json(&["audit", "tail", "-n", "200"]);
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "process.not-restored")
        .unwrap_or_else(|| panic!("no process.not-restored in {audit}"));
    assert_eq!(refused["decision"], "deny", "{refused}");
    // Forgotten: the next start does not try again.
    home.ok(&["stop"]);
    home.ok(&["start"]);
    runner_loaded(&home);
    assert_eq!(recorded(&home, "process.not-restored"), 1);
    home.ok(&["stop"]);
}
