//! Serving the kernel on its Unix socket: one task per connection (a reader that answers the
//! cheap reads itself and dispatches every other request in its own task, a writer that owns
//! the socket's write half), hello first, peer uid checked, every limit named in
//! `capsid_core::limits`.
//!
//! Memory is bounded: a frame's length is checked before its body is read, the bytes of
//! requests held across all connections are budgeted (`MAX_DAEMON_BUFFERED_BYTES`), a body
//! must arrive within `DAEMON_FRAME_TIMEOUT`, and a connection's slot is released only once
//! every request it started has ended (aborted if its client is gone).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capsid_core::limits::{
    DAEMON_AUDIT_READS_AT_ONCE, DAEMON_CANCEL_GRACE, DAEMON_DRAIN_TIMEOUT, DAEMON_FD_RESERVE,
    DAEMON_FRAME_TIMEOUT, DAEMON_HELLO_TIMEOUT, DAEMON_PROTOCOL_VERSION, DAEMON_WRITE_TIMEOUT,
    MAX_DAEMON_BUFFERED_BYTES, MAX_DAEMON_CONNECTIONS, MAX_FRAME_BYTES, MAX_HELLO_BYTES,
    MAX_REQUESTS_PER_CONNECTION,
};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::files::RunFiles;
use super::methods;
use crate::kernel::Kernel;
use capsid_protocol::frame::{
    FrameError, read_frame_body, read_frame_len, read_frame_limited, write_frame, write_json,
};
use capsid_protocol::{ErrorCode, Hello, MethodId, Request, Response, Welcome, WireError};

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
    /// Set when the daemon stops (a signal or a `daemon.stop` request).
    pub stop: watch::Sender<bool>,
    /// Requests being served, for the drain.
    pub in_flight: AtomicUsize,
    /// Turns for audit log reads (`DAEMON_AUDIT_READS_AT_ONCE`).
    pub audit_reads: Semaphore,
    /// Bytes of requests held (`MAX_DAEMON_BUFFERED_BYTES`).
    budget: Arc<Semaphore>,
}

impl Shared {
    /// Whether a stop has begun: new requests are answered `shutting-down`.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// How many connections fit in the open-file limit (raised to its hard maximum first),
/// keeping `DAEMON_FD_RESERVE` descriptors for the kernel.
fn connection_cap() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (mut soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        soft = hard;
    }
    let fit = usize::try_from(soft.saturating_sub(DAEMON_FD_RESERVE)).unwrap_or(usize::MAX);
    MAX_DAEMON_CONNECTIONS.min(fit.max(1))
}

/// Serves `kernel` on the socket `files` prepared until SIGTERM, SIGINT or a `daemon.stop`
/// request; then stops accepting, drains requests in flight (bounded), shuts the kernel
/// down and removes the run files. The kernel is shut down on every way out, errors too.
pub async fn serve(
    kernel: Kernel,
    files: RunFiles,
    options: DaemonOptions,
) -> Result<(), std::io::Error> {
    let result = serve_until_stopped(&kernel, &files, options).await;
    kernel.shutdown().await;
    drop(files);
    result
}

