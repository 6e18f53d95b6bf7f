//! Hears `echo.in`, says the same on `echo.out`, and counts what it echoed in its KV.

use capsid_guest::{Capsule, Error, Json, Tools, ipc, kv};
use serde::Serialize;

const ECHOED: &[u8] = b"echoed";

fn echoed() -> Result<u64, Error> {
    Ok(kv::get(ECHOED)?
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes))
}

#[derive(Serialize)]
struct Stats {
    echoed: u64,
}

fn stats() -> Result<Json<Stats>, Error> {
    Ok(Json(Stats { echoed: echoed()? }))
}

struct Echo;

impl Capsule for Echo {
    const TOOLS: Tools = capsid_guest::tools! { "stats" => stats };

    fn handle_event(topic: String, payload: Vec<u8>) -> Result<(), Error> {
        if topic != "echo.in" {
            return Err(capsid_guest::invalid(format!("unexpected topic {topic}")));
        }
        ipc::publish("echo.out", &payload)?;
        kv::set(ECHOED, &(echoed()? + 1).to_le_bytes())
    }
}

capsid_guest::capsule!(Echo);
