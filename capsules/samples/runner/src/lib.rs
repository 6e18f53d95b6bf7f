//! Runs granted programs: to their exit (`run`), as a pipeline to its end (`pipe`) or in the
//! background (`pipe-converse`, `pipe-orphan`, `pipe-keep`, `pipe-cap`), or in the background (`converse` talks to
//! `cat` over stdin; `start` keeps a `sleep` running across calls, `stop-all` signals them;
//! `orphan` starts one and drops its handle; `poll` waits on one with `wasi:io/poll`), or as
//! a persistent `sh` reached by its id across calls (the `repl-*` tools), a persistent
//! pipeline (`pipe-persist`) or a supervised persistent program (`persist-*`).
//!
//! Answers list their fields in alphabetical order, as they have always been written.

mod supervised;

use std::cell::RefCell;

use capsid_guest::process::{
    self, Background, OutputStream, PersistentOptions, SignalKind, SpawnOptions,
};
use capsid_guest::{Capsule, Error, Json, Tools, kv, sys};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

thread_local! {
    /// Background children kept across calls (this instance owns them).
    static KEPT: RefCell<Vec<Background>> = const { RefCell::new(Vec::new()) };
    /// Background pipelines kept across calls.
    static KEPT_PIPES: RefCell<Vec<process::Pipeline>> = const { RefCell::new(Vec::new()) };
}

fn failed(e: &process::ProcessError) -> Error {
    Error::Internal(format!("{e:?}"))
}

fn plain(args: &[&str], stdin: Option<&[u8]>) -> SpawnOptions {
    SpawnOptions {
        stdin: stdin.map(<[u8]>::to_vec),
        ..capsid_guest::spawn_options(args)
    }
}

#[derive(Deserialize)]
struct Run {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    stdin: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Ran {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        stderr: String,
        stdout: String,
    },
    Refused {
        error: String,
    },
}

fn run(Json(input): Json<Run>) -> Result<Json<Ran>, Error> {
    let mut options = capsid_guest::spawn_options(&[]);
    options.args = input.args;
    options.cwd = input.cwd;
    options.stdin = input.stdin.map(String::into_bytes);
    options.limits.cpu_seconds = Some(10);
    Ok(Json(match process::spawn(&input.program, &options) {
        Ok(out) => Ran::Exited {
            code: out.exit.code,
            signal: out.exit.signal,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        },
        Err(e) => Ran::Refused {
            error: format!("{e:?}"),
        },
    }))
}

#[derive(Deserialize)]
struct PipeStage {
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct Pipe {
    stages: Vec<PipeStage>,
    stdin: Option<String>,
    /// `any-failure`, else the last stage's exit ends it.
    end: Option<String>,
    pids: Option<u64>,
    /// Bytes to keep of the first link.
    tap: Option<u32>,
    /// `pipe-persist` only: leave it running and answer its id.
    #[serde(default)]
    keep: bool,
    /// `pipe-persist` only: start it again after the runtime restarts.
    #[serde(default)]
    survive: bool,
}

#[derive(Serialize)]
struct StageExit {
    code: Option<i32>,
    signal: Option<i32>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Piped {
    Ended {
        exits: Vec<StageExit>,
        links: Vec<u64>,
        stderr: Vec<String>,
        stdout: String,
        tap: String,
    },
    Refused {
        error: String,
    },
}

/// The stages and options `input` asks for.
fn pipeline_of(input: &Pipe) -> (Vec<process::Stage>, process::PipelineOptions) {
    let stages: Vec<process::Stage> = input
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut options = capsid_guest::spawn_options(&[]);
            options.args.clone_from(&s.args);
            if i == 0 {
                options.stdin = input.stdin.clone().map(String::into_bytes);
            }
            options.limits.cpu_seconds = Some(10);
            process::Stage {
                program: s.program.clone(),
                options,
            }
        })
        .collect();
    let options = process::PipelineOptions {
        pids: input.pids,
        end: if input.end.as_deref() == Some("any-failure") {
            process::EndPolicy::AnyFailure
        } else {
            process::EndPolicy::LastStage
        },
        grace_ms: Some(1000),
        taps: input.tap.map(|t| vec![Some(t)]).unwrap_or_default(),
    };
    (stages, options)
}

