//! Approvals through `capsid mcp serve`: a call that waits for a person is asked of the MCP
//! client's person when the client supports form elicitation, by `elicitation/create` in a
//! 2025-11-25 session and by an input-required round trip in 2026-07-28; the decision is the
//! session user's, recorded so. A sealed request state works only for its own call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use capsid_integration_tests::fetch_asking_copy;
use capsid_integration_tests::web::WebServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientConfig, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, FormElicitationCapability, InputResponses,
    ProtocolVersion,
};
use rmcp::service::{
    ClientLifecycleMode, RequestContext, RunningService, serve_client_with_lifecycle,
};
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Value, json};

use common::{CAPSID, Home, arguments};

/// An MCP client whose person answers the forms it is shown with the next of `answers`
/// (`decline` declines), keeping each form's message.
#[derive(Clone, Default)]
struct Person {
    answers: Arc<Mutex<VecDeque<&'static str>>>,
    shown: Arc<Mutex<Vec<String>>>,
}

impl Person {
    fn answering(answers: &[&'static str]) -> Self {
        let person = Self::default();
        person.answers.lock().unwrap().extend(answers);
        person
    }
}

impl ClientHandler for Person {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.capabilities.elicitation =
            Some(ElicitationCapability::new().with_form(FormElicitationCapability::default()));
        info
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        if let ElicitRequestParams::FormElicitationParams { message, .. } = &request {
            self.shown.lock().unwrap().push(message.clone());
        }
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or("decline");
        Ok(if answer == "decline" {
            ElicitResult::new(ElicitationAction::Decline)
        } else {
            ElicitResult::new(ElicitationAction::Accept).with_content(json!({ "decision": answer }))
        })
    }
}

fn serve_command(home: &Home) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(CAPSID);
    cmd.arg("--home").arg(&home.path).args(["mcp", "serve"]);
    cmd
}

async fn session_2025(home: &Home, person: Person) -> RunningService<RoleClient, Person> {
    let transport = rmcp::transport::TokioChildProcess::new(serve_command(home)).unwrap();
    person.serve(transport).await.unwrap()
}

async fn session_2026(home: &Home, person: Person) -> RunningService<RoleClient, Person> {
    let transport = rmcp::transport::TokioChildProcess::new(serve_command(home)).unwrap();
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    serve_client_with_lifecycle(person, transport, lifecycle)
        .await
        .unwrap()
}

/// A daemon in dev mode (the `mcp` user may call every tool over stdio) with `fetch`
/// allowed to ask for `web`'s origin.
fn home_with_asking_fetch(web: &WebServer) -> Home {
    let home = Home::new();
    home.ok(&["start", "--dev"]);
    let resource = format!("net://http/127.0.0.1/{}", web.addr.port());
    let fetch = fetch_asking_copy(&home.path.join("copies"), &resource, "");
    home.ok(&["capsule", "install", fetch.to_str().unwrap()]);
    home
}

fn get(web: &WebServer) -> CallToolRequestParams {
    CallToolRequestParams::new("fetch.get")
        .with_arguments(arguments(json!({ "url": web.url("http", "/bytes/4") })))
}

/// The text of a call's answer.
fn text(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_string(&result.content).unwrap()
}

