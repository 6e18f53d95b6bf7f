//! The daemon's tool methods: listing what a user may call, calling (`tool.call`, and
//! `tool.run` with progress frames), and following the set of tools for the MCP bridge.
//!
//! A call belongs to its connection: when the client goes away mid-call, the guest is
//! interrupted (cause `cancelled`), the capsule stays ready, and the call's record after says
//! `cancelled`.

use capsid_capsule::{CallControl, Progress};
use capsid_core::limits::{DAEMON_FOLLOW_INTERVAL, PROGRESS_REPORT_INTERVAL};
use capsid_protocol::methods::{
    ToolCallParams, ToolDef, ToolHints, ToolListParams, ToolOutput, ToolProgress, ToolRunFrame,
    ToolSet, Via,
};
use capsid_protocol::{Response, WireError};
use tokio::sync::{mpsc, watch};

use super::server::{Peer, Shared};
use super::views::kernel_error;
use crate::tool::{Door, ToolCaller, ToolInfo};

type Answer<T> = Result<T, WireError>;

/// The principal `user` names (the operator when `None`), and a hold on its client session
/// for as long as the request runs: a pooled connection (the MCP bridge's) serves many users
/// in turn and must keep none of their sessions alive once it is idle.
async fn acting(
    shared: &Shared,
    user: Option<&str>,
) -> Answer<(capsid_core::Principal, crate::SessionHold)> {
    let who = super::methods::principal(shared, user).await?;
    Ok((who, shared.kernel.hold_session(who)))
}

/// `tool.list`: the tools `p.as_user` may call.
pub(super) async fn list(shared: &Shared, p: ToolListParams) -> Answer<Vec<ToolDef>> {
    let who = super::methods::principal(shared, p.as_user.as_deref()).await?;
    Ok(shared
        .kernel
        .tools_for(who, door(p.via))
        .await
        .into_iter()
        .map(|t| ToolDef {
            capsule: t.capsule,
            tool: t.tool,
            description: t.description,
            input_schema: t.input_schema,
            output_schema: t.output_schema,
            annotations: ToolHints {
                read_only: t.annotations.read_only,
                destructive: t.annotations.destructive,
                idempotent: t.annotations.idempotent,
                open_world: t.annotations.open_world,
            },
        })
        .collect())
}

fn door(via: Via) -> Door {
    match via {
        Via::Daemon => Door::Daemon,
        Via::Mcp => Door::Mcp,
        Via::McpHttp => Door::McpHttp,
    }
}

/// Runs the call `p` under `control`, holding its caller's client session while it runs.
async fn call_with(
    shared: &Shared,
    p: ToolCallParams,
    control: &CallControl,
) -> Answer<ToolOutput> {
    let (principal, _session) = acting(shared, p.as_user.as_deref()).await?;
    let caller = ToolCaller {
        principal,
        door: door(p.via),
        client: p.client.clone(),
    };
    let answer = shared
        .kernel
        .call_tool_as(&caller, &p.capsule, &p.tool, &p.input.to_string(), control)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(ToolOutput::from_answer(answer))
}

/// `tool.call`: one call, cancelled if its connection's client goes away.
pub(super) async fn call(shared: &Shared, p: ToolCallParams, peer: &Peer) -> Answer<ToolOutput> {
    call_with(shared, p, &CallControl::cancelled_by(&peer.gone)).await
}

fn progress_frame(id: u64, progress: &Progress) -> Option<Response> {
    let frame = ToolRunFrame::Progress(ToolProgress {
        done: progress.done,
        total: progress.total,
        message: progress.message.clone(),
    });
    let mut response = Response::ok(id, serde_json::to_value(frame).ok()?);
    response.more = true;
    Some(response)
}

/// Sends the latest report at most every `PROGRESS_REPORT_INTERVAL`, until the call ends.
/// Only reports that move forward are sent (MCP requires progress to increase).
async fn forward_progress(
    id: u64,
    mut reports: watch::Receiver<Option<Progress>>,
    out: mpsc::Sender<Response>,
) {
    let mut sent: Option<u64> = None;
    while reports.changed().await.is_ok() {
        let latest = reports.borrow_and_update().clone();
        let Some(progress) = latest.filter(|p| sent.is_none_or(|s| p.done > s)) else {
            continue;
        };
        if let Some(frame) = progress_frame(id, &progress)
            && out.send(frame).await.is_err()
        {
            return;
        }
        sent = Some(progress.done);
        tokio::time::sleep(PROGRESS_REPORT_INTERVAL).await;
    }
}

