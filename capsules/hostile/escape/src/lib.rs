//! Tries every way out of `sandbox/`, the only folder it is granted, and reports what each
//! attempt got. Containment means: every attempt is `denied`, `invalid` or `not-found`, and
//! nothing outside the sandbox is read or written.

use capsid_guest::{Capsule, Error, fs};
use serde_json::{Map, Value};

fn outcome<T>(r: Result<T, Error>) -> Value {
    Value::String(capsid_guest::outcome(&r).into())
}

struct Escape;

impl Capsule for Escape {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "probe" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let mut out = Map::new();
        let mut note = |k: &str, v: Value| {
            out.insert(k.to_owned(), v);
        };
        note("read-absolute", outcome(fs::read("/etc/passwd")));
        note("read-dotdot", outcome(fs::read("../outside/secret.txt")));
        note(
            "read-inner-dotdot",
            outcome(fs::read("sandbox/../outside/secret.txt")),
        );
        note("read-dot", outcome(fs::read("./sandbox/own.txt")));
        note("read-double-slash", outcome(fs::read("sandbox//own.txt")));
        note(
            "read-nul",
            outcome(fs::read("sandbox/own.txt\0../../outside/secret.txt")),
        );
        note(
            "read-backslash",
            outcome(fs::read("sandbox\\..\\outside\\secret.txt")),
        );
        note(
            "read-percent",
            outcome(fs::read("sandbox/%2e%2e/outside/secret.txt")),
        );
        note("read-other-folder", outcome(fs::read("outside/secret.txt")));
        note("list-root", outcome(fs::read_dir("")));
        note("stat-outside", outcome(fs::stat("outside/secret.txt")));
        note(
            "read-symlink-out",
            outcome(fs::read("sandbox/link/secret.txt")),
        );
        note(
            "write-symlink-out",
            outcome(fs::write("sandbox/link/pwned.txt", b"pwned")),
        );
        note(
            "write-outside",
            outcome(fs::write("outside/pwned.txt", b"pwned")),
        );
        note(
            "rename-out",
            outcome(fs::rename("sandbox/own.txt", "outside/own.txt")),
        );
        note(
            "remove-outside",
            outcome(fs::remove_file("outside/secret.txt")),
        );
        note("mkdir-outside", outcome(fs::create_dir("outside/new")));
        // WASI's own filesystem has nothing preopened: std::fs must fail too.
        note(
            "wasi-read",
            Value::String(match std::fs::read("/etc/passwd") {
                Ok(_) => "ok".into(),
                Err(_) => "refused".into(),
            }),
        );
        note("read-own", outcome(fs::read("sandbox/own.txt")));
        Ok(Value::Object(out).to_string())
    }
}

capsid_guest::capsule!(Escape);
