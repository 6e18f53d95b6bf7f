//! Runs a granted program with arguments and optional stdin; returns its exit and output.

use capsid_guest::process::{self, Limits, SpawnOptions};
use capsid_guest::{Capsule, Error};
use serde_json::{Value, json};

struct Runner;

impl Capsule for Runner {
    fn call_tool(name: String, input: String) -> Result<String, Error> {
        if name != "run" {
            return Err(capsid_guest::unknown_tool(&name));
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
        let options = SpawnOptions {
            args,
            env: Vec::new(),
            cwd: input["cwd"].as_str().map(str::to_owned),
            stdin: input["stdin"].as_str().map(|s| s.as_bytes().to_vec()),
            limits: Limits {
                memory_bytes: None,
                cpu_seconds: Some(10),
                pids: None,
                open_files: None,
            },
            output_limit: None,
        };
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
