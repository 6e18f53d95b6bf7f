//! Approvals end to end: a real capsule's host call on a resource it may `ask` for waits
//! for a person; each decision (once, always, deny), the timeout, the suspended deadline,
//! the cap on waiting requests, a capsule unloaded while it waits, and what each leaves in
//! the audit log. The kernel-level decision path (recorded, naming who decided; an `always`
//! that outlives a restart and is taken back with `revoke`) is at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use capsid_capsule::{ApprovalRequest, Trust, Verdict};
use capsid_core::limits::MAX_PENDING_APPROVALS;
use capsid_integration_tests::web::WebServer;
use capsid_integration_tests::{PrivateHome, Runtime, capsule_copy_with, fetch_asking_copy, id};
use serde_json::{Value, json};

/// `fetch`, granted no origin but allowed to ask for `web`'s, with `limits` added.
fn asking_fetch(into: &std::path::Path, web: &WebServer, limits: &str) -> std::path::PathBuf {
    fetch_asking_copy(
        into,
        &format!("net://http/127.0.0.1/{}", web.addr.port()),
        limits,
    )
}

async fn load_asking(rt: &Arc<Runtime>, web: &WebServer, limits: &str) {
    let dir = asking_fetch(&rt.home.path().join("copies"), web, limits);
    rt.registry
        .load(&dir, Trust::Dev)
        .await
        .unwrap_or_else(|e| panic!("loading fetch: {e}"));
}

/// Calls `fetch.get` of `url` in the background.
fn get_later(rt: &Arc<Runtime>, url: String) -> tokio::task::JoinHandle<Value> {
    let rt = rt.clone();
    tokio::spawn(async move { rt.call("fetch", "get", json!({ "url": url })).await })
}

