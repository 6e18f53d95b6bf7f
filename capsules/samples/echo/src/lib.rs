//! Hears `echo.in`, says the same on `echo.out`, and counts what it echoed in its KV.

use capsid_guest::{Capsule, Error, ipc, kv};
use serde_json::json;

const ECHOED: &[u8] = b"echoed";

fn echoed() -> Result<u64, Error> {
    Ok(kv::get(ECHOED)?
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes))
}

struct Echo;

impl Capsule for Echo {
    fn handle_event(topic: String, payload: Vec<u8>) -> Result<(), Error> {
        if topic != "echo.in" {
            return Err(capsid_guest::invalid(format!("unexpected topic {topic}")));
        }
        ipc::publish("echo.out", &payload)?;
        kv::set(ECHOED, &(echoed()? + 1).to_le_bytes())
    }

    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        match name.as_str() {
            "stats" => Ok(json!({ "echoed": echoed()? }).to_string()),
            other => Err(capsid_guest::unknown_tool(other)),
        }
    }
}

capsid_guest::capsule!(Echo);
