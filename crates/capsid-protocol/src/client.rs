//! A typed client of the daemon's socket: hello, then [`Client::call`] for a method's result
//! or [`Client::follow`] for a stream of them.

use std::path::{Path, PathBuf};

use capsid_core::CapsidHome;
use capsid_core::limits::DAEMON_PROTOCOL_VERSION;
use tokio::net::UnixStream;

use crate::frame::{FrameError, read_frame, write_json};
use crate::wire::{ErrorCode, Hello, Request, Response, Welcome, WireError};
use crate::{Method, NoParams};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("no capsid daemon answers at {} ({source}); start one with `capsid start`", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The session token cannot be read.
    #[error("cannot read the session token {}: {source}", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon refused the connection at hello.
    #[error("the daemon refused the connection: {} ({})", .0.message, .0.code)]
    Refused(WireError),
    /// The daemon answered the request with an error.
    #[error("{0}")]
    Daemon(WireError),
    /// The daemon's answer does not have the shape this client expects.
    #[error("the daemon's answer to {method} is not what this client expects: {source}")]
    Decode {
        /// The method.
        method: &'static str,
        /// What did not fit.
        source: serde_json::Error,
    },
    /// The params could not be encoded.
    #[error("encoding the params of {method}: {source}")]
    Encode {
        /// The method.
        method: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// A frame could not be read.
    #[error("reading the daemon's answer: {0}")]
    Frame(#[from] FrameError),
    /// A frame could not be written.
    #[error("sending to the daemon: {0}")]
    Send(std::io::Error),
}

impl ClientError {
    /// The daemon's error code, when the daemon refused or failed the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused(e) | Self::Daemon(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A connected, welcomed client.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u64,
    welcome: Welcome,
}

impl Client {
    /// Connects to the daemon of `home` and says hello with the token in its `run/token`
    /// and `fingerprint` (of the config this client read; empty for none).
    pub async fn connect(home: &CapsidHome, fingerprint: String) -> Result<Self, ClientError> {
        let socket = home.socket_path();
        let stream = UnixStream::connect(&socket)
            .await
            .map_err(|source| ClientError::Connect { socket, source })?;
        let token = read_token(&home.token_path())?;
        Self::hello(stream, token, fingerprint).await
    }

    /// Says hello on `stream` with `token` and `fingerprint`.
    pub async fn hello(
        mut stream: UnixStream,
        token: String,
        fingerprint: String,
    ) -> Result<Self, ClientError> {
        let hello = Hello {
            protocol: DAEMON_PROTOCOL_VERSION,
            token,
            fingerprint,
        };
        write_json(&mut stream, &hello)
            .await
            .map_err(ClientError::Send)?;
        let frame = read_frame(&mut stream).await?.ok_or(ClientError::Closed)?;
        let response: Response =
            serde_json::from_slice(&frame).map_err(|source| ClientError::Decode {
                method: "hello",
                source,
            })?;
        if let Some(e) = response.error {
            return Err(ClientError::Refused(e));
        }
        let welcome =
            serde_json::from_value(response.result.unwrap_or_default()).map_err(|source| {
                ClientError::Decode {
                    method: "hello",
                    source,
                }
            })?;
        Ok(Self {
            stream,
            next_id: 1,
            welcome,
        })
    }

    /// What the daemon said at hello.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Calls `M` with `params` and returns its result.
    pub async fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, ClientError> {
        let id = self.send::<M>(params).await?;
        let response = self.receive(id).await?;
        response.into_result::<M>()
    }

    /// Calls `M`, which takes no params.
    pub async fn ask<M: Method<Params = NoParams>>(&mut self) -> Result<M::Result, ClientError> {
        self.call::<M>(&NoParams {}).await
    }

    /// Starts the streaming method `M`; read its results with [`Follow::next`].
    pub async fn follow<M: Method>(
        &mut self,
        params: &M::Params,
    ) -> Result<Follow<'_, M>, ClientError> {
        let id = self.send::<M>(params).await?;
        Ok(Follow {
            client: self,
            id,
            done: false,
            method: std::marker::PhantomData,
        })
    }

    /// Sends a request for `M` without waiting: its id, for [`Client::receive`] (several may
    /// be in flight at once).
    pub async fn send<M: Method>(&mut self, params: &M::Params) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request::new::<M>(id, params).map_err(|source| ClientError::Encode {
            method: M::NAME,
            source,
        })?;
        write_json(&mut self.stream, &request)
            .await
            .map_err(ClientError::Send)?;
        Ok(id)
    }

    /// The next frame answering `id` (frames for other ids are skipped; an error about the
    /// connection itself ends the wait).
    pub async fn receive(&mut self, id: u64) -> Result<Response, ClientError> {
        loop {
            let frame = read_frame(&mut self.stream)
                .await?
                .ok_or(ClientError::Closed)?;
            let response: Response =
                serde_json::from_slice(&frame).map_err(|source| ClientError::Decode {
                    method: "a response",
                    source,
                })?;
            if response.id == Some(id) {
                return Ok(response);
            }
            if response.id.is_none()
                && let Some(e) = response.error
            {
                return Err(ClientError::Daemon(e));
            }
        }
    }
}

/// The results of a streaming method, as they come.
#[derive(Debug)]
pub struct Follow<'c, M> {
    client: &'c mut Client,
    id: u64,
    done: bool,
    method: std::marker::PhantomData<M>,
}

impl<M: Method> Follow<'_, M> {
    /// The next result; `None` once the daemon sent the last one.
    pub async fn next(&mut self) -> Result<Option<M::Result>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let response = self.client.receive(self.id).await?;
        self.done = !response.more;
        Ok(Some(response.into_result::<M>()?))
    }
}

fn read_token(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| ClientError::Token {
            path: path.to_owned(),
            source,
        })
}
