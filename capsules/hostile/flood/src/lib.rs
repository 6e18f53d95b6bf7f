//! Starts a program that writes 64 MiB through a 64 KiB output limit.

use capsid_guest::process;
use capsid_guest::{Capsule, Error};
use serde_json::json;

struct Flood;

impl Capsule for Flood {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "flood" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let mut options = capsid_guest::spawn_options(&["-c", "head -c 67108864 /dev/zero"]);
        options.output_limit = Some(65536);
        let out = process::spawn("sh", &options).map_err(|e| Error::Internal(format!("{e:?}")))?;
        Ok(json!({
            "code": out.exit.code,
            "kept": out.stdout.len(),
            "dropped": out.stdout_dropped,
        })
        .to_string())
    }
}

capsid_guest::capsule!(Flood);
