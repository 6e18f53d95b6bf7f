//! Outbound HTTP from a real capsule (`fetch`, built on `wstd`'s ordinary client) to real
//! loopback servers: grants per origin, internal addresses, redirects, caps, timeouts, the
//! in-flight limit, revocation, TLS under an operator's CA, and the audit trail of each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use capsid_capsule::{OutboundHttp, Resolve};
use capsid_core::limits::{MAX_HTTP_INFLIGHT, MAX_HTTP_REQUEST_BYTES, MAX_HTTP_RESPONSE_BYTES};
use capsid_integration_tests::web::{TestCa, WebServer};
use capsid_integration_tests::{PrivateHome, Runtime, fetch_copy, id};
use serde_json::{Value, json};

async fn load_fetch(rt: &Runtime, origins: &[String], extra: &str) {
    rt.load_fetch(origins, extra).await;
}

async fn get(rt: &Runtime, url: &str) -> Value {
    rt.call("fetch", "get", json!({ "url": url })).await
}

fn error_of(answer: &Value) -> String {
    answer["error"].as_str().unwrap_or_default().to_owned()
}

/// `(action, resource, decision, details)` of the fetch capsule's HTTP entries.
fn http_entries(rt: &Runtime) -> Vec<(String, String, String, Value)> {
    rt.audit_entries()
        .into_iter()
        .filter(|e| e.capsule == "fetch" && e.action.starts_with("http."))
        .map(|e| {
            let details = serde_json::from_str(&e.details).unwrap_or(Value::Null);
            (e.action, e.resource, e.decision, details)
        })
        .collect()
}

