//! MCP over Streamable HTTP (`capsid mcp serve --http 127.0.0.1:PORT`), at `/mcp`.
//!
//! Every request must carry `Authorization: Bearer <token>` (minted by `capsid mcp token
//! create`), checked with the daemon before anything else is read; the token's user is the
//! request's principal. The `Host` and `Origin` allow-lists (loopback names, plus what the
//! operator adds) refuse DNS-rebinding requests from browsers. Loopback addresses only,
//! unless the operator says otherwise. Connections, header time and body size are bounded
//! (`MCP_HTTP_*`, `MCP_MAX_REQUEST_BYTES` in `capsid_core::limits`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use capsid_core::limits::{
    MCP_HTTP_HEADER_TIMEOUT, MCP_HTTP_MAX_CONNECTIONS, MCP_MAX_REQUEST_BYTES,
    MCP_TOKEN_CHECK_ENTRIES, MCP_TOKEN_CHECK_TTL,
};
use capsid_core::sync::lock;
use capsid_protocol::methods::{McpTokenCheck, TokenCheckParams};
use capsid_protocol::{ClientError, ErrorCode};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::ServeError;
use crate::bridge::{Acting, Bridge, TokenUser};
use crate::daemon::Daemon;

/// The path MCP is served at.
pub const MCP_PATH: &str = "/mcp";

/// How long open connections get to finish when serving stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Host names every HTTP server accepts in `Host` (any port).
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How to serve MCP over HTTP.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Where to listen (port 0: any free port; the one taken is passed to `ready`).
    pub addr: SocketAddr,
    /// The operator allows an address that is not loopback.
    pub public: bool,
    /// `Host` values accepted besides the loopback names (`name` or `name:port`).
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted (`scheme://host:port`, `:*` for any port). A request with
    /// any other `Origin` is refused; a request without one (not from a browser) passes.
    pub allowed_origins: Vec<String>,
}

type Body = BoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The bearer token of a request, if it has exactly one well-formed `Authorization`.
fn bearer(request: &Request<Incoming>) -> Option<String> {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_owned())
}

/// Tokens the daemon vouched for lately, by the blake3 of the token: their user, and when.
type Checked = std::collections::HashMap<[u8; 32], (String, Instant)>;

/// What every HTTP request goes through before MCP sees it.
#[derive(Clone)]
struct Gate {
    daemon: Arc<Daemon>,
    mcp: StreamableHttpService<Bridge, LocalSessionManager>,
    checked: Arc<Mutex<Checked>>,
}

impl Gate {
    async fn handle(self, mut request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        if request.uri().path() != MCP_PATH {
            return Ok(plain(
                StatusCode::NOT_FOUND,
                "not found: MCP is served at /mcp",
            ));
        }
        let Some(token) = bearer(&request) else {
            return Ok(plain(
                StatusCode::UNAUTHORIZED,
                "an `Authorization: Bearer <token>` header is required (`capsid mcp token create`)",
            ));
        };
        match self.check(token).await {
            Ok(user) => {
                request.extensions_mut().insert(TokenUser(user));
            }
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
                return Ok(plain(StatusCode::UNAUTHORIZED, "not a live MCP token"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a bearer token");
                return Ok(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the capsid daemon does not answer",
                ));
            }
        }
        let mut mcp = self.mcp;
        mcp.call(request).await
    }

    /// The user `token` acts as, asking the daemon unless it vouched for the token within
    /// `MCP_TOKEN_CHECK_TTL`.
    async fn check(&self, token: String) -> Result<String, ClientError> {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        if let Some((user, at)) = lock(&self.checked).get(&key)
            && at.elapsed() < MCP_TOKEN_CHECK_TTL
        {
            return Ok(user.clone());
        }
        let mut lease = self.daemon.lease_check().await?;
        let outcome = lease
            .client()
            .call::<McpTokenCheck>(&TokenCheckParams { token })
            .await;
        lease.keep_if(&outcome);
        let user = outcome?.user;
        let mut checked = lock(&self.checked);
        checked.retain(|_, (_, at)| at.elapsed() < MCP_TOKEN_CHECK_TTL);
        if checked.len() < MCP_TOKEN_CHECK_ENTRIES {
            checked.insert(key, (user.clone(), Instant::now()));
        }
        Ok(user)
    }
}

/// Serves MCP over HTTP until `stop` is cancelled; `ready` is told the address taken.
pub async fn serve_http(
    daemon: Arc<Daemon>,
    options: HttpOptions,
    ready: impl FnOnce(SocketAddr),
    stop: CancellationToken,
) -> Result<(), ServeError> {
    if !options.addr.ip().is_loopback() && !options.public {
        return Err(ServeError::NotLoopback(options.addr));
    }
    let listener = TcpListener::bind(options.addr)
        .await
        .map_err(|e| ServeError::Bind(options.addr, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(options.addr, e))?;
    let hosts: Vec<String> = LOOPBACK_HOSTS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(options.allowed_hosts)
        .collect();
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(options.allowed_origins)
        .enforce_origin_validation()
        .with_json_response(true)
        .with_max_request_body_bytes(MCP_MAX_REQUEST_BYTES)
        .with_cancellation_token(stop.child_token());
    let bridge = Bridge::new(daemon.clone(), Acting::Bearer).map_err(ServeError::Random)?;
    let mcp = StreamableHttpService::new(
        move || Ok(bridge.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let gate = Gate {
        daemon,
        mcp,
        checked: Arc::default(),
    };
    let connections = Arc::new(Semaphore::new(MCP_HTTP_MAX_CONNECTIONS));
    ready(local);
    loop {
        let Ok(turn) = connections.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return Ok(()),
        };
        // Answers go out as written: Nagle's delay would hold an SSE event back until the
        // client's delayed acknowledgement.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let gate = gate.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| gate.clone().handle(request));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(MCP_HTTP_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await;
                }
            }
            drop(turn);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_json_and_401_says_how_to_authenticate() {
        let r = plain(StatusCode::UNAUTHORIZED, "no");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()
                .get(header::WWW_AUTHENTICATE)
                .map(http::HeaderValue::as_bytes),
            Some(&b"Bearer"[..])
        );
        let r = plain(StatusCode::NOT_FOUND, "no");
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
