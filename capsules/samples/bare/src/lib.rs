//! A capsule written against `wit/` with wit-bindgen alone, without `capsid_guest`: any
//! toolchain that builds a component for the `capsule` world will do. It exports `guest`
//! and not `lifecycle`, so its reloads reach it untold. Its one tool, `echo`, returns its
//! input.

wit_bindgen::generate!({
    world: "capsule",
    path: "../../../wit",
    generate_all,
});

use capsid::host::types::Error;
use exports::capsid::host::guest::Guest;

struct Bare;

impl Guest for Bare {
    fn init(_config: Vec<(String, String)>) -> Result<(), Error> {
        Ok(())
    }

    fn handle_event(_topic: String, _payload: Vec<u8>) -> Result<(), Error> {
        Ok(())
    }

    fn call_tool(name: String, input_json: String) -> Result<String, Error> {
        match name.as_str() {
            "echo" => Ok(input_json),
            other => Err(Error::Invalid(format!("unknown tool {other:?}"))),
        }
    }

    fn shutdown() {}
}

export!(Bare);
