//! The MCP server handler: `tools/list` and `tools/call` answered through the daemon's
//! `tool.list`, `tool.call` and `tool.run`, as the session's user; the tool list's changes
//! announced both ways MCP has (`notifications/tools/list_changed` after `initialize`, and
//! `subscriptions/listen` in 2026-07-28).

use std::sync::Arc;

use capsid_core::CapsuleId;
use capsid_core::limits::MAX_TOOL_INPUT_BYTES;
use capsid_protocol::methods::{
    ToolCall, ToolCallParams, ToolChangesFollow, ToolList, ToolListParams, ToolOutput, ToolRun,
    ToolRunFrame, Via,
};
use capsid_protocol::{Client, ClientError, Method};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Extensions, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ServerCapabilities, ServerConfig, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use serde_json::Value;

use crate::daemon::Daemon;

/// How often a session's follow checks that the session is still there.
const SESSION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
use crate::tools::{answer, mcp_tool, unknown_tool};

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

/// An MCP server over the home's daemon. Cloning shares its connections.
#[derive(Debug, Clone)]
pub struct Bridge {
    daemon: Arc<Daemon>,
    acting: Acting,
}

impl Bridge {
    /// A bridge answering through `daemon`, acting as `acting` says.
    pub fn new(daemon: Arc<Daemon>, acting: Acting) -> Self {
        Self { daemon, acting }
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

    /// Runs a tool call until it answers or `context` is cancelled; progress goes to the
    /// client when it asked for it. A cancelled call's connection is closed: the daemon
    /// stops the guest and records the call as cancelled.
    async fn run_call(
        &self,
        params: &ToolCallParams,
        context: &RequestContext<RoleServer>,
    ) -> Option<Result<ToolOutput, ClientError>> {
        let mut lease = match self.daemon.lease().await {
            Ok(lease) => lease,
            Err(e) => return Some(Err(e)),
        };
        let progress = context.meta.get_progress_token();
        let client = lease.client();
        let outcome = tokio::select! {
            outcome = call_reporting(client, params, progress, &context.peer) => Some(outcome),
            () = context.ct.cancelled() => None,
        };
        // Cancelled: the lease is dropped, closing its connection.
        let outcome = outcome?;
        lease.keep_if(&outcome);
        Some(outcome)
    }
}

/// `tool.call`, or `tool.run` with its progress passed to `peer` under `token`.
async fn call_reporting(
    client: &mut Client,
    params: &ToolCallParams,
    token: Option<ProgressToken>,
    peer: &Peer<RoleServer>,
) -> Result<ToolOutput, ClientError> {
    let Some(token) = token else {
        return client.call::<ToolCall>(params).await;
    };
    let mut frames = client.follow::<ToolRun>(params).await?;
    while let Some(frame) = frames.next().await? {
        match frame {
            ToolRunFrame::Done(output) => return Ok(output),
            ToolRunFrame::Progress(p) => {
                #[allow(clippy::cast_precision_loss)]
                let mut note = ProgressNotificationParam::new(token.clone(), p.done as f64);
                #[allow(clippy::cast_precision_loss)]
                {
                    note.total = p.total.map(|t| t as f64);
                }
                note.message = p.message;
                if let Err(e) = peer.notify_progress(note).await {
                    tracing::debug!(error = %e, "progress not delivered");
                }
            }
        }
    }
    Err(ClientError::Closed)
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
        let name = request.name.as_ref();
        let Some((capsule, tool)) = name.split_once('.') else {
            return Err(unknown_tool(name));
        };
        let Ok(capsule) = CapsuleId::new(capsule) else {
            return Err(unknown_tool(name));
        };
        let input = Value::Object(request.arguments.clone().unwrap_or_default());
        // Refused here: a frame too big for the daemon would end this request's connection.
        let len = input.to_string().len();
        if len > MAX_TOOL_INPUT_BYTES {
            return Err(ErrorData::invalid_params(
                format!("the arguments are {len} bytes, over the limit of {MAX_TOOL_INPUT_BYTES}"),
                None,
            ));
        }
        let params = ToolCallParams {
            capsule,
            tool: tool.to_owned(),
            input,
            as_user: Some(user),
            client: context.client_info().map(|c| c.name),
            via: self.via(),
        };
        match self.run_call(&params, &context).await {
            Some(result) => answer(name, result).map(CallToolResponse::from),
            // The client asked for no answer; this one is dropped by the SDK.
            None => Ok(CallToolResponse::from(CallToolResult::error(vec![
                rmcp::model::ContentBlock::text("cancelled"),
            ]))),
        }
    }
}
