//! Runs granted programs: to their exit (`run`), or in the background (`converse` talks to
//! `cat` over stdin; `start` keeps a `sleep` running across calls, `stop-all` signals them;
//! `orphan` starts one and drops its handle).

use std::cell::RefCell;

use capsid_guest::process::{
    self, Background, OutputStream, PersistentOptions, SignalKind, SpawnOptions,
};
use capsid_guest::{Capsule, Error, kv, sys};
use serde_json::{Value, json};

thread_local! {
    /// Background children kept across calls (this instance owns them).
    static KEPT: RefCell<Vec<Background>> = const { RefCell::new(Vec::new()) };
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

fn background(name: &str) -> Result<Value, Error> {
    Ok(match name {
        "converse" => {
            let cat = process::spawn_background("cat", &plain(&[], Some(b"first\n")))
                .map_err(|e| failed(&e))?;
            cat.write_stdin(b"second\n").map_err(|e| failed(&e))?;
            cat.close_stdin();
            let out = cat.wait_with_output();
            json!({ "code": out.exit.code, "stdout": String::from_utf8_lossy(&out.stdout) })
        }
        "start" => {
            let sleeper = process::spawn_background("sleep", &plain(&["600"], None))
                .map_err(|e| failed(&e))?;
            let pid = sleeper.os_pid();
            KEPT.with(|k| k.borrow_mut().push(sleeper));
            json!({ "pid": pid })
        }
        "stop-all" => {
            let kept: Vec<Background> = KEPT.with(|k| k.borrow_mut().drain(..).collect());
            let mut signals = Vec::new();
            for child in &kept {
                child.signal(SignalKind::Term).map_err(|e| failed(&e))?;
                signals.push(child.wait(10_000).and_then(|e| e.signal));
            }
            json!({ "signals": signals })
        }
        "orphan" => {
            let sleeper = process::spawn_background("sleep", &plain(&["600"], None))
                .map_err(|e| failed(&e))?;
            let pid = sleeper.os_pid();
            let _ = sleeper.read_logs(OutputStream::Stdout, 1024);
            json!({ "pid": pid })
        }
        "poll" => poll_child()?,
        other => return Err(capsid_guest::unknown_tool(other)),
    })
}

/// Waits on a child with `wasi:io/poll`: first for its output (while it waits for input),
/// then for its exit.
fn poll_child() -> Result<Value, Error> {
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
    Ok(json!({
        "first": first,
        "before": before,
        "exited_early": exited_early,
        "second": second,
        "code": code,
        "after": after,
    }))
}

/// The persistent REPL tools: a `sh` kept alive across calls, reached by its id.
fn repl(name: &str, input: &Value) -> Result<Value, Error> {
    let id = || {
        input["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| capsid_guest::invalid("missing \"id\""))
    };
    Ok(match name {
        "repl-start" => {
            let id = process::spawn_persistent(
                "sh",
                &plain(&[], Some(b"")),
                &PersistentOptions {
                    label: Some("repl".into()),
                    lifetime_ms: None,
                    idle_ms: None,
                    retention_ms: None,
                },
            )
            .map_err(|e| failed(&e))?;
            process::watch(&id, true).map_err(|e| failed(&e))?;
            json!({ "id": id })
        }
        "repl-eval" => {
            let id = id()?;
            let line = input["line"].as_str().unwrap_or_default();
            // Read on from where the last evaluation stopped (kept in KV), up to a marker
            // unique to this evaluation.
            let key = format!("cursor:{id}");
            let mut cursor = kv::get(key.as_bytes())?
                .and_then(|b| serde_json::from_slice::<(u64, u64)>(&b).ok())
                .map(|(generation, offset)| process::Cursor { generation, offset });
            let nonce: String = sys::random_bytes(8)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let marker = format!("__done_{nonce}__\n");
            process::write_stdin(&id, format!("{line}\necho __done_{nonce}__\n").as_bytes())
                .map_err(|e| failed(&e))?;
            let mut seen = String::new();
            while !seen.contains(&marker) {
                let chunk = process::read_since(&id, OutputStream::Stdout, cursor, 65536)
                    .map_err(|e| failed(&e))?;
                seen.push_str(&String::from_utf8_lossy(&chunk.bytes));
                cursor = Some(chunk.next);
                if chunk.bytes.is_empty()
                    && process::wait(&id, 10).map_err(|e| failed(&e))?.is_some()
                {
                    return Err(Error::Internal("the repl exited".into()));
                }
            }
            if let Some(c) = cursor {
                kv::set(
                    key.as_bytes(),
                    json!([c.generation, c.offset]).to_string().as_bytes(),
                )?;
            }
            let output = seen.split(&marker).next().unwrap_or_default();
            json!({ "output": output })
        }
        "repl-status" => {
            let s = process::status(&id()?).map_err(|e| failed(&e))?;
            json!({ "label": s.label, "running": s.exit.is_none() })
        }
        "repl-stop" => {
            let exit = process::stop(&id()?, 1000).map_err(|e| failed(&e))?;
            json!({ "signal": exit.and_then(|e| e.signal), "code": exit.and_then(|e| e.code) })
        }
        "last-event" => {
            let event = kv::get(b"last-event")?.unwrap_or_default();
            serde_json::from_slice(&event).unwrap_or(Value::Null)
        }
        other => return Err(capsid_guest::unknown_tool(other)),
    })
}

struct Runner;

impl Capsule for Runner {
    fn handle_event(topic: String, payload: Vec<u8>) -> Result<(), Error> {
        let event = json!({
            "topic": topic,
            "payload": serde_json::from_slice::<Value>(&payload).unwrap_or(Value::Null),
        });
        kv::set(b"last-event", event.to_string().as_bytes())
    }

    fn call_tool(name: String, input: String) -> Result<String, Error> {
        if name.starts_with("repl-") || name == "last-event" {
            let input: Value =
                serde_json::from_str(&input).map_err(|e| capsid_guest::invalid(e.to_string()))?;
            return repl(&name, &input).map(|v| v.to_string());
        }
        if name != "run" {
            return background(&name).map(|v| v.to_string());
        }
        let input: Value =
            serde_json::from_str(&input).map_err(|e| capsid_guest::invalid(e.to_string()))?;
        let program = input["program"]
            .as_str()
            .ok_or_else(|| capsid_guest::invalid("missing \"program\""))?;
        let args = input["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut options = capsid_guest::spawn_options(&[]);
        options.args = args;
        options.cwd = input["cwd"].as_str().map(str::to_owned);
        options.stdin = input["stdin"].as_str().map(|s| s.as_bytes().to_vec());
        options.limits.cpu_seconds = Some(10);
        Ok(match process::spawn(program, &options) {
            Ok(out) => json!({
                "code": out.exit.code,
                "signal": out.exit.signal,
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
            }),
            Err(e) => json!({ "error": format!("{e:?}") }),
        }
        .to_string())
    }
}

capsid_guest::capsule!(Runner);
