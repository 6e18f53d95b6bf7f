//! `capsule` (continued): a WebAssembly capsule calling another capsule's tool through
//! `capsid:host/tools` (`relay` calling `hello`'s `echo`), against the parts it is made of,
//! measured in the same run on the same audit log: the direct `call-tool` of `hello`'s
//! `echo`, the relay's own call when it makes none (a capsule name it refuses before
//! anything is checked or recorded, and a call it is denied: the check and one durable
//! record), and one durable audit append.

use std::time::{Duration, Instant};

use anyhow::Result;
use capsid_audit::{Decision, Record};
use capsid_integration_tests::{Runtime, id};
use serde_json::json;

use crate::report::{Row, percentile};

/// Calls timed per side, after [`WARMUP`] untimed ones.
const CALLS: usize = 2_000;
const WARMUP: usize = 200;
/// Appends timed for the audit part.
const APPENDS: usize = 500;
/// What the target allows beyond the direct call and the audit work.
const ALLOWANCE_US: f64 = 5.0;

/// Sorted latencies of `capsule`'s `tool` on `input`, checking each answer with `check`.
async fn latencies(
    rt: &Runtime,
    capsule: &str,
    tool: &str,
    input: &str,
    check: impl Fn(&str) -> bool,
) -> Result<Vec<Duration>> {
    let capsule = id(capsule);
    let mut out = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let start = Instant::now();
        let answer = rt.registry.call_tool(&capsule, tool, input).await?;
        if i >= WARMUP {
            out.push(start.elapsed());
        }
        anyhow::ensure!(check(&answer), "{capsule}.{tool} answered {answer:?}");
    }
    out.sort_unstable();
    Ok(out)
}

/// One durable append at a time on the runtime's own log.
async fn append_latencies(rt: &Runtime) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(APPENDS);
    for i in 0..APPENDS {
        let record = Record::new(
            rt.principal,
            "bench.append",
            "bench://tools",
            Decision::Info,
        )?
        .details(&json!({ "i": i }))?;
        let start = Instant::now();
        rt.audit.append(rt.chain, record).await?;
        out.push(start.elapsed());
    }
    out.sort_unstable();
    Ok(out)
}

/// The rows: the nested call against its target and its parts.
pub(crate) async fn rows() -> Result<Vec<Row>> {
    let rt = Runtime::new().await;
    rt.load("hello").await;
    rt.load("relay").await;
    let echo_input = r#"{"name":"bench"}"#;
    let direct = latencies(&rt, "hello", "echo", echo_input, |a| a == echo_input).await?;
    let relayed_input =
        json!({ "capsule": "hello", "tool": "echo", "input": { "name": "bench" } }).to_string();
    let relayed = latencies(&rt, "relay", "relay", &relayed_input, |a| {
        a == r#"{"ok":{"name":"bench"}}"#
    })
    .await?;
    let refused_input = json!({ "capsule": "Not A Name", "tool": "echo" }).to_string();
    let unrecorded = latencies(&rt, "relay", "relay", &refused_input, |a| {
        a.contains(r#""error":"invalid""#)
    })
    .await?;
    let denied_input = json!({ "capsule": "nosuch", "tool": "echo" }).to_string();
    let denied = latencies(&rt, "relay", "relay", &denied_input, |a| {
        a.contains(r#""error":"denied""#)
    })
    .await?;
    let append = append_latencies(&rt).await?;

    let (direct_p50, append_p50) = (percentile(&direct, 0.5), percentile(&append, 0.5));
    let relayed_p50 = percentile(&relayed, 0.5);
    Ok(vec![
        Row::new(
            "[tools] relay -> hello echo through tools.call p50",
            relayed_p50,
            "µs",
            "direct call-tool of hello echo p50",
            direct_p50,
        ),
        Row::new(
            "[tools] relay's own call, refusing before any record p50",
            percentile(&unrecorded, 0.5),
            "µs",
            "direct call-tool of hello echo p50",
            direct_p50,
        ),
        Row::new(
            "[tools] relay's own call, denied (check + one durable record) p50",
            percentile(&denied, 0.5),
            "µs",
            "direct call-tool of hello echo p50",
            direct_p50,
        ),
        Row::new(
            "one durable audit append p50 (same log)",
            append_p50,
            "µs",
            "none (the part of the target the records cost)",
            0.0,
        ),
        Row::new(
            "[tools] relay -> hello echo through tools.call p50",
            relayed_p50,
            "µs",
            "target: direct p50 + one durable append + 5 µs",
            direct_p50 + append_p50 + ALLOWANCE_US,
        ),
        // The call is recorded durably before it runs and again before its caller hears
        // the outcome: two appends in sequence.
        Row::new(
            "[tools] relay -> hello echo through tools.call p50",
            relayed_p50,
            "µs",
            "direct p50 + the two durable appends a call makes + 5 µs",
            direct_p50 + 2.0 * append_p50 + ALLOWANCE_US,
        ),
    ])
}
