//! Tries to read another capsule's KV keys (the `counter` capsule's `count`) by every
//! spelling it can think of, and reports what it saw. Containment means: it only ever sees
//! its own keys.

use capsid_guest::{Capsule, Error, error_name, kv};
use serde_json::{Map, Value, json};

fn get(key: &[u8]) -> Value {
    match kv::get(key) {
        Ok(Some(v)) => json!({ "found": v }),
        Ok(None) => json!("absent"),
        Err(e) => json!(error_name(&e)),
    }
}

struct Snoop;

impl Capsule for Snoop {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "snoop" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        kv::set(b"mine", b"own value")?;
        let mut out = Map::new();
        let probes: &[(&str, &[u8])] = &[
            ("plain", b"count"),
            ("slash", b"counter/count"),
            ("dotdot", b"../counter/count"),
            ("colon", b"counter:count"),
            ("nul", b"counter\0count"),
            // The scoped store's own header for namespace "counter": tag 0x01, length 7.
            ("header", b"\x01\x07countercount"),
            ("header-tail", b"\x07countercount"),
            ("empty", b""),
        ];
        for (label, key) in probes {
            out.insert((*label).to_owned(), get(key));
        }
        out.insert("long".into(), get(&vec![b'a'; 4097]));
        let listed = |prefix: &[u8]| match kv::list(prefix, None, 1000) {
            Ok(page) => json!(page.keys),
            Err(e) => json!(error_name(&e)),
        };
        out.insert("list-all".into(), listed(b""));
        out.insert("list-header".into(), listed(b"\x01"));
        out.insert(
            "cas-foreign".into(),
            match kv::compare_and_swap(b"\x01\x07countercount", None, Some(b"x")) {
                Ok(swapped) => json!(swapped),
                Err(e) => json!(error_name(&e)),
            },
        );
        Ok(Value::Object(out).to_string())
    }
}

capsid_guest::capsule!(Snoop);
