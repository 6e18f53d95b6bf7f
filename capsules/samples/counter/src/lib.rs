//! A counter in the capsule's own KV namespace, incremented with compare-and-swap so
//! concurrent instances never lose an update.

use capsid_guest::{Capsule, Error, kv};
use serde_json::{Value, json};

const KEY: &[u8] = b"count";

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
            other => Err(capsid_guest::unknown_tool(other)),
        }
    }
}

capsid_guest::capsule!(Counter);
