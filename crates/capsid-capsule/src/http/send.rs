//! Sending one request: check, cap, resolve and vet, record, connect, TLS, hyper.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsid_audit::{Decision, action};
use capsid_capabilities::Permissions;
use capsid_core::limits::{
    HTTP_BETWEEN_BYTES_TIMEOUT, HTTP_CONNECT_TIMEOUT, HTTP_FIRST_BYTE_TIMEOUT,
    HTTP_REFUSED_BODY_LINGER, MAX_HTTP_REQUEST_BYTES,
};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout_at;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use super::address::internal_kind;
use super::body::{BodyLimits, Completion, RequestBody, ResponseBody};
use crate::host::{Asked, CapsuleContext, audit_text};

/// What drives a connection while its response body is read.
type ConnectionIo = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// What the send hook answers wasmtime-wasi-http: the response, its body streaming.
pub(crate) type Sent = Result<(http::Response<WasiBody>, ConnectionIo), HttpError>;

/// Where a request goes, as its `net://` resource names it.
struct Target {
    scheme: &'static str,
    /// Lowercase; an IPv6 address in brackets.
    host: String,
    port: u16,
    /// The host when it is an IP address.
    literal: Option<IpAddr>,
    resource: String,
}

impl Target {
    fn of(uri: &http::Uri) -> Option<Self> {
        let (scheme, default_port) = match uri.scheme_str()? {
            "https" => ("https", 443),
            "http" => ("http", 80),
            _ => return None,
        };
        let authority = uri.authority()?;
        // Credentials in the authority would reach the server in `Host`; a port that does
        // not parse must not turn into the default one.
        if authority.as_str().contains('@') || (uri.port().is_some() && uri.port_u16().is_none()) {
            return None;
        }
        let port = uri.port_u16().unwrap_or(default_port);
        if port == 0 {
            return None;
        }
        let mut host = authority.host().to_ascii_lowercase();
        let literal = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                let v6: std::net::Ipv6Addr = v6.parse().ok()?;
                // One spelling per address, as grants write it (`[::1]`, not `[0::1]`).
                host = format!("[{v6}]");
                Some(IpAddr::V6(v6))
            }
            None => host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
        };
        let resource = capsid_manifest::net_resource(scheme, &host, &port.to_string());
        Some(Self {
            scheme,
            host,
            port,
            literal,
            resource,
        })
    }

    fn origin(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The earlier of `now + wanted` (capped at `max`) and the call's deadline.
fn bounded(wanted: Option<Duration>, max: Duration, deadline: Instant) -> Instant {
    let wanted = wanted.map_or(max, |w| w.min(max));
    (Instant::now() + wanted).min(deadline)
}

/// What a request holds until it is sent: its body (the capsule may still be writing it)
/// and its place among the capsule's open requests. Whatever a failed request did not take
/// is kept a moment longer ([`Unsent::linger`]).
pub(crate) struct Unsent {
    pub(crate) body: Option<WasiBody>,
    pub(crate) queued: Option<OwnedSemaphorePermit>,
}

impl Unsent {
    /// Keeps what is left until shortly before `deadline` (at most
    /// `HTTP_REFUSED_BODY_LINGER`): a capsule still writing the body of a refused request
    /// then finishes it and reads the refusal's error code, rather than a closed stream.
    /// The place among open requests goes with it, so refusals cannot pile up.
    pub(crate) fn linger(self, deadline: Instant) {
        if self.body.is_none() && self.queued.is_none() {
            return;
        }
        let until = deadline.min(Instant::now() + HTTP_REFUSED_BODY_LINGER);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep_until(until.into()).await;
                drop(self);
            });
        }
    }
}

