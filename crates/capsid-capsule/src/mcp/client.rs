//! The connection to an MCP capsule's server: for each start of its program, the MCP
//! handshake over its stdio, the tool list, refreshes on `notifications/tools/list_changed`,
//! and its stderr read into the capsule's log. A server that does not complete the
//! handshake in time, or whose connection breaks while it runs, is killed; its supervisor
//! restarts it (or gives up) per the capsule's policy.

use std::sync::Arc;

use capsid_core::limits::{
    MAX_MCP_TOOL_PAGES, MAX_MCP_TOOLS, MCP_MAX_MESSAGE_BYTES, MCP_TOOL_REFRESH_INTERVAL,
};
use capsid_process::{Child, Signal, Supervisor};
use rmcp::model::{
    ClientCapabilities, ClientConfig, Implementation, PaginatedRequestParams,
    ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, Peer, RoleClient};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, ServiceExt};
use tokio::time::Instant;

use super::Shared;
use super::definition;
use crate::logbuf::{LogLevel, LogSource};

/// What the server may ask of capsid: nothing (no roots, sampling or elicitation are
/// offered, and rmcp refuses what is not offered); what it tells is passed on.
struct Handler {
    shared: Arc<Shared>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        // 2025-11-25: list changes arrive as plain notifications (a 2026-07-28 server would
        // send them only on a listen stream), and servers of either version speak it.
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("capsid", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        // A permit, not a queue: a flood of these is one refresh.
        self.shared.refresh.notify_one();
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.shared.progress(
            &params.progress_token,
            params.progress,
            params.total,
            params.message,
        );
    }

    // Deprecated by the 2026 protocol, still what 2025 servers send for their log.
    #[expect(deprecated)]
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        use rmcp::model::LoggingLevel;
        let level = match params.level {
            LoggingLevel::Debug => LogLevel::Debug,
            LoggingLevel::Info | LoggingLevel::Notice => LogLevel::Info,
            LoggingLevel::Warning => LogLevel::Warn,
            _ => LogLevel::Error,
        };
        let text = match params.data {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        // The server writes as often as it likes: into its log ring, not the runtime's log.
        self.shared.log.push_quiet(level, LogSource::Guest, &text);
    }
}

/// The server's tools, page by page until `deadline`, at most `MAX_MCP_TOOLS` of them from
/// at most `MAX_MCP_TOOL_PAGES` pages (a server with endless pages is cut short, logged).
async fn list(
    shared: &Shared,
    peer: &Peer<RoleClient>,
    deadline: Instant,
) -> Result<Vec<rmcp::model::Tool>, String> {
    let mut listed = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_MCP_TOOL_PAGES {
        let params = PaginatedRequestParams::default().with_cursor(cursor.take());
        let page = tokio::time::timeout_at(deadline, peer.list_tools(Some(params)))
            .await
            .map_err(|_| format!("did not list its tools within {:?}", shared.startup))?
            .map_err(|e| format!("listing its tools failed: {e}"))?;
        listed.extend(page.tools);
        match page.next_cursor {
            None if listed.len() <= MAX_MCP_TOOLS => return Ok(listed),
            Some(next) if listed.len() < MAX_MCP_TOOLS => cursor = Some(next),
            _ => break,
        }
    }
    shared.log.push_quiet(
        LogLevel::Warn,
        LogSource::Host,
        &format!(
            "the server's tool list goes on past {MAX_MCP_TOOLS} tools or {MAX_MCP_TOOL_PAGES} pages; the rest is left out"
        ),
    );
    listed.truncate(MAX_MCP_TOOLS);
    Ok(listed)
}

/// Lists the server's tools (by `deadline`) and sorts them (pins, review); `Err` when it
/// does not answer.
async fn refresh(
    shared: &Shared,
    peer: &Peer<RoleClient>,
    deadline: Instant,
) -> Result<(), String> {
    let listed = list(shared, peer, deadline).await?;
    let mut usable: Vec<definition::Presented> = Vec::new();
    for tool in &listed {
        match definition::present(tool) {
            Ok(p) if usable.iter().any(|u| u.tool.name == p.tool.name) => {
                shared.log.push_quiet(
                    LogLevel::Warn,
                    LogSource::Host,
                    &format!("tool {} is listed twice; the first is used", p.tool.name),
                );
            }
            Ok(p) => usable.push(p),
            Err(why) => shared.log.push_quiet(
                LogLevel::Warn,
                LogSource::Host,
                &format!("a tool is left out: {why}"),
            ),
        }
    }
    shared.sort_tools(usable).await;
    Ok(())
}

