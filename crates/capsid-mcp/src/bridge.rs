//! The MCP server handler: `tools/list` and `tools/call` answered through the daemon's
//! `tool.list`, `tool.call` and `tool.run`, as the session's user; the tool list's changes
//! announced both ways MCP has (`notifications/tools/list_changed` after `initialize`, and
//! `subscriptions/listen` in 2026-07-28); a call that waits for an approval asked of the
//! client's person when the client can be asked (`approvals.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use capsid_core::limits::MCP_PARKED_CALLS;
use capsid_core::sync::lock;
use capsid_protocol::methods::{
    ApprovalDecide, ApprovalDecideParams, ApprovalDecision, ApprovalView, ToolCall, ToolCallParams,
    ToolChangesFollow, ToolList, ToolListParams, ToolOutput, ToolProgress, Via,
};
use capsid_protocol::{Client, ClientError, Method};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ElicitRequest, ElicitResult,
    Extensions, Implementation, InputRequest, InputRequests, InputRequiredResult, InputResponses,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ServerCapabilities, ServerConfig, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use tokio::task::JoinSet;

use crate::approvals::{self, Answered, Binding, StateSeal};
use crate::calls::{CallEvent, RunningCall};
use crate::daemon::Daemon;
use crate::tools::{CallAsked, answer, mcp_tool, read_call};

/// How often a session's follow checks that the session is still there.
const SESSION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Whom a session's requests act as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acting {
    /// One user for the whole session (`capsid mcp serve --as <user>` on stdio).
    As(String),
    /// The user each HTTP request's bearer token names (checked by the HTTP layer before
    /// the request reaches the bridge).
    Bearer,
}

/// The user an HTTP request's bearer token acts as: put in the request's extensions by the
/// HTTP layer, read by the bridge.
#[derive(Debug, Clone)]
pub(crate) struct TokenUser(pub String);

/// An MCP server over the home's daemon. Cloning shares its connections and the calls
/// parked for their clients' answers.
#[derive(Debug, Clone)]
pub struct Bridge {
    daemon: Arc<Daemon>,
    acting: Acting,
    /// Seals 2026 clients' request states.
    seal: Arc<StateSeal>,
    /// 2026 calls waiting for their clients' answers, by approval id.
    parked: Arc<Mutex<HashMap<String, Parked>>>,
}

impl Bridge {
    /// A bridge answering through `daemon`, acting as `acting` says. Fails only when the
    /// system cannot give a random secret for sealing request states.
    pub fn new(daemon: Arc<Daemon>, acting: Acting) -> Result<Self, getrandom::Error> {
        Ok(Self {
            daemon,
            acting,
            seal: Arc::new(StateSeal::new()?),
            parked: Arc::default(),
        })
    }

