//! What a lattice's wire refuses (real `nats-server` cluster on loopback, real kernels): forged,
//! untrusted, misdirected and replayed call envelopes and an untrusted host's cancel, each
//! refused without an answer, counted in `status` and audited by reason where it happened;
//! a trusted host's call still checked by the serving host for the user it names, and ended
//! there by the deadline it carries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capsid_capabilities::Permissions;
use capsid_core::{Principal, PrincipalId};
use capsid_crypto::KeyPair;
use capsid_integration_tests::audit_rows;
use capsid_integration_tests::lattice::{
    HelloOnB, LATTICE, LatticeHost, call_until_ok, copy_key, details, grant_greet, hello_on_b,
    lattice_config, refusals_on, user_of,
};
use capsid_kernel::Kernel;
use capsid_lattice::calls::{self, CallMeta, CallOutcome};
use capsid_lattice::local::LocalCluster;
use capsid_lattice::{Kind, Lattice, Seal};
use futures_util::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_hosts_refuse_forged_untrusted_redirected_and_replayed_calls_and_check_grants() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let a_host = LatticeHost::new(&[]);
    let (b_host, c_host) = (LatticeHost::new(&["hello"]), LatticeHost::new(&["hello"]));
    let a = a_host.boot(&cluster, &[&b_host, &c_host]).await;
    let b = b_host.boot(&cluster, &[&a_host]).await;
    let c = c_host.boot(&cluster, &[&a_host]).await;
    let user = user_of(&a);
    grant_greet(&a, &user, r#"{"name":"x"}"#).await;

    // The wire, as A would speak it, and as others might.
    let lattice = Lattice::connect(&lattice_config(cluster.urls()), a_host.home.path())
        .await
        .unwrap();
    let servers = [b_host.key.public_key(), c_host.key.public_key()];
    let as_a = Seal::new(LATTICE, copy_key(&a_host.key), &servers);
    let send = |seal: Seal, meta: CallMeta| {
        let lattice = lattice.clone();
        async move {
            let input = Bytes::from_static(br#"{"name":"x"}"#);
            calls::call(&lattice, &seal, &meta, input, None, std::future::pending()).await
        }
    };
    let answer = send(as_a.clone(), meta(user.principal, "greet"))
        .await
        .unwrap();
    assert_eq!(answer.outcome, CallOutcome::Ok);
    assert!([b_host.key_hex(), c_host.key_hex()].contains(&answer.host));

    // A user with no grant, named by a trusted host: the serving host checks for itself.
    let stranger_user = Principal::User(PrincipalId::new());
    let answer = send(as_a.clone(), meta(stranger_user, "greet"))
        .await
        .unwrap();
    assert_eq!(answer.outcome, CallOutcome::UnknownTool);
    // B's operator, named by another host, is only a user there: no operator bypass.
    let answer = send(as_a.clone(), meta(b.principal(), "whoami"))
        .await
        .unwrap();
    assert_eq!(answer.outcome, CallOutcome::UnknownTool);

    // A host nobody trusts: refused without an answer (an answer could be replayed into a
    // genuine caller's inbox), so its call is never taken.
    let stranger = Arc::new(KeyPair::generate().unwrap());
    let stranger_hex = hex::encode(stranger.public_key().to_bytes());
    let untrusted = Seal::new(LATTICE, stranger, &servers);
    let err = send(untrusted.clone(), meta(user.principal, "greet"))
        .await
        .unwrap_err();
    assert!(matches!(err, calls::RemoteCallError::NotTaken(_)), "{err}");
    // Its cancel, which goes to every host before any took the call, is refused by each.
    send_untrusted_cancel(&lattice, &untrusted, user.principal, &[&b, &c]).await;

    let refused_before = refused(&b) + refused(&c);
    let ran_before = lattice_calls(&b_host) + lattice_calls(&c_host);
    let inbox = lattice.client().new_inbox();
    let signed = CallMeta {
        reply_to: inbox.clone(),
        ..meta(user.principal, "greet")
    };
    let sealed = as_a.seal(Kind::Call, &signed, Bytes::from_static(b"{}"));
    // Edited after signing to call another tool.
    let mut forged = sealed.headers.clone();
    let text = sealed.headers.get("Capsid-Envelope").unwrap().as_str();
    forged.insert("Capsid-Envelope", text.replace("greet", "echo").as_str());
    assert!(
        raw_answers(&lattice, &inbox, &inbox, forged, sealed.body.clone())
            .await
            .is_empty()
    );
    // Sent with another inbox than the one it signed: its output would go to whoever asked.
    let elsewhere = lattice.client().new_inbox();
    let answers = raw_answers(
        &lattice,
        &elsewhere,
        &elsewhere,
        sealed.headers.clone(),
        sealed.body.clone(),
    )
    .await;
    assert!(answers.is_empty(), "{answers:?}");
    // Genuine, sent by A, and its copy replayed twice: it runs once.
    call_then_replay_twice(&lattice, &as_a, user.principal).await;
    assert!(refused(&b) + refused(&c) >= refused_before + 2);
    assert!(
        [&b_host, &c_host].iter().all(|h| !audit_rows(&h.audit_db())
            .iter()
            .any(|r| r.resource == "tool://hello/echo")),
        "the forged call never reached a check"
    );
    // Every refusal is audited where it happened, by reason, with the key an untrusted
    // sender claimed (counted once the hosts are down: a late copy counts too).
    for kernel in [&a, &b, &c] {
        kernel.shutdown().await;
    }
    // Counted once the hosts are down: a copy refused after its check is recorded as such.
    assert_eq!(
        lattice_calls(&b_host) + lattice_calls(&c_host),
        ran_before + 1
    );
    let counted = [refused(&b), refused(&c)];
    assert_refusals_recorded(
        &[(&b_host, counted[0]), (&c_host, counted[1])],
        &stranger_hex,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_caller_handed_to_another_host_is_checked_but_neither_run_nor_answered() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let HelloOnB {
        a_host,
        b_host,
        a,
        b,
        user,
    } = hello_on_b(&cluster).await;
    let lattice = Lattice::connect(&lattice_config(cluster.urls()), a_host.home.path())
        .await
        .unwrap();
    let as_a = Seal::new(LATTICE, copy_key(&a_host.key), &[b_host.key.public_key()]);
    let inbox = lattice.client().new_inbox();
    let mut asked = lattice.client().subscribe(inbox.clone()).await.unwrap();
    let signed = CallMeta {
        reply_to: inbox.clone(),
        ..meta(user.principal, "greet")
    };
    let input = br#"{"name":"taken elsewhere"}"#;
    let sealed = as_a.seal(Kind::Call, &signed, Bytes::from_static(input));
    let refused_before = refused(&b);
    lattice
        .client()
        .publish_with_reply_and_headers(
            calls::call_subject(LATTICE, "hello"),
            inbox.clone(),
            sealed.headers,
            sealed.body,
        )
        .await
        .unwrap();

    // A, by hand: B asks for the call, and is told another host has it.
    let asking = tokio::time::timeout(Duration::from_secs(10), asked.next())
        .await
        .expect("B asks the caller for the call")
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(
        asking
            .headers
            .as_ref()
            .and_then(|h| h.get("Capsid-Envelope"))
            .unwrap()
            .as_str(),
    )
    .unwrap();
    assert_eq!(envelope["kind"], "reply");
    assert_eq!(envelope["meta"]["state"], "taking");
    assert_eq!(envelope["meta"]["call"], sealed.nonce.as_str());
    assert_eq!(envelope["from"], b_host.key_hex());
    let elsewhere = hex::encode(KeyPair::generate().unwrap().public_key().to_bytes());
    let handover = serde_json::json!({
        "call": sealed.nonce,
        "to": elsewhere,
        "taking": envelope["nonce"],
    });
    let told = as_a.seal(Kind::Handover, &handover, Bytes::new());
    lattice
        .client()
        .publish_with_headers(asking.reply.unwrap(), told.headers, told.body)
        .await
        .unwrap();
    let answers = tokio::time::timeout(Duration::from_secs(1), asked.next()).await;
    assert!(
        answers.is_err(),
        "B answered a call it was not handed: {answers:?}"
    );
    // Once down, B has counted and recorded all it did.
    for kernel in [&a, &b] {
        kernel.shutdown().await;
    }
    assert_eq!(refused(&b), refused_before + 1);
    // B checked and recorded it while asking for it, then recorded that it did not run it.
    let input_hash = blake3::hash(input).to_hex().to_string();
    let steps: Vec<(String, String)> = audit_rows(&b_host.audit_db())
        .iter()
        .filter(|r| {
            r.resource == "tool://hello/greet"
                && (r.action == "tool.result" || details(r)["input_blake3"] == input_hash.as_str())
        })
        .map(|r| {
            (
                r.action.clone(),
                details(r)["outcome"]
                    .as_str()
                    .unwrap_or(&r.decision)
                    .to_owned(),
            )
        })
        .collect();
    let checked = steps
        .iter()
        .position(|s| s == &("tool.call".to_owned(), "allow".to_owned()))
        .expect("B checked the call");
    assert_eq!(
        steps[checked + 1..],
        [("tool.result".to_owned(), "claimed-elsewhere".to_owned())],
        "after its check, only that it was not run: {steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_deadline_travels_with_it_and_ends_it_on_the_serving_host() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let (a_host, b_host) = (LatticeHost::new(&[]), LatticeHost::new(&["counter"]));
    let a = a_host.boot(&cluster, &[&b_host]).await;
    let b = b_host.boot(&cluster, &[&a_host]).await;
    let user = user_of(&a);
    let tool = ("counter", "count-to");
    a.grant(
        user.principal,
        None,
        "tool://counter/count-to",
        Permissions::EXEC,
    )
    .await
    .unwrap();
    call_until_ok(&a, &user, tool, r#"{"to":1}"#, Duration::from_secs(20)).await;

    // As A, by hand: a call that would count for ten seconds, carrying a deadline of half a
    // second, from a caller that waits with no deadline of its own and never cancels. Only
    // the deadline the call carries can end it before the capsule's own call timeout.
    let lattice = Lattice::connect(&lattice_config(cluster.urls()), a_host.home.path())
        .await
        .unwrap();
    let as_a = Seal::new(LATTICE, copy_key(&a_host.key), &[b_host.key.public_key()]);
    let meta = CallMeta {
        capsule: tool.0.into(),
        tool: tool.1.into(),
        principal: user.principal.to_string(),
        client: None,
        deadline_ms: Some(500),
        reply_to: String::new(),
    };
    let input = Bytes::from_static(br#"{"to":100,"step_ms":100}"#);
    let answer = calls::call(&lattice, &as_a, &meta, input, None, std::future::pending())
        .await
        .unwrap();
    // Ended by the deadline it carried, not by the capsule's own call timeout (5 s), which
    // fails it saying it "exceeded its deadline of 5000 ms".
    assert!(
        matches!(
            &answer.outcome,
            CallOutcome::Failed { kind: Some(kind), message }
                if kind == "timeout" && message.contains("deadline passed")
        ),
        "{:?}",
        answer.outcome
    );
    // B queued its record of how the call ended (A's is the durable one): it is written by
    // B's shutdown at the latest.
    for kernel in [a, b] {
        kernel.shutdown().await;
    }
    let outcomes: Vec<_> = audit_rows(&b_host.audit_db())
        .iter()
        .filter(|r| r.action == "tool.result" && r.capsule == tool.0)
        .map(|r| details(r)["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes.last(),
        Some(&serde_json::json!("timeout")),
        "{outcomes:?}"
    );
}

/// Sends a genuine call as A, listening on hello's subject as anyone might, then replays the
/// copy heard twice once the call has ended: neither copy is answered (a host refuses what it
/// saw; the other cannot have it handed over, its caller gone).
async fn call_then_replay_twice(lattice: &Lattice, as_a: &Seal, principal: Principal) {
    let mut spy = lattice
        .client()
        .subscribe(calls::call_subject(LATTICE, "hello"))
        .await
        .unwrap();
    lattice.client().flush().await.unwrap();
    let input = Bytes::from_static(br#"{"name":"x"}"#);
    let genuine = meta(principal, "greet");
    let answer = calls::call(lattice, as_a, &genuine, input, None, std::future::pending())
        .await
        .unwrap();
    assert_eq!(answer.outcome, CallOutcome::Ok);
    let copy = spy.next().await.unwrap();
    let copy_inbox = copy.reply.unwrap().to_string();
    for _ in 0..2 {
        let (headers, body) = (copy.headers.clone().unwrap(), copy.payload.clone());
        let again = raw_answers(lattice, &copy_inbox, &copy_inbox, headers, body).await;
        assert!(
            !again.iter().any(|e| e.contains("\"state\":\"done\"")),
            "a copy was answered: {again:?}"
        );
    }
}

/// Sends a call sealed by `untrusted` and cancels it at once; the cancel, which goes to every
/// host before any took the call, is refused (and counted) once by each of `hosts`.
async fn send_untrusted_cancel(
    lattice: &Lattice,
    untrusted: &Seal,
    principal: Principal,
    hosts: &[&Kernel],
) {
    let err = calls::call(
        lattice,
        untrusted,
        &meta(principal, "greet"),
        Bytes::from_static(br#"{"name":"x"}"#),
        None,
        std::future::ready(()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, calls::RemoteCallError::Cancelled(_)), "{err}");
    for kernel in hosts {
        let mut refused = 0;
        for _ in 0..500 {
            refused = kernel.lattice_traffic().unwrap().cancels_refused;
            if refused > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(refused, 1, "the untrusted cancel refused once");
    }
}

/// Every call refusal each host counted is in its log, by reason: the untrusted sender with
/// the key it claimed, the forged and the misdirected calls, and the two copies of the
/// genuine call; and the untrusted sender's cancel, once on each host.
fn assert_refusals_recorded(hosts: &[(&LatticeHost, u64)], stranger_hex: &str) {
    let mut reasons = std::collections::BTreeMap::new();
    for (host, counted) in hosts {
        let mut recorded = 0;
        for row in refusals_on(host, "call") {
            let details = details(&row);
            let count = details["count"].as_u64().unwrap();
            recorded += count;
            let reason = details["reason"].as_str().unwrap().to_owned();
            if reason == "untrusted" {
                assert_eq!(details["senders"], serde_json::json!([stranger_hex]));
            }
            *reasons.entry(reason).or_insert(0) += count;
        }
        assert_eq!(recorded, *counted, "every refusal counted is recorded");
    }
    for reason in ["untrusted", "forged", "misdirected"] {
        assert!(reasons.contains_key(reason), "{reason}: {reasons:?}");
    }
    let copies: u64 = ["replayed", "claimed-elsewhere", "unclaimable"]
        .iter()
        .filter_map(|r| reasons.get(*r))
        .sum();
    assert_eq!(copies, 2, "the two copies of the genuine call: {reasons:?}");
    for (host, _) in hosts {
        let cancels = refusals_on(host, "cancel");
        assert_eq!(cancels.len(), 1, "{cancels:?}");
        let details = details(&cancels[0]);
        assert_eq!(details["reason"], "untrusted");
        assert_eq!(details["count"], 1);
        assert_eq!(details["senders"], serde_json::json!([stranger_hex]));
    }
}

/// A call of hello's tool `tool` for `principal`, as a calling host fills it in.
fn meta(principal: Principal, tool: &str) -> CallMeta {
    CallMeta {
        capsule: "hello".into(),
        tool: tool.into(),
        principal: principal.to_string(),
        client: None,
        deadline_ms: None,
        reply_to: String::new(),
    }
}

fn refused(kernel: &Kernel) -> u64 {
    kernel.lattice_traffic().unwrap().calls_refused
}

/// How many calls from other hosts `host` checked (allowed or not), less those it was not
/// handed: a call is asked of its caller while its check is recorded, and an allowed one the
/// caller did not hand to this host ends unrun, with a `claimed-elsewhere` or `unclaimable`
/// result.
fn lattice_calls(host: &LatticeHost) -> usize {
    let rows = audit_rows(&host.audit_db());
    let checked = rows
        .iter()
        .filter(|r| r.action == "tool.call" && details(r)["door"] == "lattice")
        .count();
    let unclaimed = rows
        .iter()
        .filter(|r| {
            r.action == "tool.result"
                && ["claimed-elsewhere", "unclaimable"]
                    .contains(&details(r)["outcome"].as_str().unwrap_or(""))
        })
        .count();
    checked - unclaimed
}

/// Sends a call as given (headers, body, answers to `reply`) to hello's queue group, and
/// collects the envelopes of what reaches `inbox` within a second.
async fn raw_answers(
    lattice: &Lattice,
    reply: &str,
    inbox: &str,
    headers: capsid_lattice::HeaderMap,
    body: Bytes,
) -> Vec<String> {
    let mut answers = lattice.client().subscribe(inbox.to_owned()).await.unwrap();
    let subject = calls::call_subject(LATTICE, "hello");
    lattice
        .client()
        .publish_with_reply_and_headers(subject, reply.to_owned(), headers, body)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, answers.next()).await {
        if let Some(h) = message.headers {
            seen.push(
                h.get("Capsid-Envelope")
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default(),
            );
        }
    }
    seen
}
