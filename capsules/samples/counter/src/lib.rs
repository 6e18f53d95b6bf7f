//! A counter in the capsule's own KV namespace, incremented with compare-and-swap so
//! concurrent instances never lose an update. It is restartable: it keeps the last reload it
//! was told of, and refuses reloads once asked to (to show that a failing hook fails one).

use capsid_guest::{Capsule, Error, RestartCause, kv};
use serde_json::{Value, json};

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

struct Counter;

impl Capsule for Counter {
    fn call_tool(name: String, input: String) -> Result<String, Error> {
        match name.as_str() {
            "increment" => {
                let input: Value = serde_json::from_str(&input)
                    .map_err(|e| capsid_guest::invalid(e.to_string()))?;
                let by = input["by"].as_u64().unwrap_or(1);
                loop {
                    let old = kv::get(KEY)?;
                    let next = decode(old.as_deref())?.saturating_add(by);
                    if kv::compare_and_swap(KEY, old.as_deref(), Some(&next.to_le_bytes()))? {
                        return Ok(json!({ "count": next }).to_string());
                    }
                }
            }
            "get" => Ok(json!({ "count": decode(kv::get(KEY)?.as_deref())? }).to_string()),
            "reset" => {
                kv::delete(KEY)?;
                Ok(json!({ "count": 0 }).to_string())
            }
            "last-restart" => Ok(match kv::get(LAST_RESTART)? {
                Some(bytes) => String::from_utf8(bytes)
                    .map_err(|_| Error::Internal("stored restart is not UTF-8".into()))?,
                None => "null".to_owned(),
            }),
            "refuse-restarts" => {
                kv::set(REFUSE_RESTARTS, b"1")?;
                Ok(json!({ "refusing": true }).to_string())
            }
            other => Err(capsid_guest::unknown_tool(other)),
        }
    }

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
