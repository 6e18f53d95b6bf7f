//! Exports `guest` as it should, and `lifecycle` with a `restart` of the wrong signature:
//! loading it must fail with a clear error naming it, before any call reaches it.

wit_bindgen::generate!({
    world: "warped",
    path: "wit",
});

use capsid::host::types::Error;

struct Warped;

impl exports::capsid::host::guest::Guest for Warped {
    fn init(_config: Vec<(String, String)>) -> Result<(), Error> {
        Ok(())
    }

    fn handle_event(_topic: String, _payload: Vec<u8>) -> Result<(), Error> {
        Ok(())
    }

    fn call_tool(_name: String, input_json: String) -> Result<String, Error> {
        Ok(input_json)
    }

    fn shutdown() {}
}

impl exports::capsid::host::lifecycle::Guest for Warped {
    fn restart(_restarts: String) {}
}

export!(Warped);
