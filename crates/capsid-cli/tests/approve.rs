//! `capsid approve` against a real daemon: a capsule's request waits, the CLI lists it,
//! refuses to decide without a decision, and decides it (once, always from the prompt of
//! `approve watch`, for the session, deny, deny always); a session's grant ends with its last
//! connection and with a killed daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use capsid_integration_tests::fetch_asking_copy;
use capsid_integration_tests::web::WebServer;
use serde_json::Value;

use capsid_protocol::methods::{NoParams, Status};
use common::{CAPSID, Home, PATIENCE, frame, next, request, until, welcomed};

/// `capsid <args>` on `home`, started with its stdio piped.
fn capsid(home: &Home, args: &[&str]) -> std::process::Child {
    Command::new(CAPSID)
        .arg("--home")
        .arg(&home.path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `from` until what was read contains `needle` (a prompt ends without a newline).
fn read_until(from: &mut impl Read, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match from.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            other => panic!(
                "ended before {needle:?} ({other:?}): {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_decides_what_a_capsule_asks_for() {
    let web = WebServer::start().await;
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    let copies = home.path.join("copies");
    let resource = format!("net://http/127.0.0.1/{}", web.addr.port());
    let fetch = fetch_asking_copy(&copies, &resource, "");
    home.ok(&["capsule", "install", fetch.to_str().unwrap()]);

    let input = format!(r#"{{"url":"{}"}}"#, web.url("http", "/bytes/5"));
    let call = capsid(&home, &["call", "fetch", "get", "--input", &input]);
    let mut waiting = Value::Null;
    until("the request is listed", || {
        waiting = home.json(&["approve", "ls"]);
        waiting.as_array().is_some_and(|w| !w.is_empty())
    });
    let request = &waiting[0];
    assert_eq!(request["capsule"], "fetch");
    assert_eq!(request["resource"], resource.as_str());
    let id = request["id"].as_str().unwrap();
    assert!(home.ok(&["approve", "ls"]).contains(id), "a human table");
    assert_eq!(home.json(&["approve", "show", id])["id"], id);

    let undecided = home.run(&["approve", id]);
    assert!(!undecided.status.success());
    assert!(
        String::from_utf8_lossy(&undecided.stderr).contains("say how to decide"),
        "{undecided:?}"
    );
    let decided = home.ok(&["approve", id, "--once"]);
    assert!(decided.contains("allowed once"), "{decided}");
    let out = call.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("\"status\": 200") || answer.contains("\"status\":200"),
        "{answer}"
    );

    let again = home.run(&["approve", id, "--deny"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is pending"),
        "{again:?}"
    );
    let tail = home.ok(&["audit", "tail", "-n", "50"]);
    assert!(tail.contains("approval.decided"), "{tail}");

    // `approve watch` prompts as requests come, and decides what is typed.
    let mut watch = capsid(&home, &["approve", "watch"]);
    let call = capsid(&home, &["call", "fetch", "get", "--input", &input]);
    until("the second request is listed", || {
        home.json(&["approve", "ls"])
            .as_array()
            .is_some_and(|w| !w.is_empty())
    });
    let mut stdin = watch.stdin.take().unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let mut shown = String::new();
    shown += &read_until(&mut stdout, "[s]kip? ");
    stdin.write_all(b"maybe\n").unwrap();
    shown += &read_until(&mut stdout, "[s]kip? ");
    stdin.write_all(b"a\n").unwrap();
    shown += &read_until(&mut stdout, "decided:");
    let out = call.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("200"), "{answer}");
    assert!(shown.contains("one of the letters"), "{shown}");
    assert!(!shown.contains("not decided"), "{shown}");
    drop(stdin);
    let ended = watch.wait().unwrap();
    assert!(ended.success(), "the watch ends with its stdin");
    let grants = home.json(&["cap", "ls"]);
    assert!(
        grants
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["pattern"] == resource.as_str() && g["approval"].is_string()),
        "{grants}"
    );
    let refusals = home.json(&["approve", "refusals"]);
    assert_eq!(refusals, serde_json::json!([]));
    let unknown = home.run(&["approve", "forget", "no-such-refusal"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no standing refusal"),
        "{unknown:?}"
    );
    home.ok(&["stop"]);
}

/// A daemon connection that has acted for the operator (a `status`), kept open: it holds
/// the operator's client session.
async fn keeper(home: &Home) -> tokio::net::UnixStream {
    let mut s = welcomed(home).await;
    frame(&mut s, &request::<Status>(1, &NoParams {})).await;
    assert!(next(&mut s).await.is_some());
    s
}

/// Runs `capsid call fetch get` on `input`: its answer, asserting that nothing was asked
/// while it ran.
fn call_unasked(home: &Home, input: &str) -> String {
    let mut call = capsid(home, &["call", "fetch", "get", "--input", input]);
    let begun = std::time::Instant::now();
    while call.try_wait().unwrap().is_none() {
        assert_eq!(
            home.json(&["approve", "ls"]),
            serde_json::json!([]),
            "it asked"
        );
        assert!(begun.elapsed() < PATIENCE, "the call never ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    String::from_utf8_lossy(&call.wait_with_output().unwrap().stdout).into_owned()
}

/// Runs `capsid call fetch get` on `input`, waits for its request, decides it with `how`:
/// the request, and the call's answer.
fn call_and_decide(home: &Home, input: &str, how: &[&str]) -> (Value, String) {
    let call = capsid(home, &["call", "fetch", "get", "--input", input]);
    let mut waiting = Value::Null;
    until("the request is listed", || {
        waiting = home.json(&["approve", "ls"]);
        waiting.as_array().is_some_and(|w| !w.is_empty())
    });
    let request = waiting[0].clone();
    let mut args = vec!["approve", request["id"].as_str().unwrap()];
    args.extend(how);
    home.ok(&args);
    let out = call.wait_with_output().unwrap();
    (request, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn session_grants(home: &Home) -> usize {
    home.json(&["cap", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["session"].is_string())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_approval_ends_with_the_last_connection_and_with_a_killed_daemon() {
    let web = WebServer::start().await;
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    let resource = format!("net://http/127.0.0.1/{}", web.addr.port());
    let fetch = fetch_asking_copy(&home.path.join("copies"), &resource, "");
    home.ok(&["capsule", "install", fetch.to_str().unwrap()]);
    let input = format!(r#"{{"url":"{}"}}"#, web.url("http", "/bytes/5"));

    // Decided for the session while another connection of the operator's is open: later
    // calls pass on the token, nobody asked.
    let held = keeper(&home).await;
    let (request, answer) = call_and_decide(&home, &input, &["--session"]);
    assert!(request["session"].is_string(), "{request}");
    assert!(answer.contains("200"), "{answer}");
    assert_eq!(session_grants(&home), 1);
    assert!(call_unasked(&home, &input).contains("200"));

    // Killed with the session live: the next daemon honours nothing of it.
    let pid = home.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(held);
    until("the daemon is gone", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    });
    home.ok(&["start", "--dev"]);
    assert_eq!(session_grants(&home), 0, "removed at boot");
    let held = keeper(&home).await;
    let (_, answer) = call_and_decide(&home, &input, &["--deny"]);
    assert!(!answer.contains("200"), "asked again and denied: {answer}");

    // The last connection closing ends it.
    let (_, answer) = call_and_decide(&home, &input, &["--session"]);
    assert!(answer.contains("200"), "{answer}");
    assert!(call_unasked(&home, &input).contains("200"));
    drop(held);
    until("the session's grant is gone", || session_grants(&home) == 0);
    let (request, answer) = call_and_decide(&home, &input, &["--deny", "--always"]);
    assert!(!answer.contains("200"), "asked again and denied: {answer}");
    // Refused standing: the next call is denied without asking, until forgotten.
    let refusals = home.json(&["approve", "refusals"]);
    assert_eq!(refusals[0]["id"], request["id"], "{refusals}");
    assert!(!call_unasked(&home, &input).contains("200"));
    home.ok(&["approve", "forget", request["id"].as_str().unwrap()]);
    assert_eq!(home.json(&["approve", "refusals"]), serde_json::json!([]));
    home.ok(&["stop"]);
}