async fn serve_until_stopped(
    kernel: &Kernel,
    files: &RunFiles,
    options: DaemonOptions,
) -> Result<(), std::io::Error> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let listener = files.bind()?;
    let (stop, mut stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        kernel: kernel.clone(),
        token: files.token().to_owned(),
        options,
        stop,
        in_flight: AtomicUsize::new(0),
        audit_reads: Semaphore::new(DAEMON_AUDIT_READS_AT_ONCE),
        budget: Arc::new(Semaphore::new(MAX_DAEMON_BUFFERED_BYTES)),
    });
    let cap = connection_cap();
    let slots = Arc::new(Semaphore::new(cap));
    files.mark_ready()?;
    tracing::info!(socket = %files.socket().display(), connections = cap, "capsid daemon ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Answered inline (bounded by the write timeout), so refusals cannot
                        // pile up as tasks.
                        refuse(stream, WireError::new(ErrorCode::Busy, "the daemon serves the most connections it may; try again")).await;
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
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = stopped.changed() => break,
        }
    }
    let _ = shared.stop.send(true);
    tracing::info!("capsid daemon stopping");
    drop(listener);
    files.unready();
    let drain = tokio::time::Instant::now() + shared.options.drain_timeout;
    while shared.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
        .map_err(|e| {
            WireError::new(
                ErrorCode::Unauthorized,
                format!("cannot read peer credentials: {e}"),
            )
        })?
        .uid();
    if uid != shared.options.allowed_uid {
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            format!("uid {uid} may not use this daemon"),
        ));
    }
    let read = read_frame_limited(stream, MAX_HELLO_BYTES, DAEMON_HELLO_TIMEOUT);
    let frame = match tokio::time::timeout(DAEMON_HELLO_TIMEOUT, read).await {
        Err(_) => {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "no hello within the time allowed",
            ));
        }
        Ok(Err(e)) => return Err(frame_error(&e)),
        Ok(Ok(None)) => {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "closed before its hello",
            ));
        }
        Ok(Ok(Some(frame))) => frame,
    };
    let hello: Hello = serde_json::from_slice(&frame).map_err(|e| {
        WireError::new(
            ErrorCode::BadRequest,
            format!("the first frame must be a hello: {e}"),
        )
    })?;
    if hello.protocol != DAEMON_PROTOCOL_VERSION {
        return Err(WireError::new(
            ErrorCode::Protocol,
            format!(
                "protocol {} is not spoken here (the daemon speaks {DAEMON_PROTOCOL_VERSION})",
                hello.protocol
            ),
        ));
    }
    if !bool::from(hello.token.as_bytes().ct_eq(shared.token.as_bytes())) {
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            "wrong session token",
        ));
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
        FrameError::TooLarge(_) => WireError::new(ErrorCode::TooLarge, e.to_string()),
        FrameError::Truncated | FrameError::Slow | FrameError::Io(_) => {
            WireError::new(ErrorCode::BadFrame, e.to_string())
        }
    }
}

/// Reads the next request frame, holding its bytes against the daemon's budget (taken
/// after the length is known and before the body is read).
async fn next_frame(
    reader: &mut OwnedReadHalf,
    budget: &Arc<Semaphore>,
) -> Result<Option<(Vec<u8>, OwnedSemaphorePermit)>, FrameError> {
    let Some(len) = read_frame_len(reader, MAX_FRAME_BYTES).await? else {
        return Ok(None);
    };
    // At most MAX_FRAME_BYTES, far below u32::MAX.
    let held = budget
        .clone()
        .acquire_many_owned(u32::try_from(len.max(1)).unwrap_or(u32::MAX))
        .await
        .map_err(|_| FrameError::Truncated)?;
    let body = read_frame_body(reader, len, DAEMON_FRAME_TIMEOUT).await?;
    Ok(Some((body, held)))
}

