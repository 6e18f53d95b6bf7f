//! `capsid mcp serve --http` and `capsid mcp token`.

use std::sync::Arc;

use anyhow::Result;
use capsid_protocol::Client;
use capsid_protocol::methods::{
    McpTokenCreate, McpTokenList, McpTokenRevoke, TokenCreateParams, TokenRevokeParams,
};
use tokio_util::sync::CancellationToken;

use crate::TokenCommand;
use crate::output::{self, opt};

/// Serves MCP over HTTP until SIGINT or SIGTERM. The address taken is said on stderr, as
/// `capsid mcp: serving http://<addr>/mcp`.
pub(crate) async fn serve_http(
    daemon: Arc<capsid_mcp::Daemon>,
    options: capsid_mcp::HttpOptions,
) -> Result<()> {
    let stop = CancellationToken::new();
    let signals = {
        let stop = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
        })
    };
    let ready = |addr| eprintln!("capsid mcp: serving http://{addr}{}", capsid_mcp::MCP_PATH);
    let served = capsid_mcp::serve_http(daemon, options, ready, stop).await;
    signals.abort();
    Ok(served?)
}

/// `capsid mcp token ...`.
pub(crate) async fn token(client: &mut Client, command: TokenCommand, as_json: bool) -> Result<()> {
    match command {
        TokenCommand::Create { as_user, label } => {
            let created = client
                .call::<McpTokenCreate>(&TokenCreateParams {
                    user: as_user,
                    label,
                })
                .await?;
            if as_json {
                output::json(&created);
            } else {
                eprintln!(
                    "token {} for user {}; it is shown this once (only its hash is kept):",
                    created.id, created.user
                );
                println!("{}", created.token);
            }
        }
        TokenCommand::Ls => {
            let tokens = client.ask::<McpTokenList>().await?;
            if as_json {
                output::json(&tokens);
            } else {
                let rows: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            opt(t.user_name.as_ref()),
                            t.user.clone(),
                            opt(t.label.as_ref()),
                            t.created_ms.to_string(),
                        ]
                    })
                    .collect();
                output::table(&["id", "user", "user_id", "label", "created_ms"], &rows);
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .call::<McpTokenRevoke>(&TokenRevokeParams { id: id.clone() })
                .await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
