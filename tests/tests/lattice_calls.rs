//! Tools and events across a lattice (real `nats-server` cluster on loopback, real kernels,
//! hosts killed with SIGKILL): a call for a capsule this host does not have is served by a
//! host that has it, checked there for the user it names and audited on both hosts; calls
//! move to another host when the serving one dies mid-call; a cancel reaches the serving
//! host even before it said it took the call; a host shutting down answers the calls it
//! serves first; events on exported topics reach the other hosts' buses once, with their
//! origin, and never come back; a call whose check the calling host cannot record has its
//! outcome withheld. What the wire refuses: `lattice_wire.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use capsid_capabilities::Permissions;
use capsid_capsule::{CallControl, CapsuleError};
use capsid_core::limits::{LATTICE_ADVERT_INTERVAL, LATTICE_CALL_HANDOVER_WAIT};
use capsid_crypto::KeyPair;
use capsid_integration_tests::lattice::{
    HelloOnB, LATTICE, LatticeHost, call, call_until_ok, details, grant_greet, hello_on_b,
    lattice_config, refusals_on, user_of,
};
use capsid_integration_tests::{AuditRow, audit_rows, id};
use capsid_kernel::{Door, Kernel, KernelConfig, KernelError, ToolCaller};
use capsid_lattice::local::LocalCluster;
use capsid_lattice::{Lattice, Seal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_on_another_host_is_called_there_checked_there_and_audited_on_both() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let (a_host, b_host) = (LatticeHost::new(&[]), LatticeHost::new(&["hello"]));
    let a = a_host.boot(&cluster, &[&b_host]).await;
    let b = b_host.boot(&cluster, &[&a_host]).await;
    let user = user_of(&a);
    let input = r#"{"name":"lattice"}"#;

    // Nothing granted: A answers as for a tool that does not exist, without asking B.
    let err = call(&a, &user, ("hello", "greet"), input)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KernelError::Capsule(CapsuleError::UnknownTool { .. })),
        "{err}"
    );
    assert_eq!(
        b.lattice_traffic().unwrap().calls_served,
        0,
        "B was not asked"
    );
    let answer = grant_greet(&a, &user, input).await;
    let here = b.call_tool(&id("hello"), "greet", input).await.unwrap();
    assert_eq!(answer, here, "the remote answer is the tool's own");
    assert!(b.lattice_traffic().unwrap().calls_served >= 1);

    // A capsule no host serves: the operator is told so, a user only that no such tool is.
    let err = call(&a, &a.operator(Door::Api), ("nowhere", "x"), "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, KernelError::NotServed { .. }), "{err}");

    // Audited on both hosts: A's record names the host that served, B's the host that asked.
    let on_a = audit_rows(&a_host.audit_db());
    let result = on_a
        .iter()
        .rev()
        .find(|r| r.action == "tool.result" && r.capsule == "hello")
        .expect("A recorded the call's result");
    assert_eq!(details(result)["served_by"], b_host.key_hex());
    assert_eq!(details(result)["outcome"], "ok");
    // A's record of the check commits while the call travels, and is still ahead of its
    // result.
    assert_each_allowed_call_then_its_result(&on_a, "tool://hello/greet");
    let on_b = audit_rows(&b_host.audit_db());
    let checked = on_b
        .iter()
        .find(|r| {
            r.action == "tool.call"
                && r.resource == "tool://hello/greet"
                && details(r)["door"] == "lattice"
        })
        .expect("B checked and recorded the call");
    assert_eq!(
        checked.decision, "allow",
        "B checked the user's grant itself"
    );
    assert_eq!(details(checked)["door"], "lattice");
    assert_eq!(details(checked)["from_host"], a_host.key_hex());
    assert!(
        on_b.iter()
            .any(|r| r.action == "tool.result" && r.capsule == "hello")
    );

    // A failure there is of the kind it would be here (what the daemon and MCP report).
    let err = call(&a, &user, ("hello", "greet"), "not json")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Remote {
                kind: Some(capsid_protocol::ErrorCode::ToolError),
                ..
            }
        ),
        "{err:?}"
    );

    // A lists B's tool to the user granted it (from B's advertisement), and only that one.
    let start = Instant::now();
    loop {
        let tools = a.tools_for(user.principal, Door::McpHttp).await;
        let names: Vec<String> = tools
            .iter()
            .map(|t| format!("{}/{}", t.capsule, t.tool))
            .collect();
        if !names.is_empty() {
            assert_eq!(names, ["hello/greet"]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "B's tools never listed on A"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for kernel in [a, b] {
        kernel.shutdown().await;
    }
}

/// Each allowed `tool.call` on `resource` in `rows` is followed directly by its
/// `tool.result` (the calls were made one after another).
fn assert_each_allowed_call_then_its_result(rows: &[AuditRow], resource: &str) {
    let steps: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.resource == resource && r.action.starts_with("tool."))
        .map(|r| (r.action.as_str(), r.decision.as_str()))
        .collect();
    let allowed = steps
        .iter()
        .filter(|s| **s == ("tool.call", "allow"))
        .count();
    assert!(allowed >= 1, "{steps:?}");
    for (i, step) in steps.iter().enumerate() {
        if *step == ("tool.call", "allow") {
            let next = steps.get(i + 1).map(|s| s.0);
            assert_eq!(next, Some("tool.result"), "{steps:?}");
        }
    }
}

/// Waits until `holds`, failing the test, naming `what`, if it does not within `bound`.
async fn within(bound: Duration, what: &str, holds: impl Fn() -> bool) {
    let start = Instant::now();
    while !holds() {
        assert!(start.elapsed() < bound, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls in flight on the host at `db`: its records of calls begun, less those ended.
fn in_flight_on(db: &Path) -> usize {
    let rows = audit_rows(db);
    let begun = rows
        .iter()
        .filter(|r| r.action == "tool.call" && r.decision == "allow")
        .count();
    let ended = rows.iter().filter(|r| r.action == "tool.result").count();
    begun.saturating_sub(ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_move_to_a_host_that_still_serves_when_the_serving_host_dies_mid_call() {
    let program = Path::new(env!("CARGO_BIN_EXE_lattice-host"));
    let cluster = LocalCluster::start(1).await.unwrap();
    let (b_host, c_host) = (
        LatticeHost::new(&["counter"]),
        LatticeHost::new(&["counter"]),
    );
    let (a_host, a, user) = counter_served_by(&cluster, &[&b_host, &c_host]).await;
    let mut b = b_host.spawn(program, &cluster, &[&a_host]);
    let _c = c_host.spawn(program, &cluster, &[&a_host]);
    let tool = ("counter", "count-to");
    call_until_ok(&a, &user, tool, r#"{"to":1}"#, Duration::from_secs(20)).await;

    // Four callers, each calling a three-second tool over and over (long enough that the call
    // seen running on B still runs when B is killed, however late this test is scheduled).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (a, user, stop) = (a.clone(), user.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let result = call(&a, &user, tool, r#"{"to":30,"step_ms":100}"#).await;
                results.push((started, Instant::now(), result));
            }
            results
        }));
    }
    // Killed only once a call is surely running there: B records it before it runs, and it
    // is handed over to B well within 300 ms. Seen again just before the kill, so that a call
    // which ended meanwhile does not count.
    let running_on_b = || in_flight_on(&b_host.audit_db()) > 0;
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "no call ran on B for 300 ms"
        );
        within(Duration::from_secs(30), "a call ran on B", running_on_b).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if running_on_b() {
            break;
        }
    }
    b.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lost = 0;
    let mut served_after = 0;
    for worker in workers {
        for (started, ended, result) in worker.await.unwrap() {
            match result {
                Ok(_) => {
                    if started > killed {
                        served_after += 1;
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if text.contains("stopped answering") {
                        // Running on B when it died: told within the silence bound.
                        assert!(text.contains(&b_host.key_hex()[..16]), "{text}");
                        assert!(
                            started < killed,
                            "a call begun after B died went to it: {text}"
                        );
                        assert!(
                            ended.duration_since(killed) < Duration::from_secs(6),
                            "a lost call was not told within the silence bound: {text}"
                        );
                        lost += 1;
                    } else {
                        // Sent in the moment before the server saw B's connection close: no
                        // host took it, and the caller is told it did not run.
                        assert!(
                            text.contains("took the call") && text.contains("did not run"),
                            "failed otherwise: {text}"
                        );
                        assert!(
                            started < killed + Duration::from_millis(500),
                            "a call begun well after B died was not taken: {text}"
                        );
                    }
                }
            }
        }
    }
    assert!(lost >= 1, "the call running on B was lost with it");
    assert!(
        served_after >= 4,
        "calls went on on C after B died ({served_after})"
    );
    // Every call begun after the kill was served by C.
    let on_a = audit_rows(&a_host.audit_db());
    let final_result = on_a
        .iter()
        .rev()
        .find(|r| r.action == "tool.result" && r.capsule == "counter")
        .unwrap();
    assert_eq!(details(final_result)["served_by"], c_host.key_hex());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_events_reach_other_hosts_once_with_their_origin_and_never_come_back() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let (a_host, b_host) = (LatticeHost::new(&[]), LatticeHost::new(&["echo"]));
    // Both export the same topics: an event B took from A must not go back to A.
    let exported = ["orders.*", "echo.*"];
    let a = a_host
        .boot_with(a_host.config(&cluster, &[&b_host], &exported))
        .await;
    let b = b_host
        .boot_with(b_host.config(&cluster, &[&a_host], &exported))
        .await;
    let mut on_a = a.bus().subscribe("*", 64).unwrap();
    let mut on_b = b.bus().subscribe("orders.*", 64).unwrap();
    let mut b_notes = b.bus().subscribe("notes.*", 64).unwrap();

    a.publish("notes.new", b"{}".to_vec()).await.unwrap();
    a.publish("orders.new", br#"{"n":1}"#.to_vec())
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), on_b.recv())
        .await
        .expect("B got A's event")
        .unwrap();
    assert_eq!(event.topic, "orders.new");
    assert_eq!(event.payload, br#"{"n":1}"#);
    let origin = event.origin.as_deref().expect("an origin");
    assert_eq!(origin.host, a_host.key_hex());
    assert_eq!(origin.principal, Some(a.principal().to_string()));

    // A forged event (a host B does not trust) is refused.
    let lattice = Lattice::connect(&lattice_config(cluster.urls()), a_host.home.path())
        .await
        .unwrap();
    let stranger_key = Arc::new(KeyPair::generate().unwrap());
    let stranger_hex = hex::encode(stranger_key.public_key().to_bytes());
    let stranger = Seal::new(LATTICE, stranger_key, &[]);
    let meta = capsid_lattice::events::EventMeta {
        topic: "orders.fake".into(),
        source: None,
        principal: None,
    };
    capsid_lattice::events::publish(&lattice, &stranger, &meta, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    lattice.client().flush().await.unwrap();
    // Once B has refused it, whatever B would have let through has reached its bus.
    within(
        Duration::from_secs(10),
        "B refused the forged event",
        || b.lattice_traffic().unwrap().events_refused >= 1,
    )
    .await;

    assert!(on_b.try_recv().is_none(), "one copy, and nothing forged");
    assert!(
        b_notes.try_recv().is_none(),
        "an unexported topic stays home"
    );
    // A saw its two events once each, its own, and nothing came back.
    let mine: Vec<_> = std::iter::from_fn(|| on_a.try_recv()).collect();
    let topics: Vec<&str> = mine.iter().map(|e| e.topic.as_str()).collect();
    assert!(
        topics.contains(&"orders.new") && topics.contains(&"notes.new"),
        "{topics:?}"
    );
    assert_eq!(
        topics.iter().filter(|t| **t == "orders.new").count(),
        1,
        "{topics:?}"
    );
    assert!(mine.iter().all(|e| e.origin.is_none()));
    let (a_traffic, b_traffic) = (a.lattice_traffic().unwrap(), b.lattice_traffic().unwrap());
    assert_eq!(a_traffic.events_exported, 1);
    assert_eq!(b_traffic.events_imported, 1);
    assert_eq!(b_traffic.events_exported, 0, "B exported nothing back");
    assert_eq!(b_traffic.events_refused, 1);

    // A capsule on B, subscribed by its grant to echo.in, takes A's event and answers on
    // echo.out, which comes back to A from B.
    a.publish("echo.in", br#"{"hi":1}"#.to_vec()).await.unwrap();
    let answer = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), on_a.recv())
            .await
            .expect("echo.out from B")
            .unwrap();
        if event.topic == "echo.out" {
            break event;
        }
    };
    assert_eq!(answer.payload, br#"{"hi":1}"#);
    assert_eq!(
        answer.source.as_ref().map(ToString::to_string).as_deref(),
        Some("echo")
    );
    assert_eq!(answer.origin.as_deref().unwrap().host, b_host.key_hex());
    assert_eq!(
        answer.origin.as_deref().unwrap().principal,
        None,
        "a capsule's event"
    );
    assert_eq!(echoed(&b).await, 1, "echoed once");
    for kernel in [a, b] {
        kernel.shutdown().await;
    }
    // The forged event is in B's log, with the key it claimed.
    let refusals = refusals_on(&b_host, "event");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let details = details(&refusals[0]);
    assert_eq!(details["reason"], "untrusted");
    assert_eq!(details["count"], 1);
    assert_eq!(details["senders"], serde_json::json!([stranger_hex]));
}

/// How many events the echo capsule on `kernel` says it echoed, once it says any (it counts
/// each just after it published it) or ten seconds passed.
async fn echoed(kernel: &Kernel) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let stats = kernel.call_tool(&id("echo"), "stats", "{}").await.unwrap();
        let echoed = serde_json::from_str::<serde_json::Value>(&stats).unwrap()["echoed"].clone();
        if echoed != 0 || start.elapsed() > Duration::from_secs(10) {
            return echoed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Boots A (no capsule) trusting `servers` (hosts of counter), with A's user granted
/// `count-to`.
async fn counter_served_by(
    cluster: &LocalCluster,
    servers: &[&LatticeHost],
) -> (LatticeHost, Kernel, ToolCaller) {
    let a_host = LatticeHost::new(&[]);
    let a = a_host.boot(cluster, servers).await;
    let user = user_of(&a);
    a.grant(
        user.principal,
        None,
        "tool://counter/count-to",
        Permissions::EXEC,
    )
    .await
    .unwrap();
    (a_host, a, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_call_on_the_serving_host_even_before_it_said_it_took_it() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let (b_host, c_host) = (
        LatticeHost::new(&["counter"]),
        LatticeHost::new(&["counter"]),
    );
    let (a_host, a, user) = counter_served_by(&cluster, &[&b_host, &c_host]).await;
    let b = b_host.boot(&cluster, &[&a_host]).await;
    let c = c_host.boot(&cluster, &[&a_host]).await;
    let tool = ("counter", "count-to");
    call_until_ok(&a, &user, tool, r#"{"to":1}"#, Duration::from_secs(20)).await;

    // Ten-second calls, to B or C, cancelled 20 ms after they are sent (before B says it took the
    // call, which it does at 100 ms: A does not know which host has it), and 600 ms after a
    // host recorded it (it runs there by then).
    let (b_db, c_db) = (b_host.audit_db(), c_host.audit_db());
    let in_flight = move || in_flight_on(&b_db) + in_flight_on(&c_db);
    for (cancel_after, once_recorded) in [
        (Duration::from_millis(20), false),
        (Duration::from_millis(600), true),
    ] {
        let control = CallControl::new();
        let cancelling = {
            let (control, in_flight) = (control.clone(), in_flight.clone());
            tokio::spawn(async move {
                if once_recorded {
                    within(Duration::from_secs(30), "a host recorded the call", || {
                        in_flight() > 0
                    })
                    .await;
                }
                tokio::time::sleep(cancel_after).await;
                control.cancel();
            })
        };
        let input = r#"{"to":100,"step_ms":100}"#;
        let result = a
            .call_tool_as(&user, &id(tool.0), tool.1, input, &control)
            .await;
        assert!(
            matches!(
                result,
                Err(KernelError::Capsule(CapsuleError::Cancelled { .. }))
            ),
            "{result:?}"
        );
        cancelling.await.unwrap();
        // Uncancelled, it would run for ten seconds: it ends on both hosts well before
        // (cancelled; or, if it was cancelled before it was handed over, given up by the host
        // that asked for it once no handover came).
        within(
            LATTICE_CALL_HANDOVER_WAIT + Duration::from_secs(3),
            "the call ended on both hosts after its cancel",
            || in_flight() == 0,
        )
        .await;
    }
    let results: Vec<String> = [&b_host, &c_host]
        .iter()
        .flat_map(|h| audit_rows(&h.audit_db()))
        .filter(|r| r.action == "tool.result")
        .map(|r| details(&r)["outcome"].as_str().unwrap().to_owned())
        .collect();
    // The first call of `{"to":1}` and at least the second cancelled call ran there.
    assert!(
        results.iter().filter(|o| *o == "cancelled").count() >= 1,
        "{results:?}"
    );
    for kernel in [a, b, c] {
        kernel.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_shutting_down_answers_the_calls_it_serves_and_records_their_end_first() {
    let program = Path::new(env!("CARGO_BIN_EXE_lattice-host"));
    let cluster = LocalCluster::start(1).await.unwrap();
    let b_host = LatticeHost::new(&["counter"]);
    let (a_host, a, user) = counter_served_by(&cluster, &[&b_host]).await;
    let mut b = b_host.spawn(program, &cluster, &[&a_host]);
    let tool = ("counter", "count-to");
    call_until_ok(&a, &user, tool, r#"{"to":1}"#, Duration::from_secs(20)).await;

    // Three seconds: within the capsule's call timeout (5 s by default) by two.
    let three_seconds = {
        let (a, user) = (a.clone(), user.clone());
        tokio::spawn(async move { call(&a, &user, tool, r#"{"to":30,"step_ms":100}"#).await })
    };
    within(Duration::from_secs(30), "the call ran on B", || {
        in_flight_on(&b_host.audit_db()) > 0
    })
    .await;
    // Well past the moment B was handed the call and started it; then B is asked to stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = tokio::task::spawn_blocking(move || b.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let answer = three_seconds.await.unwrap().unwrap();
    assert!(answer.contains("\"counted\":30"), "{answer}");
    let rows = audit_rows(&b_host.audit_db());
    let last_result = rows.iter().rposition(|r| r.action == "tool.result");
    let shutdown = rows.iter().position(|r| r.action == "kernel.shutdown");
    assert!(
        matches!((last_result, shutdown), (Some(r), Some(s)) if r < s),
        "B recorded the call's end before its shutdown: {last_result:?} {shutdown:?}"
    );
    assert_eq!(in_flight_on(&b_host.audit_db()), 0);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_idle_on_its_host_stays_listed_and_served_across_the_lattice() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let (a_host, b_host) = (LatticeHost::new(&[]), LatticeHost::new(&["hello"]));
    let a = a_host.boot(&cluster, &[&b_host]).await;
    let b = b_host
        .boot_with(KernelConfig {
            idle_timeout_ms: Some(300),
            ..b_host.config(&cluster, &[&a_host], &[])
        })
        .await;
    let user = user_of(&a);
    grant_greet(&a, &user, r#"{"name":"x"}"#).await;
    let listed = || async {
        a.tools_for(user.principal, Door::McpHttp)
            .await
            .iter()
            .map(|t| format!("{}/{}", t.capsule, t.tool))
            .collect::<Vec<String>>()
    };
    let start = Instant::now();
    while listed().await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "never listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while b.registry().info(&id("hello")).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "hello never idled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Over two rounds of advertisements (B's, then A's reading them), A lists it all along.
    let listed_since = Instant::now();
    while listed_since.elapsed() < 2 * LATTICE_ADVERT_INTERVAL + Duration::from_secs(1) {
        let names = listed().await;
        assert_eq!(names, ["hello/greet"], "after {:?}", listed_since.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(b.registry().info(&id("hello")).is_none(), "still idle");
    // And a call wakes it there.
    let out = call(&a, &user, ("hello", "greet"), r#"{"name":"y"}"#)
        .await
        .unwrap();
    assert!(out.contains("Hello, y!"), "{out}");
    for kernel in [a, b] {
        kernel.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_whose_check_this_host_cannot_record_withholds_its_outcome() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let HelloOnB {
        a_host,
        b_host,
        a,
        b,
        user,
    } = hello_on_b(&cluster).await;
    let served_before = b.lattice_traffic().unwrap().calls_served;
    // Another connection holds A's audit log's write lock past its busy timeout: A's record
    // of its check, queued as the call goes out, cannot commit.
    let blocker = rusqlite::Connection::open(a_host.audit_db()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = call(&a, &user, ("hello", "greet"), r#"{"name":"unrecorded"}"#)
        .await
        .unwrap_err();
    blocker.execute_batch("ROLLBACK").unwrap();
    let KernelError::RanUnrecorded { capsule, host, .. } = &err else {
        panic!("expected RanUnrecorded, got {err}");
    };
    assert_eq!(capsule.as_str(), "hello");
    assert!(b_host.key_hex().starts_with(host.as_str()), "{host}");
    // It ran on B, which recorded it; A kept no record of it at all.
    assert_eq!(b.lattice_traffic().unwrap().calls_served, served_before + 1);
    let input_hash = blake3::hash(br#"{"name":"unrecorded"}"#)
        .to_hex()
        .to_string();
    let named = |r: &AuditRow| details(r)["input_blake3"] == input_hash.as_str();
    assert!(audit_rows(&b_host.audit_db()).iter().any(named));
    assert!(!audit_rows(&a_host.audit_db()).iter().any(named));

    // A call B answers that it has no such tool ran nowhere: A says only that it went
    // unrecorded, not that it may have run.
    a.grant(user.principal, None, "tool://hello/*", Permissions::EXEC)
        .await
        .unwrap();
    let blocker = rusqlite::Connection::open(a_host.audit_db()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = call(&a, &user, ("hello", "missing"), "{}")
        .await
        .unwrap_err();
    blocker.execute_batch("ROLLBACK").unwrap();
    assert!(matches!(err, KernelError::Unrecorded(_)), "{err:?}");
    assert_eq!(b.lattice_traffic().unwrap().calls_served, served_before + 2);
    for kernel in [a, b] {
        kernel.shutdown().await;
    }
}
