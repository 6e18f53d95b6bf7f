//! A tool call running through `tool.run` on a connection of its own, in a task: what the
//! daemon streams (progress, approval requests, the answer) comes out as [`CallEvent`]s. The
//! call can outlive the MCP request that started it (a 2026-07-28 call parked while its
//! client answers an approval); dropping it closes its connection, which cancels the call.

use std::sync::Arc;

use capsid_protocol::ClientError;
use capsid_protocol::methods::{
    ApprovalView, ToolCallParams, ToolOutput, ToolProgress, ToolRun, ToolRunFrame,
};
use tokio::sync::mpsc;

use crate::daemon::Daemon;

/// What a running call says.
#[derive(Debug)]
pub(crate) enum CallEvent {
    /// Progress (dropped, not queued, when nobody reads in time).
    Progress(ToolProgress),
    /// The call waits for a person's decision on this request.
    Approval(ApprovalView),
    /// The answer: the call is over.
    Done(Result<ToolOutput, ClientError>),
}

/// Events queued between the call's task and whoever drives it.
const CALL_EVENTS: usize = 64;

/// A tool call under way. Dropped, it is cancelled.
#[derive(Debug)]
pub(crate) struct RunningCall {
    events: mpsc::Receiver<CallEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningCall {
    fn drop(&mut self) {
        // The task owns the call's connection: aborting it closes the connection, and the
        // daemon cancels the call (recorded as cancelled).
        self.task.abort();
    }
}

impl RunningCall {
    /// Starts `params` as a `tool.run` on a leased connection.
    pub(crate) fn start(daemon: Arc<Daemon>, params: ToolCallParams) -> Self {
        let (tx, events) = mpsc::channel(CALL_EVENTS);
        let task = tokio::spawn(async move {
            let mut lease = match daemon.lease().await {
                Ok(lease) => lease,
                Err(e) => {
                    let _ = tx.send(CallEvent::Done(Err(e))).await;
                    return;
                }
            };
            let outcome = relay(lease.client(), &params, &tx).await;
            lease.keep_if(&outcome);
            let _ = tx.send(CallEvent::Done(outcome)).await;
        });
        Self { events, task }
    }

    /// The next event; an answer of `Closed` if the task ended without one.
    pub(crate) async fn next(&mut self) -> CallEvent {
        self.events
            .recv()
            .await
            .unwrap_or(CallEvent::Done(Err(ClientError::Closed)))
    }
}

/// Reads the call's frames, passing on what is not the answer, until the answer.
async fn relay(
    client: &mut capsid_protocol::Client,
    params: &ToolCallParams,
    tx: &mpsc::Sender<CallEvent>,
) -> Result<ToolOutput, ClientError> {
    let mut frames = client.follow::<ToolRun>(params).await?;
    while let Some(frame) = frames.next().await? {
        match frame {
            ToolRunFrame::Done(output) => return Ok(output),
            // Never held up by a reader that is away: the daemon must not wait on us.
            ToolRunFrame::Progress(p) => {
                let _ = tx.try_send(CallEvent::Progress(p));
            }
            ToolRunFrame::Approval(a) => {
                let _ = tx.send(CallEvent::Approval(a)).await;
            }
        }
    }
    Err(ClientError::Closed)
}
