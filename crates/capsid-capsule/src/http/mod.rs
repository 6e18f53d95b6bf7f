//! Outbound HTTP for capsules: the host half of `wasi:http/outgoing-handler`.
//!
//! wasmtime-wasi-http implements the interface; every request a capsule makes reaches
//! [`HttpHooks::send_request`], and `send.rs` sends it only after:
//! 1. the `net://<scheme>/<host>/<port>` check, before any lookup or connection (a denial
//!    is recorded and answered `HTTP-request-denied`);
//! 2. one lookup of the host, refusing internal addresses (`address.rs`) unless a grant names
//!    the address literally, or `localhost` for loopback;
//! 3. a durable `http.request` record of the allow, naming the address it will connect to;
//! 4. a connection to that very address (no second lookup: DNS rebinding cannot move it).
//!
//! Redirects are answered to the capsule, never followed. Timeouts are capped by the call's
//! deadline, bodies by [`MAX_HTTP_REQUEST_BYTES`] and [`MAX_HTTP_RESPONSE_BYTES`] (counted
//! as they stream), and a capsule's open requests by [`MAX_HTTP_INFLIGHT`]. How each request
//! ended is recorded as `http.response` (`body.rs`).
//!
//! [`MAX_HTTP_REQUEST_BYTES`]: capsid_core::limits::MAX_HTTP_REQUEST_BYTES
//! [`MAX_HTTP_RESPONSE_BYTES`]: capsid_core::limits::MAX_HTTP_RESPONSE_BYTES
//! [`MAX_HTTP_INFLIGHT`]: capsid_core::limits::MAX_HTTP_INFLIGHT

mod address;
mod body;
mod send;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use capsid_core::limits::{HTTP_DEADLINE_MARGIN, MAX_HTTP_ROOTS_FILE_BYTES};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiHttpHooks};

use crate::host::CapsuleContext;

/// Finds the addresses of a host name. [`SystemResolver`] asks the operating system;
/// embedders and tests may answer themselves. Whatever answers, every address is checked
/// before it is connected to.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync + std::fmt::Debug {
    /// The addresses of `host` (a name, never an IP literal), each with `port`.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The operating system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A problem with the operator's HTTP settings.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    /// An extra roots file could not be read or holds no usable certificate.
    #[error("TLS roots file {}: {message}", path.display())]
    Roots {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// What every capsule's outbound requests share: the resolver and the TLS roots (the
/// platform's, plus any the operator added; a capsule can neither add roots nor turn
/// verification off).
#[derive(Debug)]
pub struct OutboundHttp {
    resolver: Arc<dyn Resolve>,
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Built on the first `https` request: reading the platform's roots costs boot nothing.
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl Default for OutboundHttp {
    fn default() -> Self {
        Self {
            resolver: Arc::new(SystemResolver),
            extra_roots: Vec::new(),
            tls: OnceLock::new(),
        }
    }
}

impl OutboundHttp {
    /// Outbound HTTP with the system resolver and the platform's roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trusts the certificates in each PEM file of `paths` (`[http] extra_roots` in
    /// `config.toml`: an operator's private CA).
    pub fn with_extra_roots(mut self, paths: &[impl AsRef<Path>]) -> Result<Self, HttpSetupError> {
        use rustls::pki_types::pem::PemObject;
        for path in paths {
            let path = path.as_ref();
            let bad = |message: String| HttpSetupError::Roots {
                path: path.to_owned(),
                message,
            };
            let size = std::fs::metadata(path)
                .map_err(|e| bad(e.to_string()))?
                .len();
            if size > MAX_HTTP_ROOTS_FILE_BYTES {
                return Err(bad(format!(
                    "larger than {MAX_HTTP_ROOTS_FILE_BYTES} bytes"
                )));
            }
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad("holds no certificate".into()));
            }
            self.extra_roots.extend(certs);
        }
        Ok(self)
    }

    /// Resolves host names with `resolver` instead of the operating system's.
    #[must_use]
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = resolver;
        self
    }

    /// The TLS configuration, built on first use on a blocking thread (reading the
    /// platform's roots is file I/O).
    pub(crate) async fn tls(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>, HttpError> {
        let built = if let Some(built) = self.tls.get() {
            built.clone()
        } else {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.tls.get_or_init(|| this.build_tls()).clone())
                .await
                .map_err(|e| HttpError::InternalError(Some(e.to_string())))?
        };
        built.map_err(|e| HttpError::InternalError(Some(e)))
    }

    fn build_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        let platform = rustls_native_certs::load_native_certs();
        for e in &platform.errors {
            tracing::warn!(error = %e, "reading the platform's TLS roots");
        }
        let (added, ignored) = roots.add_parsable_certificates(platform.certs);
        let (extra, bad) = roots.add_parsable_certificates(self.extra_roots.clone());
        tracing::debug!(added, ignored, extra, bad, "TLS roots for capsules");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| format!("building the TLS configuration: {e}"))
    }
}

/// One instance's view of outbound HTTP: its capsule, and the deadline of the call it is
/// in (copied from the store's state whenever wasmtime-wasi-http asks for the view).
pub(crate) struct HttpHooks {
    cx: Arc<CapsuleContext>,
    pub(crate) deadline: Instant,
    /// The call the requests are made in (an approval it waits for moves its deadline).
    pub(crate) control: crate::CallControl,
}

impl HttpHooks {
    pub(crate) fn new(cx: Arc<CapsuleContext>) -> Self {
        Self {
            cx,
            deadline: Instant::now(),
            control: crate::CallControl::default(),
        }
    }
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<RequestOptions>,
        _body_sent: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = send::Sent> + Send> {
        // Taken here, synchronously: a capsule looping on `handle` cannot pile up requests
        // (each a task and host memory outside its own limit) faster than they end.
        let Ok(queued) = self.cx.http_queued.clone().try_acquire_owned() else {
            return Box::new(async { Err(HttpError::ConnectionLimitReached) });
        };
        // The capsule hears of a timeout in time to answer, before its call is cut.
        let deadline = self
            .deadline
            .checked_sub(HTTP_DEADLINE_MARGIN)
            .unwrap_or(self.deadline);
        let cx = self.cx.clone();
        let control = self.control.clone();
        let (head, body) = request.into_parts();
        // The request runs in a task of its own: it is told which call it belongs to.
        Box::new(crate::control::CURRENT_CALL.scope(control, async move {
            let mut unsent = send::Unsent {
                body: Some(body),
                queued: Some(queued),
            };
            let sent = send::send(cx, deadline, head, &mut unsent, options).await;
            if sent.is_err() {
                unsent.linger(deadline);
            }
            sent
        }))
    }
}
