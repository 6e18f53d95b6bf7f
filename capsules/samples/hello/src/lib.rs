//! The smallest useful capsule: a `greet` tool that logs who it greeted.

use capsid_guest::{Capsule, Error, sys};
use serde_json::{Value, json};

struct Hello;

impl Capsule for Hello {
    fn call_tool(name: String, input: String) -> Result<String, Error> {
        match name.as_str() {
            "greet" => {
                let input: Value = serde_json::from_str(&input)
                    .map_err(|e| capsid_guest::invalid(e.to_string()))?;
                let who = input["name"].as_str().unwrap_or("world");
                let greeting = sys::config("GREETING").unwrap_or_else(|| "Hello".into());
                capsid_guest::info(&format!("greeting {who}"));
                Ok(json!({ "greeting": format!("{greeting}, {who}!") }).to_string())
            }
            // No host calls: what a call costs the runtime itself.
            "echo" => Ok(input),
            "whoami" => {
                let caller = sys::caller();
                Ok(json!({ "principal": caller.principal, "capsule": caller.capsule }).to_string())
            }
            other => Err(capsid_guest::unknown_tool(other)),
        }
    }
}

capsid_guest::capsule!(Hello);
