//! Starts a persistent `sleep 4242` from `init`, then fails `init`: the process must not
//! outlive the load that failed.

use capsid_guest::process::{self, PersistentOptions};
use capsid_guest::{Capsule, Error};

struct Leaky;

impl Capsule for Leaky {
    fn init(_config: Vec<(String, String)>) -> Result<(), Error> {
        let options = PersistentOptions {
            label: Some("leak".into()),
            lifetime_ms: None,
            idle_ms: None,
            retention_ms: None,
            restart: None,
            survive_restart: false,
        };
        process::spawn_persistent("sleep", &capsid_guest::spawn_options(&["4242"]), &options)
            .map_err(|e| Error::Internal(format!("{e:?}")))?;
        Err(Error::Invalid(
            "failing the load after starting a process".into(),
        ))
    }

    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        Err(capsid_guest::unknown_tool(&name))
    }
}

capsid_guest::capsule!(Leaky);
