//! The real `capsid` binary driving a real daemon on a Unix socket: every command through
//! a full lifecycle, one daemon per home with stale files cleared, and bad clients (no
//! hello, wrong token or protocol, oversize, truncated and garbage frames, 500 connections
//! at once, a client that stops reading) that cost only their own connection; hot reload of
//! a rebuilt capsule and restarts with backoff, seen through the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use capsid_integration_tests::{capsules_dir, log_files, tamper_leaving_wal};
use capsid_protocol::NoParams;
use capsid_protocol::methods::{AuditTail, ProcessList, Status, TailParams};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use common::{CAPSID, Home, PATIENCE, frame, hello, next, request, try_frame, until, welcomed};

fn fds_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

/// `logs -f` prints what is there, then new lines as they come.
fn follow_a_capsule_log(home: &Home) {
    let mut follow = Command::new(CAPSID)
        .arg("--home")
        .arg(&home.path)
        .args(["logs", "hello", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    assert!(lines.next().unwrap().unwrap().contains("greeting"));
    home.ok(&["call", "hello", "greet", "--input", r#"{"name":"later"}"#]);
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("later"))),
        "the new line streamed"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
}

/// The audit, capability and identity commands.
fn audit_caps_and_identity(home: &Home) {
    assert!(home.ok(&["audit", "verify"]).contains("verified"));
    let tail = home.json(&["audit", "tail", "-n", "3"]);
    assert_eq!(tail.as_array().unwrap().len(), 3);
    let export = home.path.join("audit.jsonl");
    home.ok(&["audit", "export", export.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&export).unwrap().lines().count() > 3);

    let granted = home.ok(&[
        "cap",
        "grant",
        "fs://workspace/shared/**",
        "read",
        "--capsule",
        "hello",
    ]);
    let id = granted.trim().strip_prefix("granted ").unwrap().to_owned();
    let caps = home.json(&["cap", "ls"]);
    assert!(
        caps.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["revoked"] == false)
    );
    home.ok(&["cap", "revoke", &id]);
    let caps = home.json(&["cap", "ls"]);
    assert!(
        caps.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["revoked"] == true)
    );
    let bad = home.run(&["cap", "grant", "fs://workspace/x", "fly"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown permission"));

    let who = home.json(&["who"]);
    assert_eq!(who["users"][0]["name"], "root");
    assert_eq!(who["links"][0]["platform"], "cli");
}

/// Under dev trust the MCP user may call every tool out of the box.
fn mcp_may_call_every_tool_under_dev_trust(home: &Home) {
    let mcp_tools = home.json(&["tools", "--as", "mcp"]);
    assert!(
        mcp_tools
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["capsule"] == "hello" && t["tool"] == "greet"),
        "{mcp_tools}"
    );
}

#[test]
fn the_cli_drives_a_daemon_through_its_whole_lifecycle() {
    let home = Home::new();
    let started = home.ok(&["start", "--dev"]);
    assert!(started.contains("ready"), "{started}");
    // Detached: the daemon leads a session of its own, away from the terminal's.
    let daemon = home.pid().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(fields[3], daemon.to_string(), "its own session: {stat}");
    let status = home.json(&["status"]);
    assert_eq!(status["dev"], true);
    assert_eq!(status["capsules"], 0);

    let hello = capsules_dir().join("hello");
    let runner = capsules_dir().join("runner");
    home.ok(&["capsule", "install", hello.to_str().unwrap()]);
    home.ok(&["capsule", "install", runner.to_str().unwrap()]);
    let list = home.json(&["capsule", "ls"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "runner"]);
    assert!(
        home.ok(&["capsule", "ls"]).starts_with("NAME"),
        "a human table"
    );
    mcp_may_call_every_tool_under_dev_trust(&home);
    let show = home.json(&["capsule", "show", "hello"]);
    assert!(show["tools"].as_array().unwrap().contains(&json!("greet")));

    let greeting = home.ok(&["call", "hello", "greet", "--input", r#"{"name":"cli"}"#]);
    assert!(greeting.contains("Hello, cli!"), "{greeting}");
    let input = home.path.join("input.json");
    std::fs::write(&input, r#"{"name":"file"}"#).unwrap();
    let from_file = home.ok(&[
        "call",
        "hello",
        "greet",
        "--input",
        &format!("@{}", input.display()),
    ]);
    assert!(from_file.contains("Hello, file!"), "{from_file}");

    let missing = home.run(&["call", "nosuch", "tool"]);
    assert!(!missing.status.success());
    let err = String::from_utf8(missing.stderr).unwrap();
    assert!(
        err.starts_with("capsid: ") && err.contains("nosuch"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let published = home.json(&["publish", "demo.topic", r#"{"a":1}"#]);
    assert_eq!(published["dropped"], 0);

    let repl: Value = serde_json::from_str(&home.ok(&["call", "runner", "repl-start"])).unwrap();
    let line = json!({ "id": repl["id"], "line": "echo hi-from-the-repl" }).to_string();
    home.ok(&["call", "runner", "repl-eval", "--input", &line]);
    let ps = home.json(&["ps"]);
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "persistent" && p["capsule"] == "runner"),
        "{ps}"
    );
    let generation = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "persistent")
        .unwrap()["generation"]
        .to_string();
    let out = home.ok(&["logs", "--process", &generation]);
    assert!(out.contains("hi-from-the-repl"), "{out}");
    pipeline_in_ps(&home);
    let missing = home.run(&["logs", "--process", "999999"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no process"));
    let logs = home.ok(&["logs", "hello"]);
    assert!(logs.contains("greeting"), "{logs}");
    follow_a_capsule_log(&home);
    let reserved = home.run(&["publish", "kernel.shutdown", "{}"]);
    assert!(String::from_utf8_lossy(&reserved.stderr).contains("reserved"));

    audit_caps_and_identity(&home);

    home.ok(&["capsule", "reload", "hello"]);
    home.ok(&["capsule", "unload", "hello"]);
    assert_eq!(home.json(&["capsule", "ls"]).as_array().unwrap().len(), 1);
    home.ok(&["capsule", "load", "hello"]);

    let pid = home.pid().unwrap();
    assert!(home.ok(&["stop"]).contains("stopped"));
    for f in ["capsid.sock", "token", "capsid.pid", "ready"] {
        assert!(!home.run_file(f).exists(), "{f} was removed");
    }
    let begun = Instant::now();
    while !gone(pid) && begun.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(pid), "the daemon exited");
    let after = home.run(&["status"]);
    assert!(String::from_utf8_lossy(&after.stderr).contains("capsid start"));
}

/// A wasm custom section named `name` holding `payload` (names and payloads under 128 bytes).
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    let body_len = 1 + name.len() + payload.len();
    assert!(name.len() < 128 && body_len < 128);
    let mut section = vec![0, u8::try_from(body_len).unwrap()];
    section.push(u8::try_from(name.len()).unwrap());
    section.extend_from_slice(name.as_bytes());
    section.extend_from_slice(payload);
    section
}

fn state_of(home: &Home, capsule: &str) -> Option<String> {
    let list = home.json(&["capsule", "ls"]);
    list.as_array()?
        .iter()
        .find(|c| c["name"] == capsule)
        .and_then(|c| c["state"].as_str().map(str::to_owned))
}

#[test]
fn a_rebuilt_capsule_is_hot_reloaded_and_a_failing_one_restarted_with_backoff() {
    let home = Home::new();
    std::fs::write(
        home.path.join("config.toml"),
        // A developer's loop: rebuilt capsules are not signed each time.
        "[health]\nrestart_initial_ms = 20\nrestart_max_ms = 80\nmax_attempts = 2\n\n[signing]\nrequire = \"off\"\n",
    )
    .unwrap();
    home.ok(&["start", "--dev"]);
    for name in ["counter", "spin"] {
        let dir = capsules_dir().join(name);
        home.ok(&["capsule", "install", dir.to_str().unwrap()]);
    }

    // Rebuilt: the same component with one more custom section, so other bytes.
    let before = home.json(&["capsule", "show", "counter"])["blake3"].clone();
    let wasm = home.path.join("capsules/counter/counter.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend(custom_section("rebuilt", b"by the test"));
    let staged = home.path.join("counter.wasm.new");
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, &wasm).unwrap();
    until("the rebuilt counter is loaded", || {
        // Mid-reload it is briefly unlisted: `show` fails then, and the wait goes on.
        let out = home.run(&["capsule", "show", "counter", "--json"]);
        let show: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.success() && show["blake3"] != before && show["state"] == "ready"
    });
    let told: Value = serde_json::from_str(&home.ok(&["call", "counter", "last-restart"])).unwrap();
    assert_eq!(told["cause"], "source-changed", "{told}");

    // A deadline trap fails spin; the health monitor reloads it, telling it why.
    let trapped = home.run(&["call", "spin", "spin"]);
    assert!(!trapped.status.success());
    until("spin is reloaded and told why", || {
        state_of(&home, "spin").as_deref() == Some("ready")
            && home
                .ok(&["logs", "spin"])
                .contains("restarted: recovery #1")
    });

    // Broken on disk: hot reload fails it, every reload fails, and the monitor gives up at
    // the cap, on the record.
    std::fs::write(home.path.join("capsules/spin/spin.wasm"), b"not wasm").unwrap();
    until("the monitor gives up on spin", || {
        home.json(&["audit", "tail", "-n", "50"])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "health.gave-up" && e["resource"] == "capsule://spin")
    });
    assert_eq!(state_of(&home, "spin").as_deref(), Some("failed"));
    let counted: Value = serde_json::from_str(&home.ok(&["call", "counter", "increment"])).unwrap();
    assert_eq!(counted["count"], 1, "the others keep serving");
    home.ok(&["stop"]);
}

#[test]
fn over_a_tampered_audit_log_a_read_only_daemon_answers_reads_and_refuses_the_rest() {
    let home = Home::new();
    home.ok(&["start"]);
    home.ok(&["stop"]);
    let db = home.path.join("state/audit.db");
    let before = tamper_leaving_wal(
        &db,
        "UPDATE entries SET action = 'nothing.happened' WHERE action = 'kernel.boot'",
    );

    let refused = home.run(&["start"]);
    assert!(!refused.status.success(), "refused by default");
    // `start` says why itself, naming the chain and the entry, on one line.
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("could not start") && said.contains("failed verification"),
        "{said}"
    );
    assert!(
        said.contains("chain session:") && said.contains("seq "),
        "{said}"
    );
    assert_eq!(said.trim_end().lines().count(), 1, "one line: {said}");
    std::fs::write(
        home.path.join("config.toml"),
        "audit_tamper = \"read-only\"\n",
    )
    .unwrap();
    home.ok(&["start"]);
    let status = home.ok(&["status"]);
    assert!(status.contains("READ-ONLY"), "{status}");
    let verify = home.run(&["audit", "verify"]);
    assert!(!verify.status.success(), "it fails verification");
    let problems = String::from_utf8_lossy(&verify.stdout);
    assert!(
        problems.lines().any(|l| l.starts_with("chain session:")),
        "the problems are shown: {problems}"
    );
    assert!(!home.json(&["audit", "tail"]).as_array().unwrap().is_empty());
    let export = home.path.join("inspect.jsonl");
    home.ok(&["audit", "export", export.to_str().unwrap()]);
    assert!(std::fs::metadata(&export).unwrap().len() > 0);

    let hello = capsules_dir().join("hello");
    for args in [
        vec!["capsule", "install", hello.to_str().unwrap()],
        vec!["publish", "demo.topic", "{}"],
        vec!["cap", "grant", "fs://workspace/**", "read"],
        vec!["capsule", "load", "hello"],
        vec!["capsule", "reload", "hello"],
        vec!["call", "hello", "greet"],
    ] {
        let out = home.run(&args);
        assert!(!out.status.success(), "{args:?} is refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("read-only"), "{args:?}: {err}");
    }
    home.ok(&["stop"]);
    assert!(log_files(&db) == before, "never written, its WAL included");
}

#[test]
fn one_daemon_per_home_and_a_dead_daemons_files_are_cleared() {
    let home = Home::new();
    home.ok(&["start"]);
    let second = home.run(&["daemon"]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already serves"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let pid = home.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let begun = Instant::now();
    while !gone(pid) && begun.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(home.socket().exists(), "a killed daemon leaves its socket");
    home.ok(&["start"]);
    assert_ne!(home.pid(), Some(pid));
    assert_eq!(home.json(&["status"])["capsules"], 0);
    home.ok(&["stop"]);
}

async fn status_works(home: &Home) {
    let mut s = welcomed(home).await;
    frame(&mut s, &request::<Status>(7, &NoParams {})).await;
    let answer = next(&mut s).await.unwrap();
    assert_eq!(answer["id"], 7);
    assert!(answer["result"]["pid"].is_number(), "{answer}");
}

async fn refused_with(mut s: UnixStream, code: &str) {
    let answer = next(&mut s).await.expect("an error frame");
    assert_eq!(answer["error"]["code"], code, "{answer}");
    assert!(next(&mut s).await.is_none(), "then the connection closes");
}

/// 500 clients connect, say hello and ask for the status at once; every one is served.
async fn many_clients_at_once(home: &Home) {
    let clients: Vec<_> = (0..500)
        .map(|_| {
            let socket = home.socket();
            let token = home.token();
            tokio::spawn(async move {
                let mut s = UnixStream::connect(socket)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut f = hello(&token);
                f.splice(0..0, u32::try_from(f.len()).unwrap().to_be_bytes());
                if let Err(e) = s.write_all(&f).await {
                    // Refused before the hello was read: say what the daemon answered.
                    return Err(format!("{e}: {:?}", next(&mut s).await));
                }
                let welcome = next(&mut s).await.ok_or("no welcome")?;
                if !welcome["error"].is_null() {
                    return Err(welcome.to_string());
                }
                frame(&mut s, &request::<Status>(1, &NoParams {})).await;
                let answer = next(&mut s).await.ok_or("no answer")?;
                if answer["id"] == 1 {
                    Ok(())
                } else {
                    Err(answer.to_string())
                }
            })
        })
        .collect();
    for c in clients {
        if let Err(e) = c.await.unwrap() {
            let log = std::fs::read_to_string(home.run_file("daemon.log")).unwrap_or_default();
            panic!("a client was not served: {e}\ndaemon log:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_cost_only_their_own_connection() {
    let home = Home::new();
    home.ok(&["start"]);
    let pid = home.pid().unwrap();
    status_works(&home).await;
    let baseline = fds_of(pid);

    // A client that stops reading: it queues big answers and never takes them, until its
    // writes stall (the daemon stopped reading it) or fail (on a slow machine the daemon may
    // already have dropped it for not reading: what its write timeout is for).
    let mut stalled = welcomed(&home).await;
    for id in 0..2_000 {
        let tail = request::<AuditTail>(id, &TailParams { n: 1000 });
        let sent =
            tokio::time::timeout(Duration::from_millis(200), try_frame(&mut stalled, &tail)).await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }

    // No hello at all: dropped after the hello timeout.
    let silent = UnixStream::connect(home.socket()).await.unwrap();
    let silent = tokio::spawn(refused_with(silent, "bad-request"));

    let mut wrong = UnixStream::connect(home.socket()).await.unwrap();
    frame(&mut wrong, &hello("not-the-token")).await;
    refused_with(wrong, "unauthorized").await;

    let mut old = UnixStream::connect(home.socket()).await.unwrap();
    let speak = json!({ "protocol": 99, "token": home.token(), "fingerprint": "" });
    frame(&mut old, speak.to_string().as_bytes()).await;
    refused_with(old, "protocol").await;

    let mut not_hello = UnixStream::connect(home.socket()).await.unwrap();
    frame(&mut not_hello, b"garbage").await;
    refused_with(not_hello, "bad-request").await;

    // Over the cap: answered, never read.
    let mut big = welcomed(&home).await;
    big.write_all(&(9u32 << 20).to_be_bytes()).await.unwrap();
    refused_with(big, "too-large").await;

    let mut cut = welcomed(&home).await;
    cut.write_all(&[0, 0, 0, 50, b'{']).await.unwrap();
    cut.shutdown().await.unwrap();
    refused_with(cut, "bad-frame").await;

    // Garbage JSON in a frame is answered and the connection goes on.
    let mut garbled = welcomed(&home).await;
    frame(&mut garbled, b"{not json").await;
    let answer = next(&mut garbled).await.unwrap();
    assert_eq!(answer["error"]["code"], "bad-request");
    frame(&mut garbled, br#"{"id":1,"method":"no.such"}"#).await;
    assert_eq!(
        next(&mut garbled).await.unwrap()["error"]["code"],
        "unknown-method"
    );
    frame(&mut garbled, &request::<Status>(2, &NoParams {})).await;
    assert_eq!(next(&mut garbled).await.unwrap()["id"], 2);
    drop(garbled);

    // 500 clients at once, all served, while the stalled one still holds its connection.
    many_clients_at_once(&home).await;
    silent.await.unwrap();
    drop(stalled);
    status_works(&home).await;

    // Everything those clients opened is closed again. Judged on the count the wait ends on:
    // the daemon's own background work may open a file for a moment after it.
    let begun = Instant::now();
    let mut count = fds_of(pid);
    while count > baseline + 2 && begun.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(50)).await;
        count = fds_of(pid);
    }
    let open: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        count <= baseline + 2,
        "{count} descriptors, {baseline} before: {open:?}"
    );
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_in_ragged_writes_are_all_answered() {
    const REQUESTS: usize = 2_000;
    let home = Home::new();
    home.ok(&["start"]);
    let (mut from_daemon, mut to_daemon) = welcomed(&home).await.into_split();
    // Requests that each run in a task of their own, so answers finish while frames are
    // still arriving, written in 7-byte pieces so that a frame is often half read when one
    // does.
    let mut bytes = Vec::new();
    for id in 0..REQUESTS {
        let body = request::<ProcessList>(id as u64, &NoParams {});
        bytes.extend(u32::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend(&body);
    }
    let writer = tokio::spawn(async move {
        for piece in bytes.chunks(7) {
            to_daemon.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        to_daemon
    });
    let mut answered = vec![false; REQUESTS];
    for _ in 0..REQUESTS {
        let answer = next(&mut from_daemon)
            .await
            .expect("an answer to every request");
        assert!(answer["error"].is_null(), "{answer}");
        answered[usize::try_from(answer["id"].as_u64().unwrap()).unwrap()] = true;
    }
    assert!(answered.iter().all(|a| *a));
    drop(writer.await.unwrap());
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_is_refused_and_a_changed_config_is_reported() {
    let home = Home::new();
    home.ok(&["start"]);
    // The CLI notices that the config it reads is not the one the daemon booted with.
    std::fs::write(home.path.join("config.toml"), "boot_timeout_ms = 1234\n").unwrap();
    let out = home.run(&["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different config"));
    home.ok(&["stop"]);

    // Another uid, simulated by a daemon that allows only a different one.
    let other = Home::new();
    let files = capsid_kernel::daemon::RunFiles::acquire(&capsid_core::CapsidHome::at(&other.path))
        .unwrap();
    let kernel = capsid_kernel::Kernel::builder()
        .home(&other.path)
        .build()
        .await
        .unwrap();
    let options = capsid_kernel::daemon::DaemonOptions {
        allowed_uid: nix::unistd::getuid().as_raw() + 1,
        ..Default::default()
    };
    let socket = other.socket();
    let server = tokio::spawn(capsid_kernel::daemon::serve(kernel, files, options));
    let begun = Instant::now();
    while !socket.exists() && begun.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Refused before its hello is even read.
    let s = UnixStream::connect(&socket).await.unwrap();
    refused_with(s, "unauthorized").await;
    server.abort();
    let _ = server.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_ends_with_its_client() {
    use capsid_protocol::methods::{ToolChangesFollow, ToolListParams};
    let home = Home::new();
    home.ok(&["start"]);
    let pid = home.pid().unwrap();
    let baseline = fds_of(pid);
    for _ in 0..20 {
        let at = capsid_core::CapsidHome::at(&home.path);
        let mut client = capsid_protocol::Client::connect(&at, String::new())
            .await
            .unwrap();
        let mut follow = client
            .follow::<ToolChangesFollow>(&ToolListParams::default())
            .await
            .unwrap();
        assert!(follow.next().await.unwrap().is_some(), "the first frame");
    }
    // Each quiet follow is ended with its client, and its connection closed.
    let begun = Instant::now();
    while fds_of(pid) > baseline + 2 && begun.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        fds_of(pid) <= baseline + 2,
        "{} descriptors, {baseline} before",
        fds_of(pid)
    );
    home.ok(&["stop"]);
}

/// `capsid ps` shows a persistent pipeline's stages and the bytes through its link.
fn pipeline_in_ps(home: &Home) {
    let piped: Value = serde_json::from_str(&home.ok(&[
        "call",
        "runner",
        "pipe-persist",
        "--input",
        r#"{"stages":[{"program":"sh","args":["-c","printf abc; sleep 30"]},{"program":"cat"}],"keep":true}"#,
    ]))
    .unwrap();
    let stop = json!({ "id": piped["id"] }).to_string();
    for _ in 0..200 {
        let ps = home.json(&["ps"]);
        let pipeline = ps
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["stages"].as_array().is_some_and(|s| s.len() == 2))
            .cloned()
            .unwrap_or_else(|| panic!("no pipeline in {ps}"));
        if pipeline["links"][0]["bytes"] == 3 {
            assert_eq!(pipeline["stages"][0]["pid"], pipeline["pid"], "{pipeline}");
            let table = home.ok(&["ps"]);
            assert!(table.contains("pipeline (2 stages)"), "{table}");
            assert!(table.contains("3 B @"), "{table}");
            stats_show_the_pipeline(home);
            home.ok(&["call", "runner", "repl-stop", "--input", &stop]);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the link never showed 3 bytes");
}

/// `capsid stats runner` shows the running pipeline's samples (both stages' processes).
fn stats_show_the_pipeline(home: &Home) {
    for _ in 0..100 {
        let stats = home.json(&["stats", "runner"]);
        assert!(
            stats["program"].is_null(),
            "a wasm capsule runs no program: {stats}"
        );
        let pipe = stats["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == "pipe" && p["running"] == true)
            .cloned()
            .unwrap_or_else(|| panic!("no running pipe in {stats}"));
        let samples = pipe["samples"].as_array().unwrap();
        if samples.len() >= 2 {
            assert_eq!(pipe["stages"], 2);
            let last = samples.last().unwrap();
            assert!(last["tasks"].as_u64().unwrap() >= 2, "both stages: {last}");
            assert!(last["rss_bytes"].as_u64().unwrap() > 0, "{last}");
            let table = home.ok(&["stats", "runner"]);
            assert!(table.contains("pipe") && table.contains('▁'), "{table}");
            let missing = home.run(&["stats", "nosuch"]);
            assert!(String::from_utf8_lossy(&missing.stderr).contains("not loaded"));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("fewer than two samples of the pipeline in ten seconds");
}

/// Runs `capsid compile-component` with `input` on its stdin.
fn compile_component(input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(CAPSID)
        .arg("compile-component")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

#[test]
fn compile_component_answers_with_native_code_or_the_reason_it_cannot() {
    let wasm = std::fs::read(capsules_dir().join("hello/hello.wasm")).unwrap();
    let compiled = compile_component(&wasm);
    assert!(compiled.status.success(), "{compiled:?}");
    // wasmtime's artifacts are ELF objects.
    assert!(compiled.stdout.starts_with(b"\x7fELF"), "not an artifact");
    assert!(compiled.stderr.is_empty());

    let refused = compile_component(b"\0asm but not really");
    // 3: the helper's status for "not a component" (capsid-capsule's engine/helper.rs).
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(refused.stdout.is_empty());
    let reason = String::from_utf8_lossy(&refused.stderr);
    assert!(
        reason.contains("failed to parse WebAssembly module"),
        "{reason}"
    );
}