/// Writes responses in order; an answer too big for a frame becomes a `too-large` error for
/// its request. Returns when the client stops taking them or every sender is gone.
async fn write_responses(
    mut writer: tokio::net::unix::OwnedWriteHalf,
    mut outgoing: mpsc::Receiver<Response>,
) {
    while let Some(response) = outgoing.recv().await {
        let mut body = serde_json::to_vec(&response).unwrap_or_default();
        if body.len() > MAX_FRAME_BYTES {
            let error = WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "the answer is {} bytes, over the {MAX_FRAME_BYTES}-byte frame limit; ask for less",
                    body.len()
                ),
            );
            body = serde_json::to_vec(&Response::err(response.id, error)).unwrap_or_default();
        }
        let sent =
            tokio::time::timeout(DAEMON_WRITE_TIMEOUT, write_frame(&mut writer, &body)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// One connection's state, as its requests see it.
pub(crate) struct Peer {
    /// Cancelled when the client goes away (its tool calls with it).
    pub gone: CancellationToken,
    /// The operator's client session, held from the first request that acts for the
    /// operator until the connection closes.
    operator: std::sync::OnceLock<crate::SessionHold>,
}

impl Peer {
    fn new() -> Self {
        Self {
            gone: CancellationToken::new(),
            operator: std::sync::OnceLock::new(),
        }
    }

    /// Notes that this connection acts for the operator: it keeps the operator's client
    /// session live until it closes.
    pub fn acting_for_operator(&self, kernel: &Kernel) {
        self.operator
            .get_or_init(|| kernel.hold_session(kernel.principal()));
    }
}

/// Counts a request as in flight until dropped (finished or aborted).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(mut stream: UnixStream, shared: Arc<Shared>) {
    let welcome = match admit(&mut stream, &shared).await {
        Ok(w) => w,
        Err(error) => return refuse(stream, error).await,
    };
    let (mut reader, writer) = stream.into_split();
    let (out, outgoing) = mpsc::channel::<Response>(MAX_REQUESTS_PER_CONNECTION);
    let mut write_task = tokio::spawn(write_responses(writer, outgoing));
    let welcome = serde_json::to_value(&welcome).unwrap_or_default();
    if out.send(Response::ok(0, welcome)).await.is_err() {
        return;
    }
    let requests = Arc::new(Semaphore::new(MAX_REQUESTS_PER_CONNECTION));
    // `gone` is cancelled when the client goes away: its tool calls stop as cancelled,
    // recorded so. The client sessions it holds end when the last request is over.
    let peer = Arc::new(Peer::new());
    let gone = peer.gone.clone();
    let mut tasks = JoinSet::new();
    // Streams (follows) end only when their client does: they are aborted when it goes,
    // since a quiet one would never learn it by failing to write.
    let mut streams = JoinSet::new();
    let mut stopped = shared.stop.subscribe();
    loop {
        // Finished requests are reaped here, never raced against the read: a read cancelled
        // halfway through a frame would lose the bytes it had taken and desynchronise the
        // stream. The other branches end the connection, so what they cut short is moot.
        while tasks.try_join_next().is_some() {}
        while streams.try_join_next().is_some() {}
        let frame = tokio::select! {
            frame = next_frame(&mut reader, &shared.budget) => frame,
            () = out.closed() => {
                gone.cancel();
                break;
            }
            _ = stopped.changed() => break,
        };
        let (frame, held) = match frame {
            Ok(Some(f)) => f,
            Ok(None) => {
                gone.cancel();
                break;
            }
            Err(e) => {
                // The stream cannot be resynchronised after a bad frame: answer, then close.
                let _ = out.send(Response::err(None, frame_error(&e))).await;
                gone.cancel();
                break;
            }
        };
        let request: Request = match serde_json::from_slice(&frame) {
            Ok(r) => r,
            Err(e) => {
                let error = WireError::new(ErrorCode::BadRequest, format!("not a request: {e}"));
                if out.send(Response::err(None, error)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        drop(frame);
        let method = MethodId::from_name(&request.method);
        if method.is_some_and(MethodId::inline) {
            // A task of its own would cost more than the answer.
            let counted = InFlight::new(shared.clone());
            methods::dispatch(&shared, method, request, &out, &peer).await;
            drop((held, counted));
            continue;
        }
        let Ok(permit) = requests.clone().acquire_owned().await else {
            break;
        };
        let (shared, out, peer) = (shared.clone(), out.clone(), peer.clone());
        let counted = InFlight::new(shared.clone());
        // `tool.run` streams but ends by itself, and its call must be recorded as it ends:
        // it is cancelled with the connection, not aborted.
        let set = if method.is_some_and(|m| m.streaming() && m != MethodId::ToolRun) {
            &mut streams
        } else {
            &mut tasks
        };
        set.spawn(async move {
            methods::dispatch(&shared, method, request, &out, &peer).await;
            drop((permit, held, counted));
        });
    }
    streams.abort_all();
    while streams.join_next().await.is_some() {}
    // Requests already started finish (their answers still go out) unless the client is
    // gone; the connection's slot is released only after all of them.
    drop(out);
    loop {
        tokio::select! {
            done = tasks.join_next() => if done.is_none() { break },
            _ = &mut write_task => {
                // The client takes no more answers: its calls are cancelled and given the
                // time to end as cancelled (and be recorded so) before the rest is aborted.
                gone.cancel();
                let drained = async { while tasks.join_next().await.is_some() {} };
                if tokio::time::timeout(DAEMON_CANCEL_GRACE, drained).await.is_err() {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
                return;
            }
        }
    }
    let _ = write_task.await;
}