/// Sends each approval request the call comes to wait on as a frame, until the call ends.
async fn forward_approvals(
    id: u64,
    mut asked: mpsc::Receiver<capsid_capsule::ApprovalRequest>,
    out: mpsc::Sender<Response>,
) {
    while let Some(request) = asked.recv().await {
        let frame = ToolRunFrame::Approval(super::approvals::view(request));
        let Ok(value) = serde_json::to_value(frame) else {
            continue;
        };
        let mut response = Response::ok(id, value);
        response.more = true;
        if out.send(response).await.is_err() {
            return;
        }
    }
}

/// `tool.run`: the call, its progress frames (and, when asked for, its approval requests),
/// then its answer as the last frame.
pub(super) async fn run(
    shared: &Shared,
    id: u64,
    p: ToolCallParams,
    peer: &Peer,
    out: &mpsc::Sender<Response>,
) {
    let mut control = CallControl::cancelled_by(&peer.gone);
    let reports = control.watch_progress();
    let forwarder = tokio::spawn(forward_progress(id, reports, out.clone()));
    let asks = p.approvals.then(|| {
        tokio::spawn(forward_approvals(
            id,
            control.watch_approvals(),
            out.clone(),
        ))
    });
    let answer = call_with(shared, p, &control).await;
    // No frame may follow the answer.
    drop(control);
    forwarder.abort();
    let _ = forwarder.await;
    if let Some(asks) = asks {
        asks.abort();
        let _ = asks.await;
    }
    let response = match answer.and_then(|output| {
        serde_json::to_value(ToolRunFrame::Done(output)).map_err(super::views::failed)
    }) {
        Ok(value) => Response::ok(id, value),
        Err(e) => Response::err(Some(id), e),
    };
    let _ = out.send(response).await;
}

/// The fingerprint of a set of tools: each tool's capsule, name, description, schemas and
/// hints.
fn tool_set(tools: &[ToolInfo]) -> ToolSet {
    let mut hasher = blake3::Hasher::new();
    for t in tools {
        let output_schema = t
            .output_schema
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let hints = format!("{:?}", t.annotations);
        for part in [
            t.capsule.as_str(),
            &t.tool,
            &t.description,
            &t.input_schema.to_string(),
            &output_schema,
            &hints,
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    ToolSet {
        fingerprint: hasher.finalize().to_hex().to_string(),
    }
}

/// Streams the fingerprint of the tools a user may call: at once, then at each change,
/// until the client goes away or the daemon stops (what the MCP bridge turns into
/// `notifications/tools/list_changed`).
pub(super) async fn follow_changes(
    shared: &Shared,
    id: u64,
    p: ToolListParams,
    out: &mpsc::Sender<Response>,
) {
    // Held while it streams: an MCP session's follow is what keeps its user's session live.
    let (who, _session) = match acting(shared, p.as_user.as_deref()).await {
        Ok(who) => who,
        Err(e) => {
            let _ = out.send(Response::err(Some(id), e)).await;
            return;
        }
    };
    let mut last: Option<ToolSet> = None;
    loop {
        let now = tool_set(&shared.kernel.tools_for(who, door(p.via)).await);
        if last.as_ref() != Some(&now) {
            let Ok(value) = serde_json::to_value(&now) else {
                return;
            };
            let mut frame = Response::ok(id, value);
            frame.more = true;
            if out.send(frame).await.is_err() {
                return;
            }
            last = Some(now);
        }
        if shared.stopping() || shared.kernel.is_closing() || out.is_closed() {
            if let Some(last) = last
                && let Ok(value) = serde_json::to_value(&last)
            {
                let _ = out.send(Response::ok(id, value)).await;
            }
            return;
        }
        tokio::time::sleep(DAEMON_FOLLOW_INTERVAL).await;
    }
}
