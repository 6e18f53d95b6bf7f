//! Starts a fork bomb under a pids limit of 16 and reports how it ended.

use capsid_guest::process;
use capsid_guest::{Capsule, Error};
use serde_json::json;

struct ForkBomb;

impl Capsule for ForkBomb {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "bomb" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let mut options = capsid_guest::spawn_options(&[
            "-c",
            "sleep 1 & t=$!; b() { b & b & wait; }; b & wait $t; kill -9 0",
        ]);
        options.limits.cpu_seconds = Some(5);
        options.limits.pids = Some(16);
        options.output_limit = Some(4096);
        Ok(match process::spawn("sh", &options) {
            Ok(out) => json!({ "code": out.exit.code, "signal": out.exit.signal }),
            Err(e) => json!({ "error": format!("{e:?}") }),
        }
        .to_string())
    }
}

capsid_guest::capsule!(ForkBomb);
