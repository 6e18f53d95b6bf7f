//! A client of the daemon's socket: hello, then requests by id.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use capsid_core::CapsidHome;
use capsid_core::limits::DAEMON_PROTOCOL_VERSION;
use capsid_kernel::KernelConfig;
use capsid_kernel::daemon::protocol::{Hello, Request, Response, Welcome, read_frame, write_json};
use serde_json::Value;
use tokio::net::UnixStream;

/// A connected, welcomed client.
pub struct Client {
    stream: UnixStream,
    next_id: u64,
    /// What the daemon said at hello.
    pub welcome: Welcome,
}

/// The fingerprint of the config this client reads (empty when it cannot read one).
fn local_fingerprint(home: &CapsidHome) -> String {
    KernelConfig::load(&home.config_path())
        .map(|c| c.fingerprint())
        .unwrap_or_default()
}

impl Client {
    /// Connects to the daemon of `home` and says hello.
    pub async fn connect(home: &CapsidHome) -> Result<Self> {
        let socket = home.socket_path();
        let stream = UnixStream::connect(&socket).await.map_err(|e| {
            anyhow!(
                "no capsid daemon answers at {} ({e}); start one with `capsid start`",
                socket.display()
            )
        })?;
        let token = read_token(&home.token_path())?;
        Self::hello(stream, token, local_fingerprint(home)).await
    }

    /// Says hello on `stream` with `token` and `fingerprint`.
    pub async fn hello(mut stream: UnixStream, token: String, fingerprint: String) -> Result<Self> {
        let hello = Hello {
            protocol: DAEMON_PROTOCOL_VERSION,
            token,
            fingerprint,
        };
        write_json(&mut stream, &hello)
            .await
            .context("sending hello")?;
        let frame = read_frame(&mut stream)
            .await
            .context("reading the daemon's welcome")?
            .ok_or_else(|| anyhow!("the daemon closed the connection at hello"))?;
        let response: Response = serde_json::from_slice(&frame).context("the daemon's welcome")?;
        if let Some(e) = response.error {
            bail!(
                "the daemon refused the connection: {} ({})",
                e.message,
                e.code
            );
        }
        let welcome: Welcome = serde_json::from_value(response.result.unwrap_or_default())
            .context("the daemon's welcome")?;
        Ok(Self {
            stream,
            next_id: 1,
            welcome,
        })
    }

    /// Sends `method` with `params` and returns its result (or its error, as one line).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.send(method, params).await?;
        let response = self.receive(id).await?;
        into_result(response)
    }

    /// Sends a request and returns its id; read its frames with [`Client::receive`].
    pub async fn send(&mut self, method: &str, params: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            id,
            method: method.to_owned(),
            params,
        };
        write_json(&mut self.stream, &request)
            .await
            .context("sending the request")?;
        Ok(id)
    }

    /// The next frame answering `id`.
    pub async fn receive(&mut self, id: u64) -> Result<Response> {
        loop {
            let frame = read_frame(&mut self.stream)
                .await
                .context("reading the daemon's answer")?
                .ok_or_else(|| anyhow!("the daemon closed the connection"))?;
            let response: Response =
                serde_json::from_slice(&frame).context("the daemon's answer")?;
            if response.id == Some(id) {
                return Ok(response);
            }
            if response.id.is_none()
                && let Some(e) = response.error
            {
                bail!("{} ({})", e.message, e.code);
            }
        }
    }
}

/// A response's result, or its error as one line.
pub fn into_result(response: Response) -> Result<Value> {
    match (response.result, response.error) {
        (_, Some(e)) => bail!("{}", e.message),
        (Some(v), None) => Ok(v),
        (None, None) => Ok(Value::Null),
    }
}

fn read_token(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| anyhow!("cannot read the session token {}: {e}", path.display()))
}