    /// The user a request acts as. A bearer session without a token user fails closed.
    fn user(&self, extensions: &Extensions) -> Result<String, ErrorData> {
        match &self.acting {
            Acting::As(user) => Ok(user.clone()),
            Acting::Bearer => extensions
                .get::<http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<TokenUser>())
                .map(|t| t.0.clone())
                .ok_or_else(|| ErrorData::invalid_request("no bearer token", None)),
        }
    }

    /// The door its requests come through, as the daemon records it (dev trust reaches
    /// stdio sessions, never HTTP ones).
    fn via(&self) -> Via {
        match self.acting {
            Acting::As(_) => Via::Mcp,
            Acting::Bearer => Via::McpHttp,
        }
    }

    /// One call of `M` on a leased connection.
    async fn ask<M: Method>(&self, params: &M::Params) -> Result<M::Result, ClientError> {
        let mut lease = self.daemon.lease().await?;
        let outcome = lease.client().call::<M>(params).await;
        lease.keep_if(&outcome);
        outcome
    }

    /// Runs a plain `tool.call` until it answers or `context` is cancelled (`None`). A
    /// cancelled call's connection is closed: the daemon stops the guest and records the
    /// call as cancelled.
    async fn run_call(
        &self,
        params: &ToolCallParams,
        context: &RequestContext<RoleServer>,
    ) -> Option<Result<ToolOutput, ClientError>> {
        let mut lease = match self.daemon.lease().await {
            Ok(lease) => lease,
            Err(e) => return Some(Err(e)),
        };
        let client = lease.client();
        let outcome = tokio::select! {
            outcome = client.call::<ToolCall>(params) => Some(outcome),
            () = context.ct.cancelled() => None,
        };
        // Cancelled: the lease is dropped, closing its connection.
        let outcome = outcome?;
        lease.keep_if(&outcome);
        Some(outcome)
    }

    /// Follows `call` to its answer: progress to the client when it asked for it, each
    /// approval request to the client's person as `asking` says. Cancelled with `context`.
    async fn drive(
        &self,
        mut call: RunningCall,
        turn: Turn,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let progress = context.meta.get_progress_token();
        // Forms under way (2025 sessions): each ends by deciding, or by saying "cancel".
        let mut forms: JoinSet<Answered> = JoinSet::new();
        loop {
            let event = tokio::select! {
                event = call.next() => event,
                Some(Ok(Answered::Cancel)) = forms.join_next() => return Ok(cancelled()),
                () = context.ct.cancelled() => return Ok(cancelled()),
            };
            match event {
                CallEvent::Done(result) => {
                    return answer(&turn.name, result).map(CallToolResponse::from);
                }
                CallEvent::Progress(p) => {
                    if let Some(token) = &progress {
                        notify_progress(&context.peer, token.clone(), p).await;
                    }
                }
                CallEvent::Approval(view) => match turn.asking {
                    Asking::Form => {
                        let (bridge, peer, user) =
                            (self.clone(), context.peer.clone(), turn.user.clone());
                        forms.spawn(async move { bridge.ask_form(&peer, &view, &user).await });
                    }
                    Asking::InputRequired => return self.park(call, view, turn),
                    Asking::Nobody => {}
                },
            }
        }
    }

    /// Asks `peer`'s person about `view` with `elicitation/create` (until the request
    /// expires) and decides what they answered as `user`.
    async fn ask_form(&self, peer: &Peer<RoleServer>, view: &ApprovalView, user: &str) -> Answered {
        let Ok(form) = approvals::form(view, true) else {
            return Answered::Nothing;
        };
        let left = u64::try_from(view.expires_ms - capsid_core::time::now_ms()).unwrap_or(0);
        let asked = peer
            .create_elicitation_with_timeout(form, Some(std::time::Duration::from_millis(left)))
            .await;
        let outcome = match asked {
            Ok(result) => approvals::answered(view, true, &result),
            Err(e) => {
                tracing::debug!(error = %e, "the client gave no answer; the timeout decides");
                Answered::Nothing
            }
        };
        if let Answered::Decide(decision) = outcome {
            self.decide(&view.id, decision, user).await;
        }
        outcome
    }

    /// Decides approval `id` as `user` (who may decide only what its own calls asked).
    async fn decide(&self, id: &str, decision: ApprovalDecision, user: &str) {
        let params = ApprovalDecideParams {
            id: id.to_owned(),
            decision,
            as_user: Some(user.to_owned()),
        };
        let decided = match self.daemon.lease_decision().await {
            Ok(mut lease) => {
                let outcome = lease.client().call::<ApprovalDecide>(&params).await;
                lease.keep_if(&outcome);
                outcome.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = decided {
            // Decided elsewhere or expired meanwhile: the call hears whichever came first.
            tracing::debug!(approval = id, error = %e, "the client's decision was not taken");
        }
    }

    /// Parks `call` (waiting on `view`) and answers the 2026 client with an input-required
    /// result: the form, and a sealed state that brings the retry back to this call.
    fn park(
        &self,
        call: RunningCall,
        view: ApprovalView,
        turn: Turn,
    ) -> Result<CallToolResponse, ErrorData> {
        let form = approvals::form(&view, false)
            .map_err(|e| ErrorData::internal_error(format!("cannot ask: {e}"), None))?;
        let state = self.seal.seal(&view.id, view.expires_ms, &turn.binding);
        let id = view.id.clone();
        let left = u64::try_from(view.expires_ms - capsid_core::time::now_ms()).unwrap_or(0);
        {
            let mut parked = lock(&self.parked);
            let now = capsid_core::time::now_ms();
            // Calls whose approval expired are over: dropping them cancels them.
            parked.retain(|_, p| p.view.expires_ms >= now);
            if parked.len() >= MCP_PARKED_CALLS {
                return Err(ErrorData::internal_error(
                    "too many calls wait for their clients' answers; try again later",
                    None,
                ));
            }
            parked.insert(id.clone(), Parked { call, view, turn });
        }
        // Unanswered by its expiry, it goes (and its call is cancelled) without waiting for
        // another call to park.
        let parked = Arc::downgrade(&self.parked);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(left)).await;
            if let Some(parked) = parked.upgrade() {
                lock(&parked).remove(&id);
            }
        });
        let mut requests = InputRequests::new();
        requests.insert(
            approvals::INPUT_KEY.to_owned(),
            InputRequest::Elicitation(ElicitRequest::new(form)),
        );
        Ok(CallToolResponse::from(InputRequiredResult::new(
            Some(requests),
            Some(state),
        )))
    }

    /// A 2026 client's retry: the call its sealed `state` names, given the answer in
    /// `responses`, followed again.
    async fn resume(
        &self,
        state: &str,
        responses: Option<&InputResponses>,
        turn: &Turn,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let refused = || {
            ErrorData::invalid_params(
                "requestState does not name a call of yours that is waiting (altered, expired, \
                 for another tool or arguments, or already answered)",
                None,
            )
        };
        let id = self.seal.open(state, &turn.binding).ok_or_else(refused)?;
        let parked = lock(&self.parked).remove(&id).ok_or_else(refused)?;
        let result = responses
            .and_then(|r| r.get(approvals::INPUT_KEY))
            .and_then(|v| serde_json::from_value::<ElicitResult>(v.clone()).ok());
        match result.map(|r| approvals::answered(&parked.view, false, &r)) {
            Some(Answered::Decide(decision)) => {
                self.decide(&parked.view.id, decision, &turn.user).await;
            }
            Some(Answered::Cancel) => return Ok(cancelled()),
            // No usable answer: asked again.
            Some(Answered::Nothing) | None => {
                return self.park(parked.call, parked.view, parked.turn);
            }
        }
        self.drive(parked.call, parked.turn, context).await
    }
}

