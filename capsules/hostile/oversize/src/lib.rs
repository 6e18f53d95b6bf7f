//! Passes every host call an input just past its documented limit and reports each outcome.
//! Containment means: every one is `invalid` (nothing written, nothing published), and an
//! over-long log line is cut rather than refused.

use capsid_guest::{Capsule, Error, fs, ipc, kv, log, sys};
use serde_json::{Map, Value};

const MIB: usize = 1024 * 1024;

fn outcome<T>(r: Result<T, Error>) -> Value {
    Value::String(capsid_guest::outcome(&r).into())
}

struct Oversize;

impl Capsule for Oversize {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "probe" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let mut out = Map::new();
        let mut note = |k: &str, v: Value| {
            out.insert(k.to_owned(), v);
        };
        note("kv-key", outcome(kv::set(&vec![b'k'; 4097], b"v")));
        note("kv-value", outcome(kv::set(b"k", &vec![0; 4 * MIB + 1])));
        note("kv-list-zero", outcome(kv::list(b"", None, 0)));
        note("kv-list-many", outcome(kv::list(b"", None, 1001)));
        note("kv-quota", outcome(kv::set(b"big", &vec![0; 2 * MIB])));
        note(
            "fs-write",
            outcome(fs::write("sandbox/big", &vec![0; 16 * MIB + 1])),
        );
        note(
            "fs-append",
            outcome(fs::append("sandbox/big", &vec![0; 16 * MIB + 1])),
        );
        note(
            "ipc-payload",
            outcome(ipc::publish("big.topic", &vec![b' '; MIB + 1])),
        );
        note("ipc-topic", outcome(ipc::publish(&"a".repeat(300), b"{}")));
        note("random", outcome(sys::random_bytes(4097)));
        log::log(log::Level::Info, &"x".repeat(100 * 1024));
        note(
            "kv-unchanged",
            Value::Bool(kv::get(b"k")?.is_none() && kv::get(b"big")?.is_none()),
        );
        Ok(Value::Object(out).to_string())
    }
}

capsid_guest::capsule!(Oversize);
