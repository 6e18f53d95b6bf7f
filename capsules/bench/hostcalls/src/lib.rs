//! Runs `n` guest-to-host calls in a loop so the host can time one call: `kv-get` reads one
//! key of its namespace, `sys-noop` asks for the monotonic clock (the cheapest host call).

use capsid_guest::{Capsule, Error, Json, Tools, kv, sys};
use serde::{Deserialize, Serialize};

/// How many calls a loop makes (1 unless told).
#[derive(Deserialize)]
struct Loops {
    n: Option<u64>,
}

#[derive(Serialize)]
struct Looped {
    n: u64,
}

fn kv_get(Json(loops): Json<Loops>) -> Result<Json<Looped>, Error> {
    let n = loops.n.unwrap_or(1);
    for _ in 0..n {
        std::hint::black_box(kv::get(b"k")?);
    }
    Ok(Json(Looped { n }))
}

fn sys_noop(Json(loops): Json<Loops>) -> Result<Json<Looped>, Error> {
    let n = loops.n.unwrap_or(1);
    for _ in 0..n {
        std::hint::black_box(sys::monotonic_ns());
    }
    Ok(Json(Looped { n }))
}

struct HostCalls;

impl Capsule for HostCalls {
    const TOOLS: Tools = capsid_guest::tools! {
        "kv-get" => kv_get,
        "sys-noop" => sys_noop,
    };

    fn init(_config: Vec<(String, String)>) -> Result<(), Error> {
        kv::set(
            b"k",
            b"a value of a realistic size, say sixty-four bytes long.........",
        )
    }
}

capsid_guest::capsule!(HostCalls);
