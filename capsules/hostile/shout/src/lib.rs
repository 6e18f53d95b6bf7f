//! Publishes on a topic it was granted and on one it was not; reports both outcomes.

use capsid_guest::{Capsule, Error, ipc, outcome};
use serde_json::json;

struct Shout;

impl Capsule for Shout {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "shout" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        Ok(json!({
            "granted": outcome(&ipc::publish("shout.ok", b"{}")),
            "forbidden": outcome(&ipc::publish("admin.alerts", b"{\"all\":\"yours\"}")),
            "wildcard": outcome(&ipc::publish("shout.*", b"{}")),
            "invalid": outcome(&ipc::publish("Shout..OK", b"{}")),
        })
        .to_string())
    }
}

capsid_guest::capsule!(Shout);