/// Sends the request of `head` and `unsent.body` for the capsule in `cx`, within
/// `deadline`; it takes `unsent`'s body when it sends it and its place among the open
/// requests for the response body, which holds it until it ends.
pub(crate) async fn send(
    cx: Arc<CapsuleContext>,
    deadline: Instant,
    head: http::request::Parts,
    unsent: &mut Unsent,
    options: Option<RequestOptions>,
) -> Sent {
    let started = Instant::now();
    let Some(target) = Target::of(&head.uri) else {
        return Err(HttpError::HttpRequestUriInvalid);
    };
    let mut details = serde_json::json!({
        "method": audit_text(head.method.as_str()),
        "origin": target.origin(),
        "path": audit_text(head.uri.path()),
    });
    let (connection, deadline) = admit(&cx, &target, deadline, &mut details).await?;
    let opt = options.unwrap_or_default();
    let connect_by = bounded(opt.connect_timeout, HTTP_CONNECT_TIMEOUT, deadline);
    // Asked for and approved, or granted, by this very origin.
    let approved = details.get("approval").is_some() || details.get("literal_grant").is_some();
    let addrs = match vetted_addresses(&cx, &target, connect_by, approved, &mut details).await {
        Ok(addrs) => addrs,
        Err((why, error)) => return Err(refuse(&cx, &target, &mut details, why, error).await),
    };
    details["addresses"] = addrs.iter().map(ToString::to_string).collect();
    if cx
        .note(
            action::HTTP_REQUEST,
            &target.resource,
            Decision::Allow,
            &details,
        )
        .await
        .is_err()
    {
        return Err(HttpError::HttpRequestDenied);
    }
    let completion = Completion::new(cx.clone(), target.resource.clone(), details, started);
    let sent = async {
        let tls = match target.scheme {
            "https" => Some(cx.services.http.tls().await?),
            _ => None,
        };
        let (stream, peer) = connect(&addrs, &target, tls, connect_by).await?;
        completion.set_peer(peer);
        let first_byte_by = bounded(opt.first_byte_timeout, HTTP_FIRST_BYTE_TIMEOUT, deadline);
        let body = unsent
            .body
            .take()
            .ok_or_else(|| HttpError::InternalError(Some("the request body is gone".into())))?;
        let request = http::Request::from_parts(head, body);
        exchange(stream, request, &completion, first_byte_by).await
    };
    match sent.await {
        Ok((response, io)) => {
            let limits = BodyLimits {
                between_bytes: opt
                    .between_bytes_timeout
                    .map_or(HTTP_BETWEEN_BYTES_TIMEOUT, |t| {
                        t.min(HTTP_BETWEEN_BYTES_TIMEOUT)
                    }),
                deadline,
            };
            let slots = (unsent.queued.take(), connection);
            let response = response.map(|incoming| {
                ResponseBody::new(incoming, limits, slots, completion).boxed_unsync()
            });
            Ok((response, io))
        }
        Err(error) => {
            completion.failed(&error);
            Err(error)
        }
    }
}

/// Lets the request in: a person asked first where the capsule may ask (no connection slot
/// is held while they decide; the deadline moves on by the time they took), then a
/// connection slot, then the check (after the slot, so a grant revoked while the request
/// waited for one is seen). Answers the slot and the deadline as moved.
async fn admit(
    cx: &CapsuleContext,
    target: &Target,
    deadline: Instant,
    details: &mut serde_json::Value,
) -> Result<(OwnedSemaphorePermit, Instant), HttpError> {
    let moved = current_deadline_moved();
    // The person sees the method and the path (never the query).
    let call = format!(
        "{} {}",
        details["method"].as_str().unwrap_or_default(),
        details["path"].as_str().unwrap_or_default()
    );
    let approval = match cx
        .ask_if_needed(
            action::HTTP_REQUEST,
            Permissions::EXEC,
            &target.resource,
            Some(&call),
            None,
        )
        .await
    {
        Asked::Refused => return Err(HttpError::HttpRequestDenied),
        Asked::Approved { id, .. } => Some(id),
        Asked::Unasked => None,
    };
    let deadline = deadline + current_deadline_moved().saturating_sub(moved);
    let Ok(Ok(connection)) =
        timeout_at(deadline.into(), cx.http_inflight.clone().acquire_owned()).await
    else {
        let why = "the capsule's open requests stayed at the limit until the deadline".into();
        return Err(refuse(cx, target, details, why, HttpError::ConnectionLimitReached).await);
    };
    if let Some(id) = approval {
        details["approval"] = id.into();
    } else {
        let grant = cx
            .services
            .authorize(
                &cx.subject_now(),
                action::HTTP_REQUEST,
                Permissions::EXEC,
                &target.resource,
                false,
                details.clone(),
            )
            .await
            .map_err(|_| HttpError::HttpRequestDenied)?;
        details["grant"] = grant.to_string().into();
        // The grant that allowed it names the host itself (a single-use one asked for
        // ahead is spent by now, so it is looked up by id).
        let literal = cx
            .services
            .capabilities
            .capability(&cx.subject.principal, grant)
            .await
            .is_some_and(|c| c.pattern.literal_segment(0) == Some(target.host.as_str()));
        if literal {
            details["literal_grant"] = true.into();
        }
    }
    Ok((connection, deadline))
}

