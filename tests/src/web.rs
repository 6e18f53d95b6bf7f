//! Loopback web servers for the outbound HTTP suites and the `http` bench: real hyper
//! servers on `127.0.0.1`, plain or TLS under a test CA, with the routes the tests need.
//!
//! - `GET /bytes/<n>`: `n` bytes of `x`, streamed in 64 KiB chunks;
//! - `GET /redirect`: `302` to `/bytes/5` (to see that nobody follows it);
//! - `GET /drip`: one byte a second, 100 in all;
//! - `GET /wait/<ms>`: `ok` after `ms` milliseconds (requests open at once are counted);
//! - `POST /echo`: the request body's length.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a server saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Paths requested, in order.
    pub paths: Mutex<Vec<String>>,
    /// `/wait` requests open now.
    pub waiting: AtomicUsize,
    /// Most `/wait` requests ever open at once.
    pub most_waiting: AtomicUsize,
}

impl Seen {
    /// The paths requested so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("paths").clone()
    }
}

/// A running server; it stops when dropped.
#[derive(Debug)]
pub struct WebServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A test CA and a certificate it signed for `localhost` and `127.0.0.1`.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate, PEM: what an operator would add to `[http] extra_roots`.
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A new CA and server certificate.
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "capsid test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .expect("server key DER");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .expect("server TLS config");
        Self {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl WebServer {
    /// A plain HTTP server on a free loopback port.
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// An HTTPS server on a free loopback port, its certificate signed by `ca`.
    pub async fn start_tls(ca: &TestCa) -> Self {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(ca.server.clone()))).await
    }

    /// `http://127.0.0.1:<port>` (or `https://`) followed by `path`.
    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let (seen, tls) = (seen.clone(), tls.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let seen = seen.clone();
                            async move { Ok::<_, Infallible>(route(req, &seen).await) }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        let _ = match tls {
                            Some(tls) => match tls.accept(stream).await {
                                Ok(s) => http.serve_connection(TokioIo::new(s), service).await,
                                Err(_) => return,
                            },
                            None => http.serve_connection(TokioIo::new(stream), service).await,
                        };
                    });
                }
            }
        });
        Self { addr, seen, task }
    }
}

type Reply = hyper::Response<BoxBody<Bytes, Infallible>>;

fn text(status: u16, body: impl Into<Bytes>) -> Reply {
    let body = http_body_util::Full::new(body.into()).boxed();
    let mut reply = hyper::Response::new(body);
    *reply.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    reply
}

async fn route(req: hyper::Request<hyper::body::Incoming>, seen: &Seen) -> Reply {
    let path = req.uri().path().to_owned();
    seen.paths.lock().expect("paths").push(path.clone());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    // Every request body is read before the answer (`wstd` streams even a GET's empty body,
    // chunked): answering first and closing with it unread would reset the connection.
    let Ok(body) = req.into_body().collect().await else {
        return text(400, "body");
    };
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["bytes", n]) => match n.parse::<u64>() {
            Ok(n) => {
                let mut reply = hyper::Response::new(Repeat { left: n }.boxed());
                reply
                    .headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, n.into());
                reply
            }
            Err(_) => text(400, "bad length"),
        },
        ("GET", ["redirect"]) => {
            let mut reply = text(302, "");
            reply.headers_mut().insert(
                hyper::header::LOCATION,
                "/bytes/5".parse().expect("location"),
            );
            reply
        }
        ("GET", ["drip"]) => hyper::Response::new(
            Drip {
                left: 100,
                next: Box::pin(tokio::time::sleep(Duration::ZERO)),
            }
            .boxed(),
        ),
        ("GET", ["wait", ms]) => {
            let ms = ms.parse().unwrap_or(0);
            let now = seen.waiting.fetch_add(1, Ordering::SeqCst) + 1;
            seen.most_waiting.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            seen.waiting.fetch_sub(1, Ordering::SeqCst);
            text(200, "ok")
        }
        ("POST", ["echo"]) => text(200, body.to_bytes().len().to_string()),
        _ => text(404, "not found"),
    }
}

/// `left` bytes of `x`, 64 KiB at a time.
struct Repeat {
    left: u64,
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        let n = usize::try_from(n).expect("chunk fits");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// One byte a second.
struct Drip {
    left: u32,
    next: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.next.as_mut().poll(cx));
        self.left -= 1;
        let at = tokio::time::Instant::now() + Duration::from_secs(1);
        self.next.as_mut().reset(at);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
    }
}