/// Reads the child's stderr ring into the capsule's log, a line at a time, until it closes.
async fn read_stderr(shared: Arc<Shared>, child: Arc<Child>) {
    let ring = child.stderr().clone();
    let mut partial = Vec::new();
    loop {
        ring.ready().await;
        let chunk = ring.drain(usize::MAX);
        if chunk.is_empty() && ring.is_closed() {
            break;
        }
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            shared
                .log
                .push_quiet(LogLevel::Info, LogSource::Stderr, &text);
        }
        // A line longer than a log line is cut where the log would cut it anyway.
        if partial.len() > capsid_core::limits::MAX_LOG_LINE_BYTES {
            let text = String::from_utf8_lossy(&partial).into_owned();
            shared
                .log
                .push_quiet(LogLevel::Info, LogSource::Stderr, &text);
            partial.clear();
        }
    }
    if !partial.is_empty() {
        let text = String::from_utf8_lossy(&partial).into_owned();
        shared
            .log
            .push_quiet(LogLevel::Info, LogSource::Stderr, &text);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Speaks to each start of the server until the supervisor is gone or the task is aborted.
pub(super) async fn serve(shared: Arc<Shared>, supervisor: Arc<Supervisor>) {
    let mut starts = supervisor.starts();
    // A child may have started before this task subscribed.
    starts.mark_changed();
    drop(supervisor);
    while starts.changed().await.is_ok() {
        let Some(child) = starts.borrow_and_update().clone() else {
            continue;
        };
        tokio::spawn(read_stderr(shared.clone(), child.clone()));
        if let Err(why) = speak(&shared, &child).await {
            shared.log.push(
                LogLevel::Error,
                LogSource::Host,
                &format!("the MCP server {why}; stopping it"),
            );
        }
        shared.peer.send_replace(None);
        // Whatever ended the conversation, this child cannot be spoken to again: its
        // supervisor restarts it, or gives up, per the capsule's policy.
        if !child.has_exited() {
            let _ = child.signal(Signal::SIGKILL);
        }
    }
}

/// One conversation: handshake, tools, then refreshes until the child exits or the
/// connection breaks. `Err` says why it ended early.
async fn speak(shared: &Arc<Shared>, child: &Arc<Child>) -> Result<(), String> {
    let stdio = child
        .take_stdio()
        .await
        .ok_or("was started without its stdio")?;
    let transport = AsyncRwTransport::new_client(stdio.stdout, stdio.stdin)
        .with_max_line_length(MCP_MAX_MESSAGE_BYTES);
    let handler = Handler {
        shared: shared.clone(),
    };
    // One deadline for the handshake and the first list together.
    let deadline = Instant::now() + shared.startup;
    let running = tokio::time::timeout_at(deadline, handler.serve(transport))
        .await
        .map_err(|_| format!("did not complete the handshake within {:?}", shared.startup))?
        .map_err(|e| format!("failed the handshake: {e}"))?;
    let peer = running.peer().clone();
    // Until it is handed to its task below, dropping `running` closes the service.
    refresh(shared, &peer, deadline).await?;
    shared.peer.send_replace(Some(peer.clone()));
    let mut ended = tokio::spawn(running.waiting());
    // However this conversation ends, the service task goes (and closes the service).
    let _ended_guard = AbortOnDrop(ended.abort_handle());
    loop {
        tokio::select! {
            _ = &mut ended => return Err("closed the connection".into()),
            _ = child.wait(None) => return Ok(()),
            () = shared.refresh.notified() => {
                if let Err(why) = refresh(shared, &peer, Instant::now() + shared.startup).await {
                    shared.log.push_quiet(LogLevel::Warn, LogSource::Host, &why);
                }
                // However often the server says its list changed, it is listed at most
                // once per interval.
                tokio::time::sleep(MCP_TOOL_REFRESH_INTERVAL).await;
            }
        }
    }
}