/// Records a refusal after the check (`why`), and answers `error`.
async fn refuse(
    cx: &CapsuleContext,
    target: &Target,
    details: &mut serde_json::Value,
    why: String,
    error: HttpError,
) -> HttpError {
    details["reason"] = why.into();
    let _ = cx
        .note(
            action::HTTP_REQUEST,
            &target.resource,
            Decision::Deny,
            details,
        )
        .await;
    error
}

/// The addresses `target` may be reached at: an IP literal as it is, `localhost` as the
/// loopback addresses, a name as the resolver answers. An internal address is kept only
/// when a grant names it literally ([`granted_literally`]); none left is a refusal with the
/// reason.
async fn vetted_addresses(
    cx: &CapsuleContext,
    target: &Target,
    by: Instant,
    approved: bool,
    details: &mut serde_json::Value,
) -> Result<Vec<SocketAddr>, (String, HttpError)> {
    let candidates: Vec<SocketAddr> = if let Some(ip) = target.literal {
        vec![SocketAddr::new(ip, target.port)]
    } else if target.host == "localhost" {
        vec![
            SocketAddr::from(([127, 0, 0, 1], target.port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, target.port)),
        ]
    } else {
        let lookup = cx.services.http.resolver.resolve(&target.host, target.port);
        match timeout_at(by.into(), lookup).await {
            Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
            Ok(Ok(_)) => return Err(("the name has no address".into(), dns_error())),
            Ok(Err(e)) => return Err((format!("the name did not resolve: {e}"), dns_error())),
            Err(_) => return Err(("the lookup timed out".into(), HttpError::DnsTimeout)),
        }
    };
    let mut allowed = Vec::with_capacity(candidates.len());
    let mut refused = None;
    for addr in candidates {
        let Some(kind) = internal_kind(addr.ip()) else {
            allowed.push(addr);
            continue;
        };
        // A person approved, or a grant names, this very origin: when its host is the
        // address (or `localhost`, for loopback) it is named literally.
        let named = target.literal == Some(addr.ip())
            || (target.host == "localhost" && addr.ip().is_loopback());
        if approved && named {
            details["internal_grant"] = "approval".into();
            allowed.push(addr);
            continue;
        }
        match granted_literally(cx, target, addr.ip()).await {
            Some(pattern) => {
                details["internal_grant"] = pattern.into();
                allowed.push(addr);
            }
            None => {
                refused.get_or_insert((addr, kind));
            }
        }
    }
    match (allowed.is_empty(), refused) {
        (true, Some((addr, kind))) => Err((
            format!(
                "{} is a {kind} address; only a grant naming it literally reaches it",
                addr.ip()
            ),
            HttpError::DestinationIpProhibited,
        )),
        (true, None) => Err(("the name has no address".into(), dns_error())),
        (false, _) => Ok(allowed),
    }
}

/// How far the current call's deadline has moved (approvals waited for).
fn current_deadline_moved() -> std::time::Duration {
    crate::control::CURRENT_CALL
        .try_with(|c| c.deadline_moved().0)
        .unwrap_or_default()
}