/// The `approval.decided` entries: (decision, who decided, the entry's own principal).
fn decisions(home: &Home) -> Vec<(String, String, String)> {
    home.json(&["audit", "tail", "-n", "200"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "approval.decided")
        .map(|e| {
            let details: Value = match &e["details"] {
                Value::String(s) => serde_json::from_str(s).unwrap(),
                other => other.clone(),
            };
            (
                details["decision"].as_str().unwrap().to_owned(),
                details["by"].as_str().unwrap().to_owned(),
                e["principal"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_client_is_asked_by_elicitation_and_its_answer_decides() {
    let web = WebServer::start().await;
    let home = home_with_asking_fetch(&web);
    let person = Person::answering(&["once", "decline"]);
    let session = session_2025(&home, person.clone()).await;
    let allowed = session.call_tool(get(&web)).await.unwrap();
    assert!(text(&allowed).contains("200"), "{allowed:?}");
    let shown = person.shown.lock().unwrap().clone();
    assert_eq!(shown.len(), 1);
    assert!(
        shown[0].contains("fetch") && shown[0].contains("GET /bytes/4"),
        "{shown:?}"
    );
    // Declining is a denial; nothing is sent.
    let denied = session.call_tool(get(&web)).await.unwrap();
    assert!(text(&denied).contains("HttpRequestDenied"), "{denied:?}");
    assert_eq!(web.seen.paths().len(), 1);
    let decided = decisions(&home);
    assert_eq!(
        decided.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
        ["once", "deny"]
    );
    for (_, by, operator) in &decided {
        assert!(
            by.starts_with("user:") && by != operator,
            "the session's user decided: {decided:?}"
        );
    }
    session.cancel().await.unwrap();
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_decision_from_an_mcp_client_ends_when_it_disconnects() {
    let web = WebServer::start().await;
    let home = home_with_asking_fetch(&web);
    let person = Person::answering(&["session"]);
    let session = session_2025(&home, person.clone()).await;
    let first = session.call_tool(get(&web)).await.unwrap();
    assert!(text(&first).contains("200"), "{first:?}");
    // For the rest of this client's session, the token answers: nobody is asked.
    let again = session.call_tool(get(&web)).await.unwrap();
    assert!(text(&again).contains("200"), "{again:?}");
    assert_eq!(person.shown.lock().unwrap().len(), 1);
    session.cancel().await.unwrap();

    // Disconnected: the next client is asked again (and declines).
    let later = Person::answering(&["decline"]);
    let next = session_2025(&home, later.clone()).await;
    let denied = next.call_tool(get(&web)).await.unwrap();
    assert!(text(&denied).contains("HttpRequestDenied"), "{denied:?}");
    assert_eq!(later.shown.lock().unwrap().len(), 1);
    next.cancel().await.unwrap();
    home.ok(&["stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_answers_an_input_required_round_trip_bound_to_its_call() {
    let web = WebServer::start().await;
    let home = home_with_asking_fetch(&web);
    // rmcp's client drives the round trip itself: the answer, then the retry.
    let person = Person::answering(&["once"]);
    let session = session_2026(&home, person.clone()).await;
    let allowed = session.call_tool(get(&web)).await.unwrap();
    assert!(text(&allowed).contains("200"), "{allowed:?}");
    assert_eq!(person.shown.lock().unwrap().len(), 1);

    // By hand: the state works only for the call it was given for.
    let first = session.call_tool_once(get(&web)).await.unwrap();
    let CallToolResponse::InputRequired(asked) = first else {
        panic!("expected input_required, got {first:?}");
    };
    let offered = serde_json::to_string(&asked.input_requests).unwrap();
    assert!(
        offered.contains("\"once\"")
            && !offered.contains("\"always\"")
            && !offered.contains("\"session\""),
        "a stateless client is offered once or deny: {offered}"
    );
    let state = asked.request_state.clone().unwrap();
    let requests = asked.input_requests.clone().unwrap();
    let key = requests.keys().next().unwrap().clone();
    let mut responses = InputResponses::new();
    responses.insert(
        key,
        json!({ "action": "accept", "content": { "decision": "once" } }),
    );
    let retry = |params: CallToolRequestParams, state: &str| {
        params
            .with_input_responses(responses.clone())
            .with_request_state(state.to_owned())
    };
    let other_arguments = CallToolRequestParams::new("fetch.get")
        .with_arguments(arguments(json!({ "url": web.url("http", "/bytes/9") })));
    assert!(
        session
            .call_tool_once(retry(other_arguments, &state))
            .await
            .is_err()
    );
    let tampered = format!("{}0{}", &state[..2], &state[3..]);
    assert!(
        session
            .call_tool_once(retry(get(&web), &tampered))
            .await
            .is_err()
    );
    assert!(web.seen.paths().len() == 1, "nothing more was sent");
    let done = session
        .call_tool_once(retry(get(&web), &state))
        .await
        .unwrap();
    let CallToolResponse::Complete(done) = done else {
        panic!("expected the answer, got {done:?}");
    };
    assert!(text(&done).contains("200"), "{done:?}");
    // Answered: the same state is no use a second time.
    assert!(
        session
            .call_tool_once(retry(get(&web), &state))
            .await
            .is_err()
    );
    assert_eq!(decisions(&home).len(), 2);
    session.cancel().await.unwrap();
    home.ok(&["stop"]);
}
