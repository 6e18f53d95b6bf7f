//! Calls other capsules' tools through `capsid:host/tools`, and says how each call went.

use capsid_guest::tools::{self, CallError};
use capsid_guest::{Capsule, Error, Json, Tools};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Relayed {
    capsule: String,
    tool: String,
    #[serde(default)]
    input: Option<Value>,
}

/// The kind of a call's failure and its message, as the `relay` tool reports it.
fn described(e: &CallError) -> (&'static str, String) {
    match e {
        CallError::Denied => ("denied", String::new()),
        CallError::NotFound => ("not-found", String::new()),
        CallError::Invalid(m) => ("invalid", m.clone()),
        CallError::Cycle => ("cycle", String::new()),
        CallError::TooDeep => ("too-deep", String::new()),
        CallError::Timeout => ("timeout", String::new()),
        CallError::Unavailable(m) => ("unavailable", m.clone()),
        CallError::Failed(m) => ("failed", m.clone()),
        CallError::Internal(m) => ("internal", m.clone()),
    }
}

fn relay(Json(call): Json<Relayed>) -> Result<Json<Value>, Error> {
    let input = call.input.unwrap_or_else(|| json!({})).to_string();
    Ok(Json(match tools::call(&call.capsule, &call.tool, &input) {
        Ok(answer) => {
            let answer = serde_json::from_str(&answer).unwrap_or(Value::String(answer));
            json!({ "ok": answer })
        }
        Err(e) => {
            let (kind, message) = described(&e);
            json!({ "error": kind, "message": message })
        }
    }))
}

#[derive(Serialize)]
struct Callable {
    capsule: String,
    name: String,
}

fn list() -> Result<Json<Vec<Callable>>, Error> {
    Ok(Json(
        tools::list()
            .into_iter()
            .map(|t| Callable {
                capsule: t.capsule,
                name: t.name,
            })
            .collect(),
    ))
}

struct Relay;

impl Capsule for Relay {
    const TOOLS: Tools = capsid_guest::tools! { "relay" => relay, "list" => list };
}

capsid_guest::capsule!(Relay);