fn pipe(Json(input): Json<Pipe>) -> Result<Json<Piped>, Error> {
    let (stages, options) = pipeline_of(&input);
    Ok(Json(match process::spawn_pipeline(&stages, &options) {
        Ok(out) => Piped::Ended {
            exits: out
                .exits
                .iter()
                .map(|e| StageExit {
                    code: e.code,
                    signal: e.signal,
                })
                .collect(),
            links: out.links.iter().map(|l| l.bytes).collect(),
            stderr: out
                .stderr
                .iter()
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            tap: out
                .taps
                .first()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default(),
        },
        Err(e) => Piped::Refused {
            error: format!("{e:?}"),
        },
    }))
}

#[derive(Serialize)]
struct Conversed {
    code: Option<i32>,
    stdout: String,
}

fn converse() -> Result<Json<Conversed>, Error> {
    let cat =
        process::spawn_background("cat", &plain(&[], Some(b"first\n"))).map_err(|e| failed(&e))?;
    cat.write_stdin(b"second\n").map_err(|e| failed(&e))?;
    cat.close_stdin();
    let out = cat.wait_with_output();
    Ok(Json(Conversed {
        code: out.exit.code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }))
}

#[derive(Serialize)]
struct Started {
    pid: u32,
}

fn start() -> Result<Json<Started>, Error> {
    let sleeper =
        process::spawn_background("sleep", &plain(&["600"], None)).map_err(|e| failed(&e))?;
    let pid = sleeper.os_pid();
    KEPT.with(|k| k.borrow_mut().push(sleeper));
    Ok(Json(Started { pid }))
}

#[derive(Serialize)]
struct Stopped {
    signals: Vec<Option<i32>>,
}

fn stop_all() -> Result<Json<Stopped>, Error> {
    let kept: Vec<Background> = KEPT.with(|k| k.borrow_mut().drain(..).collect());
    let mut signals = Vec::new();
    for child in &kept {
        child.signal(SignalKind::Term).map_err(|e| failed(&e))?;
        signals.push(child.wait(10_000).and_then(|e| e.signal));
    }
    Ok(Json(Stopped { signals }))
}

fn orphan() -> Result<Json<Started>, Error> {
    let sleeper =
        process::spawn_background("sleep", &plain(&["600"], None)).map_err(|e| failed(&e))?;
    let pid = sleeper.os_pid();
    let _ = sleeper.read_logs(OutputStream::Stdout, 1024);
    Ok(Json(Started { pid }))
}

#[derive(Serialize)]
struct Polled {
    after: String,
    before: String,
    code: Option<i32>,
    exited_early: bool,
    first: Vec<u32>,
    second: Vec<u32>,
}

/// Waits on a child with `wasi:io/poll`: first for its output (while it waits for input),
/// then for its exit.
fn poll() -> Result<Json<Polled>, Error> {
    let script = "echo ready; read line; echo \"got $line\"; exit 3";
    let child = process::spawn_background("sh", &plain(&["-c", script], Some(b"")))
        .map_err(|e| failed(&e))?;
    let output = child.subscribe_output(OutputStream::Stdout);
    let exit = child.subscribe_exit();
    let first = capsid_guest::poll::poll(&[&output, &exit]);
    let before = String::from_utf8_lossy(&child.read_logs(OutputStream::Stdout, 1024)).into_owned();
    let exited_early = exit.ready();
    child.write_stdin(b"x\n").map_err(|e| failed(&e))?;
    child.close_stdin();
    let second = capsid_guest::poll::poll(&[&exit]);
    let code = child.wait(0).and_then(|e| e.code);
    output.block();
    let after = String::from_utf8_lossy(&child.read_logs(OutputStream::Stdout, 1024)).into_owned();
    drop((output, exit));
    Ok(Json(Polled {
        after,
        before,
        code,
        exited_early,
        first,
        second,
    }))
}

#[derive(Serialize)]
struct PipeConversed {
    /// Bytes through the link after the first write, once they have gone through.
    between: u64,
    code: Option<i32>,
    links: Vec<u64>,
    stdout: String,
    tap: String,
}

