//! Runs `n` guest-to-host calls in a loop so the host can time one call: `kv-get` reads one
//! key of its namespace, `sys-noop` asks for the monotonic clock (the cheapest host call).

use capsid_guest::{Capsule, Error, kv, sys};
use serde_json::{Value, json};

struct HostCalls;

impl Capsule for HostCalls {
    fn init(_config: Vec<(String, String)>) -> Result<(), Error> {
        kv::set(
            b"k",
            b"a value of a realistic size, say sixty-four bytes long.........",
        )
    }

    fn call_tool(name: String, input: String) -> Result<String, Error> {
        let input: Value =
            serde_json::from_str(&input).map_err(|e| capsid_guest::invalid(e.to_string()))?;
        let n = input["n"].as_u64().unwrap_or(1);
        match name.as_str() {
            "kv-get" => {
                for _ in 0..n {
                    std::hint::black_box(kv::get(b"k")?);
                }
            }
            "sys-noop" => {
                for _ in 0..n {
                    std::hint::black_box(sys::monotonic_ns());
                }
            }
            other => return Err(capsid_guest::unknown_tool(other)),
        }
        Ok(json!({ "n": n }).to_string())
    }
}

capsid_guest::capsule!(HostCalls);
