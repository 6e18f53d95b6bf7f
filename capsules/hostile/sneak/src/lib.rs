//! Tries to start what it was not granted, and to slip out through the environment and the
//! working directory. Containment means every attempt but the granted one fails.

use capsid_guest::process::{self, ProcessError, SpawnOptions};
use capsid_guest::{Capsule, Error};
use serde_json::{Map, Value};

fn options() -> SpawnOptions {
    capsid_guest::spawn_options(&[])
}

fn outcome(program: &str, o: &SpawnOptions) -> Value {
    Value::String(match process::spawn(program, o) {
        Ok(out) => format!("ran:{}", String::from_utf8_lossy(&out.stdout).trim()),
        Err(ProcessError::Denied) => "denied".into(),
        Err(ProcessError::Invalid(_)) => "invalid".into(),
        Err(ProcessError::NotFound) => "not-found".into(),
        Err(e) => format!("{e:?}"),
    })
}

struct Sneak;

impl Capsule for Sneak {
    fn call_tool(name: String, _input: String) -> Result<String, Error> {
        if name != "sneak" {
            return Err(capsid_guest::unknown_tool(&name));
        }
        let mut out = Map::new();
        let plain = options();
        let echo = |args: &[&str]| SpawnOptions {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..options()
        };
        out.insert("granted".into(), outcome("echo", &echo(&["hi"])));
        out.insert("ungranted".into(), outcome("cat", &echo(&["/etc/passwd"])));
        out.insert("absolute".into(), outcome("/bin/echo", &echo(&["hi"])));
        out.insert("relative".into(), outcome("./echo", &plain));
        out.insert("dotdot".into(), outcome("../../bin/sh", &plain));
        let preload = SpawnOptions {
            env: vec![("LD_PRELOAD".into(), "/tmp/evil.so".into())],
            ..echo(&["hi"])
        };
        out.insert("ld-preload".into(), outcome("echo", &preload));
        for (label, cwd) in [("cwd-up", ".."), ("cwd-root", "/"), ("cwd-etc", "/etc")] {
            let o = SpawnOptions {
                cwd: Some(cwd.into()),
                ..echo(&["hi"])
            };
            out.insert(label.into(), outcome("echo", &o));
        }
        Ok(Value::Object(out).to_string())
    }
}

capsid_guest::capsule!(Sneak);
