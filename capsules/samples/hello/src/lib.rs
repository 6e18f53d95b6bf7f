//! The smallest useful capsule: a `greet` tool that logs who it greeted.

use capsid_guest::{Capsule, Error, Json, RawJson, Tools, sys};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Who {
    name: Option<String>,
}

#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

fn greet(Json(who): Json<Who>) -> Result<Json<Greeting>, Error> {
    let who = who.name.as_deref().unwrap_or("world");
    let greeting = sys::config("GREETING").unwrap_or_else(|| "Hello".into());
    capsid_guest::info(&format!("greeting {who}"));
    Ok(Json(Greeting {
        greeting: format!("{greeting}, {who}!"),
    }))
}

/// No parsing and no host calls: what a call costs the runtime itself.
fn echo(input: RawJson) -> Result<RawJson, Error> {
    Ok(input)
}

// Fields in alphabetical order, as the answer has always been written.
#[derive(Serialize)]
struct Caller {
    capsule: String,
    principal: String,
}

fn whoami() -> Result<Json<Caller>, Error> {
    let caller = sys::caller();
    Ok(Json(Caller {
        capsule: caller.capsule,
        principal: caller.principal,
    }))
}

struct Hello;

impl Capsule for Hello {
    const TOOLS: Tools = capsid_guest::tools! {
        "greet" => greet,
        "echo" => echo,
        "whoami" => whoami,
    };
}

capsid_guest::capsule!(Hello);