/// Follows the tool set `params` names on `watch` and calls `announce` at each change after
/// the first, until either side goes away.
async fn follow_changes<F, Fut>(mut watch: Client, params: ToolListParams, announce: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let Ok(mut changes) = watch.follow::<ToolChangesFollow>(&params).await else {
        return;
    };
    // The first frame is the set the client was shown, or is about to be.
    if !matches!(changes.next().await, Ok(Some(_))) {
        return;
    }
    while let Ok(Some(_)) = changes.next().await {
        if !announce().await {
            return;
        }
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("capsid", env!("CARGO_PKG_VERSION")))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let Ok(user) = self.user(&context.extensions) else {
            return;
        };
        let Some(follow) = self.daemon.follow_turn() else {
            tracing::warn!("too many sessions follow tool changes: this one is not told of them");
            return;
        };
        let Ok(watch) = self.daemon.connect().await else {
            tracing::warn!("cannot follow tool changes: the daemon does not answer");
            return;
        };
        let params = ToolListParams {
            as_user: Some(user),
            via: self.via(),
        };
        let peer = context.peer;
        tokio::spawn(async move {
            let announcer = peer.clone();
            let changes = follow_changes(watch, params, move || {
                let peer = announcer.clone();
                async move { peer.notify_tool_list_changed().await.is_ok() }
            });
            // A session that ends quietly (an HTTP client gone) frees its follow too.
            let closed = async {
                while !peer.is_transport_closed() {
                    tokio::time::sleep(SESSION_CHECK_INTERVAL).await;
                }
            };
            tokio::select! {
                () = changes => {}
                () = closed => {}
            }
            drop(follow);
        });
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed.filter(|on| *on);
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let user = self.user(&context.request_context().extensions)?;
        if context.accepted().tools_list_changed != Some(true) {
            context.cancelled().await;
            return Ok(());
        }
        let Some(_follow) = self.daemon.follow_turn() else {
            return Err(ErrorData::internal_error(
                "too many sessions follow tool changes; try later",
                None,
            ));
        };
        let watch = self
            .daemon
            .connect()
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let params = ToolListParams {
            as_user: Some(user),
            via: self.via(),
        };
        let sink = context.sink().clone();
        tokio::select! {
            () = follow_changes(watch, params, move || {
                let sink = sink.clone();
                async move { sink.notify_tool_list_changed().await.is_ok() }
            }) => {}
            () = context.cancelled() => {}
        }
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let params = ToolListParams {
            as_user: Some(self.user(&context.extensions)?),
            via: self.via(),
        };
        let tools = self
            .ask::<ToolList>(&params)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(ListToolsResult::with_all_items(
            tools.into_iter().map(mcp_tool).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let user = self.user(&context.extensions)?;
        let CallAsked {
            capsule,
            tool,
            input,
            binding,
        } = read_call(&user, &request)?;
        let name = request.name.as_ref();
        let turn = Turn {
            name: name.to_owned(),
            binding,
            asking: Asking::of(&context),
            user: user.clone(),
        };
        if let Some(state) = request.request_state.as_deref() {
            return self
                .resume(state, request.input_responses.as_ref(), &turn, &context)
                .await;
        }
        let params = ToolCallParams {
            capsule,
            tool,
            input,
            as_user: Some(user),
            client: context.client_info().map(|c| c.name),
            via: self.via(),
            approvals: turn.asking != Asking::Nobody,
        };
        if params.approvals || context.meta.get_progress_token().is_some() {
            let call = RunningCall::start(self.daemon.clone(), params);
            return self.drive(call, turn, &context).await;
        }
        match self.run_call(&params, &context).await {
            Some(result) => answer(name, result).map(CallToolResponse::from),
            None => Ok(cancelled()),
        }
    }
}

/// The answer to a cancelled call (the client asked for none; the SDK drops it).
fn cancelled() -> CallToolResponse {
    CallToolResponse::from(CallToolResult::error(vec![
        rmcp::model::ContentBlock::text("cancelled"),
    ]))
}

/// Passes progress `p` on to `peer` under `token`.
async fn notify_progress(peer: &Peer<RoleServer>, token: ProgressToken, p: ToolProgress) {
    #[allow(clippy::cast_precision_loss)]
    let mut note = ProgressNotificationParam::new(token, p.done as f64);
    #[allow(clippy::cast_precision_loss)]
    {
        note.total = p.total.map(|t| t as f64);
    }
    note.message = p.message;
    if let Err(e) = peer.notify_progress(note).await {
        tracing::debug!(error = %e, "progress not delivered");
    }
}

/// How the client's person can be asked about an approval its call waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asking {
    /// Not at all (no form elicitation): the operator's channels or the timeout decide.
    Nobody,
    /// `elicitation/create` while the call waits (sessions before 2026-07-28).
    Form,
    /// An input-required result, and a retry with the answer (2026-07-28).
    InputRequired,
}

impl Asking {
    fn of(context: &RequestContext<RoleServer>) -> Self {
        let form = context
            .client_capabilities()
            .and_then(|c| c.elicitation)
            .is_some_and(|e| e.form.is_some() || e.url.is_none());
        if !form {
            return Self::Nobody;
        }
        let stateless = context
            .protocol_version()
            .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        if stateless {
            Self::InputRequired
        } else {
            Self::Form
        }
    }
}

/// One `tools/call` as the bridge serves it.
#[derive(Debug, Clone)]
struct Turn {
    /// `<capsule>.<tool>`.
    name: String,
    /// The user it acts as.
    user: String,
    /// What a sealed request state for it is bound to.
    binding: Binding,
    asking: Asking,
}

/// A 2026 call waiting for its client's answer to an approval.
#[derive(Debug)]
struct Parked {
    call: RunningCall,
    view: ApprovalView,
    turn: Turn,
}
