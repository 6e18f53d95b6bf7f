//! The bodies of a capsule's request and response, bounded and counted, and the record of
//! how the request ended.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capsid_audit::{Decision, action};
use capsid_core::limits::{MAX_HTTP_REQUEST_BYTES, MAX_HTTP_RESPONSE_BYTES};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use crate::host::CapsuleContext;

/// Bytes of the request body handed to the connection, and whether it went over the cap.
#[derive(Debug, Default)]
pub(crate) struct BytesSent {
    bytes: AtomicU64,
    over: AtomicBool,
}

/// How an allowed request ended, recorded once as `http.response` (status, bytes each way,
/// duration, the address connected to, outcome), also when it is abandoned on the way (the
/// capsule dropped it, its call ended). The record is appended without holding up the
/// capsule: the allow before the request was durable already.
pub(crate) struct Completion {
    what: Option<Ended>,
    sent: Arc<BytesSent>,
    status: AtomicU16,
    peer: std::sync::OnceLock<std::net::SocketAddr>,
}

struct Ended {
    cx: Arc<CapsuleContext>,
    resource: String,
    details: serde_json::Value,
    started: Instant,
}

impl Completion {
    pub(crate) fn new(
        cx: Arc<CapsuleContext>,
        resource: String,
        details: serde_json::Value,
        started: Instant,
    ) -> Self {
        Self {
            what: Some(Ended {
                cx,
                resource,
                details,
                started,
            }),
            sent: Arc::default(),
            status: AtomicU16::new(0),
            peer: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn sent(&self) -> Arc<BytesSent> {
        self.sent.clone()
    }

    pub(crate) fn sent_too_much(&self) -> bool {
        self.sent.over.load(Ordering::Relaxed)
    }

    pub(crate) fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub(crate) fn set_peer(&self, peer: std::net::SocketAddr) {
        let _ = self.peer.set(peer);
    }

    /// The request failed before its response: `error` says how.
    pub(crate) fn failed(mut self, error: &HttpError) {
        self.record(0, &format!("failed: {error}"));
    }

    fn record(&mut self, received: u64, outcome: &str) {
        let Some(Ended {
            cx,
            resource,
            mut details,
            started,
        }) = self.what.take()
        else {
            return;
        };
        let status = self.status.load(Ordering::Relaxed);
        details["status"] = if status == 0 {
            serde_json::Value::Null
        } else {
            status.into()
        };
        details["connected"] = self.peer.get().map(ToString::to_string).into();
        details["bytes_sent"] = self.sent.bytes.load(Ordering::Relaxed).into();
        details["bytes_received"] = received.into();
        details["duration_ms"] = u64::try_from(started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .into();
        details["outcome"] = outcome.into();
        // Requests end on the runtime; outside one there is nothing to append with, and the
        // allow before the request stands as its record.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = cx
                    .note(action::HTTP_RESPONSE, &resource, Decision::Info, &details)
                    .await;
            });
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.record(0, "abandoned before its response");
    }
}

/// A capsule's request body, counted, ending in `HTTP-request-body-size` past the cap.
/// Dropped before its end (the exchange failed, or the server answered without reading it),
/// it is kept open a moment longer, so the capsule still writing it reads the response or
/// the real error rather than a closed stream.
pub(crate) struct RequestBody {
    inner: Option<WasiBody>,
    sent: Arc<BytesSent>,
    ended: bool,
    linger_until: Instant,
}

impl RequestBody {
    pub(crate) fn new(inner: WasiBody, sent: Arc<BytesSent>, linger_until: Instant) -> Self {
        Self {
            inner: Some(inner),
            sent,
            ended: false,
            linger_until,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(inner).poll_frame(cx));
        if frame.is_none() {
            self.ended = true;
        }
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let n = data.map_or(0, |d| d.len() as u64);
            let before = self.sent.bytes.load(Ordering::Relaxed);
            if before + n > MAX_HTTP_REQUEST_BYTES {
                self.sent.over.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(Some(
                    MAX_HTTP_REQUEST_BYTES,
                )))));
            }
            self.sent.bytes.store(before + n, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Ended, cut at the cap, or known to hold nothing more: nothing to keep open.
        if self.ended || self.sent.over.load(Ordering::Relaxed) || inner.is_end_stream() {
            return;
        }
        let until = self.linger_until;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep_until(until.into()).await;
                drop(inner);
            });
        }
    }
}

/// How long a response body may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// Longest without a byte.
    pub between_bytes: Duration,
    /// The call's deadline.
    pub deadline: Instant,
}

/// The request's places among its capsule's open requests and its connections, given back
/// when the response body ends.
pub(crate) type Slots = (Option<OwnedSemaphorePermit>, OwnedSemaphorePermit);

/// A response body as the capsule reads it: at most `MAX_HTTP_RESPONSE_BYTES` (the bytes
/// up to the cap are delivered, then `HTTP-response-body-size`), a timeout between bytes
/// and at the call's deadline, and the capsule's slots held until it ends.
pub(crate) struct ResponseBody {
    incoming: hyper::body::Incoming,
    received: u64,
    /// The cap was reached inside the body: the next read is the error.
    cut: bool,
    /// It ended (completely or with an error): nothing more is read.
    ended: bool,
    idle: Pin<Box<Sleep>>,
    between_bytes: Duration,
    deadline: Pin<Box<Sleep>>,
    slots: Option<Slots>,
    completion: Option<Completion>,
}

impl ResponseBody {
    pub(crate) fn new(
        incoming: hyper::body::Incoming,
        limits: BodyLimits,
        slots: Slots,
        completion: Completion,
    ) -> Self {
        Self {
            incoming,
            received: 0,
            cut: false,
            ended: false,
            idle: Box::pin(tokio::time::sleep(limits.between_bytes)),
            between_bytes: limits.between_bytes,
            deadline: Box::pin(tokio::time::sleep_until(limits.deadline.into())),
            slots: Some(slots),
            completion: Some(completion),
        }
    }

    fn end(&mut self, outcome: &str) {
        self.ended = true;
        self.slots = None;
        if let Some(mut c) = self.completion.take() {
            c.record(self.received, outcome);
        }
    }

    fn fail(&mut self, error: HttpError) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        self.end(&format!("failed: {error}"));
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.cut {
            return this.fail(HttpError::HttpResponseBodySize(Some(
                MAX_HTTP_RESPONSE_BYTES,
            )));
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.end("complete");
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(HttpError::from(e)),
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        let room = MAX_HTTP_RESPONSE_BYTES - this.received;
                        if data.len() as u64 > room {
                            // `room` is below `data.len()`, a usize.
                            data.truncate(usize::try_from(room).unwrap_or(0));
                            this.cut = true;
                        }
                        this.received += data.len() as u64;
                        Frame::data(data)
                    }
                    Err(trailers) => trailers,
                };
                let next = tokio::time::Instant::now() + this.between_bytes;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return this.fail(HttpError::HttpResponseTimeout);
                }
                if this.idle.as_mut().poll(cx).is_ready() {
                    return this.fail(HttpError::ConnectionReadTimeout);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (!self.cut && self.incoming.is_end_stream())
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An empty body may never be polled: its end is already known.
        let outcome = if !self.cut && self.incoming.is_end_stream() {
            "complete"
        } else {
            "dropped before its end"
        };
        self.end(outcome);
    }
}