/// The pattern of a grant of the capsule for `target`'s scheme and port that names `ip`
/// itself (no glob in the host), or `localhost` when `ip` is a loopback address.
async fn granted_literally(cx: &CapsuleContext, target: &Target, ip: IpAddr) -> Option<String> {
    let port = target.port.to_string();
    let ip_host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut hosts = vec![ip_host];
    if ip.is_loopback() {
        hosts.push("localhost".to_owned());
    }
    for host in hosts {
        let resource = capsid_manifest::net_resource(target.scheme, &host, &port);
        let patterns = cx
            .services
            .capabilities
            .patterns_allowing(&cx.subject_now(), Permissions::EXEC, &resource)
            .await;
        if let Some(p) = patterns
            .iter()
            .find(|p| p.literal_segment(0) == Some(host.as_str()))
        {
            return Some(p.as_str().to_owned());
        }
    }
    None
}

fn dns_error() -> HttpError {
    HttpError::DnsError {
        rcode: Some("no usable address".into()),
        info_code: None,
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection to the first of `addrs` that answers (each tried for its share of the time
/// left, so an unreachable first address leaves time for the next), with TLS for `https`.
async fn connect(
    addrs: &[SocketAddr],
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    by: Instant,
) -> Result<(Box<dyn Io>, SocketAddr), HttpError> {
    let mut last = HttpError::ConnectionRefused;
    let mut tcp = None;
    for (i, addr) in addrs.iter().enumerate() {
        let left = by.saturating_duration_since(Instant::now());
        let tries_left = u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(left / tries_left, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some((s, *addr));
                break;
            }
            Ok(Err(e)) => last = HttpError::Connect(e),
            Err(_) => last = HttpError::ConnectionTimeout,
        }
    }
    let (tcp, peer) = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Box::new(tcp), peer));
    };
    let name = match target.literal {
        Some(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        None => rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|_| HttpError::HttpRequestUriInvalid)?,
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    match timeout_at(by.into(), connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok((Box::new(stream), peer)),
        Ok(Err(e)) => Err(tls_error(&e)),
        Err(_) => Err(HttpError::ConnectionTimeout),
    }
}

fn tls_error(e: &std::io::Error) -> HttpError {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            HttpError::TlsCertificateError
        }
        Some(rustls::Error::AlertReceived(alert)) => HttpError::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        _ => HttpError::TlsProtocolError,
    }
}

/// HTTP/1.1 over `stream`: sends `request` (path and query only on the request line, its
/// body capped and counted) and waits for the response's headers.
async fn exchange(
    stream: Box<dyn Io>,
    request: http::Request<WasiBody>,
    completion: &Completion,
    first_byte_by: Instant,
) -> Result<(http::Response<hyper::body::Incoming>, ConnectionIo), HttpError> {
    let oversized = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_HTTP_REQUEST_BYTES);
    if oversized {
        return Err(HttpError::HttpRequestBodySize(Some(MAX_HTTP_REQUEST_BYTES)));
    }
    let (mut sender, conn) = timeout_at(
        first_byte_by.into(),
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    let (mut parts, body) = request.into_parts();
    parts.uri = http::Uri::builder()
        .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let linger_until = (Instant::now() + HTTP_REFUSED_BODY_LINGER).min(first_byte_by);
    let body = RequestBody::new(body, completion.sent(), linger_until);
    let request = http::Request::from_parts(parts, body);
    let mut conn = Box::pin(conn);
    let mut conn_done = false;
    let mut response = Box::pin(sender.send_request(request));
    let answered = timeout_at(first_byte_by.into(), async {
        tokio::select! {
            r = &mut response => r,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                match c {
                    // The connection ended cleanly before the response was read: it is there.
                    Ok(()) => response.await,
                    Err(e) => Err(e),
                }
            }
        }
    })
    .await;
    let response = match answered {
        Err(_) => return Err(HttpError::ConnectionReadTimeout),
        Ok(Err(_)) if completion.sent_too_much() => {
            return Err(HttpError::HttpRequestBodySize(Some(MAX_HTTP_REQUEST_BYTES)));
        }
        Ok(Err(e)) => return Err(HttpError::from(e)),
        Ok(Ok(r)) => r,
    };
    completion.set_status(response.status().as_u16());
    let io: ConnectionIo = Box::new(async move {
        if conn_done {
            return Ok(());
        }
        conn.await.map_err(HttpError::from)
    });
    Ok((response, io))
}
