//! A counter in the capsule's own KV namespace, incremented with compare-and-swap so
//! concurrent instances never lose an update. It is restartable: it keeps the last reload it
//! was told of, and refuses reloads once asked to (to show that a failing hook fails one).

use capsid_guest::{Capsule, Error, Json, RawJson, RestartCause, Tools, kv, progress};
use serde::{Deserialize, Serialize};
use serde_json::json;

const KEY: &[u8] = b"count";
const LAST_RESTART: &[u8] = b"last-restart";
const REFUSE_RESTARTS: &[u8] = b"refuse-restarts";

fn decode(stored: Option<&[u8]>) -> Result<u64, Error> {
    Ok(match stored {
        Some(bytes) => u64::from_le_bytes(
            bytes
                .try_into()
                .map_err(|_| Error::Internal("stored count is not 8 bytes".into()))?,
        ),
        None => 0,
    })
}

#[derive(Deserialize)]
struct Increment {
    by: Option<u64>,
}

#[derive(Serialize)]
struct Count {
    count: u64,
}

#[derive(Serialize)]
struct Refusing {
    refusing: bool,
}

fn increment(Json(input): Json<Increment>) -> Result<Json<Count>, Error> {
    let by = input.by.unwrap_or(1);
    loop {
        let old = kv::get(KEY)?;
        let next = decode(old.as_deref())?.saturating_add(by);
        if kv::compare_and_swap(KEY, old.as_deref(), Some(&next.to_le_bytes()))? {
            return Ok(Json(Count { count: next }));
        }
    }
}

fn get() -> Result<Json<Count>, Error> {
    let count = decode(kv::get(KEY)?.as_deref())?;
    Ok(Json(Count { count }))
}

fn reset() -> Result<Json<Count>, Error> {
    kv::delete(KEY)?;
    Ok(Json(Count { count: 0 }))
}

/// What the restart hook stored, already JSON, or `null`.
fn last_restart() -> Result<RawJson, Error> {
    let stored = match kv::get(LAST_RESTART)? {
        Some(bytes) => String::from_utf8(bytes)
            .map_err(|_| Error::Internal("stored restart is not UTF-8".into()))?,
        None => "null".to_owned(),
    };
    Ok(RawJson(stored))
}

#[derive(Deserialize)]
struct CountTo {
    to: u64,
    #[serde(default)]
    step_ms: u64,
}

#[derive(Serialize)]
struct Counted {
    counted: u64,
}

/// Counts slowly, so a caller can watch its progress (and cancel it).
fn count_to(Json(input): Json<CountTo>) -> Result<Json<Counted>, Error> {
    if !(1..=1000).contains(&input.to) || input.step_ms > 100 {
        return Err(capsid_guest::invalid(
            "to must be 1..=1000 and step_ms at most 100",
        ));
    }
    for done in 1..=input.to {
        std::thread::sleep(std::time::Duration::from_millis(input.step_ms));
        progress::report(done, Some(input.to), Some(&format!("counted {done}")));
    }
    Ok(Json(Counted { counted: input.to }))
}

fn refuse_restarts() -> Result<Json<Refusing>, Error> {
    kv::set(REFUSE_RESTARTS, b"1")?;
    Ok(Json(Refusing { refusing: true }))
}

struct Counter;

impl Capsule for Counter {
    const TOOLS: Tools = capsid_guest::tools! {
        "increment" => increment,
        "get" => get,
        "reset" => reset,
        "last-restart" => last_restart,
        "refuse-restarts" => refuse_restarts,
        "count-to" => count_to,
    };

    fn restart(cause: RestartCause, restarts: u32) -> Result<(), Error> {
        if kv::get(REFUSE_RESTARTS)?.is_some() {
            return Err(Error::Invalid("asked to refuse reloads".into()));
        }
        let cause = match cause {
            RestartCause::Reload => "reload",
            RestartCause::Recovery => "recovery",
            RestartCause::SourceChanged => "source-changed",
        };
        let last = json!({ "cause": cause, "restarts": restarts }).to_string();
        kv::set(LAST_RESTART, last.as_bytes())
    }
}

capsid_guest::capsule!(Counter);