/// Waits until `n` requests are pending and answers them.
async fn pending(rt: &Runtime, n: usize) -> Vec<ApprovalRequest> {
    let approvals = &rt.registry.services().approvals;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let list = approvals.list();
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < until, "{n} requests never came: {list:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `fetch.get` of `url`, waits for the request it makes, decides it with `verdict`:
/// the request and the call's answer.
async fn ask_and_decide(
    rt: &Arc<Runtime>,
    url: &str,
    verdict: Verdict,
) -> (ApprovalRequest, Value) {
    let call = get_later(rt, url.to_owned());
    let asked = pending(rt, 1).await.remove(0);
    decide(rt, &asked.id, verdict);
    (asked, call.await.unwrap())
}

fn decide(rt: &Runtime, id: &str, verdict: Verdict) {
    rt.registry
        .services()
        .approvals
        .decide(id, verdict)
        .expect("pending");
}

fn actions(rt: &Runtime) -> Vec<(String, String)> {
    rt.audit_entries()
        .into_iter()
        .filter(|e| e.capsule == "fetch")
        .map(|e| (e.action, e.decision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_allows_the_waiting_call_only() {
    let web = WebServer::start().await;
    let rt = Arc::new(Runtime::new().await);
    load_asking(&rt, &web, "").await;
    let url = web.url("http", "/bytes/3");
    let call = get_later(&rt, url.clone());
    let asked = pending(&rt, 1).await;
    let request = &asked[0];
    assert_eq!(request.capsule.as_str(), "fetch");
    assert_eq!(
        request.resource,
        format!("net://http/127.0.0.1/{}", web.addr.port())
    );
    assert!(request.description.contains("http.request"), "{request:?}");
    assert_eq!(request.digest.len(), 64);
    assert!(
        web.seen.paths().is_empty(),
        "nothing is sent while it waits"
    );
    decide(&rt, &request.id, Verdict::Once);
    let answer = call.await.unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        actions(&rt).contains(&("approval.requested".into(), "info".into())),
        "{:?}",
        actions(&rt)
    );

    // Once is once: the next call asks again.
    let (_, answer) = ask_and_decide(&rt, &url, Verdict::Deny).await;
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("HttpRequestDenied")),
        "{answer}"
    );
    assert_eq!(web.seen.paths().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_write_waits_for_its_approval_past_the_call_deadline() {
    let rt = Arc::new(Runtime::new().await);
    let dir = capsule_copy_with("notes", &rt.home.path().join("copies"), |text| {
        let text = text.replace(
            "fs_write = [\"workspace://notes/**\"]",
            "ask = [\"fs://workspace/notes/**\"]",
        );
        format!("{text}\n[limits]\ncall_timeout_ms = 800\n")
    });
    rt.registry.load(&dir, Trust::Dev).await.unwrap();
    let call = {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.registry
                .call_tool(&id("notes"), "add", r#"{"name":"todo","text":"milk"}"#)
                .await
        })
    };
    // `add` makes the folder, then writes the file: each asks, and each is decided only
    // after the call's 800 ms deadline would have passed.
    let mut asked = Vec::new();
    while !call.is_finished() {
        if let Some(a) = rt.registry.services().approvals.list().pop() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            decide(&rt, &a.id, Verdict::Once);
            asked.push(a);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call.await
        .unwrap()
        .unwrap_or_else(|e| panic!("notes.add: {e}"));
    let file = asked
        .iter()
        .find(|a| a.resource == "fs://workspace/notes/todo.md")
        .unwrap_or_else(|| panic!("the file write never asked: {asked:?}"));
    assert_eq!(file.capsule.as_str(), "notes");
    let write = rt
        .audit_entries()
        .into_iter()
        .find(|e| e.capsule == "notes" && e.action == "fs.write" && e.decision == "allow")
        .expect("the write is recorded");
    assert!(write.details.contains(&file.id), "{write:?}");
    // The person saw how much it writes, and the digest covers what: other bytes to the
    // same file are another request, with another digest.
    assert!(file.description.contains("bytes, blake3 "), "{file:?}");
    let other = {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.registry
                .call_tool(&id("notes"), "add", r#"{"name":"todo","text":"eggs"}"#)
                .await
        })
    };
    let again = loop {
        let a = pending(&rt, 1).await.remove(0);
        if a.resource == file.resource {
            break a;
        }
        decide(&rt, &a.id, Verdict::Once);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(again.digest, file.digest, "another write, another digest");
    decide(&rt, &again.id, Verdict::Deny);
    assert!(other.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_ahead_once_lets_the_next_action_through_once() {
    let web = WebServer::start().await;
    let rt = Arc::new(Runtime::new().await);
    load_asking(&rt, &web, "").await;
    let resource = format!("net://http/127.0.0.1/{}", web.addr.port());
    let ask = |uri: &str| {
        let rt = rt.clone();
        let input = json!({ "uri": uri, "permission": "exec", "reason": "a big download" });
        tokio::spawn(async move { rt.call("fetch", "ask", input).await })
    };
    // Not listed under `ask`: denied at once, nobody asked.
    let answer = ask("net://https/example.com/443").await.unwrap();
    assert_eq!(answer["decision"], "denied");
    assert!(rt.registry.services().approvals.list().is_empty());

    let asking = ask(&resource);
    let asked = pending(&rt, 1).await;
    assert!(asked[0].description.contains("a big download"), "{asked:?}");
    decide(&rt, &asked[0].id, Verdict::Once);
    assert_eq!(asking.await.unwrap()["decision"], "once");
    // The next request passes without asking, by the single-use grant...
    let answer = rt
        .call(
            "fetch",
            "get",
            json!({ "url": web.url("http", "/bytes/1") }),
        )
        .await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(rt.registry.services().approvals.list().is_empty());
    // ...and the one after asks again.
    let (_, answer) = ask_and_decide(&rt, &web.url("http", "/bytes/1"), Verdict::Deny).await;
    assert!(answer["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_grants_the_resource_until_revoked() {
    let web = WebServer::start().await;
    let rt = Arc::new(Runtime::new().await);
    load_asking(&rt, &web, "").await;
    let url = web.url("http", "/bytes/3");
    let (asked, answer) = ask_and_decide(&rt, &url, Verdict::Always).await;
    assert_eq!(answer["status"], 200);
    let asked = [asked];
    // No asking now: the grant stands.
    let answer = rt.call("fetch", "get", json!({ "url": url })).await;
    assert_eq!(answer["status"], 200, "{answer}");
    let grant = rt
        .caps
        .list(&rt.principal)
        .await
        .unwrap()
        .into_iter()
        .find(|g| g.capability.pattern.as_str() == asked[0].resource)
        .expect("the approved grant");
    assert_eq!(grant.capability.capsule, Some(id("fetch")));
    assert_eq!(grant.approval.as_deref(), Some(asked[0].id.as_str()));
    // Dev trust's reload reconciles the manifest's grants, not a person's.
    rt.reload("fetch").await;
    let answer = rt.call("fetch", "get", json!({ "url": url })).await;
    assert_eq!(answer["status"], 200, "kept across a reload: {answer}");
    let granted = rt
        .audit_entries()
        .into_iter()
        .find(|e| e.action == "cap.grant")
        .expect("the grant is recorded");
    assert!(granted.details.contains(&asked[0].id), "{granted:?}");

    rt.caps.revoke(grant.capability.id).await.unwrap();
    let (_, answer) = ask_and_decide(&rt, &url, Verdict::Deny).await;
    assert!(answer["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_deciding_denies_and_the_deadline_waits_for_the_person() {
    let web = WebServer::start().await;
    let rt = Arc::new(Runtime::new().await);
    // A 1 s call deadline, and a person who takes 2.5 s: the call still succeeds.
    load_asking(&rt, &web, "call_timeout_ms = 1000\n").await;
    let url = web.url("http", "/bytes/3");
    let call = get_later(&rt, url.clone());
    let asked = pending(&rt, 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    decide(&rt, &asked[0].id, Verdict::Once);
    assert_eq!(call.await.unwrap()["status"], 200);

    rt.registry
        .services()
        .approvals
        .set_timeout(Duration::from_millis(300));
    let answer = rt.call("fetch", "get", json!({ "url": url })).await;
    assert!(answer["error"].is_string(), "{answer}");
    assert!(rt.registry.services().approvals.list().is_empty());
    assert!(
        actions(&rt).contains(&("approval.expired".into(), "deny".into())),
        "{:?}",
        actions(&rt)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_is_capped_and_recorded_once() {
    let web = WebServer::start().await;
    let rt = Arc::new(Runtime::new().await);
    load_asking(&rt, &web, "").await;
    let flood = {
        let rt = rt.clone();
        let url = web.url("http", "/bytes/1");
        tokio::spawn(async move {
            rt.call("fetch", "get-many", json!({ "url": url, "count": 40 }))
                .await
        })
    };
    let asked = pending(&rt, MAX_PENDING_APPROVALS).await;
    // Give the rest time to be refused, then check none more were parked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rt.registry.services().approvals.list().len(),
        MAX_PENDING_APPROVALS
    );
    for a in &asked {
        decide(&rt, &a.id, Verdict::Deny);
    }
    let answer = flood.await.unwrap();
    assert_eq!(answer["failed"], 40, "{answer}");
    let refused = actions(&rt)
        .into_iter()
        .filter(|(a, _)| a == "approval.refused")
        .count();
    assert_eq!(refused, 1, "a burst is recorded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_askable_resources_are_asked_for_and_a_cancelled_call_leaves_nothing_waiting() {
    let web = WebServer::start().await;
    let other = WebServer::start().await;
    let rt = Arc::new(Runtime::new().await);
    load_asking(&rt, &web, "").await;
    let answer = rt
        .call(
            "fetch",
            "get",
            json!({ "url": other.url("http", "/bytes/1") }),
        )
        .await;
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("HttpRequestDenied")),
        "{answer}"
    );
    assert!(rt.registry.services().approvals.list().is_empty());

    let control = capsid_capsule::CallControl::new();
    let call = {
        let (rt, control) = (rt.clone(), control.clone());
        let input = json!({ "url": web.url("http", "/bytes/1") }).to_string();
        tokio::spawn(async move {
            rt.registry
                .call_tool_with(&id("fetch"), "get", &input, &control)
                .await
        })
    };
    pending(&rt, 1).await;
    control.cancel();
    assert!(call.await.unwrap().is_err(), "cancelled");
    // The cancelled call's instance goes (and its request with it) right after.
    let until = Instant::now() + Duration::from_secs(10);
    while !rt.registry.services().approvals.list().is_empty() {
        assert!(
            Instant::now() < until,
            "the cancelled call's request stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_the_capsule_withdraws_what_it_waits_for() {
    let web = WebServer::start().await;
    let rt = Arc::new(Runtime::new().await);
    load_asking(&rt, &web, "").await;
    let call = get_later(&rt, web.url("http", "/bytes/1"));
    let asked = pending(&rt, 1).await;
    rt.registry.unload(&id("fetch")).await.unwrap();
    assert!(call.await.unwrap()["error"].is_string());
    assert!(
        rt.registry
            .services()
            .approvals
            .decide(&asked[0].id, Verdict::Once)
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // One story: the race, the record, the restart, the revoke.
async fn kernel_decisions_are_recorded_and_an_always_outlives_a_restart() {
    let web = WebServer::start().await;
    let home = PrivateHome::new();
    asking_fetch(&home.path().join("capsules"), &web, "");
    let boot = || dev_kernel(&home);
    let input = json!({ "url": web.url("http", "/bytes/2") }).to_string();
    let call = |kernel: &Arc<capsid_kernel::Kernel>| {
        let (kernel, input) = (kernel.clone(), input.clone());
        tokio::spawn(async move {
            let out = kernel.call_tool(&id("fetch"), "get", &input).await.unwrap();
            serde_json::from_str::<Value>(&out).unwrap()
        })
    };
    let waiting = |kernel: &Arc<capsid_kernel::Kernel>| {
        let kernel = kernel.clone();
        async move {
            for _ in 0..500 {
                if let Some(a) = kernel.approvals().into_iter().next() {
                    return a;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("nothing asked");
        }
    };

    let kernel = boot().await;
    let pending_call = call(&kernel);
    let asked = waiting(&kernel).await;
    // Two people decide at once: one decision is taken, the other finds it gone.
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let person = |verdict| {
        let (kernel, start, id) = (kernel.clone(), start.clone(), asked.id.clone());
        tokio::spawn(async move {
            start.wait().await;
            kernel
                .decide_approval(&id, verdict, kernel.principal())
                .await
        })
    };
    let (a, b) = (person(Verdict::Always), person(Verdict::Deny));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let answer = pending_call.await.unwrap();
    let always_won = a.is_ok();
    assert_eq!(answer["status"] == 200, always_won, "{answer}");
    let decided: Vec<String> = capsid_audit::tail(kernel.audit().path(), 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "approval.decided")
        .map(|e| e.details)
        .collect();
    assert_eq!(
        decided.len(),
        1,
        "only the decision taken is recorded as one"
    );
    assert!(
        decided[0].contains(&kernel.principal().to_string()),
        "{decided:?}"
    );
    if !always_won {
        let pending_call = call(&kernel);
        let asked = waiting(&kernel).await;
        kernel
            .decide_approval(&asked.id, Verdict::Always, kernel.principal())
            .await
            .unwrap();
        assert_eq!(pending_call.await.unwrap()["status"], 200);
    }
    kernel.shutdown().await;
    drop(kernel);

    // The grant outlives the restart (dev trust does not take back what a person gave)...
    let kernel = boot().await;
    let out = kernel.call_tool(&id("fetch"), "get", &input).await.unwrap();
    assert!(out.contains("\"status\":200"), "{out}");
    // ...until the operator revokes it.
    let grant = kernel
        .capabilities()
        .list(&kernel.principal())
        .await
        .unwrap()
        .into_iter()
        .find(|g| !g.revoked && g.capability.pattern.as_str() == asked.resource)
        .expect("the approved grant");
    kernel.revoke(grant.capability.id).await.unwrap();
    let pending_call = call(&kernel);
    let asked = waiting(&kernel).await;
    kernel
        .decide_approval(&asked.id, Verdict::Deny, kernel.principal())
        .await
        .unwrap();
    assert!(pending_call.await.unwrap()["error"].is_string());
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_refusal_denies_without_asking_until_forgotten_and_outlives_a_restart() {
    let web = WebServer::start().await;
    let home = PrivateHome::new();
    asking_fetch(&home.path().join("capsules"), &web, "");
    let boot = || dev_kernel(&home);
    let input = json!({ "url": web.url("http", "/bytes/2") }).to_string();
    let get = |kernel: Arc<capsid_kernel::Kernel>, input: String| {
        tokio::spawn(async move {
            let out = kernel.call_tool(&id("fetch"), "get", &input).await.unwrap();
            serde_json::from_str::<Value>(&out).unwrap()
        })
    };
    let kernel = boot().await;
    let call = get(kernel.clone(), input.clone());
    let asked = first_waiting(&kernel).await;
    kernel
        .decide_approval(&asked.id, Verdict::DenyAlways, kernel.principal())
        .await
        .unwrap();
    assert!(call.await.unwrap()["error"].is_string());
    let refusals = kernel.refusals().await.unwrap();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].resource, asked.resource);
    kernel.shutdown().await;
    drop(kernel);

    // Refused standing, after a restart too: denied at once, nobody asked.
    let kernel = boot().await;
    let answer = get(kernel.clone(), input.clone()).await.unwrap();
    assert!(answer["error"].is_string(), "{answer}");
    assert!(kernel.approvals().is_empty());
    assert!(web.seen.paths().is_empty());
    // Asking for more than was refused is refused too, unasked.
    let wider = json!({ "uri": asked.resource, "permission": "read,exec", "reason": "again" });
    let out = kernel
        .call_tool(&id("fetch"), "ask", &wider.to_string())
        .await
        .unwrap();
    assert!(out.contains("denied"), "{out}");
    assert!(kernel.approvals().is_empty());

    // Forgotten: it asks again.
    kernel.forget_refusal(&asked.id).await.unwrap();
    assert!(kernel.forget_refusal(&asked.id).await.is_err());
    let call = get(kernel.clone(), input);
    let asked = first_waiting(&kernel).await;
    kernel
        .decide_approval(&asked.id, Verdict::Once, kernel.principal())
        .await
        .unwrap();
    assert_eq!(call.await.unwrap()["status"], 200);
    kernel.shutdown().await;
}

/// A kernel booted on `home` in dev mode (manifests' requests granted), without hot reload.
async fn dev_kernel(home: &PrivateHome) -> Arc<capsid_kernel::Kernel> {
    Arc::new(
        capsid_kernel::Kernel::builder()
            .home(home.path())
            .config(capsid_kernel::KernelConfig {
                dev: true,
                hot_reload: false,
                ..capsid_kernel::KernelConfig::default()
            })
            .build()
            .await
            .unwrap_or_else(|e| panic!("boot: {e}")),
    )
}

/// The first request waiting on `kernel`, within 10 s.
async fn first_waiting(kernel: &capsid_kernel::Kernel) -> ApprovalRequest {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = kernel.approvals().into_iter().next() {
            return a;
        }
        assert!(Instant::now() < until, "nothing asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // One story: a session's grant, its end, a restart.
async fn a_session_approval_lasts_while_the_callers_session_does_and_not_past_a_restart() {
    let web = WebServer::start().await;
    let home = PrivateHome::new();
    asking_fetch(&home.path().join("capsules"), &web, "");
    let boot = || dev_kernel(&home);
    let input = json!({ "url": web.url("http", "/bytes/2") }).to_string();
    // As the daemon calls for its operator's connections (the embedding program's own
    // calls come from no client session).
    let get = |kernel: Arc<capsid_kernel::Kernel>| {
        let input = input.clone();
        tokio::spawn(async move {
            let caller = kernel.operator(capsid_kernel::Door::Daemon);
            let control = capsid_capsule::CallControl::new();
            let out = kernel
                .call_tool_as(&caller, &id("fetch"), "get", &input, &control)
                .await
                .unwrap();
            serde_json::from_str::<Value>(&out).unwrap()
        })
    };
    let session_grants = |kernel: Arc<capsid_kernel::Kernel>| async move {
        kernel
            .capabilities()
            .list(&kernel.principal())
            .await
            .unwrap()
            .into_iter()
            .filter(|g| g.capability.session.is_some())
            .count()
    };
    let kernel = boot().await;
    let hold = kernel.hold_session(kernel.principal());
    let call = get(kernel.clone());
    let asked = first_waiting(&kernel).await;
    assert_eq!(asked.session, Some(hold.id()));
    assert_eq!(asked.caller, Some(kernel.principal()));
    // Someone else may not decide what the operator's call asked: not pending, for them.
    let stranger = capsid_core::Principal::User(capsid_core::PrincipalId::new());
    assert!(
        kernel
            .decide_approval(&asked.id, Verdict::Once, stranger)
            .await
            .is_err()
    );
    kernel
        .decide_approval(&asked.id, Verdict::Session, kernel.principal())
        .await
        .unwrap();
    assert_eq!(call.await.unwrap()["status"], 200);
    // Within the session, the token answers: nobody is asked.
    let answer = get(kernel.clone()).await.unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(session_grants(kernel.clone()).await, 1);

    // Another connection of the same principal keeps it; the last one closing ends it.
    let second = kernel.hold_session(kernel.principal());
    drop(hold);
    assert_eq!(get(kernel.clone()).await.unwrap()["status"], 200);
    drop(second);
    let call = get(kernel.clone());
    let asked = first_waiting(&kernel).await;
    assert_eq!(asked.session, None, "no session: the call came from none");
    let refused = kernel
        .decide_approval(&asked.id, Verdict::Session, kernel.principal())
        .await;
    assert!(refused.is_err(), "session without a session");
    kernel
        .decide_approval(&asked.id, Verdict::Deny, kernel.principal())
        .await
        .unwrap();
    assert!(call.await.unwrap()["error"].is_string());
    let ended = || {
        capsid_audit::tail(kernel.audit().path(), 1000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "approval.session.ended")
            .count()
    };
    for _ in 0..200 {
        if ended() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ended(), 1, "the session's end is recorded with its grant");
    assert_eq!(session_grants(kernel.clone()).await, 0);

    // A session grant left by a run that ended (or was killed) is not honoured and is
    // removed at the next boot.
    let _hold = kernel.hold_session(kernel.principal());
    let call = get(kernel.clone());
    let asked = first_waiting(&kernel).await;
    kernel
        .decide_approval(&asked.id, Verdict::Session, kernel.principal())
        .await
        .unwrap();
    assert_eq!(call.await.unwrap()["status"], 200);
    kernel.shutdown().await;
    drop(kernel);
    let kernel = boot().await;
    assert_eq!(session_grants(kernel.clone()).await, 0);
    let _hold = kernel.hold_session(kernel.principal());
    let call = get(kernel.clone());
    let asked = first_waiting(&kernel).await;
    kernel
        .decide_approval(&asked.id, Verdict::Deny, kernel.principal())
        .await
        .unwrap();
    assert!(call.await.unwrap()["error"].is_string());
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_decides_only_its_own_calls_and_never_for_everyone() {
    let web = WebServer::start().await;
    let home = PrivateHome::new();
    asking_fetch(&home.path().join("capsules"), &web, "");
    let kernel = dev_kernel(&home).await;
    // The MCP user (dev trust lets it call every tool over stdio) calls; it may decide.
    let mcp = kernel.mcp_principal();
    let input = json!({ "url": web.url("http", "/bytes/2") }).to_string();
    let call = {
        let (kernel, input) = (kernel.clone(), input.clone());
        tokio::spawn(async move {
            let caller = capsid_kernel::ToolCaller {
                principal: kernel.mcp_principal(),
                door: capsid_kernel::Door::Mcp,
                client: None,
            };
            let control = capsid_capsule::CallControl::new();
            kernel
                .call_tool_as(&caller, &id("fetch"), "get", &input, &control)
                .await
                .unwrap()
        })
    };
    let asked = first_waiting(&kernel).await;
    assert_eq!(asked.caller, Some(mcp));
    for verdict in [Verdict::Always, Verdict::DenyAlways] {
        let refused = kernel.decide_approval(&asked.id, verdict, mcp).await;
        assert!(
            matches!(
                refused,
                Err(capsid_kernel::KernelError::Approval(
                    capsid_capsule::ApprovalError::OperatorOnly { .. }
                ))
            ),
            "{verdict:?}: {refused:?}"
        );
    }
    assert_eq!(kernel.approvals().len(), 1, "still pending");
    kernel
        .decide_approval(&asked.id, Verdict::Once, mcp)
        .await
        .unwrap();
    assert!(call.await.unwrap().contains("\"status\":200"));
    assert!(kernel.refusals().await.unwrap().is_empty());
    kernel.shutdown().await;
}