/// The `http.response` entries are appended after the body ends, without holding up the
/// capsule: wait until `n` are there.
async fn wait_for_responses(rt: &Runtime, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let done: Vec<Value> = http_entries(rt)
            .into_iter()
            .filter(|e| e.0 == "http.response")
            .map(|e| e.3)
            .collect();
        if done.len() >= n || Instant::now() > until {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_origin_is_reached_and_both_ends_are_recorded() {
    let web = WebServer::start().await;
    let rt = Runtime::new().await;
    load_fetch(&rt, &[web.url("http", "")], "").await;
    let answer = get(&rt, &web.url("http", "/bytes/1024?secret=1")).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["bytes"], 1024);
    assert_eq!(answer["body"].as_str().map(str::len), Some(1024));

    let posted = rt
        .call(
            "fetch",
            "get",
            json!({ "url": web.url("http", "/echo"), "method": "POST", "body": "twelve bytes" }),
        )
        .await;
    assert_eq!(posted["body"], "12", "{posted}");

    let resource = format!("net://http/127.0.0.1/{}", web.addr.port());
    let entries = http_entries(&rt);
    let allows: Vec<_> = entries
        .iter()
        .filter(|e| e.0 == "http.request" && e.2 == "allow")
        .collect();
    assert_eq!(allows.len(), 2, "{entries:?}");
    assert_eq!(allows[0].1, resource);
    assert_eq!(allows[0].3["method"], "GET");
    assert_eq!(
        allows[0].3["path"], "/bytes/1024",
        "the query is never recorded"
    );
    assert_eq!(allows[0].3["addresses"], json!([web.addr.to_string()]));
    assert!(
        allows[0].3["grant"].is_string(),
        "the allow names its grant"
    );
    let done = wait_for_responses(&rt, 2).await;
    assert_eq!(done.len(), 2, "{done:?}");
    let of = |method: &str| {
        done.iter()
            .find(|d| d["method"] == method)
            .unwrap_or_else(|| panic!("no {method} record in {done:?}"))
    };
    assert_eq!(of("GET")["status"], 200);
    assert_eq!(of("GET")["bytes_received"], 1024);
    assert_eq!(of("GET")["outcome"], "complete");
    assert_eq!(of("GET")["connected"], web.addr.to_string());
    assert_eq!(of("POST")["bytes_sent"], 12);
    assert!(
        !rt.audit_entries()
            .iter()
            .any(|e| e.details.contains("secret"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_host_port_or_scheme_is_denied_before_any_connection() {
    let web = WebServer::start().await;
    let other = WebServer::start().await;
    let rt = Runtime::new().await;
    load_fetch(&rt, &[web.url("http", "")], "").await;
    let port = web.addr.port();
    for url in [
        format!("http://localhost:{port}/bytes/1"),
        other.url("http", "/bytes/1"),
        web.url("https", "/bytes/1"),
    ] {
        let answer = get(&rt, &url).await;
        assert!(
            error_of(&answer).contains("HttpRequestDenied"),
            "{url}: {answer}"
        );
    }
    assert!(web.seen.paths().is_empty(), "nothing reached the server");
    assert!(other.seen.paths().is_empty());
    let denied: Vec<String> = http_entries(&rt)
        .into_iter()
        .filter(|e| e.0 == "http.request" && e.2 == "deny")
        .map(|e| e.1)
        .collect();
    assert_eq!(
        denied,
        [
            format!("net://http/localhost/{port}"),
            format!("net://http/127.0.0.1/{}", other.addr.port()),
            format!("net://https/127.0.0.1/{port}"),
        ]
    );
}

/// Answers fixed addresses for a few names, and counts the lookups.
#[derive(Debug, Default)]
struct FixedNames {
    names: HashMap<String, IpAddr>,
    lookups: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Resolve for FixedNames {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.names
            .get(host)
            .map(|ip| vec![SocketAddr::new(*ip, port)])
            .ok_or_else(|| std::io::Error::other("no such name"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_name_reaching_an_internal_address_is_refused_unless_that_address_is_granted() {
    let web = WebServer::start().await;
    let port = web.addr.port();
    let names = Arc::new(FixedNames {
        names: HashMap::from([
            ("loop.test".to_owned(), IpAddr::from([127, 0, 0, 1])),
            ("lan.test".to_owned(), IpAddr::from([10, 0, 0, 1])),
            ("meta.test".to_owned(), IpAddr::from([169, 254, 169, 254])),
        ]),
        lookups: std::sync::atomic::AtomicUsize::default(),
    });
    let rt = Runtime::with_http(OutboundHttp::new().with_resolver(names.clone())).await;
    let granted: Vec<String> = ["loop.test", "lan.test", "meta.test"]
        .iter()
        .map(|h| format!("http://{h}:{port}"))
        .collect();
    load_fetch(&rt, &granted, "").await;
    for host in ["loop.test", "lan.test", "meta.test"] {
        let answer = get(&rt, &format!("http://{host}:{port}/bytes/1")).await;
        assert!(
            error_of(&answer).contains("DestinationIpProhibited"),
            "{host}: {answer}"
        );
    }
    assert_eq!(names.lookups.load(Ordering::SeqCst), 3, "one lookup each");
    let answer = get(&rt, &format!("http://other.test:{port}/bytes/1")).await;
    assert!(error_of(&answer).contains("HttpRequestDenied"), "{answer}");
    assert_eq!(
        names.lookups.load(Ordering::SeqCst),
        3,
        "a name outside the grants is never looked up"
    );
    assert!(web.seen.paths().is_empty());
    let refusals: Vec<Value> = http_entries(&rt)
        .into_iter()
        .filter(|e| e.0 == "http.request" && e.2 == "deny")
        .map(|e| e.3)
        .collect();
    assert_eq!(
        refusals.len(),
        4,
        "three addresses refused, one name denied"
    );
    assert!(
        refusals[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("10.0.0.1 is a private address")),
        "{refusals:?}"
    );

    // Granting the address itself lets the name reach it; the connection goes to the
    // address the one lookup answered.
    rt.registry.unload(&id("fetch")).await.expect("unload");
    let mut granted = granted;
    granted.push(format!("http://127.0.0.1:{port}"));
    load_fetch(&rt, &granted, "").await;
    let answer = get(&rt, &format!("http://loop.test:{port}/bytes/3")).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(names.lookups.load(Ordering::SeqCst), 4);
    assert_eq!(web.seen.paths(), ["/bytes/3"]);
    // A glob naming no address does not count as naming it.
    rt.registry.unload(&id("fetch")).await.expect("unload");
    load_fetch(&rt, &[format!("http://*.test:{port}")], "").await;
    let answer = get(&rt, &format!("http://loop.test:{port}/bytes/3")).await;
    assert!(
        error_of(&answer).contains("DestinationIpProhibited"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_grants_reach_loopback_and_redirects_are_returned_not_followed() {
    let web = WebServer::start().await;
    let port = web.addr.port();
    let rt = Runtime::new().await;
    load_fetch(&rt, &[format!("http://localhost:{port}")], "").await;
    let answer = get(&rt, &format!("http://localhost:{port}/redirect")).await;
    assert_eq!(answer["status"], 302, "{answer}");
    assert_eq!(answer["headers"]["location"], "/bytes/5");
    assert_eq!(
        web.seen.paths(),
        ["/redirect"],
        "the redirect was not followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_cap_stops_at_the_cap() {
    let web = WebServer::start().await;
    let rt = Runtime::new().await;
    load_fetch(&rt, &[web.url("http", "")], "").await;
    let over = MAX_HTTP_RESPONSE_BYTES + (1 << 20);
    let answer = rt
        .call(
            "fetch",
            "get",
            json!({ "url": web.url("http", &format!("/bytes/{over}")), "keep": 0 }),
        )
        .await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["bytes"], MAX_HTTP_RESPONSE_BYTES, "{answer}");
    assert!(!error_of(&answer).is_empty(), "{answer}");
    let done = wait_for_responses(&rt, 1).await;
    assert_eq!(done[0]["bytes_received"], MAX_HTTP_RESPONSE_BYTES);
    assert!(
        done[0]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("body size")),
        "{done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_a_byte_a_second_times_out() {
    let web = WebServer::start().await;
    let rt = Runtime::new().await;
    load_fetch(&rt, &[web.url("http", "")], "").await;
    // The capsule asks for 300 ms between bytes.
    let started = Instant::now();
    let answer = rt
        .call(
            "fetch",
            "get",
            json!({ "url": web.url("http", "/drip"), "between_bytes_ms": 300 }),
        )
        .await;
    assert!(answer["bytes"].as_u64() < Some(3), "{answer}");
    assert!(!error_of(&answer).is_empty(), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let done = wait_for_responses(&rt, 1).await;
    assert!(
        done[0]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("timed out") || o.contains("timeout")),
        "{done:?}"
    );

    // Asking for nothing, the call's deadline (2 s) is the ceiling: the request gives up
    // just before it, in time for the capsule to answer, rather than after the 100 s the
    // body would take.
    rt.registry.unload(&id("fetch")).await.expect("unload");
    load_fetch(&rt, &[web.url("http", "")], "call_timeout_ms = 2000\n").await;
    let started = Instant::now();
    let answer = rt
        .call("fetch", "get", json!({ "url": web.url("http", "/drip") }))
        .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    assert!(
        error_of(&answer).to_lowercase().contains("timeout"),
        "{answer}"
    );
    let done = wait_for_responses(&rt, 2).await;
    assert!(
        done[1]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("timeout") || o.contains("timed out")),
        "{done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_at_once_are_held_to_the_in_flight_cap() {
    let web = WebServer::start().await;
    let rt = Runtime::new().await;
    load_fetch(&rt, &[web.url("http", "")], "").await;
    let answer = rt
        .call(
            "fetch",
            "get-many",
            json!({ "url": web.url("http", "/wait/20"), "count": 200 }),
        )
        .await;
    assert_eq!(answer["ok"], 200, "{answer}");
    let most = web.seen.most_waiting.load(Ordering::SeqCst);
    assert!(
        most <= MAX_HTTP_INFLIGHT,
        "{most} requests were open at once"
    );
    assert!(most > 1, "the requests did run concurrently ({most})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_refuses_the_next_request() {
    let web = WebServer::start().await;
    let rt = Runtime::new().await;
    load_fetch(&rt, &[web.url("http", "")], "").await;
    let answer = get(&rt, &web.url("http", "/bytes/1")).await;
    assert_eq!(answer["status"], 200, "{answer}");
    let resource = format!("net://http/127.0.0.1/{}", web.addr.port());
    let grant = rt
        .caps
        .list(&rt.principal)
        .await
        .expect("list grants")
        .into_iter()
        .find(|g| g.capability.pattern.as_str() == resource)
        .expect("the net grant");
    rt.caps.revoke(grant.capability.id).await.expect("revoke");
    let answer = get(&rt, &web.url("http", "/bytes/1")).await;
    assert!(error_of(&answer).contains("HttpRequestDenied"), "{answer}");
    assert_eq!(web.seen.paths().len(), 1);
    let decisions: Vec<String> = http_entries(&rt)
        .into_iter()
        .filter(|e| e.0 == "http.request")
        .map(|e| e.2)
        .collect();
    assert_eq!(decisions, ["allow", "deny"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_the_cap_is_refused() {
    let web = WebServer::start().await;
    let rt = Runtime::new().await;
    load_fetch(&rt, &[web.url("http", "")], "memory_mb = 128\n").await;
    let over = usize::try_from(MAX_HTTP_REQUEST_BYTES).unwrap() + 1;
    let answer = rt
        .call(
            "fetch",
            "get",
            json!({ "url": web.url("http", "/echo"), "method": "POST", "body_bytes": over }),
        )
        .await;
    assert!(
        error_of(&answer).contains("HttpRequestBodySize"),
        "{answer}"
    );
    let done = wait_for_responses(&rt, 1).await;
    assert!(
        done[0]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("request body size")),
        "{done:?}"
    );
    // The body streams (no length was declared): what left stopped at the cap.
    assert!(
        done[0]["bytes_sent"]
            .as_u64()
            .is_some_and(|n| n <= MAX_HTTP_REQUEST_BYTES),
        "{done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_spellings_of_internal_addresses_are_refused_under_a_glob_grant() {
    let web = WebServer::start().await;
    let port = web.addr.port();
    let rt = Runtime::new().await;
    load_fetch(&rt, &[format!("http://*:{port}")], "").await;
    for host in [
        "127.1",
        "[::ffff:127.0.0.1]",
        "LOCALHOST",
        "localhost.",
        "2130706433",
    ] {
        let answer = get(&rt, &format!("http://{host}:{port}/bytes/1")).await;
        let error = error_of(&answer);
        assert!(
            error.contains("DestinationIpProhibited") || error.contains("DnsError"),
            "{host}: {answer}"
        );
    }
    for bad in [
        format!("http://user:pw@127.0.0.1:{port}/bytes/1"),
        format!("http://127.0.0.1:{port}0000/bytes/1"),
    ] {
        let answer = get(&rt, &bad).await;
        assert!(!error_of(&answer).is_empty(), "{bad}: {answer}");
    }
    assert!(web.seen.paths().is_empty(), "{:?}", web.seen.paths());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_against_the_operators_roots_and_nothing_else() {
    let ca = TestCa::new();
    let web = WebServer::start_tls(&ca).await;
    let port = web.addr.port();
    let dir = tempfile::tempdir().expect("temp dir");
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, &ca.ca_pem).expect("write CA");

    let trusting = Runtime::with_http(
        OutboundHttp::new()
            .with_extra_roots(&[&roots])
            .expect("extra roots"),
    )
    .await;
    load_fetch(&trusting, &[format!("https://localhost:{port}")], "").await;
    let answer = get(&trusting, &format!("https://localhost:{port}/bytes/7")).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"], "xxxxxxx");

    let plain = Runtime::new().await;
    load_fetch(&plain, &[format!("https://localhost:{port}")], "").await;
    let answer = get(&plain, &format!("https://localhost:{port}/bytes/7")).await;
    assert!(
        error_of(&answer).contains("TlsCertificateError"),
        "{answer}"
    );
    assert_eq!(web.seen.paths(), ["/bytes/7"]);

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write junk");
    let err = OutboundHttp::new()
        .with_extra_roots(&[&junk])
        .expect_err("junk roots");
    assert!(err.to_string().contains("junk.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_extra_roots_in_config_reach_a_booted_kernels_capsules() {
    let ca = TestCa::new();
    let web = WebServer::start_tls(&ca).await;
    let origin = format!("https://localhost:{}", web.addr.port());
    let home = PrivateHome::new();
    std::fs::write(home.path().join("ca.pem"), &ca.ca_pem).expect("write CA");
    fetch_copy(
        &home.path().join("capsules"),
        std::slice::from_ref(&origin),
        "",
    );
    let mut config = capsid_kernel::KernelConfig {
        dev: true,
        hot_reload: false,
        ..capsid_kernel::KernelConfig::default()
    };
    // Relative to the home.
    config.http.extra_roots = vec!["ca.pem".into()];
    let kernel = capsid_kernel::Kernel::builder()
        .home(home.path())
        .config(config)
        .build()
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let input = json!({ "url": format!("{origin}/bytes/4") }).to_string();
    let out = kernel
        .call_tool(&id("fetch"), "get", &input)
        .await
        .unwrap_or_else(|e| panic!("fetch.get: {e}"));
    let answer: Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"], "xxxx");
    kernel.shutdown().await;
}
