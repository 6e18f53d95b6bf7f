//! Persistent pipelines and supervised persistent programs: `pipe-persist` runs a pipeline
//! persistently to its end and reports what its status and streams show; `persist-restart`
//! starts a program restarted on failure, `persist-status` reports its restarts.

use capsid_guest::process::{self, OutputStream, PersistentOptions, RestartOptions};
use capsid_guest::{Error, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Pipe, failed, pipeline_of};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn options(
    label: &str,
    restart: Option<RestartOptions>,
    survive_restart: bool,
) -> PersistentOptions {
    PersistentOptions {
        label: Some(label.into()),
        lifetime_ms: None,
        idle_ms: None,
        retention_ms: None,
        restart,
        survive_restart,
    }
}

/// Starts `input` as a persistent pipeline; with `keep`, answers its id, else waits for it,
/// reports its status, its stdout, its first stage's stderr and the first link's tap, and
/// releases it.
pub(crate) fn pipe_persist(Json(input): Json<Pipe>) -> Result<Json<Value>, Error> {
    let (stages, pipeline) = pipeline_of(&input);
    let id = match process::spawn_pipeline_persistent(
        &stages,
        &pipeline,
        &options("pipe", None, input.survive),
    ) {
        Ok(id) => id,
        Err(e) => return Ok(Json(json!({ "error": format!("{e:?}") }))),
    };
    if input.keep {
        return Ok(Json(json!({ "id": id })));
    }
    let exit = process::wait(&id, 30_000).map_err(|e| failed(&e))?;
    let status = process::status(&id).map_err(|e| failed(&e))?;
    let stdout =
        process::read_since(&id, OutputStream::Stdout, None, 1 << 20).map_err(|e| failed(&e))?;
    let first_err = process::read_stage_since(&id, 0, OutputStream::Stderr, None, 1 << 20)
        .map_err(|e| failed(&e))?;
    let tap = if input.tap.is_some() {
        text(&process::read_link_tap(&id, 0, 1 << 20).map_err(|e| failed(&e))?)
    } else {
        String::new()
    };
    let missing = process::read_stage_since(&id, 99, OutputStream::Stderr, None, 16)
        .err()
        .map(|e| format!("{e:?}"));
    process::release(&id).map_err(|e| failed(&e))?;
    Ok(Json(json!({
        "code": exit.and_then(|e| e.code),
        "first_stderr": text(&first_err.bytes),
        "links": status.links.iter().map(|l| l.bytes).collect::<Vec<_>>(),
        "missing_stage": missing,
        "pid_is_first_stage": status.stages.first().is_some_and(|s| s.pid == status.pid),
        "stage_codes": status.stages.iter().map(|s| s.exit.and_then(|e| e.code)).collect::<Vec<_>>(),
        "stdout": text(&stdout.bytes),
        "tap": tap,
    })))
}

#[derive(Deserialize)]
pub(crate) struct Supervised {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    max_restarts: u32,
    initial_backoff_ms: Option<u32>,
    max_backoff_ms: Option<u32>,
    #[serde(default)]
    survive: bool,
}

/// Starts a persistent program restarted on failure; its id.
pub(crate) fn persist_restart(Json(input): Json<Supervised>) -> Result<Json<Value>, Error> {
    let mut spawn = capsid_guest::spawn_options(&[]);
    spawn.args = input.args;
    let restart = RestartOptions {
        max_restarts: input.max_restarts,
        initial_backoff_ms: input.initial_backoff_ms,
        max_backoff_ms: input.max_backoff_ms,
    };
    Ok(Json(
        match process::spawn_persistent(
            &input.program,
            &spawn,
            &options("supervised", Some(restart), input.survive),
        ) {
            Ok(id) => json!({ "id": id }),
            Err(e) => json!({ "error": format!("{e:?}") }),
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct Id {
    id: String,
}

/// Where a persistent program's restarts stand.
pub(crate) fn persist_status(Json(input): Json<Id>) -> Result<Json<Value>, Error> {
    let status = process::status(&input.id).map_err(|e| failed(&e))?;
    let history = process::stats_history(&input.id).map_err(|e| failed(&e))?;
    Ok(Json(json!({
        "code": status.exit.and_then(|e| e.code),
        "history": history.iter().map(|s| json!({ "rss": s.rss_bytes, "tasks": s.tasks })).collect::<Vec<_>>(),
        "latest_tasks": status.stats.map(|s| s.tasks),
        "gave_up": status.gave_up,
        "generation": status.generation,
        "restarts": status.restarts,
        "retry_in_ms": status.retry_in_ms,
        "running": status.exit.is_none(),
    })))
}
