//! Tries to reach persistent processes it does not own: random ids, malformed ids, and an id
//! it was handed (another capsule's). Containment means every answer is `no-such-process`.

use capsid_guest::process::{self, OutputStream, ProcessError, SignalKind};
use capsid_guest::{Capsule, Error, sys};
use serde_json::{Value, json};

fn answer<T>(r: Result<T, ProcessError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

struct Guess;

impl Capsule for Guess {
    fn call_tool(name: String, input: String) -> Result<String, Error> {
        if name != "guess" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let input: Value =
            serde_json::from_str(&input).map_err(|e| capsid_guest::invalid(e.to_string()))?;
        let mut ids: Vec<String> = (0..32)
            .map(|_| {
                let bytes = sys::random_bytes(16).unwrap_or_default();
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            })
            .collect();
        ids.extend(["".into(), "../x".into(), "0".repeat(32), "G".repeat(32)]);
        if let Some(foreign) = input["foreign"].as_str() {
            ids.push(foreign.to_owned());
            ids.push(foreign.to_uppercase());
        }
        let mut answers = Vec::new();
        for id in &ids {
            answers.push(answer(process::status(id)));
            answers.push(answer(process::read_logs(id, OutputStream::Stdout, 100)));
            answers.push(answer(process::signal(id, SignalKind::Kill)));
            answers.push(answer(process::stop(id, 0)));
        }
        answers.sort();
        answers.dedup();
        Ok(
            json!({ "answers": answers, "listed": process::list_persistent(None).len() })
                .to_string(),
        )
    }
}

capsid_guest::capsule!(Guess);