/// A background `cat | sh -c 'wc -c'` fed in two writes, its link watched and tapped, then
/// awaited through `wasi:io/poll`.
fn pipe_converse() -> Result<Json<PipeConversed>, Error> {
    let stages = [
        process::Stage {
            program: "cat".into(),
            options: plain(&[], Some(b"")),
        },
        process::Stage {
            program: "sh".into(),
            options: plain(&["-c", "wc -c"], None),
        },
    ];
    let options = process::PipelineOptions {
        pids: None,
        end: process::EndPolicy::LastStage,
        grace_ms: None,
        taps: vec![Some(4096)],
    };
    let pipeline = process::spawn_pipeline_background(&stages, &options).map_err(|e| failed(&e))?;
    pipeline.write_stdin(b"first ").map_err(|e| failed(&e))?;
    let mut between = 0;
    for _ in 0..1000 {
        between = pipeline.links()[0].bytes;
        if between == 6 {
            break;
        }
        // A short wait on a pipeline that cannot end yet (its stdin is open).
        let _ = pipeline.wait(5);
    }
    pipeline.write_stdin(b"second").map_err(|e| failed(&e))?;
    pipeline.close_stdin();
    // The last stage's answer, as soon as it is there; then its exit.
    let answer = pipeline.subscribe_output(1, OutputStream::Stdout);
    capsid_guest::poll::poll(&[&answer]);
    let stdout = String::from_utf8_lossy(&pipeline.read_logs(1, OutputStream::Stdout, 1024))
        .trim()
        .to_owned();
    let exit = pipeline.subscribe_exit();
    capsid_guest::poll::poll(&[&exit]);
    drop((answer, exit));
    let out = pipeline.wait_with_output();
    Ok(Json(PipeConversed {
        between,
        code: out.exits.last().and_then(|e| e.code),
        links: out.links.iter().map(|l| l.bytes).collect(),
        stdout,
        tap: String::from_utf8_lossy(&out.taps[0]).into_owned(),
    }))
}

/// Background pipelines of 16 `cat`s each: two fill the instance's 32 background children,
/// a third is refused, and once the two are dropped another starts.
fn pipe_cap() -> Result<Json<Value>, Error> {
    let stages: Vec<process::Stage> = (0..16)
        .map(|_| process::Stage {
            program: "cat".into(),
            options: plain(&[], None),
        })
        .collect();
    let options = process::PipelineOptions {
        pids: None,
        end: process::EndPolicy::LastStage,
        grace_ms: None,
        taps: Vec::new(),
    };
    let start = || process::spawn_pipeline_background(&stages, &options);
    let held = [
        start().map_err(|e| failed(&e))?,
        start().map_err(|e| failed(&e))?,
    ];
    let third = start().err().map(|e| format!("{e:?}"));
    drop(held);
    let after = start().is_ok();
    Ok(Json(json!({ "third": third, "after_drop": after })))
}

#[derive(Deserialize)]
struct PipeKeep {
    seconds: u64,
}

/// `sleep <seconds> | cat`, started in the background.
fn sleep_into_cat(seconds: &str) -> Result<process::Pipeline, Error> {
    let stages = [
        process::Stage {
            program: "sleep".into(),
            options: plain(&[seconds], None),
        },
        process::Stage {
            program: "cat".into(),
            options: plain(&[], None),
        },
    ];
    let options = process::PipelineOptions {
        pids: None,
        end: process::EndPolicy::LastStage,
        grace_ms: None,
        taps: Vec::new(),
    };
    process::spawn_pipeline_background(&stages, &options).map_err(|e| failed(&e))
}

/// Starts `sleep <seconds> | cat` in the background and keeps it.
fn pipe_keep(Json(input): Json<PipeKeep>) -> Result<Json<Value>, Error> {
    let pipeline = sleep_into_cat(&input.seconds.to_string())?;
    KEPT_PIPES.with(|k| k.borrow_mut().push(pipeline));
    Ok(Json(json!({ "kept": true })))
}

/// Starts `sleep 1000.2468 | cat` in the background and drops its handle.
fn pipe_orphan() -> Result<Json<Value>, Error> {
    let pipeline = sleep_into_cat("1000.2468")?;
    let running = pipeline.wait(100).is_none();
    drop(pipeline);
    Ok(Json(json!({ "running": running })))
}

/// A persistent `sh`, by the id `repl-start` answered.
#[derive(Deserialize)]
struct Repl {
    id: String,
}

#[derive(Deserialize)]
struct ReplLine {
    id: String,
    #[serde(default)]
    line: String,
}

#[derive(Serialize)]
struct ReplStarted {
    id: String,
}

#[derive(Serialize)]
struct ReplOutput {
    output: String,
}

#[derive(Serialize)]
struct ReplStatus {
    label: Option<String>,
    running: bool,
}

