//! The daemon's `mcp.token.*` methods: bearer tokens for the MCP bridge's HTTP transport.

use capsid_protocol::methods::{
    TokenCheckParams, TokenCreateParams, TokenCreated, TokenOwner, TokenRevokeParams, TokenView,
};
use capsid_protocol::{Done, ErrorCode, WireError};

use super::server::Shared;
use super::views::kernel_error;

type Answer<T> = Result<T, WireError>;

/// `mcp.token.create`.
pub(super) async fn create(shared: &Shared, p: TokenCreateParams) -> Answer<TokenCreated> {
    let kernel = &shared.kernel;
    let user = kernel
        .find_user(&p.user)
        .await
        .map_err(|e| kernel_error(&e))?;
    let minted = kernel
        .mint_token(user, p.label)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(TokenCreated {
        id: minted.record.id,
        token: minted.token,
        user: user.to_string(),
    })
}

/// `mcp.token.list`.
pub(super) async fn list(shared: &Shared) -> Answer<Vec<TokenView>> {
    let tokens = shared.kernel.tokens().await.map_err(|e| kernel_error(&e))?;
    Ok(tokens
        .into_iter()
        .map(|(t, user)| TokenView {
            id: t.id,
            user: t.user.to_string(),
            user_name: user.map(|u| u.name),
            created_ms: t.created_ms,
            label: t.label,
        })
        .collect())
}

/// `mcp.token.revoke`.
pub(super) async fn revoke(shared: &Shared, p: TokenRevokeParams) -> Answer<Done> {
    shared
        .kernel
        .revoke_token(&p.id)
        .await
        .map_err(|e| kernel_error(&e))?;
    Ok(Done {})
}

/// `mcp.token.check`: one answer for every token that is not live, whatever the reason.
pub(super) async fn check(shared: &Shared, p: TokenCheckParams) -> Answer<TokenOwner> {
    match shared.kernel.resolve_token(&p.token).await {
        Ok(Some(user)) => Ok(TokenOwner {
            user: user.id.to_string(),
        }),
        Ok(None) => Err(WireError::new(
            ErrorCode::Unauthorized,
            "not a live MCP token",
        )),
        Err(e) => Err(kernel_error(&e)),
    }
}
