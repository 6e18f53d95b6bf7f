//! Serving the kernel on its Unix socket: one task per connection (a reader that dispatches
//! each request in its own task, a writer that owns the socket's write half), hello first,
//! peer uid checked, every limit named in `capsid_core::limits`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capsid_core::limits::{
    DAEMON_AUDIT_READS_AT_ONCE, DAEMON_DRAIN_TIMEOUT, DAEMON_HELLO_TIMEOUT,
    DAEMON_PROTOCOL_VERSION, DAEMON_WRITE_TIMEOUT, MAX_DAEMON_CONNECTIONS,
    MAX_REQUESTS_PER_CONNECTION,
};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc, watch};

use super::files::RunFiles;
use super::methods;
use super::protocol::{
    FrameError, Hello, Request, Response, Welcome, WireError, read_frame, write_json,
};
use crate::kernel::Kernel;

/// How the daemon serves.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The only user id allowed to connect (default: the daemon's own).
    pub allowed_uid: u32,
    /// How long a stop waits for requests in flight.
    pub drain_timeout: Duration,
    /// The config fingerprint clients compare theirs with: that of the `config.toml` they
    /// can read, when the daemon's own config adds overrides from its command line (default:
    /// the kernel's).
    pub config_fingerprint: Option<String>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            allowed_uid: nix::unistd::getuid().as_raw(),
            drain_timeout: DAEMON_DRAIN_TIMEOUT,
            config_fingerprint: None,
        }
    }
}

/// What connections share.
pub(crate) struct Shared {
    pub kernel: Kernel,
    pub token: String,
    pub options: DaemonOptions,
    /// Set to ask the daemon to stop (a `daemon.stop` request).
    pub stop: watch::Sender<bool>,
    /// Requests being served, for the drain.
    pub in_flight: AtomicUsize,
    /// Turns for audit log reads (`DAEMON_AUDIT_READS_AT_ONCE`).
    pub audit_reads: Semaphore,
}

/// Serves `kernel` on the socket `files` prepared until SIGTERM, SIGINT or a `daemon.stop`
/// request; then stops accepting, drains requests in flight (bounded), shuts the kernel
/// down and removes the run files.
pub async fn serve(
    kernel: Kernel,
    files: RunFiles,
    options: DaemonOptions,
) -> Result<(), std::io::Error> {
    let listener = files.bind()?;
    let (stop, mut stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        kernel: kernel.clone(),
        token: files.token().to_owned(),
        options,
        stop,
        in_flight: AtomicUsize::new(0),
        audit_reads: Semaphore::new(DAEMON_AUDIT_READS_AT_ONCE),
    });
    files.mark_ready()?;
    tracing::info!(socket = %files.socket().display(), "capsid daemon ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let slots = Arc::new(Semaphore::new(MAX_DAEMON_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tokio::spawn(refuse(stream, WireError::new("busy", "the daemon serves the most connections it may; try again")));
                        continue;
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        connection(stream, shared).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = stopped.changed() => break,
        }
    }
    tracing::info!("capsid daemon stopping");
    drop(listener);
    files.unready();
    let drain = tokio::time::Instant::now() + shared.options.drain_timeout;
    while shared.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kernel.shutdown().await;
    drop(files);
    Ok(())
}

async fn refuse(mut stream: UnixStream, error: WireError) {
    let _ = tokio::time::timeout(
        DAEMON_WRITE_TIMEOUT,
        write_json(&mut stream, &Response::err(None, error)),
    )
    .await;
    let _ = stream.shutdown().await;
}

/// Checks the peer's uid and its hello; `Err` is what to answer before closing.
async fn admit(stream: &mut UnixStream, shared: &Shared) -> Result<Welcome, WireError> {
    let uid = stream
        .peer_cred()
        .map_err(|e| WireError::new("unauthorized", format!("cannot read peer credentials: {e}")))?
        .uid();
    if uid != shared.options.allowed_uid {
        return Err(WireError::new(
            "unauthorized",
            format!("uid {uid} may not use this daemon"),
        ));
    }
    let frame = match tokio::time::timeout(DAEMON_HELLO_TIMEOUT, read_frame(stream)).await {
        Err(_) => {
            return Err(WireError::new(
                "bad-request",
                "no hello within the time allowed",
            ));
        }
        Ok(Err(e)) => return Err(frame_error(&e)),
        Ok(Ok(None)) => return Err(WireError::new("bad-request", "closed before its hello")),
        Ok(Ok(Some(frame))) => frame,
    };
    let hello: Hello = serde_json::from_slice(&frame).map_err(|e| {
        WireError::new(
            "bad-request",
            format!("the first frame must be a hello: {e}"),
        )
    })?;
    if hello.protocol != DAEMON_PROTOCOL_VERSION {
        return Err(WireError::new(
            "protocol",
            format!(
                "protocol {} is not spoken here (the daemon speaks {DAEMON_PROTOCOL_VERSION})",
                hello.protocol
            ),
        ));
    }
    if !bool::from(hello.token.as_bytes().ct_eq(shared.token.as_bytes())) {
        return Err(WireError::new("unauthorized", "wrong session token"));
    }
    let fingerprint = shared
        .options
        .config_fingerprint
        .clone()
        .unwrap_or_else(|| shared.kernel.fingerprint().to_owned());
    Ok(Welcome {
        protocol: DAEMON_PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        fingerprint_matches: hello.fingerprint == fingerprint,
        fingerprint,
    })
}

fn frame_error(e: &FrameError) -> WireError {
    match e {
        FrameError::TooLarge(_) => WireError::new("too-large", e.to_string()),
        FrameError::Truncated | FrameError::Io(_) => WireError::new("bad-frame", e.to_string()),
    }
}

async fn connection(mut stream: UnixStream, shared: Arc<Shared>) {
    let welcome = match admit(&mut stream, &shared).await {
        Ok(w) => w,
        Err(error) => return refuse(stream, error).await,
    };
    let (mut reader, mut writer) = stream.into_split();
    let (out, mut outgoing) = mpsc::channel::<Response>(MAX_REQUESTS_PER_CONNECTION);
    // The writer owns the write half; a client that stops reading is dropped at the timeout.
    let write_task = tokio::spawn(async move {
        while let Some(response) = outgoing.recv().await {
            let sent =
                tokio::time::timeout(DAEMON_WRITE_TIMEOUT, write_json(&mut writer, &response))
                    .await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    if out
        .send(Response::ok(
            0,
            serde_json::to_value(&welcome).unwrap_or_default(),
        ))
        .await
        .is_err()
    {
        return;
    }
    let requests = Arc::new(Semaphore::new(MAX_REQUESTS_PER_CONNECTION));
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader) => frame,
            () = closed(&out) => break,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                // The stream cannot be resynchronised after a bad frame: answer, then close.
                let _ = out.send(Response::err(None, frame_error(&e))).await;
                break;
            }
        };
        let request: Request = match serde_json::from_slice(&frame) {
            Ok(r) => r,
            Err(e) => {
                let error = WireError::new("bad-request", format!("not a request: {e}"));
                if out.send(Response::err(None, error)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Ok(permit) = requests.clone().acquire_owned().await else {
            break;
        };
        let (shared, out) = (shared.clone(), out.clone());
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            methods::dispatch(&shared, request, &out).await;
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
        });
    }
    drop(out);
    let _ = write_task.await;
}

/// Resolves once the writer has gone (the client stopped reading or disconnected).
async fn closed(out: &mpsc::Sender<Response>) {
    out.closed().await;
}