#[derive(Serialize)]
struct ReplStopped {
    code: Option<i32>,
    signal: Option<i32>,
}

fn repl_start() -> Result<Json<ReplStarted>, Error> {
    let id = process::spawn_persistent(
        "sh",
        &plain(&[], Some(b"")),
        &PersistentOptions {
            label: Some("repl".into()),
            lifetime_ms: None,
            idle_ms: None,
            retention_ms: None,
            restart: None,
            survive_restart: false,
        },
    )
    .map_err(|e| failed(&e))?;
    process::watch(&id, true).map_err(|e| failed(&e))?;
    Ok(Json(ReplStarted { id }))
}

fn repl_eval(Json(input): Json<ReplLine>) -> Result<Json<ReplOutput>, Error> {
    let id = input.id;
    // Read on from where the last evaluation stopped (kept in KV), up to a marker unique to
    // this evaluation.
    let key = format!("cursor:{id}");
    let mut cursor = kv::get(key.as_bytes())?
        .and_then(|b| serde_json::from_slice::<(u64, u64)>(&b).ok())
        .map(|(generation, offset)| process::Cursor { generation, offset });
    let nonce: String = sys::random_bytes(8)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let marker = format!("__done_{nonce}__\n");
    process::write_stdin(
        &id,
        format!("{}\necho __done_{nonce}__\n", input.line).as_bytes(),
    )
    .map_err(|e| failed(&e))?;
    let mut seen = String::new();
    while !seen.contains(&marker) {
        let chunk = process::read_since(&id, OutputStream::Stdout, cursor, 65536)
            .map_err(|e| failed(&e))?;
        seen.push_str(&String::from_utf8_lossy(&chunk.bytes));
        cursor = Some(chunk.next);
        if chunk.bytes.is_empty() && process::wait(&id, 10).map_err(|e| failed(&e))?.is_some() {
            return Err(Error::Internal("the repl exited".into()));
        }
    }
    if let Some(c) = cursor {
        kv::set(
            key.as_bytes(),
            json!([c.generation, c.offset]).to_string().as_bytes(),
        )?;
    }
    let output = seen.split(&marker).next().unwrap_or_default().to_owned();
    Ok(Json(ReplOutput { output }))
}

fn repl_status(Json(repl): Json<Repl>) -> Result<Json<ReplStatus>, Error> {
    let status = process::status(&repl.id).map_err(|e| failed(&e))?;
    Ok(Json(ReplStatus {
        label: status.label,
        running: status.exit.is_none(),
    }))
}

fn repl_stop(Json(repl): Json<Repl>) -> Result<Json<ReplStopped>, Error> {
    let exit = process::stop(&repl.id, 1000).map_err(|e| failed(&e))?;
    Ok(Json(ReplStopped {
        code: exit.and_then(|e| e.code),
        signal: exit.and_then(|e| e.signal),
    }))
}

/// The last lifecycle event `handle_event` stored, or `null`.
fn last_event() -> Result<Json<Value>, Error> {
    let event = kv::get(b"last-event")?.unwrap_or_default();
    Ok(Json(serde_json::from_slice(&event).unwrap_or(Value::Null)))
}

struct Runner;

impl Capsule for Runner {
    const TOOLS: Tools = capsid_guest::tools! {
        "run" => run,
        "pipe" => pipe,
        "pipe-converse" => pipe_converse,
        "pipe-orphan" => pipe_orphan,
        "pipe-keep" => pipe_keep,
        "pipe-cap" => pipe_cap,
        "converse" => converse,
        "start" => start,
        "stop-all" => stop_all,
        "orphan" => orphan,
        "poll" => poll,
        "repl-start" => repl_start,
        "repl-eval" => repl_eval,
        "repl-status" => repl_status,
        "repl-stop" => repl_stop,
        "last-event" => last_event,
        "pipe-persist" => supervised::pipe_persist,
        "persist-restart" => supervised::persist_restart,
        "persist-status" => supervised::persist_status,
    };

    fn handle_event(topic: String, payload: Vec<u8>) -> Result<(), Error> {
        let event = json!({
            "topic": topic,
            "payload": serde_json::from_slice::<Value>(&payload).unwrap_or(Value::Null),
        });
        kv::set(b"last-event", event.to_string().as_bytes())
    }
}

capsid_guest::capsule!(Runner);
